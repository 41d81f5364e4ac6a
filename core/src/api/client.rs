//! The client realm (`/api/...`) apart from records: sign-in, the tenant's users, API keys
//! and record types.

use std::net::SocketAddr;

use axum::Json;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::error::{ApiError, ApiResult, ErrorBody};
use super::extract::{ClientCredential, ClientPrincipal};
use super::provider::CreateUser;
use super::session::{self, RefreshRequest};
use super::validate::PageQuery;
use super::{AppState, JsonBody, validate};
use crate::auth::{self, Realm, TokenPair};
use crate::records::{MAX_SCHEMA_DEPTH, check_json, compile_schema, valid_type_id};
use crate::store::format_micros;
use crate::store::records::RecordType;
use crate::store::tenants::{ApiKey, User, UserChanges, UserUpdate};
use crate::tenancy::{Permission, Role, TenantScope};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(login))
        .routes(routes!(refresh))
        .routes(routes!(logout))
        .routes(routes!(me))
        .routes(routes!(list_users, create_user))
        .routes(routes!(update_user))
        .routes(routes!(list_api_keys, create_api_key))
        .routes(routes!(revoke_api_key))
        .routes(routes!(list_record_types))
        .routes(routes!(get_record_type, put_record_type))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ClientLogin {
    /// The tenant's slug.
    #[schema(
        min_length = 2,
        max_length = 63,
        pattern = "^[a-z0-9][a-z0-9-]*[a-z0-9]$"
    )]
    tenant: String,
    /// An email address, `name@example.com` (trimmed and lowercased).
    #[schema(
        max_length = 254,
        pattern = "^[^@\\s\\x00-\\x1f\\x7f-\\x9f]+@[^@.\\s\\x00-\\x1f\\x7f-\\x9f]+(\\.[^@.\\s\\x00-\\x1f\\x7f-\\x9f]+)+$"
    )]
    email: String,
    password: String,
}

/// Log in as a tenant's user.
#[utoipa::path(post, path = "/auth/login", tag = "client", request_body = ClientLogin,
    responses((status = 200, body = TokenPair), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody, description = "the tenant is suspended"),
              (status = 429, body = ErrorBody)))]
async fn login(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    JsonBody(body): JsonBody<ClientLogin>,
) -> ApiResult<Json<TokenPair>> {
    let email = validate::email(&body.email, "/email")?;
    let ip = peer.ip();
    // Not a slug any tenant could have: answer as for a wrong password (and keep the rate
    // limiter's key short whatever was sent).
    let slug = validate::slug(&body.tenant, "/tenant")
        .ok()
        .map(|()| body.tenant.as_str());
    session::rate_limit(
        &state,
        ip,
        &format!("client|{}|{email}", slug.unwrap_or("-")),
    )
    .await?;
    let tenant = match slug {
        Some(slug) => state.store.tenant_by_slug(slug).await?,
        None => None,
    };
    let user = match &tenant {
        Some(t) => state.store.user_by_email(&t.scope(), &email).await?,
        None => None,
    };
    let hash = user.as_ref().map(|u| u.password_hash.clone());
    if !auth::verify_password(body.password, hash).await {
        metrics::counter!("streamflow_login_failures_total", "realm" => "client").increment(1);
        return Err(ApiError::invalid_credentials());
    }
    let (tenant, user) = (
        tenant.expect("user implies tenant"),
        user.expect("verified"),
    );
    if !tenant.is_active() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "tenant_suspended",
            "this business's account is suspended; contact your provider",
        ));
    }
    if user.status != "active" {
        return Err(ApiError::invalid_credentials());
    }
    Ok(Json(
        state
            .auth
            .start_session(&state.store, Realm::Client, user.id, Some(tenant.id))
            .await?,
    ))
}

/// Exchange a refresh token for a new pair (the old one is spent; reusing it signs out
/// every session of the login).
#[utoipa::path(post, path = "/auth/refresh", tag = "client", request_body = RefreshRequest,
    responses((status = 200, body = TokenPair), (status = 401, body = ErrorBody)))]
async fn refresh(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<RefreshRequest>,
) -> ApiResult<Json<TokenPair>> {
    Ok(Json(session::refresh(&state, Realm::Client, body).await?))
}

/// Sign out every session of this login.
#[utoipa::path(post, path = "/auth/logout", tag = "client", request_body = RefreshRequest,
    responses((status = 204)))]
async fn logout(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<RefreshRequest>,
) -> ApiResult<StatusCode> {
    session::logout(&state, Realm::Client, body).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct UserView {
    id: Uuid,
    email: String,
    role: String,
    /// `active` or `disabled`.
    status: String,
    created_at: String,
}

impl From<User> for UserView {
    fn from(u: User) -> Self {
        Self {
            id: u.id,
            email: u.email,
            role: u.role,
            status: u.status,
            created_at: format_micros(u.created_at),
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
struct TenantBrief {
    id: Uuid,
    slug: String,
    name: String,
}

#[derive(Serialize, utoipa::ToSchema)]
struct ClientMe {
    tenant: TenantBrief,
    role: Role,
    /// The signed-in user, absent for API keys.
    user: Option<UserView>,
    /// The API key in use, absent for users.
    api_key: Option<Uuid>,
    permissions: Vec<&'static str>,
}

/// Who is calling: tenant, role, user or API key, and what the role may do.
#[utoipa::path(get, path = "/me", tag = "client", security(("client_token" = [])),
    responses((status = 200, body = ClientMe), (status = 401, body = ErrorBody)))]
async fn me(
    State(state): State<AppState>,
    principal: ClientPrincipal,
) -> ApiResult<Json<ClientMe>> {
    let tenant = state
        .store
        .tenant_by_id(&principal.scope)
        .await?
        .ok_or_else(ApiError::unauthorized)?;
    let user = match principal.credential {
        ClientCredential::User(id) => state
            .store
            .user_by_id(&principal.scope, id)
            .await?
            .map(UserView::from),
        ClientCredential::ApiKey(_) => None,
    };
    let api_key = match principal.credential {
        ClientCredential::ApiKey(id) => Some(id),
        ClientCredential::User(_) => None,
    };
    use Permission::*;
    let permissions = [
        (RecordsRead, "records:read"),
        (RecordsCreate, "records:create"),
        (RecordsUpdate, "records:update"),
        (RecordsDelete, "records:delete"),
        (UsersManage, "users:manage"),
        (ApiKeysManage, "api_keys:manage"),
        (SchemasManage, "record_types:manage"),
    ]
    .into_iter()
    .filter(|(p, _)| principal.role.allows(*p))
    .map(|(_, name)| name)
    .collect();
    Ok(Json(ClientMe {
        tenant: TenantBrief {
            id: tenant.id,
            slug: tenant.slug,
            name: tenant.name,
        },
        role: principal.role,
        user,
        api_key,
        permissions,
    }))
}

/// Validates and inserts a user; shared with the provider realm.
pub async fn insert_user(
    state: &AppState,
    scope: &TenantScope,
    body: CreateUser,
) -> ApiResult<UserView> {
    let email = validate::email(&body.email, "/email")?;
    validate::password(&body.password, "/password")?;
    let hash = auth::hash_password(body.password).await?;
    let user = state
        .store
        .create_user(scope, &email, &hash, body.role.as_str())
        .await?
        .ok_or_else(|| {
            ApiError::conflict(
                "email_taken",
                "this tenant already has a user with this email",
            )
        })?;
    Ok(user.into())
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct UserList {
    items: Vec<UserView>,
    /// Pass as `cursor` for the next page; null on the last page.
    next_cursor: Option<String>,
}

/// A page of a tenant's users in creation order; shared with the provider realm.
pub async fn user_page(
    state: &AppState,
    scope: &TenantScope,
    query: &PageQuery,
) -> ApiResult<UserList> {
    let limit = query.limit()?;
    let rows = state
        .store
        .list_users(scope, query.after_id()?, limit + 1)
        .await?;
    let (rows, next_cursor) = validate::page(rows, limit, |u| crate::records::encode_cursor(u.id));
    Ok(UserList {
        items: rows.into_iter().map(Into::into).collect(),
        next_cursor,
    })
}

/// The tenant's users in creation order, a page at a time (owners and admins).
#[utoipa::path(get, path = "/users", tag = "client", security(("client_token" = [])),
    params(PageQuery),
    responses((status = 200, body = UserList), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn list_users(
    State(state): State<AppState>,
    principal: ClientPrincipal,
    Query(query): Query<PageQuery>,
) -> ApiResult<Json<UserList>> {
    principal.require(Permission::UsersManage)?;
    Ok(Json(user_page(&state, &principal.scope, &query).await?))
}

fn may_grant(principal: &ClientPrincipal, role: Role, path: &str) -> ApiResult<()> {
    if principal.role.may_grant(role) {
        Ok(())
    } else {
        Err(ApiError::forbidden(format!(
            "the {} role may not grant the {} role",
            principal.role.as_str(),
            role.as_str()
        ))
        .with_details(serde_json::json!({ "path": path })))
    }
}

/// 403 unless the caller may act on a user holding `target` ([`Role::may_manage_user`]).
fn may_manage(principal: &ClientPrincipal, target: Role) -> ApiResult<()> {
    if principal.role.may_manage_user(target) {
        Ok(())
    } else {
        Err(ApiError::forbidden(format!(
            "the {} role may not change a user with the {} role; only a higher role or an \
             owner may",
            principal.role.as_str(),
            target.as_str()
        )))
    }
}

/// Add a user to the tenant (owners and admins; nobody grants a role above their own).
#[utoipa::path(post, path = "/users", tag = "client", security(("client_token" = [])),
    request_body = CreateUser,
    responses((status = 201, body = UserView), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn create_user(
    State(state): State<AppState>,
    principal: ClientPrincipal,
    JsonBody(body): JsonBody<CreateUser>,
) -> ApiResult<(StatusCode, Json<UserView>)> {
    principal.require(Permission::UsersManage)?;
    principal.require_user("users")?;
    may_grant(&principal, body.role, "/role")?;
    let user = insert_user(&state, &principal.scope, body).await?;
    Ok((StatusCode::CREATED, Json(user)))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct UpdateUser {
    role: Option<Role>,
    /// `active` or `disabled`.
    #[schema(pattern = "^(active|disabled)$")]
    status: Option<String>,
    #[schema(format = Password, min_length = 10, max_length = 256)]
    password: Option<String>,
}

/// Change a user's role, status or password. Only a strictly higher role, or an owner,
/// may change a user; nobody grants a role above their own, nobody changes themselves,
/// and a tenant's last active owner cannot be demoted or disabled (409).
#[utoipa::path(patch, path = "/users/{id}", tag = "client", security(("client_token" = [])),
    params(("id" = String, Path)), request_body = UpdateUser,
    responses((status = 200, body = UserView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn update_user(
    State(state): State<AppState>,
    principal: ClientPrincipal,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<UpdateUser>,
) -> ApiResult<Json<UserView>> {
    principal.require(Permission::UsersManage)?;
    principal.require_user("users")?;
    let id = Uuid::parse_str(&id).map_err(|_| ApiError::not_found("user"))?;
    let target = state
        .store
        .user_by_id(&principal.scope, id)
        .await?
        .ok_or_else(|| ApiError::not_found("user"))?;
    if principal.user_id() == Some(id) {
        return Err(ApiError::forbidden(
            "you cannot change your own account here (role, status or password); ask another owner or admin",
        ));
    }
    // An unreadable stored role is treated as the highest, so nobody but an owner acts.
    let target_role = Role::parse(&target.role).unwrap_or(Role::Owner);
    may_manage(&principal, target_role)?;
    if let Some(role) = body.role {
        may_grant(&principal, role, "/role")?;
    }
    if let Some(status) = &body.status
        && status != "active"
        && status != "disabled"
    {
        return Err(ApiError::field("/status", "must be `active` or `disabled`"));
    }
    let password_hash = match body.password {
        Some(p) => {
            validate::password(&p, "/password")?;
            Some(auth::hash_password(p).await?)
        }
        None => None,
    };
    let changes = UserChanges {
        role: body.role.map(|r| r.as_str().to_string()),
        status: body.status,
        password_hash,
        checked_role: Some(target.role.clone()),
    };
    match state
        .store
        .update_user(&principal.scope, id, changes)
        .await?
    {
        UserUpdate::Updated(user) => Ok(Json(user.into())),
        UserUpdate::NotFound => Err(ApiError::not_found("user")),
        UserUpdate::RoleChanged => Err(ApiError::conflict(
            "user_changed",
            "the user's role changed while this change was checked; read the user again",
        )),
        UserUpdate::LastOwner => Err(ApiError::conflict(
            "last_owner",
            "this is the tenant's last active owner: make another user owner first",
        )),
    }
}

#[derive(Serialize, utoipa::ToSchema)]
struct ApiKeyView {
    id: Uuid,
    name: String,
    /// The first characters of the key, to recognise it by.
    prefix: String,
    role: String,
    created_at: String,
    revoked_at: Option<String>,
}

impl From<ApiKey> for ApiKeyView {
    fn from(k: ApiKey) -> Self {
        Self {
            id: k.id,
            name: k.name,
            prefix: k.prefix,
            role: k.role,
            created_at: format_micros(k.created_at),
            revoked_at: k.revoked_at.map(format_micros),
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
struct NewApiKey {
    #[serde(flatten)]
    view: ApiKeyView,
    /// The key itself: shown this once, stored only as a hash.
    key: String,
}

#[derive(Serialize, utoipa::ToSchema)]
struct ApiKeyList {
    items: Vec<ApiKeyView>,
    /// Pass as `cursor` for the next page; null on the last page.
    next_cursor: Option<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateApiKey {
    /// Trimmed; not blank, no control characters.
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*[^\\s\\x00-\\x1f\\x7f-\\x9f][^\\x00-\\x1f\\x7f-\\x9f]*$"
    )]
    name: String,
    /// The role the key acts with; `member` if absent, never above the creator's.
    role: Option<Role>,
}

/// The tenant's API keys in creation order, a page at a time (never the keys themselves).
#[utoipa::path(get, path = "/api-keys", tag = "client", security(("client_token" = [])),
    params(PageQuery),
    responses((status = 200, body = ApiKeyList), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn list_api_keys(
    State(state): State<AppState>,
    principal: ClientPrincipal,
    Query(query): Query<PageQuery>,
) -> ApiResult<Json<ApiKeyList>> {
    principal.require(Permission::ApiKeysManage)?;
    let limit = query.limit()?;
    let rows = state
        .store
        .list_api_keys(&principal.scope, query.after_id()?, limit + 1)
        .await?;
    let (rows, next_cursor) = validate::page(rows, limit, |k| crate::records::encode_cursor(k.id));
    Ok(Json(ApiKeyList {
        items: rows.into_iter().map(Into::into).collect(),
        next_cursor,
    }))
}

/// Create an API key for machine clients. The response is the only time the key is shown.
#[utoipa::path(post, path = "/api-keys", tag = "client", security(("client_token" = [])),
    request_body = CreateApiKey,
    responses((status = 201, body = NewApiKey), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn create_api_key(
    State(state): State<AppState>,
    principal: ClientPrincipal,
    JsonBody(body): JsonBody<CreateApiKey>,
) -> ApiResult<(StatusCode, Json<NewApiKey>)> {
    principal.require(Permission::ApiKeysManage)?;
    let user_id = principal.require_user("API keys")?;
    let name = validate::name(&body.name, "/name", 100)?;
    let role = body.role.unwrap_or(Role::Member);
    may_grant(&principal, role, "/role")?;
    let key = auth::new_secret("sfk_");
    let prefix: String = key.chars().take(12).collect();
    let stored = state
        .store
        .create_api_key(
            &principal.scope,
            &name,
            &prefix,
            &auth::sha256(&key),
            role.as_str(),
            user_id,
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(NewApiKey {
            view: stored.into(),
            key,
        }),
    ))
}

/// Revoke an API key; it stops working at once. Only the key's creator, or a role that may
/// change its creator (strictly higher, or an owner), may revoke it; an API key is never
/// the creator.
#[utoipa::path(delete, path = "/api-keys/{id}", tag = "client", security(("client_token" = [])),
    params(("id" = String, Path)),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn revoke_api_key(
    State(state): State<AppState>,
    principal: ClientPrincipal,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    principal.require(Permission::ApiKeysManage)?;
    let id = Uuid::parse_str(&id).map_err(|_| ApiError::not_found("API key"))?;
    let (key, creator_role) = state
        .store
        .live_api_key(&principal.scope, id)
        .await?
        .ok_or_else(|| ApiError::not_found("API key"))?;
    // A creator who no longer exists (or whose role is unreadable) counts as an owner.
    let creator_role = creator_role
        .as_deref()
        .and_then(Role::parse)
        .unwrap_or(Role::Owner);
    let is_creator = principal.user_id() == Some(key.created_by);
    if !principal.role.may_revoke_key(is_creator, creator_role) {
        return Err(ApiError::forbidden(format!(
            "the {} role may not revoke a key made by a user with the {} role; only its \
             creator, a higher role or an owner may",
            principal.role.as_str(),
            creator_role.as_str()
        )));
    }
    if state.store.revoke_api_key(&principal.scope, id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("API key"))
    }
}

#[derive(Serialize, utoipa::ToSchema)]
struct RecordTypeView {
    id: String,
    name: String,
    /// The JSON Schema records' `data` is validated against; null when any object goes.
    #[schema(value_type = Option<Object>)]
    schema: Option<Value>,
    version: i64,
    updated_at: String,
}

impl From<RecordType> for RecordTypeView {
    fn from(t: RecordType) -> Self {
        Self {
            id: t.id,
            name: t.name,
            schema: t.schema.map(|s| s.0),
            version: t.version,
            updated_at: format_micros(t.updated_at),
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
struct RecordTypeList {
    items: Vec<RecordTypeView>,
    /// Pass as `cursor` for the next page; null on the last page.
    next_cursor: Option<String>,
}

/// The tenant's record types by id, each with the schema its records are validated
/// against, a page at a time.
#[utoipa::path(get, path = "/record-types", tag = "client", security(("client_token" = [])),
    params(PageQuery),
    responses((status = 200, body = RecordTypeList), (status = 400, body = ErrorBody)))]
async fn list_record_types(
    State(state): State<AppState>,
    principal: ClientPrincipal,
    Query(query): Query<PageQuery>,
) -> ApiResult<Json<RecordTypeList>> {
    principal.require(Permission::RecordsRead)?;
    let limit = query.limit()?;
    let after = query.after_key(valid_type_id)?;
    let rows = state
        .store
        .list_record_types(&principal.scope, after.as_deref(), limit + 1)
        .await?;
    let (rows, next_cursor) = validate::page(rows, limit, |t| validate::key_cursor(&t.id));
    Ok(Json(RecordTypeList {
        items: rows.into_iter().map(Into::into).collect(),
        next_cursor,
    }))
}

/// One record type.
#[utoipa::path(get, path = "/record-types/{type}", tag = "client", security(("client_token" = [])),
    params(("type" = String, Path)),
    responses((status = 200, body = RecordTypeView), (status = 404, body = ErrorBody)))]
async fn get_record_type(
    State(state): State<AppState>,
    principal: ClientPrincipal,
    Path(record_type): Path<String>,
) -> ApiResult<Json<RecordTypeView>> {
    principal.require(Permission::RecordsRead)?;
    let found = match valid_type_id(&record_type) {
        true => {
            state
                .store
                .record_type(&principal.scope, &record_type)
                .await?
        }
        false => None,
    };
    Ok(Json(
        found
            .ok_or(crate::error::RecordError::UnknownType(record_type))?
            .into(),
    ))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct PutRecordType {
    /// Trimmed; not blank, no control characters.
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*[^\\s\\x00-\\x1f\\x7f-\\x9f][^\\x00-\\x1f\\x7f-\\x9f]*$"
    )]
    name: String,
    /// A JSON Schema (draft 2020-12 unless `$schema` says otherwise) for records' `data`;
    /// null or absent accepts any object. Remote `$ref`s are refused.
    #[schema(value_type = Option<Object>)]
    schema: Option<Value>,
}

/// Define a record type or replace its name and schema (owners and admins). Later writes
/// are validated against the new schema; existing records are left as they are.
#[utoipa::path(put, path = "/record-types/{type}", tag = "client", security(("client_token" = [])),
    params(("type" = String, Path, pattern = "^[a-z][a-z0-9_]{0,39}$",
             description = "1-40 lowercase letters, digits and `_`, starting with a letter")),
    request_body = PutRecordType,
    responses((status = 200, body = RecordTypeView), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn put_record_type(
    State(state): State<AppState>,
    principal: ClientPrincipal,
    Path(record_type): Path<String>,
    JsonBody(body): JsonBody<PutRecordType>,
) -> ApiResult<Json<RecordTypeView>> {
    principal.require(Permission::SchemasManage)?;
    if !valid_type_id(&record_type) {
        return Err(ApiError::field(
            "",
            "a record type id is 1-40 lowercase letters, digits and `_`, starting with a letter",
        )
        .with_details(serde_json::json!({ "errors": [{ "path": "type", "message": "invalid record type id" }] })));
    }
    let name = validate::name(&body.name, "/name", 100)?;
    let schema = body.schema.filter(|s| !s.is_null());
    if let Some(schema) = &schema {
        check_json(schema, "/schema", MAX_SCHEMA_DEPTH)?;
        compile_schema(schema)
            .map_err(|e| ApiError::field("/schema", format!("not a usable JSON Schema: {e}")))?;
    }
    let stored = state
        .store
        .put_record_type(&principal.scope, &record_type, &name, schema.as_ref())
        .await?;
    state.schemas.forget(&principal.scope, &record_type);
    Ok(Json(stored.into()))
}
