//! The installation service: installing a plugin for a tenant, changing its version,
//! grants, configuration or enabled flag, and uninstalling it. The rules are written once,
//! here, for the provider's API, the client's configuration route and template application
//! alike: one scorer per tenant, secrets kept across changes, the config validated against
//! the version's schema, and a version that cannot run on this host refused up front.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};
use streamflow_runtime::integration::{Overrides, QuotaOverrides};
use streamflow_runtime::{Hook, Manifest};

use super::Kernel;
use crate::error::{FieldError, InstallError};
use crate::plugins::{check_grants, config};
use crate::store::plugins::{InstallationRow, VersionRow, pick_version};
use crate::store::{StoreResult, TenantScope};

/// An installation as asked for.
#[derive(Debug, Clone)]
pub struct Install {
    pub plugin_id: String,
    /// A semver requirement such as `^0.1`; `*` when absent.
    pub requirement: Option<String>,
    /// Capabilities granted (each one the manifest requests).
    pub grants: Vec<String>,
    /// The configuration; `None` keeps the current one (re-validated on an upgrade).
    pub config: Option<Value>,
    /// Default true.
    pub enabled: Option<bool>,
    /// The provider's per-call quotas for this installation; `None` keeps the current ones.
    pub quotas: Option<QuotaOverrides>,
    /// The provider's longer schedule intervals; `None` keeps the current ones.
    pub schedules: Option<BTreeMap<String, String>>,
}

/// The provider's overrides an installation holds (none when they do not parse).
pub fn overrides_of(row: &InstallationRow) -> Overrides {
    serde_json::from_value(row.overrides.0.clone()).unwrap_or_default()
}

/// A stored installation, and whether the request created it.
pub struct Installed {
    pub row: InstallationRow,
    pub created: bool,
}

/// A configuration checked against a version: the public part and the sealed secrets.
pub(super) struct Prepared {
    pub public: Value,
    pub sealed: Option<Vec<u8>>,
}

/// The installation service of one kernel.
pub struct Installations<'k> {
    pub(super) kernel: &'k Kernel,
}

impl Installations<'_> {
    /// Installs a plugin, or changes an installation's version, grants, configuration or
    /// enabled flag.
    pub async fn install(
        &self,
        scope: &TenantScope,
        request: Install,
    ) -> Result<Installed, InstallError> {
        let store = &self.kernel.store;
        let id = &request.plugin_id;
        let requirement_text = request.requirement.unwrap_or_else(|| "*".into());
        let requirement = semver::VersionReq::parse(&requirement_text).map_err(|e| {
            InstallError::Invalid(vec![FieldError::new(
                "/version",
                format!("not a semver requirement: {e}"),
            )])
        })?;
        let approved = store.approved_versions(id).await?;
        let Some(version) = pick_version(&approved, &requirement) else {
            if approved.is_empty() {
                return Err(InstallError::NoApprovedVersion);
            }
            let list: Vec<&str> = approved.iter().map(|r| r.version.as_str()).collect();
            return Err(InstallError::Invalid(vec![FieldError::new(
                "/version",
                format!(
                    "no approved version matches {requirement_text}; approved: {}",
                    list.join(", ")
                ),
            )]));
        };
        let manifest = version.manifest()?;
        let grants = check_grants(&manifest, &request.grants).map_err(InstallError::Invalid)?;
        // One scorer per tenant: two would race to score every lead.
        if let Some(installed) = self.other_scorer(scope, id, &manifest).await? {
            return Err(InstallError::ScorerInstalled { installed });
        }
        let existing = store.get_installation(scope, id).await?;
        let mut overrides = existing.as_ref().map(overrides_of).unwrap_or_default();
        if let Some(quotas) = request.quotas {
            overrides.quotas = quotas;
        }
        if let Some(schedules) = request.schedules {
            overrides.schedules = schedules;
        }
        let problems = overrides.check(&manifest);
        if !problems.is_empty() {
            return Err(InstallError::Invalid(
                problems
                    .into_iter()
                    .map(|(at, message)| FieldError::new(at, message))
                    .collect(),
            ));
        }
        let prepared = self
            .prepare(
                scope,
                &manifest,
                &version,
                existing.as_ref(),
                request.config,
            )
            .await?;
        self.check_runs(&version)
            .await
            .map_err(|message| InstallError::Invalid(vec![FieldError::new("/version", message)]))?;
        let row = InstallationRow {
            tenant_id: scope.tenant_id(),
            plugin_id: id.clone(),
            requirement: requirement_text,
            version: version.version.clone(),
            grants: sqlx::types::Json(serde_json::to_value(&grants).unwrap_or_default()),
            config: sqlx::types::Json(prepared.public),
            secrets: prepared.sealed,
            enabled: request.enabled.unwrap_or(true),
            created_at: 0,
            updated_at: 0,
            overrides: sqlx::types::Json(serde_json::to_value(&overrides).unwrap_or_default()),
        };
        let row = self.store(scope, &row).await?;
        self.kernel
            .schedules()
            .sync(scope, id, Some((&manifest, &overrides)))
            .await?;
        tracing::info!(tenant = %scope.tenant_id(), plugin = %id, version = %row.version,
            "plugin installed");
        Ok(Installed {
            row,
            created: existing.is_none(),
        })
    }

    /// Replaces an installation's configuration (secret fields left out keep their stored
    /// values), keeping its version, grants and enabled flag.
    pub async fn configure(
        &self,
        scope: &TenantScope,
        plugin_id: &str,
        input: Value,
    ) -> Result<InstallationRow, InstallError> {
        let store = &self.kernel.store;
        let existing = store
            .get_installation(scope, plugin_id)
            .await?
            .ok_or(InstallError::NotInstalled)?;
        let version = store
            .get_version(plugin_id, &existing.version)
            .await?
            .ok_or(InstallError::Internal(
                "an installation's version is not in the registry",
            ))?;
        let manifest = version.manifest()?;
        let prepared = self
            .prepare(scope, &manifest, &version, Some(&existing), Some(input))
            .await?;
        self.check_runs(&version)
            .await
            .map_err(|message| InstallError::Invalid(vec![FieldError::new("/version", message)]))?;
        let row = InstallationRow {
            config: sqlx::types::Json(prepared.public),
            secrets: prepared.sealed,
            ..existing
        };
        self.store(scope, &row).await
    }

    /// Uninstalls a plugin. Its kv data is kept for a reinstall.
    pub async fn uninstall(
        &self,
        scope: &TenantScope,
        plugin_id: &str,
    ) -> Result<(), InstallError> {
        if !self
            .kernel
            .store
            .delete_installation(scope, plugin_id)
            .await?
        {
            return Err(InstallError::NotInstalled);
        }
        self.kernel.schedules().sync(scope, plugin_id, None).await?;
        self.kernel.plugins.changed().await;
        Ok(())
    }

    async fn store(
        &self,
        scope: &TenantScope,
        row: &InstallationRow,
    ) -> Result<InstallationRow, InstallError> {
        let stored = self.kernel.store.put_installation(scope, row).await?;
        // The version it left, if nobody else runs it, is dropped from memory.
        self.kernel.plugins.changed().await;
        Ok(stored)
    }

    /// The tenant's installed scorer other than `plugin_id`, when `manifest` scores leads
    /// too (a tenant has one scorer: two would race to score every lead).
    pub(super) async fn other_scorer(
        &self,
        scope: &TenantScope,
        plugin_id: &str,
        manifest: &Manifest,
    ) -> StoreResult<Option<String>> {
        if !manifest.has_hook(Hook::ScoreLead) {
            return Ok(None);
        }
        let store = &self.kernel.store;
        for other in store.list_installations(scope).await? {
            if other.plugin_id == plugin_id {
                continue;
            }
            // A stored manifest that no longer parses (logged) is not taken for a scorer.
            if let Some(v) = store.get_version(&other.plugin_id, &other.version).await?
                && v.manifest().is_ok_and(|m| m.has_hook(Hook::ScoreLead))
            {
                return Ok(Some(other.plugin_id));
            }
        }
        Ok(None)
    }

    /// The decrypted secrets an installation keeps (none for a new one).
    pub(super) fn kept_secrets(
        &self,
        existing: Option<&InstallationRow>,
    ) -> Result<Map<String, Value>, InstallError> {
        let Some(row) = existing else {
            return Ok(Map::new());
        };
        self.kernel.plugins.open_secrets(row).map_err(|e| {
            tracing::error!(plugin = %row.plugin_id, error = %e, "installation secrets do not decrypt");
            InstallError::Internal("an installation's secrets do not decrypt")
        })
    }

    /// Validates a configuration for `version` (`input`, or the stored one when `None`)
    /// and seals its secrets, those left out kept from `existing`.
    pub(super) async fn prepare(
        &self,
        scope: &TenantScope,
        manifest: &Manifest,
        version: &VersionRow,
        existing: Option<&InstallationRow>,
        input: Option<Value>,
    ) -> Result<Prepared, InstallError> {
        let kept = self.kept_secrets(existing)?;
        let upgrading = existing.is_some_and(|row| row.version != version.version);
        let (input, reusing) = match input {
            Some(config) => (config, false),
            None => (
                existing
                    .map(|row| row.config.0.clone())
                    .unwrap_or_else(|| json!({})),
                existing.is_some(),
            ),
        };
        let prepared = config::prepare(
            &manifest.config_schema(),
            &manifest.secret_fields(),
            input,
            &kept,
        )
        .map_err(|errors| {
            if reusing && upgrading {
                InstallError::ConfigDoesNotFit {
                    version: version.version.clone(),
                    errors,
                }
            } else {
                InstallError::Invalid(errors)
            }
        })?;
        let sealed = self.kernel.plugins.seal_secrets(
            scope.tenant_id(),
            &version.plugin_id,
            &prepared.secrets,
        );
        Ok(Prepared {
            public: prepared.public,
            sealed,
        })
    }

    /// Compiles `version` (or finds it compiled) so that one that cannot run on this host
    /// is refused now, with the reason, rather than failing on every call later.
    pub(super) async fn check_runs(&self, version: &VersionRow) -> Result<(), String> {
        self.kernel
            .plugins
            .load(&version.plugin_id, &version.version)
            .await
            .map(|_| ())
            .map_err(|e| {
                format!(
                    "{} {} cannot run on this host: {}",
                    version.plugin_id, version.version, e.message
                )
            })
    }
}
