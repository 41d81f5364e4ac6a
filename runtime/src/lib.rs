//! The StreamFlow plugin runtime.
//!
//! - [`manifest`]: `plugin.toml`, hooks, capabilities, grants and limits;
//! - [`package`]: the package file (component plus manifest) and the checks that a
//!   component matches its manifest;
//! - [`Runtime`]: the wasmtime sandbox that runs one hook per fresh instance;
//! - [`host`]: what the kernel provides to plugins, whatever the contract version;
//! - [`contract`]: the contract versions this host runs and the dispatch over them; the
//!   version-independent policy (grants, audit, limits, host time) is in `policy`, and each
//!   version's bindings only translate (`v0_1`).
//!
//! wasmtime lives in this crate alone so the kernel's rebuilds skip it.

pub mod config_schema;
pub mod contract;
mod engine;
mod event_kind;
pub mod host;
pub mod manifest;
pub mod package;
pub mod pointer;
mod policy;
mod v0_1;

pub use engine::{
    Call, Failure, FailureKind, Invocation, Loaded, Reply, Runtime, RuntimeConfig, WarmInstance,
};
pub use event_kind::EventKind;
pub use host::{
    HostError, HostServices, NoServices, PluginEvent, PluginRecord, Score, Temperature,
};
pub use manifest::{Capability, Grants, Hook, Limits, Manifest};
pub use package::{ComponentInfo, Package, PackageError};
