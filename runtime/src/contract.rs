//! The contract versions this host runs, and the dispatch over them. Each version of
//! `plugin-sdk/wit/<version>/` has one bindings module (`v0_1`, ...) that only translates
//! its WIT types to the version-independent host ([`crate::policy`], [`crate::host`]);
//! adding a version is one such module and one arm in each `match` below. A version is
//! never removed while plugins use it.

use wasmtime::Store;
use wasmtime::component::{Component, Linker};

use crate::engine::{Call, Failure, HostState, Reply};
use crate::{v0_1, v0_2};

/// A `streamflow:plugin` contract version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ContractVersion {
    V0_1,
    V0_2,
}

/// Every version this host runs, oldest first.
pub const SUPPORTED: &[ContractVersion] = &[ContractVersion::V0_1, ContractVersion::V0_2];

impl ContractVersion {
    /// As the manifest's `api` and the WIT package version spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            ContractVersion::V0_1 => "0.1.0",
            ContractVersion::V0_2 => "0.2.0",
        }
    }

    pub fn parse(text: &str) -> Option<ContractVersion> {
        SUPPORTED.iter().copied().find(|v| v.as_str() == text)
    }

    /// The version a component was built against, from the `streamflow:plugin` interfaces
    /// it imports and exports (all of one version: the package checks refuse a mix).
    pub fn of(component: &Component, engine: &wasmtime::Engine) -> Result<ContractVersion, String> {
        let ty = component.component_type();
        let names: Vec<String> = ty
            .imports(engine)
            .map(|(name, _)| name.to_string())
            .chain(ty.exports(engine).map(|(name, _)| name.to_string()))
            .collect();
        let version = names
            .iter()
            .filter_map(|n| n.strip_prefix("streamflow:plugin/"))
            .find_map(|n| n.split_once('@').map(|(_, v)| v))
            .ok_or("the component neither imports nor exports a streamflow:plugin interface")?;
        Self::parse(version).ok_or_else(|| {
            format!(
                "the component targets streamflow:plugin@{version}; this host runs {}",
                names_of(SUPPORTED)
            )
        })
    }
}

/// `versions`' names, comma-separated, for messages.
pub fn names_of(versions: &[ContractVersion]) -> String {
    versions
        .iter()
        .map(|v| v.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Adds every supported version's host functions to the linker.
pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    v0_1::add_to_linker(linker)?;
    v0_2::add_to_linker(linker)
}

/// A component linked against its version's host, ready to instantiate.
pub(crate) enum Pre {
    V0_1(v0_1::Pre),
    V0_2(v0_2::Pre),
}

/// An instance of a component (kept only by warm instances; the server instantiates per
/// call).
pub(crate) enum Instance {
    V0_1(v0_1::Plugin),
    V0_2(v0_2::Plugin),
}

impl Pre {
    pub(crate) fn new(
        version: ContractVersion,
        linker: &Linker<HostState>,
        component: &Component,
    ) -> wasmtime::Result<Pre> {
        Ok(match version {
            ContractVersion::V0_1 => Pre::V0_1(v0_1::Pre::new(linker, component)?),
            ContractVersion::V0_2 => Pre::V0_2(v0_2::Pre::new(linker, component)?),
        })
    }

    /// Instantiates and calls one hook. The outer error is a trap; the inner one the
    /// plugin's own answer.
    pub(crate) fn call(
        &self,
        store: &mut Store<HostState>,
        call: Call,
    ) -> wasmtime::Result<Result<Reply, Failure>> {
        match self {
            Pre::V0_1(pre) => v0_1::call(pre, store, call),
            Pre::V0_2(pre) => v0_2::call(pre, store, call),
        }
    }

    pub(crate) fn instantiate(&self, store: &mut Store<HostState>) -> wasmtime::Result<Instance> {
        Ok(match self {
            Pre::V0_1(pre) => Instance::V0_1(v0_1::instantiate(pre, store)?),
            Pre::V0_2(pre) => Instance::V0_2(v0_2::instantiate(pre, store)?),
        })
    }
}

impl Instance {
    pub(crate) fn call(
        &self,
        store: &mut Store<HostState>,
        call: Call,
    ) -> wasmtime::Result<Result<Reply, Failure>> {
        match self {
            Instance::V0_1(plugin) => v0_1::call_on(plugin, store, call),
            Instance::V0_2(plugin) => v0_2::call_on(plugin, store, call),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_and_print() {
        for v in SUPPORTED {
            assert_eq!(ContractVersion::parse(v.as_str()), Some(*v));
        }
        assert_eq!(ContractVersion::parse("9.9.9"), None);
        assert_eq!(names_of(SUPPORTED), "0.1.0, 0.2.0");
    }
}
