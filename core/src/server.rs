//! Wiring: open the store, load the realms' keys, bootstrap the first provider account,
//! and serve HTTP until a shutdown signal, finishing in-flight requests first.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use streamflow_runtime::{Runtime, RuntimeConfig};
use tokio::net::TcpListener;

use crate::api::{self, AppState};
use crate::auth::{self, Auth, LoginLimiter};
use crate::config::Config;
use crate::crypto::SecretBox;
use crate::plugins::PluginHost;
use crate::records::SchemaCache;
use crate::store::Store;
use crate::store::accounts::AccountKind;
use crate::store::writer::RecordWriter;
use crate::templates::Workflows;
use crate::templates::catalog::Catalog;

/// The provider account made on first start, when one was made.
pub struct BootstrappedProvider {
    pub email: String,
    /// Set when the password was generated (and must be shown once).
    pub generated_password: Option<String>,
}

/// Connects to the database (migrating it) and builds the shared state.
pub async fn build_state(config: Config) -> anyhow::Result<AppState> {
    let store = Store::connect(&config.database_url).await?;
    let auth = Auth::load(&store, &config)
        .await
        .context("loading the realms' signing keys")?;
    let writer =
        RecordWriter::start(&store, config.write_batch).context("starting the record writer")?;
    let schemas = Arc::new(SchemaCache::default());
    let workflows = Arc::new(Workflows::default());
    let templates = Arc::new(Catalog::load(config.templates_dir.as_deref())?);
    let secrets = SecretBox::load(config.secret_key.as_deref(), &config.data_dir)?;
    let runtime = Runtime::new(RuntimeConfig {
        cache_dir: Some(config.data_dir.join("plugin-cache")),
        max_limits: config.plugin_max_limits,
        instances: config.plugin_instances,
        ..RuntimeConfig::default()
    })
    .context("starting the plugin runtime")?;
    let plugins = PluginHost::new(
        Arc::new(runtime),
        store.clone(),
        writer.clone(),
        schemas.clone(),
        workflows.clone(),
        Arc::new(secrets),
    )
    .with_kv_quota(config.plugin_kv_bytes);
    if config.bundled_plugins {
        let added = crate::plugins::bundled::register(&store)
            .await
            .context("registering the bundled plugins")?;
        if !added.is_empty() {
            tracing::info!(plugins = %added.join(", "), "bundled plugins registered and approved");
        }
    }
    Ok(AppState {
        writer,
        plugins: Arc::new(plugins),
        auth: Arc::new(auth),
        login_limiter: LoginLimiter::new(
            config.login_per_ip_per_minute,
            config.login_per_account_per_minute,
        ),
        schemas,
        workflows,
        templates,
        metrics: crate::telemetry::prometheus(),
        config: Arc::new(config),
        store,
    })
}

/// Creates the first provider account if there is none: from `STREAMFLOW_PROVIDER_EMAIL` /
/// `STREAMFLOW_PROVIDER_PASSWORD`, or with a generated password.
pub async fn bootstrap_provider(state: &AppState) -> anyhow::Result<Option<BootstrappedProvider>> {
    if state.store.count_accounts(AccountKind::Provider).await? > 0 {
        return Ok(None);
    }
    let config = &state.config;
    let email = config
        .provider_email
        .clone()
        .unwrap_or_else(|| "admin@streamflow.local".into())
        .trim()
        .to_lowercase();
    let (password, generated) = match &config.provider_password {
        Some(p) if p.chars().count() >= 10 => (p.clone(), false),
        Some(_) => anyhow::bail!(
            "STREAMFLOW_PROVIDER_PASSWORD is shorter than 10 characters; choose a longer one"
        ),
        None => (auth::new_secret(""), true),
    };
    let hash = auth::hash_password(password.clone()).await?;
    let created = state
        .store
        .create_account(AccountKind::Provider, &email, "", &hash)
        .await?;
    // Another node may have won the race to create it; then it is not ours to print.
    Ok(created.map(|_| BootstrappedProvider {
        email,
        generated_password: generated.then_some(password),
    }))
}

/// Serves on `listener` until `shutdown` resolves, then drains in-flight requests.
pub async fn serve(
    state: AppState,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let store = state.store.clone();
    let stop = crate::events::Stop::default();
    let dispatcher = state
        .config
        .dispatcher
        .then(|| crate::events::start(state.clone(), stop.clone()));
    let app = api::router(state);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
    .context("serving HTTP")?;
    // Finish the batch of events in hand; what is left waits in the outbox.
    stop.stop();
    if let Some(dispatcher) = dispatcher {
        let _ = dispatcher.await;
    }
    store.close().await;
    Ok(())
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
    tracing::info!("shutdown signal received; finishing in-flight requests");
}
