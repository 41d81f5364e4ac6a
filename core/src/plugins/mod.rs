//! The kernel side of plugins: which installations a tenant has, running their hooks in the
//! sandbox with the tenant's config, grants and storage, and keeping their health.

pub mod bundled;
pub mod config;
pub mod health;
mod services;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};
use streamflow_runtime::{
    Call, Capability, Failure, Grants, Hook, Invocation, Limits, Loaded, Manifest, PluginRecord,
    Reply, Runtime, Score,
};
use uuid::Uuid;

use crate::crypto::SecretBox;
use crate::events::Origin;
use crate::records::SchemaCache;
use crate::store::cache::ExpiringMap;
use crate::store::plugins::InstallationRow;
use crate::store::writer::RecordWriter;
use crate::store::{Store, StoreResult, TenantScope};
use crate::templates::Workflows;
use health::HealthBook;

/// How long compiling a plugin may take before the request that needed it gives up (the
/// compilation itself finishes in the background and is cached).
pub const COMPILE_TIMEOUT: Duration = Duration::from_secs(60);

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
    pub limits: Limits,
}

/// Why a hook call gave no answer, as the kernel reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct CallError {
    /// A stable name: a [`Failure::kind`], or `circuit_open`.
    pub kind: &'static str,
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
            kind: "circuit_open",
            message: "the plugin failed repeatedly and is paused; the provider can reset it".into(),
        }
    }
}

/// A scorer's result, ready to store with the lead, and the event it causes.
pub struct ScoreOutcome {
    /// `{value, temperature, confidence, reasons, plugin, version}`, or null on failure.
    pub score: Option<Value>,
    pub event: (&'static str, Value),
}

pub struct PluginHost {
    runtime: Arc<Runtime>,
    store: Store,
    writer: RecordWriter,
    schemas: Arc<SchemaCache>,
    workflows: Arc<Workflows>,
    secrets: Arc<SecretBox>,
    active: ExpiringMap<Uuid, Arc<Vec<Arc<Active>>>>,
    pub health: HealthBook,
    /// One compilation at a time: compiling is CPU-heavy and rare.
    compiling: tokio::sync::Semaphore,
    /// Bytes each installation may keep in `kv` ([`PluginHost::with_kv_quota`]).
    kv_bytes: u64,
}

impl PluginHost {
    pub fn new(
        runtime: Arc<Runtime>,
        store: Store,
        writer: RecordWriter,
        schemas: Arc<SchemaCache>,
        workflows: Arc<Workflows>,
        secrets: Arc<SecretBox>,
    ) -> Self {
        Self {
            runtime,
            store,
            writer,
            schemas,
            workflows,
            secrets,
            active: ExpiringMap::default(),
            health: HealthBook::default(),
            compiling: tokio::sync::Semaphore::new(1),
            kv_bytes: 16 * 1024 * 1024,
        }
    }

    /// Sets the bytes (keys and values) each installation may keep in `kv`.
    pub fn with_kv_quota(mut self, bytes: u64) -> Self {
        self.kv_bytes = bytes;
        self
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
        let generation = self.active.generation();
        let mut list = Vec::new();
        for row in self.store.list_installations(scope).await? {
            if !row.enabled {
                continue;
            }
            let Some(version) = self.store.get_version(&row.plugin_id, &row.version).await? else {
                continue;
            };
            if version.status != "approved" {
                continue;
            }
            let Ok(manifest) = serde_json::from_value::<Manifest>(version.manifest.0.clone())
            else {
                tracing::error!(plugin = %row.plugin_id, version = %row.version, "stored manifest does not parse");
                continue;
            };
            let grants: Grants = serde_json::from_value(row.grants.0.clone()).unwrap_or_default();
            let limits = manifest.limits.capped_by(self.runtime.config().max_limits);
            list.push(Arc::new(Active {
                tenant_id: scope.tenant_id(),
                plugin_id: row.plugin_id.clone(),
                version: row.version.clone(),
                sha256: version.sha256.clone(),
                grants,
                config: row.config.0.to_string(),
                limits,
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
            kind: "load",
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
        // Compiled versions stay in memory: only the first call reads the package.
        let loaded = match self.runtime.loaded(&active.sha256) {
            Some(loaded) => Ok(loaded),
            None => self.load(&active.plugin_id, &active.version).await,
        };
        let started = Instant::now();
        let result = match loaded {
            Err(e) => Err(e),
            Ok(loaded) => {
                let invocation = Arc::new(Invocation {
                    tenant: active.tenant_id.to_string(),
                    plugin: active.plugin_id.clone(),
                    version: active.version.clone(),
                    config: active.config.clone(),
                    grants: active.grants.clone(),
                    limits: active.limits,
                    services: Arc::new(services::KernelServices {
                        handle: tokio::runtime::Handle::current(),
                        store: self.store.clone(),
                        writer: self.writer.clone(),
                        schemas: self.schemas.clone(),
                        workflows: self.workflows.clone(),
                        scope: *scope,
                        plugin_id: active.plugin_id.clone(),
                        version: active.version.clone(),
                        grants: active.grants.clone(),
                        kv_bytes: self.kv_bytes,
                        call_root: Uuid::now_v7(),
                        origin,
                        created: Default::default(),
                    }),
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
        let elapsed = started.elapsed();
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => e.kind,
        };
        metrics::counter!("streamflow_plugin_calls_total", "plugin" => active.plugin_id.clone(),
            "hook" => hook.as_str(), "outcome" => outcome)
        .increment(1);
        metrics::histogram!("streamflow_plugin_call_duration_seconds", "plugin" => active.plugin_id.clone(),
            "hook" => hook.as_str())
        .record(elapsed.as_secs_f64());
        match &result {
            Ok(_) => self.health.success(active.tenant_id, &active.plugin_id),
            // Busy is the host's capacity, not the plugin's fault.
            Err(e) if e.kind == "busy" => {}
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
        result
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
                    "lead.scored",
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
                    kind: "trap",
                    message: "answered with the wrong kind of result".into(),
                },
            ),
            Err(e) => failed_outcome(&scorer, &e),
        }))
    }
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
            "plugin.failed",
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
