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
    /// How long a session lives from its login, however often it is refreshed.
    pub session_max_age: Duration,
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
            session_max_age: config.session_max_age,
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
        let now = crate::store::now_micros();
        let grant = crate::store::tokens::RefreshGrant {
            family_id: Uuid::now_v7(),
            subject_id: subject,
            tenant_id: tenant,
            session_started_at: now,
        };
        let expires_at = self
            .refresh_expiry()
            .min(now.saturating_add(self.session_max_age_micros()));
        store
            .insert_refresh_token(realm.as_str(), &grant, &sha256(&refresh), expires_at)
            .await?;
        Ok(self.pair(realm, subject, tenant, refresh))
    }

    pub fn refresh_expiry(&self) -> i64 {
        crate::store::now_micros() + self.refresh_ttl.as_micros() as i64
    }

    pub fn session_max_age_micros(&self) -> i64 {
        i64::try_from(self.session_max_age.as_micros()).unwrap_or(i64::MAX)
    }

    /// Whether a session that began at `started_at` (microseconds) is over.
    pub fn session_over(&self, started_at: i64) -> bool {
        crate::store::now_micros() >= started_at.saturating_add(self.session_max_age_micros())
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

/// The longest password accepted anywhere, in characters. Nothing longer is ever handed to
/// argon2: [`hash_password`] refuses it and [`verify_password`] answers "wrong" at once, so
/// a login with a megabyte "password" costs no hashing.
pub const MAX_PASSWORD_CHARS: usize = 256;

/// Whether `password` is within [`MAX_PASSWORD_CHARS`]; looks at the byte length first, so
/// an oversized input is refused without being scanned.
pub fn password_within_cap(password: &str) -> bool {
    password.len() <= 4 * MAX_PASSWORD_CHARS && password.chars().count() <= MAX_PASSWORD_CHARS
}

/// Hashes a password with argon2id (OWASP parameters), off the async runtime. A password
/// over [`MAX_PASSWORD_CHARS`] is an error (routes validate before calling this).
pub async fn hash_password(password: String) -> anyhow::Result<String> {
    if !password_within_cap(&password) {
        anyhow::bail!("a password is at most {MAX_PASSWORD_CHARS} characters long");
    }
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
/// A password over [`MAX_PASSWORD_CHARS`] cannot be anyone's: it is wrong, without hashing.
pub async fn verify_password(password: String, hash: Option<String>) -> bool {
    if !password_within_cap(&password) {
        return false;
    }
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

/// Login rate limits, in memory on this node (governor).
///
/// - per client address: refused (429) past the quota;
/// - per account × client address: refused past a tight quota, so one address cannot
///   guess at an account, yet attempts from other addresses never lock its user out;
/// - per account, from all addresses together: past this ceiling attempts are *delayed*
///   (by up to `max_delay`), never refused, so an attack spread over many addresses slows
///   the account's logins down but cannot keep its user from signing in.
pub struct LoginLimiter {
    per_ip: DefaultKeyedRateLimiter<IpAddr>,
    per_account_address: DefaultKeyedRateLimiter<(String, IpAddr)>,
    per_account: DefaultKeyedRateLimiter<String>,
    max_delay: Duration,
}

impl LoginLimiter {
    pub fn new(
        per_ip_per_minute: u32,
        per_account_address_per_minute: u32,
        per_account_per_minute: u32,
        max_delay: Duration,
    ) -> Arc<Self> {
        let quota = |n: u32| Quota::per_minute(NonZeroU32::new(n.max(1)).expect("n >= 1"));
        Arc::new(Self {
            per_ip: RateLimiter::keyed(quota(per_ip_per_minute)),
            per_account_address: RateLimiter::keyed(quota(per_account_address_per_minute)),
            per_account: RateLimiter::keyed(quota(per_account_per_minute)),
            max_delay,
        })
    }

    /// `Err(seconds to wait)` when the address's limit or the account × address limit is
    /// exhausted; otherwise `Ok(delay)`: how long to hold the attempt before checking the
    /// password (zero unless the account's ceiling is exceeded). `account` identifies the
    /// account being logged into (realm, tenant and email), known or not.
    pub fn check(&self, ip: IpAddr, account: &str) -> Result<Duration, u64> {
        if self.per_account.len() > 100_000 || self.per_account_address.len() > 100_000 {
            self.per_account.retain_recent();
            self.per_account_address.retain_recent();
            self.per_ip.retain_recent();
        }
        let now = DefaultClock::default().now();
        let wait = |e: governor::NotUntil<_>| e.wait_time_from(now).as_secs().max(1);
        self.per_ip.check_key(&ip).map_err(wait)?;
        self.per_account_address
            .check_key(&(account.to_string(), ip))
            .map_err(wait)?;
        Ok(match self.per_account.check_key(&account.to_string()) {
            Ok(()) => Duration::ZERO,
            Err(e) => e.wait_time_from(now).min(self.max_delay),
        })
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

    #[tokio::test]
    async fn over_long_passwords_never_reach_argon2() {
        // A hash argon2 would accept the long password against: only the cap refuses it.
        let long = "x".repeat(MAX_PASSWORD_CHARS + 1);
        let hash = Argon2::default()
            .hash_password(long.as_bytes())
            .unwrap()
            .to_string();
        assert!(!verify_password(long.clone(), Some(hash)).await);
        assert!(hash_password(long).await.is_err());
        // Multi-byte characters count as characters, and the byte check is only a bound.
        let accented = "é".repeat(MAX_PASSWORD_CHARS);
        assert!(password_within_cap(&accented));
        assert!(!password_within_cap(&"é".repeat(MAX_PASSWORD_CHARS + 1)));
        assert!(!password_within_cap(&"a".repeat(10 * 1024 * 1024)));
    }

    #[test]
    fn limiter_refuses_past_quota_per_account_and_address() {
        let limiter = LoginLimiter::new(100, 2, 100, Duration::from_secs(5));
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(limiter.check(ip, "a"), Ok(Duration::ZERO));
        assert_eq!(limiter.check(ip, "a"), Ok(Duration::ZERO));
        assert!(limiter.check(ip, "a").is_err());
        assert!(limiter.check(ip, "b").is_ok());
        // The same account from another address is not locked.
        assert_eq!(
            limiter.check("10.0.0.2".parse().unwrap(), "a"),
            Ok(Duration::ZERO)
        );
    }

    #[test]
    fn attempts_from_other_addresses_delay_but_never_lock_out() {
        let max_delay = Duration::from_secs(3);
        let limiter = LoginLimiter::new(100, 2, 4, max_delay);
        // An attacker spreads attempts over many addresses, past the account's ceiling.
        for n in 0..20u8 {
            let ip = IpAddr::from([192, 0, 2, n]);
            for _ in 0..2 {
                assert!(
                    limiter.check(ip, "victim").is_ok(),
                    "never refused from {ip}"
                );
            }
            assert!(
                limiter.check(ip, "victim").is_err(),
                "each address has its quota"
            );
        }
        // The user, from their own address, is let through: slowed, not refused.
        let user: IpAddr = "10.0.0.1".parse().unwrap();
        let delay = limiter.check(user, "victim").expect("not locked out");
        assert!(delay > Duration::ZERO && delay <= max_delay, "{delay:?}");
        // Other accounts are untouched.
        assert_eq!(limiter.check(user, "someone-else"), Ok(Duration::ZERO));
    }

    #[test]
    fn secrets_are_prefixed_and_distinct() {
        let a = new_secret("sfk_");
        assert!(a.starts_with("sfk_") && a.len() > 40);
        assert_ne!(a, new_secret("sfk_"));
    }
}
