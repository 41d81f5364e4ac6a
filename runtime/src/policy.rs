//! What the host does for a plugin's calls, whatever contract version the plugin was built
//! against: the grant check (deny by default, audited), the limits on `kv` and logs, and the
//! accounting of host time, which does not count against the plugin's deadline. A contract
//! version's bindings module (`v0_1`, ...) only translates its WIT types to these calls.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::engine::{HostState, thread_cpu};
use crate::host::{
    self, ConnectionInfo, HostError, HostServices, HttpResponse, OutboundRequest, PluginRecord,
};
use crate::manifest::Capability;

/// Longest key and value in `kv`.
pub const MAX_KV_KEY: usize = 512;
pub const MAX_KV_VALUE: usize = 256 * 1024;
/// Log lines one call may write; later lines are dropped.
pub const MAX_LOG_LINES: u32 = 100;
pub const MAX_LOG_LINE: usize = 2048;
/// Longest message of a plugin's own error kept (the rest is cut).
pub const MAX_PLUGIN_MESSAGE: usize = 500;

/// An outbound request's timeout when the plugin gives none, and the longest it may ask.
pub const DEFAULT_HTTP_TIMEOUT: Duration = Duration::from_secs(10);
pub const MAX_HTTP_TIMEOUT: Duration = Duration::from_secs(30);
/// Most headers, and most bytes of them, one outbound request may carry.
pub const MAX_REQUEST_HEADERS: usize = 64;
pub const MAX_REQUEST_HEADER_BYTES: usize = 16 * 1024;

/// What remains of a call's quotas (`limits.remaining`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Remaining {
    pub http_requests: u32,
    pub http_bytes: u64,
    pub record_reads: u32,
    pub record_writes: u32,
    pub events: u32,
    pub wall_ms: u64,
}

/// A refused call over a quota, naming it.
fn over(quota: &str, limit: u64) -> HostError {
    HostError::Limit(format!(
        "quota {quota}: this call has used all {limit} (limits.remaining says what is left)"
    ))
}

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
        let services = self.check(Capability::RecordsRead, "records.get")?;
        self.take_reads(1)?;
        self.timed(|| services.record_get(record_type, id))
    }

    /// Counts `n` record reads, or refuses them when none remain.
    fn take_reads(&mut self, n: u32) -> Result<u32, HostError> {
        let quota = self.call.quotas.record_reads;
        let left = quota.saturating_sub(self.used.record_reads);
        if left == 0 {
            return Err(over("record-reads", quota.into()));
        }
        let n = n.min(left);
        self.used.record_reads += n;
        Ok(n)
    }

    fn take_write(&mut self) -> Result<(), HostError> {
        let quota = self.call.quotas.record_writes;
        if self.used.record_writes >= quota {
            return Err(over("record-writes", quota.into()));
        }
        self.used.record_writes += 1;
        Ok(())
    }

    /// What remains of this call's quotas.
    pub(crate) fn remaining(&self) -> Remaining {
        let q = &self.call.quotas;
        Remaining {
            http_requests: q.http_requests.saturating_sub(self.used.http_requests),
            http_bytes: q.http_bytes.saturating_sub(self.used.http_bytes),
            record_reads: q.record_reads.saturating_sub(self.used.record_reads),
            record_writes: q.record_writes.saturating_sub(self.used.record_writes),
            events: q.events.saturating_sub(self.used.events),
            wall_ms: self.wall_left().as_millis() as u64,
        }
    }

    fn wall_left(&self) -> Duration {
        self.call.wall.saturating_sub(self.started.elapsed())
    }

    /// `http.send`: the grant, the request quota and the bytes quota; the request's timeout
    /// never outlasts the call's wall-clock cap. The kernel checks hosts and addresses.
    pub(crate) fn http_send(
        &mut self,
        mut request: OutboundRequest,
        asked_timeout_ms: Option<u32>,
    ) -> Result<HttpResponse, HostError> {
        let services = self.check(Capability::Http, "http.send")?;
        let quotas = self.call.quotas;
        if self.used.http_requests >= quotas.http_requests {
            return Err(over("http-requests", quotas.http_requests.into()));
        }
        if request.headers.len() > MAX_REQUEST_HEADERS
            || request
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
                > MAX_REQUEST_HEADER_BYTES
        {
            return Err(HostError::Invalid(format!(
                "at most {MAX_REQUEST_HEADERS} headers and {MAX_REQUEST_HEADER_BYTES} bytes of them"
            )));
        }
        let bytes_left = quotas.http_bytes.saturating_sub(self.used.http_bytes);
        if request.body.len() as u64 > bytes_left {
            return Err(over("http-bytes", quotas.http_bytes));
        }
        let wall_left = self.wall_left();
        if wall_left.is_zero() {
            return Err(HostError::Timeout(
                "the call's wall-clock cap is reached".into(),
            ));
        }
        let asked = asked_timeout_ms
            .map(|ms| Duration::from_millis(ms.max(1) as u64))
            .unwrap_or(DEFAULT_HTTP_TIMEOUT)
            .min(MAX_HTTP_TIMEOUT);
        request.timeout = asked.min(wall_left);
        request.max_response_bytes = bytes_left - request.body.len() as u64;
        self.used.http_requests += 1;
        self.used.http_bytes += request.body.len() as u64;
        let result = self.timed(|| services.http_send(request));
        if let Ok(response) = &result {
            self.used.http_bytes += response.body.len() as u64;
        }
        result
    }

    pub(crate) fn connection(&mut self, id: &str) -> Result<Option<ConnectionInfo>, HostError> {
        self.host(Capability::Http, "connections.get", |s| s.connection(id))
    }

    pub(crate) fn connections(&mut self) -> Result<Vec<ConnectionInfo>, HostError> {
        self.host(Capability::Http, "connections.list", |s| s.connections())
    }

    pub(crate) fn secret(&mut self, pointer: &str) -> Result<Option<String>, HostError> {
        if (!pointer.is_empty() && !pointer.starts_with('/')) || pointer.len() > 512 {
            return Err(HostError::Invalid(
                "name a secret by its JSON pointer into the config, such as \"/api_key\"".into(),
            ));
        }
        self.host(Capability::Secrets, "secrets.get", |s| s.secret(pointer))
    }

    pub(crate) fn record_list(
        &mut self,
        record_type: &str,
        stage: Option<&str>,
        limit: u32,
    ) -> Result<Vec<PluginRecord>, HostError> {
        // Each record listed is a read; the list is cut to what remains.
        let services = self.check(Capability::RecordsRead, "records.list")?;
        let limit = self.take_reads(limit.max(1))?;
        let listed = self.timed(|| services.record_list(record_type, stage, limit));
        // Give back what the list did not return.
        let returned = listed.as_ref().map_or(0, |l| l.len() as u32);
        self.used.record_reads -= limit - returned.min(limit);
        listed
    }

    pub(crate) fn record_create(
        &mut self,
        record_type: &str,
        stage: Option<&str>,
        data: &str,
    ) -> Result<PluginRecord, HostError> {
        let services = self.check(Capability::RecordsWrite, "records.create")?;
        self.take_write()?;
        self.timed(|| services.record_create(record_type, stage, data))
    }

    pub(crate) fn record_update(
        &mut self,
        record_type: &str,
        id: &str,
        stage: Option<&str>,
        data: &str,
        expected_version: Option<u64>,
    ) -> Result<PluginRecord, HostError> {
        let services = self.check(Capability::RecordsWrite, "records.update")?;
        self.take_write()?;
        self.timed(|| services.record_update(record_type, id, stage, data, expected_version))
    }

    /// `schedule-control.soon`: no grant (a plugin's schedules are its own); the services
    /// check that the manifest declares it.
    pub(crate) fn schedule_soon(&mut self, schedule: &str) -> Result<(), HostError> {
        if schedule.is_empty() || schedule.len() > 64 {
            return Err(HostError::Invalid(
                "name one of the manifest's schedules".into(),
            ));
        }
        let services = self.call.services.clone();
        self.timed(|| services.schedule_soon(schedule))
    }

    pub(crate) fn record_get_keyed(
        &mut self,
        record_type: &str,
        key: &str,
    ) -> Result<Option<PluginRecord>, HostError> {
        let services = self.check(Capability::RecordsRead, "keyed-records.get")?;
        check_record_key(key)?;
        self.take_reads(1)?;
        self.timed(|| services.record_get_keyed(record_type, key))
    }

    pub(crate) fn record_create_keyed(
        &mut self,
        record_type: &str,
        key: &str,
        stage: Option<&str>,
        data: &str,
    ) -> Result<PluginRecord, HostError> {
        let services = self.check(Capability::RecordsWrite, "keyed-records.create")?;
        check_record_key(key)?;
        self.take_write()?;
        self.timed(|| services.record_create_keyed(record_type, key, stage, data))
    }

    pub(crate) fn emit_event(&mut self, kind: &str, payload: &str) -> Result<(), HostError> {
        let services = self.check(Capability::Events, "events.emit")?;
        let quota = self.call.quotas.events;
        if self.used.events >= quota {
            return Err(over("events", quota.into()));
        }
        self.used.events += 1;
        self.timed(|| services.emit_event(kind, payload))
    }
}

/// Longest key of a keyed record.
pub const MAX_RECORD_KEY: usize = 200;

fn check_record_key(key: &str) -> Result<(), HostError> {
    if key.is_empty() || key.len() > MAX_RECORD_KEY || key.chars().any(char::is_control) {
        return Err(HostError::Invalid(format!(
            "a record key is 1 to {MAX_RECORD_KEY} bytes of text without control characters"
        )));
    }
    Ok(())
}

fn check_key(key: &str) -> Result<(), HostError> {
    if key.is_empty() || key.len() > MAX_KV_KEY || key.contains('\0') {
        return Err(HostError::Invalid(format!(
            "keys are 1 to {MAX_KV_KEY} bytes without NUL"
        )));
    }
    Ok(())
}
