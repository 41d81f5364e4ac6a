//! Google Local Services Ads for StreamFlow.
//!
//! - **Leads** (schedule `poll`, every 5 minutes): a GAQL search of `local_services_lead`
//!   through the Google Ads API, oldest first, from an overlap before the newest lead seen;
//!   each becomes a `lead` kept under its Google id (scored by the tenant's scorer as it is
//!   created), and a lead seen again with a changed status or charge updates its
//!   `data.google_lsa`. Lead times are the account's local time and are never converted
//!   (see [`clock`]).
//! - **Feedback** (optional): a lead the plugin imported that reaches a won or lost stage is
//!   reported to Google once (see [`feedback`]).
//!
//! The plugin never sees a token or the developer token: the host's `google-ads` connection
//! adds them (and the provider's manager account as `login-customer-id`) to every call.

use serde::Deserialize;
use serde_json::{Value, json};
use streamflow_plugin_sdk::text::{clip, lenient};
use streamflow_plugin_sdk::{
    Error, Event, HostError, Plugin, ScheduleTick, host_message, kv, limits, log, schedules,
};

pub mod ads;
pub mod clock;
pub mod cursor;
pub mod feedback;
pub mod lead;

use cursor::Cursor;
use lead::Stored;

const CURSOR: &str = "import:cursor";
const SCHEDULE: &str = "poll";

#[derive(Debug, Deserialize)]
#[serde(default)]
pub struct Settings {
    pub api_version: String,
    #[serde(deserialize_with = "lenient::int")]
    pub initial_lookback_days: i64,
    #[serde(deserialize_with = "lenient::int")]
    pub overlap_minutes: i64,
    #[serde(deserialize_with = "lenient::int")]
    pub page_size: u32,
    pub feedback: FeedbackSettings,
}

#[derive(Debug, Deserialize)]
#[serde(default)]
pub struct FeedbackSettings {
    pub enabled: bool,
    /// Moves into these stages report the lead (the manifest's filter reads this list).
    pub stages: Vec<String>,
    /// Of those, the stages that mean lost; the others mean won.
    pub lost_stages: Vec<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            api_version: "v26".into(),
            initial_lookback_days: 30,
            overlap_minutes: 120,
            page_size: 500,
            feedback: FeedbackSettings::default(),
        }
    }
}

impl Default for FeedbackSettings {
    fn default() -> Self {
        FeedbackSettings {
            enabled: false,
            // Roofing's won stage is `converted`.
            stages: vec!["won".into(), "converted".into(), "lost".into()],
            lost_stages: vec!["lost".into()],
        }
    }
}

fn settings() -> Result<Settings, Error> {
    streamflow_plugin_sdk::config::get()
}

pub struct GoogleLsa;

impl Plugin for GoogleLsa {
    fn on_schedule(tick: ScheduleTick) -> Result<(), Error> {
        poll(&settings()?, tick.now)
    }

    fn on_event(event: Event) -> Result<(), Error> {
        if event.kind != "stage.changed" || event.record_type.as_deref() != Some("lead") {
            return Ok(());
        }
        let Some(lead_id) = event.record_id.as_deref() else {
            return Ok(());
        };
        let settings = settings()?;
        if !settings.feedback.enabled {
            return Ok(());
        }
        let payload: Value = serde_json::from_str(&event.payload).unwrap_or(Value::Null);
        let Some(to) = payload.get("to").and_then(Value::as_str) else {
            return Ok(());
        };
        let outcome = if settings.feedback.lost_stages.iter().any(|s| s == to) {
            feedback::Outcome::Lost
        } else if settings.feedback.stages.iter().any(|s| s == to) {
            feedback::Outcome::Won
        } else {
            return Ok(());
        };
        feedback::report(lead_id, outcome, &settings.api_version)
    }

    fn run_action(name: &str, _input: Value) -> Result<Value, Error> {
        match name {
            "import-status" => Ok(json!({
                "cursor": kv::get_json::<Cursor>(CURSOR)?.unwrap_or_default(),
                "skipped": kv::get_json::<Value>(lead::SKIPPED)?.unwrap_or(json!([])),
            })),
            "restart-import" => {
                // The next run reads the lookback again (nothing is stored twice).
                kv::delete(CURSOR)?;
                Ok(json!({"cursor": Cursor::default()}))
            }
            other => Err(Error::InvalidInput(format!(
                "no action {:?}; this plugin has import-status and restart-import",
                clip(other, 64)
            ))),
        }
    }
}

streamflow_plugin_sdk::export!(GoogleLsa);

/// Saves the cursor with why the run stopped; asks for the next run soon when there is
/// work left that only this run's quotas stopped.
fn pause(cursor: &mut Cursor, why: String, soon: bool) -> Result<(), Error> {
    log::info(&format!("Google LSA import paused: {why}"));
    cursor.paused = Some(why);
    kv::set_json(CURSOR, cursor)?;
    if soon && let Err(e) = schedules::soon(SCHEDULE) {
        log::warn(&format!(
            "could not ask for the next run sooner: {}",
            host_message(&e)
        ));
    }
    Ok(())
}

/// Leads one search may return: what this call's quotas can store (a lead costs a read and
/// a write, two of each when the record type refuses it whole or it changed meanwhile).
fn search_size(settings: &Settings) -> u32 {
    let left = limits::remaining();
    settings
        .page_size
        .clamp(1, 1000)
        .min(left.record_reads / 2)
        .min(left.record_writes / 2)
}

/// One run: searches forward from the cursor while this call's quotas last.
fn poll(settings: &Settings, now: i64) -> Result<(), Error> {
    let account = ads::account(&settings.api_version)?;
    let mut cursor: Cursor = kv::get_json(CURSOR)?.unwrap_or_default();
    cursor.paused = None;
    cursor.begin(settings.overlap_minutes.clamp(60, 7 * 24 * 60), || {
        clock::lookback_start(now, settings.initial_lookback_days.clamp(1, 365))
    });
    let limit = search_size(settings);
    if limit == 0 {
        return Err(Error::Failed(
            "this installation's quotas leave no room for a lead per run: the provider raises record-reads and record-writes".into(),
        ));
    }
    loop {
        let left = limits::remaining();
        if left.http_requests < 1
            || left.record_reads < limit
            || left.record_writes < limit
            || left.wall_ms < 5_000
        {
            return pause(
                &mut cursor,
                "this run's quotas are used; the next run continues".into(),
                true,
            );
        }
        let query = ads::query(&cursor.filter(), limit)?;
        let mut search = cursor.search(limit);
        let mut token: Option<String> = None;
        loop {
            if token.is_some() {
                let left = limits::remaining();
                if left.http_requests < 1 || left.wall_ms < 5_000 {
                    return pause(
                        &mut cursor,
                        "this run's quotas are used; the next run continues".into(),
                        true,
                    );
                }
            }
            let page = match account.search(&query, token.as_deref()) {
                Ok(page) => page,
                Err(e) => {
                    let e: Error = e.into();
                    cursor.paused = Some(clip(&e.to_string(), 300));
                    kv::set_json(CURSOR, &cursor)?;
                    return Err(e);
                }
            };
            let results = page
                .get("results")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let mut rows = Vec::with_capacity(results.len());
            for result in &results {
                let Some(mapped) = result.get("localServicesLead").and_then(lead::mapped) else {
                    log::warn("Google sent a lead without an id; it is left out");
                    rows.push(None);
                    continue;
                };
                match lead::store(&mapped) {
                    Ok(Stored::Created) => cursor.created += 1,
                    Ok(Stored::Updated) => cursor.updated += 1,
                    Ok(Stored::Unchanged | Stored::Skipped) => {}
                    // This call's quota ran out midway: the page is read again next run.
                    Err(HostError::Limit(m)) if m.starts_with("quota ") => {
                        return pause(
                            &mut cursor,
                            format!("this run's quotas are used ({})", clip(&m, 120)),
                            true,
                        );
                    }
                    Err(HostError::Conflict(m)) => {
                        kv::set_json(CURSOR, &cursor)?;
                        return Err(Error::RetryLater(m));
                    }
                    Err(e) => {
                        kv::set_json(CURSOR, &cursor)?;
                        return Err(e.into());
                    }
                }
                rows.push(mapped.created_at.map(|at| (at, mapped.id)));
            }
            cursor.page_stored(&mut search, &rows);
            kv::set_json(CURSOR, &cursor)?;
            token = page
                .get("nextPageToken")
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty())
                .map(str::to_string);
            if token.is_none() || results.is_empty() {
                break;
            }
        }
        if cursor.search_done(&search) {
            break;
        }
        kv::set_json(CURSOR, &cursor)?;
    }
    log::info(&format!(
        "Google LSA sweep complete: {} leads created, {} updated; newest {}",
        cursor.created,
        cursor.updated,
        cursor.newest.as_deref().unwrap_or("none")
    ));
    cursor.complete(clock::rfc3339(now));
    kv::set_json(CURSOR, &cursor)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_defaults_are_the_codes() {
        let schema: Value = serde_json::from_str(include_str!("../config.schema.json")).unwrap();
        let config = streamflow_plugin_sdk::schema::defaults(&schema);
        let from_schema: Settings = serde_json::from_value(config).unwrap();
        let code = Settings::default();
        assert_eq!(from_schema.api_version, code.api_version);
        assert_eq!(
            from_schema.initial_lookback_days,
            code.initial_lookback_days
        );
        assert_eq!(from_schema.overlap_minutes, code.overlap_minutes);
        assert_eq!(from_schema.page_size, code.page_size);
        assert_eq!(from_schema.feedback.enabled, code.feedback.enabled);
        assert_eq!(from_schema.feedback.stages, code.feedback.stages);
        assert_eq!(from_schema.feedback.lost_stages, code.feedback.lost_stages);
    }
}
