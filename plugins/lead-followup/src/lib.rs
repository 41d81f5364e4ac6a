//! StreamFlow plugin `lead-followup`: when a lead is scored hot (hook `on-event`, event
//! `lead.scored`) it creates the tenant's follow-up tasks once, due within working hours;
//! the action `create-followups` does the same for any record. [`followup`] plans the
//! tasks (see `config.schema.json` for the settings); this file makes the host calls.

pub mod followup;
pub mod hours;

use serde_json::{Value, json};
use streamflow_plugin_sdk::{
    Error, Event, HostError, Plugin, config, host_message, kv, log, records,
};

use followup::{OnScored, Settings, Subject};

/// The `on-event` and `run-action` hooks.
pub struct LeadFollowup;

impl Plugin for LeadFollowup {
    fn on_event(event: Event) -> Result<(), Error> {
        if event.kind != "lead.scored" {
            return Ok(());
        }
        let (settings, hours) = settings()?;
        let decision = followup::on_scored(&settings, &event.json()?, event.record_id.as_deref())
            .map_err(Error::InvalidInput)?;
        let OnScored::FollowUp { lead_id } = decision else {
            return Ok(());
        };
        let key = followup::scored_key(&lead_id);
        if kv::get(&key).map_err(host)?.is_some() {
            return Ok(());
        }
        let record_type = event.record_type.as_deref().unwrap_or("lead");
        let Some(lead) = records::get(record_type, &lead_id).map_err(host)? else {
            log::debug(&format!("lead {lead_id} is gone; no follow-up"));
            return Ok(());
        };
        let data = lead.json()?;
        let empty = serde_json::Map::new();
        let subject = Subject {
            id: lead.id.clone(),
            record_type: lead.record_type.clone(),
            data: data.as_object().unwrap_or(&empty),
        };
        let tasks = followup::plan_tasks(&hours, &settings.tasks, &subject, event.at)
            .map_err(Error::InvalidInput)?;
        create_tasks(&settings, &tasks)?;
        kv::set_json(&key, &json!({"at": event.at, "tasks": tasks.len()})).map_err(host)?;
        log::info(&format!(
            "created {} follow-up tasks for lead {lead_id}",
            tasks.len()
        ));
        Ok(())
    }

    fn run_action(name: &str, input: Value) -> Result<Value, Error> {
        if name != "create-followups" {
            return Err(Error::InvalidInput(format!(
                "unknown action {name:?}: this plugin runs create-followups"
            )));
        }
        let (settings, hours) = settings()?;
        let plan = followup::plan_action(&settings, &hours, &input).map_err(Error::InvalidInput)?;
        if let Some(key) = &plan.once_key
            && kv::get(key).map_err(host)?.is_some()
        {
            return Ok(json!({"created": 0, "skipped": true}));
        }
        create_tasks(&settings, &plan.tasks)?;
        if let Some(key) = &plan.once_key {
            kv::set_json(key, &json!({"tasks": plan.tasks.len()})).map_err(host)?;
        }
        Ok(json!({"created": plan.tasks.len(), "skipped": false}))
    }
}

fn settings() -> Result<(Settings, hours::WorkingHours), Error> {
    let settings: Settings = config::get()?;
    let hours = settings
        .check()
        .map_err(|e| Error::Failed(format!("config: {e}")))?;
    Ok((settings, hours))
}

/// Creates the tasks in order: the host derives each record's id from the order of
/// creation, so a repeated delivery creates nothing twice.
fn create_tasks(settings: &Settings, tasks: &[Value]) -> Result<(), Error> {
    let stage = Some(settings.task_stage.trim()).filter(|s| !s.is_empty());
    for (i, task) in tasks.iter().enumerate() {
        records::create("task", stage, task).map_err(|e| {
            Error::Failed(format!(
                "creating task {} of {}: {}",
                i + 1,
                tasks.len(),
                host_message(&e)
            ))
        })?;
    }
    Ok(())
}

/// A host call that failed, as the hook's failure.
fn host(e: HostError) -> Error {
    Error::Failed(host_message(&e))
}

streamflow_plugin_sdk::export!(LeadFollowup);
