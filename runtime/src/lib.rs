//! The StreamFlow plugin runtime.
//!
//! - [`manifest`]: `plugin.toml`, hooks, capabilities, grants and limits;
//! - [`package`]: the package file (component plus manifest) and the checks that a
//!   component matches its manifest;
//! - [`Runtime`]: the wasmtime sandbox that runs one hook per fresh instance;
//! - [`host`]: what the kernel provides to plugins, whatever the contract version;
//! - [`integration`]: the manifest's outbound HTTP, connections, webhooks, schedules and
//!   per-call quotas (contract 0.2.0);
//! - [`contract`]: the contract versions this host runs and the dispatch over them; the
//!   version-independent policy (grants, audit, limits, host time) is in `policy`, and each
//!   version's bindings only translate (`v0_1`).
//!
//! wasmtime lives in this crate alone so the kernel's rebuilds skip it.

pub mod config_schema;
#[macro_use]
mod shared_bindings;
pub mod contract;
mod engine;
mod event_kind;
pub mod host;
pub mod integration;
pub mod manifest;
pub mod package;
pub mod pointer;
mod policy;
mod v0_1;
mod v0_2;

pub use engine::{
    Call, Failure, FailureKind, Invocation, Loaded, Reply, Runtime, RuntimeConfig, WarmInstance,
};
pub use event_kind::EventKind;
pub use host::{
    ConnectionInfo, ConnectionStatus, HostError, HostServices, HttpRequest, HttpResponse,
    NoServices, OutboundRequest, PluginEvent, PluginRecord, ScheduleTick, Score, Temperature,
};
pub use integration::Quotas;
pub use manifest::{Capability, Grants, Hook, Limits, Manifest};
pub use package::{ComponentInfo, Package, PackageError};
