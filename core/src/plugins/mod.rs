//! The kernel side of plugins: which installations a tenant has, running their hooks in the
//! sandbox with the tenant's config, grants and storage, and keeping their health.

pub mod bundled;
pub mod config;
pub mod health;

use std::collections::HashSet;
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};
use streamflow_runtime::{
    Call, Capability, EventKind, Failure, FailureKind, Grants, Hook, HostServices, Invocation,
    Limits, Loaded, Manifest, PluginRecord, Quotas, Reply, Runtime, Score,
};
use uuid::Uuid;

use crate::crypto::SecretBox;
use crate::fair::FairPool;
use crate::records::Origin;
use crate::store::cache::ExpiringMap;
use crate::store::plugins::{InstallationRow, VersionStatus};
use crate::store::{Store, StoreResult, TenantScope};
use health::HealthBook;

/// How long a tenant's active installations are served from memory. A change made on this
/// node is seen at once (the cache is emptied); one made on another node (an uninstall, a
/// revoked grant) within this, as for credentials.
pub const ACTIVE_TTL: Duration = crate::store::cache::CREDENTIAL_CACHE_TTL;

/// Locks the readings of installations are spread over, by tenant.
const READING_STRIPES: usize = 16;

/// How long compiling a plugin may take before the request that needed it gives up (the
/// compilation itself finishes in the background and is cached).
pub const COMPILE_TIMEOUT: Duration = Duration::from_secs(60);

/// How often each node drops compiled code nobody uses, besides after every change on the
/// node itself (so another node's rejections and uninstalls are caught up with too).
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// An enabled installation of an approved version, ready to call.
pub struct Active {
    pub tenant_id: Uuid,
    pub plugin_id: String,
    pub version: String,
    pub manifest: Manifest,
    pub sha256: String,
    pub grants: Grants,
    /// The configuration plugins see (no secrets), as JSON text.
    pub config: String,
    /// The same, parsed (for the manifest's event filters).
    pub config_value: Value,
    pub limits: Limits,
    /// What one call may do through host calls: the manifest's quotas, or the provider's
    /// for this installation, within the platform's maxima.
    pub quotas: Quotas,
    /// The provider's overrides (the wall-clock cap of each hook among them).
    pub overrides: streamflow_runtime::integration::Overrides,
    /// The installation's metric handles, made once (a labelled metric looked up per call
    /// costs a hash and a lock in the recorder).
    meters: Meters,
}

/// Metric handles of one installation, per hook: calls that succeeded and their duration.
/// Failures are rare and take the labelled lookup.
struct Meters {
    hooks: Vec<(Hook, metrics::Counter, metrics::Histogram)>,
}

impl Meters {
    fn new(plugin_id: &str, manifest: &Manifest) -> Self {
        let hooks = manifest
            .hooks
            .iter()
            .map(|hook| {
                let ok = metrics::counter!("streamflow_plugin_calls_total",
                    "plugin" => plugin_id.to_string(), "hook" => hook.as_str(), "outcome" => "ok");
                let duration = metrics::histogram!("streamflow_plugin_call_duration_seconds",
                    "plugin" => plugin_id.to_string(), "hook" => hook.as_str());
                (*hook, ok, duration)
            })
            .collect();
        Meters { hooks }
    }

    fn of(&self, hook: Hook) -> Option<&(Hook, metrics::Counter, metrics::Histogram)> {
        self.hooks.iter().find(|(h, _, _)| *h == hook)
    }
}

/// Why a hook call gave no answer, as the kernel reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct CallError {
    pub kind: FailureKind,
    pub message: String,
}

impl CallError {
    fn from_failure(f: &Failure) -> Self {
        CallError {
            kind: f.kind(),
            // Panic messages and plugin errors are the plugin's text: escaped before they
            // reach logs, health and deliveries.
            message: streamflow_runtime::host::escape_text(&f.to_string()),
        }
    }

    pub fn circuit_open() -> Self {
        CallError {
            kind: FailureKind::CircuitOpen,
            message: "the plugin failed repeatedly and is paused; the provider can reset it".into(),
        }
    }
}

/// A scorer's result, ready to store with the lead, and the event it causes.
pub struct ScoreOutcome {
    /// `{value, temperature, confidence, reasons, plugin, version}`, or null on failure.
    pub score: Option<Value>,
    pub event: (EventKind, Value),
}

/// What a plugin call can reach: the host asks for the services of each call (bound to
/// its tenant, installation and hook) from whoever connected it ([`PluginHost::connect`]),
/// so the host itself knows nothing of records or events.
pub trait Capabilities: Send + Sync {
    /// The services of one call; `None` when the kernel is shutting down.
    fn services(
        &self,
        scope: TenantScope,
        active: &Arc<Active>,
        hook: Hook,
        origin: Option<Origin>,
    ) -> Option<Arc<dyn HostServices>>;
}

pub struct PluginHost {
    runtime: Arc<Runtime>,
    store: Store,
    secrets: Arc<SecretBox>,
    capabilities: OnceLock<Arc<dyn Capabilities>>,
    active: ExpiringMap<Uuid, Arc<Vec<Arc<Active>>>>,
    /// One reading of a tenant's installations at a time: when its cache entry expires
    /// under load, one caller reads it and the others wait for that reading. Tenants are
    /// spread over a few locks, so one tenant's reading holds up few others.
    reading_active: [tokio::sync::Mutex<()>; READING_STRIPES],
    pub health: HealthBook,
    /// One compilation at a time: compiling is CPU-heavy and rare.
    compiling: tokio::sync::Semaphore,
    /// Sandbox instances, shared fairly: one tenant runs at most its share at once.
    instances: FairPool,
    /// One sweep of unused compiled code at a time.
    sweeping: tokio::sync::Mutex<()>,
    /// Upload attempts per developer on this node, refused ones included (their checks
    /// cost CPU too).
    upload_attempts: governor::DefaultKeyedRateLimiter<Uuid>,
    /// Bytes each installation may keep in `kv` ([`PluginHost::with_kv_quota`]).
    kv_bytes: u64,
}

/// Upload attempts a developer may make per hour, as a multiple of the versions they may
/// publish: room for fixing a refused package, not for flooding the checks.
pub const UPLOAD_ATTEMPTS_PER_UPLOAD: u32 = 3;

impl PluginHost {
    pub fn new(runtime: Arc<Runtime>, store: Store, secrets: Arc<SecretBox>) -> Self {
        Self {
            store,
            secrets,
            capabilities: OnceLock::new(),
            active: ExpiringMap::with_ttl(ACTIVE_TTL),
            reading_active: std::array::from_fn(|_| tokio::sync::Mutex::new(())),
            health: HealthBook::default(),
            compiling: tokio::sync::Semaphore::new(1),
            instances: FairPool::new(
                runtime.config().instances as usize,
                (runtime.config().instances as usize / 4).max(1),
            ),
            sweeping: tokio::sync::Mutex::new(()),
            upload_attempts: upload_attempts_limiter(20),
            kv_bytes: 16 * 1024 * 1024,
            runtime,
        }
    }

    /// Gives plugin calls their services (once; later calls are ignored). Until then a
    /// call fails `unavailable`.
    pub fn connect(&self, capabilities: Arc<dyn Capabilities>) {
        let _ = self.capabilities.set(capabilities);
    }

    /// Bytes (keys and values) each installation may keep in `kv`.
    pub fn kv_quota(&self) -> u64 {
        self.kv_bytes
    }

    /// Sets the bytes (keys and values) each installation may keep in `kv`.
    pub fn with_kv_quota(mut self, bytes: u64) -> Self {
        self.kv_bytes = bytes;
        self
    }

    /// Sets how many versions a developer may publish per hour; this node lets them try
    /// [`UPLOAD_ATTEMPTS_PER_UPLOAD`] times as many uploads.
    pub fn with_uploads_per_hour(mut self, per_hour: u32) -> Self {
        self.upload_attempts = upload_attempts_limiter(per_hour);
        self
    }

    /// Counts an upload attempt by `developer`; `Err(seconds)` to wait when over the limit.
    pub fn upload_attempt(&self, developer: Uuid) -> Result<(), u64> {
        use governor::clock::{Clock, DefaultClock};
        if self.upload_attempts.len() > 10_000 {
            self.upload_attempts.retain_recent();
        }
        self.upload_attempts.check_key(&developer).map_err(|e| {
            e.wait_time_from(DefaultClock::default().now())
                .as_secs()
                .max(1)
        })
    }

    /// Lets one tenant run at most `share` plugin calls at once (of the runtime's
    /// instances); a call past it fails `busy`, like one that finds no free instance.
    pub fn with_tenant_share(mut self, share: usize) -> Self {
        self.instances = FairPool::new(self.runtime.config().instances as usize, share);
        self
    }

    /// The pool of sandbox instances plugin calls take a slot of, tenant by tenant.
    pub fn instances(&self) -> &FairPool {
        &self.instances
    }

    /// Where a version's compiled code is on this node: `in_memory` (ready to call),
    /// `on_disk` (in the compiled cache) or `none` (never compiled here, or evicted).
    pub fn compiled_state(&self, sha256: &str) -> &'static str {
        if self.runtime.is_loaded(sha256) {
            "in_memory"
        } else if self.runtime.is_cached(sha256) {
            "on_disk"
        } else {
            "none"
        }
    }

    /// Forgets cached installations and drops compiled code no installation uses: from
    /// memory, everything no enabled installation of an approved version runs; from the
    /// disk cache, every version of the registry except those and each plugin's newest
    /// approved version (what a new installation picks). Call after any change to versions
    /// or installations; it is also run every [`SWEEP_INTERVAL`].
    pub async fn changed(&self) {
        self.forget();
        if let Err(e) = self.sweep().await {
            tracing::warn!(error = %e, "could not sweep unused compiled plugins");
        }
    }

    async fn sweep(&self) -> StoreResult<()> {
        let _one = self.sweeping.lock().await;
        let (in_use, versions) = self.store.compiled_keep_sets().await?;
        let in_use: HashSet<String> = in_use.into_iter().collect();
        let remove = disk_evictions(&in_use, &versions);
        let runtime = self.runtime.clone();
        let (memory, disk) = tokio::task::spawn_blocking(move || {
            (
                runtime.retain_loaded(&in_use),
                runtime.prune_disk_cache(&remove),
            )
        })
        .await
        .unwrap_or_default();
        if memory + disk > 0 {
            tracing::info!(
                from_memory = memory,
                from_disk = disk,
                "evicted compiled plugins no installation uses"
            );
        }
        Ok(())
    }

    /// Sweeps every [`SWEEP_INTERVAL`] until the host is dropped.
    pub fn start_sweeper(self: &Arc<Self>) {
        let host: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_INTERVAL);
            loop {
                tick.tick().await;
                let Some(host) = host.upgrade() else { return };
                if let Err(e) = host.sweep().await {
                    tracing::warn!(error = %e, "could not sweep unused compiled plugins");
                }
            }
        });
    }

    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    pub fn secret_box(&self) -> &SecretBox {
        &self.secrets
    }

    /// Associated data binding an installation's sealed secrets to their row.
    pub fn secrets_aad(tenant: Uuid, plugin_id: &str) -> Vec<u8> {
        format!("plugin_installations.secrets/{tenant}/{plugin_id}").into_bytes()
    }

    /// The stored secrets of an installation, decrypted.
    pub fn open_secrets(&self, row: &InstallationRow) -> anyhow::Result<Map<String, Value>> {
        let Some(sealed) = &row.secrets else {
            return Ok(Map::new());
        };
        let plain = self
            .secrets
            .open(sealed, &Self::secrets_aad(row.tenant_id, &row.plugin_id))?;
        Ok(serde_json::from_slice(&plain)?)
    }

    pub fn seal_secrets(
        &self,
        tenant: Uuid,
        plugin_id: &str,
        secrets: &Map<String, Value>,
    ) -> Option<Vec<u8>> {
        if secrets.is_empty() {
            return None;
        }
        let plain = serde_json::to_vec(secrets).expect("a JSON map serialises");
        Some(
            self.secrets
                .seal(&plain, &Self::secrets_aad(tenant, plugin_id)),
        )
    }

    /// Forget what this node cached about installations (after any change to one).
    pub fn forget(&self) {
        self.active.clear();
    }

    /// The tenant's enabled installations of approved versions.
    pub async fn active(&self, scope: &TenantScope) -> StoreResult<Arc<Vec<Arc<Active>>>> {
        if let Some(found) = self.active.get(&scope.tenant_id()) {
            return Ok(found);
        }
        let stripe = scope.tenant_id().as_u128() as usize % READING_STRIPES;
        let _reading = self.reading_active[stripe].lock().await;
        if let Some(found) = self.active.get(&scope.tenant_id()) {
            return Ok(found);
        }
        let generation = self.active.generation();
        let mut list = Vec::new();
        for row in self.store.list_installations(scope).await? {
            if !row.enabled {
                continue;
            }
            let Some(version) = self.store.get_version(&row.plugin_id, &row.version).await? else {
                continue;
            };
            if version.status() != VersionStatus::Approved {
                continue;
            }
            // One whose stored manifest no longer parses (logged) is left out.
            let Ok(manifest) = version.manifest() else {
                continue;
            };
            let grants: Grants = serde_json::from_value(row.grants.0.clone()).unwrap_or_default();
            let limits = manifest.limits.capped_by(self.runtime.config().max_limits);
            let overrides = crate::kernel::installations::overrides_of(&row);
            let quotas = overrides.quotas(manifest.quotas.capped_by(Quotas::MAX));
            list.push(Arc::new(Active {
                meters: Meters::new(&row.plugin_id, &manifest),
                tenant_id: scope.tenant_id(),
                plugin_id: row.plugin_id.clone(),
                version: row.version.clone(),
                sha256: version.sha256.clone(),
                grants,
                config: row.config.0.to_string(),
                config_value: row.config.0.clone(),
                limits,
                quotas,
                overrides,
                manifest,
            }));
        }
        let list = Arc::new(list);
        self.active
            .insert(scope.tenant_id(), list.clone(), generation);
        Ok(list)
    }

    /// The tenant's lead scorer, if it has one.
    pub async fn scorer(&self, scope: &TenantScope) -> StoreResult<Option<Arc<Active>>> {
        Ok(self
            .active(scope)
            .await?
            .iter()
            .find(|a| a.manifest.has_hook(Hook::ScoreLead))
            .cloned())
    }

    /// Compiles a version (or loads it from the disk cache) off the async threads, one at a
    /// time, giving up waiting after [`COMPILE_TIMEOUT`].
    pub async fn load(&self, plugin_id: &str, version: &str) -> Result<Arc<Loaded>, CallError> {
        let load_error = |message: String| CallError {
            kind: FailureKind::Load,
            message,
        };
        let package = self
            .store
            .version_package(plugin_id, version)
            .await
            .map_err(|e| load_error(e.to_string()))?
            .ok_or_else(|| load_error(format!("{plugin_id} {version} is not in the registry")))?;
        let _slot = self
            .compiling
            .acquire()
            .await
            .map_err(|_| load_error("shutting down".into()))?;
        let runtime = self.runtime.clone();
        let task = tokio::task::spawn_blocking(move || runtime.load(&package));
        match tokio::time::timeout(COMPILE_TIMEOUT, task).await {
            Ok(Ok(Ok(loaded))) => Ok(loaded),
            Ok(Ok(Err(failure))) => Err(CallError::from_failure(&failure)),
            Ok(Err(_)) => Err(load_error("the compiler crashed".into())),
            Err(_) => Err(load_error(format!(
                "compiling took longer than {} s",
                COMPILE_TIMEOUT.as_secs()
            ))),
        }
    }

    /// Runs one hook of an installation: breaker, sandbox, health, metrics and a log line.
    pub async fn call(
        &self,
        scope: &TenantScope,
        active: &Arc<Active>,
        call: Call,
    ) -> Result<Reply, CallError> {
        self.call_from(scope, active, call, None).await
    }

    /// [`PluginHost::call`] for the dispatcher: the plugin's writes are idempotent per
    /// `origin` and its events carry the automation depth.
    pub async fn call_from(
        &self,
        scope: &TenantScope,
        active: &Arc<Active>,
        call: Call,
        origin: Option<Origin>,
    ) -> Result<Reply, CallError> {
        let hook = call.hook();
        if !self.health.admit(active.tenant_id, &active.plugin_id) {
            metrics::counter!("streamflow_plugin_calls_total", "plugin" => active.plugin_id.clone(),
                "hook" => hook.as_str(), "outcome" => "circuit_open")
            .increment(1);
            return Err(CallError::circuit_open());
        }
        // The tenant's share of the instances: past it the call is busy, so one tenant
        // cannot take every instance from the others.
        let Some(_slot) = self.instances.try_acquire(active.tenant_id) else {
            metrics::counter!("streamflow_plugin_calls_total", "plugin" => active.plugin_id.clone(),
                "hook" => hook.as_str(), "outcome" => "busy")
            .increment(1);
            return Err(CallError {
                kind: FailureKind::Busy,
                message: format!(
                    "could not start: this tenant already runs its share of plugin calls ({} at once); try again",
                    self.instances.share()
                ),
            });
        };
        // Compiled versions stay in memory while installed: only the first call reads the
        // package.
        let loaded = match self.runtime.loaded(&active.sha256) {
            Some(loaded) => Ok(loaded),
            None => self.load(&active.plugin_id, &active.version).await,
        };
        let started = Instant::now();
        let result = match loaded {
            Err(e) => Err(e),
            Ok(loaded) => {
                let services = self
                    .capabilities
                    .get()
                    .and_then(|c| c.services(*scope, active, hook, origin));
                let Some(services) = services else {
                    return Err(CallError {
                        kind: FailureKind::Load,
                        message: "the kernel is not running".into(),
                    });
                };
                let invocation = Arc::new(Invocation {
                    tenant: active.tenant_id.to_string(),
                    plugin: active.plugin_id.clone(),
                    version: active.version.clone(),
                    config: active.config.clone(),
                    grants: active.grants.clone(),
                    limits: active.limits,
                    quotas: active.quotas,
                    wall: active.overrides.wall_for(&active.quotas, hook),
                    services,
                });
                let runtime = self.runtime.clone();
                match tokio::task::spawn_blocking(move || runtime.invoke(&loaded, invocation, call))
                    .await
                {
                    Ok(Ok(reply)) => Ok(reply),
                    Ok(Err(failure)) => Err(failure),
                    Err(_) => Err(Failure::Trap(
                        "the host thread running the plugin panicked".into(),
                    )),
                }
                .map_err(|f| CallError::from_failure(&f))
            }
        };
        self.record(active, hook, &result, started.elapsed());
        result
    }

    /// A call's metrics, health and log line.
    fn record(
        &self,
        active: &Active,
        hook: Hook,
        result: &Result<Reply, CallError>,
        elapsed: Duration,
    ) {
        let meters = active.meters.of(hook);
        match (result, meters) {
            (Ok(_), Some((_, ok, duration))) => {
                ok.increment(1);
                duration.record(elapsed.as_secs_f64());
            }
            (outcome, _) => {
                let outcome = match outcome {
                    Ok(_) => "ok",
                    Err(e) => e.kind.as_str(),
                };
                metrics::counter!("streamflow_plugin_calls_total", "plugin" => active.plugin_id.clone(),
                    "hook" => hook.as_str(), "outcome" => outcome)
                .increment(1);
                match meters {
                    Some((_, _, duration)) => duration.record(elapsed.as_secs_f64()),
                    None => metrics::histogram!("streamflow_plugin_call_duration_seconds",
                        "plugin" => active.plugin_id.clone(), "hook" => hook.as_str())
                    .record(elapsed.as_secs_f64()),
                }
            }
        }
        match result {
            Ok(_) => self.health.success(active.tenant_id, &active.plugin_id),
            // Busy is the host's capacity, not the plugin's fault.
            Err(e) if e.kind == FailureKind::Busy => {}
            Err(e) => {
                tracing::warn!(
                    tenant = %active.tenant_id,
                    plugin = %active.plugin_id,
                    version = %active.version,
                    hook = hook.as_str(),
                    kind = %e.kind,
                    elapsed_ms = elapsed.as_millis() as u64,
                    "plugin call failed: {}", e.message
                );
                let tripped = self.health.failure(
                    active.tenant_id,
                    &active.plugin_id,
                    hook.as_str(),
                    e.kind,
                    &e.message,
                );
                if tripped {
                    tracing::error!(tenant = %active.tenant_id, plugin = %active.plugin_id,
                        "plugin circuit breaker opened after repeated failures");
                }
            }
        }
    }

    /// Scores a lead with the tenant's scorer, if it has one. `None`: no scorer installed.
    pub async fn score_lead(
        &self,
        scope: &TenantScope,
        lead: PluginRecord,
    ) -> StoreResult<Option<ScoreOutcome>> {
        let Some(scorer) = self.scorer(scope).await? else {
            return Ok(None);
        };
        let result = self.call(scope, &scorer, Call::ScoreLead(lead)).await;
        Ok(Some(match result {
            Ok(Reply::Score(score)) => ScoreOutcome {
                score: Some(score_json(&score, &scorer)),
                event: (
                    EventKind::LeadScored,
                    json!({
                        "value": score.value,
                        "temperature": score.temperature,
                        "confidence": score.confidence,
                        "plugin": scorer.plugin_id,
                        "version": scorer.version,
                    }),
                ),
            },
            Ok(_) => failed_outcome(
                &scorer,
                &CallError {
                    kind: FailureKind::Trap,
                    message: "answered with the wrong kind of result".into(),
                },
            ),
            Err(e) => failed_outcome(&scorer, &e),
        }))
    }
}

fn upload_attempts_limiter(per_hour: u32) -> governor::DefaultKeyedRateLimiter<Uuid> {
    let attempts = per_hour.saturating_mul(UPLOAD_ATTEMPTS_PER_UPLOAD).max(1);
    let attempts = std::num::NonZeroU32::new(attempts).expect("at least 1");
    governor::RateLimiter::keyed(governor::Quota::per_hour(attempts))
}

/// The hashes whose compiled code the disk cache drops: every version of the registry but
/// those in use and each plugin's newest approved version. Hashes the registry does not
/// know are not named, so their files are left alone.
fn disk_evictions(
    in_use: &HashSet<String>,
    versions: &[crate::store::plugins::VersionHash],
) -> HashSet<String> {
    let mut newest: std::collections::HashMap<&str, (semver::Version, &str)> =
        std::collections::HashMap::new();
    for v in versions
        .iter()
        .filter(|v| v.status() == VersionStatus::Approved)
    {
        let Ok(parsed) = semver::Version::parse(&v.version) else {
            continue;
        };
        match newest.get(v.plugin_id.as_str()) {
            Some((best, _)) if *best >= parsed => {}
            _ => {
                newest.insert(&v.plugin_id, (parsed, &v.sha256));
            }
        }
    }
    let keep: HashSet<&str> = newest
        .values()
        .map(|(_, sha)| *sha)
        .chain(in_use.iter().map(String::as_str))
        .collect();
    versions
        .iter()
        .map(|v| v.sha256.as_str())
        .filter(|sha| !keep.contains(sha))
        .map(str::to_string)
        .collect()
}

fn score_json(score: &Score, scorer: &Active) -> Value {
    json!({
        "value": score.value,
        "temperature": score.temperature,
        // f32 → JSON via f64 prints 0.8 as 0.800000011920929; round to what was meant.
        "confidence": (score.confidence as f64 * 1000.0).round() / 1000.0,
        "reasons": score.reasons,
        "plugin": scorer.plugin_id,
        "version": scorer.version,
    })
}

fn failed_outcome(scorer: &Active, e: &CallError) -> ScoreOutcome {
    ScoreOutcome {
        score: None,
        event: (
            EventKind::PluginFailed,
            json!({
                "plugin": scorer.plugin_id,
                "version": scorer.version,
                "hook": Hook::ScoreLead.as_str(),
                "kind": e.kind,
                "message": e.message,
            }),
        ),
    }
}

/// Capabilities granted that the manifest did not request, or that do not exist; each
/// with its index in `grants`.
pub fn check_grants(
    manifest: &Manifest,
    grants: &[String],
) -> Result<Grants, Vec<crate::error::FieldError>> {
    let mut caps = Vec::new();
    let mut errors = Vec::new();
    for (i, name) in grants.iter().enumerate() {
        match serde_json::from_value::<Capability>(Value::String(name.clone())) {
            Err(_) => errors.push(crate::error::FieldError::new(
                format!("/grants/{i}"),
                format!("{name:?} is not a capability (kv, records:read, records:read-pii, records:write, events, secrets, ai, http)"),
            )),
            Ok(cap) if !manifest.requests(cap) => errors.push(crate::error::FieldError::new(
                format!("/grants/{i}"),
                format!("the plugin does not request {cap}; it asks for: {}", requested(manifest)),
            )),
            Ok(cap) => caps.push(cap),
        }
    }
    if errors.is_empty() {
        Ok(Grants::new(caps))
    } else {
        Err(errors)
    }
}

fn requested(manifest: &Manifest) -> String {
    if manifest.capabilities.is_empty() {
        return "nothing".into();
    }
    manifest
        .capabilities
        .iter()
        .map(|c| c.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::plugins::VersionHash;

    fn v(id: &str, version: &str, status: &str) -> VersionHash {
        VersionHash {
            plugin_id: id.into(),
            version: version.into(),
            sha256: format!("{id}@{version}"),
            status: status.into(),
        }
    }

    #[test]
    fn disk_keeps_what_runs_and_each_plugins_newest_approved_version() {
        let versions = [
            v("a", "0.1.0", "approved"),
            v("a", "0.10.0", "approved"),
            v("a", "0.2.0", "approved"),
            v("a", "0.11.0", "pending"),
            v("a", "0.12.0", "rejected"),
            v("b", "1.0.0", "rejected"),
            v("c", "1.0.0", "approved"),
        ];
        let in_use: HashSet<String> = ["a@0.1.0".to_string()].into();
        let mut removed: Vec<String> = disk_evictions(&in_use, &versions).into_iter().collect();
        removed.sort();
        assert_eq!(removed, ["a@0.11.0", "a@0.12.0", "a@0.2.0", "b@1.0.0"]);
    }
}
