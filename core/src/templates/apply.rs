//! Applying a template to a tenant: check everything first (the merged template, the
//! plugins it needs in the registry, their configs), then write it all in one transaction.

use std::collections::{BTreeSet, HashMap};

use serde::Serialize;
use serde_json::{Map, Value, json};
use sqlx::types::Json;
use streamflow_runtime::{Hook, Manifest};

use super::{KnownPlugins, Problem, Template, merge};
use crate::api::AppState;
use crate::error::{ApiError, ApiResult, FieldError};
use crate::plugins::{check_grants, config};
use crate::store::TenantScope;
use crate::store::plugins::{InstallationRow, VersionRow, pick_version};
use crate::store::templates::TemplateWrite;

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

fn problems_error(problems: Vec<Problem>) -> ApiError {
    let errors = problems
        .into_iter()
        .map(|p| FieldError::new(p.at, p.message))
        .collect();
    let mut error = ApiError::validation(errors);
    error.code = "template_invalid";
    error.message = format!(
        "the template cannot be applied to this tenant; nothing was changed. {}",
        error.message
    );
    error
}

/// Applies `template` (a version from the catalog) to the tenant.
pub async fn apply(
    state: &AppState,
    scope: &TenantScope,
    template: &Template,
) -> ApiResult<Applied> {
    let current = state.store.tenant_template(scope).await?;
    let previous: Option<Template> = match &current {
        None => None,
        Some(row) => Some(serde_json::from_value(row.spec.0.clone()).map_err(|e| {
            tracing::error!(error = %e, "stored template spec does not parse");
            ApiError::internal()
        })?),
    };
    if let Some(old) = &previous {
        if old.id != template.id {
            return Err(ApiError::conflict(
                "template_conflict",
                format!(
                    "this tenant uses the {} template; a tenant cannot switch templates",
                    old.id
                ),
            ));
        }
        if old.version == template.version {
            return Ok(Applied {
                template: template.id.clone(),
                version: template.version.to_string(),
                changed: false,
                previous_version: Some(old.version.to_string()),
                added: Added::default(),
            });
        }
        if old.version > template.version {
            return Err(ApiError::conflict(
                "template_downgrade",
                format!(
                    "this tenant has {} {}; templates only move forward",
                    old.id, old.version
                ),
            ));
        }
    }
    let merged = match &previous {
        Some(old) => merge(old, template),
        None => template.clone(),
    };

    // The plugins the template names, resolved in the registry.
    let mut chosen: HashMap<String, (VersionRow, Manifest)> = HashMap::new();
    for spec in &merged.plugins {
        let Ok(requirement) = semver::VersionReq::parse(&spec.version) else {
            continue; // reported by the checks
        };
        let approved = crate::plugins::bundled::versions_for_templates(
            &state.store,
            state.config.bundled_plugins,
            &spec.id,
        )
        .await?;
        if let Some(row) = pick_version(&approved, &requirement) {
            let manifest: Manifest =
                serde_json::from_value(row.manifest.0.clone()).map_err(|_| ApiError::internal())?;
            chosen.insert(spec.id.clone(), (row, manifest));
        }
    }
    let known: KnownPlugins = chosen
        .iter()
        .map(|(id, (_, m))| (id.clone(), m.clone()))
        .collect();
    let mut problems = merged.check(&known);

    // Installations: new ones get the template's config; existing ones keep the tenant's.
    let installed = state.store.list_installations(scope).await?;
    let mut installations = Vec::new();
    let mut added = Added::default();
    for (i, spec) in merged.plugins.iter().enumerate() {
        let Some((version, manifest)) = chosen.get(&spec.id) else {
            continue;
        };
        let at = format!("plugins[{i}] ({})", spec.id);
        if manifest.has_hook(Hook::ScoreLead) {
            for other in &installed {
                if other.plugin_id != spec.id
                    && let Some(v) = state
                        .store
                        .get_version(&other.plugin_id, &other.version)
                        .await?
                    && serde_json::from_value::<Manifest>(v.manifest.0.clone())
                        .is_ok_and(|m| m.has_hook(Hook::ScoreLead))
                {
                    problems.push(Problem {
                        at: at.clone(),
                        message: format!(
                            "{} already scores this tenant's leads; uninstall it first",
                            other.plugin_id
                        ),
                    });
                }
            }
        }
        let existing = installed.iter().find(|r| r.plugin_id == spec.id);
        // The template's grants, and those the tenant has that this version still requests.
        let mut grants: BTreeSet<String> = spec.grants.iter().cloned().collect();
        if let Some(row) = existing {
            grants.extend(
                serde_json::from_value::<Vec<String>>(row.grants.0.clone())
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|g| check_grants(manifest, std::slice::from_ref(g)).is_ok()),
            );
        }
        let grants: Vec<String> = grants.into_iter().collect();
        let Ok(checked) = check_grants(manifest, &grants) else {
            continue; // the template's own grants are reported by the checks
        };
        let (input, kept) = match existing {
            Some(row) => (
                row.config.0.clone(),
                state.plugins.open_secrets(row).map_err(|e| {
                    tracing::error!(plugin = %row.plugin_id, error = %e, "installation secrets do not decrypt");
                    ApiError::internal()
                })?,
            ),
            None => (spec.config.clone(), Map::new()),
        };
        let prepared = match config::prepare(
            &manifest.config_schema(),
            &manifest.secret_fields(),
            input,
            &kept,
        ) {
            Ok(p) => p,
            Err(errors) => {
                for e in errors {
                    problems.push(Problem {
                        at: format!("{at}.config{}", e.path.trim_start_matches("/config")),
                        message: match existing {
                            Some(_) => format!(
                                "the tenant's configuration does not fit version {}: {}",
                                version.version, e.message
                            ),
                            None => e.message,
                        },
                    });
                }
                continue;
            }
        };
        let unchanged = existing.is_some_and(|row| {
            row.version == version.version
                && row.requirement == spec.version
                && serde_json::from_value::<Vec<String>>(row.grants.0.clone())
                    .is_ok_and(|g| g.len() == grants.len())
        });
        if unchanged {
            continue;
        }
        if existing.is_none() {
            added.plugins.push(spec.id.clone());
        }
        installations.push(InstallationRow {
            tenant_id: scope.tenant_id(),
            plugin_id: spec.id.clone(),
            requirement: spec.version.clone(),
            version: version.version.clone(),
            grants: Json(json!(
                checked.iter().map(|c| c.as_str()).collect::<Vec<_>>()
            )),
            config: Json(prepared.public),
            secrets: state
                .plugins
                .seal_secrets(scope.tenant_id(), &spec.id, &prepared.secrets),
            enabled: existing.is_none_or(|r| r.enabled),
            created_at: 0,
            updated_at: 0,
        });
    }
    if !problems.is_empty() {
        return Err(problems_error(problems));
    }
    // Compile what will run now, so a plugin that cannot run on this host is refused here.
    for row in &installations {
        if let Err(e) = state.plugins.load(&row.plugin_id, &row.version).await {
            problems.push(Problem {
                at: format!("plugins ({})", row.plugin_id),
                message: format!(
                    "{} {} cannot run on this host: {}",
                    row.plugin_id, row.version, e.message
                ),
            });
        }
    }
    if !problems.is_empty() {
        return Err(problems_error(problems));
    }

    // Record types: the template's schema, keeping any field the tenant's schema has that
    // the template does not (a client's own fields are data too).
    let mut record_types = Vec::new();
    for t in &merged.record_types {
        let mut schema = t.schema();
        let stored = state.store.record_type(scope, &t.id).await?;
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
            .as_ref()
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
        if previous
            .as_ref()
            .is_some_and(|p| p.record_type(&t.id).is_none())
            && stored.is_some()
        {
            added.record_types.push(t.id.clone());
        }
        record_types.push((t.id.clone(), t.name.clone(), schema));
    }
    for p in &merged.pipelines {
        let old = previous.as_ref().and_then(|o| o.pipeline(&p.record_type));
        for s in &p.stages {
            if old.is_none_or(|o| o.stage(&s.id).is_none()) {
                added.stages.push(format!("{}.{}", p.record_type, s.id));
            }
        }
    }
    for a in &merged.automations {
        if previous
            .as_ref()
            .is_none_or(|o| !o.automations.iter().any(|x| x.id == a.id))
        {
            added.automations.push(a.id.clone());
        }
    }

    let write = TemplateWrite {
        template_id: merged.id.clone(),
        version: merged.version.to_string(),
        previous_version: current.as_ref().map(|row| row.version.clone()),
        spec: serde_json::to_value(&merged).map_err(|_| ApiError::internal())?,
        record_types,
        installations,
    };
    if !state.store.apply_template(scope, &write).await? {
        return Err(ApiError::conflict(
            "template_conflict",
            "another application of a template to this tenant finished first; read the tenant's template and try again",
        ));
    }
    for (id, _, _) in &write.record_types {
        state.schemas.forget(scope, id);
    }
    state.plugins.changed().await;
    state.workflows.forget(scope);
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
