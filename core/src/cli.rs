//! The `streamflow` command line: `serve`, `demo`, `migrate`, and the plugin, template and
//! score tools.

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::config::Config;
use crate::{demo, server, store, telemetry};

#[derive(Parser)]
#[command(
    name = "streamflow",
    version,
    about = "StreamFlow: the operating platform for service businesses"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP server (creating and migrating the database if needed).
    Serve(ServeArgs),
    /// Run the server with demo data: the same as `serve --demo`.
    Demo(ServeArgs),
    /// Apply pending database migrations and exit.
    Migrate(DatabaseArgs),
    /// Write, build and inspect plugins.
    #[command(subcommand)]
    Plugin(crate::plugin_cli::PluginCommand),
    /// Check and list industry templates.
    #[command(subcommand)]
    Template(TemplateCommand),
    /// Measure lead scorers against labelled leads.
    #[command(subcommand)]
    Score(ScoreCommand),
}

#[derive(Subcommand)]
enum ScoreCommand {
    /// Score labelled leads with a template's scorer, as a tenant on the template would,
    /// and print how often it agrees, a confusion matrix and the leads it judged otherwise.
    Eval {
        /// The template (its id); by default the one the fixture file names.
        #[arg(long)]
        template: Option<String>,
        /// A fixture file of labelled leads (`industry-templates/scoring/<id>.toml`).
        #[arg(long)]
        fixtures: std::path::PathBuf,
        /// Fail (exit 1) when fewer agree than this share, in percent.
        #[arg(long, default_value_t = 90.0)]
        min_agreement: f64,
        #[arg(long, env = "STREAMFLOW_TEMPLATES_DIR")]
        templates_dir: Option<std::path::PathBuf>,
    },
}

#[derive(Subcommand)]
enum TemplateCommand {
    /// Check template files: schemas, stages, automations, plugins and their configs.
    Lint {
        /// One or more template files (`industry-templates/*.toml`).
        #[arg(required = true)]
        files: Vec<std::path::PathBuf>,
    },
    /// List the templates built into this binary (and those in STREAMFLOW_TEMPLATES_DIR).
    List {
        #[arg(long, env = "STREAMFLOW_TEMPLATES_DIR")]
        templates_dir: Option<std::path::PathBuf>,
    },
}

#[derive(Args, Clone)]
struct DatabaseArgs {
    /// `sqlite://streamflow.db` (created if missing) or `postgres://user@host/db`.
    #[arg(
        long,
        env = "STREAMFLOW_DATABASE_URL",
        default_value = "sqlite://streamflow.db"
    )]
    database_url: String,
}

#[derive(Args, Clone)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "STREAMFLOW_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    #[command(flatten)]
    database: DatabaseArgs,
    /// Largest JSON request body in bytes.
    #[arg(long, env = "STREAMFLOW_BODY_LIMIT", default_value_t = 1024 * 1024)]
    body_limit: usize,
    /// Largest record `data` in bytes of JSON, whoever writes it (at most the body limit;
    /// default 256 KiB, or the body limit when that is smaller).
    #[arg(long, env = "STREAMFLOW_RECORD_LIMIT")]
    record_limit: Option<usize>,
    /// Most record JSON in one list response, in bytes; a page ends early beyond it.
    #[arg(long, env = "STREAMFLOW_LIST_RESPONSE_BYTES", default_value_t = 4 * 1024 * 1024)]
    list_response_bytes: usize,
    /// Login attempts per client address per minute.
    #[arg(long, env = "STREAMFLOW_LOGIN_PER_IP", default_value_t = 60)]
    login_per_ip: u32,
    /// Login attempts per account from one client address per minute.
    #[arg(long, env = "STREAMFLOW_LOGIN_PER_ACCOUNT", default_value_t = 10)]
    login_per_account: u32,
    /// Most record writes committed together (group commit); 1 commits each alone.
    #[arg(long, env = "STREAMFLOW_WRITE_BATCH", default_value_t = crate::store::writer::MAX_BATCH)]
    write_batch: usize,
    /// Email of the first provider account (used only when there is none).
    #[arg(long, env = "STREAMFLOW_PROVIDER_EMAIL")]
    provider_email: Option<String>,
    /// Password of the first provider account; generated and printed once if unset.
    #[arg(long, env = "STREAMFLOW_PROVIDER_PASSWORD", hide_env_values = true)]
    provider_password: Option<String>,
    /// Seed demo tenants, users and leads, and print how to log in.
    #[arg(long)]
    demo: bool,
    /// Directory for compiled plugins and the generated secret key.
    #[arg(long, env = "STREAMFLOW_DATA_DIR", default_value = "streamflow-data")]
    data_dir: std::path::PathBuf,
    /// Base64 of a 32-byte key encrypting secrets at rest (`openssl rand -base64 32`);
    /// generated into the data directory if unset. Set the same key on every node.
    #[arg(long, env = "STREAMFLOW_SECRET_KEY", hide_env_values = true)]
    secret_key: Option<String>,
    /// Largest plugin package accepted, in bytes.
    #[arg(long, env = "STREAMFLOW_PLUGIN_SIZE_LIMIT", default_value_t = 32 * 1024 * 1024)]
    plugin_size_limit: usize,
    /// Longest any plugin call may run, whatever its manifest asks.
    #[arg(
        long,
        env = "STREAMFLOW_PLUGIN_MAX_TIMEOUT_MS",
        default_value_t = 2_000
    )]
    plugin_max_timeout_ms: u32,
    /// Most memory any plugin instance may use, in MiB.
    #[arg(long, env = "STREAMFLOW_PLUGIN_MAX_MEMORY_MB", default_value_t = 64)]
    plugin_max_memory_mb: u32,
    /// Largest result of any plugin call, in KiB.
    #[arg(long, env = "STREAMFLOW_PLUGIN_MAX_OUTPUT_KB", default_value_t = 256)]
    plugin_max_output_kb: u32,
    /// Plugin instances that may run at once.
    #[arg(long, env = "STREAMFLOW_PLUGIN_INSTANCES", default_value_t = 128)]
    plugin_instances: u32,
    /// Register the first-party plugins bundled with the server (approved) at start-up;
    /// `0` keeps the registry to what developers upload.
    #[arg(long, env = "STREAMFLOW_BUNDLED_PLUGINS", default_value = "1",
          value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::Set)]
    bundled_plugins: bool,
    /// Run this node's event dispatcher (automations, plugin event delivery). `0` makes an
    /// API-only node; another node must dispatch.
    #[arg(long, env = "STREAMFLOW_DISPATCHER", default_value = "1",
          value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::Set)]
    dispatcher: bool,
    /// A directory of extra industry templates (`*.toml`), offered beside the built-in ones.
    #[arg(long, env = "STREAMFLOW_TEMPLATES_DIR")]
    templates_dir: Option<std::path::PathBuf>,
    /// Log format: `text` or `json` (one JSON object per line).
    #[arg(long, env = "STREAMFLOW_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,

    // --- Auth: session lifetime and login slow-down ---
    /// Longest a session lives from its login, in seconds, however often it is refreshed.
    #[arg(long, env = "STREAMFLOW_SESSION_MAX_AGE", default_value_t = 30 * 24 * 3600)]
    session_max_age: u64,
    /// Login attempts per account per minute from all addresses together; past it attempts
    /// are delayed (never refused), so nobody can lock a user out.
    #[arg(
        long,
        env = "STREAMFLOW_LOGIN_PER_ACCOUNT_GLOBAL",
        default_value_t = 30
    )]
    login_per_account_global: u32,
    /// Longest delay of a login attempt past that ceiling, in seconds.
    #[arg(long, env = "STREAMFLOW_LOGIN_MAX_DELAY", default_value_t = 5)]
    login_max_delay: u64,
    // --- HTTP hardening (issue 9: slow clients, connection cap, /metrics access) ---
    /// Milliseconds a connection has to send a complete request head.
    #[arg(long, env = "STREAMFLOW_HEADER_TIMEOUT_MS", default_value_t = 10_000)]
    header_timeout_ms: u64,
    /// Milliseconds the whole request body may take to arrive (then 408).
    #[arg(long, env = "STREAMFLOW_BODY_TIMEOUT_MS", default_value_t = 30_000)]
    body_timeout_ms: u64,
    /// Milliseconds a connection may stay open with no request in progress.
    #[arg(long, env = "STREAMFLOW_IDLE_TIMEOUT_MS", default_value_t = 60_000)]
    idle_timeout_ms: u64,
    /// Connections served at once; past it new connections wait to be accepted.
    #[arg(long, env = "STREAMFLOW_MAX_CONNECTIONS", default_value_t = 1024)]
    max_connections: usize,
    /// Connections one peer address may hold at once (0: no limit, e.g. behind a proxy).
    #[arg(
        long,
        env = "STREAMFLOW_MAX_CONNECTIONS_PER_PEER",
        default_value_t = 256
    )]
    max_connections_per_peer: usize,
    /// Addresses (IPs or CIDRs, comma-separated) that may read /metrics without a token;
    /// an empty value allows none.
    #[arg(long, env = "STREAMFLOW_METRICS_ALLOW", default_value = "127.0.0.0/8,::1",
          value_parser = networks)]
    metrics_allow: Networks,
    /// A bearer token that opens /metrics from any address.
    #[arg(long, env = "STREAMFLOW_METRICS_TOKEN", hide_env_values = true)]
    metrics_token: Option<String>,
    // Plugin uploads and fairness (issue 9: uploads, plugin host).
    /// Plugin versions one developer may publish per rolling hour.
    #[arg(long, env = "STREAMFLOW_UPLOADS_PER_HOUR", default_value_t = 20)]
    uploads_per_hour: u32,
    /// MiB of plugin packages one developer may have stored (all versions together).
    #[arg(long, env = "STREAMFLOW_DEVELOPER_STORAGE_MB", default_value_t = 256)]
    developer_storage_mb: u64,
    /// Plugin calls one tenant may run at once; 0: a quarter of the instances (at least 1).
    #[arg(long, env = "STREAMFLOW_PLUGIN_TENANT_SHARE", default_value_t = 0)]
    plugin_tenant_share: u32,
    // Plugin limits (issue 9: plugins and events).
    /// Bytes (keys and values) one plugin installation may keep in its key-value store.
    #[arg(long, env = "STREAMFLOW_PLUGIN_KV_BYTES", default_value_t = 16 * 1024 * 1024)]
    plugin_kv_bytes: u64,
    /// Plugin and automation runs one originating change may cause over its whole chain
    /// of events; past it the chain stops with an `automation.budget_exhausted` event.
    #[arg(long, env = "STREAMFLOW_AUTOMATION_BUDGET", default_value_t = 1000,
          value_parser = clap::value_parser!(i64).range(1..))]
    automation_budget: i64,
    // Contract 0.2.0 (issue 11).
    /// The external base URL of this server, for OAuth2 redirects and webhook addresses.
    #[arg(long, env = "STREAMFLOW_PUBLIC_URL")]
    public_url: Option<String>,
    /// host:port pairs plugins may reach on private or loopback addresses and over http
    /// (tests, on-premises services), comma-separated.
    #[arg(long, env = "STREAMFLOW_HTTP_ALLOW_HOSTS", default_value = "",
          value_parser = |t: &str| crate::outbound::OutboundConfig::parse_allow_hosts(t).map(AllowHosts))]
    http_allow_hosts: AllowHosts,
    /// name=address pairs pinning outbound names to addresses, comma-separated.
    #[arg(long, env = "STREAMFLOW_HTTP_RESOLVE", default_value = "",
          value_parser = |t: &str| crate::outbound::OutboundConfig::parse_resolve(t).map(Pins))]
    http_resolve: Pins,
    /// The largest response body one outbound request may receive.
    #[arg(long, env = "STREAMFLOW_HTTP_MAX_RESPONSE_BYTES", default_value_t = 4 << 20)]
    http_max_response_bytes: u64,
    /// A PEM file of extra roots outbound TLS trusts besides the system's.
    #[arg(long, env = "STREAMFLOW_HTTP_EXTRA_ROOTS")]
    http_extra_roots: Option<std::path::PathBuf>,
    /// Inbound webhook deliveries per second one tenant × plugin may send (bursts of
    /// twice that).
    #[arg(long, env = "STREAMFLOW_WEBHOOK_RATE", default_value_t = 50,
          value_parser = clap::value_parser!(u32).range(1..))]
    webhook_rate: u32,
    /// Whether this node runs plugin schedules (a database lease runs each once across
    /// nodes).
    #[arg(long, env = "STREAMFLOW_SCHEDULER", default_value = "1",
          value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::Set)]
    scheduler: bool,
    /// How often, in milliseconds, the scheduler looks for due schedules.
    #[arg(long, env = "STREAMFLOW_SCHEDULER_POLL_MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(50..))]
    scheduler_poll_ms: u64,
}

/// `STREAMFLOW_HTTP_ALLOW_HOSTS`, parsed.
#[derive(Clone, Debug)]
struct AllowHosts(Vec<(String, u16)>);

/// `STREAMFLOW_HTTP_RESOLVE`, parsed.
#[derive(Clone, Debug)]
struct Pins(Vec<(String, std::net::IpAddr)>);

/// A comma-separated list of networks (`STREAMFLOW_METRICS_ALLOW`).
#[derive(Clone, Debug)]
struct Networks(Vec<ipnet::IpNet>);

fn networks(text: &str) -> Result<Networks, String> {
    text.split(',')
        .filter(|t| !t.trim().is_empty())
        .map(crate::config::parse_network)
        .collect::<Result<_, _>>()
        .map(Networks)
}

impl ServeArgs {
    fn config(&self) -> Config {
        Config {
            listen: self.listen,
            database_url: self.database.database_url.clone(),
            body_limit: self.body_limit,
            record_limit: self
                .record_limit
                .unwrap_or(crate::records::DEFAULT_RECORD_LIMIT.min(self.body_limit)),
            list_response_bytes: self.list_response_bytes,
            login_per_ip_per_minute: self.login_per_ip,
            login_per_account_per_minute: self.login_per_account,
            write_batch: self.write_batch,
            provider_email: self.provider_email.clone(),
            provider_password: self.provider_password.clone(),
            data_dir: self.data_dir.clone(),
            secret_key: self.secret_key.clone(),
            plugin_size_limit: self.plugin_size_limit,
            plugin_max_limits: streamflow_runtime::Limits {
                timeout_ms: self.plugin_max_timeout_ms,
                memory_mb: self.plugin_max_memory_mb,
                output_kb: self.plugin_max_output_kb,
            },
            plugin_instances: self.plugin_instances,
            bundled_plugins: self.bundled_plugins,
            dispatcher: self.dispatcher,
            templates_dir: self.templates_dir.clone(),
            session_max_age: std::time::Duration::from_secs(self.session_max_age),
            login_per_account_global_per_minute: self.login_per_account_global,
            login_max_delay: std::time::Duration::from_secs(self.login_max_delay),
            header_timeout: std::time::Duration::from_millis(self.header_timeout_ms),
            body_timeout: std::time::Duration::from_millis(self.body_timeout_ms),
            idle_timeout: std::time::Duration::from_millis(self.idle_timeout_ms),
            max_connections: self.max_connections,
            max_connections_per_peer: self.max_connections_per_peer,
            metrics_allow: self.metrics_allow.0.clone(),
            metrics_token: self.metrics_token.clone().filter(|t| !t.is_empty()),
            uploads_per_hour: self.uploads_per_hour,
            developer_storage_bytes: self.developer_storage_mb.saturating_mul(1 << 20),
            plugin_tenant_share: self.plugin_tenant_share,
            // Plugin limits (issue 9: plugins and events).
            plugin_kv_bytes: self.plugin_kv_bytes,
            automation_budget: self.automation_budget,
            public_url: self.public_url.clone().filter(|u| !u.is_empty()),
            http_allow_hosts: self.http_allow_hosts.0.clone(),
            http_resolve: self.http_resolve.0.clone(),
            http_max_response_bytes: self.http_max_response_bytes,
            http_extra_roots: self.http_extra_roots.clone(),
            webhook_rate: self.webhook_rate,
            scheduler: self.scheduler,
            scheduler_poll: std::time::Duration::from_millis(self.scheduler_poll_ms),
            ..Config::default()
        }
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => run_serve(args).await,
            Command::Demo(mut args) => {
                args.demo = true;
                run_serve(args).await
            }
            Command::Plugin(command) => crate::plugin_cli::run(command).await,
            Command::Template(TemplateCommand::Lint { files }) => lint_templates(&files),
            Command::Template(TemplateCommand::List { templates_dir }) => {
                let catalog = crate::templates::catalog::Catalog::load(templates_dir.as_deref())?;
                for t in catalog.latest() {
                    println!(
                        "{:<18} {:<8} {} ({})",
                        t.id,
                        t.version,
                        t.name,
                        catalog.versions(&t.id).join(", ")
                    );
                }
                Ok(())
            }
            Command::Score(ScoreCommand::Eval {
                template,
                fixtures,
                min_agreement,
                templates_dir,
            }) => {
                // 0.9 is a fraction where a percentage belongs (0 turns the bar off).
                if !(0.0..=100.0).contains(&min_agreement)
                    || (min_agreement > 0.0 && min_agreement < 1.0)
                {
                    anyhow::bail!(
                        "--min-agreement is a percentage from 0 to 100 (90 for 90%), not {min_agreement}"
                    );
                }
                let text = std::fs::read_to_string(&fixtures)
                    .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", fixtures.display()))?;
                let evaluation = crate::score_eval::evaluate(
                    template.as_deref(),
                    &text,
                    templates_dir.as_deref(),
                )
                .await
                .map_err(|e| anyhow::anyhow!("{}: {e:#}", fixtures.display()))?;
                print!("{}", evaluation.report());
                let share = evaluation.agreement() * 100.0;
                if share < min_agreement {
                    anyhow::bail!(
                        "{share:.1}% agree, below {min_agreement}%: tune the scorer's config in the template (or check the labels)"
                    );
                }
                Ok(())
            }
            Command::Migrate(args) => {
                telemetry::init_logging(false);
                store::Store::connect(&args.database_url).await?;
                println!(
                    "migrations applied to {}",
                    store::redact_url(&args.database_url)
                );
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `streamflow template lint`: every problem of every file, checked against the bundled
/// plugins' manifests.
fn lint_templates(files: &[std::path::PathBuf]) -> anyhow::Result<()> {
    let plugins = crate::plugins::bundled::manifests()?;
    let mut failed = 0;
    for file in files {
        let text = std::fs::read_to_string(file)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
        let problems = match crate::templates::Template::from_toml(&text) {
            Err(e) => vec![e],
            Ok(t) => t.check(&plugins).iter().map(|p| p.to_string()).collect(),
        };
        if problems.is_empty() {
            println!("{}: ok", file.display());
        } else {
            failed += 1;
            println!("{}: {} problem(s)", file.display(), problems.len());
            for p in problems {
                println!("  - {p}");
            }
        }
    }
    if failed > 0 {
        anyhow::bail!(
            "{failed} of {} template(s) have problems; fix them and run the lint again",
            files.len()
        );
    }
    Ok(())
}

async fn run_serve(args: ServeArgs) -> anyhow::Result<()> {
    telemetry::init_logging(args.log_format == "json");
    let config = args.config();
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot listen on {}: {e}. Is another server running there? Choose another \
             address with STREAMFLOW_LISTEN or --listen.",
                config.listen
            )
        })?;
    let addr = listener.local_addr()?;
    let database = store::redact_url(&config.database_url);
    let state = server::build_state(config).await?;
    if args.demo {
        demo::seed(&state.kernel).await?;
    }
    if let Some(p) = server::bootstrap_provider(&state).await? {
        match p.generated_password {
            Some(password) => println!(
                "Created the first provider account: {} with password {password}\n\
                 This password is shown only once; keep it somewhere safe.",
                p.email
            ),
            None => println!("Created the first provider account: {}", p.email),
        }
    }
    println!("StreamFlow listening on http://{addr} (database {database})");
    tracing::info!(%addr, %database, "listening");
    server::serve(state, listener, server::shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}
