//! The provider realm (`/provider/...`): platform operators create and suspend tenants,
//! create tenants' users and developer accounts.

use std::net::SocketAddr;

use axum::Json;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::client::{UserList, UserView};
use super::error::{ApiError, ApiResult, ErrorBody};
use super::extract::ProviderPrincipal;
use super::session::{self, LoginRequest, RefreshRequest};
use super::templates::{ApplyTemplate, TenantTemplate, apply_to};
use super::validate::PageQuery;
use super::{AppState, JsonBody, validate};
use crate::auth::{self, Realm, TokenPair};
use crate::store::TenantScope;
use crate::store::accounts::{Account, AccountKind};
use crate::store::format_micros;
use crate::store::templates::TenantTemplateRow;
use crate::store::tenants::Tenant;
use crate::tenancy::Role;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(login))
        .routes(routes!(refresh))
        .routes(routes!(logout))
        .routes(routes!(me))
        .routes(routes!(create_tenant, list_tenants))
        .routes(routes!(get_tenant))
        .routes(routes!(suspend_tenant))
        .routes(routes!(resume_tenant))
        .routes(routes!(create_tenant_user, list_tenant_users))
        .routes(routes!(create_developer, list_developers))
}

/// Log in as a provider operator.
#[utoipa::path(post, path = "/auth/login", tag = "provider", request_body = LoginRequest,
    responses((status = 200, body = TokenPair), (status = 401, body = ErrorBody), (status = 429, body = ErrorBody)))]
async fn login(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    JsonBody(body): JsonBody<LoginRequest>,
) -> ApiResult<Json<TokenPair>> {
    let ip = peer.ip();
    Ok(Json(
        session::platform_login(&state, Realm::Provider, ip, body).await?,
    ))
}

/// Exchange a refresh token for a new pair (the old one is spent).
#[utoipa::path(post, path = "/auth/refresh", tag = "provider", request_body = RefreshRequest,
    responses((status = 200, body = TokenPair), (status = 401, body = ErrorBody)))]
async fn refresh(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<RefreshRequest>,
) -> ApiResult<Json<TokenPair>> {
    Ok(Json(session::refresh(&state, Realm::Provider, body).await?))
}

/// Sign out: revokes the refresh token and every token rotated from the same login.
#[utoipa::path(post, path = "/auth/logout", tag = "provider", request_body = RefreshRequest,
    responses((status = 204)))]
async fn logout(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<RefreshRequest>,
) -> ApiResult<StatusCode> {
    session::logout(&state, Realm::Provider, body).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize, utoipa::ToSchema)]
struct ProviderMe {
    id: Uuid,
    email: String,
    realm: &'static str,
}

/// The signed-in provider account.
#[utoipa::path(get, path = "/me", tag = "provider", security(("provider_token" = [])),
    responses((status = 200, body = ProviderMe), (status = 401, body = ErrorBody)))]
async fn me(principal: ProviderPrincipal) -> ApiResult<Json<ProviderMe>> {
    let account = principal.account;
    Ok(Json(ProviderMe {
        id: account.id,
        email: account.email,
        realm: "provider",
    }))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct TenantView {
    id: Uuid,
    slug: String,
    name: String,
    /// `active` or `suspended`.
    status: String,
    created_at: String,
    updated_at: String,
    /// The industry template applied, if any.
    template: Option<TenantTemplate>,
}

impl From<Tenant> for TenantView {
    fn from(t: Tenant) -> Self {
        Self {
            id: t.id,
            slug: t.slug,
            name: t.name,
            status: t.status,
            created_at: format_micros(t.created_at),
            updated_at: format_micros(t.updated_at),
            template: None,
        }
    }
}

impl TenantView {
    fn with_template(mut self, row: Option<TenantTemplateRow>) -> Self {
        self.template = row.map(|r| TenantTemplate {
            id: r.template_id,
            version: r.version,
            applied_at: format_micros(r.applied_at),
        });
        self
    }
}

/// A tenant as the provider sees it, with its applied template.
async fn tenant_view(state: &AppState, tenant: Tenant) -> ApiResult<TenantView> {
    let template = state.store.tenant_template(&tenant.scope()).await?;
    Ok(TenantView::from(tenant).with_template(template))
}

/// A template to apply: its id, or `{id, version}`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
enum TemplateChoice {
    Id(String),
    Exact(ApplyTemplate),
}

#[derive(Serialize, utoipa::ToSchema)]
struct TenantList {
    items: Vec<TenantView>,
    /// Pass as `cursor` for the next page; null on the last page.
    next_cursor: Option<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateTenant {
    /// Lowercase letters, digits and inner hyphens; what users type to log in.
    #[schema(
        min_length = 2,
        max_length = 63,
        pattern = "^[a-z0-9][a-z0-9-]*[a-z0-9]$"
    )]
    slug: String,
    /// Trimmed; not blank, no control characters.
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*[^\\s\\x00-\\x1f\\x7f-\\x9f][^\\x00-\\x1f\\x7f-\\x9f]*$"
    )]
    name: String,
    /// An industry template to apply at once (`"roofing"` or `{"id", "version"}`). If it
    /// cannot be applied, no tenant is created.
    template: Option<TemplateChoice>,
}

/// Create a client tenant (with the built-in record types lead, contact and job, and the
/// template's, when one is given).
#[utoipa::path(post, path = "/tenants", tag = "provider", security(("provider_token" = [])),
    request_body = CreateTenant,
    responses((status = 201, body = TenantView), (status = 404, body = ErrorBody, description = "no such template (or version)"),
              (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn create_tenant(
    State(state): State<AppState>,
    _: ProviderPrincipal,
    JsonBody(body): JsonBody<CreateTenant>,
) -> ApiResult<(StatusCode, Json<TenantView>)> {
    validate::slug(&body.slug, "/slug")?;
    let name = validate::name(&body.name, "/name", 200)?;
    let tenant = state
        .store
        .create_tenant(&body.slug, &name)
        .await?
        .ok_or_else(|| {
            ApiError::conflict(
                "slug_taken",
                format!("the slug {} is already taken", body.slug),
            )
        })?;
    let scope = TenantScope::new(tenant.id);
    if let Some(choice) = body.template {
        let choice = match choice {
            TemplateChoice::Id(id) => ApplyTemplate { id, version: None },
            TemplateChoice::Exact(exact) => exact,
        };
        if let Err(e) = apply_to(&state, &scope, &choice).await {
            // Nothing half made: the tenant goes with its template.
            state.store.delete_new_tenant(&scope).await?;
            return Err(e);
        }
    }
    tracing::info!(tenant = %tenant.slug, "tenant created");
    Ok((
        StatusCode::CREATED,
        Json(tenant_view(&state, tenant).await?),
    ))
}

/// All tenants by slug, a page at a time.
#[utoipa::path(get, path = "/tenants", tag = "provider", security(("provider_token" = [])),
    params(PageQuery),
    responses((status = 200, body = TenantList), (status = 400, body = ErrorBody)))]
async fn list_tenants(
    State(state): State<AppState>,
    _: ProviderPrincipal,
    Query(query): Query<PageQuery>,
) -> ApiResult<Json<TenantList>> {
    let limit = query.limit()?;
    let after = query.after_key(|slug| validate::slug(slug, "").is_ok())?;
    let rows = state
        .store
        .list_tenants(after.as_deref(), limit + 1)
        .await?;
    let (rows, next_cursor) = validate::page(rows, limit, |t| validate::key_cursor(&t.slug));
    // Each page reads the templates of its own tenants only: the work is bounded by the page.
    let mut items = Vec::with_capacity(rows.len());
    for tenant in rows {
        items.push(tenant_view(&state, tenant).await?);
    }
    Ok(Json(TenantList { items, next_cursor }))
}

pub(super) async fn tenant(state: &AppState, slug: &str) -> ApiResult<Tenant> {
    if validate::slug(slug, "").is_err() {
        return Err(ApiError::not_found("tenant"));
    }
    state
        .store
        .tenant_by_slug(slug)
        .await?
        .ok_or_else(|| ApiError::not_found("tenant"))
}

/// One tenant.
#[utoipa::path(get, path = "/tenants/{slug}", tag = "provider", security(("provider_token" = [])),
    params(("slug" = String, Path)),
    responses((status = 200, body = TenantView), (status = 404, body = ErrorBody)))]
async fn get_tenant(
    State(state): State<AppState>,
    _: ProviderPrincipal,
    Path(slug): Path<String>,
) -> ApiResult<Json<TenantView>> {
    let tenant = tenant(&state, &slug).await?;
    Ok(Json(tenant_view(&state, tenant).await?))
}

async fn set_status(state: &AppState, slug: &str, status: &str) -> ApiResult<Json<TenantView>> {
    tenant(state, slug).await?;
    let tenant = state
        .store
        .set_tenant_status(slug, status)
        .await?
        .ok_or_else(|| ApiError::not_found("tenant"))?;
    tracing::info!(tenant = %tenant.slug, status, "tenant status changed");
    Ok(Json(tenant_view(state, tenant).await?))
}

/// Suspend a tenant: its users and API keys are refused until it is resumed.
#[utoipa::path(post, path = "/tenants/{slug}/suspend", tag = "provider", security(("provider_token" = [])),
    params(("slug" = String, Path)),
    responses((status = 200, body = TenantView), (status = 404, body = ErrorBody)))]
async fn suspend_tenant(
    State(state): State<AppState>,
    _: ProviderPrincipal,
    Path(slug): Path<String>,
) -> ApiResult<Json<TenantView>> {
    set_status(&state, &slug, "suspended").await
}

/// Resume a suspended tenant.
#[utoipa::path(post, path = "/tenants/{slug}/resume", tag = "provider", security(("provider_token" = [])),
    params(("slug" = String, Path)),
    responses((status = 200, body = TenantView), (status = 404, body = ErrorBody)))]
async fn resume_tenant(
    State(state): State<AppState>,
    _: ProviderPrincipal,
    Path(slug): Path<String>,
) -> ApiResult<Json<TenantView>> {
    set_status(&state, &slug, "active").await
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    /// An email address, `name@example.com`: trimmed and lowercased. Only its shape is checked
    /// (the pattern), so the schema does not claim `format: email`.
    #[schema(
        max_length = 254,
        pattern = "^[^@\\s\\x00-\\x1f\\x7f-\\x9f]+@[^@.\\s\\x00-\\x1f\\x7f-\\x9f]+(\\.[^@.\\s\\x00-\\x1f\\x7f-\\x9f]+)+$"
    )]
    pub email: String,
    #[schema(format = Password, min_length = 10, max_length = 256)]
    pub password: String,
    pub role: Role,
}

/// Create a user in a tenant with any role (typically its first owner).
#[utoipa::path(post, path = "/tenants/{slug}/users", tag = "provider", security(("provider_token" = [])),
    params(("slug" = String, Path)), request_body = CreateUser,
    responses((status = 201, body = UserView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn create_tenant_user(
    State(state): State<AppState>,
    _: ProviderPrincipal,
    Path(slug): Path<String>,
    JsonBody(body): JsonBody<CreateUser>,
) -> ApiResult<(StatusCode, Json<UserView>)> {
    let tenant = tenant(&state, &slug).await?;
    let user = super::client::insert_user(&state, &tenant.scope(), body).await?;
    Ok((StatusCode::CREATED, Json(user)))
}

/// A tenant's users in creation order, a page at a time.
#[utoipa::path(get, path = "/tenants/{slug}/users", tag = "provider", security(("provider_token" = [])),
    params(("slug" = String, Path), PageQuery),
    responses((status = 200, body = UserList), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn list_tenant_users(
    State(state): State<AppState>,
    _: ProviderPrincipal,
    Path(slug): Path<String>,
    Query(query): Query<PageQuery>,
) -> ApiResult<Json<UserList>> {
    let tenant = tenant(&state, &slug).await?;
    Ok(Json(
        super::client::user_page(&state, &tenant.scope(), &query).await?,
    ))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateDeveloper {
    /// An email address, `name@example.com`: trimmed and lowercased. Only its shape is checked
    /// (the pattern), so the schema does not claim `format: email`.
    #[schema(
        max_length = 254,
        pattern = "^[^@\\s\\x00-\\x1f\\x7f-\\x9f]+@[^@.\\s\\x00-\\x1f\\x7f-\\x9f]+(\\.[^@.\\s\\x00-\\x1f\\x7f-\\x9f]+)+$"
    )]
    email: String,
    #[schema(format = Password, min_length = 10, max_length = 256)]
    password: String,
    /// Trimmed; not blank, no control characters.
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*[^\\s\\x00-\\x1f\\x7f-\\x9f][^\\x00-\\x1f\\x7f-\\x9f]*$"
    )]
    name: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct DeveloperView {
    id: Uuid,
    email: String,
    name: String,
    created_at: String,
}

impl From<Account> for DeveloperView {
    fn from(a: Account) -> Self {
        Self {
            id: a.id,
            email: a.email,
            name: a.name,
            created_at: format_micros(a.created_at),
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
struct DeveloperList {
    items: Vec<DeveloperView>,
    /// Pass as `cursor` for the next page; null on the last page.
    next_cursor: Option<String>,
}

/// Create a plugin developer account.
#[utoipa::path(post, path = "/developers", tag = "provider", security(("provider_token" = [])),
    request_body = CreateDeveloper,
    responses((status = 201, body = DeveloperView), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn create_developer(
    State(state): State<AppState>,
    _: ProviderPrincipal,
    JsonBody(body): JsonBody<CreateDeveloper>,
) -> ApiResult<(StatusCode, Json<DeveloperView>)> {
    let email = validate::email(&body.email, "/email")?;
    validate::password(&body.password, "/password")?;
    let name = validate::name(&body.name, "/name", 200)?;
    let hash = auth::hash_password(body.password).await?;
    let account = state
        .store
        .create_account(AccountKind::Developer, &email, &name, &hash)
        .await?
        .ok_or_else(|| {
            ApiError::conflict("email_taken", "a developer account with this email exists")
        })?;
    Ok((StatusCode::CREATED, Json(account.into())))
}

/// All developer accounts by email, a page at a time.
#[utoipa::path(get, path = "/developers", tag = "provider", security(("provider_token" = [])),
    params(PageQuery),
    responses((status = 200, body = DeveloperList), (status = 400, body = ErrorBody)))]
async fn list_developers(
    State(state): State<AppState>,
    _: ProviderPrincipal,
    Query(query): Query<PageQuery>,
) -> ApiResult<Json<DeveloperList>> {
    let limit = query.limit()?;
    let after = query.after_key(|email| validate::email(email, "").is_ok_and(|e| e == email))?;
    let rows = state
        .store
        .list_developers(after.as_deref(), limit + 1)
        .await?;
    let (rows, next_cursor) = validate::page(rows, limit, |a| validate::key_cursor(&a.email));
    Ok(Json(DeveloperList {
        items: rows.into_iter().map(Into::into).collect(),
        next_cursor,
    }))
}
