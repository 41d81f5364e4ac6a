//! The StreamFlow host kernel: tenancy, auth, storage and the HTTP API.
//!
//! The kernel owns everything that must be the same for every industry: who may do what
//! (three isolated auth realms), which tenant a row belongs to, and how records are stored.
//! What differs between industries lives in sandboxed WebAssembly plugins (a later layer);
//! this crate leaves the seams for them: records are generic, and every change writes an
//! event to the outbox in the same transaction.
//!
//! It is not a plugin runtime (yet), and it never trusts a request: every tenant-owned
//! query takes a [`tenancy::TenantScope`] that only the auth layer can produce.

pub mod api;
pub mod auth;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod demo;
pub mod error;
pub mod plugin_cli;
pub mod plugins;
pub mod records;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod tenancy;
