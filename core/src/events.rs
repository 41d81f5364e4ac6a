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
use streamflow_runtime::{Call, Capability, Grants, Hook, PluginEvent, Reply};
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
    /// The event the chain started from: what it creates spends that root's budget.
    pub root: Uuid,
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
            root: event.root(),
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
                            root: Some(event.root()),
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
        let due: Vec<&Target> = targets
            .iter()
            .filter(|t| !finished.contains(&t.name()))
            .filter(|t| match t {
                Target::Automation(a) => a.when.iter().all(|c| c.holds(&context)),
                Target::Plugin(_) => true,
            })
            .collect();
        // A chain's runs spend its root's budget, once per event (on its first attempt; a
        // crash before settling may spend twice, which only stops a chain sooner). The
        // report of an exhausted budget is delivered (once per chain); whatever its
        // subscribers cause is in the same chain, and refused.
        if event.depth > 0
            && event.attempts == 0
            && !due.is_empty()
            && event.kind != "automation.budget_exhausted"
        {
            let budget = state.config.automation_budget;
            match state
                .store
                .spend_budget(&scope, event.root(), due.len() as i64, budget)
                .await
            {
                Ok(true) => {}
                Ok(false) => return self.budget_exhausted(&scope, &event, &due, budget).await,
                Err(e) => return (Vec::new(), retry(&event, e.to_string())),
            }
        }
        let mut deliveries = Vec::new();
        let mut failure: Option<String> = None;
        let mut retryable = false;
        for target in due {
            let name = target.name();
            let origin = Origin::new(&event, &name);
            let result = match target {
                Target::Plugin(active) => {
                    self.deliver(&scope, active, &event, record.as_ref(), origin)
                        .await
                }
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
            // Other plugins' events are theirs: refused at upload, and not delivered even to
            // a manifest stored before that check.
            if active.manifest.has_hook(Hook::OnEvent)
                && active.manifest.may_receive(&event.kind)
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

    /// Stops a chain that used up its budget: its targets are skipped, and the first event
    /// of the chain to find it so writes `automation.budget_exhausted` (once per chain: its
    /// id is derived from the root).
    async fn budget_exhausted(
        &self,
        scope: &TenantScope,
        event: &QueuedEvent,
        due: &[&Target],
        budget: i64,
    ) -> (Vec<Delivery>, Settle) {
        let message = format!(
            "stopped: the change that started this chain has caused {budget} plugin and automation runs, its budget; they may be triggering each other"
        );
        let names: Vec<String> = due.iter().map(|t| t.name()).collect();
        let payload = json!({
            "root": event.root(),
            "kind": event.kind,
            "depth": event.depth,
            "budget": budget,
            "targets": names,
        });
        let mut hash = Sha256::new();
        hash.update(event.root().as_bytes());
        hash.update(b"budget_exhausted");
        // Timed like the root (ids are UUIDv7), so every event of the chain derives the same id.
        let root_ms = event.root().get_timestamp().map_or(0, |t| {
            t.to_unix().0 * 1000 + u64::from(t.to_unix().1 / 1_000_000)
        });
        let origin = Origin {
            key: hash.finalize().into(),
            depth: event.depth,
            at_ms: root_ms,
            root: event.root(),
        };
        if let Err(e) = self
            .state
            .store
            .insert_event(
                scope,
                &NewEvent {
                    id: origin.derived_id(0),
                    kind: "automation.budget_exhausted",
                    record: event.record_type.as_deref().zip(event.record_id),
                    actor: "dispatcher",
                    payload: &payload,
                    depth: event.depth,
                    root: Some(event.root()),
                },
            )
            .await
        {
            return (Vec::new(), retry(event, e.to_string()));
        }
        tracing::warn!(tenant = %event.tenant_id, kind = %event.kind, root = %event.root(), "{message}");
        let deliveries = names
            .iter()
            .map(|name| Delivery {
                event_id: event.id,
                target: name.clone(),
                tenant_id: event.tenant_id,
                status: "skipped",
                attempts: event.attempts + 1,
                output: None,
                error: Some(message.clone()),
                event_at: event.created_at,
                finished_at: now_micros(),
                node: self.node.clone(),
            })
            .collect();
        (
            deliveries,
            Settle::Done {
                seq: event.seq,
                error: Some(message),
            },
        )
    }

    async fn deliver(
        &self,
        scope: &TenantScope,
        active: &Arc<Active>,
        event: &QueuedEvent,
        record: Option<&RecordRow>,
        origin: Origin,
    ) -> Result<Option<String>, TargetError> {
        let payload = plugin_payload(&self.state.store, scope, &active.grants, event, record)
            .await
            .map_err(|e| TargetError::transient(e.to_string()))?;
        let call = Call::OnEvent(PluginEvent {
            id: event.id.to_string(),
            kind: event.kind.clone(),
            record_type: event.record_type.clone(),
            record_id: event.record_id.map(|id| id.to_string()),
            payload: payload.to_string(),
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
                // The action sees what its plugin's grants allow, like `on-event`.
                let store = &self.state.store;
                let payload = plugin_payload(store, scope, &active.grants, event, record)
                    .await
                    .map_err(|e| TargetError::transient(e.to_string()))?;
                let record_view = match record {
                    Some(row) => plugin_record_json(store, scope, &active.grants, row)
                        .await
                        .map_err(|e| TargetError::transient(e.to_string()))?,
                    None => Value::Null,
                };
                let mut event_json = context["event"].clone();
                event_json["at"] = json!(event.created_at);
                event_json["payload"] = payload;
                let input = json!({
                    "event": event_json,
                    "record": record_view,
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
                root: Some(origin.root),
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

// What plugins may see of records and events.
//
// `records:read` is needed for any record data: without it a plugin is told which record
// changed (kind, type, id) and its stage, nothing more. `records:read-pii` adds the fields
// the record type's schema marks `"x-pii": true`; without it they are left out of events,
// action inputs and what the `records` capability returns.

/// Payload keys that are about a record's place in its pipeline, not its data.
const STAGE_KEYS: &[&str] = &["stage", "from", "to", "version", "previous_version"];

/// An event's payload as a plugin with `grants` may see it.
pub(crate) async fn plugin_payload(
    store: &crate::store::Store,
    scope: &TenantScope,
    grants: &Grants,
    event: &QueuedEvent,
    record: Option<&RecordRow>,
) -> crate::store::StoreResult<Value> {
    let payload = &event.payload.0;
    let Some(record_type) = event.record_type.as_deref() else {
        // Not about a record: the kernel's reports (kinds, depths, target names) and a
        // plugin's own events.
        return Ok(payload.clone());
    };
    if !grants.allows(Capability::RecordsRead) {
        let mut view = Map::new();
        for key in STAGE_KEYS {
            if let Some(v) = payload.get(*key) {
                view.insert(key.to_string(), v.clone());
            }
        }
        if let Some(row) = record {
            view.insert("stage".into(), json!(row.stage));
        }
        return Ok(Value::Object(view));
    }
    let mut payload = payload.clone();
    if !grants.allows(Capability::RecordsReadPii)
        && let Some(data) = payload.get_mut("data")
    {
        strip_pointers(data, &pii_fields(store, scope, record_type).await?);
    }
    Ok(payload)
}

/// A record as a plugin action's input shows it, by the plugin's grants.
pub(crate) async fn plugin_record_json(
    store: &crate::store::Store,
    scope: &TenantScope,
    grants: &Grants,
    row: &RecordRow,
) -> crate::store::StoreResult<Value> {
    let mut view = record_json(row);
    if !grants.allows(Capability::RecordsRead) {
        if let Some(object) = view.as_object_mut() {
            object.remove("data");
        }
    } else if !grants.allows(Capability::RecordsReadPii) {
        strip_pointers(
            &mut view["data"],
            &pii_fields(store, scope, &row.record_type).await?,
        );
    }
    Ok(view)
}

/// The PII fields of a tenant's record type (see [`pii_pointers`]).
pub(crate) async fn pii_fields(
    store: &crate::store::Store,
    scope: &TenantScope,
    record_type: &str,
) -> crate::store::StoreResult<Vec<String>> {
    Ok(store
        .record_type(scope, record_type)
        .await?
        .and_then(|t| t.schema)
        .map(|schema| pii_pointers(&schema.0))
        .unwrap_or_default())
}

/// JSON pointers (into a record's data) of what a schema marks `"x-pii": true`: fields
/// reached through `properties` (and `allOf` / local `$ref`, which apply at the same
/// place). A mark anywhere else beneath a field (under `items`, `anyOf`, ...) makes that
/// whole field personal, and one that cannot be tied to a field makes the whole data so
/// (`""`): when in doubt, leave out more.
pub(crate) fn pii_pointers(schema: &Value) -> Vec<String> {
    /// Schema nodes looked at, at most: a schema whose `$ref`s branch so much that it
    /// would take longer is treated as personal throughout.
    const MAX_VISITS: usize = 20_000;
    struct Scan<'a> {
        root: &'a Value,
        visits: usize,
        out: Vec<String>,
    }
    fn marked(node: &Value) -> bool {
        node.get("x-pii").and_then(Value::as_bool) == Some(true)
    }
    impl Scan<'_> {
        fn tick(&mut self) -> bool {
            self.visits += 1;
            self.visits <= MAX_VISITS
        }
        /// Whether a mark sits in `node` outside the places `walk` follows (`top`: the
        /// node's own mark, `properties`, `allOf` and `$ref` are walked precisely).
        fn elsewhere(&mut self, node: &Value, seen: &mut Vec<String>, top: bool) -> bool {
            if !self.tick() {
                return true;
            }
            match node {
                Value::Array(items) => items.iter().any(|v| self.elsewhere(v, seen, false)),
                Value::Object(map) => {
                    if !top && marked(node) {
                        return true;
                    }
                    if !top
                        && let Some(Value::String(r)) = map.get("$ref")
                        && let Some(pointer) = r.strip_prefix('#')
                        && !seen.iter().any(|s| s == pointer)
                    {
                        seen.push(pointer.to_string());
                        let root = self.root;
                        if let Some(target) = root.pointer(pointer)
                            && self.elsewhere(target, seen, false)
                        {
                            return true;
                        }
                    }
                    map.iter().any(|(k, v)| {
                        let walked = top && matches!(k.as_str(), "properties" | "allOf" | "$ref");
                        if walked {
                            return false;
                        }
                        // Maps whose values are schemas, whatever their keys: a property
                        // may well be named `default` or `enum`.
                        if matches!(
                            k.as_str(),
                            "properties" | "patternProperties" | "dependentSchemas"
                        ) && let Value::Object(schemas) = v
                        {
                            return schemas.values().any(|s| self.elsewhere(s, seen, false));
                        }
                        let not_schema = matches!(
                            k.as_str(),
                            "enum" | "const" | "default" | "examples" | "$defs" | "definitions"
                        );
                        !not_schema && self.elsewhere(v, seen, false)
                    })
                }
                _ => false,
            }
        }
        fn walk(&mut self, node: &Value, at: String, depth: usize) {
            if self.out.iter().any(|p| p.is_empty()) {
                return;
            }
            if depth > 64 || !self.tick() {
                self.out = vec![String::new()];
                return;
            }
            if marked(node) || self.elsewhere(node, &mut Vec::new(), true) {
                if !self.out.contains(&at) {
                    self.out.push(at);
                }
                return;
            }
            if let Some(Value::Object(props)) = node.get("properties") {
                for (name, sub) in props {
                    let here = format!("{at}/{}", streamflow_runtime::pointer::escape(name));
                    self.walk(sub, here, depth + 1);
                }
            }
            if let Some(Value::Array(all)) = node.get("allOf") {
                for sub in all {
                    self.walk(sub, at.clone(), depth + 1);
                }
            }
            let root = self.root;
            if let Some(Value::String(r)) = node.get("$ref")
                && let Some(target) = r.strip_prefix('#').and_then(|p| root.pointer(p))
            {
                self.walk(target, at, depth + 1);
            }
        }
    }
    let mut scan = Scan {
        root: schema,
        visits: 0,
        out: Vec::new(),
    };
    scan.walk(schema, String::new(), 0);
    if scan.out.iter().any(|p| p.is_empty()) {
        return vec![String::new()];
    }
    scan.out
}

/// Removes each pointer's value from `data` (`""`: everything).
pub(crate) fn strip_pointers(data: &mut Value, pointers: &[String]) {
    for pointer in pointers {
        if pointer.is_empty() {
            *data = Value::Object(Map::new());
            return;
        }
        crate::plugins::config::take_pointer(data, pointer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pii_fields_are_found_wherever_they_are_marked() {
        let pii = json!({"type": "string", "x-pii": true});
        let schema = json!({
            "type": "object",
            "properties": {
                "name": pii,
                "budget": {"type": "number"},
                "address": {"type": "object", "properties": {"street": pii, "city": {"type": "string"}}},
                "phones": {"type": "array", "items": pii},
                "contact": {"$ref": "#/$defs/person"},
                "either": {"anyOf": [{"type": "null"}, {"$ref": "#/$defs/secretish"}]}
            },
            "allOf": [{"properties": {"email": pii}}],
            "$defs": {
                "person": {"type": "object", "properties": {"phone": pii, "role": {"type": "string"}}},
                "secretish": pii
            }
        });
        let mut found = pii_pointers(&schema);
        found.sort();
        assert_eq!(
            found,
            vec![
                "/address/street",
                "/contact/phone",
                "/either",
                "/email",
                "/name",
                "/phones"
            ]
        );
        let mut data = json!({
            "name": "Ada", "budget": 5, "address": {"street": "1 Way", "city": "Oslo"},
            "phones": ["1"], "contact": {"phone": "2", "role": "x"}, "either": "3", "email": "a@b"
        });
        strip_pointers(&mut data, &pii_pointers(&schema));
        assert_eq!(
            data,
            json!({"budget": 5, "address": {"city": "Oslo"}, "contact": {"role": "x"}})
        );
        // A mark that cannot be tied to a field hides all the data.
        let loose = json!({"type": "object", "patternProperties": {"^p": pii}});
        assert_eq!(pii_pointers(&loose), vec![String::new()]);
        let mut data = json!({"p1": "x", "q": 1});
        strip_pointers(&mut data, &pii_pointers(&loose));
        assert_eq!(data, json!({}));
        assert!(
            pii_pointers(
                &json!({"type": "object", "properties": {"a": {"enum": [{"x-pii": true}]}}})
            )
            .is_empty()
        );
        // A property named like a non-schema keyword is still a schema.
        let named = json!({"type": "object", "properties": {"items": {"type": "array",
            "items": {"type": "object", "properties": {"default": pii}}}}});
        assert_eq!(pii_pointers(&named), vec!["/items".to_string()]);
    }

    #[test]
    fn derived_ids_are_stable_distinct_and_time_ordered() {
        let origin = |key: u8, at_ms| Origin {
            key: [key; 32],
            depth: 1,
            at_ms,
            root: Uuid::nil(),
        };
        let a = origin(1, 1_700_000_000_000);
        assert_eq!(a.derived_id(0), a.derived_id(0));
        assert_ne!(a.derived_id(0), a.derived_id(1));
        assert_ne!(a.derived_id(0), origin(2, 1_700_000_000_000).derived_id(0));
        assert_eq!(a.derived_id(0).get_version_num(), 7);
        assert!(origin(9, 1_700_000_000_001).derived_id(0) > a.derived_id(0));
    }
}
