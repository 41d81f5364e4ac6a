//! Plugin routes in all three realms:
//! - developers publish packages (`/developer/plugins`);
//! - the provider reviews versions and installs them for tenants, with grants and config,
//!   and watches their health (`/provider/plugins`, `/provider/tenants/{slug}/plugins`);
//! - a client sees its plugins, its owners and admins configure them, and its staff run
//!   their actions (`/api/plugins`).

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use streamflow_runtime::{Call, FailureKind, Hook, Limits, Manifest, Package, Reply};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, ApiResult, ErrorBody};
use super::extract::{ClientPrincipal, DeveloperPrincipal, ProviderPrincipal};
use super::provider::tenant;
use super::validate::{self, PageQuery, bad_parameter};
use super::{AppState, JsonBody};
use crate::error::FieldError;
use crate::kernel::Install;
use crate::plugins::health::HealthView;
use crate::plugins::{CallError, PluginHost};
use crate::records::compile_schema;
use crate::store::TenantScope;
use crate::store::plugins::{
    AuditRow, InstallationRow, NewVersion, Published, UPLOAD_WINDOW_MICROS, UploadQuota,
    VersionFilter, VersionRow, VersionStatus,
};
use crate::tenancy::Permission;
use streamflow_runtime::integration::QuotaOverrides;

pub fn developer_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(publish, list_own))
}

pub fn provider_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_registry))
        .routes(routes!(approve))
        .routes(routes!(reject))
        .routes(routes!(list_installed))
        .routes(routes!(install, uninstall))
        .routes(routes!(reset_breaker))
        .routes(routes!(audit))
}

pub fn client_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(client_list))
        .routes(routes!(client_configure))
        .routes(routes!(run_action))
}

/// A published version as the registry shows it.
#[derive(Serialize, utoipa::ToSchema)]
struct VersionView {
    id: String,
    version: String,
    name: String,
    description: Option<String>,
    /// The `streamflow:plugin` API version it targets.
    api: String,
    hooks: Vec<String>,
    capabilities: Vec<String>,
    subscriptions: Vec<String>,
    actions: Vec<String>,
    #[schema(value_type = Object)]
    limits: Value,
    #[schema(value_type = Object)]
    config_schema: Value,
    /// JSON pointers of the configuration fields that are secrets.
    secret_fields: Vec<String>,
    sha256: String,
    size: i64,
    /// `pending`, `approved` or `rejected`.
    status: String,
    /// Where this node holds the version compiled: `none` (uploads are only validated;
    /// compiling happens on approval or first use, and unused code is evicted), `on_disk`
    /// or `in_memory`.
    compiled: &'static str,
    uploaded_at: String,
    reviewed_at: Option<String>,
}

fn manifest_of(row: &VersionRow) -> ApiResult<Manifest> {
    Ok(row.manifest()?)
}

fn version_view(plugins: &PluginHost, row: &VersionRow) -> ApiResult<VersionView> {
    let m = manifest_of(row)?;
    Ok(VersionView {
        id: row.plugin_id.clone(),
        version: row.version.clone(),
        name: row.name.clone(),
        description: m.description.clone(),
        api: row.api.clone(),
        hooks: m.hooks.iter().map(|h| h.as_str().to_string()).collect(),
        capabilities: m
            .capabilities
            .iter()
            .map(|c| c.as_str().to_string())
            .collect(),
        subscriptions: m.subscriptions.clone(),
        actions: m.actions.clone(),
        limits: serde_json::to_value(m.limits).unwrap_or_default(),
        config_schema: m.config_schema(),
        secret_fields: m.secret_fields(),
        sha256: row.sha256.clone(),
        size: row.size,
        status: row.status.clone(),
        compiled: plugins.compiled_state(&row.sha256),
        uploaded_at: crate::store::format_micros(row.uploaded_at),
        reviewed_at: row.reviewed_at.map(crate::store::format_micros),
    })
}

#[derive(Serialize, utoipa::ToSchema)]
struct VersionList {
    items: Vec<VersionView>,
    /// Pass as `cursor` for the next page; null on the last page.
    next_cursor: Option<String>,
}

/// One page of versions: fetches one row more than asked to tell whether a next page
/// exists.
async fn version_page(
    state: &AppState,
    mut filter: VersionFilter,
    page: &PageQuery,
) -> ApiResult<VersionList> {
    let limit = page.limit()?;
    filter.after = page.after::<(i64, String, String)>()?;
    let rows = state.store.list_versions(&filter, limit + 1).await?;
    let (rows, next_cursor) = validate::page(rows, limit, |r| {
        validate::json_cursor(&(r.uploaded_at, &r.plugin_id, &r.version))
    });
    Ok(VersionList {
        items: rows
            .iter()
            .map(|r| version_view(&state.plugins, r))
            .collect::<ApiResult<_>>()?,
        next_cursor,
    })
}

/// Publish a plugin version: the body is the package file `streamflow plugin build` wrote.
/// The first developer to publish an id owns it; the ids of the plugins bundled with the
/// server are reserved (403). Versions are immutable and start pending. The package is
/// validated (component and manifest) but not compiled: that happens on approval. Each
/// developer may publish a limited number of versions per hour (429 with `Retry-After`)
/// and store a limited number of bytes of packages in all (413 `storage_quota_exceeded`).
#[utoipa::path(post, path = "/plugins", tag = "developer", security(("developer_token" = [])),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 201, body = VersionView), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody),
              (status = 413, body = ErrorBody), (status = 415, body = ErrorBody), (status = 422, body = ErrorBody),
              (status = 429, body = ErrorBody)))]
async fn publish(
    State(state): State<AppState>,
    principal: DeveloperPrincipal,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<VersionView>)> {
    let quota = admit_upload(&state, &principal, &headers).await?;
    let package = read_package(&state, &headers, body).await?;
    let manifest = &package.manifest;
    let manifest_json = serde_json::to_value(manifest).map_err(|_| ApiError::internal())?;
    let version = manifest.version.to_string();
    let api = manifest.api.to_string();
    let published = state
        .store
        .publish_version(
            principal.account.id,
            &NewVersion {
                plugin_id: &manifest.id,
                version: &version,
                name: &manifest.name,
                api: &api,
                manifest: &manifest_json,
                package: &package.bytes,
                sha256: &package.sha256,
            },
            quota,
        )
        .await?;
    let row = match published {
        Published::Created(row) => row,
        Published::Exists => {
            return Err(ApiError::conflict(
                "version_exists",
                format!(
                    "{} {version} is already published; versions are immutable, so bump the version",
                    manifest.id
                ),
            ));
        }
        Published::NotOwner => {
            return Err(ApiError::forbidden(format!(
                "the plugin id {} belongs to another developer",
                manifest.id
            )));
        }
        Published::RateLimited { retry_after_secs } => {
            return Err(upload_rate_limited(quota, retry_after_secs));
        }
        Published::StorageFull { used } => {
            return Err(storage_full(quota, used, package.bytes.len() as u64));
        }
    };
    tracing::info!(plugin = %row.plugin_id, version = %row.version, sha256 = %row.sha256, "plugin version published");
    Ok((
        StatusCode::CREATED,
        Json(version_view(&state.plugins, &row)?),
    ))
}

/// Whether the developer may upload now, checked before the body is read: the declared
/// size, the versions and bytes of their quota (checked again, atomically, when the version
/// is stored) and their upload attempts on this node. Returns the quota.
async fn admit_upload(
    state: &AppState,
    principal: &DeveloperPrincipal,
    headers: &HeaderMap,
) -> ApiResult<UploadQuota> {
    let limit = state.config.plugin_size_limit;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(super::json::too_large(limit));
    }
    let quota = UploadQuota {
        per_hour: state.config.uploads_per_hour as i64,
        max_bytes: state.config.developer_storage_bytes.min(i64::MAX as u64) as i64,
    };
    let now = crate::store::now_micros();
    let usage = state
        .store
        .upload_usage(principal.account.id, now - UPLOAD_WINDOW_MICROS)
        .await?;
    if usage.recent >= quota.per_hour {
        return Err(upload_rate_limited(quota, usage.retry_after_secs(now)));
    }
    if let Some(len) = declared
        && usage
            .stored_bytes
            .saturating_add(len.min(i64::MAX as u64) as i64)
            > quota.max_bytes
    {
        return Err(storage_full(quota, usage.stored_bytes, len));
    }
    // Attempts, refused ones included: each costs the package checks.
    if let Err(retry_after) = state.plugins.upload_attempt(principal.account.id) {
        return Err(ApiError::too_many_requests(
            format!(
                "you sent {} plugin uploads in the last hour, refused ones included, the most this server takes; try again in {retry_after} s",
                quota
                    .per_hour
                    .saturating_mul(crate::plugins::UPLOAD_ATTEMPTS_PER_UPLOAD as i64)
            ),
            retry_after,
        ));
    }
    Ok(quota)
}

/// Reads and checks the package in the body: its media type, its size, the component and
/// manifest, a reserved id, the config schema.
async fn read_package(state: &AppState, headers: &HeaderMap, body: Body) -> ApiResult<Package> {
    let limit = state.config.plugin_size_limit;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if essence != "application/octet-stream" && essence != "application/wasm" {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the package file as the body with `Content-Type: application/octet-stream`",
        ));
    }
    let bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| super::json::too_large(limit))?;
    if bytes.is_empty() {
        return Err(ApiError::field(
            "",
            "the body is empty: send the package file",
        ));
    }
    // Parsing validates the whole component; bounded by the size limit, but still CPU work.
    let package = tokio::task::spawn_blocking(move || Package::parse(bytes.to_vec()))
        .await
        .map_err(|_| ApiError::internal())?
        .map_err(|e| {
            ApiError::validation(e.0.into_iter().map(|m| FieldError::new("", m)).collect())
        })?;
    let manifest = &package.manifest;
    if state.config.bundled_plugins && crate::plugins::bundled::is_reserved(&manifest.id) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "plugin_id_reserved",
            format!(
                "the plugin id {} is reserved: a first-party plugin bundled with the server has it; choose another id",
                manifest.id
            ),
        ));
    }
    if let Some(schema) = manifest.config.as_ref().and_then(|c| c.schema.as_ref()) {
        compile_schema(schema).map_err(|e| {
            ApiError::field(
                "/config/schema",
                format!("the config schema is unusable: {e}"),
            )
        })?;
    }
    Ok(package)
}

fn upload_rate_limited(quota: UploadQuota, retry_after: u64) -> ApiError {
    ApiError::too_many_requests(
        format!(
            "you published {} plugin versions in the last hour, the most allowed; try again in {retry_after} s",
            quota.per_hour
        ),
        retry_after,
    )
}

fn storage_full(quota: UploadQuota, used: i64, package: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "storage_quota_exceeded",
        format!(
            "your stored plugin packages take {used} bytes of the {} allowed per developer; this package ({package} bytes) does not fit",
            quota.max_bytes
        ),
    )
    .with_details(json!({
        "used_bytes": used,
        "limit_bytes": quota.max_bytes,
        "package_bytes": package,
    }))
}

/// Your published versions, newest first, a page at a time.
#[utoipa::path(get, path = "/plugins", tag = "developer", security(("developer_token" = [])),
    params(PageQuery), responses((status = 200, body = VersionList), (status = 400, body = ErrorBody)))]
async fn list_own(
    State(state): State<AppState>,
    principal: DeveloperPrincipal,
    Query(page): Query<PageQuery>,
) -> ApiResult<Json<VersionList>> {
    let filter = VersionFilter {
        developer: Some(principal.account.id),
        ..VersionFilter::default()
    };
    Ok(Json(version_page(&state, filter, &page).await?))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct RegistryQuery {
    /// Only versions with this status: pending, approved or rejected.
    #[param(pattern = "^(pending|approved|rejected)?$")]
    status: Option<String>,
    /// Page size, 1-200 (default 50).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 200)]
    limit: Option<String>,
    /// `next_cursor` of the previous page.
    #[param(pattern = "^[A-Za-z0-9_-]*$")]
    cursor: Option<String>,
}

/// Every published version, newest first, a page at a time.
#[utoipa::path(get, path = "/plugins", tag = "provider", security(("provider_token" = [])),
    params(RegistryQuery), responses((status = 200, body = VersionList), (status = 400, body = ErrorBody)))]
async fn list_registry(
    State(state): State<AppState>,
    _: ProviderPrincipal,
    Query(query): Query<RegistryQuery>,
) -> ApiResult<Json<VersionList>> {
    let status = match query.status.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(text) => Some(
            VersionStatus::parse(text)
                .ok_or_else(|| bad_parameter("status", "must be pending, approved or rejected"))?,
        ),
    };
    let filter = VersionFilter {
        status,
        ..VersionFilter::default()
    };
    let page = PageQuery {
        limit: query.limit,
        cursor: query.cursor,
    };
    Ok(Json(version_page(&state, filter, &page).await?))
}

async fn review(
    state: &AppState,
    principal: &ProviderPrincipal,
    id: &str,
    version: &str,
    status: VersionStatus,
) -> ApiResult<Json<VersionView>> {
    let row = state
        .store
        .review_version(id, version, status, None, principal.account.id)
        .await?
        .ok_or_else(|| ApiError::not_found("plugin version"))?;
    // A rejected version's compiled code goes (memory and disk); an approved one stays on
    // disk, and in memory only while an installation runs it.
    state.plugins.changed().await;
    tracing::info!(plugin = %id, version, status = status.as_str(), "plugin version reviewed");
    Ok(Json(version_view(&state.plugins, &row)?))
}

/// Approve a version: tenants may then install it. The version is compiled here (uploads
/// are only validated); one that does not compile on this host is refused with the
/// compiler's error (422 `plugin_does_not_compile`) and stays as it was.
#[utoipa::path(post, path = "/plugins/{id}/versions/{version}/approve", tag = "provider", security(("provider_token" = [])),
    params(("id" = String, Path), ("version" = String, Path)),
    responses((status = 200, body = VersionView), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn approve(
    State(state): State<AppState>,
    principal: ProviderPrincipal,
    Path((id, version)): Path<(String, String)>,
) -> ApiResult<Json<VersionView>> {
    if state.store.get_version(&id, &version).await?.is_none() {
        return Err(ApiError::not_found("plugin version"));
    }
    if let Err(e) = state.plugins.load(&id, &version).await {
        tracing::warn!(plugin = %id, version, error = %e.message, "plugin version refused approval: it does not compile");
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "plugin_does_not_compile",
            format!(
                "{id} {version} cannot be approved: it does not compile on this host: {}",
                e.message
            ),
        )
        .with_details(json!({ "kind": e.kind })));
    }
    review(&state, &principal, &id, &version, VersionStatus::Approved).await
}

/// Reject a version. An approved version that is rejected later stops running for the
/// tenants that have it installed.
#[utoipa::path(post, path = "/plugins/{id}/versions/{version}/reject", tag = "provider", security(("provider_token" = [])),
    params(("id" = String, Path), ("version" = String, Path)),
    responses((status = 200, body = VersionView), (status = 404, body = ErrorBody)))]
async fn reject(
    State(state): State<AppState>,
    principal: ProviderPrincipal,
    Path((id, version)): Path<(String, String)>,
) -> ApiResult<Json<VersionView>> {
    review(&state, &principal, &id, &version, VersionStatus::Rejected).await
}

/// An installation. The configuration never includes secret fields; `secrets_set` names
/// the ones that hold a value.
#[derive(Serialize, utoipa::ToSchema)]
struct InstallationView {
    plugin_id: String,
    name: String,
    version: String,
    /// The semver requirement the version was resolved from.
    requirement: String,
    hooks: Vec<String>,
    /// Capabilities the provider granted.
    grants: Vec<String>,
    /// Capabilities the plugin asks for.
    requested: Vec<String>,
    #[schema(value_type = Object)]
    config: Value,
    secrets_set: Vec<String>,
    enabled: bool,
    /// Effective per-call limits (the manifest's, capped by the provider's maximums).
    #[schema(value_type = Object)]
    limits: Value,
    /// Effective per-call quotas of host calls (the manifest's, or the provider's for this
    /// installation, within the platform's maxima).
    #[schema(value_type = Object)]
    quotas: Value,
    /// What the provider set for this installation (`quotas`, `schedules`).
    #[schema(value_type = Object)]
    overrides: Value,
    created_at: String,
    updated_at: String,
    /// Provider only: calls, failures and the circuit breaker on this node.
    #[serde(skip_serializing_if = "Option::is_none")]
    health: Option<HealthView>,
    /// Where the service sends this installation's webhooks (plugins that handle them):
    /// an opaque per-installation address.
    #[serde(skip_serializing_if = "Option::is_none")]
    webhook_url: Option<String>,
    /// The plugin's app-wide webhook address, when its manifest routes one.
    #[serde(skip_serializing_if = "Option::is_none")]
    app_webhook_url: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct InstallationList {
    items: Vec<InstallationView>,
    /// Pass as `cursor` for the next page; null on the last page.
    next_cursor: Option<String>,
}

/// One page of a tenant's installations, by plugin id.
async fn installation_page(
    state: &AppState,
    scope: &TenantScope,
    page: &PageQuery,
    with_health: bool,
) -> ApiResult<InstallationList> {
    let limit = page.limit()?;
    let after = page.after::<String>()?;
    let rows = state
        .store
        .list_installations_page(scope, after.as_deref(), limit + 1)
        .await?;
    let (rows, next_cursor) = validate::page(rows, limit, |r| validate::json_cursor(&r.plugin_id));
    let mut items = Vec::with_capacity(rows.len());
    for row in &rows {
        items.push(installation_view(state, row, with_health).await?);
    }
    Ok(InstallationList { items, next_cursor })
}

async fn installation_view(
    state: &AppState,
    row: &InstallationRow,
    with_health: bool,
) -> ApiResult<InstallationView> {
    let version = state
        .store
        .get_version(&row.plugin_id, &row.version)
        .await?
        .ok_or_else(ApiError::internal)?;
    let manifest = manifest_of(&version)?;
    let secrets_set = if row.secrets.is_some() {
        match state.plugins.open_secrets(row) {
            Ok(secrets) => secrets.keys().cloned().collect(),
            Err(e) => {
                tracing::error!(plugin = %row.plugin_id, error = %e, "installation secrets do not decrypt");
                Vec::new()
            }
        }
    } else {
        Vec::new()
    };
    let limits: Limits = manifest.limits.capped_by(state.config.plugin_max_limits);
    let overrides = crate::kernel::installations::overrides_of(row);
    let quotas = overrides.quotas(manifest.quotas.capped_by(streamflow_runtime::Quotas::MAX));
    let (webhook_url, app_webhook_url) = match &manifest.webhooks {
        Some(spec) if manifest.has_hook(Hook::HandleWebhook) => (
            Some(
                state
                    .webhooks()
                    .address(&TenantScope::new(row.tenant_id), &row.plugin_id)
                    .await?,
            ),
            spec.route
                .is_some()
                .then(|| state.webhooks().app_address(&row.plugin_id)),
        ),
        _ => (None, None),
    };
    Ok(InstallationView {
        webhook_url,
        app_webhook_url,
        plugin_id: row.plugin_id.clone(),
        name: version.name.clone(),
        version: row.version.clone(),
        requirement: row.requirement.clone(),
        hooks: manifest
            .hooks
            .iter()
            .map(|h| h.as_str().to_string())
            .collect(),
        grants: serde_json::from_value(row.grants.0.clone()).unwrap_or_default(),
        requested: manifest
            .capabilities
            .iter()
            .map(|c| c.as_str().to_string())
            .collect(),
        config: row.config.0.clone(),
        secrets_set,
        enabled: row.enabled,
        limits: serde_json::to_value(limits).unwrap_or_default(),
        quotas: serde_json::to_value(quotas).unwrap_or_default(),
        overrides: serde_json::to_value(&overrides).unwrap_or_default(),
        created_at: crate::store::format_micros(row.created_at),
        updated_at: crate::store::format_micros(row.updated_at),
        health: with_health.then(|| state.plugins.health.view(row.tenant_id, &row.plugin_id)),
    })
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct InstallRequest {
    /// A semver requirement such as `^1.2` or `=0.1.0`; the highest approved version that
    /// matches is installed. Default `*`.
    version: Option<String>,
    /// Capabilities to grant; each must be one the plugin requests. Default none.
    #[serde(default)]
    grants: Vec<String>,
    /// The configuration, validated against the version's schema (defaults filled in).
    /// Omitted: keep the current configuration (an upgrade re-validates it).
    #[schema(value_type = Option<Object>)]
    config: Option<Value>,
    /// Default true.
    enabled: Option<bool>,
    /// Per-call quotas for this installation, replacing the manifest's within the
    /// platform's maxima (`http-requests`, `http-bytes`, `record-reads`, `record-writes`,
    /// `events`, `wall-ms`). Omitted: keep the current ones; `{}` clears them.
    #[schema(value_type = Option<Object>)]
    quotas: Option<QuotaOverrides>,
    /// Longer intervals for the plugin's schedules (`{"poll": "1h"}`), at least the
    /// manifest's. Omitted: keep the current ones; `{}` clears them.
    #[schema(value_type = Option<Object>)]
    schedules: Option<std::collections::BTreeMap<String, String>>,
}

pub(super) fn is_plugin_id(id: &str) -> ApiResult<()> {
    if streamflow_runtime::manifest::valid_id(id) {
        Ok(())
    } else {
        Err(ApiError::not_found("plugin"))
    }
}

/// Install a plugin for a tenant, or change its version, grants, configuration or enabled
/// flag.
#[utoipa::path(put, path = "/tenants/{slug}/plugins/{id}", tag = "provider", security(("provider_token" = [])),
    params(("slug" = String, Path), ("id" = String, Path)), request_body = InstallRequest,
    responses((status = 200, body = InstallationView), (status = 201, body = InstallationView),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn install(
    State(state): State<AppState>,
    _: ProviderPrincipal,
    Path((slug, id)): Path<(String, String)>,
    JsonBody(body): JsonBody<InstallRequest>,
) -> ApiResult<(StatusCode, Json<InstallationView>)> {
    let tenant = tenant(&state, &slug).await?;
    is_plugin_id(&id)?;
    let scope = TenantScope::new(tenant.id);
    let request = Install {
        plugin_id: id,
        requirement: body.version,
        grants: body.grants,
        config: body.config,
        enabled: body.enabled,
        quotas: body.quotas,
        schedules: body.schedules,
    };
    let installed = state.installations().install(&scope, request).await?;
    let status = if installed.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(installation_view(&state, &installed.row, true).await?),
    ))
}

/// A tenant's installations by plugin id, a page at a time, with their health on this
/// node.
#[utoipa::path(get, path = "/tenants/{slug}/plugins", tag = "provider", security(("provider_token" = [])),
    params(("slug" = String, Path), PageQuery),
    responses((status = 200, body = InstallationList), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn list_installed(
    State(state): State<AppState>,
    _: ProviderPrincipal,
    Path(slug): Path<String>,
    Query(page): Query<PageQuery>,
) -> ApiResult<Json<InstallationList>> {
    let tenant = tenant(&state, &slug).await?;
    let scope = TenantScope::new(tenant.id);
    Ok(Json(installation_page(&state, &scope, &page, true).await?))
}

/// Uninstall a plugin from a tenant. Its stored kv data is kept for a reinstall.
#[utoipa::path(delete, path = "/tenants/{slug}/plugins/{id}", tag = "provider", security(("provider_token" = [])),
    params(("slug" = String, Path), ("id" = String, Path)), responses((status = 204), (status = 404, body = ErrorBody)))]
async fn uninstall(
    State(state): State<AppState>,
    _: ProviderPrincipal,
    Path((slug, id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let tenant = tenant(&state, &slug).await?;
    is_plugin_id(&id)?;
    state
        .installations()
        .uninstall(&TenantScope::new(tenant.id), &id)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Close an installation's circuit breaker so calls go through again.
#[utoipa::path(post, path = "/tenants/{slug}/plugins/{id}/reset", tag = "provider", security(("provider_token" = [])),
    params(("slug" = String, Path), ("id" = String, Path)),
    responses((status = 200, body = InstallationView), (status = 404, body = ErrorBody)))]
async fn reset_breaker(
    State(state): State<AppState>,
    _: ProviderPrincipal,
    Path((slug, id)): Path<(String, String)>,
) -> ApiResult<Json<InstallationView>> {
    let tenant = tenant(&state, &slug).await?;
    is_plugin_id(&id)?;
    let row = state
        .store
        .get_installation(&TenantScope::new(tenant.id), &id)
        .await?
        .ok_or_else(|| ApiError::not_found("installation"))?;
    state.plugins.health.reset(tenant.id, &id);
    tracing::info!(tenant = %slug, plugin = %id, "plugin circuit breaker reset");
    Ok(Json(installation_view(&state, &row, true).await?))
}

#[derive(Serialize, utoipa::ToSchema)]
struct AuditEntry {
    id: String,
    plugin_id: String,
    version: String,
    capability: String,
    operation: String,
    /// `denied` (called without the grant) or `allowed` (an audited call, such as each
    /// read of a secret).
    outcome: String,
    /// The first call of this minute's entry.
    at: String,
    /// Calls this entry stands for (they are counted per minute).
    calls: i64,
    /// The latest of them.
    last_at: String,
}

#[derive(Serialize, utoipa::ToSchema)]
struct AuditList {
    items: Vec<AuditEntry>,
}

/// Audited capability calls of the plugin, newest first: calls made without a grant
/// (`denied`) and secret reads (`allowed`); at most 200 entries, each counting the calls of
/// one capability, operation and outcome in one minute.
#[utoipa::path(get, path = "/tenants/{slug}/plugins/{id}/audit", tag = "provider", security(("provider_token" = [])),
    params(("slug" = String, Path), ("id" = String, Path)),
    responses((status = 200, body = AuditList), (status = 404, body = ErrorBody)))]
async fn audit(
    State(state): State<AppState>,
    _: ProviderPrincipal,
    Path((slug, id)): Path<(String, String)>,
) -> ApiResult<Json<AuditList>> {
    let tenant = tenant(&state, &slug).await?;
    is_plugin_id(&id)?;
    let rows = state
        .store
        .list_audit(&TenantScope::new(tenant.id), &id)
        .await?;
    Ok(Json(AuditList {
        items: rows
            .into_iter()
            .map(|r: AuditRow| AuditEntry {
                id: r.id.to_string(),
                plugin_id: r.plugin_id,
                version: r.version,
                capability: r.capability,
                operation: r.operation,
                outcome: r.outcome,
                at: crate::store::format_micros(r.created_at),
                calls: r.calls,
                last_at: crate::store::format_micros(r.last_at),
            })
            .collect(),
    }))
}

/// The plugins installed for your business, by id, a page at a time.
#[utoipa::path(get, path = "/plugins", tag = "plugins", security(("client_token" = [])),
    params(PageQuery), responses((status = 200, body = InstallationList), (status = 400, body = ErrorBody)))]
async fn client_list(
    State(state): State<AppState>,
    principal: ClientPrincipal,
    Query(page): Query<PageQuery>,
) -> ApiResult<Json<InstallationList>> {
    principal.require(Permission::RecordsRead)?;
    Ok(Json(
        installation_page(&state, &principal.scope, &page, false).await?,
    ))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ConfigRequest {
    /// The whole configuration. Secret fields left out keep their stored values; one given
    /// as null is removed.
    #[schema(value_type = Object)]
    config: Value,
}

/// Change an installed plugin's configuration (owners and admins).
#[utoipa::path(put, path = "/plugins/{id}/config", tag = "plugins", security(("client_token" = [])),
    params(("id" = String, Path)), request_body = ConfigRequest,
    responses((status = 200, body = InstallationView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 422, body = ErrorBody)))]
async fn client_configure(
    State(state): State<AppState>,
    principal: ClientPrincipal,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<ConfigRequest>,
) -> ApiResult<Json<InstallationView>> {
    principal.require(Permission::PluginsConfigure)?;
    is_plugin_id(&id)?;
    let row = state
        .installations()
        .configure(&principal.scope, &id, body.config)
        .await?;
    tracing::info!(plugin = %id, actor = %principal.actor(), "plugin configuration changed");
    Ok(Json(installation_view(&state, &row, false).await?))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ActionRequest {
    /// JSON input for the action.
    #[serde(default)]
    #[schema(value_type = Object)]
    input: Value,
}

#[derive(Serialize, utoipa::ToSchema)]
struct ActionResult {
    #[schema(value_type = Object)]
    output: Value,
}

/// Run one of an installed plugin's actions.
#[utoipa::path(post, path = "/plugins/{id}/actions/{name}", tag = "plugins", security(("client_token" = [])),
    params(("id" = String, Path), ("name" = String, Path)), request_body = ActionRequest,
    responses((status = 200, body = ActionResult), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 502, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn run_action(
    State(state): State<AppState>,
    principal: ClientPrincipal,
    Path((id, name)): Path<(String, String)>,
    JsonBody(body): JsonBody<ActionRequest>,
) -> ApiResult<Json<ActionResult>> {
    principal.require(Permission::PluginsRun)?;
    is_plugin_id(&id)?;
    let active = state.plugins.active(&principal.scope).await?;
    let plugin = active
        .iter()
        .find(|a| a.plugin_id == id)
        .ok_or_else(|| ApiError::not_found("installation"))?;
    if !plugin.manifest.has_hook(Hook::RunAction) || !plugin.manifest.actions.contains(&name) {
        return Err(ApiError::not_found("action"));
    }
    let reply = state
        .plugins
        .call(
            &principal.scope,
            plugin,
            Call::RunAction {
                name,
                input: body.input.to_string(),
            },
        )
        .await
        .map_err(plugin_error)?;
    let Reply::Output(text) = reply else {
        return Err(ApiError::internal());
    };
    let output = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Ok(Json(ActionResult { output }))
}

fn plugin_error(e: CallError) -> ApiError {
    let status = match e.kind {
        kind if kind.is_capacity() || kind == FailureKind::RetryLater => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        FailureKind::InvalidInput => StatusCode::UNPROCESSABLE_ENTITY,
        _ => StatusCode::BAD_GATEWAY,
    };
    let code = if status == StatusCode::SERVICE_UNAVAILABLE {
        "plugin_unavailable"
    } else {
        "plugin_failed"
    };
    ApiError::new(status, code, format!("the plugin {}", e.message))
        .with_details(json!({ "kind": e.kind }))
}
