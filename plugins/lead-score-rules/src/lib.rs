//! StreamFlow plugin `lead-score-rules`: scores leads with the weighted rules of
//! [`rules`], configured per tenant (see `config.schema.json`).

pub mod rules;

use streamflow_plugin_sdk::{Error, Lead, Plugin, Score, Temperature, config};

/// The `score-lead` hook: the tenant's rules applied to the lead's data.
pub struct RuleScorer;

impl Plugin for RuleScorer {
    fn score_lead(lead: Lead) -> Result<Score, Error> {
        let rules: rules::Rules = config::get()?;
        let scored = rules::score(&rules, &lead.json()?);
        Ok(Score {
            value: scored.value,
            temperature: match scored.temperature {
                rules::Temp::Hot => Temperature::Hot,
                rules::Temp::Warm => Temperature::Warm,
                rules::Temp::Cold => Temperature::Cold,
            },
            confidence: scored.confidence,
            reasons: scored.reasons,
        })
    }
}

streamflow_plugin_sdk::export!(RuleScorer);
