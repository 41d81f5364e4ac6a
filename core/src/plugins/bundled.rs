//! First-party plugins shipped inside the binary (compiled by `core/build.rs`). At start-up
//! each is published in the registry under the first-party developer account and approved,
//! like any other version: a newer binary brings newer versions, which tenants upgrade to by
//! their semver requirement; nothing is replaced in place. `STREAMFLOW_BUNDLED_PLUGINS=0`
//! leaves the registry alone.

use std::collections::HashMap;

use anyhow::Context;
use streamflow_runtime::{Manifest, Package};
use uuid::Uuid;

use crate::store::Store;
use crate::store::accounts::AccountKind;
use crate::store::plugins::{NewVersion, Published};

/// The developer account that owns the bundled plugins. Nobody can sign in to it: its
/// password is random and never stored anywhere but as a hash.
pub const FIRST_PARTY_EMAIL: &str = "first-party@streamflow.local";

pub struct BundledPlugin {
    /// Its folder under `plugins/`.
    pub dir: &'static str,
    pub manifest: &'static str,
    pub schema: Option<&'static str>,
    pub component: &'static [u8],
}

impl BundledPlugin {
    pub fn manifest(&self) -> anyhow::Result<Manifest> {
        let mut manifest = Manifest::from_toml(self.manifest)
            .map_err(|e| anyhow::anyhow!("bundled plugin {}: {e}", self.dir))?;
        if let Some(config) = manifest.config.as_mut()
            && config.schema_file.take().is_some()
        {
            let schema = self.schema.with_context(|| {
                format!("bundled plugin {}: config.schema.json is missing", self.dir)
            })?;
            config.schema = Some(serde_json::from_str(schema)?);
        }
        Ok(manifest)
    }

    /// The package, as `streamflow plugin build` would have made it.
    pub fn package(&self) -> anyhow::Result<Package> {
        let manifest = self.manifest()?;
        let bytes = Package::assemble(&manifest, self.component)
            .map_err(|e| anyhow::anyhow!("bundled plugin {}: {e}", self.dir))?;
        Package::parse(bytes).map_err(|e| anyhow::anyhow!("bundled plugin {}: {e}", self.dir))
    }
}

pub fn all() -> &'static [BundledPlugin] {
    crate::bundled::PLUGINS
}

/// The bundled plugins' manifests by id (what `template lint` checks against).
pub fn manifests() -> anyhow::Result<HashMap<String, Manifest>> {
    all()
        .iter()
        .map(|p| p.manifest().map(|m| (m.id.clone(), m)))
        .collect()
}

/// Publishes and approves every bundled plugin version the registry lacks. Returns the
/// `id@version`s it added.
pub async fn register(store: &Store) -> anyhow::Result<Vec<String>> {
    let developer = first_party_account(store).await?;
    let mut added = Vec::new();
    for bundled in all() {
        let package = tokio::task::spawn_blocking(|| bundled.package()).await??;
        let manifest = &package.manifest;
        let version = manifest.version.to_string();
        let published = store
            .publish_version(
                developer,
                &NewVersion {
                    plugin_id: &manifest.id,
                    version: &version,
                    name: &manifest.name,
                    api: &manifest.api.to_string(),
                    manifest: &serde_json::to_value(manifest)?,
                    package: &package.bytes,
                    sha256: &package.sha256,
                },
            )
            .await?;
        match published {
            Published::Created(_) => {
                store
                    .review_version(
                        &manifest.id,
                        &version,
                        "approved",
                        Some("first-party plugin bundled with the server"),
                        developer,
                    )
                    .await?;
                added.push(format!("{}@{version}", manifest.id));
            }
            Published::Exists => {}
            Published::NotOwner => tracing::warn!(
                plugin = %manifest.id,
                "a developer account already owns this plugin id; the bundled plugin is not registered"
            ),
        }
    }
    Ok(added)
}

async fn first_party_account(store: &Store) -> anyhow::Result<Uuid> {
    if let Some(account) = store
        .account_by_email(AccountKind::Developer, FIRST_PARTY_EMAIL)
        .await?
    {
        return Ok(account.id);
    }
    let hash = crate::auth::hash_password(crate::auth::new_secret("")).await?;
    if let Some(account) = store
        .create_account(
            AccountKind::Developer,
            FIRST_PARTY_EMAIL,
            "StreamFlow",
            &hash,
        )
        .await?
    {
        return Ok(account.id);
    }
    // Another node created it first.
    store
        .account_by_email(AccountKind::Developer, FIRST_PARTY_EMAIL)
        .await?
        .map(|a| a.id)
        .context("the first-party developer account vanished")
}
