//! What the host does for a plugin's calls, whatever contract version the plugin was built
//! against: the grant check (deny by default, audited), the limits on `kv` and logs, and the
//! accounting of host time, which does not count against the plugin's deadline. A contract
//! version's bindings module (`v0_1`, ...) only translates its WIT types to these calls.

use std::sync::Arc;
use std::time::Instant;

use crate::engine::{HostState, thread_cpu};
use crate::host::{self, HostError, HostServices, PluginRecord};
use crate::manifest::Capability;

/// Longest key and value in `kv`.
pub const MAX_KV_KEY: usize = 512;
pub const MAX_KV_VALUE: usize = 256 * 1024;
/// Log lines one call may write; later lines are dropped.
pub const MAX_LOG_LINES: u32 = 100;
pub const MAX_LOG_LINE: usize = 2048;
/// Longest message of a plugin's own error kept (the rest is cut).
pub const MAX_PLUGIN_MESSAGE: usize = 500;

/// A log line's level, as every contract version has it.
#[derive(Debug, Clone, Copy)]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

/// A plugin's own error message, cut to [`MAX_PLUGIN_MESSAGE`] characters.
pub fn clip(message: &str) -> String {
    message.chars().take(MAX_PLUGIN_MESSAGE).collect()
}

impl HostState {
    /// Deny-by-default: the call goes through only if the provider granted `cap` to this
    /// installation. A refusal is audited and answered with `denied`.
    fn check(
        &mut self,
        cap: Capability,
        operation: &str,
    ) -> Result<Arc<dyn HostServices>, HostError> {
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
                let services = self.call.services.clone();
                self.timed(|| services.denied(cap, operation, 1));
                self.denials.push((cap, operation.to_string(), 0));
            }
        }
        metrics::counter!("streamflow_plugin_denied_total", "capability" => cap.as_str())
            .increment(1);
        Err(HostError::Denied(format!(
            "{operation} needs the {cap} capability, which this tenant has not granted"
        )))
    }

    /// Runs `f` as host work: its wall-clock and CPU time are given back to the plugin's
    /// deadline (see `Runtime::new_store`).
    fn timed<R>(&mut self, f: impl FnOnce() -> R) -> R {
        let (wall, cpu) = (Instant::now(), thread_cpu());
        let result = f();
        self.host_time += wall.elapsed();
        self.host_cpu += thread_cpu().saturating_sub(cpu);
        result
    }

    /// Runs a capability call if it is granted, as host work.
    fn host<R>(
        &mut self,
        cap: Capability,
        operation: &str,
        f: impl FnOnce(&dyn HostServices) -> Result<R, HostError>,
    ) -> Result<R, HostError> {
        let services = self.check(cap, operation)?;
        self.timed(|| f(services.as_ref()))
    }

    /// `log`: at most [`MAX_LOG_LINES`] lines a call, each cut to [`MAX_LOG_LINE`] and
    /// escaped, so a plugin can neither flood nor forge the host's log.
    pub(crate) fn log(&mut self, level: LogLevel, message: &str) {
        self.log_lines += 1;
        if self.log_lines > MAX_LOG_LINES {
            return;
        }
        let message: String = message.chars().take(MAX_LOG_LINE).collect();
        let message = host::escape_text(&message);
        let (tenant, plugin) = (&self.call.tenant, &self.call.plugin);
        match level {
            LogLevel::Trace => tracing::trace!(target: "plugin", %tenant, %plugin, "{message}"),
            LogLevel::Debug => tracing::debug!(target: "plugin", %tenant, %plugin, "{message}"),
            LogLevel::Info => tracing::info!(target: "plugin", %tenant, %plugin, "{message}"),
            LogLevel::Warn => tracing::warn!(target: "plugin", %tenant, %plugin, "{message}"),
            LogLevel::Error => tracing::error!(target: "plugin", %tenant, %plugin, "{message}"),
        }
    }

    /// `config.get`: the installation's configuration, secrets left out.
    pub(crate) fn config(&self) -> String {
        self.call.config.clone()
    }

    pub(crate) fn kv_get(&mut self, key: &str) -> Result<Option<Vec<u8>>, HostError> {
        check_key(key)?;
        self.host(Capability::Kv, "kv.get", |s| s.kv_get(key))
    }

    pub(crate) fn kv_set(&mut self, key: &str, value: &[u8]) -> Result<(), HostError> {
        check_key(key)?;
        if value.len() > MAX_KV_VALUE {
            return Err(HostError::Limit(format!(
                "values are at most {MAX_KV_VALUE} bytes"
            )));
        }
        self.host(Capability::Kv, "kv.set", |s| s.kv_set(key, value))
    }

    pub(crate) fn kv_delete(&mut self, key: &str) -> Result<(), HostError> {
        check_key(key)?;
        self.host(Capability::Kv, "kv.delete", |s| s.kv_delete(key))
    }

    pub(crate) fn record_get(
        &mut self,
        record_type: &str,
        id: &str,
    ) -> Result<Option<PluginRecord>, HostError> {
        self.host(Capability::RecordsRead, "records.get", |s| {
            s.record_get(record_type, id)
        })
    }

    pub(crate) fn record_list(
        &mut self,
        record_type: &str,
        stage: Option<&str>,
        limit: u32,
    ) -> Result<Vec<PluginRecord>, HostError> {
        self.host(Capability::RecordsRead, "records.list", |s| {
            s.record_list(record_type, stage, limit)
        })
    }

    pub(crate) fn record_create(
        &mut self,
        record_type: &str,
        stage: Option<&str>,
        data: &str,
    ) -> Result<PluginRecord, HostError> {
        self.host(Capability::RecordsWrite, "records.create", |s| {
            s.record_create(record_type, stage, data)
        })
    }

    pub(crate) fn record_update(
        &mut self,
        record_type: &str,
        id: &str,
        stage: Option<&str>,
        data: &str,
        expected_version: Option<u64>,
    ) -> Result<PluginRecord, HostError> {
        self.host(Capability::RecordsWrite, "records.update", |s| {
            s.record_update(record_type, id, stage, data, expected_version)
        })
    }

    pub(crate) fn emit_event(&mut self, kind: &str, payload: &str) -> Result<(), HostError> {
        self.host(Capability::Events, "events.emit", |s| {
            s.emit_event(kind, payload)
        })
    }
}

fn check_key(key: &str) -> Result<(), HostError> {
    if key.is_empty() || key.len() > MAX_KV_KEY || key.contains('\0') {
        return Err(HostError::Invalid(format!(
            "keys are 1 to {MAX_KV_KEY} bytes without NUL"
        )));
    }
    Ok(())
}
