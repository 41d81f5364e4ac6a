//! Extractors that authenticate a request for one realm. A handler that takes one of these
//! cannot run without a valid credential of that realm; any failure is the same 401.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use uuid::Uuid;

use super::AppState;
use super::error::{ApiError, ApiResult};
use crate::auth::{Realm, sha256};
use crate::store::accounts::Account;
use crate::tenancy::{Permission, Role, TenantScope};

fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// A signed-in provider operator, with the account as it is now.
#[derive(Debug, Clone)]
pub struct ProviderPrincipal {
    pub account: Account,
}

/// A signed-in plugin developer, with the account as it is now.
#[derive(Debug, Clone)]
pub struct DeveloperPrincipal {
    pub account: Account,
}

async fn platform_account(parts: &Parts, state: &AppState, realm: Realm) -> ApiResult<Account> {
    let token = bearer(parts).ok_or_else(ApiError::unauthorized)?;
    let claims = state
        .auth
        .verify_access(realm, token)
        .ok_or_else(ApiError::unauthorized)?;
    let kind = realm.account_kind().ok_or_else(ApiError::unauthorized)?;
    // The account must still exist: a deleted account's tokens die with it.
    state
        .store
        .account_by_id(kind, claims.sub)
        .await?
        .ok_or_else(ApiError::unauthorized)
}

impl FromRequestParts<AppState> for ProviderPrincipal {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> ApiResult<Self> {
        let account = platform_account(parts, state, Realm::Provider).await?;
        Ok(Self { account })
    }
}

impl FromRequestParts<AppState> for DeveloperPrincipal {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> ApiResult<Self> {
        let account = platform_account(parts, state, Realm::Developer).await?;
        Ok(Self { account })
    }
}

/// How a client request authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCredential {
    User(Uuid),
    ApiKey(Uuid),
}

/// A client-realm caller: a tenant's user or one of its API keys, with its current role.
#[derive(Debug, Clone, Copy)]
pub struct ClientPrincipal {
    pub scope: TenantScope,
    pub role: Role,
    pub credential: ClientCredential,
}

impl ClientPrincipal {
    /// 403 unless the caller's role has `permission`.
    pub fn require(&self, permission: Permission) -> ApiResult<()> {
        if self.role.allows(permission) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "the {} role may not do this",
                self.role.as_str()
            )))
        }
    }

    /// 403 unless the caller may change records of `record_type` (field staff only their
    /// own kind of work: [`crate::tenancy::FIELD_RECORD_TYPES`]).
    pub fn require_record_update(&self, record_type: &str) -> ApiResult<()> {
        self.require(Permission::RecordsUpdate)?;
        if self.role.may_update_record_type(record_type) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "the {} role may update only {} records, not {record_type}",
                self.role.as_str(),
                crate::tenancy::FIELD_RECORD_TYPES.join(", ")
            )))
        }
    }

    /// The signed-in user, or 403 for an API key. Accounts and keys are managed by people:
    /// a key that could create users or keys could outlive its own revocation through them.
    pub fn require_user(&self, what: &str) -> ApiResult<Uuid> {
        self.user_id().ok_or_else(|| {
            ApiError::forbidden(format!(
                "{what} are managed by signed-in users, not by API keys"
            ))
        })
    }

    /// The user behind the request; API keys act for no user.
    pub fn user_id(&self) -> Option<Uuid> {
        match self.credential {
            ClientCredential::User(id) => Some(id),
            ClientCredential::ApiKey(_) => None,
        }
    }

    /// How the caller is named on events and in audit trails.
    pub fn actor(&self) -> String {
        match self.credential {
            ClientCredential::User(id) => format!("user:{id}"),
            ClientCredential::ApiKey(id) => format!("api_key:{id}"),
        }
    }
}

impl FromRequestParts<AppState> for ClientPrincipal {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> ApiResult<Self> {
        let token = bearer(parts).ok_or_else(ApiError::unauthorized)?;
        if token.starts_with("sfk_") {
            let (key, creator) = state
                .store
                .api_key_by_hash(&sha256(token))
                .await?
                .filter(|(_, creator)| creator.active)
                .ok_or_else(ApiError::unauthorized)?;
            // A key acts with its own role, capped by its creator's current one.
            let role = Role::parse(&key.role)
                .zip(Role::parse(&creator.role))
                .map(|(key_role, creator_role)| key_role.min(creator_role))
                .ok_or_else(ApiError::unauthorized)?;
            return Ok(Self {
                scope: TenantScope::new(key.tenant_id),
                role,
                credential: ClientCredential::ApiKey(key.id),
            });
        }
        let claims = state
            .auth
            .verify_access(Realm::Client, token)
            .ok_or_else(ApiError::unauthorized)?;
        let tenant_id = claims.tid.ok_or_else(ApiError::unauthorized)?;
        let principal = state
            .store
            .user_principal(tenant_id, claims.sub)
            .await?
            .filter(|p| p.active)
            .ok_or_else(ApiError::unauthorized)?;
        Ok(Self {
            scope: TenantScope::new(tenant_id),
            role: Role::parse(&principal.role).ok_or_else(ApiError::unauthorized)?,
            credential: ClientCredential::User(claims.sub),
        })
    }
}
