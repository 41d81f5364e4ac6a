//! Authentication: three isolated realms (provider, developer, client), each with its own
//! signing key and token audience, so a token of one realm is refused by the others.
//!
//! Access tokens are short-lived HS256 JWTs validated with an explicit algorithm list,
//! audience and issuer (an unsigned `alg: none` token or one signed with another key fails).
//! Refresh tokens and API keys are random 256-bit strings stored only as SHA-256 hashes.
//! Passwords are hashed with argon2id off the async runtime.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::config::Config;
use crate::store::Store;
use crate::store::accounts::AccountKind;

pub mod extract;

/// The three auth realms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Realm {
    Provider,
    Developer,
    Client,
}

impl Realm {
    pub const ALL: [Realm; 3] = [Realm::Provider, Realm::Developer, Realm::Client];

    pub fn as_str(self) -> &'static str {
        match self {
            Realm::Provider => "provider",
            Realm::Developer => "developer",
            Realm::Client => "client",
        }
    }

    /// The platform account table of the provider and developer realms; the client realm's
    /// users belong to tenants instead.
    pub fn account_kind(self) -> Option<AccountKind> {
        match self {
            Realm::Provider => Some(AccountKind::Provider),
            Realm::Developer => Some(AccountKind::Developer),
            Realm::Client => None,
        }
    }

    fn audience(self) -> &'static str {
        match self {
            Realm::Provider => "streamflow:provider",
            Realm::Developer => "streamflow:developer",
            Realm::Client => "streamflow:client",
        }
    }
}

const ISSUER: &str = "streamflow";

/// The claims of an access token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    pub sub: Uuid,
    pub iat: u64,
    pub exp: u64,
    pub jti: Uuid,
    /// The tenant, for client-realm tokens only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tid: Option<Uuid>,
}

struct RealmKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

/// A freshly issued token pair, as the login and refresh routes return it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TokenPair {
    pub access_token: String,
    pub refresh_token: String,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    pub token_type: &'static str,
}

/// Signing keys and token settings of all three realms.
pub struct Auth {
    provider: RealmKeys,
    developer: RealmKeys,
    client: RealmKeys,
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
}

impl Auth {
    /// Loads each realm's signing secret from the database, creating it on first start.
    pub async fn load(store: &Store, config: &Config) -> anyhow::Result<Self> {
        let mut keys = Vec::new();
        for realm in Realm::ALL {
            let secret = store
                .realm_secret(realm.as_str(), &random_bytes::<64>())
                .await?;
            let mut validation = Validation::new(Algorithm::HS256);
            validation.set_audience(&[realm.audience()]);
            validation.set_issuer(&[ISSUER]);
            validation.leeway = 5;
            validation.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
            keys.push(RealmKeys {
                encoding: EncodingKey::from_secret(&secret),
                decoding: DecodingKey::from_secret(&secret),
                validation,
            });
        }
        let client = keys.pop().expect("three realms");
        let developer = keys.pop().expect("three realms");
        let provider = keys.pop().expect("three realms");
        Ok(Self {
            provider,
            developer,
            client,
            access_ttl: config.access_token_ttl,
            refresh_ttl: config.refresh_token_ttl,
        })
    }

    fn keys(&self, realm: Realm) -> &RealmKeys {
        match realm {
            Realm::Provider => &self.provider,
            Realm::Developer => &self.developer,
            Realm::Client => &self.client,
        }
    }

    pub fn issue_access(&self, realm: Realm, subject: Uuid, tenant: Option<Uuid>) -> String {
        let now = jsonwebtoken::get_current_timestamp();
        let claims = Claims {
            iss: ISSUER.into(),
            aud: realm.audience().into(),
            sub: subject,
            iat: now,
            exp: now + self.access_ttl.as_secs(),
            jti: Uuid::new_v4(),
            tid: tenant,
        };
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &self.keys(realm).encoding,
        )
        .expect("HS256 encoding of plain claims cannot fail")
    }

    /// Verifies an access token for `realm`; `None` for anything not valid there.
    pub fn verify_access(&self, realm: Realm, token: &str) -> Option<Claims> {
        let keys = self.keys(realm);
        let data = jsonwebtoken::decode::<Claims>(token, &keys.decoding, &keys.validation).ok()?;
        // A client token must name its tenant; other realms must not.
        (data.claims.tid.is_some() == (realm == Realm::Client)).then_some(data.claims)
    }

    /// Issues a new token pair for a fresh login (a new refresh family).
    pub async fn start_session(
        &self,
        store: &Store,
        realm: Realm,
        subject: Uuid,
        tenant: Option<Uuid>,
    ) -> crate::store::StoreResult<TokenPair> {
        let refresh = new_secret("sfr_");
        let grant = crate::store::tokens::RefreshGrant {
            family_id: Uuid::now_v7(),
            subject_id: subject,
            tenant_id: tenant,
        };
        store
            .insert_refresh_token(
                realm.as_str(),
                &grant,
                &sha256(&refresh),
                self.refresh_expiry(),
            )
            .await?;
        Ok(self.pair(realm, subject, tenant, refresh))
    }

    pub fn refresh_expiry(&self) -> i64 {
        crate::store::now_micros() + self.refresh_ttl.as_micros() as i64
    }

    pub fn pair(
        &self,
        realm: Realm,
        subject: Uuid,
        tenant: Option<Uuid>,
        refresh: String,
    ) -> TokenPair {
        TokenPair {
            access_token: self.issue_access(realm, subject, tenant),
            refresh_token: refresh,
            expires_in: self.access_ttl.as_secs(),
            token_type: "Bearer",
        }
    }
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    rand::rng().fill_bytes(&mut bytes);
    bytes
}

/// A random 256-bit secret with a recognisable prefix (`sfr_` refresh, `sfk_` API key), so
/// leaked secrets can be found by scanners.
pub fn new_secret(prefix: &str) -> String {
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(random_bytes::<32>()))
}

pub fn sha256(text: &str) -> Vec<u8> {
    Sha256::digest(text.as_bytes()).to_vec()
}

/// Hashes a password with argon2id (OWASP parameters), off the async runtime.
pub async fn hash_password(password: String) -> anyhow::Result<String> {
    tokio::task::spawn_blocking(move || {
        Argon2::default()
            .hash_password(password.as_bytes())
            .map(|h| h.to_string())
            .map_err(|e| anyhow::anyhow!("hashing a password: {e}"))
    })
    .await?
}

/// A hash of a random password, verified against when an account does not exist, so a
/// login takes as long whether or not the email is known.
static DUMMY_HASH: LazyLock<String> = LazyLock::new(|| {
    Argon2::default()
        .hash_password(&random_bytes::<16>())
        .map(|h| h.to_string())
        .expect("argon2 with default parameters")
});

/// Checks a password against a stored hash (or the dummy one when there is no account).
pub async fn verify_password(password: String, hash: Option<String>) -> bool {
    let known = hash.is_some();
    tokio::task::spawn_blocking(move || {
        let hash = hash.unwrap_or_else(|| DUMMY_HASH.clone());
        let Ok(parsed) = PasswordHash::new(&hash) else {
            return false;
        };
        Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
            && known
    })
    .await
    .unwrap_or(false)
}

/// Login rate limits, per client address and per account, in memory on this node.
pub struct LoginLimiter {
    per_ip: DefaultKeyedRateLimiter<IpAddr>,
    per_account: DefaultKeyedRateLimiter<String>,
}

impl LoginLimiter {
    pub fn new(per_ip_per_minute: u32, per_account_per_minute: u32) -> Arc<Self> {
        let quota = |n: u32| Quota::per_minute(NonZeroU32::new(n.max(1)).expect("n >= 1"));
        Arc::new(Self {
            per_ip: RateLimiter::keyed(quota(per_ip_per_minute)),
            per_account: RateLimiter::keyed(quota(per_account_per_minute)),
        })
    }

    /// `Err(seconds to wait)` when either limit is exhausted. `account` identifies the
    /// account being logged into (realm, tenant and email), known or not.
    pub fn check(&self, ip: IpAddr, account: &str) -> Result<(), u64> {
        if self.per_account.len() > 100_000 {
            self.per_account.retain_recent();
            self.per_ip.retain_recent();
        }
        let now = DefaultClock::default().now();
        let wait = |e: governor::NotUntil<_>| e.wait_time_from(now).as_secs().max(1);
        self.per_ip.check_key(&ip).map_err(wait)?;
        self.per_account
            .check_key(&account.to_string())
            .map_err(wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn password_hash_verifies_and_rejects() {
        let hash = hash_password("correct horse battery".into()).await.unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_password("correct horse battery".into(), Some(hash.clone())).await);
        assert!(!verify_password("wrong".into(), Some(hash)).await);
        assert!(!verify_password("anything".into(), None).await);
    }

    #[test]
    fn limiter_refuses_past_quota() {
        let limiter = LoginLimiter::new(100, 2);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        assert!(limiter.check(ip, "a").is_ok());
        assert!(limiter.check(ip, "a").is_ok());
        assert!(limiter.check(ip, "a").is_err());
        assert!(limiter.check(ip, "b").is_ok());
    }

    #[test]
    fn secrets_are_prefixed_and_distinct() {
        let a = new_secret("sfk_");
        assert!(a.starts_with("sfk_") && a.len() > 40);
        assert_ne!(a, new_secret("sfk_"));
    }
}
