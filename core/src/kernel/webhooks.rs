//! Inbound webhooks: the host verifies a delivery by the scheme the plugin's manifest
//! declares before the plugin runs, drops replays of a delivery it has seen, limits the
//! rate per tenant × plugin and records every receipt (never the body).
//!
//! Two addresses: `/webhooks/i/{token}/…` belongs to one installation (a random token, not
//! the tenant's slug); `/webhooks/{plugin}/…` is app-wide, for services that send one
//! webhook for every account of an app, and is routed to tenants by a value in the body
//! matched against a connection's metadata (QuickBooks' `realmId`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::{Digest, Sha256};
use streamflow_runtime::integration::{
    SecretSource, SignatureEncoding, WebhookScheme, WebhookSpec,
};
use streamflow_runtime::package::hex;
use streamflow_runtime::{Call, FailureKind, Hook, HttpRequest, Manifest, Reply};
use uuid::Uuid;

use super::Kernel;
use crate::plugins::Active;
use crate::store::integrations::NewReceipt;
use crate::store::{StoreError, TenantScope, now_micros};

/// How far a signed timestamp may be from now (Standard Webhooks and Stripe).
pub const TOLERANCE_SECONDS: i64 = 300;
/// Largest body a webhook may carry.
pub const MAX_BODY: usize = 1024 * 1024;
/// Headers handed to the plugin at most.
const MAX_HEADERS: usize = 64;
/// Routing values one app-wide delivery is split into at most.
const MAX_ROUTES: usize = 100;
/// How long receipts are kept.
pub const RECEIPTS_KEPT: std::time::Duration = std::time::Duration::from_secs(30 * 86_400);
/// How long a delivery id is remembered (replays older than this are delivered again;
/// senders retry for hours to a few days).
pub const DELIVERIES_KEPT: std::time::Duration = std::time::Duration::from_secs(7 * 86_400);

/// A delivery as it arrived.
pub struct Inbound {
    pub method: String,
    /// The path after the address (`/` when none).
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// The answer to the sender.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    fn json(status: u16, value: Value) -> Answer {
        Answer {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: value.to_string().into_bytes(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("no such webhook address")]
    NotFound,
    #[error("{0}")]
    Unauthorized(String),
    #[error("too many webhook deliveries to this address; slow down")]
    RateLimited,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Token buckets per key (tenant × plugin), on this node.
pub struct Limiter {
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl Limiter {
    pub fn new(per_second: u32) -> Limiter {
        let per_second = f64::from(per_second.max(1));
        Limiter {
            per_second,
            burst: per_second * 2.0,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token from `key`'s bucket; false when it is empty.
    pub fn take(&self, key: &str) -> bool {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() > 100_000 {
            // Bounded: idle buckets are full anyway, so forgetting them changes nothing
            // for a sender within its rate.
            let now = Instant::now();
            buckets.retain(|_, (_, at)| now.duration_since(*at).as_secs() < 60);
        }
        let now = Instant::now();
        let (tokens, at) = buckets.entry(key.to_string()).or_insert((self.burst, now));
        *tokens =
            (*tokens + now.duration_since(*at).as_secs_f64() * self.per_second).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

type HmacSha256 = Hmac<Sha256>;

fn mac(secret: &[u8], parts: &[&[u8]]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes any key length");
    for part in parts {
        mac.update(part);
    }
    mac
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

fn fresh(timestamp: &str, now_seconds: i64) -> Result<(), String> {
    let at: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| "the signature's timestamp is not a number".to_string())?;
    if (now_seconds - at).abs() > TOLERANCE_SECONDS {
        return Err(format!(
            "the signature's timestamp is more than {TOLERANCE_SECONDS} s from now (a stale or replayed delivery)"
        ));
    }
    Ok(())
}

/// Checks a delivery's signature. Returns what identifies the delivery when the signature
/// covers more than the body (Standard Webhooks' signed `webhook-id`; a hash of Stripe's
/// signed `t.body`); `None` means the body's hash does. An unsigned header never does: a
/// replay could change it. Errors say what was wrong, never the expected signature.
pub fn verify(
    spec: &WebhookSpec,
    secret: &str,
    headers: &[(String, String)],
    body: &[u8],
    now_seconds: i64,
) -> Result<Option<String>, String> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    match spec.verify {
        WebhookScheme::HmacSha256 => {
            let name = spec
                .signature_header
                .as_deref()
                .filter(|h| !h.starts_with("config:") && !h.is_empty())
                .ok_or("this webhook's signature header is not set up yet")?;
            let given = header(headers, name)
                .ok_or_else(|| format!("the {name} header is missing"))?
                .trim();
            let given = match spec.encoding {
                SignatureEncoding::Base64 => b64.decode(given).ok(),
                SignatureEncoding::Hex => unhex(given.trim_start_matches("sha256=")),
                SignatureEncoding::Auto => {
                    let bare = given.trim_start_matches("sha256=");
                    if bare.len() == 64 && bare.bytes().all(|b| b.is_ascii_hexdigit()) {
                        unhex(bare)
                    } else {
                        b64.decode(bare).ok()
                    }
                }
            }
            .ok_or_else(|| format!("the {name} header is not a signature"))?;
            mac(secret.as_bytes(), &[body])
                .verify_slice(&given)
                .map_err(|_| format!("the {name} signature does not match the body"))?;
            Ok(None)
        }
        WebhookScheme::StandardWebhooks => {
            let id = header(headers, "webhook-id").ok_or("the webhook-id header is missing")?;
            let timestamp = header(headers, "webhook-timestamp")
                .ok_or("the webhook-timestamp header is missing")?;
            let signatures = header(headers, "webhook-signature")
                .ok_or("the webhook-signature header is missing")?;
            fresh(timestamp, now_seconds)?;
            let key = match secret.strip_prefix("whsec_") {
                Some(encoded) => b64
                    .decode(encoded)
                    .map_err(|_| "the configured whsec_ secret is not base64".to_string())?,
                None => secret.as_bytes().to_vec(),
            };
            let expected = mac(
                &key,
                &[id.as_bytes(), b".", timestamp.as_bytes(), b".", body],
            )
            .finalize()
            .into_bytes();
            let matched = signatures.split_whitespace().any(|s| {
                s.strip_prefix("v1,")
                    .and_then(|sig| b64.decode(sig).ok())
                    .is_some_and(|sig| {
                        subtle::ConstantTimeEq::ct_eq(&sig[..], &expected[..]).into()
                    })
            });
            if !matched {
                return Err("no webhook-signature matches the delivery".into());
            }
            Ok(Some(id.to_string()))
        }
        WebhookScheme::Stripe => {
            let name = spec
                .signature_header
                .as_deref()
                .unwrap_or("stripe-signature");
            let value =
                header(headers, name).ok_or_else(|| format!("the {name} header is missing"))?;
            let mut timestamp = None;
            let mut signatures = Vec::new();
            for part in value.split(',') {
                match part.trim().split_once('=') {
                    Some(("t", t)) => timestamp = Some(t),
                    Some(("v1", s)) => signatures.extend(unhex(s)),
                    _ => {}
                }
            }
            let timestamp = timestamp.ok_or_else(|| format!("the {name} header has no t="))?;
            fresh(timestamp, now_seconds)?;
            let expected = mac(secret.as_bytes(), &[timestamp.as_bytes(), b".", body])
                .finalize()
                .into_bytes();
            if !signatures
                .iter()
                .any(|s| bool::from(subtle::ConstantTimeEq::ct_eq(&s[..], &expected[..])))
            {
                return Err(format!("no v1 signature in {name} matches the delivery"));
            }
            // What the signature covers identifies the delivery.
            let mut signed = Sha256::new();
            signed.update(timestamp.as_bytes());
            signed.update(b".");
            signed.update(body);
            Ok(Some(hex(&signed.finalize())))
        }
    }
}

/// The values at a pointer that may name every element of one array with `*`
/// (`/eventNotifications/*/realmId`), as text.
fn route_values(body: &Value, pointer: &str) -> Vec<String> {
    let text = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    match pointer.split_once("/*") {
        None => body.pointer(pointer).and_then(text).into_iter().collect(),
        Some((array, rest)) => body
            .pointer(array)
            .and_then(Value::as_array)
            .map(|items| {
                items
                    .iter()
                    .filter_map(|item| item.pointer(rest).and_then(text))
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// The part of an app-wide body one tenant receives: with a `*` pointer, only the array
/// elements routed to it (another tenant's entries are not its plugin's to see).
fn body_for(body: &Value, pointer: &str, values: &[String]) -> Value {
    let Some((array, rest)) = pointer.split_once("/*") else {
        return body.clone();
    };
    let mut mine = body.clone();
    if let Some(Value::Array(items)) = mine.pointer_mut(array) {
        items.retain(|item| {
            route_values(item, rest)
                .first()
                .is_some_and(|v| values.contains(v))
        });
    }
    mine
}

fn body_hash(body: &[u8]) -> String {
    hex(&Sha256::digest(body))
}

/// Webhooks of the kernel.
pub struct Webhooks<'k> {
    pub(super) kernel: &'k Kernel,
}

/// A receipt being put together.
struct Receipt<'a> {
    tenant: Option<Uuid>,
    plugin_id: &'a str,
    address: &'a str,
    started: Instant,
    body_bytes: usize,
    body_sha256: String,
}

impl Webhooks<'_> {
    /// The address of an installation's webhooks (made on first use).
    pub async fn address(
        &self,
        scope: &TenantScope,
        plugin_id: &str,
    ) -> Result<String, StoreError> {
        let token = self.kernel.store.webhook_token(scope, plugin_id).await?;
        Ok(format!(
            "{}/webhooks/i/{token}",
            self.kernel.config.public_base()
        ))
    }

    /// The app-wide address of a plugin.
    pub fn app_address(&self, plugin_id: &str) -> String {
        format!("{}/webhooks/{plugin_id}", self.kernel.config.public_base())
    }

    async fn record(
        &self,
        r: &Receipt<'_>,
        delivery_id: Option<&str>,
        verified: bool,
        status: u16,
        outcome: &str,
    ) {
        let receipt = NewReceipt {
            tenant_id: r.tenant,
            plugin_id: r.plugin_id,
            address: r.address,
            delivery_id,
            verified,
            status,
            duration_ms: r.started.elapsed().as_millis() as i64,
            outcome,
            body_bytes: r.body_bytes as i64,
            body_sha256: &r.body_sha256,
        };
        if let Err(e) = self.kernel.store.insert_receipt(&receipt).await {
            tracing::warn!(error = %e, "could not record a webhook receipt");
        }
        metrics::counter!("streamflow_webhook_receipts_total", "plugin" => r.plugin_id.to_string(),
            "outcome" => outcome.to_string())
        .increment(1);
    }

    async fn installation(
        &self,
        scope: &TenantScope,
        plugin_id: &str,
    ) -> Result<Option<std::sync::Arc<Active>>, StoreError> {
        Ok(self
            .kernel
            .plugins
            .active(scope)
            .await?
            .iter()
            .find(|a| a.plugin_id == plugin_id && a.manifest.has_hook(Hook::HandleWebhook))
            .cloned())
    }

    /// The secret a delivery to this tenant's installation is signed with.
    async fn secret(
        &self,
        scope: Option<&TenantScope>,
        manifest: &Manifest,
        spec: &WebhookSpec,
    ) -> Result<Option<String>, StoreError> {
        match spec.secret_source() {
            Some(SecretSource::Config(pointer)) => {
                let Some(scope) = scope else { return Ok(None) };
                let Some(row) = self
                    .kernel
                    .store
                    .get_installation(scope, &manifest.id)
                    .await?
                else {
                    return Ok(None);
                };
                let secrets = self.kernel.plugins.open_secrets(&row).unwrap_or_default();
                Ok(secrets
                    .get(&pointer)
                    .and_then(Value::as_str)
                    .map(str::to_string))
            }
            Some(SecretSource::Connection {
                connection,
                setting,
            }) => Ok(self
                .kernel
                .connections()
                .setting(scope, &manifest.id, &connection, &setting)
                .await?),
            None => Ok(None),
        }
    }

    /// A delivery to one installation's address.
    pub async fn per_installation(
        &self,
        token: &str,
        inbound: Inbound,
    ) -> Result<Answer, WebhookError> {
        let (tenant, plugin_id) = self
            .kernel
            .store
            .webhook_address(token)
            .await?
            .ok_or(WebhookError::NotFound)?;
        let scope = self
            .kernel
            .store
            .active_tenant_scope(tenant)
            .await?
            .ok_or(WebhookError::NotFound)?;
        let active = self
            .installation(&scope, &plugin_id)
            .await?
            .ok_or(WebhookError::NotFound)?;
        let receipt = Receipt {
            tenant: Some(tenant),
            plugin_id: &plugin_id,
            address: "installation",
            started: Instant::now(),
            body_bytes: inbound.body.len(),
            body_sha256: body_hash(&inbound.body),
        };
        let mut spec = active
            .manifest
            .webhooks
            .clone()
            .ok_or(WebhookError::NotFound)?;
        if let Some(pointer) = spec.header_from_config() {
            // The tenant names the header (a service that does not document it); unset,
            // no delivery can be verified.
            spec.signature_header = active
                .config_value
                .pointer(pointer)
                .and_then(Value::as_str)
                .filter(|h| {
                    (1..=64).contains(&h.len())
                        && h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                })
                .map(str::to_string);
        }
        // Verified first (an HMAC is cheap): a flood of forged deliveries does not use up
        // the tenant's rate, and only verified deliveries count against it.
        let delivery_id = self
            .check(&receipt, Some(&scope), &active.manifest, &spec, &inbound)
            .await?;
        self.limit(tenant, &plugin_id)?;
        let key = tenant.to_string();
        let (status, outcome, answer) = self
            .deliver(&scope, &active, &key, &delivery_id, &inbound, &inbound.body)
            .await;
        self.record(&receipt, Some(&delivery_id), true, status, outcome)
            .await;
        Ok(answer)
    }

    /// Takes one verified delivery from the tenant × plugin rate. Past it: 429, counted in
    /// a metric (no receipt row, so a flood costs no writes).
    fn limit(&self, tenant: Uuid, plugin_id: &str) -> Result<(), WebhookError> {
        if self
            .kernel
            .webhook_limiter
            .take(&format!("{tenant}/{plugin_id}"))
        {
            return Ok(());
        }
        metrics::counter!("streamflow_webhook_receipts_total", "plugin" => plugin_id.to_string(),
            "outcome" => "rate_limited")
        .increment(1);
        Err(WebhookError::RateLimited)
    }

    /// Records a refused delivery, at most at the limiter's rate per plugin (beyond it a
    /// metric only: refusals cost no unbounded writes).
    async fn refused(&self, receipt: &Receipt<'_>, outcome: &str) {
        if self
            .kernel
            .webhook_limiter
            .take(&format!("refused/{}", receipt.plugin_id))
        {
            self.record(receipt, None, false, 401, outcome).await;
        } else {
            metrics::counter!("streamflow_webhook_receipts_total", "plugin" => receipt.plugin_id.to_string(),
                "outcome" => outcome.to_string())
            .increment(1);
        }
    }

    /// Verifies a delivery (recording a refusal) and returns its delivery id.
    async fn check(
        &self,
        receipt: &Receipt<'_>,
        scope: Option<&TenantScope>,
        manifest: &Manifest,
        spec: &WebhookSpec,
        inbound: &Inbound,
    ) -> Result<String, WebhookError> {
        let Some(secret) = self.secret(scope, manifest, spec).await? else {
            self.refused(receipt, "no_secret").await;
            return Err(WebhookError::Unauthorized(
                "this webhook's signing secret is not set up yet, so no delivery can be verified"
                    .into(),
            ));
        };
        match verify(
            spec,
            &secret,
            &inbound.headers,
            &inbound.body,
            now_micros() / 1_000_000,
        ) {
            Ok(id) => Ok(id.unwrap_or_else(|| receipt.body_sha256.clone())),
            Err(why) => {
                self.refused(receipt, "unverified").await;
                tracing::info!(plugin = receipt.plugin_id, reason = %why, "webhook refused: signature");
                Err(WebhookError::Unauthorized(why))
            }
        }
    }

    /// Hands a verified delivery to the plugin, once per delivery id. Returns the status
    /// answered, the receipt's outcome and the answer. A delivery the plugin fails (any
    /// 5xx) is forgotten, so the sender's retry reaches the plugin again.
    async fn deliver(
        &self,
        scope: &TenantScope,
        active: &std::sync::Arc<Active>,
        tenant_key: &str,
        delivery_id: &str,
        inbound: &Inbound,
        body: &[u8],
    ) -> (u16, &'static str, Answer) {
        let store = &self.kernel.store;
        match store
            .first_delivery(&active.plugin_id, tenant_key, delivery_id)
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                let seen = serde_json::json!({"status": "already received"});
                return (200, "replayed", Answer::json(200, seen));
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not check a webhook's delivery id");
                let later = serde_json::json!({"error": "try again later"});
                return (503, "unavailable", Answer::json(503, later));
            }
        }
        let request = HttpRequest {
            method: inbound.method.clone(),
            path: inbound.path.clone(),
            headers: inbound.headers.iter().take(MAX_HEADERS).cloned().collect(),
            body: body.to_vec(),
        };
        let failed = |status: u16, message: &str| {
            (
                status,
                "plugin_failed",
                Answer::json(status, serde_json::json!({"error": message})),
            )
        };
        let outcome = match self
            .kernel
            .plugins
            .call(scope, active, Call::HandleWebhook(request))
            .await
        {
            Ok(Reply::Webhook(response)) => {
                let status = if (100..600).contains(&response.status) {
                    response.status
                } else {
                    500
                };
                let headers = response
                    .headers
                    .into_iter()
                    .filter(|(k, _)| {
                        let k = k.to_ascii_lowercase();
                        k == "content-type" || k.starts_with("x-")
                    })
                    .take(16)
                    .collect();
                let answer = Answer {
                    status,
                    headers,
                    body: response.body,
                };
                (status, "delivered", answer)
            }
            Ok(_) => failed(500, "the plugin answered oddly"),
            // The host's capacity, or the plugin's service throttled or failed: the
            // sender's retry may pass.
            Err(e) if e.kind.is_capacity() || e.kind == FailureKind::RetryLater => failed(
                503,
                "the plugin could not handle this delivery now; it will be retried",
            ),
            Err(_) => failed(
                502,
                "the plugin could not handle this delivery; it will be retried",
            ),
        };
        if outcome.0 >= 500 {
            let _ = store
                .forget_delivery(&active.plugin_id, tenant_key, delivery_id)
                .await;
        }
        outcome
    }

    /// A delivery to a plugin's app-wide address, routed to each tenant whose connection's
    /// metadata matches the body.
    pub async fn app_wide(
        &self,
        plugin_id: &str,
        inbound: Inbound,
    ) -> Result<Answer, WebhookError> {
        let manifest = self
            .kernel
            .connections()
            .newest_manifest(plugin_id)
            .await
            .map_err(|_| WebhookError::NotFound)?;
        let Some(spec) = manifest.webhooks.clone() else {
            return Err(WebhookError::NotFound);
        };
        let Some(route) = spec.route.clone() else {
            return Err(WebhookError::NotFound);
        };
        let mut receipt = Receipt {
            tenant: None,
            plugin_id,
            address: "app",
            started: Instant::now(),
            body_bytes: inbound.body.len(),
            body_sha256: body_hash(&inbound.body),
        };
        // Verified before routing: an app-wide webhook's secret is a provider setting of a
        // connection (the manifest checks refuse a tenant's `config:` secret here).
        let delivery_id = self
            .check(&receipt, None, &manifest, &spec, &inbound)
            .await?;
        let body: Value = serde_json::from_slice(&inbound.body).unwrap_or(Value::Null);
        // The first pointer that finds a value (one per payload format the service sends).
        let (pointer, mut values) = route
            .pointer
            .all()
            .iter()
            .map(|p| (p.as_str(), route_values(&body, p)))
            .find(|(_, v)| !v.is_empty())
            .unwrap_or(("", Vec::new()));
        values.sort();
        values.dedup();
        values.truncate(MAX_ROUTES);
        let mut tenants: Vec<(Uuid, Vec<String>)> = Vec::new();
        if !values.is_empty() {
            let index = self
                .kernel
                .store
                .routing_metadata(plugin_id, &route.connection, &route.metadata)
                .await?;
            for value in values {
                let holders: Vec<Uuid> = index
                    .iter()
                    .filter(|(_, v)| *v == value)
                    .map(|(t, _)| *t)
                    .collect();
                // Routing metadata is unique per plugin (a second tenant cannot connect
                // the same account); should two hold it anyway, neither gets the delivery.
                let [tenant] = holders[..] else {
                    if holders.len() > 1 {
                        tracing::error!(
                            plugin = plugin_id,
                            "an app-wide webhook matches more than one tenant's connection; not delivered"
                        );
                    }
                    continue;
                };
                match tenants.iter_mut().find(|(t, _)| *t == tenant) {
                    Some((_, vs)) => vs.push(value.clone()),
                    None => tenants.push((tenant, vec![value.clone()])),
                }
            }
        }
        if tenants.is_empty() {
            self.record(&receipt, Some(&delivery_id), true, 200, "unrouted")
                .await;
            // Answered 200: the sender must not retry what no tenant here is connected for.
            return Ok(Answer::json(
                200,
                serde_json::json!({"status": "no tenant here is connected for this delivery"}),
            ));
        }
        let mut last = Answer::json(200, serde_json::json!({"status": "received"}));
        let mut worst = 200;
        for (tenant, values) in tenants {
            receipt.tenant = Some(tenant);
            receipt.started = Instant::now();
            let Some(scope) = self.kernel.store.active_tenant_scope(tenant).await? else {
                continue;
            };
            let Some(active) = self.installation(&scope, plugin_id).await? else {
                self.record(&receipt, Some(&delivery_id), true, 200, "not_installed")
                    .await;
                continue;
            };
            if let Err(e) = self.limit(tenant, plugin_id) {
                worst = worst.max(429);
                last = Answer::json(429, serde_json::json!({"error": e.to_string()}));
                continue;
            }
            let mine = serde_json::to_vec(&body_for(&body, pointer, &values)).unwrap_or_default();
            let (status, outcome, answer) = self
                .deliver(
                    &scope,
                    &active,
                    &tenant.to_string(),
                    &delivery_id,
                    &inbound,
                    &mine,
                )
                .await;
            self.record(&receipt, Some(&delivery_id), true, status, outcome)
                .await;
            if status >= worst {
                worst = status;
                last = answer;
            }
        }
        Ok(last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    fn spec(verify: WebhookScheme, encoding: SignatureEncoding) -> WebhookSpec {
        WebhookSpec {
            verify,
            signature_header: Some("intuit-signature".into()),
            encoding,
            secret: "config:/webhook_secret".into(),
            route: None,
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn hmac_signatures_in_base64_and_hex() {
        let body = br#"{"eventNotifications":[]}"#;
        let sig = mac(b"verifier", &[body]).finalize().into_bytes();
        let b64 = base64::engine::general_purpose::STANDARD.encode(sig);
        let s = spec(WebhookScheme::HmacSha256, SignatureEncoding::Base64);
        assert!(
            verify(
                &s,
                "verifier",
                &headers(&[("Intuit-Signature", &b64)]),
                body,
                0
            )
            .is_ok()
        );
        assert!(
            verify(
                &s,
                "wrong",
                &headers(&[("intuit-signature", &b64)]),
                body,
                0
            )
            .is_err()
        );
        assert!(
            verify(
                &s,
                "verifier",
                &headers(&[("intuit-signature", &b64)]),
                b"{}",
                0
            )
            .is_err()
        );
        let missing = verify(&s, "verifier", &[], body, 0).unwrap_err();
        assert!(missing.contains("missing"), "{missing}");
        let h = spec(WebhookScheme::HmacSha256, SignatureEncoding::Hex);
        let hexed = format!("sha256={}", hex(&sig));
        assert!(
            verify(
                &h,
                "verifier",
                &headers(&[("intuit-signature", &hexed)]),
                body,
                0
            )
            .is_ok()
        );
        assert!(
            verify(
                &h,
                "verifier",
                &headers(&[("intuit-signature", "zz")]),
                body,
                0
            )
            .is_err()
        );
    }

    #[test]
    fn auto_encoding_takes_hex_or_base64_and_a_header_must_be_named() {
        let body = br#"{"data":{"id":5}}"#;
        let sig = mac(b"key", &[body]).finalize().into_bytes();
        let a = spec(WebhookScheme::HmacSha256, SignatureEncoding::Auto);
        let b64 = base64::engine::general_purpose::STANDARD.encode(sig);
        for given in [hex(&sig), format!("sha256={}", hex(&sig)), b64.clone()] {
            assert!(
                verify(
                    &a,
                    "key",
                    &headers(&[("intuit-signature", &given)]),
                    body,
                    0
                )
                .is_ok(),
                "{given}"
            );
        }
        assert!(
            verify(
                &a,
                "other",
                &headers(&[("intuit-signature", &b64)]),
                body,
                0
            )
            .is_err()
        );
        // A header to be named in the config that is not named yet verifies nothing.
        let mut unnamed = a.clone();
        unnamed.signature_header = Some("config:/header".into());
        let err = verify(
            &unnamed,
            "key",
            &headers(&[("config:/header", &b64)]),
            body,
            0,
        )
        .unwrap_err();
        assert!(err.contains("not set up"), "{err}");
    }

    #[test]
    fn standard_webhooks_with_tolerance() {
        let key = b"0123456789abcdef";
        let secret = format!(
            "whsec_{}",
            base64::engine::general_purpose::STANDARD.encode(key)
        );
        let body = b"{\"type\":\"x\"}";
        let sign = |ts: &str| {
            let sig = mac(key, &[b"msg_1", b".", ts.as_bytes(), b".", body])
                .finalize()
                .into_bytes();
            format!(
                "v1,bm90IGl0 v1,{}",
                base64::engine::general_purpose::STANDARD.encode(sig)
            )
        };
        let s = spec(WebhookScheme::StandardWebhooks, SignatureEncoding::Base64);
        let now = 1_700_000_000;
        let good = headers(&[
            ("webhook-id", "msg_1"),
            ("webhook-timestamp", "1700000000"),
            ("webhook-signature", &sign("1700000000")),
        ]);
        assert_eq!(
            verify(&s, &secret, &good, body, now + 10)
                .unwrap()
                .as_deref(),
            Some("msg_1")
        );
        let stale = verify(&s, &secret, &good, body, now + 301).unwrap_err();
        assert!(stale.contains("stale"), "{stale}");
        assert!(verify(&s, &secret, &good, body, now - 301).is_err());
        let forged = headers(&[
            ("webhook-id", "msg_2"),
            ("webhook-timestamp", "1700000000"),
            ("webhook-signature", &sign("1700000000")),
        ]);
        assert!(verify(&s, &secret, &forged, body, now).is_err());
    }

    #[test]
    fn stripe_signatures() {
        let body = b"{\"id\":\"evt_1\"}";
        let sig = hex(&mac(b"whsec_s", &[b"1700000000", b".", body])
            .finalize()
            .into_bytes());
        let mut s = spec(WebhookScheme::Stripe, SignatureEncoding::Hex);
        s.signature_header = None;
        let value = format!("t=1700000000,v1=00ff,v1={sig}");
        assert!(
            verify(
                &s,
                "whsec_s",
                &headers(&[("Stripe-Signature", &value)]),
                body,
                1_700_000_100
            )
            .is_ok()
        );
        assert!(
            verify(
                &s,
                "whsec_s",
                &headers(&[("Stripe-Signature", &value)]),
                body,
                1_700_000_400
            )
            .is_err()
        );
        assert!(
            verify(
                &s,
                "other",
                &headers(&[("Stripe-Signature", &value)]),
                body,
                1_700_000_100
            )
            .is_err()
        );
    }

    #[test]
    fn app_wide_bodies_are_split_per_tenant() {
        let body = serde_json::json!({"eventNotifications": [
            {"realmId": "111", "dataChangeEvent": {"entities": [{"id": "1"}]}},
            {"realmId": 222, "dataChangeEvent": {"entities": [{"id": "2"}]}},
        ]});
        let pointer = "/eventNotifications/*/realmId";
        assert_eq!(route_values(&body, pointer), vec!["111", "222"]);
        let mine = body_for(&body, pointer, &["222".to_string()]);
        assert_eq!(mine["eventNotifications"].as_array().unwrap().len(), 1);
        assert_eq!(mine["eventNotifications"][0]["realmId"], 222);
        assert_eq!(
            route_values(&serde_json::json!({"realmId": "9"}), "/realmId"),
            vec!["9"]
        );
        assert!(route_values(&Value::Null, pointer).is_empty());
    }

    #[test]
    fn the_limiter_allows_a_burst_then_refuses() {
        let limiter = Limiter::new(5);
        let allowed = (0..20).filter(|_| limiter.take("t/p")).count();
        assert_eq!(allowed, 10);
        assert!(limiter.take("t/other"));
    }
}
