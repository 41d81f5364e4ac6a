//! Host side of `streamflow:plugin@0.1.0`. A later contract version gets its own module
//! beside this one, translating to the same version-independent host types.

use std::sync::Arc;

use wasmtime::Store;
use wasmtime::component::{Component, HasSelf, Linker};

use crate::engine::{Call, Failure, HostState, Reply};
use crate::host::{self, HostError};
use crate::manifest::Capability;

wasmtime::component::bindgen!({
    path: "../plugin-sdk/wit/0.1.0",
    world: "plugin",
});

use streamflow::plugin::types;

/// Longest key and value in `kv`.
const MAX_KV_KEY: usize = 512;
const MAX_KV_VALUE: usize = 256 * 1024;
/// Log lines one call may write; later lines are dropped.
const MAX_LOG_LINES: u32 = 100;
const MAX_LOG_LINE: usize = 2048;

pub(crate) struct Pre(PluginPre<HostState>);

impl Pre {
    pub(crate) fn new(linker: &Linker<HostState>, component: &Component) -> wasmtime::Result<Pre> {
        Ok(Pre(PluginPre::new(linker.instantiate_pre(component)?)?))
    }
}

pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    Plugin::add_to_linker::<HostState, HasSelf<HostState>>(linker, |state| state)
}

/// Instantiate and call one hook. The outer error is a trap; the inner one the plugin's
/// own answer.
pub(crate) fn call(
    pre: &Pre,
    store: &mut Store<HostState>,
    call: Call,
) -> wasmtime::Result<Result<Reply, Failure>> {
    let plugin = pre.0.instantiate(&mut *store)?;
    call_on(&plugin, store, call)
}

pub(crate) fn instantiate(pre: &Pre, store: &mut Store<HostState>) -> wasmtime::Result<Plugin> {
    pre.0.instantiate(store)
}

/// Calls a hook on an instance that already exists.
pub(crate) fn call_on(
    plugin: &Plugin,
    store: &mut Store<HostState>,
    call: Call,
) -> wasmtime::Result<Result<Reply, Failure>> {
    Ok(match call {
        Call::ScoreLead(lead) => plugin
            .streamflow_plugin_scoring()
            .call_score_lead(&mut *store, &record_to_wit(lead))?
            .map(|s| {
                Reply::Score(host::Score {
                    value: s.value.min(100),
                    temperature: match s.temperature {
                        types::Temperature::Hot => host::Temperature::Hot,
                        types::Temperature::Warm => host::Temperature::Warm,
                        types::Temperature::Cold => host::Temperature::Cold,
                    },
                    confidence: if s.confidence.is_finite() {
                        s.confidence.clamp(0.0, 1.0)
                    } else {
                        0.0
                    },
                    reasons: s.reasons,
                })
            })
            .map_err(plugin_failure),
        Call::OnEvent(e) => plugin
            .streamflow_plugin_event_handler()
            .call_on_event(
                &mut *store,
                &types::Event {
                    id: e.id,
                    kind: e.kind,
                    record_type: e.record_type,
                    record_id: e.record_id,
                    payload: e.payload,
                    at: e.at,
                },
            )?
            .map(|()| Reply::Done)
            .map_err(plugin_failure),
        Call::RunAction { name, input } => plugin
            .streamflow_plugin_actions()
            .call_run_action(&mut *store, &name, &input)?
            .map(Reply::Output)
            .map_err(plugin_failure),
        Call::HandleWebhook(r) => plugin
            .streamflow_plugin_webhooks()
            .call_handle_webhook(
                &mut *store,
                &types::HttpRequest {
                    method: r.method,
                    path: r.path,
                    headers: r.headers,
                    body: r.body,
                },
            )?
            .map(|r| {
                Reply::Webhook(host::HttpResponse {
                    status: r.status,
                    headers: r.headers,
                    body: r.body,
                })
            })
            .map_err(plugin_failure),
    })
}

fn plugin_failure(e: types::PluginError) -> Failure {
    match e {
        types::PluginError::NotSupported => Failure::NotSupported,
        types::PluginError::InvalidInput(m) => Failure::InvalidInput(clip(&m)),
        types::PluginError::Failed(m) => Failure::Failed(clip(&m)),
    }
}

fn clip(message: &str) -> String {
    message.chars().take(500).collect()
}

fn record_to_wit(r: host::PluginRecord) -> types::Record {
    types::Record {
        id: r.id,
        record_type: r.record_type,
        stage: r.stage,
        version: r.version,
        data: r.data,
        created_at: r.created_at,
        updated_at: r.updated_at,
    }
}

fn host_error(e: HostError) -> types::HostError {
    match e {
        HostError::Denied(m) => types::HostError::Denied(m),
        HostError::Invalid(m) => types::HostError::Invalid(m),
        HostError::Limit(m) => types::HostError::Limit(m),
        HostError::Conflict(m) => types::HostError::Conflict(m),
        HostError::Unavailable(m) => types::HostError::Unavailable(m),
    }
}

impl HostState {
    /// Deny-by-default: the call goes through only if the provider granted `cap` to this
    /// installation. A refusal is audited and answered with `denied`.
    fn check(
        &mut self,
        cap: Capability,
        operation: &str,
    ) -> Result<Arc<dyn host::HostServices>, types::HostError> {
        if self.call.grants.allows(cap) {
            return Ok(self.call.services.clone());
        }
        // The first refusal of each capability and operation in a call is audited at once
        // (aggregated per minute, not line by line; that time is the host's); repeats are
        // counted here and written once when the call ends, so a plugin looping on a
        // refused call costs the database nothing more and runs into its own deadline.
        match self
            .denials
            .iter_mut()
            .find(|(c, op, _)| *c == cap && op == operation)
        {
            Some((_, _, repeats)) => *repeats += 1,
            None => {
                let started = std::time::Instant::now();
                self.call.services.denied(cap, operation, 1);
                self.host_time += started.elapsed();
                self.denials.push((cap, operation.to_string(), 0));
            }
        }
        metrics::counter!("streamflow_plugin_denied_total", "capability" => cap.as_str())
            .increment(1);
        Err(types::HostError::Denied(format!(
            "{operation} needs the {cap} capability, which this tenant has not granted"
        )))
    }
}

impl HostState {
    /// Runs a capability call if it is granted, timing it: time spent in the host does not
    /// count against the plugin's deadline (see `Runtime::new_store`).
    fn host<R>(
        &mut self,
        cap: Capability,
        operation: &str,
        f: impl FnOnce(&dyn host::HostServices) -> Result<R, host::HostError>,
    ) -> Result<R, types::HostError> {
        let services = self.check(cap, operation)?;
        let started = std::time::Instant::now();
        let result = f(services.as_ref());
        self.host_time += started.elapsed();
        result.map_err(host_error)
    }
}

impl types::Host for HostState {}

impl streamflow::plugin::log::Host for HostState {
    fn log(&mut self, level: streamflow::plugin::log::Level, message: String) {
        use streamflow::plugin::log::Level;
        self.log_lines += 1;
        if self.log_lines > MAX_LOG_LINES {
            return;
        }
        let message: String = message.chars().take(MAX_LOG_LINE).collect();
        let message = host::escape_text(&message);
        let (tenant, plugin) = (&self.call.tenant, &self.call.plugin);
        match level {
            Level::Trace => tracing::trace!(target: "plugin", %tenant, %plugin, "{message}"),
            Level::Debug => tracing::debug!(target: "plugin", %tenant, %plugin, "{message}"),
            Level::Info => tracing::info!(target: "plugin", %tenant, %plugin, "{message}"),
            Level::Warn => tracing::warn!(target: "plugin", %tenant, %plugin, "{message}"),
            Level::Error => tracing::error!(target: "plugin", %tenant, %plugin, "{message}"),
        }
    }
}

impl streamflow::plugin::config::Host for HostState {
    fn get(&mut self) -> String {
        self.call.config.clone()
    }
}

impl streamflow::plugin::kv::Host for HostState {
    fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, types::HostError> {
        check_key(&key)?;
        self.host(Capability::Kv, "kv.get", |s| s.kv_get(&key))
    }

    fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), types::HostError> {
        check_key(&key)?;
        if value.len() > MAX_KV_VALUE {
            return Err(types::HostError::Limit(format!(
                "values are at most {MAX_KV_VALUE} bytes"
            )));
        }
        self.host(Capability::Kv, "kv.set", |s| s.kv_set(&key, &value))
    }

    fn delete(&mut self, key: String) -> Result<(), types::HostError> {
        check_key(&key)?;
        self.host(Capability::Kv, "kv.delete", |s| s.kv_delete(&key))
    }
}

fn check_key(key: &str) -> Result<(), types::HostError> {
    if key.is_empty() || key.len() > MAX_KV_KEY || key.contains('\0') {
        return Err(types::HostError::Invalid(format!(
            "keys are 1 to {MAX_KV_KEY} bytes without NUL"
        )));
    }
    Ok(())
}

impl streamflow::plugin::records::Host for HostState {
    fn get(
        &mut self,
        record_type: String,
        id: String,
    ) -> Result<Option<types::Record>, types::HostError> {
        self.host(Capability::RecordsRead, "records.get", |s| {
            s.record_get(&record_type, &id)
        })
        .map(|r| r.map(record_to_wit))
    }

    fn list(
        &mut self,
        record_type: String,
        stage: Option<String>,
        limit: u32,
    ) -> Result<Vec<types::Record>, types::HostError> {
        self.host(Capability::RecordsRead, "records.list", |s| {
            s.record_list(&record_type, stage.as_deref(), limit)
        })
        .map(|v| v.into_iter().map(record_to_wit).collect())
    }

    fn create(
        &mut self,
        record_type: String,
        stage: Option<String>,
        data: String,
    ) -> Result<types::Record, types::HostError> {
        self.host(Capability::RecordsWrite, "records.create", |s| {
            s.record_create(&record_type, stage.as_deref(), &data)
        })
        .map(record_to_wit)
    }

    fn update(
        &mut self,
        record_type: String,
        id: String,
        stage: Option<String>,
        data: String,
        expected_version: Option<u64>,
    ) -> Result<types::Record, types::HostError> {
        self.host(Capability::RecordsWrite, "records.update", |s| {
            s.record_update(&record_type, &id, stage.as_deref(), &data, expected_version)
        })
        .map(record_to_wit)
    }
}

impl streamflow::plugin::events::Host for HostState {
    fn emit(&mut self, kind: String, payload: String) -> Result<(), types::HostError> {
        self.host(Capability::Events, "events.emit", |s| {
            s.emit_event(&kind, &payload)
        })
    }
}
