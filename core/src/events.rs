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
use streamflow_runtime::{Call, EventKind, Hook, PluginEvent, Reply};
use tokio::sync::Notify;
use uuid::Uuid;

use crate::error::RecordError;
use crate::kernel::visibility::{filter_view, plugin_payload, plugin_record_json, record_json};
use crate::kernel::{Kernel, NewId, NewRecord, WriteContext};
use crate::plugins::{Active, CallError};
use crate::records::Origin;
use crate::store::events::{Delivery, DeliveryStatus, NewEvent, QueuedEvent, Settle};
use crate::store::records::RecordRow;
use crate::store::{TenantScope, format_micros, now_micros};
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

/// Why a target did not finish.
struct TargetError {
    message: String,
    /// Worth trying again later.
    retry: bool,
}

impl From<CallError> for TargetError {
    fn from(e: CallError) -> Self {
        TargetError {
            message: format!("{}: {}", e.kind, e.message),
            retry: e.kind.is_transient(),
        }
    }
}

impl From<RecordError> for TargetError {
    fn from(e: RecordError) -> Self {
        TargetError {
            retry: e.is_transient(),
            message: e.describe(),
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

    pub(crate) fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    /// Resolves once [`Stop::stop`] is called.
    pub(crate) async fn stopped(&self) {
        loop {
            let notified = self.notify.notified();
            if self.is_stopped() {
                return;
            }
            notified.await;
        }
    }
}

/// Starts this node's dispatcher.
pub fn start(kernel: Arc<Kernel>, stop: Stop) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if kernel.store.single_node() {
            // One node per SQLite file: any claim is this node's own, from before a crash.
            match kernel.store.release_claims().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(events = n, "released event claims left by an earlier run"),
                Err(e) => tracing::error!(error = %e, "could not release old event claims"),
            }
        }
        let wake = kernel.writer.committed();
        let node = node_name();
        tracing::info!(%node, "event dispatcher started");
        let slots = (kernel.config.plugin_instances as usize / 2).max(1);
        let share = kernel.config.plugin_tenant_share();
        let dispatcher = Arc::new(Dispatcher {
            kernel,
            node,
            plugin_slots: crate::fair::FairPool::new(slots, (share / 2).max(1)),
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
    kernel: Arc<Kernel>,
    /// This dispatcher's name in the deliveries it records.
    node: String,
    /// Plugin calls the dispatcher makes at once: half the sandbox's instances, and half a
    /// tenant's share for each tenant, so interactive calls (scoring a lead being saved)
    /// always find one free. A call waits for its slot here rather than fail `busy` in the
    /// host (a busy delivery is retried later, with backoff).
    plugin_slots: crate::fair::FairPool,
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
        let store = &self.kernel.store;
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
            metrics::counter!("streamflow_event_deliveries_total", "status" => d.status.as_str())
                .increment(1);
            metrics::histogram!("streamflow_event_delivery_lag_seconds")
                .record((d.finished_at - d.event_at) as f64 / 1e6);
        }
        Ok(count)
    }

    /// Runs every target of one event that has not finished yet.
    async fn handle(&self, event: QueuedEvent) -> (Vec<Delivery>, Settle) {
        match self.try_handle(&event).await {
            Ok(handled) => handled,
            Err(e) => (Vec::new(), retry(&event, e.to_string())),
        }
    }

    /// [`Dispatcher::handle`]; an error (the store's) retries the event.
    async fn try_handle(&self, event: &QueuedEvent) -> anyhow::Result<(Vec<Delivery>, Settle)> {
        let scope = TenantScope::new(event.tenant_id);
        let kernel = &self.kernel;
        let targets = self.targets(&scope, event).await?;
        if targets.is_empty() {
            return Ok((Vec::new(), done(event, None)));
        }
        let finished = if event.attempts > 0 {
            kernel.store.finished_targets(event.id).await?
        } else {
            Vec::new()
        };
        if event.depth >= MAX_AUTOMATION_DEPTH {
            return self.stop_loop(&scope, event, &targets).await;
        }
        let record = match (&event.record_type, event.record_id) {
            (Some(t), Some(id)) => kernel.store.get_record(&scope, t, id).await?,
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
            && event.kind != EventKind::BudgetExhausted
        {
            let budget = kernel.config.automation_budget;
            if !kernel
                .store
                .spend_budget(&scope, event.root(), due.len() as i64, budget)
                .await?
            {
                return Ok(self.budget_exhausted(&scope, event, &due, budget).await);
            }
        }
        Ok(self
            .run_due(&scope, event, &due, &context, record.as_ref())
            .await)
    }

    /// Runs the due targets one after another; what failed transiently is retried with
    /// the event, what failed for good is recorded as failed.
    async fn run_due(
        &self,
        scope: &TenantScope,
        event: &QueuedEvent,
        due: &[&Target],
        context: &Value,
        record: Option<&RecordRow>,
    ) -> (Vec<Delivery>, Settle) {
        let mut deliveries = Vec::new();
        let mut failure: Option<String> = None;
        let mut retryable = false;
        for target in due {
            let name = target.name();
            let origin = Origin::of(event, &name);
            let result = match target {
                Target::Plugin(active) => self.deliver(scope, active, event, record, origin).await,
                Target::Automation(a) => self.run(scope, a, event, context, record, origin).await,
            };
            match result {
                Ok(output) => {
                    deliveries.push(self.delivery(event, &name, DeliveryStatus::Done, output, None))
                }
                Err(e) if e.retry && event.attempts + 1 < MAX_ATTEMPTS => {
                    retryable = true;
                    failure = Some(format!("{name}: {}", e.message));
                }
                Err(e) => {
                    tracing::warn!(tenant = %event.tenant_id, target = %name, kind = %event.kind,
                        "automation failed: {}", e.message);
                    failure = Some(format!("{name}: {}", e.message));
                    deliveries.push(self.delivery(
                        event,
                        &name,
                        DeliveryStatus::Failed,
                        None,
                        Some(e.message),
                    ));
                }
            }
        }
        let settle = match failure {
            Some(error) if retryable => retry(event, error),
            error => done(event, error),
        };
        (deliveries, settle)
    }

    /// Cuts a chain that went [`MAX_AUTOMATION_DEPTH`] deep: its targets are skipped, and
    /// `automation.loop_stopped` reports it (not for a report itself, which is as deep).
    async fn stop_loop(
        &self,
        scope: &TenantScope,
        event: &QueuedEvent,
        targets: &[Target],
    ) -> anyhow::Result<(Vec<Delivery>, Settle)> {
        let message = format!(
            "stopped: {} automations in a row led to this event; they may be triggering each other",
            event.depth
        );
        let stopped = json!({
            "kind": event.kind,
            "depth": event.depth,
            "targets": targets.iter().map(Target::name).collect::<Vec<_>>(),
        });
        let origin = Origin::of(event, "loop");
        if event.kind != EventKind::LoopStopped {
            self.kernel
                .store
                .insert_event(
                    scope,
                    &NewEvent {
                        id: origin.derived_id(0),
                        kind: EventKind::LoopStopped.as_str(),
                        record: event.record_type.as_deref().zip(event.record_id),
                        actor: "dispatcher",
                        payload: &stopped,
                        depth: event.depth,
                        root: Some(event.root()),
                    },
                )
                .await?;
        }
        tracing::warn!(tenant = %event.tenant_id, kind = %event.kind, "{message}");
        let deliveries = targets
            .iter()
            .map(|t| {
                let skipped = DeliveryStatus::Skipped;
                self.delivery(event, &t.name(), skipped, None, Some(message.clone()))
            })
            .collect();
        Ok((deliveries, done(event, Some(message))))
    }

    /// The record of one target's run for `event`.
    fn delivery(
        &self,
        event: &QueuedEvent,
        target: &str,
        status: DeliveryStatus,
        output: Option<String>,
        error: Option<String>,
    ) -> Delivery {
        Delivery {
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
        }
    }

    /// The automations and subscribed plugins an event concerns.
    async fn targets(
        &self,
        scope: &TenantScope,
        event: &QueuedEvent,
    ) -> anyhow::Result<Vec<Target>> {
        let mut targets = Vec::new();
        if let Some(spec) = self
            .kernel
            .workflows
            .spec(&self.kernel.store, scope)
            .await?
        {
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
        for active in self.kernel.plugins.active(scope).await?.iter() {
            // Other plugins' events are theirs: refused at upload, and not delivered even to
            // a manifest stored before that check.
            if active.manifest.has_hook(Hook::OnEvent)
                && active.manifest.may_receive(&event.kind)
                && active
                    .manifest
                    .subscriptions
                    .iter()
                    .any(|s| s == &event.kind)
                // The manifest's filters: events the plugin would ignore do not wake it (the
                // view the filters see is built only for a kind that has some).
                && (!active.manifest.filters.contains_key(&event.kind)
                    || active.manifest.admits(
                        &event.kind,
                        &filter_view(&active.grants, event),
                        &active.config_value,
                    ))
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
            .kernel
            .store
            .insert_event(
                scope,
                &NewEvent {
                    id: origin.derived_id(0),
                    kind: EventKind::BudgetExhausted.as_str(),
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
            .map(|name| {
                let skipped = DeliveryStatus::Skipped;
                self.delivery(event, name, skipped, None, Some(message.clone()))
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
        let payload = plugin_payload(&self.kernel.store, scope, &active.grants, event, record)
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
        let _slot = self.plugin_slots.acquire(scope.tenant_id()).await;
        self.kernel
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
                    .kernel
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
                let store = &self.kernel.store;
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
                let _slot = self.plugin_slots.acquire(scope.tenant_id()).await;
                match self
                    .kernel
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
        let new = NewRecord {
            id: NewId::Derived(origin.derived_id(0)),
            record_type,
            stage: run.stage.clone(),
            data: Value::Object(data),
        };
        let ctx = WriteContext::automation(*scope, &automation.id, &origin);
        let row = self.kernel.records().create(&ctx, new).await?;
        Ok(Some(
            json!({ "record_type": row.record_type, "id": row.id }).to_string(),
        ))
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

/// The event is finished (`error`: a target failed for good, or the chain was cut).
fn done(event: &QueuedEvent, error: Option<String>) -> Settle {
    Settle::Done {
        seq: event.seq,
        error,
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
