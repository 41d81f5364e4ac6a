//! StreamFlow plugin `job-scheduler`: the actions `schedule-job` (a won estimate becomes
//! a scheduled job) and `schedule-recurring` (a contract or agreement becomes its visits).
//! [`schedule`] plans the records from the action input and the tenant's configuration
//! (see `config.schema.json`); this file only hands them to the host.

pub mod calendar;
pub mod schedule;

use serde_json::{Value, json};
use streamflow_plugin_sdk::{Error, Plugin, config, host_message, log, records};

use schedule::Settings;

/// The `run-action` hook.
pub struct JobScheduler;

impl Plugin for JobScheduler {
    fn run_action(name: &str, input: Value) -> Result<Value, Error> {
        let settings: Settings = config::get()?;
        settings
            .check()
            .map_err(|e| Error::Failed(format!("config: {e}")))?;
        match name {
            "schedule-job" => schedule_job(&settings, &input),
            "schedule-recurring" => schedule_recurring(&settings, &input),
            other => Err(Error::InvalidInput(format!(
                "unknown action {other:?}: this plugin runs schedule-job and schedule-recurring"
            ))),
        }
    }
}

fn schedule_job(settings: &Settings, input: &Value) -> Result<Value, Error> {
    let plan = schedule::plan_job(settings, input).map_err(Error::InvalidInput)?;
    let job = &plan.job;
    let created =
        records::create(&job.record_type, job.stage.as_deref(), &job.data).map_err(|e| {
            Error::Failed(format!(
                "creating the {}: {}",
                job.record_type,
                host_message(&e)
            ))
        })?;
    log::info(&format!(
        "scheduled {} {} for {}",
        job.record_type, created.id, plan.scheduled_for
    ));
    Ok(json!({
        "record_type": job.record_type,
        "id": created.id,
        "scheduled_for": plan.scheduled_for,
    }))
}

fn schedule_recurring(settings: &Settings, input: &Value) -> Result<Value, Error> {
    let plan = schedule::plan_visits(settings, input).map_err(Error::InvalidInput)?;
    let total = plan.visits.len();
    // In date order: the host derives each record's id from the order of creation, so a
    // repeated run creates nothing twice.
    for (i, visit) in plan.visits.iter().enumerate() {
        records::create(&plan.record_type, plan.stage.as_deref(), visit).map_err(|e| {
            Error::Failed(format!(
                "creating {} {} of {total}: {}",
                plan.record_type,
                i + 1,
                host_message(&e)
            ))
        })?;
    }
    if plan.capped {
        log::warn(&format!(
            "created the first {total} visits only (max_visits); the rest were not scheduled"
        ));
    }
    Ok(json!({
        "record_type": plan.record_type,
        "created": total,
        "first": plan.first,
        "last": plan.last,
        "capped": plan.capped,
    }))
}

streamflow_plugin_sdk::export!(JobScheduler);
