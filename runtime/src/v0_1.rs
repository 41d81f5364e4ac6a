//! Bindings of `streamflow:plugin@0.1.0` (frozen): translation between its WIT types and
//! the version-independent host ([`crate::policy`]). Nothing here decides anything.

use wasmtime::Store;
use wasmtime::component::{Component, HasSelf, Linker};

use crate::engine::{Call, Failure, HostState, Reply};
use crate::host::{self, HostError};
use crate::policy::{LogLevel, clip};

wasmtime::component::bindgen!({
    path: "../plugin-sdk/wit/0.1.0",
    world: "plugin",
});

use streamflow::plugin::types;

/// 0.1.0 has no `on-schedule` hook.
fn call_schedule(
    _: &Plugin,
    _: &mut Store<HostState>,
    _: host::ScheduleTick,
) -> wasmtime::Result<Result<Reply, Failure>> {
    Ok(Err(Failure::NotSupported))
}

fn host_error(e: HostError) -> types::HostError {
    match e {
        HostError::Denied(m) => types::HostError::Denied(m),
        HostError::Invalid(m) => types::HostError::Invalid(m),
        HostError::Limit(m) => types::HostError::Limit(m),
        HostError::Conflict(m) => types::HostError::Conflict(m),
        // 0.1.0 makes no outbound calls; were one to time out, trying later may work.
        HostError::Unavailable(m) | HostError::Timeout(m) => types::HostError::Unavailable(m),
    }
}

fn plugin_failure(e: types::PluginError) -> Failure {
    match e {
        types::PluginError::NotSupported => Failure::NotSupported,
        types::PluginError::InvalidInput(m) => Failure::InvalidInput(clip(&m)),
        types::PluginError::Failed(m) => Failure::Failed(clip(&m)),
    }
}

shared_bindings!();
