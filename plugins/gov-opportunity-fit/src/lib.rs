//! StreamFlow plugin `gov-opportunity-fit`: bid/no-bid scoring of government contracting
//! opportunities (hook `score-lead`; in the gov-contracting template the opportunity is
//! the `lead` record). [`fit`] does the assessment from the company's profile, the plugin's
//! configuration (see `config.schema.json`): hot is bid, warm is review, cold is no-bid.

pub mod fit;
pub mod states;

use streamflow_plugin_sdk::{Error, Lead, Plugin, Score, Temperature, config};

/// The `score-lead` hook.
pub struct OpportunityFit;

impl Plugin for OpportunityFit {
    fn score_lead(lead: Lead) -> Result<Score, Error> {
        let profile: fit::Profile = config::get()?;
        profile
            .check()
            .map_err(|e| Error::Failed(format!("config: {e}")))?;
        // The deadline is measured from the record's last change, never from a clock, so
        // scoring the same version again gives the same answer.
        let assessed = fit::assess(&profile, &lead.json()?, lead.updated_at);
        Ok(Score {
            value: assessed.value,
            temperature: match assessed.verdict {
                fit::Verdict::Bid => Temperature::Hot,
                fit::Verdict::Review => Temperature::Warm,
                fit::Verdict::NoBid => Temperature::Cold,
            },
            confidence: assessed.confidence,
            reasons: assessed.reasons,
        })
    }
}

streamflow_plugin_sdk::export!(OpportunityFit);
