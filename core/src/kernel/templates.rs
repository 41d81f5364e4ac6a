//! The template service: applying a template (or a newer version of it) to a tenant.
//! Everything is checked first (the merged template, the plugins it needs in the registry,
//! their configs, by the same installation rules as the API's), then written in one
//! transaction.

use std::collections::{BTreeSet, HashMap};

use serde::Serialize;
use serde_json::{Value, json};
use sqlx::types::Json;
use streamflow_runtime::Manifest;

use super::Kernel;
use super::installations::Installations;
use crate::error::{ApplyError, InstallError, Problem};
use crate::plugins::check_grants;
use crate::store::TenantScope;
use crate::store::plugins::{InstallationRow, VersionRow, pick_version};
use crate::store::templates::TemplateWrite;
use crate::templates::{KnownPlugins, Template, merge};

/// What an application changed.
#[derive(Debug, Default, Serialize, utoipa::ToSchema)]
pub struct Added {
    pub record_types: Vec<String>,
    /// `type.field`
    pub fields: Vec<String>,
    /// `type.stage`
    pub stages: Vec<String>,
    pub automations: Vec<String>,
    pub plugins: Vec<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Applied {
    pub template: String,
    pub version: String,
    /// False when this version was already applied (nothing was written).
    pub changed: bool,
    pub previous_version: Option<String>,
    pub added: Added,
}

/// The template service of one kernel.
pub struct Templates<'k> {
    pub(super) kernel: &'k Kernel,
}

/// An installation the application writes.
struct Planned {
    row: InstallationRow,
    new: bool,
}

impl Templates<'_> {
    /// Applies the newest version of the catalog's template `id` (the demo seeder's way).
    pub async fn apply_newest(&self, scope: &TenantScope, id: &str) -> Result<Applied, ApplyError> {
        let template = self
            .kernel
            .templates
            .get(id, None)
            .ok_or(ApplyError::Problems(vec![Problem {
                at: String::new(),
                message: format!("the catalog has no template {id:?}"),
            }]))?;
        self.apply(scope, &template).await
    }

    /// Applies `template` (a version from the catalog) to the tenant: idempotent, and a
    /// newer version of the tenant's template adds what is new.
    pub async fn apply(
        &self,
        scope: &TenantScope,
        template: &Template,
    ) -> Result<Applied, ApplyError> {
        let kernel = self.kernel;
        let current = kernel.store.tenant_template(scope).await?;
        let previous: Option<Template> = match &current {
            None => None,
            Some(row) => Some(serde_json::from_value(row.spec.0.clone()).map_err(|e| {
                tracing::error!(error = %e, "stored template spec does not parse");
                ApplyError::Internal("the tenant's stored template does not parse")
            })?),
        };
        if let Some(unchanged) = against_previous(previous.as_ref(), template)? {
            return Ok(unchanged);
        }
        let merged = match &previous {
            Some(old) => merge(old, template),
            None => template.clone(),
        };
        let chosen = self.resolve_plugins(&merged).await?;
        let known: KnownPlugins = chosen
            .iter()
            .map(|(id, (_, m))| (id.clone(), m.clone()))
            .collect();
        let mut problems = merged.check(&known);
        let planned = self
            .plan_installations(scope, &merged, &chosen, &mut problems)
            .await?;
        if !problems.is_empty() {
            return Err(ApplyError::Problems(problems));
        }
        // Compile what will run now, so a plugin that cannot run on this host is refused here.
        let installations = Installations { kernel };
        for p in &planned {
            let Some((version, _)) = chosen.get(&p.row.plugin_id) else {
                continue;
            };
            if let Err(message) = installations.check_runs(version).await {
                problems.push(Problem {
                    at: format!("plugins ({})", p.row.plugin_id),
                    message,
                });
            }
        }
        if !problems.is_empty() {
            return Err(ApplyError::Problems(problems));
        }
        let mut added = Added {
            plugins: planned
                .iter()
                .filter(|p| p.new)
                .map(|p| p.row.plugin_id.clone())
                .collect(),
            ..Added::default()
        };
        let record_types = self
            .plan_record_types(scope, &merged, previous.as_ref(), &mut added)
            .await?;
        added_workflow(&merged, previous.as_ref(), &mut added);
        let write = TemplateWrite {
            template_id: merged.id.clone(),
            version: merged.version.to_string(),
            previous_version: current.as_ref().map(|row| row.version.clone()),
            spec: serde_json::to_value(&merged)
                .map_err(|_| ApplyError::Internal("a template does not serialise"))?,
            record_types,
            installations: planned.into_iter().map(|p| p.row).collect(),
        };
        if !kernel.store.apply_template(scope, &write).await? {
            return Err(ApplyError::Raced);
        }
        for (id, _, _) in &write.record_types {
            kernel.schemas.forget(scope, id);
        }
        for row in &write.installations {
            if let Some((_, manifest)) = chosen.get(&row.plugin_id) {
                let overrides = super::installations::overrides_of(row);
                kernel
                    .schedules()
                    .sync(scope, &row.plugin_id, Some((manifest, &overrides)))
                    .await?;
            }
        }
        kernel.plugins.changed().await;
        kernel.workflows.forget(scope);
        tracing::info!(tenant = %scope.tenant_id(), template = %merged.id, version = %merged.version,
            "template applied");
        Ok(Applied {
            template: merged.id,
            version: merged.version.to_string(),
            changed: true,
            previous_version: previous.map(|p| p.version.to_string()),
            added,
        })
    }

    /// The plugins the template names, resolved in the registry (those whose requirement
    /// does not parse or matches nothing are left to the checks to report).
    async fn resolve_plugins(
        &self,
        merged: &Template,
    ) -> Result<HashMap<String, (VersionRow, Manifest)>, ApplyError> {
        let kernel = self.kernel;
        let mut chosen = HashMap::new();
        for spec in &merged.plugins {
            let Ok(requirement) = semver::VersionReq::parse(&spec.version) else {
                continue;
            };
            let approved = crate::plugins::bundled::versions_for_templates(
                &kernel.store,
                kernel.config.bundled_plugins,
                &spec.id,
            )
            .await?;
            if let Some(row) = pick_version(&approved, &requirement) {
                let manifest = row.manifest()?;
                chosen.insert(spec.id.clone(), (row, manifest));
            }
        }
        Ok(chosen)
    }

    /// The installations to write: new ones get the template's config, existing ones keep
    /// the tenant's (and the grants it has that the version still requests). What breaks
    /// an installation rule is added to `problems`.
    async fn plan_installations(
        &self,
        scope: &TenantScope,
        merged: &Template,
        chosen: &HashMap<String, (VersionRow, Manifest)>,
        problems: &mut Vec<Problem>,
    ) -> Result<Vec<Planned>, ApplyError> {
        let installations = Installations {
            kernel: self.kernel,
        };
        let installed = self.kernel.store.list_installations(scope).await?;
        let mut planned = Vec::new();
        for (i, spec) in merged.plugins.iter().enumerate() {
            let Some((version, manifest)) = chosen.get(&spec.id) else {
                continue;
            };
            let at = format!("plugins[{i}] ({})", spec.id);
            if let Some(other) = installations
                .other_scorer(scope, &spec.id, manifest)
                .await?
            {
                problems.push(Problem {
                    at: at.clone(),
                    message: format!(
                        "{other} already scores this tenant's leads; uninstall it first"
                    ),
                });
            }
            let existing = installed.iter().find(|r| r.plugin_id == spec.id);
            let stored_grants = |row: &InstallationRow| {
                serde_json::from_value::<Vec<String>>(row.grants.0.clone()).unwrap_or_default()
            };
            let mut grants: BTreeSet<String> = spec.grants.iter().cloned().collect();
            if let Some(row) = existing {
                grants.extend(
                    stored_grants(row)
                        .into_iter()
                        .filter(|g| check_grants(manifest, std::slice::from_ref(g)).is_ok()),
                );
            }
            let grants: Vec<String> = grants.into_iter().collect();
            let Ok(checked) = check_grants(manifest, &grants) else {
                continue; // the template's own grants are reported by the checks
            };
            let input = existing.is_none().then(|| spec.config.clone());
            let prepared = match installations
                .prepare(scope, manifest, version, existing, input)
                .await
            {
                Ok(p) => p,
                Err(
                    InstallError::Invalid(errors) | InstallError::ConfigDoesNotFit { errors, .. },
                ) => {
                    problems.extend(errors.into_iter().map(|e| Problem {
                        at: format!("{at}.config{}", e.path.trim_start_matches("/config")),
                        message: match existing {
                            Some(_) => format!(
                                "the tenant's configuration does not fit version {}: {}",
                                version.version, e.message
                            ),
                            None => e.message,
                        },
                    }));
                    continue;
                }
                Err(_) => {
                    return Err(ApplyError::Internal(
                        "an installation's secrets do not decrypt",
                    ));
                }
            };
            let unchanged = existing.is_some_and(|row| {
                row.version == version.version
                    && row.requirement == spec.version
                    && stored_grants(row).len() == grants.len()
            });
            if unchanged {
                continue;
            }
            planned.push(Planned {
                new: existing.is_none(),
                row: InstallationRow {
                    tenant_id: scope.tenant_id(),
                    plugin_id: spec.id.clone(),
                    requirement: spec.version.clone(),
                    version: version.version.clone(),
                    grants: Json(json!(
                        checked.iter().map(|c| c.as_str()).collect::<Vec<_>>()
                    )),
                    config: Json(prepared.public),
                    secrets: prepared.sealed,
                    enabled: existing.is_none_or(|r| r.enabled),
                    created_at: 0,
                    updated_at: 0,
                    overrides: existing
                        .map(|r| r.overrides.clone())
                        .unwrap_or_else(|| Json(json!({}))),
                },
            });
        }
        Ok(planned)
    }

    /// Record types: the template's schema, keeping any field the tenant's schema has that
    /// the template does not (a client's own fields are data too); what is new goes to
    /// `added`.
    async fn plan_record_types(
        &self,
        scope: &TenantScope,
        merged: &Template,
        previous: Option<&Template>,
        added: &mut Added,
    ) -> Result<Vec<(String, String, Value)>, ApplyError> {
        let mut record_types = Vec::new();
        for t in &merged.record_types {
            let mut schema = t.schema();
            let stored = self.kernel.store.record_type(scope, &t.id).await?;
            match stored.as_ref().and_then(|r| r.schema.as_ref()) {
                None => added
                    .record_types
                    .extend(stored.is_none().then(|| t.id.clone())),
                Some(old) => {
                    if let (Some(props), Some(old_props)) = (
                        schema["properties"].as_object_mut(),
                        old.0.get("properties").and_then(Value::as_object),
                    ) {
                        for (name, field) in old_props {
                            props.entry(name.clone()).or_insert_with(|| field.clone());
                        }
                    }
                }
            }
            let before: BTreeSet<String> = previous
                .and_then(|p| p.record_type(&t.id))
                .map(|p| p.fields.keys().cloned().collect())
                .unwrap_or_default();
            if previous.is_some() {
                added.fields.extend(
                    t.fields
                        .keys()
                        .filter(|f| !before.contains(*f))
                        .map(|f| format!("{}.{f}", t.id)),
                );
            }
            if previous.is_some_and(|p| p.record_type(&t.id).is_none()) && stored.is_some() {
                added.record_types.push(t.id.clone());
            }
            record_types.push((t.id.clone(), t.name.clone(), schema));
        }
        Ok(record_types)
    }
}

/// Whether `template` may follow the tenant's `previous` template: the same template, not
/// older. `Some`: it is the version already applied, and nothing changes.
fn against_previous(
    previous: Option<&Template>,
    template: &Template,
) -> Result<Option<Applied>, ApplyError> {
    let Some(old) = previous else {
        return Ok(None);
    };
    if old.id != template.id {
        return Err(ApplyError::OtherTemplate {
            current: old.id.clone(),
        });
    }
    if old.version > template.version {
        return Err(ApplyError::Downgrade {
            current: format!("{} {}", old.id, old.version),
        });
    }
    Ok((old.version == template.version).then(|| Applied {
        template: template.id.clone(),
        version: template.version.to_string(),
        changed: false,
        previous_version: Some(old.version.to_string()),
        added: Added::default(),
    }))
}

/// The stages and automations `merged` adds to `previous`.
fn added_workflow(merged: &Template, previous: Option<&Template>, added: &mut Added) {
    for p in &merged.pipelines {
        let old = previous.and_then(|o| o.pipeline(&p.record_type));
        for s in &p.stages {
            if old.is_none_or(|o| o.stage(&s.id).is_none()) {
                added.stages.push(format!("{}.{}", p.record_type, s.id));
            }
        }
    }
    for a in &merged.automations {
        if previous.is_none_or(|o| !o.automations.iter().any(|x| x.id == a.id)) {
            added.automations.push(a.id.clone());
        }
    }
}
