//! Write StreamFlow plugins in Rust.
//!
//! A plugin is one type that implements [`Plugin`] and one call to [`export!`]. Hooks the
//! type does not implement answer [`Error::NotSupported`]; the host only calls the hooks the
//! manifest (`plugin.toml`) declares. The host interfaces are wrapped in the modules
//! [`log`], [`config`], [`kv`], [`records`], [`events`], [`http`], [`connections`],
//! [`secrets`] and [`limits`]. Build the crate for
//! `wasm32-wasip2` with `streamflow plugin build <dir>`, which also packages the manifest.
//!
//! Every hook call runs in a fresh instance of the plugin: statics and caches do not
//! survive between calls, so keep state in [`kv`] or in [`records`].
//!
//! # Example
//!
//! A scorer that rates leads by how much budget they bring, with its thresholds taken from
//! the tenant's configuration:
//!
//! ```no_run
//! use serde::Deserialize;
//! use streamflow_plugin_sdk::{config, log, Error, Lead, Plugin, Score, Temperature};
//!
//! #[derive(Deserialize)]
//! struct Settings {
//!     #[serde(default = "default_hot")]
//!     hot_budget: f64,
//! }
//!
//! fn default_hot() -> f64 {
//!     10_000.0
//! }
//!
//! struct BudgetScorer;
//!
//! impl Plugin for BudgetScorer {
//!     fn score_lead(lead: Lead) -> Result<Score, Error> {
//!         let settings: Settings = config::get()?;
//!         let data = lead.json()?;
//!         let budget = data.get("budget").and_then(|b| b.as_f64()).unwrap_or(0.0);
//!         log::debug(&format!("lead {} has budget {budget}", lead.id));
//!         let hot = budget >= settings.hot_budget;
//!         Ok(Score {
//!             value: if hot { 90 } else { 30 },
//!             temperature: if hot { Temperature::Hot } else { Temperature::Cold },
//!             confidence: if data.get("budget").is_some() { 1.0 } else { 0.2 },
//!             reasons: vec![format!("budget {budget}")],
//!         })
//!     }
//! }
//!
//! streamflow_plugin_sdk::export!(BudgetScorer);
//! ```
//!
//! with this manifest beside `Cargo.toml`:
//!
//! ```toml
//! id = "budget-scorer"
//! name = "Budget scorer"
//! version = "0.1.0"
//! api = "0.2.0"
//! hooks = ["score-lead"]
//!
//! [config.schema]
//! type = "object"
//! properties = { hot_budget = { type = "number", default = 10000 } }
//! ```

pub mod text;

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "wit/0.2.0",
        world: "plugin",
        pub_export_macro: true,
        export_macro_name: "export_bindings",
        default_bindings_module: "streamflow_plugin_sdk::bindings",
    });
}

use bindings::streamflow::plugin::types as wit;

pub use wit::{HttpRequest, HttpResponse, Temperature};

/// Now, in microseconds since the Unix epoch (the unit of the host's times, such as
/// [`ScheduleTick`]'s `now`), from the sandbox's clock.
pub fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// The API version of the contract this SDK builds against.
pub const API_VERSION: &str = "0.2.0";

/// A record as the host hands it to a plugin. `data` is the record's JSON object as text;
/// [`Record::json`] parses it.
pub type Record = wit::Record;
/// A lead handed to [`Plugin::score_lead`].
pub type Lead = wit::Record;
/// An event handed to [`Plugin::on_event`].
pub type Event = wit::Event;
/// One firing of a schedule, handed to [`Plugin::on_schedule`].
pub type ScheduleTick = wit::ScheduleTick;

/// A lead score.
#[derive(Debug, Clone, PartialEq)]
pub struct Score {
    /// 0 to 100; larger values are clamped.
    pub value: u8,
    pub temperature: Temperature,
    /// 0.0 to 1.0.
    pub confidence: f32,
    /// Human-readable reasons, most important first.
    pub reasons: Vec<String>,
}

/// Why a hook gave no answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Error {
    /// The plugin does not implement this hook.
    NotSupported,
    /// The input was not something the plugin can work with.
    InvalidInput(String),
    /// The plugin tried and failed; the same call would fail the same way.
    Failed(String),
    /// The work could not be done now for a reason that may pass (the external service
    /// throttled or failed, storage was unavailable): an event is delivered again later,
    /// with backoff, and an action's caller is answered 503.
    RetryLater(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::NotSupported => f.write_str("not supported"),
            Error::InvalidInput(m) => write!(f, "invalid input: {m}"),
            Error::Failed(m) => write!(f, "failed: {m}"),
            Error::RetryLater(m) => write!(f, "retry later: {m}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<HostError> for Error {
    fn from(e: HostError) -> Self {
        match e {
            // What may pass is worth another try; a refusal is not.
            HostError::Unavailable(_) | HostError::Timeout(_) => {
                Error::RetryLater(host_message(&e))
            }
            _ => Error::Failed(host_message(&e)),
        }
    }
}

/// Whether a later call may get past this refusal: the host or the outbound request could
/// not complete now (`unavailable`, `timeout`), or this call used up one of its per-call
/// quotas (a `limit` naming a `quota`; the next call has its own). Other limits (a response
/// over the platform's cap) and refusals stay as they are.
pub fn may_pass(e: &HostError) -> bool {
    match e {
        HostError::Unavailable(_) | HostError::Timeout(_) => true,
        HostError::Limit(m) => m.starts_with("quota "),
        _ => false,
    }
}

/// The host's reason as one line, such as `invalid: /data/job_type: ...` (the bindings'
/// own text for it is their debug form).
pub fn host_message(e: &HostError) -> String {
    match e {
        HostError::Denied(m) => format!("denied: {m}"),
        HostError::Invalid(m) => format!("invalid: {m}"),
        HostError::Limit(m) => format!("limit: {m}"),
        HostError::Conflict(m) => format!("conflict: {m}"),
        HostError::Unavailable(m) => format!("unavailable: {m}"),
        HostError::Timeout(m) => format!("timeout: {m}"),
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::InvalidInput(e.to_string())
    }
}

/// Why the host refused or could not complete a capability call.
pub type HostError = wit::HostError;

impl wit::Record {
    /// The record's data parsed as JSON.
    pub fn json(&self) -> Result<serde_json::Value, Error> {
        Ok(serde_json::from_str(&self.data)?)
    }

    /// The record's data parsed into your own type.
    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T, Error> {
        Ok(serde_json::from_str(&self.data)?)
    }
}

impl wit::Event {
    /// The event payload parsed as JSON.
    pub fn json(&self) -> Result<serde_json::Value, Error> {
        Ok(serde_json::from_str(&self.payload)?)
    }
}

/// A StreamFlow plugin. Implement the hooks your manifest declares; the others answer
/// [`Error::NotSupported`].
pub trait Plugin {
    /// Score a lead (hook `score-lead`).
    fn score_lead(lead: Lead) -> Result<Score, Error> {
        let _ = lead;
        Err(Error::NotSupported)
    }

    /// Handle an event the manifest subscribes to (hook `on-event`).
    fn on_event(event: Event) -> Result<(), Error> {
        let _ = event;
        Err(Error::NotSupported)
    }

    /// Run a named action (hook `run-action`). Input and output are JSON.
    fn run_action(name: &str, input: serde_json::Value) -> Result<serde_json::Value, Error> {
        let _ = (name, input);
        Err(Error::NotSupported)
    }

    /// Answer an inbound call from an external system (hook `handle-webhook`).
    fn handle_webhook(request: HttpRequest) -> Result<HttpResponse, Error> {
        let _ = request;
        Err(Error::NotSupported)
    }

    /// Run one firing of a schedule the manifest declares (hook `on-schedule`).
    fn on_schedule(tick: ScheduleTick) -> Result<(), Error> {
        let _ = tick;
        Err(Error::NotSupported)
    }
}

pub mod calendar;

/// Reading a plugin's own config schema the way the host does.
pub mod schema {
    use serde_json::{Map, Value};

    /// The configuration the host hands a plugin whose tenant set nothing: every
    /// `default` of the schema, recursively into objects (the host's rule, for tests that
    /// check a schema's defaults against the code's).
    pub fn defaults(schema: &Value) -> Value {
        let mut config = Value::Object(Map::new());
        fill(schema, &mut config);
        config
    }

    fn fill(schema: &Value, value: &mut Value) {
        let (Some(props), Some(object)) = (
            schema.get("properties").and_then(Value::as_object),
            value.as_object_mut(),
        ) else {
            return;
        };
        for (name, sub) in props {
            if let Some(default) = sub.get("default") {
                object
                    .entry(name.clone())
                    .or_insert_with(|| default.clone());
            }
            if let Some(child) = object.get_mut(name) {
                fill(sub, child);
            }
        }
    }
}

/// Logging through the host, attributed to the tenant and plugin. Needs no grant.
pub mod log {
    use crate::bindings::streamflow::plugin::log::{Level, log};

    pub fn trace(message: &str) {
        log(Level::Trace, message)
    }
    pub fn debug(message: &str) {
        log(Level::Debug, message)
    }
    pub fn info(message: &str) {
        log(Level::Info, message)
    }
    pub fn warn(message: &str) {
        log(Level::Warn, message)
    }
    pub fn error(message: &str) {
        log(Level::Error, message)
    }
}

/// The tenant's configuration of this plugin, validated and with defaults applied. Needs
/// no grant. Secret (`writeOnly`) fields are not included.
pub mod config {
    use crate::Error;

    /// The configuration parsed into your own type.
    pub fn get<T: serde::de::DeserializeOwned>() -> Result<T, Error> {
        serde_json::from_str(&raw()).map_err(|e| Error::Failed(format!("config: {e}")))
    }

    /// The configuration as JSON text.
    pub fn raw() -> String {
        crate::bindings::streamflow::plugin::config::get()
    }
}

/// Storage private to this tenant and plugin. Capability `kv`.
pub mod kv {
    use crate::HostError;
    use crate::bindings::streamflow::plugin::kv as host;

    pub fn get(key: &str) -> Result<Option<Vec<u8>>, HostError> {
        host::get(key)
    }
    pub fn set(key: &str, value: &[u8]) -> Result<(), HostError> {
        host::set(key, value)
    }
    pub fn delete(key: &str) -> Result<(), HostError> {
        host::delete(key)
    }

    /// Read a JSON value stored with [`set_json`].
    pub fn get_json<T: serde::de::DeserializeOwned>(key: &str) -> Result<Option<T>, HostError> {
        match host::get(key)? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| HostError::Invalid(format!("stored value for {key:?}: {e}"))),
        }
    }

    pub fn set_json<T: serde::Serialize>(key: &str, value: &T) -> Result<(), HostError> {
        let bytes = serde_json::to_vec(value).map_err(|e| HostError::Invalid(e.to_string()))?;
        host::set(key, &bytes)
    }
}

/// The tenant's records. Capabilities `records:read` and `records:write`.
pub mod records {
    use crate::bindings::streamflow::plugin::records as host;
    use crate::{HostError, Record};

    pub fn get(record_type: &str, id: &str) -> Result<Option<Record>, HostError> {
        host::get(record_type, id)
    }
    pub fn list(
        record_type: &str,
        stage: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Record>, HostError> {
        host::list(record_type, stage, limit)
    }
    pub fn create(
        record_type: &str,
        stage: Option<&str>,
        data: &serde_json::Value,
    ) -> Result<Record, HostError> {
        host::create(record_type, stage, &data.to_string())
    }
    pub fn update(
        record_type: &str,
        id: &str,
        stage: Option<&str>,
        data: &serde_json::Value,
        expected_version: Option<u64>,
    ) -> Result<Record, HostError> {
        host::update(record_type, id, stage, &data.to_string(), expected_version)
    }

    /// The record this plugin created under `key` (an external id) with [`create_keyed`],
    /// if it still exists. Capability `records:read`.
    pub fn get_keyed(record_type: &str, key: &str) -> Result<Option<Record>, HostError> {
        crate::bindings::streamflow::plugin::keyed_records::get(record_type, key)
    }

    /// Creates a record under `key` (an external id, such as a ServiceTitan job id), at most
    /// once: `HostError::Conflict` when it exists (read it with [`get_keyed`] and
    /// [`update`] it). The host reserves the record's id for the key before writing, so an
    /// import that dies midway never leaves a duplicate behind. Capability `records:write`.
    pub fn create_keyed(
        record_type: &str,
        key: &str,
        stage: Option<&str>,
        data: &serde_json::Value,
    ) -> Result<Record, HostError> {
        crate::bindings::streamflow::plugin::keyed_records::create(
            record_type,
            key,
            stage,
            &data.to_string(),
        )
    }
}

/// Emit events into the tenant's event stream as `plugin.<your-id>.<kind>`. Capability
/// `events`.
pub mod events {
    use crate::HostError;

    pub fn emit(kind: &str, payload: &serde_json::Value) -> Result<(), HostError> {
        crate::bindings::streamflow::plugin::events::emit(kind, &payload.to_string())
    }
}

/// Outbound HTTP through the host. Capability `http`; only to the hosts the manifest's
/// `[http] hosts` lists, over `https`.
///
/// ```no_run
/// use streamflow_plugin_sdk::http;
/// # fn main() -> Result<(), streamflow_plugin_sdk::HostError> {
/// let found = http::Request::get("/v3/company/1/query?query=select%20*%20from%20Customer")
///     .connection("quickbooks")
///     .header("Accept", "application/json")
///     .send()?;
/// if found.status == 200 {
///     let body: serde_json::Value = found.json()?;
/// }
/// # Ok(()) }
/// ```
pub mod http {
    use crate::HostError;
    use crate::bindings::streamflow::plugin::http as host;

    pub use host::Response;

    /// A request to build and [`send`](Request::send).
    #[derive(Debug, Clone)]
    pub struct Request(host::Request);

    impl Request {
        pub fn new(method: &str, url: &str) -> Request {
            Request(host::Request {
                method: method.to_string(),
                url: url.to_string(),
                headers: Vec::new(),
                body: Vec::new(),
                connection: None,
                timeout_ms: None,
                follow_redirects: false,
            })
        }
        pub fn get(url: &str) -> Request {
            Request::new("GET", url)
        }
        pub fn post(url: &str) -> Request {
            Request::new("POST", url)
        }
        pub fn put(url: &str) -> Request {
            Request::new("PUT", url)
        }
        pub fn delete(url: &str) -> Request {
            Request::new("DELETE", url)
        }
        pub fn header(mut self, name: &str, value: &str) -> Request {
            self.0.headers.push((name.to_string(), value.to_string()));
            self
        }
        pub fn body(mut self, body: impl Into<Vec<u8>>) -> Request {
            self.0.body = body.into();
            self
        }
        /// A JSON body, with `Content-Type: application/json`.
        pub fn json(self, value: &serde_json::Value) -> Request {
            self.header("Content-Type", "application/json")
                .body(value.to_string())
        }
        /// Send through a connection the manifest declares: the host adds its credentials,
        /// and a relative `url` is joined to the connection's API base.
        pub fn connection(mut self, id: &str) -> Request {
            self.0.connection = Some(id.to_string());
            self
        }
        /// At most 30 000 ms; 10 000 when not set.
        pub fn timeout_ms(mut self, ms: u32) -> Request {
            self.0.timeout_ms = Some(ms);
            self
        }
        /// Follow up to 3 redirects, each checked like the first request.
        pub fn follow_redirects(mut self) -> Request {
            self.0.follow_redirects = true;
            self
        }
        /// A response of any status is `Ok`.
        pub fn send(self) -> Result<Response, HostError> {
            host::send(&self.0)
        }
    }

    impl Response {
        /// The first header of this name (case-insensitive).
        pub fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }

        pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, HostError> {
            serde_json::from_slice(&self.body).map_err(|e| {
                HostError::Invalid(format!("response body is not the JSON expected: {e}"))
            })
        }

        pub fn is_success(&self) -> bool {
            (200..300).contains(&self.status)
        }
    }
}

/// The plugin's connections: status and non-secret metadata, never a credential.
/// Capability `http`.
pub mod connections {
    use crate::HostError;
    use crate::bindings::streamflow::plugin::connections as host;

    pub use host::{Connection, Status};

    pub fn get(id: &str) -> Result<Option<Connection>, HostError> {
        host::get(id)
    }

    pub fn list() -> Result<Vec<Connection>, HostError> {
        host::list()
    }

    /// The connection `id` when it is connected; else why not, in words for the tenant:
    /// `service` names the service, `connect` says how a tenant admin connects it. Not
    /// connected and expired are `failed` (a person must act); in error is `retry-later`.
    pub fn require(id: &str, service: &str, connect: &str) -> Result<Connection, crate::Error> {
        use crate::Error;
        let connection = get(id)?
            .ok_or_else(|| Error::Failed(format!("the manifest has no {id} connection")))?;
        let why = connection
            .last_error
            .as_deref()
            .map(|e| format!(" ({})", crate::text::clip(e, 200)))
            .unwrap_or_default();
        match connection.status {
            Status::Connected => Ok(connection),
            Status::NotConnected => Err(Error::Failed(format!(
                "{service} is not connected: {connect}"
            ))),
            Status::Expired => Err(Error::Failed(format!(
                "connection expired: {service} must be connected again by a tenant admin{why}"
            ))),
            Status::Error => Err(Error::RetryLater(format!(
                "the {service} connection is in error{why}"
            ))),
        }
    }

    impl Connection {
        /// The metadata as JSON (an object).
        pub fn metadata_json(&self) -> serde_json::Value {
            serde_json::from_str(&self.metadata).unwrap_or_default()
        }
    }
}

/// The plugin's own secrets: its config's `writeOnly` values, by JSON pointer. Capability
/// `secrets`; every read is audited.
pub mod secrets {
    use crate::HostError;

    pub fn get(pointer: &str) -> Result<Option<String>, HostError> {
        crate::bindings::streamflow::plugin::secrets::get(pointer)
    }
}

/// What remains of this call's quotas. Needs no grant.
/// The plugin's own schedules. Needs no grant.
pub mod schedules {
    use crate::HostError;

    /// Asks for the next run of the manifest's schedule `id` within about a minute (for
    /// work left over: an import its quotas paused); the usual interval resumes after it.
    pub fn soon(id: &str) -> Result<(), HostError> {
        crate::bindings::streamflow::plugin::schedule_control::soon(id)
    }
}

pub mod limits {
    pub use crate::bindings::streamflow::plugin::limits::QuotasLeft as Remaining;

    pub fn remaining() -> Remaining {
        crate::bindings::streamflow::plugin::limits::remaining()
    }
}

#[doc(hidden)]
pub mod __private {
    use super::*;

    pub fn score_lead<P: Plugin>(lead: Lead) -> Result<wit::Score, wit::PluginError> {
        P::score_lead(lead)
            .map(|s| wit::Score {
                value: s.value.min(100),
                temperature: s.temperature,
                confidence: if s.confidence.is_finite() {
                    s.confidence.clamp(0.0, 1.0)
                } else {
                    0.0
                },
                reasons: s.reasons,
            })
            .map_err(into_wit)
    }

    pub fn on_event<P: Plugin>(event: Event) -> Result<(), wit::PluginError> {
        P::on_event(event).map_err(into_wit)
    }

    pub fn run_action<P: Plugin>(name: String, input: String) -> Result<String, wit::PluginError> {
        let input = if input.trim().is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(&input)
                .map_err(|e| wit::PluginError::InvalidInput(e.to_string()))?
        };
        P::run_action(&name, input)
            .map(|v| v.to_string())
            .map_err(into_wit)
    }

    pub fn handle_webhook<P: Plugin>(
        request: HttpRequest,
    ) -> Result<HttpResponse, wit::PluginError> {
        P::handle_webhook(request).map_err(into_wit)
    }

    pub fn on_schedule<P: Plugin>(tick: ScheduleTick) -> Result<(), wit::PluginError> {
        P::on_schedule(tick).map_err(into_wit)
    }

    fn into_wit(e: Error) -> wit::PluginError {
        match e {
            Error::NotSupported => wit::PluginError::NotSupported,
            Error::InvalidInput(m) => wit::PluginError::InvalidInput(m),
            Error::Failed(m) => wit::PluginError::Failed(m),
            Error::RetryLater(m) => wit::PluginError::RetryLater(m),
        }
    }
}

/// Export a type implementing [`Plugin`] as the component's hooks.
///
/// ```ignore
/// struct MyPlugin;
/// impl streamflow_plugin_sdk::Plugin for MyPlugin { /* hooks */ }
/// streamflow_plugin_sdk::export!(MyPlugin);
/// ```
#[macro_export]
macro_rules! export {
    ($plugin:ty) => {
        // Only a WebAssembly build exports the hooks: a native build (tests of the plugin's
        // own logic) has no host to export them to, and native linkers refuse their names.
        #[cfg(target_family = "wasm")]
        const _: () = {
            use $crate::bindings::exports::streamflow::plugin as __hooks;
            use $crate::bindings::streamflow::plugin::types as __types;

            struct __StreamflowExports;

            impl __hooks::scoring::Guest for __StreamflowExports {
                fn score_lead(
                    lead: __types::Record,
                ) -> Result<__types::Score, __types::PluginError> {
                    $crate::__private::score_lead::<$plugin>(lead)
                }
            }

            impl __hooks::event_handler::Guest for __StreamflowExports {
                fn on_event(event: __types::Event) -> Result<(), __types::PluginError> {
                    $crate::__private::on_event::<$plugin>(event)
                }
            }

            impl __hooks::actions::Guest for __StreamflowExports {
                fn run_action(name: String, input: String) -> Result<String, __types::PluginError> {
                    $crate::__private::run_action::<$plugin>(name, input)
                }
            }

            impl __hooks::webhooks::Guest for __StreamflowExports {
                fn handle_webhook(
                    request: __types::HttpRequest,
                ) -> Result<__types::HttpResponse, __types::PluginError> {
                    $crate::__private::handle_webhook::<$plugin>(request)
                }
            }

            impl __hooks::schedules::Guest for __StreamflowExports {
                fn on_schedule(tick: __types::ScheduleTick) -> Result<(), __types::PluginError> {
                    $crate::__private::on_schedule::<$plugin>(tick)
                }
            }

            $crate::bindings::export_bindings!(__StreamflowExports);
        };
    };
}
