//! Server configuration. Every field can be set by a `STREAMFLOW_*` environment variable or
//! the matching `streamflow serve` flag (see `cli.rs`); the defaults run one node on SQLite
//! in the working directory.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct Config {
    /// Where the HTTP server listens (`STREAMFLOW_LISTEN`).
    pub listen: SocketAddr,
    /// `sqlite://streamflow.db` by default; `postgres://...` for PostgreSQL
    /// (`STREAMFLOW_DATABASE_URL`).
    pub database_url: String,
    /// Largest JSON request body accepted, in bytes; larger ones get 413 before they are
    /// parsed (`STREAMFLOW_BODY_LIMIT`, default 1 MiB). Plugin uploads will have their own.
    pub body_limit: usize,
    /// Lifetime of an access token (15 minutes).
    pub access_token_ttl: Duration,
    /// Lifetime of a refresh token (30 days); each use rotates it.
    pub refresh_token_ttl: Duration,
    /// Login attempts allowed per client address per minute (`STREAMFLOW_LOGIN_PER_IP`).
    pub login_per_ip_per_minute: u32,
    /// Login attempts allowed per account per minute (`STREAMFLOW_LOGIN_PER_ACCOUNT`).
    pub login_per_account_per_minute: u32,
    /// Most record writes committed in one transaction (`STREAMFLOW_WRITE_BATCH`, default
    /// 256). 1 turns group commit off: one transaction per write.
    pub write_batch: usize,
    /// The first provider account, used only when none exists yet.
    pub provider_email: Option<String>,
    pub provider_password: Option<String>,
    /// Where the server keeps files: compiled plugins (`plugin-cache/`) and, when
    /// `secret_key` is not set, the generated `secret.key` (`STREAMFLOW_DATA_DIR`, default
    /// `streamflow-data`).
    pub data_dir: PathBuf,
    /// Base64 of the 32-byte key that encrypts secrets at rest (`STREAMFLOW_SECRET_KEY`).
    /// Every node of a cluster needs the same one.
    pub secret_key: Option<String>,
    /// Largest plugin package accepted, in bytes (`STREAMFLOW_PLUGIN_SIZE_LIMIT`, 32 MiB).
    pub plugin_size_limit: usize,
    /// The most any plugin call may take, use and return, whatever its manifest asks
    /// (`STREAMFLOW_PLUGIN_MAX_TIMEOUT_MS`, `_MAX_MEMORY_MB`, `_MAX_OUTPUT_KB`).
    pub plugin_max_limits: streamflow_runtime::Limits,
    /// Plugin instances that can run at once (`STREAMFLOW_PLUGIN_INSTANCES`).
    pub plugin_instances: u32,
    /// Register the bundled first-party plugins at start-up (`STREAMFLOW_BUNDLED_PLUGINS`,
    /// default on).
    pub bundled_plugins: bool,
    /// Extra industry templates (`STREAMFLOW_TEMPLATES_DIR`).
    pub templates_dir: Option<PathBuf>,
    /// Run this node's event dispatcher (`STREAMFLOW_DISPATCHER`, default on). Off makes
    /// an API-only node.
    pub dispatcher: bool,
    // Plugin limits (issue 9: plugins and events).
    /// Bytes (keys and values) one installation may keep in `kv`
    /// (`STREAMFLOW_PLUGIN_KV_BYTES`, default 16 MiB).
    pub plugin_kv_bytes: u64,
    /// Plugin and automation runs one originating change may cause, over its whole chain
    /// (`STREAMFLOW_AUTOMATION_BUDGET`, default 1000).
    pub automation_budget: i64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            database_url: "sqlite://streamflow.db".into(),
            body_limit: 1024 * 1024,
            access_token_ttl: Duration::from_secs(15 * 60),
            refresh_token_ttl: Duration::from_secs(30 * 24 * 3600),
            login_per_ip_per_minute: 60,
            login_per_account_per_minute: 10,
            write_batch: crate::store::writer::MAX_BATCH,
            provider_email: None,
            provider_password: None,
            data_dir: PathBuf::from("streamflow-data"),
            secret_key: None,
            plugin_size_limit: 32 * 1024 * 1024,
            plugin_max_limits: streamflow_runtime::Limits {
                timeout_ms: 2_000,
                memory_mb: 64,
                output_kb: 256,
            },
            plugin_instances: 128,
            bundled_plugins: true,
            templates_dir: None,
            dispatcher: true,
            // Plugin limits (issue 9: plugins and events).
            plugin_kv_bytes: 16 * 1024 * 1024,
            automation_budget: 1000,
        }
    }
}
