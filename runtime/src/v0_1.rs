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

shared_bindings!();
