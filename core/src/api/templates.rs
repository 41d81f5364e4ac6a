//! Provider routes for industry templates: the catalog, and applying a template to a
//! tenant (`/provider/templates`, `/provider/tenants/{slug}/template`).

use axum::Json;
use axum::extract::{Path, Query, State};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, ApiResult, ErrorBody};
use super::extract::ProviderPrincipal;
use super::provider::tenant;
use super::{AppState, JsonBody};
use crate::kernel::Applied;
use crate::store::{TenantScope, format_micros};
use crate::templates::Template;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_templates))
        .routes(routes!(get_template))
        .routes(routes!(apply_template, tenant_template))
}

#[derive(Serialize, utoipa::ToSchema)]
struct TemplateSummary {
    id: String,
    name: String,
    /// The newest version.
    version: String,
    /// Every version this server offers, oldest first.
    versions: Vec<String>,
    description: String,
    record_types: Vec<String>,
    automations: usize,
    plugins: Vec<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct TemplateList {
    items: Vec<TemplateSummary>,
}

/// The industry templates this server offers.
#[utoipa::path(get, path = "/templates", tag = "templates", security(("provider_token" = [])),
    responses((status = 200, body = TemplateList)))]
async fn list_templates(State(state): State<AppState>, _: ProviderPrincipal) -> Json<TemplateList> {
    let items = state
        .templates
        .latest()
        .into_iter()
        .map(|t| TemplateSummary {
            id: t.id.clone(),
            name: t.name.clone(),
            version: t.version.to_string(),
            versions: state.templates.versions(&t.id),
            description: t.description.clone(),
            record_types: t.record_types.iter().map(|r| r.id.clone()).collect(),
            automations: t.automations.len(),
            plugins: t.plugins.iter().map(|p| p.id.clone()).collect(),
        })
        .collect();
    Json(TemplateList { items })
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct VersionQuery {
    /// A version; the newest when absent.
    #[param(
        pattern = "^(0|[1-9][0-9]*)\\.(0|[1-9][0-9]*)\\.(0|[1-9][0-9]*)(-(0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*)(\\.(0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*))*)?(\\+[0-9A-Za-z-]+(\\.[0-9A-Za-z-]+)*)?$"
    )]
    pub(super) version: Option<String>,
}

fn find(
    state: &AppState,
    id: &str,
    version: Option<&str>,
    path: &str,
) -> ApiResult<std::sync::Arc<Template>> {
    let version = match version {
        None => None,
        Some(text) => Some(semver::Version::parse(text).map_err(|e| {
            ApiError::field(
                path,
                format!("{text:?} is not a version such as 1.0.0: {e}"),
            )
        })?),
    };
    state.templates.get(id, version.as_ref()).ok_or_else(|| {
        let versions = state.templates.versions(id);
        let message = if versions.is_empty() {
            let ids: Vec<String> = state
                .templates
                .latest()
                .iter()
                .map(|t| t.id.clone())
                .collect();
            format!("no template {id:?}; templates: {}", ids.join(", "))
        } else {
            format!(
                "template {id} has no such version; versions: {}",
                versions.join(", ")
            )
        };
        ApiError::new(
            axum::http::StatusCode::NOT_FOUND,
            "unknown_template",
            message,
        )
        .with_details(json!({ "id": id, "versions": versions }))
    })
}

/// A template in full: record types, pipelines, automations and plugins.
#[utoipa::path(get, path = "/templates/{id}", tag = "templates", security(("provider_token" = [])),
    params(("id" = String, Path), VersionQuery),
    responses((status = 200, body = Object), (status = 404, body = ErrorBody)))]
async fn get_template(
    State(state): State<AppState>,
    _: ProviderPrincipal,
    Path(id): Path<String>,
    Query(query): Query<VersionQuery>,
) -> ApiResult<Json<Value>> {
    let template = find(&state, &id, query.version.as_deref(), "version")?;
    Ok(Json(
        serde_json::to_value(&*template).map_err(|_| ApiError::internal())?,
    ))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ApplyTemplate {
    /// A template id such as `roofing`.
    pub(super) id: String,
    /// A version; the newest when absent.
    #[schema(
        pattern = "^(0|[1-9][0-9]*)\\.(0|[1-9][0-9]*)\\.(0|[1-9][0-9]*)(-(0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*)(\\.(0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*))*)?(\\+[0-9A-Za-z-]+(\\.[0-9A-Za-z-]+)*)?$"
    )]
    pub(super) version: Option<String>,
}

/// Apply a template to a tenant (idempotent; a newer version adds what is new).
#[utoipa::path(post, path = "/tenants/{slug}/template", tag = "templates", security(("provider_token" = [])),
    params(("slug" = String, Path)), request_body = ApplyTemplate,
    responses((status = 200, body = Applied), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
              (status = 422, body = ErrorBody)))]
async fn apply_template(
    State(state): State<AppState>,
    _: ProviderPrincipal,
    Path(slug): Path<String>,
    JsonBody(body): JsonBody<ApplyTemplate>,
) -> ApiResult<Json<Applied>> {
    let tenant = tenant(&state, &slug).await?;
    Ok(Json(
        apply_to(&state, &TenantScope::new(tenant.id), &body).await?,
    ))
}

pub(super) async fn apply_to(
    state: &AppState,
    scope: &TenantScope,
    body: &ApplyTemplate,
) -> ApiResult<Applied> {
    let template = find(state, &body.id, body.version.as_deref(), "/version")?;
    Ok(state.templates().apply(scope, &template).await?)
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct TenantTemplate {
    pub id: String,
    pub version: String,
    pub applied_at: String,
}

#[derive(Serialize, utoipa::ToSchema)]
struct TenantTemplateView {
    #[serde(flatten)]
    applied: TenantTemplate,
    /// The merged template the tenant runs (newer versions merged into older ones).
    #[schema(value_type = Object)]
    spec: Value,
}

/// The template a tenant uses, as applied.
#[utoipa::path(get, path = "/tenants/{slug}/template", tag = "templates", security(("provider_token" = [])),
    params(("slug" = String, Path)),
    responses((status = 200, body = TenantTemplateView), (status = 404, body = ErrorBody)))]
async fn tenant_template(
    State(state): State<AppState>,
    _: ProviderPrincipal,
    Path(slug): Path<String>,
) -> ApiResult<Json<TenantTemplateView>> {
    let tenant = tenant(&state, &slug).await?;
    let row = state
        .store
        .tenant_template(&TenantScope::new(tenant.id))
        .await?
        .ok_or_else(|| ApiError::not_found("template applied to this tenant"))?;
    Ok(Json(TenantTemplateView {
        applied: TenantTemplate {
            id: row.template_id,
            version: row.version,
            applied_at: format_micros(row.applied_at),
        },
        spec: row.spec.0,
    }))
}
