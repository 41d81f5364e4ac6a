//! First-party plugins shipped inside the binary (compiled by `core/build.rs`). At start-up
//! each is published in the registry under the first-party developer account and approved,
//! like any other version: a newer binary brings newer versions, which tenants upgrade to by
//! their semver requirement; nothing is replaced in place. `STREAMFLOW_BUNDLED_PLUGINS=0`
//! leaves the registry alone.
//!
//! While they are registered, their ids are reserved: developers cannot publish under them
//! ([`is_reserved`]), and templates resolve them only to the first-party account's
//! versions ([`versions_for_templates`]), even in a database where a developer took one
//! of the ids before it was reserved (the server logs an error for each such id).

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

use anyhow::Context;
use streamflow_runtime::{Manifest, Package};
use uuid::Uuid;

use crate::store::accounts::AccountKind;
use crate::store::plugins::{NewVersion, Published, UploadQuota, VersionRow, VersionStatus};
use crate::store::{Store, StoreResult};

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

/// The ids of the bundled plugins.
pub fn ids() -> &'static HashSet<String> {
    static IDS: OnceLock<HashSet<String>> = OnceLock::new();
    IDS.get_or_init(|| {
        all()
            .iter()
            .filter_map(|p| match p.manifest() {
                Ok(m) => Some(m.id),
                Err(e) => {
                    tracing::error!(error = %e, "a bundled plugin's manifest does not parse");
                    None
                }
            })
            .collect()
    })
}

/// Whether `id` is a bundled plugin's, which no developer may publish under.
pub fn is_reserved(id: &str) -> bool {
    ids().contains(id)
}

/// The approved versions of `id` a template may install: for a bundled id (while the
/// bundled plugins are registered), only the first-party account's.
pub async fn versions_for_templates(
    store: &Store,
    bundled_registered: bool,
    id: &str,
) -> StoreResult<Vec<VersionRow>> {
    let mut versions = store.approved_versions(id).await?;
    if bundled_registered && is_reserved(id) {
        let first_party = store
            .account_by_email(AccountKind::Developer, FIRST_PARTY_EMAIL)
            .await?
            .map(|a| a.id);
        versions.retain(|v| Some(v.uploaded_by) == first_party);
    }
    Ok(versions)
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
                UploadQuota::UNLIMITED,
            )
            .await?;
        match published {
            Published::Created(_) => {
                store
                    .review_version(
                        &manifest.id,
                        &version,
                        VersionStatus::Approved,
                        Some("first-party plugin bundled with the server"),
                        developer,
                    )
                    .await?;
                added.push(format!("{}@{version}", manifest.id));
            }
            Published::Exists => {}
            // Only a database from before the ids were reserved: the developer keeps the
            // id (their tenants' installations go on), but templates never install it.
            Published::NotOwner => tracing::error!(
                plugin = %manifest.id,
                "a developer account owns this bundled plugin's id (taken before bundled ids were reserved); \
                 the bundled plugin is not registered and templates naming it are refused until the provider \
                 resolves it"
            ),
            Published::RateLimited { .. } | Published::StorageFull { .. } => {
                unreachable!("the first-party account has no quota")
            }
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
