//! Plugin schedules: each `[schedules.<id>]` of an enabled installation fires
//! `on-schedule` once per interval, across all nodes. A claim in the database moves the
//! schedule's next run one interval past now and leases it, so exactly one node runs it
//! and a node that was down does not catch up in a burst. First runs are spread over the
//! interval by a hash of the installation, not bunched at install time.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use streamflow_runtime::integration::{Overrides, parse_interval};
use streamflow_runtime::{Call, Hook, Manifest, ScheduleTick};
use tokio::sync::Semaphore;

use super::Kernel;
use crate::store::integrations::ScheduleRow;
use crate::store::{StoreError, TenantScope, format_micros, now_micros};

/// How long a claimed run holds its lease: longer than any call's wall-clock cap.
const LEASE: Duration = Duration::from_secs(300);
/// Schedules one claim takes at most.
const CLAIM_BATCH: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error("no such schedule for this installation")]
    NotFound,
    #[error("this schedule is running now; try again when it is done")]
    Running,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    pub ran_at: i64,
    pub error: Option<String>,
}

/// An interval as the manifest writes it (`15m`, `1h`, `1d`).
pub fn format_every(seconds: i64) -> String {
    match seconds {
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3_600 == 0 => format!("{}h", s / 3_600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// The schedules a manifest declares, with their intervals in seconds (the provider's
/// where longer).
pub fn declared(manifest: &Manifest, overrides: &Overrides) -> Vec<(String, i64)> {
    if !manifest.has_hook(Hook::OnSchedule) {
        return Vec::new();
    }
    manifest
        .schedules
        .iter()
        .filter_map(|(id, spec)| {
            let every = overrides.interval(id, parse_interval(&spec.every)?);
            Some((id.clone(), every.as_secs() as i64))
        })
        .collect()
}

pub struct Schedules<'k> {
    pub(super) kernel: &'k Kernel,
}

impl Schedules<'_> {
    /// Makes the stored schedules of an installation match its manifest (`None`: it is
    /// gone). Called on every install, change and uninstall.
    pub async fn sync(
        &self,
        scope: &TenantScope,
        plugin_id: &str,
        manifest: Option<(&Manifest, &Overrides)>,
    ) -> Result<(), StoreError> {
        match manifest {
            Some((manifest, overrides)) => {
                self.kernel
                    .store
                    .sync_schedules(scope, plugin_id, &declared(manifest, overrides))
                    .await
            }
            None => self.kernel.store.remove_schedules(scope, plugin_id).await,
        }
    }

    /// `GET /api/plugins/{id}/schedules`'s items.
    pub async fn list(
        &self,
        scope: &TenantScope,
        plugin_id: &str,
    ) -> Result<Vec<Value>, StoreError> {
        Ok(self
            .kernel
            .store
            .schedules(scope, plugin_id)
            .await?
            .into_iter()
            .map(|row| {
                json!({
                    "id": row.schedule_id,
                    "every": format_every(row.every_seconds),
                    "last_run_at": row.last_run_at.map(format_micros),
                    "next_run_at": format_micros(row.next_run_at),
                    "last_error": row.last_error,
                })
            })
            .collect())
    }

    /// Runs a schedule now; it counts as this interval's run.
    pub async fn run_now(
        &self,
        scope: &TenantScope,
        plugin_id: &str,
        schedule_id: &str,
    ) -> Result<RunOutcome, ScheduleError> {
        let exists = self
            .kernel
            .store
            .schedules(scope, plugin_id)
            .await?
            .iter()
            .any(|r| r.schedule_id == schedule_id);
        if !exists {
            return Err(ScheduleError::NotFound);
        }
        let row = self
            .kernel
            .store
            .claim_schedule_now(scope, plugin_id, schedule_id, LEASE.as_micros() as i64)
            .await?
            .ok_or(ScheduleError::Running)?;
        Ok(self.run(row).await?.unwrap_or(RunOutcome {
            ran_at: now_micros(),
            error: Some("the installation is disabled or its tenant suspended".into()),
        }))
    }

    /// Runs one claimed schedule and records the run. `None` when it was not run (the
    /// installation is disabled, the tenant suspended): the lease is released.
    async fn run(&self, row: ScheduleRow) -> Result<Option<RunOutcome>, StoreError> {
        let store = &self.kernel.store;
        let release = || store.release_schedule(row.tenant_id, &row.plugin_id, &row.schedule_id);
        let Some(scope) = store.active_tenant_scope(row.tenant_id).await? else {
            release().await?;
            return Ok(None);
        };
        let active = self.kernel.plugins.active(&scope).await?;
        let Some(active) = active
            .iter()
            .find(|a| {
                a.plugin_id == row.plugin_id
                    && a.manifest.has_hook(Hook::OnSchedule)
                    && a.manifest.schedules.contains_key(&row.schedule_id)
            })
            .cloned()
        else {
            release().await?;
            return Ok(None);
        };
        let now = now_micros();
        let tick = ScheduleTick {
            id: row.schedule_id.clone(),
            last_run_at: row.last_run_at,
            now,
        };
        let error = match self
            .kernel
            .plugins
            .call(&scope, &active, Call::OnSchedule(tick))
            .await
        {
            Ok(_) => None,
            Err(e) => Some(e.message.chars().take(500).collect::<String>()),
        };
        store
            .finish_schedule(
                row.tenant_id,
                &row.plugin_id,
                &row.schedule_id,
                now,
                error.as_deref(),
            )
            .await?;
        Ok(Some(RunOutcome { ran_at: now, error }))
    }
}

/// Starts this node's scheduler: it claims due schedules and runs each, at most half the
/// plugin instances at once, until `stop`; then it waits for the runs in hand (a claimed
/// run already moved its schedule's next run, so it is not left half done). Every ten
/// minutes it also prunes old webhook history.
pub fn start(kernel: Arc<Kernel>, stop: crate::events::Stop) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let slots = Arc::new(Semaphore::new(
            (kernel.config.plugin_instances as usize / 2).max(1),
        ));
        let poll = kernel.config.scheduler_poll;
        let mut runs = tokio::task::JoinSet::new();
        let mut pruned = tokio::time::Instant::now() - PRUNE_EVERY;
        tracing::info!("plugin scheduler started");
        while !stop.is_stopped() {
            while runs.try_join_next().is_some() {}
            if pruned.elapsed() >= PRUNE_EVERY {
                pruned = tokio::time::Instant::now();
                prune(&kernel).await;
            }
            let free = slots.available_permits().min(CLAIM_BATCH);
            if free == 0 {
                // Every slot runs: wait for one to finish, then claim again.
                tokio::select! {
                    _ = stop.stopped() => {}
                    _ = runs.join_next() => {}
                }
                continue;
            }
            let claimed = kernel
                .store
                .claim_due_schedules(free as i64, LEASE.as_micros() as i64)
                .await;
            let full = match claimed {
                Ok(rows) => {
                    let n = rows.len();
                    for row in rows {
                        // Due one interval before the new next run (after downtime: the
                        // latest point of the grid that passed).
                        let due = row.next_run_at - row.every_seconds * 1_000_000;
                        let lag = (now_micros() - due).max(0) as f64 / 1e6;
                        metrics::histogram!("streamflow_schedule_lag_seconds").record(lag);
                        // At most `free` rows were claimed, so a permit is free; should
                        // one not be, the row is released rather than left leased.
                        let Ok(permit) = slots.clone().try_acquire_owned() else {
                            let _ = kernel
                                .store
                                .release_schedule(row.tenant_id, &row.plugin_id, &row.schedule_id)
                                .await;
                            continue;
                        };
                        let kernel = kernel.clone();
                        runs.spawn(async move {
                            let _permit = permit;
                            let (plugin, schedule) =
                                (row.plugin_id.clone(), row.schedule_id.clone());
                            match kernel.schedules().run(row).await {
                                Ok(Some(RunOutcome { error: Some(e), .. })) => {
                                    tracing::warn!(plugin = %plugin, schedule = %schedule, error = %e, "scheduled run failed")
                                }
                                Ok(_) => {}
                                Err(e) => {
                                    tracing::error!(error = %e, "could not record a scheduled run")
                                }
                            }
                        });
                    }
                    n == free
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not claim due schedules");
                    false
                }
            };
            if !full {
                // Nothing more is due: look again after the poll interval.
                tokio::select! {
                    _ = stop.stopped() => {}
                    _ = tokio::time::sleep(poll) => {}
                }
            }
        }
        // The runs in hand finish (each is bounded by its call's wall-clock cap).
        let drained =
            tokio::time::timeout(DRAIN, async { while runs.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            tracing::warn!(
                left = runs.len(),
                "scheduled runs still going at shutdown were stopped"
            );
        }
    })
}

/// How often old webhook history is pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(600);
/// How long shutdown waits for scheduled runs in hand: longer than any call's cap.
const DRAIN: Duration = Duration::from_secs(130);

async fn prune(kernel: &Kernel) {
    let now = now_micros();
    let receipts = now - super::webhooks::RECEIPTS_KEPT.as_micros() as i64;
    let deliveries = now - super::webhooks::DELIVERIES_KEPT.as_micros() as i64;
    match kernel
        .store
        .prune_webhook_history(receipts, deliveries)
        .await
    {
        Ok(0) => {}
        Ok(n) => tracing::info!(rows = n, "pruned old webhook receipts and delivery ids"),
        Err(e) => tracing::warn!(error = %e, "could not prune webhook history"),
    }
}

#[cfg(test)]
mod tests {
    use super::format_every;

    #[test]
    fn intervals_print_as_manifests_write_them() {
        assert_eq!(format_every(900), "15m");
        assert_eq!(format_every(3_600), "1h");
        assert_eq!(format_every(172_800), "2d");
        assert_eq!(format_every(90), "90s");
    }
}
