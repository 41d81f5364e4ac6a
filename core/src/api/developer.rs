//! The developer realm (`/developer/...`): plugin authors sign in. Plugin upload and
//! usage arrive with the plugin registry.

use std::net::SocketAddr;

use axum::Json;
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use serde::Serialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::error::{ApiResult, ErrorBody};
use super::extract::DeveloperPrincipal;
use super::session::{self, LoginRequest, RefreshRequest};
use super::{AppState, JsonBody};
use crate::auth::{Realm, TokenPair};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(login))
        .routes(routes!(refresh))
        .routes(routes!(logout))
        .routes(routes!(me))
}

/// Log in as a plugin developer.
#[utoipa::path(post, path = "/auth/login", tag = "developer", request_body = LoginRequest,
    responses((status = 200, body = TokenPair), (status = 401, body = ErrorBody), (status = 429, body = ErrorBody)))]
async fn login(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    JsonBody(body): JsonBody<LoginRequest>,
) -> ApiResult<Json<TokenPair>> {
    let ip = peer.ip();
    Ok(Json(
        session::platform_login(&state, Realm::Developer, ip, body).await?,
    ))
}

/// Exchange a refresh token for a new pair (the old one is spent).
#[utoipa::path(post, path = "/auth/refresh", tag = "developer", request_body = RefreshRequest,
    responses((status = 200, body = TokenPair), (status = 401, body = ErrorBody)))]
async fn refresh(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<RefreshRequest>,
) -> ApiResult<Json<TokenPair>> {
    Ok(Json(
        session::refresh(&state, Realm::Developer, body).await?,
    ))
}

/// Sign out every session of this login.
#[utoipa::path(post, path = "/auth/logout", tag = "developer", request_body = RefreshRequest,
    responses((status = 204)))]
async fn logout(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<RefreshRequest>,
) -> ApiResult<StatusCode> {
    session::logout(&state, Realm::Developer, body).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize, utoipa::ToSchema)]
struct DeveloperMe {
    id: Uuid,
    email: String,
    name: String,
    realm: &'static str,
}

/// The signed-in developer account.
#[utoipa::path(get, path = "/me", tag = "developer", security(("developer_token" = [])),
    responses((status = 200, body = DeveloperMe), (status = 401, body = ErrorBody)))]
async fn me(principal: DeveloperPrincipal) -> ApiResult<Json<DeveloperMe>> {
    let account = principal.account;
    Ok(Json(DeveloperMe {
        id: account.id,
        email: account.email,
        name: account.name,
        realm: "developer",
    }))
}
