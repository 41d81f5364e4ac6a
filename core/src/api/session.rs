//! Login, refresh and logout, shared by the three realms' routers.

use std::net::IpAddr;

use serde::Deserialize;
use uuid::Uuid;

use super::AppState;
use super::error::{ApiError, ApiResult};
use super::validate;
use crate::auth::{self, Realm, TokenPair};
use crate::store::tokens::Rotation;

/// `{email, password}`: the provider and developer login body.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// An email address, `name@example.com` (trimmed and lowercased).
    #[schema(
        max_length = 254,
        pattern = "^[^@\\s\\x00-\\x1f\\x7f-\\x9f]+@[^@.\\s\\x00-\\x1f\\x7f-\\x9f]+(\\.[^@.\\s\\x00-\\x1f\\x7f-\\x9f]+)+$"
    )]
    pub email: String,
    pub password: String,
}

/// `{refresh_token}`: the body of refresh and logout.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    pub refresh_token: String,
}

/// Applies the login rate limits before any password is checked: refuses past the
/// address and account × address limits, and holds the attempt a while when the account
/// is being tried from many addresses (see [`auth::LoginLimiter`]).
pub async fn rate_limit(state: &AppState, ip: IpAddr, account_key: &str) -> ApiResult<()> {
    let delay = state.login_limiter.check(ip, account_key).map_err(|wait| {
        metrics::counter!("streamflow_login_rate_limited_total").increment(1);
        ApiError::too_many_requests(
            format!("too many login attempts; try again in {wait} seconds"),
            wait,
        )
    })?;
    if !delay.is_zero() {
        metrics::counter!("streamflow_login_delayed_total").increment(1);
        tokio::time::sleep(delay).await;
    }
    Ok(())
}

/// Provider or developer login: checks the password and opens a session.
pub async fn platform_login(
    state: &AppState,
    realm: Realm,
    ip: IpAddr,
    body: LoginRequest,
) -> ApiResult<TokenPair> {
    let email = validate::email(&body.email, "/email")?;
    rate_limit(state, ip, &format!("{}|{email}", realm.as_str())).await?;
    let kind = realm.account_kind().ok_or_else(ApiError::unauthorized)?;
    let account = state.store.account_by_email(kind, &email).await?;
    let hash = account.as_ref().map(|a| a.password_hash.clone());
    if !auth::verify_password(body.password, hash).await {
        metrics::counter!("streamflow_login_failures_total", "realm" => realm.as_str())
            .increment(1);
        return Err(ApiError::invalid_credentials());
    }
    let account = account.expect("verified passwords belong to an account");
    Ok(state
        .auth
        .start_session(&state.store, realm, account.id, None)
        .await?)
}

/// Rotates a refresh token. The subject must still be allowed in: a deleted account, a
/// disabled user or a suspended tenant gets 401 even with a live refresh token.
pub async fn refresh(state: &AppState, realm: Realm, body: RefreshRequest) -> ApiResult<TokenPair> {
    let presented = auth::sha256(&body.refresh_token);
    // Check the subject before spending the token: a disabled user's client retrying after
    // being re-enabled must not look like a thief replaying a spent token.
    if let Some(grant) = state
        .store
        .refresh_grant(realm.as_str(), &presented)
        .await?
    {
        // However often it was refreshed, a session ends a fixed time after its login.
        if state.auth.session_over(grant.session_started_at) {
            return Err(ApiError::new(
                axum::http::StatusCode::UNAUTHORIZED,
                "session_expired",
                format!(
                    "this session began more than {} ago and cannot be refreshed any more; \
                     log in again",
                    humanize(state.auth.session_max_age)
                ),
            ));
        }
        if !subject_still_allowed(state, realm, grant.subject_id, grant.tenant_id).await? {
            return Err(ApiError::unauthorized());
        }
    }
    let new_refresh = auth::new_secret("sfr_");
    let rotation = state
        .store
        .rotate_refresh_token(
            realm.as_str(),
            &presented,
            &auth::sha256(&new_refresh),
            state.auth.refresh_expiry(),
            state.auth.session_max_age_micros(),
        )
        .await?;
    let grant = match rotation {
        Rotation::Rotated(grant) => grant,
        Rotation::Reused => {
            tracing::warn!(
                realm = realm.as_str(),
                "refresh token reused; its family is revoked"
            );
            metrics::counter!("streamflow_refresh_reuse_total").increment(1);
            return Err(ApiError::new(
                axum::http::StatusCode::UNAUTHORIZED,
                "refresh_token_reused",
                "this refresh token was already used; every session from the same login is \
                 now signed out. Log in again.",
            ));
        }
        Rotation::Invalid => return Err(ApiError::unauthorized()),
    };
    Ok(state
        .auth
        .pair(realm, grant.subject_id, grant.tenant_id, new_refresh))
}

/// A session lifetime as people say it: `30 days`, `12 hours`, `90 seconds`.
fn humanize(age: std::time::Duration) -> String {
    let secs = age.as_secs();
    let (n, unit) = match secs {
        s if s >= 86_400 && s % 86_400 == 0 => (s / 86_400, "day"),
        s if s >= 3_600 && s % 3_600 == 0 => (s / 3_600, "hour"),
        s if s >= 60 && s % 60 == 0 => (s / 60, "minute"),
        s => (s, "second"),
    };
    format!("{n} {unit}{}", if n == 1 { "" } else { "s" })
}

async fn subject_still_allowed(
    state: &AppState,
    realm: Realm,
    subject: Uuid,
    tenant: Option<Uuid>,
) -> ApiResult<bool> {
    Ok(match (realm.account_kind(), tenant) {
        (Some(kind), None) => state.store.account_by_id(kind, subject).await?.is_some(),
        (None, Some(tenant)) => state
            .store
            .user_principal(tenant, subject)
            .await?
            .is_some_and(|p| p.active),
        _ => false,
    })
}

/// Signs out every session of the login this refresh token came from.
pub async fn logout(state: &AppState, realm: Realm, body: RefreshRequest) -> ApiResult<()> {
    state
        .store
        .revoke_refresh_family(realm.as_str(), &auth::sha256(&body.refresh_token))
        .await?;
    // Unknown tokens get the same answer: logout reveals nothing.
    Ok(())
}
