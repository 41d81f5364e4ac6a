//! The StreamFlow plugin runtime.
//!
//! - [`manifest`]: `plugin.toml`, hooks, capabilities, grants and limits;
//! - [`package`]: the package file (component plus manifest) and the checks that a
//!   component matches its manifest;
//! - [`Runtime`]: the wasmtime sandbox that runs one hook per fresh instance;
//! - [`host`]: what the kernel provides to plugins, whatever the contract version.
//!
//! wasmtime lives in this crate alone so the kernel's rebuilds skip it.

pub mod config_schema;
mod engine;
pub mod host;
pub mod manifest;
pub mod package;
pub mod pointer;
mod v0_1;

pub use engine::{Call, Failure, Invocation, Loaded, Reply, Runtime, RuntimeConfig, WarmInstance};
pub use host::{
    HostError, HostServices, NoServices, PluginEvent, PluginRecord, Score, Temperature,
};
pub use manifest::{Capability, Grants, Hook, Limits, Manifest};
pub use package::{ComponentInfo, Package, PackageError};
