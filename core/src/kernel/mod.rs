//! The kernel layer: one value holding what every entry point shares (the store, the record
//! writer, the schema and workflow caches, the plugin host and the template catalog), and
//! the services they all call: [`Records`], [`Installations`] and [`Templates`]. HTTP
//! handlers, the event dispatcher, the plugins' capabilities, the demo seeder and the CLI
//! only translate to and from these; the rules live here once.
//!
//! ```text
//!   api (HTTP)   events (dispatcher)   demo / cli   plugin capabilities
//!        \              |                  |          /
//!         +------------ kernel services ---+---------+
//!                  records · installations · templates
//!                               |
//!        records (schemas) · templates (spec) · plugins (sandbox host)
//!                               |
//!                      store (SQLite / PostgreSQL)
//! ```

mod capabilities;
pub mod connections;
pub mod installations;
mod plugin_http;
pub mod records;
pub mod schedules;
pub mod templates;
pub mod visibility;
pub mod webhooks;

use std::sync::Arc;

use anyhow::Context;
use streamflow_runtime::{Runtime, RuntimeConfig};

pub use installations::{Install, Installations, Installed};
pub use records::{NewId, NewRecord, RecordChange, Records, WriteContext};
pub use templates::{Added, Applied, Templates};

use crate::config::Config;
use crate::crypto::SecretBox;
use crate::plugins::PluginHost;
use crate::records::SchemaCache;
use crate::store::Store;
use crate::store::writer::RecordWriter;
use crate::templates::Workflows;
use crate::templates::catalog::Catalog;

/// Everything the entry points share. Cheap to reach through an `Arc`.
pub struct Kernel {
    pub store: Store,
    pub writer: RecordWriter,
    pub config: Arc<Config>,
    pub schemas: Arc<SchemaCache>,
    pub workflows: Arc<Workflows>,
    pub plugins: Arc<PluginHost>,
    pub templates: Arc<Catalog>,
    /// Outbound HTTP of plugins and connections, SSRF-guarded.
    pub outbound: Arc<crate::outbound::Outbound>,
    /// Inbound webhooks per tenant × plugin, on this node.
    pub webhook_limiter: webhooks::Limiter,
}

impl Kernel {
    /// Connects to the database (migrating it), starts the record writer and the plugin
    /// runtime, and registers the bundled plugins when the configuration says so.
    pub async fn open(config: Config) -> anyhow::Result<Arc<Kernel>> {
        anyhow::ensure!(
            config.record_limit <= config.body_limit,
            "STREAMFLOW_RECORD_LIMIT ({}) is larger than STREAMFLOW_BODY_LIMIT ({}): no request could \
             carry such a record; lower the record limit or raise the body limit",
            config.record_limit,
            config.body_limit
        );
        let store = Store::connect(&config.database_url).await?;
        let writer = RecordWriter::start(&store, config.write_batch)
            .context("starting the record writer")?;
        let templates = Arc::new(Catalog::load(config.templates_dir.as_deref())?);
        let secrets = SecretBox::load(config.secret_key.as_deref(), &config.data_dir)?;
        let runtime = Runtime::new(RuntimeConfig {
            cache_dir: Some(config.data_dir.join("plugin-cache")),
            max_limits: config.plugin_max_limits,
            instances: config.plugin_instances,
            ..RuntimeConfig::default()
        })
        .context("starting the plugin runtime")?;
        let plugins = PluginHost::new(Arc::new(runtime), store.clone(), Arc::new(secrets))
            .with_tenant_share(config.plugin_tenant_share())
            .with_uploads_per_hour(config.uploads_per_hour)
            .with_kv_quota(config.plugin_kv_bytes);
        if config.bundled_plugins {
            let added = crate::plugins::bundled::register(&store)
                .await
                .context("registering the bundled plugins")?;
            if !added.is_empty() {
                tracing::info!(plugins = %added.join(", "), "bundled plugins registered and approved");
            }
        }
        let outbound = crate::outbound::Outbound::new(config.outbound()?)
            .context("setting up outbound HTTP")?;
        let kernel = Arc::new(Kernel {
            outbound: Arc::new(outbound),
            webhook_limiter: webhooks::Limiter::new(config.webhook_rate),
            schemas: Arc::new(SchemaCache::new(config.record_limit)),
            workflows: Arc::new(Workflows::default()),
            plugins: Arc::new(plugins),
            config: Arc::new(config),
            templates,
            writer,
            store,
        });
        kernel.plugins.connect(Arc::new(capabilities::Connector {
            kernel: Arc::downgrade(&kernel),
        }));
        kernel.plugins.start_sweeper();
        Ok(kernel)
    }

    /// Creating, changing and deleting records.
    pub fn records(&self) -> Records<'_> {
        Records { kernel: self }
    }

    /// Installing, configuring and uninstalling plugins.
    pub fn installations(&self) -> Installations<'_> {
        Installations { kernel: self }
    }

    /// Applying templates.
    pub fn templates(&self) -> Templates<'_> {
        Templates { kernel: self }
    }

    /// Connections to external services.
    pub fn connections(&self) -> connections::Connections<'_> {
        connections::Connections { kernel: self }
    }

    /// Inbound webhooks.
    pub fn webhooks(&self) -> webhooks::Webhooks<'_> {
        webhooks::Webhooks { kernel: self }
    }

    /// Plugin schedules.
    pub fn schedules(&self) -> schedules::Schedules<'_> {
        schedules::Schedules { kernel: self }
    }
}
