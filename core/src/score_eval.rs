//! `streamflow score eval`: how often a template's scorer agrees with leads a person in the
//! trade labelled hot, warm or cold. The leads are scored the way a tenant's are: a kernel
//! on a throwaway SQLite database, a tenant on the template (its scorer and config as it
//! installs them), each lead created as a record and scored on the way in.

use std::fmt::Write as _;

use anyhow::{Context, bail};
use serde::Deserialize;
use serde_json::Value;

use crate::config::Config;
use crate::kernel::{Kernel, NewId, NewRecord, WriteContext};

/// The temperatures, in the order the confusion matrix lists them.
pub const TEMPERATURES: [&str; 3] = ["hot", "warm", "cold"];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FixtureFile {
    /// The template the leads are written for.
    template: String,
    /// The business the leads came to: its own settings of the template's plugins
    /// (`[business.lead-score-rules] postal_prefixes = ["787"]`, its service area), over
    /// the template's defaults, key by key.
    #[serde(default)]
    business: serde_json::Map<String, Value>,
    leads: Vec<Fixture>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Fixture {
    expect: String,
    why: String,
    data: Value,
}

/// A lead the scorer judged otherwise.
#[derive(Debug, Clone)]
pub struct Miss {
    /// 1-based, in the fixture file's order.
    pub number: usize,
    pub why: String,
    pub expected: String,
    pub scored: String,
    pub value: i64,
    pub reasons: Vec<String>,
}

/// The outcome of one evaluation.
#[derive(Debug, Clone)]
pub struct Evaluation {
    pub template: String,
    pub version: String,
    /// `plugin version` of the scorer.
    pub scorer: String,
    /// The business's own settings the fixture file set, as `plugin.key`.
    pub business: Vec<String>,
    pub total: usize,
    pub agreed: usize,
    /// `matrix[expected][scored]`, in [`TEMPERATURES`] order.
    pub matrix: [[usize; 3]; 3],
    pub misses: Vec<Miss>,
}

impl Evaluation {
    pub fn agreement(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.agreed as f64 / self.total as f64
        }
    }

    /// The report `streamflow score eval` prints.
    pub fn report(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{} {}, scored by {}: {} of {} leads agree ({:.1}%)",
            self.template,
            self.version,
            self.scorer,
            self.agreed,
            self.total,
            self.agreement() * 100.0
        );
        if !self.business.is_empty() {
            let _ = writeln!(
                out,
                "the business's own settings: {}",
                self.business.join(", ")
            );
        }
        let _ = writeln!(out, "\nexpected \\ scored    hot  warm  cold");
        for (i, row) in self.matrix.iter().enumerate() {
            let _ = writeln!(
                out,
                "{:<19} {:>4} {:>5} {:>5}",
                TEMPERATURES[i], row[0], row[1], row[2]
            );
        }
        if !self.misses.is_empty() {
            let _ = writeln!(out, "\ndisagreements:");
            for m in &self.misses {
                let _ = writeln!(
                    out,
                    "  #{} expected {}, scored {} ({}): {}\n      {}",
                    m.number,
                    m.expected,
                    m.scored,
                    m.value,
                    m.why,
                    m.reasons.join("; ")
                );
            }
        }
        out
    }
}

/// Writes `"@today"`, `"@today+30d"` or `"@today-7d"` as the date it means, so fixtures with
/// deadlines hold whenever they are run; a value that starts `@today` and says nothing else
/// that is understood is an error.
fn resolve_dates(value: &mut Value, today: time::Date) -> Result<(), String> {
    match value {
        Value::String(text) => {
            let Some(rest) = text.strip_prefix("@today") else {
                return Ok(());
            };
            let days = if rest.is_empty() {
                Some(0)
            } else {
                rest.strip_suffix('d')
                    .filter(|n| n.starts_with('+') || n.starts_with('-'))
                    .and_then(|n| n.parse::<i64>().ok())
                    .filter(|n| n.abs() <= 36_500)
            };
            let day = days
                .and_then(|d| today.checked_add(time::Duration::days(d)))
                .ok_or_else(|| format!("{text:?} is not @today, @today+<n>d or @today-<n>d"))?;
            *text = format!(
                "{:04}-{:02}-{:02}",
                day.year(),
                u8::from(day.month()),
                day.day()
            );
            Ok(())
        }
        Value::Array(items) => items.iter_mut().try_for_each(|v| resolve_dates(v, today)),
        Value::Object(map) => map.values_mut().try_for_each(|v| resolve_dates(v, today)),
        _ => Ok(()),
    }
}

fn temperature_index(t: &str) -> Option<usize> {
    TEMPERATURES.iter().position(|x| *x == t)
}

/// Scores the fixture file's leads with `template`'s scorer (`None`: the template the file
/// names). `templates_dir` adds templates as `STREAMFLOW_TEMPLATES_DIR` does.
pub async fn evaluate(
    template: Option<&str>,
    fixtures: &str,
    templates_dir: Option<&std::path::Path>,
) -> anyhow::Result<Evaluation> {
    let file: FixtureFile = toml::from_str(fixtures).context("the fixture file")?;
    let template = template.unwrap_or(&file.template);
    if template != file.template {
        bail!(
            "the fixtures are written for template {:?}, not {template:?}",
            file.template
        );
    }
    for (i, lead) in file.leads.iter().enumerate() {
        if temperature_index(&lead.expect).is_none() {
            bail!(
                "lead #{}: expect {:?}, not hot, warm or cold",
                i + 1,
                lead.expect
            );
        }
    }
    let dir = tempfile::tempdir().context("a temporary directory for the evaluation")?;
    let config = Config {
        database_url: format!("sqlite://{}", dir.path().join("eval.db").display()),
        data_dir: dir.path().to_path_buf(),
        templates_dir: templates_dir.map(|d| d.to_path_buf()),
        bundled_plugins: true,
        dispatcher: false,
        scheduler: false,
        ..Config::default()
    };
    let kernel = Kernel::open(config).await?;
    let tenant = kernel
        .store
        .create_tenant("score-eval", "Scoring evaluation")
        .await?
        .context("the evaluation's tenant")?;
    let scope = tenant.scope();
    let applied = kernel
        .templates()
        .apply_newest(&scope, template)
        .await
        .map_err(|e| anyhow::anyhow!("template {template}: {e}"))?;
    for (plugin, settings) in &file.business {
        let Some(settings) = settings.as_object() else {
            bail!("business.{plugin}: settings are a table of the plugin's config keys");
        };
        let installed = kernel
            .store
            .get_installation(&scope, plugin)
            .await?
            .with_context(|| {
                format!("business.{plugin}: template {template} does not install {plugin}")
            })?;
        let mut config = installed.config.0.as_object().cloned().unwrap_or_default();
        for (k, v) in settings {
            config.insert(k.clone(), v.clone());
        }
        kernel
            .installations()
            .configure(&scope, plugin, Value::Object(config))
            .await
            .map_err(|e| match e {
                crate::error::InstallError::Invalid(errors) => {
                    anyhow::anyhow!("business.{plugin}: {}", crate::error::summarize(&errors))
                }
                other => anyhow::anyhow!("business.{plugin}: {other:?}"),
            })?;
    }
    let records = kernel.records();
    let mut evaluation = Evaluation {
        template: applied.template.clone(),
        version: applied.version.clone(),
        scorer: String::new(),
        business: file
            .business
            .iter()
            .flat_map(|(plugin, settings)| {
                settings
                    .as_object()
                    .into_iter()
                    .flat_map(|m| m.keys())
                    .map(move |k| format!("{plugin}.{k}"))
            })
            .collect(),
        total: file.leads.len(),
        agreed: 0,
        matrix: [[0; 3]; 3],
        misses: Vec::new(),
    };
    let today = time::OffsetDateTime::now_utc().date();
    for (i, mut lead) in file.leads.into_iter().enumerate() {
        resolve_dates(&mut lead.data, today)
            .map_err(|e| anyhow::anyhow!("lead #{}: {e}", i + 1))?;
        let ctx = WriteContext::direct(scope, "system:score-eval".into(), None);
        let row = records
            .create(
                &ctx,
                NewRecord {
                    id: NewId::Fresh,
                    record_type: "lead".into(),
                    stage: None,
                    data: lead.data,
                },
            )
            .await
            .map_err(|e| anyhow::anyhow!("lead #{}: {}", i + 1, e.describe()))?;
        let score = row.score.map(|s| s.0).with_context(|| {
            format!(
                "lead #{}: not scored (template {template} installs no scorer, or the scorer failed on it)",
                i + 1
            )
        })?;
        let scored = score["temperature"].as_str().unwrap_or("none").to_string();
        if evaluation.scorer.is_empty() {
            evaluation.scorer = format!(
                "{} {}",
                score["plugin"].as_str().unwrap_or("?"),
                score["version"].as_str().unwrap_or("?")
            );
        }
        let (Some(e), Some(s)) = (temperature_index(&lead.expect), temperature_index(&scored))
        else {
            bail!("lead #{}: scored without a temperature ({score})", i + 1);
        };
        evaluation.matrix[e][s] += 1;
        if e == s {
            evaluation.agreed += 1;
        } else {
            evaluation.misses.push(Miss {
                number: i + 1,
                why: lead.why,
                expected: lead.expect,
                scored,
                value: score["value"].as_i64().unwrap_or(0),
                reasons: score["reasons"]
                    .as_array()
                    .map(|r| {
                        r.iter()
                            .filter_map(Value::as_str)
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default(),
            });
        }
    }
    Ok(evaluation)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn relative_dates_resolve() {
        let today = time::Date::from_calendar_date(2026, time::Month::December, 30).unwrap();
        let mut data = json!({"due": "@today+3d", "posted": ["@today-30d"], "now": "@today", "note": "today", "n": 3});
        resolve_dates(&mut data, today).unwrap();
        assert_eq!(
            data,
            json!({"due": "2027-01-02", "posted": ["2026-11-30"], "now": "2026-12-30", "note": "today", "n": 3})
        );
        for bad in ["@today+3w", "@today+d", "@today3d", "@todayish"] {
            let e = resolve_dates(&mut json!({"due": bad}), today).unwrap_err();
            assert!(e.contains("is not @today"), "{bad}: {e}");
        }
    }
}
