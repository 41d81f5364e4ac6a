//! The event dispatcher: delivers outbox events to the plugins subscribed to them
//! (`on-event`) and runs the tenant's matching automations (plugin actions through
//! `run-action`, or built-in actions), at least once and in order per record.
//!
//! Each node runs one dispatcher. It claims a batch of events (see
//! [`crate::store::events`]), handles them concurrently (a batch never holds two events of
//! one record), records each target's outcome and settles the batch in one transaction.
//! A target that fails in a way that may pass later (timeout, busy, storage unavailable,
//! circuit open) makes its event retry with exponential backoff, skipping the targets that
//! already finished. Work an automation does is idempotent: records it creates get ids
//! derived from the event and the target ([`Origin`]), so a repeated run finds them instead
//! of creating them twice.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use streamflow_runtime::{Call, Hook, PluginEvent, Reply};
use tokio::sync::Notify;
use uuid::Uuid;

use crate::api::AppState;
use crate::plugins::{Active, CallError};
use crate::records::WriteRules;
use crate::store::events::{Delivery, NewEvent, QueuedEvent, Settle};
use crate::store::records::RecordRow;
use crate::store::writer::{RecordWrite, WriteOutcome};
use crate::store::{Pool, TenantScope, format_micros, now_micros};
use crate::templates::{Automation, MAX_AUTOMATION_DEPTH, RunKind};

/// Events claimed per round.
const BATCH: i64 = 128;
/// How long a claim lasts. Longer than any batch takes; a node that dies holding claims
/// delays those events by at most this (on SQLite, restarting frees them at once).
const LEASE: Duration = Duration::from_secs(60);
/// How often an idle dispatcher looks for work it was not told about (other nodes' events,
/// retries coming due).
const POLL: Duration = Duration::from_millis(250);
/// How long a suspended tenant's event waits before it is looked at again.
const PARKED: Duration = Duration::from_secs(60);
/// Attempts before an event's failing targets are given up.
pub const MAX_ATTEMPTS: i64 = 8;
/// First retry delay; doubled per attempt, capped at [`MAX_BACKOFF`].
const BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Where a plugin call or built-in action comes from when the dispatcher makes it: what
/// makes its writes idempotent and how deep in an automation chain it is.
#[derive(Debug, Clone)]
pub struct Origin {
    /// Derived from the event id and the target.
    pub key: [u8; 32],
    /// The depth of the events its writes cause.
    pub depth: i64,
    /// The event's time, in milliseconds, used as the time part of derived record ids.
    pub at_ms: u64,
}

impl Origin {
    fn new(event: &QueuedEvent, target: &str) -> Origin {
        let mut hash = Sha256::new();
        hash.update(event.id.as_bytes());
        hash.update(target.as_bytes());
        Origin {
            key: hash.finalize().into(),
            depth: event.depth + 1,
            at_ms: (event.created_at / 1000).max(0) as u64,
        }
    }

    /// The id of the `n`th thing (record, event) this origin creates: the same on every
    /// run, shaped like a UUIDv7 from the event's time so listings stay in creation order.
    pub fn derived_id(&self, n: u32) -> Uuid {
        let mut hash = Sha256::new();
        hash.update(self.key);
        hash.update(n.to_be_bytes());
        let digest = hash.finalize();
        let mut bytes = [0u8; 16];
        bytes[..6].copy_from_slice(&self.at_ms.to_be_bytes()[2..]);
        bytes[6..].copy_from_slice(&digest[..10]);
        bytes[6] = 0x70 | (bytes[6] & 0x0f);
        bytes[8] = 0x80 | (bytes[8] & 0x3f);
        Uuid::from_bytes(bytes)
    }
}

/// Why a target did not finish.
struct TargetError {
    message: String,
    /// Worth trying again later.
    retry: bool,
}

impl From<CallError> for TargetError {
    fn from(e: CallError) -> Self {
        // The host's state (capacity, a paused plugin, a slow compile, a deadline) may
        // change; a plugin's own failure or a broken limit will not, so it is not retried.
        let retry = matches!(e.kind, "timeout" | "busy" | "circuit_open" | "load");
        TargetError {
            message: format!("{}: {}", e.kind, e.message),
            retry,
        }
    }
}

impl TargetError {
    fn permanent(message: impl Into<String>) -> Self {
        TargetError {
            message: message.into(),
            retry: false,
        }
    }

    fn transient(message: impl Into<String>) -> Self {
        TargetError {
            message: message.into(),
            retry: true,
        }
    }
}

/// Stops the dispatcher: it finishes the batch in hand and returns.
#[derive(Clone, Default)]
pub struct Stop {
    stopped: Arc<AtomicBool>,
    notify: Arc<Notify>,
}

impl Stop {
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }
}

/// Starts this node's dispatcher.
pub fn start(state: AppState, stop: Stop) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if matches!(state.store.pool(), Pool::Sqlite(_)) {
            // One node per SQLite file: any claim is this node's own, from before a crash.
            match state.store.release_claims().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(events = n, "released event claims left by an earlier run"),
                Err(e) => tracing::error!(error = %e, "could not release old event claims"),
            }
        }
        let wake = state.writer.committed();
        let node = node_name();
        tracing::info!(%node, "event dispatcher started");
        let slots = (state.config.plugin_instances as usize / 2).max(1);
        let dispatcher = Arc::new(Dispatcher {
            state,
            node,
            plugin_slots: tokio::sync::Semaphore::new(slots),
        });
        while !stop.is_stopped() {
            match dispatcher.round().await {
                Ok(0) => {
                    tokio::select! {
                        _ = wake.notified() => {}
                        _ = tokio::time::sleep(POLL) => {}
                        _ = stop.notify.notified() => {}
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "event dispatch failed; retrying shortly");
                    tokio::time::sleep(POLL * 4).await;
                }
            }
        }
        tracing::info!("event dispatcher stopped");
    })
}

struct Dispatcher {
    state: AppState,
    /// This dispatcher's name in the deliveries it records.
    node: String,
    /// Plugin calls the dispatcher makes at once: half the sandbox's instances, so
    /// interactive calls (scoring a lead being saved) always find one free.
    plugin_slots: tokio::sync::Semaphore,
}

/// `<host>/<pid>/<random>`: unique per running dispatcher.
fn node_name() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "node".into());
    let random = Uuid::new_v4().simple().to_string();
    format!("{host}/{}/{}", std::process::id(), &random[..8])
}

impl Dispatcher {
    /// Claims and handles one batch; returns how many events it handled.
    async fn round(self: &Arc<Self>) -> anyhow::Result<usize> {
        let store = &self.state.store;
        let started = std::time::Instant::now();
        let lease_until = now_micros() + LEASE.as_micros() as i64;
        let events = store.claim_events(&self.node, lease_until, BATCH).await?;
        if events.is_empty() {
            return Ok(0);
        }
        let claimed = started.elapsed();
        let count = events.len();
        // Suspended tenants' events wait, untouched, until the tenant is active again.
        let mut active = HashMap::new();
        for event in &events {
            if let std::collections::hash_map::Entry::Vacant(slot) = active.entry(event.tenant_id) {
                let tenant = store
                    .tenant_by_id(&TenantScope::new(event.tenant_id))
                    .await?;
                slot.insert(tenant.is_some_and(|t| t.is_active()));
            }
        }
        let seqs: Vec<i64> = events.iter().map(|e| e.seq).collect();
        let mut by_task = HashMap::new();
        let mut tasks = tokio::task::JoinSet::new();
        let mut settles = Vec::with_capacity(count);
        for event in events {
            if !active[&event.tenant_id] {
                settles.push(Settle::Park {
                    seq: event.seq,
                    at: now_micros() + PARKED.as_micros() as i64,
                    reason: "the tenant is suspended".into(),
                });
                continue;
            }
            let this = self.clone();
            let (seq, attempts) = (event.seq, event.attempts);
            let task = tasks.spawn(async move { this.handle(event).await });
            by_task.insert(task.id(), (seq, attempts));
        }
        // Keep the leases while the batch runs (a plugin may be compiling, say).
        let heartbeat = {
            let (store, node, seqs) = (store.clone(), self.node.clone(), seqs.clone());
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(LEASE / 3).await;
                    let until = now_micros() + LEASE.as_micros() as i64;
                    if let Err(e) = store.renew_claims(&node, &seqs, until).await {
                        tracing::warn!(error = %e, "could not renew event leases");
                    }
                }
            })
        };
        let mut deliveries = Vec::new();
        while let Some(joined) = tasks.join_next_with_id().await {
            match joined {
                Ok((_, (mut d, s))) => {
                    deliveries.append(&mut d);
                    settles.push(s);
                }
                // A panic in one event's handling fails that event alone.
                Err(e) => {
                    let (seq, attempts) = by_task[&e.id()];
                    tracing::error!(seq, "event handling panicked: {e}");
                    settles.push(retry_or_fail(
                        seq,
                        attempts,
                        format!("the dispatcher crashed handling it: {e}"),
                    ));
                }
            }
        }
        heartbeat.abort();
        let worked = started.elapsed();
        store
            .settle_events(&self.node, &deliveries, &settles)
            .await?;
        let settled = started.elapsed();
        metrics::histogram!("streamflow_dispatch_round_seconds").record(settled.as_secs_f64());
        tracing::debug!(
            events = count,
            claim_ms = claimed.as_secs_f64() * 1e3,
            work_ms = (worked - claimed).as_secs_f64() * 1e3,
            settle_ms = (settled - worked).as_secs_f64() * 1e3,
            "dispatch round"
        );
        metrics::counter!("streamflow_events_dispatched_total").increment(count as u64);
        for d in &deliveries {
            metrics::counter!("streamflow_event_deliveries_total", "status" => d.status)
                .increment(1);
            metrics::histogram!("streamflow_event_delivery_lag_seconds")
                .record((d.finished_at - d.event_at) as f64 / 1e6);
        }
        Ok(count)
    }

    /// Runs every target of one event that has not finished yet.
    async fn handle(&self, event: QueuedEvent) -> (Vec<Delivery>, Settle) {
        let scope = TenantScope::new(event.tenant_id);
        let state = &self.state;
        let targets = match self.targets(&scope, &event).await {
            Ok(t) => t,
            Err(e) => return (Vec::new(), retry(&event, e.to_string())),
        };
        if targets.is_empty() {
            return (
                Vec::new(),
                Settle::Done {
                    seq: event.seq,
                    error: None,
                },
            );
        }
        let finished = if event.attempts > 0 {
            match state.store.finished_targets(event.id).await {
                Ok(f) => f,
                Err(e) => return (Vec::new(), retry(&event, e.to_string())),
            }
        } else {
            Vec::new()
        };
        let delivery =
            |target: &str, status, output: Option<String>, error: Option<String>| Delivery {
                event_id: event.id,
                target: target.to_string(),
                tenant_id: event.tenant_id,
                status,
                attempts: event.attempts + 1,
                output,
                error,
                event_at: event.created_at,
                finished_at: now_micros(),
                node: self.node.clone(),
            };
        if event.depth >= MAX_AUTOMATION_DEPTH {
            let message = format!(
                "stopped: {} automations in a row led to this event; they may be triggering each other",
                event.depth
            );
            let stopped = json!({
                "kind": event.kind,
                "depth": event.depth,
                "targets": targets.iter().map(Target::name).collect::<Vec<_>>(),
            });
            let origin = Origin::new(&event, "loop");
            let record = event.record_type.as_deref().zip(event.record_id);
            // The report of a cut chain is not reported again (it is as deep as the chain).
            if event.kind != "automation.loop_stopped"
                && let Err(e) = state
                    .store
                    .insert_event(
                        &scope,
                        &NewEvent {
                            id: origin.derived_id(0),
                            kind: "automation.loop_stopped",
                            record,
                            actor: "dispatcher",
                            payload: &stopped,
                            depth: event.depth,
                        },
                    )
                    .await
            {
                return (Vec::new(), retry(&event, e.to_string()));
            }
            tracing::warn!(tenant = %event.tenant_id, kind = %event.kind, "{message}");
            let deliveries = targets
                .iter()
                .map(|t| delivery(&t.name(), "skipped", None, Some(message.clone())))
                .collect();
            return (
                deliveries,
                Settle::Done {
                    seq: event.seq,
                    error: Some(message),
                },
            );
        }
        let record = match (&event.record_type, event.record_id) {
            (Some(t), Some(id)) => match state.store.get_record(&scope, t, id).await {
                Ok(r) => r,
                Err(e) => return (Vec::new(), retry(&event, e.to_string())),
            },
            _ => None,
        };
        let context = json!({
            "event": {
                "id": event.id,
                "kind": event.kind,
                "record_type": event.record_type,
                "record_id": event.record_id,
                "payload": event.payload.0,
            },
            "record": record.as_ref().map(record_json),
        });
        let mut deliveries = Vec::new();
        let mut failure: Option<String> = None;
        let mut retryable = false;
        for target in &targets {
            let name = target.name();
            if finished.contains(&name) {
                continue;
            }
            if let Target::Automation(a) = target
                && !a.when.iter().all(|c| c.holds(&context))
            {
                continue;
            }
            let origin = Origin::new(&event, &name);
            let result = match target {
                Target::Plugin(active) => self.deliver(&scope, active, &event, origin).await,
                Target::Automation(a) => {
                    self.run(&scope, a, &event, &context, record.as_ref(), origin)
                        .await
                }
            };
            match result {
                Ok(output) => deliveries.push(delivery(&name, "done", output, None)),
                Err(e) if e.retry && event.attempts + 1 < MAX_ATTEMPTS => {
                    retryable = true;
                    failure = Some(format!("{name}: {}", e.message));
                }
                Err(e) => {
                    tracing::warn!(tenant = %event.tenant_id, target = %name, kind = %event.kind,
                        "automation failed: {}", e.message);
                    failure = Some(format!("{name}: {}", e.message));
                    deliveries.push(delivery(&name, "failed", None, Some(e.message)));
                }
            }
        }
        let settle = match failure {
            Some(error) if retryable => retry(&event, error),
            error => Settle::Done {
                seq: event.seq,
                error,
            },
        };
        (deliveries, settle)
    }

    /// The automations and subscribed plugins an event concerns.
    async fn targets(
        &self,
        scope: &TenantScope,
        event: &QueuedEvent,
    ) -> anyhow::Result<Vec<Target>> {
        let mut targets = Vec::new();
        if let Some(spec) = self.state.workflows.spec(&self.state.store, scope).await? {
            for a in &spec.automations {
                if a.on == event.kind
                    && a.record_type
                        .as_deref()
                        .is_none_or(|t| event.record_type.as_deref() == Some(t))
                {
                    targets.push(Target::Automation(Arc::new(a.clone())));
                }
            }
        }
        for active in self.state.plugins.active(scope).await?.iter() {
            if active.manifest.has_hook(Hook::OnEvent)
                && active
                    .manifest
                    .subscriptions
                    .iter()
                    .any(|s| s == &event.kind)
            {
                targets.push(Target::Plugin(active.clone()));
            }
        }
        Ok(targets)
    }

    async fn deliver(
        &self,
        scope: &TenantScope,
        active: &Arc<Active>,
        event: &QueuedEvent,
        origin: Origin,
    ) -> Result<Option<String>, TargetError> {
        let call = Call::OnEvent(PluginEvent {
            id: event.id.to_string(),
            kind: event.kind.clone(),
            record_type: event.record_type.clone(),
            record_id: event.record_id.map(|id| id.to_string()),
            payload: event.payload.0.to_string(),
            at: event.created_at,
        });
        let _slot = self
            .plugin_slots
            .acquire()
            .await
            .map_err(|_| TargetError::transient("shutting down"))?;
        self.state
            .plugins
            .call_from(scope, active, call, Some(origin))
            .await?;
        Ok(None)
    }

    async fn run(
        &self,
        scope: &TenantScope,
        automation: &Automation,
        event: &QueuedEvent,
        context: &Value,
        record: Option<&RecordRow>,
        origin: Origin,
    ) -> Result<Option<String>, TargetError> {
        match automation.run.kind().map_err(TargetError::permanent)? {
            RunKind::Plugin { plugin, action } => {
                let active = self
                    .state
                    .plugins
                    .active(scope)
                    .await
                    .map_err(|e| TargetError::transient(e.to_string()))?;
                let Some(active) = active.iter().find(|a| a.plugin_id == plugin) else {
                    return Err(TargetError::permanent(format!(
                        "plugin {plugin} is not installed and enabled for this tenant"
                    )));
                };
                let mut event_json = context["event"].clone();
                event_json["at"] = json!(event.created_at);
                let input = json!({
                    "event": event_json,
                    "record": context["record"],
                    "params": automation.run.params,
                });
                let call = Call::RunAction {
                    name: action.to_string(),
                    input: input.to_string(),
                };
                let _slot = self
                    .plugin_slots
                    .acquire()
                    .await
                    .map_err(|_| TargetError::transient("shutting down"))?;
                match self
                    .state
                    .plugins
                    .call_from(scope, active, call, Some(origin))
                    .await?
                {
                    Reply::Output(output) => Ok(Some(output)),
                    _ => Err(TargetError::permanent(
                        "the plugin answered with the wrong kind of result",
                    )),
                }
            }
            RunKind::CreateRecord => {
                self.create_record(scope, automation, event, record, origin)
                    .await
            }
        }
    }

    /// The built-in `create-record`: a record linked to the one that caused the event.
    async fn create_record(
        &self,
        scope: &TenantScope,
        automation: &Automation,
        event: &QueuedEvent,
        source: Option<&RecordRow>,
        origin: Origin,
    ) -> Result<Option<String>, TargetError> {
        let run = &automation.run;
        let record_type = run.record_type.clone().unwrap_or_default();
        let mut data: Map<String, Value> = run.data.clone();
        if let Some(source) = source {
            for (to, from) in &run.copy {
                if let Some(v) = source.data.0.get(from).filter(|v| !v.is_null()) {
                    data.insert(to.clone(), v.clone());
                }
            }
        }
        if let Some(link) = &run.link {
            let Some(id) = event.record_id else {
                return Err(TargetError::permanent("the event has no record to link to"));
            };
            data.insert(link.clone(), json!(id));
        }
        if let Some(due) = &run.due {
            data.insert(
                due.field.clone(),
                json!(format_micros(
                    event.created_at.saturating_add(due.offset_micros())
                )),
            );
        }
        let data = Value::Object(data);
        let id = origin.derived_id(0);
        let state = &self.state;
        let output =
            |row_id: Uuid| Some(json!({ "record_type": record_type, "id": row_id }).to_string());
        // Already created by an earlier run of this event.
        match state.store.record_by_id(scope, id).await {
            Ok(Some(_)) => return Ok(output(id)),
            Ok(None) => {}
            Err(e) => return Err(TargetError::transient(e.to_string())),
        }
        let rules = WriteRules {
            store: &state.store,
            schemas: &state.schemas,
            workflows: &state.workflows,
        };
        let stage = rules
            .create(scope, &record_type, run.stage.clone(), &data)
            .await
            .map_err(|e| {
                let details = e
                    .details
                    .get("errors")
                    .map(|d| format!(" {d}"))
                    .unwrap_or_default();
                let message = format!("{}{details}", e.message);
                if e.status.is_server_error() {
                    TargetError::transient(message)
                } else {
                    TargetError::permanent(message)
                }
            })?;
        let outcome = state
            .writer
            .submit(RecordWrite::Create {
                scope: *scope,
                id,
                record_type: record_type.clone(),
                stage,
                data,
                score: None,
                events: Vec::new(),
                created_by: None,
                actor: format!("automation:{}", automation.id),
                depth: origin.depth,
            })
            .await;
        match outcome {
            Ok(WriteOutcome::Created(row)) => Ok(output(row.id)),
            Ok(_) => Err(TargetError::permanent("unexpected write outcome")),
            Err(e) => {
                // A concurrent run may have created it first.
                if let Ok(Some(_)) = state.store.record_by_id(scope, id).await {
                    Ok(output(id))
                } else {
                    Err(TargetError::transient(e.to_string()))
                }
            }
        }
    }
}

enum Target {
    Automation(Arc<Automation>),
    Plugin(Arc<Active>),
}

impl Target {
    fn name(&self) -> String {
        match self {
            Target::Automation(a) => format!("automation:{}", a.id),
            Target::Plugin(p) => format!("plugin:{}", p.plugin_id),
        }
    }
}

fn retry(event: &QueuedEvent, error: String) -> Settle {
    retry_or_fail(event.seq, event.attempts, error)
}

/// Another attempt after a backoff, or, after [`MAX_ATTEMPTS`], given up.
fn retry_or_fail(seq: i64, attempts: i64, error: String) -> Settle {
    if attempts + 1 >= MAX_ATTEMPTS {
        return Settle::Done {
            seq,
            error: Some(format!("gave up after {MAX_ATTEMPTS} attempts: {error}")),
        };
    }
    let factor = 2u32.saturating_pow(attempts.clamp(0, 20) as u32);
    let delay = BACKOFF.saturating_mul(factor).min(MAX_BACKOFF);
    Settle::Retry {
        seq,
        at: now_micros() + delay.as_micros() as i64,
        error,
    }
}

/// A record as automations' conditions and plugin actions see it.
fn record_json(row: &RecordRow) -> Value {
    json!({
        "id": row.id,
        "type": row.record_type,
        "stage": row.stage,
        "version": row.version,
        "data": row.data.0,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_ids_are_stable_distinct_and_time_ordered() {
        let origin = |key: u8, at_ms| Origin {
            key: [key; 32],
            depth: 1,
            at_ms,
        };
        let a = origin(1, 1_700_000_000_000);
        assert_eq!(a.derived_id(0), a.derived_id(0));
        assert_ne!(a.derived_id(0), a.derived_id(1));
        assert_ne!(a.derived_id(0), origin(2, 1_700_000_000_000).derived_id(0));
        assert_eq!(a.derived_id(0).get_version_num(), 7);
        assert!(origin(9, 1_700_000_000_001).derived_id(0) > a.derived_id(0));
    }
}
