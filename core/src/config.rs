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
    /// Largest record `data`, in bytes of JSON, from any writer: the API, plugins and
    /// automations (`STREAMFLOW_RECORD_LIMIT`, default 256 KiB, at most `body_limit`).
    pub record_limit: usize,
    /// Most record JSON one list response carries (`STREAMFLOW_LIST_RESPONSE_BYTES`,
    /// default 4 MiB): the page ends early and its cursor continues from there.
    pub list_response_bytes: usize,
    /// Lifetime of an access token (15 minutes).
    pub access_token_ttl: Duration,
    /// Lifetime of a refresh token (30 days); each use rotates it.
    pub refresh_token_ttl: Duration,
    /// Login attempts allowed per client address per minute (`STREAMFLOW_LOGIN_PER_IP`).
    pub login_per_ip_per_minute: u32,
    /// Login attempts allowed per account from one client address per minute
    /// (`STREAMFLOW_LOGIN_PER_ACCOUNT`); past it that address is refused for that account.
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

    // --- Auth: session lifetime and login slow-down ---
    /// Longest a session lives from its login, however often it is refreshed
    /// (`STREAMFLOW_SESSION_MAX_AGE`, seconds, default 30 days).
    pub session_max_age: Duration,
    /// Login attempts per account per minute from all addresses together
    /// (`STREAMFLOW_LOGIN_PER_ACCOUNT_GLOBAL`, default 30); past it attempts are delayed,
    /// not refused.
    pub login_per_account_global_per_minute: u32,
    /// The longest a login attempt is delayed past that ceiling
    /// (`STREAMFLOW_LOGIN_MAX_DELAY`, seconds, default 5).
    pub login_max_delay: Duration,
    // --- HTTP hardening (issue 9: slow clients, connection cap, /metrics access) ---
    /// Time a connection has to send a complete request head, counted from the connection's
    /// start or from the first byte after an idle spell (`STREAMFLOW_HEADER_TIMEOUT_MS`,
    /// default 10 s). Past it the connection is closed.
    pub header_timeout: Duration,
    /// Time the whole request body may take to arrive, counted from its head
    /// (`STREAMFLOW_BODY_TIMEOUT_MS`, default 30 s). Past it: 408 and the connection closes.
    pub body_timeout: Duration,
    /// A connection with no request in progress is closed after this long
    /// (`STREAMFLOW_IDLE_TIMEOUT_MS`, default 60 s).
    pub idle_timeout: Duration,
    /// Connections served at once (`STREAMFLOW_MAX_CONNECTIONS`, default 1024); past it new
    /// ones wait in the listen backlog until one closes.
    pub max_connections: usize,
    /// Connections one peer address may hold at once (`STREAMFLOW_MAX_CONNECTIONS_PER_PEER`,
    /// default 256; 0 for no limit of its own, as behind a reverse proxy); past it a new
    /// connection from that address is closed at once.
    pub max_connections_per_peer: usize,
    /// Peers allowed to read `/metrics` without a token: IPs or CIDRs
    /// (`STREAMFLOW_METRICS_ALLOW`, comma-separated; default loopback only).
    pub metrics_allow: Vec<ipnet::IpNet>,
    /// A bearer token that opens `/metrics` from anywhere (`STREAMFLOW_METRICS_TOKEN`).
    pub metrics_token: Option<String>,

    // Plugin uploads and fairness (issue 9: uploads, plugin host).
    /// Versions one developer may publish per rolling hour (`STREAMFLOW_UPLOADS_PER_HOUR`,
    /// default 20).
    pub uploads_per_hour: u32,
    /// Bytes of packages one developer may have stored, all versions together
    /// (`STREAMFLOW_DEVELOPER_STORAGE_MB`, default 256 MiB).
    pub developer_storage_bytes: u64,
    /// Plugin calls one tenant may run at once (`STREAMFLOW_PLUGIN_TENANT_SHARE`; 0, the
    /// default, means a quarter of `plugin_instances`, at least 1).
    pub plugin_tenant_share: u32,
    // Plugin limits (issue 9: plugins and events).
    /// Bytes (keys and values) one installation may keep in `kv`
    /// (`STREAMFLOW_PLUGIN_KV_BYTES`, default 16 MiB).
    pub plugin_kv_bytes: u64,
    /// Plugin and automation runs one originating change may cause, over its whole chain
    /// (`STREAMFLOW_AUTOMATION_BUDGET`, default 1000).
    pub automation_budget: i64,

    // Contract 0.2.0 (issue 11): outbound HTTP and connections.
    /// The external base URL of this server, for OAuth2 redirects and webhook addresses
    /// (`STREAMFLOW_PUBLIC_URL`; default `http://` + the listen address).
    pub public_url: Option<String>,
    /// `host:port` pairs outbound requests may reach even on a private or loopback address,
    /// and over plain `http` (`STREAMFLOW_HTTP_ALLOW_HOSTS`): tests and on-premises services.
    pub http_allow_hosts: Vec<(String, u16)>,
    /// Names pinned to addresses for outbound requests (`STREAMFLOW_HTTP_RESOLVE`,
    /// `name=address`).
    pub http_resolve: Vec<(String, std::net::IpAddr)>,
    /// The largest response body an outbound request may receive
    /// (`STREAMFLOW_HTTP_MAX_RESPONSE_BYTES`, default 4 MiB).
    pub http_max_response_bytes: u64,
    /// A PEM file of extra roots outbound TLS trusts besides the system's
    /// (`STREAMFLOW_HTTP_EXTRA_ROOTS`).
    pub http_extra_roots: Option<PathBuf>,
    /// Inbound webhook deliveries per second one tenant × plugin may send to this node,
    /// with bursts of twice that (`STREAMFLOW_WEBHOOK_RATE`, default 50).
    pub webhook_rate: u32,
    /// Whether this node runs plugin schedules (`STREAMFLOW_SCHEDULER`, default on; any
    /// number of nodes may, a lease in the database runs each schedule once).
    pub scheduler: bool,
    /// How often the scheduler looks for due schedules (`STREAMFLOW_SCHEDULER_POLL_MS`,
    /// default 1000).
    pub scheduler_poll: std::time::Duration,
}

/// The loopback networks: the default of `metrics_allow`.
pub fn loopback_networks() -> Vec<ipnet::IpNet> {
    vec![
        "127.0.0.0/8".parse().expect("a valid network"),
        "::1/128".parse().expect("a valid network"),
    ]
}

/// Parses one entry of `STREAMFLOW_METRICS_ALLOW`: a CIDR (`10.0.0.0/8`) or a single address.
pub fn parse_network(text: &str) -> Result<ipnet::IpNet, String> {
    let text = text.trim();
    text.parse::<ipnet::IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("`{text}` is neither an IP address nor a CIDR network"))
}

impl Config {
    /// The external base URL, without a trailing slash.
    pub fn public_base(&self) -> String {
        match &self.public_url {
            Some(url) => url.trim_end_matches('/').to_string(),
            None => format!("http://{}", self.listen),
        }
    }

    /// The outbound HTTP guard's settings.
    pub fn outbound(&self) -> anyhow::Result<crate::outbound::OutboundConfig> {
        let extra_roots_pem = match &self.http_extra_roots {
            None => None,
            Some(path) => Some(std::fs::read(path).map_err(|e| {
                anyhow::anyhow!(
                    "STREAMFLOW_HTTP_EXTRA_ROOTS {}: {e}; give a readable PEM file or unset it",
                    path.display()
                )
            })?),
        };
        Ok(crate::outbound::OutboundConfig {
            allow_hosts: self.http_allow_hosts.clone(),
            resolve: self.http_resolve.clone(),
            max_response_bytes: self.http_max_response_bytes,
            extra_roots_pem,
        })
    }

    /// The per-tenant share of plugin instances, with the default worked out.
    pub fn plugin_tenant_share(&self) -> usize {
        match self.plugin_tenant_share {
            0 => (self.plugin_instances as usize / 4).max(1),
            n => n as usize,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            database_url: "sqlite://streamflow.db".into(),
            body_limit: 1024 * 1024,
            record_limit: 256 * 1024,
            list_response_bytes: 4 * 1024 * 1024,
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
            session_max_age: Duration::from_secs(30 * 24 * 3600),
            login_per_account_global_per_minute: 30,
            login_max_delay: Duration::from_secs(5),
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_connections: 1024,
            max_connections_per_peer: 256,
            metrics_allow: loopback_networks(),
            metrics_token: None,
            uploads_per_hour: 20,
            developer_storage_bytes: 256 << 20,
            plugin_tenant_share: 0,
            // Plugin limits (issue 9: plugins and events).
            plugin_kv_bytes: 16 * 1024 * 1024,
            automation_budget: 1000,
            public_url: None,
            http_allow_hosts: Vec::new(),
            http_resolve: Vec::new(),
            http_max_response_bytes: crate::outbound::DEFAULT_MAX_RESPONSE,
            webhook_rate: 50,
            scheduler: true,
            scheduler_poll: std::time::Duration::from_millis(1000),
            http_extra_roots: None,
        }
    }
}
