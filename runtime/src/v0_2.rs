//! Bindings of `streamflow:plugin@0.2.0`: translation between its WIT types and the
//! version-independent host ([`crate::policy`]). Nothing here decides anything.

use wasmtime::Store;
use wasmtime::component::{Component, HasSelf, Linker};

use crate::engine::{Call, Failure, HostState, Reply};
use crate::host::{self, ConnectionInfo, ConnectionStatus, HostError, OutboundRequest};
use crate::policy::{LogLevel, clip};

wasmtime::component::bindgen!({
    path: "../plugin-sdk/wit/0.2.0",
    world: "plugin",
});

use streamflow::plugin::types;

fn call_schedule(
    plugin: &Plugin,
    store: &mut Store<HostState>,
    tick: host::ScheduleTick,
) -> wasmtime::Result<Result<Reply, Failure>> {
    Ok(plugin
        .streamflow_plugin_schedules()
        .call_on_schedule(
            &mut *store,
            &types::ScheduleTick {
                id: tick.id,
                last_run_at: tick.last_run_at,
                now: tick.now,
            },
        )?
        .map(|()| Reply::Done)
        .map_err(plugin_failure))
}

fn host_error(e: HostError) -> types::HostError {
    match e {
        HostError::Denied(m) => types::HostError::Denied(m),
        HostError::Invalid(m) => types::HostError::Invalid(m),
        HostError::Limit(m) => types::HostError::Limit(m),
        HostError::Conflict(m) => types::HostError::Conflict(m),
        HostError::Unavailable(m) => types::HostError::Unavailable(m),
        HostError::Timeout(m) => types::HostError::Timeout(m),
    }
}

fn plugin_failure(e: types::PluginError) -> Failure {
    match e {
        types::PluginError::NotSupported => Failure::NotSupported,
        types::PluginError::InvalidInput(m) => Failure::InvalidInput(clip(&m)),
        types::PluginError::Failed(m) => Failure::Failed(clip(&m)),
        types::PluginError::RetryLater(m) => Failure::RetryLater(clip(&m)),
    }
}

shared_bindings!();

impl streamflow::plugin::schedule_control::Host for HostState {
    fn soon(&mut self, schedule: String) -> Result<(), types::HostError> {
        self.schedule_soon(&schedule).map_err(host_error)
    }
}

impl streamflow::plugin::keyed_records::Host for HostState {
    fn get(
        &mut self,
        record_type: String,
        key: String,
    ) -> Result<Option<types::Record>, types::HostError> {
        self.record_get_keyed(&record_type, &key)
            .map(|r| r.map(record_to_wit))
            .map_err(host_error)
    }

    fn create(
        &mut self,
        record_type: String,
        key: String,
        stage: Option<String>,
        data: String,
    ) -> Result<types::Record, types::HostError> {
        self.record_create_keyed(&record_type, &key, stage.as_deref(), &data)
            .map(record_to_wit)
            .map_err(host_error)
    }
}

impl streamflow::plugin::http::Host for HostState {
    fn send(
        &mut self,
        request: streamflow::plugin::http::Request,
    ) -> Result<streamflow::plugin::http::Response, types::HostError> {
        let outbound = OutboundRequest {
            method: request.method,
            url: request.url,
            headers: request.headers,
            body: request.body,
            connection: request.connection,
            timeout: std::time::Duration::ZERO,
            follow_redirects: request.follow_redirects,
            max_response_bytes: 0,
        };
        self.http_send(outbound, request.timeout_ms)
            .map(|r| streamflow::plugin::http::Response {
                status: r.status,
                headers: r.headers,
                body: r.body,
            })
            .map_err(host_error)
    }
}

fn connection_to_wit(c: ConnectionInfo) -> streamflow::plugin::connections::Connection {
    use streamflow::plugin::connections::Status;
    streamflow::plugin::connections::Connection {
        id: c.id,
        kind: c.kind,
        status: match c.status {
            ConnectionStatus::NotConnected => Status::NotConnected,
            ConnectionStatus::Connected => Status::Connected,
            ConnectionStatus::Expired => Status::Expired,
            ConnectionStatus::Error => Status::Error,
        },
        metadata: c.metadata,
        expires_at: c.expires_at,
        last_error: c.last_error,
    }
}

impl streamflow::plugin::connections::Host for HostState {
    fn get(
        &mut self,
        id: String,
    ) -> Result<Option<streamflow::plugin::connections::Connection>, types::HostError> {
        self.connection(&id)
            .map(|c| c.map(connection_to_wit))
            .map_err(host_error)
    }

    fn list(
        &mut self,
    ) -> Result<Vec<streamflow::plugin::connections::Connection>, types::HostError> {
        self.connections()
            .map(|v| v.into_iter().map(connection_to_wit).collect())
            .map_err(host_error)
    }
}

impl streamflow::plugin::secrets::Host for HostState {
    fn get(&mut self, pointer: String) -> Result<Option<String>, types::HostError> {
        self.secret(&pointer).map_err(host_error)
    }
}

impl streamflow::plugin::limits::Host for HostState {
    fn remaining(&mut self) -> streamflow::plugin::limits::QuotasLeft {
        let r = HostState::remaining(self);
        streamflow::plugin::limits::QuotasLeft {
            http_requests: r.http_requests,
            http_bytes: r.http_bytes,
            record_reads: r.record_reads,
            record_writes: r.record_writes,
            events: r.events,
            wall_ms: r.wall_ms,
        }
    }
}
