//! What the kernel provides to plugins, independent of the contract version. Each
//! `streamflow:plugin` version's bindings translate to and from these types.

use crate::manifest::Capability;

/// Why a capability call was refused or failed (the WIT `host-error`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error("denied: {0}")]
    Denied(String),
    #[error("invalid: {0}")]
    Invalid(String),
    #[error("limit: {0}")]
    Limit(String),
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// An outbound request did not complete in time (0.2.0; older contracts see it as
    /// `unavailable`).
    #[error("timeout: {0}")]
    Timeout(String),
}

/// A record as plugins see it.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginRecord {
    pub id: String,
    pub record_type: String,
    pub stage: Option<String>,
    pub version: u64,
    /// The record's data as JSON text.
    pub data: String,
    pub created_at: i64,
    pub updated_at: i64,
}

/// An event delivered to `on-event`.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginEvent {
    pub id: String,
    pub kind: String,
    pub record_type: Option<String>,
    pub record_id: Option<String>,
    pub payload: String,
    pub at: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HttpRequest {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// A plugin's outbound request (`http.send`), after the runtime's quota checks.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboundRequest {
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub connection: Option<String>,
    /// Already capped: at most the call's remaining wall-clock time.
    pub timeout: std::time::Duration,
    pub follow_redirects: bool,
    /// The most response body the call may still receive.
    pub max_response_bytes: u64,
}

/// A connection as plugins see it: never a credential.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectionInfo {
    pub id: String,
    pub kind: String,
    pub status: ConnectionStatus,
    /// JSON object text.
    pub metadata: String,
    pub expires_at: Option<i64>,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionStatus {
    NotConnected,
    Connected,
    Expired,
    Error,
}

impl ConnectionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionStatus::NotConnected => "not_connected",
            ConnectionStatus::Connected => "connected",
            ConnectionStatus::Expired => "expired",
            ConnectionStatus::Error => "error",
        }
    }

    pub fn parse(text: &str) -> Option<ConnectionStatus> {
        [
            ConnectionStatus::NotConnected,
            ConnectionStatus::Connected,
            ConnectionStatus::Expired,
            ConnectionStatus::Error,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }
}

/// One firing of a schedule (`on-schedule`).
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleTick {
    pub id: String,
    pub last_run_at: Option<i64>,
    pub now: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Temperature {
    Hot,
    Warm,
    Cold,
}

/// A scorer's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Score {
    pub value: u8,
    pub temperature: Temperature,
    pub confidence: f32,
    pub reasons: Vec<String>,
}

/// The storage behind `kv`, `records` and `events`, bound by the kernel to one tenant and
/// one plugin before each call. The runtime checks grants before calling any of these, so
/// an implementation only has to scope and validate. Calls block: plugins run on blocking
/// threads.
pub trait HostServices: Send + Sync {
    fn kv_get(&self, key: &str) -> Result<Option<Vec<u8>>, HostError>;
    fn kv_set(&self, key: &str, value: &[u8]) -> Result<(), HostError>;
    fn kv_delete(&self, key: &str) -> Result<(), HostError>;
    fn record_get(&self, record_type: &str, id: &str) -> Result<Option<PluginRecord>, HostError>;
    fn record_list(
        &self,
        record_type: &str,
        stage: Option<&str>,
        limit: u32,
    ) -> Result<Vec<PluginRecord>, HostError>;
    fn record_create(
        &self,
        record_type: &str,
        stage: Option<&str>,
        data: &str,
    ) -> Result<PluginRecord, HostError>;
    fn record_update(
        &self,
        record_type: &str,
        id: &str,
        stage: Option<&str>,
        data: &str,
        expected_version: Option<u64>,
    ) -> Result<PluginRecord, HostError>;
    fn emit_event(&self, kind: &str, payload: &str) -> Result<(), HostError>;
    /// `keyed-records.get` (0.2.0): the record the plugin created under `key`.
    fn record_get_keyed(
        &self,
        _record_type: &str,
        _key: &str,
    ) -> Result<Option<PluginRecord>, HostError> {
        Err(unavailable())
    }
    /// `keyed-records.create` (0.2.0): a record created under `key` at most once.
    fn record_create_keyed(
        &self,
        _record_type: &str,
        _key: &str,
        _stage: Option<&str>,
        _data: &str,
    ) -> Result<PluginRecord, HostError> {
        Err(unavailable())
    }
    /// `schedule-control.soon` (0.2.0): the next run of one of the installation's schedules
    /// within about a minute.
    fn schedule_soon(&self, _schedule: &str) -> Result<(), HostError> {
        Err(unavailable())
    }
    /// `http.send` (0.2.0): the runtime has checked the grant and the request quota; the
    /// implementation checks the manifest's hosts, the address and the connection.
    fn http_send(&self, _request: OutboundRequest) -> Result<HttpResponse, HostError> {
        Err(unavailable())
    }
    /// `connections.get` (0.2.0).
    fn connection(&self, _id: &str) -> Result<Option<ConnectionInfo>, HostError> {
        Err(unavailable())
    }
    /// `connections.list` (0.2.0).
    fn connections(&self) -> Result<Vec<ConnectionInfo>, HostError> {
        Err(unavailable())
    }
    /// `secrets.get` (0.2.0): one of the installation's own `writeOnly` config values.
    /// Each read is audited.
    fn secret(&self, _pointer: &str) -> Result<Option<String>, HostError> {
        Err(unavailable())
    }
    /// Calls the installation was not granted (`calls` of them, with this capability and
    /// operation): record them in the audit log.
    fn denied(&self, capability: Capability, operation: &str, calls: u32);
}

/// Services for calls that must not touch storage (benchmarks, `plugin inspect`-style
/// dry runs): everything is unavailable and denials go nowhere.
pub struct NoServices;

impl HostServices for NoServices {
    fn kv_get(&self, _: &str) -> Result<Option<Vec<u8>>, HostError> {
        Err(unavailable())
    }
    fn kv_set(&self, _: &str, _: &[u8]) -> Result<(), HostError> {
        Err(unavailable())
    }
    fn kv_delete(&self, _: &str) -> Result<(), HostError> {
        Err(unavailable())
    }
    fn record_get(&self, _: &str, _: &str) -> Result<Option<PluginRecord>, HostError> {
        Err(unavailable())
    }
    fn record_list(
        &self,
        _: &str,
        _: Option<&str>,
        _: u32,
    ) -> Result<Vec<PluginRecord>, HostError> {
        Err(unavailable())
    }
    fn record_create(&self, _: &str, _: Option<&str>, _: &str) -> Result<PluginRecord, HostError> {
        Err(unavailable())
    }
    fn record_update(
        &self,
        _: &str,
        _: &str,
        _: Option<&str>,
        _: &str,
        _: Option<u64>,
    ) -> Result<PluginRecord, HostError> {
        Err(unavailable())
    }
    fn emit_event(&self, _: &str, _: &str) -> Result<(), HostError> {
        Err(unavailable())
    }
    fn denied(&self, _: Capability, _: &str, _: u32) {}
}

fn unavailable() -> HostError {
    HostError::Unavailable("no storage in this context".into())
}

/// Plugin-supplied text made safe for a log line: control characters (newlines, carriage
/// returns, escape sequences), Unicode line separators and bidirectional overrides are
/// written as `\n`, `\u{1b}` and the like, and backslashes doubled, so a plugin can neither
/// forge a line of its own nor hide or reorder what is printed around its text.
pub fn escape_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control()
                || matches!(
                    c,
                    '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{061c}'
                )
                || ('\u{202a}'..='\u{202e}').contains(&c)
                || ('\u{2066}'..='\u{2069}').contains(&c) =>
            {
                out.extend(c.escape_unicode())
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::escape_text;

    #[test]
    fn plugin_text_cannot_forge_or_hide_log_lines() {
        assert_eq!(escape_text("plain text, é ✓"), "plain text, é ✓");
        assert_eq!(
            escape_text("ok\nINFO forged line\r\x1b[2Kgone\t\\n"),
            "ok\\nINFO forged line\\r\\u{1b}[2Kgone\\t\\\\n"
        );
        assert_eq!(
            escape_text("a\u{2028}b\u{202e}c\u{2066}d\0"),
            "a\\u{2028}b\\u{202e}c\\u{2066}d\\u{0}"
        );
        for c in (0u32..0x20).chain(0x7f..0xa0).filter_map(char::from_u32) {
            assert!(
                !escape_text(&format!("x{c}y")).chars().any(char::is_control),
                "{c:?}"
            );
        }
    }
}
