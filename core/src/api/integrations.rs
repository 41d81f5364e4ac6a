//! Contract 0.2.0's routes: connections (the provider's app settings, each tenant's
//! credentials and OAuth2 authorization), the OAuth2 callback, inbound webhooks, and
//! plugin schedules. Every rule lives in the kernel's connection, webhook and schedule
//! services; these handlers translate.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use streamflow_runtime::integration::ConnectionUrls;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, ApiResult, ErrorBody};
use super::extract::{ClientPrincipal, ProviderPrincipal};
use super::provider::tenant;
use super::{AppState, JsonBody};
use crate::kernel::webhooks::{Inbound, MAX_BODY, WebhookError};
use crate::store::TenantScope;
use crate::store::integrations::ReceiptRow;
use crate::tenancy::Permission;

pub fn provider_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(provider_get_app, provider_put_app))
        .routes(routes!(provider_connections))
        .routes(routes!(provider_schedules))
        .routes(routes!(provider_run_schedule))
        .routes(routes!(provider_receipts))
        .routes(routes!(provider_plugin_receipts))
}

pub fn client_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_connections))
        .routes(routes!(authorize))
        .routes(routes!(put_credentials, disconnect))
        .routes(routes!(list_schedules))
        .routes(routes!(run_schedule))
        .routes(routes!(list_receipts))
}

/// The public routes: the OAuth2 callback and webhook addresses (authenticated by their
/// `state` and signatures, not by a token). Outside the OpenAPI document's realms.
pub fn public_router() -> Router<AppState> {
    use axum::routing::{any, get};
    Router::new()
        .route("/oauth/callback", get(callback))
        .route("/webhooks/i/{token}", any(installation_webhook))
        .route("/webhooks/i/{token}/{*rest}", any(installation_webhook))
        .route("/webhooks/{plugin}", any(app_webhook))
        .route("/webhooks/{plugin}/{*rest}", any(app_webhook))
}

use super::plugins::is_plugin_id as plugin_id;

fn connection_id(id: &str) -> ApiResult<()> {
    let ok = (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(ApiError::not_found("connection"))
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct AppRequest {
    /// The app-level settings the manifest's `provider-settings` schema describes (client
    /// id and secret, app key, certificate). A secret left out keeps its stored value,
    /// one given as null is removed; omitted, the settings stay as they are.
    #[schema(value_type = Option<Object>)]
    settings: Option<Value>,
    /// URLs that replace the manifest's defaults (a sandbox, or a local service); omitted,
    /// the replacements stay as they are (`{}` removes them).
    #[schema(value_type = Option<Object>)]
    urls: Option<ConnectionUrls>,
}

/// A connection's app settings (secrets as `{"set": true}`), URLs and redirect URI.
#[utoipa::path(get, path = "/plugins/{id}/connections/{connection}", tag = "provider", security(("provider_token" = [])),
    params(("id" = String, Path), ("connection" = String, Path)),
    responses((status = 200, body = Object), (status = 404, body = ErrorBody)))]
async fn provider_get_app(
    State(state): State<AppState>,
    _: ProviderPrincipal,
    Path((id, connection)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    plugin_id(&id)?;
    connection_id(&connection)?;
    Ok(Json(state.connections().app_view(&id, &connection).await?))
}

/// Set a connection's app settings and, optionally, URLs replacing the manifest's.
#[utoipa::path(put, path = "/plugins/{id}/connections/{connection}", tag = "provider", security(("provider_token" = [])),
    params(("id" = String, Path), ("connection" = String, Path)), request_body = AppRequest,
    responses((status = 200, body = Object), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn provider_put_app(
    State(state): State<AppState>,
    _: ProviderPrincipal,
    Path((id, connection)): Path<(String, String)>,
    JsonBody(body): JsonBody<AppRequest>,
) -> ApiResult<Json<Value>> {
    plugin_id(&id)?;
    connection_id(&connection)?;
    let view = state
        .connections()
        .put_app(&id, &connection, body.settings, body.urls)
        .await?;
    tracing::info!(plugin = %id, connection = %connection, "connection app settings changed");
    Ok(Json(view))
}

#[derive(Serialize, utoipa::ToSchema)]
struct Items {
    #[schema(value_type = Vec<Object>)]
    items: Vec<Value>,
}

/// A tenant's connections, as its admins see them.
#[utoipa::path(get, path = "/tenants/{slug}/connections", tag = "provider", security(("provider_token" = [])),
    params(("slug" = String, Path)), responses((status = 200, body = Items), (status = 404, body = ErrorBody)))]
async fn provider_connections(
    State(state): State<AppState>,
    _: ProviderPrincipal,
    Path(slug): Path<String>,
) -> ApiResult<Json<Items>> {
    let tenant = tenant(&state, &slug).await?;
    let items = state
        .connections()
        .list(&TenantScope::new(tenant.id))
        .await?;
    Ok(Json(Items { items }))
}

/// Every connection the business's installed plugins declare: `{plugin, connection,
/// kind, status, metadata, expires_at, last_error}`, status one of `not_connected`,
/// `connected`, `expired`, `error`. Never a credential.
#[utoipa::path(get, path = "/connections", tag = "connections", security(("client_token" = [])),
    responses((status = 200, body = Items)))]
async fn list_connections(
    State(state): State<AppState>,
    principal: ClientPrincipal,
) -> ApiResult<Json<Items>> {
    principal.require(Permission::RecordsRead)?;
    let items = state.connections().list(&principal.scope).await?;
    Ok(Json(Items { items }))
}

#[derive(Serialize, utoipa::ToSchema)]
struct AuthorizeAnswer {
    /// Send the admin's browser here; the service redirects back to `/oauth/callback`.
    authorize_url: String,
}

/// Start connecting an OAuth2 (authorization code) connection. Owners and admins.
#[utoipa::path(post, path = "/connections/{plugin}/{connection}/authorize", tag = "connections", security(("client_token" = [])),
    params(("plugin" = String, Path), ("connection" = String, Path)),
    responses((status = 200, body = AuthorizeAnswer), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn authorize(
    State(state): State<AppState>,
    principal: ClientPrincipal,
    Path((plugin, connection)): Path<(String, String)>,
) -> ApiResult<Json<AuthorizeAnswer>> {
    principal.require(Permission::IntegrationsManage)?;
    let user =
        principal.require_user("connect a service (the authorization is bound to a person)")?;
    plugin_id(&plugin)?;
    connection_id(&connection)?;
    let authorize_url = state
        .connections()
        .authorize(&principal.scope, user, &plugin, &connection)
        .await?;
    Ok(Json(AuthorizeAnswer { authorize_url }))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CredentialsRequest {
    /// What the manifest's `tenant-settings` schema describes: an API key, the business's
    /// own client id and secret, an account id, a client certificate and key.
    #[schema(value_type = Object)]
    credentials: Value,
}

/// Set the business's own credentials for a connection (an API key, client credentials,
/// a certificate). A client credentials connection requests its first token now, so a
/// wrong secret is said here. Owners and admins.
#[utoipa::path(put, path = "/connections/{plugin}/{connection}", tag = "connections", security(("client_token" = [])),
    params(("plugin" = String, Path), ("connection" = String, Path)), request_body = CredentialsRequest,
    responses((status = 200, body = Object), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 422, body = ErrorBody), (status = 502, body = ErrorBody)))]
async fn put_credentials(
    State(state): State<AppState>,
    principal: ClientPrincipal,
    Path((plugin, connection)): Path<(String, String)>,
    JsonBody(body): JsonBody<CredentialsRequest>,
) -> ApiResult<Json<Value>> {
    principal.require(Permission::IntegrationsManage)?;
    plugin_id(&plugin)?;
    connection_id(&connection)?;
    let view = state
        .connections()
        .put_credentials(&principal.scope, &plugin, &connection, body.credentials)
        .await?;
    tracing::info!(tenant = %principal.scope.tenant_id(), plugin = %plugin, connection = %connection,
        "connection credentials set");
    Ok(Json(view))
}

/// Disconnect: the credentials and tokens are deleted (and the token revoked where the
/// service offers revocation). Owners and admins.
#[utoipa::path(delete, path = "/connections/{plugin}/{connection}", tag = "connections", security(("client_token" = [])),
    params(("plugin" = String, Path), ("connection" = String, Path)),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn disconnect(
    State(state): State<AppState>,
    principal: ClientPrincipal,
    Path((plugin, connection)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    principal.require(Permission::IntegrationsManage)?;
    plugin_id(&plugin)?;
    connection_id(&connection)?;
    state
        .connections()
        .disconnect(&principal.scope, &plugin, &connection)
        .await?;
    tracing::info!(tenant = %principal.scope.tenant_id(), plugin = %plugin, connection = %connection,
        "connection disconnected");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct CallbackQuery {
    #[serde(flatten)]
    all: Map<String, Value>,
}

fn page(status: StatusCode, title: &str, text: &str, back: &str) -> Response {
    let escape = |t: &str| {
        t.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
    };
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\">\
         <title>{t}</title></head><body style=\"font-family:system-ui;max-width:36rem;margin:4rem auto;padding:0 1rem\">\
         <h1>{t}</h1><p>{m}</p><p><a href=\"{b}\">Back to StreamFlow</a></p></body></html>",
        t = escape(title),
        m = escape(text),
        b = escape(back)
    );
    let mut response = (status, Html(html)).into_response();
    response.extensions_mut().insert(super::Verbatim);
    let headers = response.headers_mut();
    headers.insert(
        "content-security-policy",
        HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
    );
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    headers.insert("cache-control", HeaderValue::from_static("no-store"));
    response
}

/// The end of an OAuth2 authorization: the service sends the admin's browser here.
async fn callback(State(state): State<AppState>, Query(query): Query<CallbackQuery>) -> Response {
    let back = state.config.public_base();
    let text = |k: &str| {
        query
            .all
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let (code, auth_state) = (text("code"), text("state"));
    if auth_state.is_empty() {
        return page(
            StatusCode::BAD_REQUEST,
            "Not connected",
            "This link has no authorization state; start again from StreamFlow.",
            &back,
        );
    }
    if code.is_empty() {
        // The admin declined, or the service refused: its reason is shown (the state
        // expires unused).
        let reason = match text("error").as_str() {
            "" => "the service sent no authorization code".to_string(),
            e => format!(
                "the service answered {}",
                e.chars().take(64).collect::<String>()
            ),
        };
        return page(
            StatusCode::BAD_REQUEST,
            "Not connected",
            &format!("{reason}; start again from StreamFlow."),
            &back,
        );
    }
    match state
        .connections()
        .callback(&auth_state, &code, &query.all)
        .await
    {
        Ok((_, plugin, connection)) => page(
            StatusCode::OK,
            "Connected",
            &format!("{plugin}'s {connection} connection is ready. You can close this page."),
            &back,
        ),
        Err(e) => page(
            StatusCode::BAD_REQUEST,
            "Not connected",
            &e.to_string(),
            &back,
        ),
    }
}

fn inbound(
    method: Method,
    rest: Option<String>,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Inbound, ApiError> {
    if body.len() > MAX_BODY {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("webhook bodies are at most {MAX_BODY} bytes"),
        ));
    }
    let headers = headers
        .iter()
        .filter(|(k, _)| *k != axum::http::header::COOKIE)
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    Ok(Inbound {
        method: method.as_str().to_string(),
        path: format!("/{}", rest.unwrap_or_default()),
        headers,
        body: body.to_vec(),
    })
}

fn answer(result: Result<crate::kernel::webhooks::Answer, WebhookError>) -> Response {
    match result {
        Ok(answer) => {
            let mut response = (
                StatusCode::from_u16(answer.status).unwrap_or(StatusCode::OK),
                answer.body,
            )
                .into_response();
            response.extensions_mut().insert(super::Verbatim);
            for (k, v) in answer.headers {
                if let (Ok(k), Ok(v)) = (
                    HeaderName::from_bytes(k.as_bytes()),
                    HeaderValue::from_str(&v),
                ) {
                    response.headers_mut().insert(k, v);
                }
            }
            response
        }
        Err(WebhookError::NotFound) => ApiError::not_found("webhook address").into_response(),
        Err(WebhookError::Unauthorized(why)) => {
            ApiError::new(StatusCode::UNAUTHORIZED, "signature_invalid", why).into_response()
        }
        Err(e @ WebhookError::RateLimited) => {
            ApiError::too_many_requests(e.to_string(), 1).into_response()
        }
        Err(WebhookError::Store(e)) => ApiError::from(e).into_response(),
    }
}

#[derive(Deserialize)]
struct InstallationAddress {
    token: String,
    rest: Option<String>,
}

async fn installation_webhook(
    State(state): State<AppState>,
    method: Method,
    Path(address): Path<InstallationAddress>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if address.token.len() > 64
        || !address
            .token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return ApiError::not_found("webhook address").into_response();
    }
    let inbound = match inbound(method, address.rest, &headers, body) {
        Ok(i) => i,
        Err(e) => return e.into_response(),
    };
    answer(
        state
            .webhooks()
            .per_installation(&address.token, inbound)
            .await,
    )
}

#[derive(Deserialize)]
struct AppAddress {
    plugin: String,
    rest: Option<String>,
}

async fn app_webhook(
    State(state): State<AppState>,
    method: Method,
    Path(address): Path<AppAddress>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if plugin_id(&address.plugin).is_err() {
        return ApiError::not_found("webhook address").into_response();
    }
    let inbound = match inbound(method, address.rest, &headers, body) {
        Ok(i) => i,
        Err(e) => return e.into_response(),
    };
    answer(state.webhooks().app_wide(&address.plugin, inbound).await)
}

async fn installed(state: &AppState, scope: &TenantScope, id: &str) -> ApiResult<()> {
    plugin_id(id)?;
    state
        .store
        .get_installation(scope, id)
        .await?
        .map(|_| ())
        .ok_or_else(|| ApiError::not_found("installation"))
}

/// An installation's schedules: `{items: [{id, every, last_run_at, next_run_at,
/// last_error}]}`.
#[utoipa::path(get, path = "/plugins/{id}/schedules", tag = "plugins", security(("client_token" = [])),
    params(("id" = String, Path)), responses((status = 200, body = Items), (status = 404, body = ErrorBody)))]
async fn list_schedules(
    State(state): State<AppState>,
    principal: ClientPrincipal,
    Path(id): Path<String>,
) -> ApiResult<Json<Items>> {
    principal.require(Permission::RecordsRead)?;
    installed(&state, &principal.scope, &id).await?;
    let items = state.schedules().list(&principal.scope, &id).await?;
    Ok(Json(Items { items }))
}

#[derive(Serialize, utoipa::ToSchema)]
struct RunAnswer {
    id: String,
    /// `ok` or `failed`.
    status: &'static str,
    ran_at: String,
    error: Option<String>,
}

async fn run(
    state: &AppState,
    scope: &TenantScope,
    id: &str,
    schedule: &str,
) -> ApiResult<Json<RunAnswer>> {
    installed(state, scope, id).await?;
    let outcome = state.schedules().run_now(scope, id, schedule).await?;
    tracing::info!(tenant = %scope.tenant_id(), plugin = %id, schedule, "schedule run on request");
    Ok(Json(RunAnswer {
        id: schedule.to_string(),
        status: if outcome.error.is_some() {
            "failed"
        } else {
            "ok"
        },
        ran_at: crate::store::format_micros(outcome.ran_at),
        error: outcome.error,
    }))
}

/// Run a schedule now (it counts as this interval's run); answers 200 with the outcome.
/// Owners and admins.
#[utoipa::path(post, path = "/plugins/{id}/schedules/{schedule}/run", tag = "plugins", security(("client_token" = [])),
    params(("id" = String, Path), ("schedule" = String, Path)),
    responses((status = 200, body = RunAnswer), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn run_schedule(
    State(state): State<AppState>,
    principal: ClientPrincipal,
    Path((id, schedule)): Path<(String, String)>,
) -> ApiResult<Json<RunAnswer>> {
    principal.require(Permission::IntegrationsManage)?;
    run(&state, &principal.scope, &id, &schedule).await
}

/// A tenant's installation's schedules.
#[utoipa::path(get, path = "/tenants/{slug}/plugins/{id}/schedules", tag = "provider", security(("provider_token" = [])),
    params(("slug" = String, Path), ("id" = String, Path)), responses((status = 200, body = Items), (status = 404, body = ErrorBody)))]
async fn provider_schedules(
    State(state): State<AppState>,
    _: ProviderPrincipal,
    Path((slug, id)): Path<(String, String)>,
) -> ApiResult<Json<Items>> {
    let scope = TenantScope::new(tenant(&state, &slug).await?.id);
    installed(&state, &scope, &id).await?;
    Ok(Json(Items {
        items: state.schedules().list(&scope, &id).await?,
    }))
}

/// Run a tenant's schedule now.
#[utoipa::path(post, path = "/tenants/{slug}/plugins/{id}/schedules/{schedule}/run", tag = "provider", security(("provider_token" = [])),
    params(("slug" = String, Path), ("id" = String, Path), ("schedule" = String, Path)),
    responses((status = 200, body = RunAnswer), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn provider_run_schedule(
    State(state): State<AppState>,
    _: ProviderPrincipal,
    Path((slug, id, schedule)): Path<(String, String, String)>,
) -> ApiResult<Json<RunAnswer>> {
    let scope = TenantScope::new(tenant(&state, &slug).await?.id);
    run(&state, &scope, &id, &schedule).await
}

const RECEIPTS_PAGE: i64 = 200;

fn receipt_json(r: ReceiptRow) -> Value {
    json!({
        "id": r.id,
        "address": r.address,
        "delivery_id": r.delivery_id,
        "received_at": crate::store::format_micros(r.received_at),
        "verified": r.verified,
        "status": r.status,
        "duration_ms": r.duration_ms,
        "outcome": r.outcome,
        "body_bytes": r.body_bytes,
        "body_sha256": r.body_sha256,
    })
}

/// Every webhook receipt of a plugin, newest first (at most 200), each with its tenant
/// (`null`: an app-wide delivery that was refused or reached no tenant).
#[utoipa::path(get, path = "/plugins/{id}/webhooks", tag = "provider", security(("provider_token" = [])),
    params(("id" = String, Path)), responses((status = 200, body = Items), (status = 404, body = ErrorBody)))]
async fn provider_plugin_receipts(
    State(state): State<AppState>,
    _: ProviderPrincipal,
    Path(id): Path<String>,
) -> ApiResult<Json<Items>> {
    plugin_id(&id)?;
    let rows = state.store.receipts(None, &id, RECEIPTS_PAGE).await?;
    Ok(Json(Items {
        items: rows
            .into_iter()
            .map(|r| {
                let tenant = r.tenant_id;
                let mut item = receipt_json(r);
                item["tenant_id"] = json!(tenant);
                item
            })
            .collect(),
    }))
}

/// The newest webhook receipts of an installation (at most 200): time, verified,
/// status, duration, outcome, body size and hash; never the body. Owners and admins.
#[utoipa::path(get, path = "/plugins/{id}/webhooks", tag = "plugins", security(("client_token" = [])),
    params(("id" = String, Path)), responses((status = 200, body = Items), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn list_receipts(
    State(state): State<AppState>,
    principal: ClientPrincipal,
    Path(id): Path<String>,
) -> ApiResult<Json<Items>> {
    principal.require(Permission::IntegrationsManage)?;
    installed(&state, &principal.scope, &id).await?;
    let rows = state
        .store
        .receipts(Some(&principal.scope), &id, RECEIPTS_PAGE)
        .await?;
    Ok(Json(Items {
        items: rows.into_iter().map(receipt_json).collect(),
    }))
}

/// A tenant's webhook receipts for one plugin.
#[utoipa::path(get, path = "/tenants/{slug}/plugins/{id}/webhooks", tag = "provider", security(("provider_token" = [])),
    params(("slug" = String, Path), ("id" = String, Path)), responses((status = 200, body = Items), (status = 404, body = ErrorBody)))]
async fn provider_receipts(
    State(state): State<AppState>,
    _: ProviderPrincipal,
    Path((slug, id)): Path<(String, String)>,
) -> ApiResult<Json<Items>> {
    let scope = TenantScope::new(tenant(&state, &slug).await?.id);
    plugin_id(&id)?;
    let rows = state
        .store
        .receipts(Some(&scope), &id, RECEIPTS_PAGE)
        .await?;
    Ok(Json(Items {
        items: rows.into_iter().map(receipt_json).collect(),
    }))
}
