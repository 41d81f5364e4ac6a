//! The parts of a manifest that reach the outside world (contract 0.2.0): the hosts a
//! plugin may call (`[http]`), the connections whose credentials the kernel holds
//! (`[connections.<id>]`), how inbound webhooks are verified (`[webhooks]`), its schedules
//! (`[schedules.<id>]`) and its per-call quotas (`[quotas]`).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `[http]`: the hosts outbound requests may go to.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct HttpSpec {
    /// Host names (`api.sam.gov`) or a wildcard for subdomains (`*.api.intuit.com`, which
    /// does not match `api.intuit.com` itself).
    #[serde(default)]
    pub hosts: Vec<String>,
}

impl HttpSpec {
    /// Whether `host` (a DNS name, lowercase) is one the manifest lists.
    pub fn allows(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.hosts
            .iter()
            .any(|pattern| host_matches(pattern, &host))
    }
}

/// Whether `host` matches one `[http] hosts` pattern.
pub fn host_matches(pattern: &str, host: &str) -> bool {
    let pattern = pattern.to_ascii_lowercase();
    match pattern.strip_prefix("*.") {
        Some(suffix) => host
            .strip_suffix(suffix)
            .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
        None => pattern == host,
    }
}

fn valid_host_pattern(pattern: &str) -> bool {
    let name = pattern.strip_prefix("*.").unwrap_or(pattern);
    let labels: Vec<&str> = name.split('.').collect();
    (1..=253).contains(&name.len())
        && labels.len() >= 2
        && labels.iter().all(|l| {
            (1..=63).contains(&l.len())
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
        // A pattern is a name, not an address: an IP literal is refused (the numbers are
        // all-digit labels).
        && !labels.iter().all(|l| l.bytes().all(|b| b.is_ascii_digit()))
}

/// How a connection authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConnectionKind {
    /// OAuth2 authorization code with PKCE: the tenant's admin signs in at the service.
    Oauth2AuthorizationCode,
    /// OAuth2 client credentials: the host requests tokens with a client id and secret.
    Oauth2ClientCredentials,
    /// A static API key.
    ApiKey,
}

impl ConnectionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionKind::Oauth2AuthorizationCode => "oauth2-authorization-code",
            ConnectionKind::Oauth2ClientCredentials => "oauth2-client-credentials",
            ConnectionKind::ApiKey => "api-key",
        }
    }

    pub fn is_oauth2(self) -> bool {
        self != ConnectionKind::ApiKey
    }
}

/// Where the credential goes on a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CredentialIn {
    /// `Authorization: Bearer <token or key>`.
    #[default]
    Bearer,
    /// A header named by `credential-name` (such as `X-Api-Key`).
    Header,
    /// A query parameter named by `credential-name` (SAM.gov's `api_key`).
    Query,
}

/// A connection's URLs. Any may be replaced by the provider (a sandbox, a local fake).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ConnectionUrls {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorize: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// The base that relative request URLs are joined to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<String>,
    /// Where a disconnect revokes the token (RFC 7009), when the service offers it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoke: Option<String>,
}

impl ConnectionUrls {
    /// These URLs with each one `over` sets replacing it.
    pub fn overlaid(&self, over: &ConnectionUrls) -> ConnectionUrls {
        ConnectionUrls {
            authorize: over.authorize.clone().or_else(|| self.authorize.clone()),
            token: over.token.clone().or_else(|| self.token.clone()),
            api: over.api.clone().or_else(|| self.api.clone()),
            revoke: over.revoke.clone().or_else(|| self.revoke.clone()),
        }
    }

    fn each(&self) -> [(&'static str, &Option<String>); 4] {
        [
            ("authorize", &self.authorize),
            ("token", &self.token),
            ("api", &self.api),
            ("revoke", &self.revoke),
        ]
    }
}

/// How a token request carries the client's id and secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClientAuth {
    #[default]
    Basic,
    Body,
}

/// `[connections.<id>]`: a connection the kernel holds for each tenant.
///
/// Credentials are settings: the provider supplies the app's (`provider-settings`, such as
/// `client_id`, `client_secret`, `app_key`, a client certificate) and the tenant its own
/// (`tenant-settings`, such as an API key or its own client id and secret). Each is a JSON
/// Schema object; a key the tenant sets wins over the provider's. The host reads these
/// keys by name: `client_id` and `client_secret` (OAuth2), `api_key` (API keys),
/// `client_certificate` and `client_key` (PEM, mutual TLS); `headers` adds others.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ConnectionSpec {
    pub kind: ConnectionKind,
    #[serde(default)]
    pub urls: ConnectionUrls,
    /// The service's sandbox URLs, where it has them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<ConnectionUrls>,
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Query parameters added to the authorization URL besides the standard ones
    /// (Google's `access_type = "offline"` and `prompt = "consent"`, without which it
    /// gives no refresh token).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub authorize_params: BTreeMap<String, String>,
    #[serde(default)]
    pub credential_in: CredentialIn,
    /// How a token request authenticates the client: HTTP Basic (RFC 6749's default) or
    /// `client_id` and `client_secret` in the form body (ServiceTitan).
    #[serde(default)]
    pub client_auth: ClientAuth,
    /// The header or query parameter for `credential-in = "header"` or `"query"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_name: Option<String>,
    /// Headers added to every request, each from the setting of that name
    /// (`"ST-App-Key" = "app_key"`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Query parameters of the OAuth2 callback kept as the connection's metadata
    /// (QuickBooks' `realmId`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub callback_metadata: Vec<String>,
    /// Tenant settings shown as metadata (non-secret, such as an account id).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metadata: Vec<String>,
    /// A path under the API base, with `{key}` for callback metadata, that must answer
    /// 2xx with the new token before the connection is saved
    /// (`/v3/company/{realmId}/companyinfo/{realmId}`): the callback's query is not signed,
    /// so this is how the service confirms the account the token is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify_metadata: Option<String>,
    /// Every TLS handshake presents `client_certificate` and `client_key`.
    #[serde(default)]
    pub mutual_tls: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_settings: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_settings: Option<serde_json::Value>,
}

impl ConnectionSpec {
    /// The schema of the provider's settings (an empty object schema when not given).
    pub fn provider_schema(&self) -> serde_json::Value {
        schema_or_empty(&self.provider_settings)
    }

    pub fn tenant_schema(&self) -> serde_json::Value {
        schema_or_empty(&self.tenant_settings)
    }
}

fn schema_or_empty(schema: &Option<serde_json::Value>) -> serde_json::Value {
    schema
        .clone()
        .unwrap_or_else(|| serde_json::json!({"type": "object", "additionalProperties": false}))
}

/// How the host verifies an inbound webhook before the plugin sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WebhookScheme {
    /// HMAC-SHA256 of the raw body, in the header `signature-header`, base64 or hex.
    HmacSha256,
    /// Standard Webhooks: `webhook-id`, `webhook-timestamp`, `webhook-signature`.
    StandardWebhooks,
    /// Stripe's `Stripe-Signature: t=…,v1=…`.
    Stripe,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SignatureEncoding {
    #[default]
    Base64,
    Hex,
    /// Either (hex when the value is 64 hex digits, with or without `sha256=`): for a
    /// service whose encoding is not documented.
    Auto,
}

/// `[webhooks]`: how inbound calls are verified and, for the app-wide address, routed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct WebhookSpec {
    pub verify: WebhookScheme,
    /// The signature header of `hmac-sha256`; `config:/pointer` reads its name from the
    /// installation's config (for a service whose header is not documented).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature_header: Option<String>,
    #[serde(default)]
    pub encoding: SignatureEncoding,
    /// Where the secret is: `config:/pointer` (the installation's own `writeOnly` config)
    /// or `connection:<id>/<setting>` (a provider setting of a connection: an app-wide
    /// webhook has no tenant to read a config from before it is routed).
    pub secret: String,
    /// The app-wide address routes a call to the tenant whose connection `route.connection`
    /// has metadata `route.metadata` equal to the body's value at `route.pointer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<WebhookRoute>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct WebhookRoute {
    pub connection: String,
    pub metadata: String,
    /// A JSON pointer into the body, or several for a service that sends more than one
    /// payload format (the first that finds a value routes); where it names an array
    /// element with `*` (`/eventNotifications/*/realmId`), each element is routed on its
    /// own.
    pub pointer: Pointers,
}

/// One JSON pointer or a list of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Pointers {
    One(String),
    Many(Vec<String>),
}

impl Pointers {
    pub fn all(&self) -> &[String] {
        match self {
            Pointers::One(p) => std::slice::from_ref(p),
            Pointers::Many(ps) => ps,
        }
    }
}

impl WebhookSpec {
    /// The config pointer the signature header's name is read from, when it is
    /// `config:/pointer`.
    pub fn header_from_config(&self) -> Option<&str> {
        self.signature_header.as_deref()?.strip_prefix("config:")
    }
}

/// Where a webhook secret comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    Config(String),
    Connection { connection: String, setting: String },
}

impl WebhookSpec {
    pub fn secret_source(&self) -> Option<SecretSource> {
        if let Some(pointer) = self.secret.strip_prefix("config:") {
            return pointer
                .starts_with('/')
                .then(|| SecretSource::Config(pointer.to_string()));
        }
        let rest = self.secret.strip_prefix("connection:")?;
        let (connection, setting) = rest.split_once('/')?;
        (!connection.is_empty() && !setting.is_empty()).then(|| SecretSource::Connection {
            connection: connection.to_string(),
            setting: setting.to_string(),
        })
    }
}

/// `[schedules.<id>]`: a periodic `on-schedule` call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ScheduleSpec {
    /// `15m`, `1h`, `1d`; at least one minute.
    pub every: String,
}

impl ScheduleSpec {
    pub fn interval(&self) -> Option<Duration> {
        parse_interval(&self.every)
    }
}

/// `30m`, `2h`, `1d` (also `90s` where it is a whole number of minutes).
pub fn parse_interval(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().ok()?;
    let seconds = match unit {
        "s" => n,
        "m" => n.checked_mul(60)?,
        "h" => n.checked_mul(3600)?,
        "d" => n.checked_mul(86_400)?,
        _ => return None,
    };
    Some(Duration::from_secs(seconds))
}

/// What the provider sets for one installation: quotas (each within [`Quotas::MAX`],
/// replacing the manifest's, so the provider may also raise one) and longer schedule
/// intervals.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Overrides {
    #[serde(default, skip_serializing_if = "QuotaOverrides::is_empty")]
    pub quotas: QuotaOverrides,
    /// Schedule id → interval (`"1h"`), at least the manifest's.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub schedules: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct QuotaOverrides {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_requests: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record_reads: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record_writes: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<u32>,
    /// The wall-clock cap of every hook's call, replacing the hook's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wall_ms: Option<u32>,
}

impl QuotaOverrides {
    pub fn is_empty(&self) -> bool {
        *self == QuotaOverrides::default()
    }
}

impl Overrides {
    /// The problems of a provider's overrides for `manifest`, each naming its field
    /// (`/quotas/http-requests`, `/schedules/poll`) and the bound.
    pub fn check(&self, manifest: &crate::Manifest) -> Vec<(String, String)> {
        let mut errors = Vec::new();
        let max = Quotas::MAX;
        let q = &self.quotas;
        for (name, value, limit) in [
            (
                "http-requests",
                q.http_requests.map(u64::from),
                u64::from(max.http_requests),
            ),
            ("http-bytes", q.http_bytes, max.http_bytes),
            (
                "record-reads",
                q.record_reads.map(u64::from),
                u64::from(max.record_reads),
            ),
            (
                "record-writes",
                q.record_writes.map(u64::from),
                u64::from(max.record_writes),
            ),
            ("events", q.events.map(u64::from), u64::from(max.events)),
        ] {
            if let Some(value) = value
                && value > limit
            {
                errors.push((
                    format!("/quotas/{name}"),
                    format!("{value} is over the platform's maximum of {limit}"),
                ));
            }
        }
        let wall_max = max.wall_ms.unwrap_or(u32::MAX);
        if let Some(ms) = q.wall_ms
            && !(100..=wall_max).contains(&ms)
        {
            errors.push((
                "/quotas/wall-ms".into(),
                format!("{ms} is not between 100 and {wall_max}"),
            ));
        }
        for (id, every) in &self.schedules {
            let at = format!("/schedules/{}", crate::pointer::escape(id));
            let Some(declared) = manifest.schedules.get(id) else {
                errors.push((
                    at,
                    format!("the plugin declares no schedule {:?}", short(id)),
                ));
                continue;
            };
            let minimum = declared.interval().unwrap_or(MIN_SCHEDULE);
            match parse_interval(every) {
                Some(i) if i >= minimum && i <= MAX_SCHEDULE && i.as_secs() % 60 == 0 => {}
                _ => errors.push((
                    at,
                    format!(
                        "{:?} is not a whole number of minutes from the plugin's {} to 31d",
                        short(every),
                        declared.every
                    ),
                )),
            }
        }
        errors
    }

    /// The manifest's quotas with the provider's over them, within the platform's maxima.
    pub fn quotas(&self, manifest: Quotas) -> Quotas {
        let q = &self.quotas;
        Quotas {
            http_requests: q.http_requests.unwrap_or(manifest.http_requests),
            http_bytes: q.http_bytes.unwrap_or(manifest.http_bytes),
            record_reads: q.record_reads.unwrap_or(manifest.record_reads),
            record_writes: q.record_writes.unwrap_or(manifest.record_writes),
            events: q.events.unwrap_or(manifest.events),
            wall_ms: manifest.wall_ms,
        }
        .capped_by(Quotas::MAX)
    }

    /// A call's wall-clock cap: the provider's when set, else the hook's (as the manifest
    /// lowered it).
    pub fn wall_for(&self, quotas: &Quotas, hook: crate::Hook) -> Duration {
        match self.quotas.wall_ms {
            Some(ms) => {
                Duration::from_millis(u64::from(ms.min(Quotas::MAX.wall_ms.unwrap_or(u32::MAX))))
            }
            None => quotas.wall_for(hook),
        }
    }

    /// A schedule's interval: the provider's when it is longer than the manifest's.
    pub fn interval(&self, id: &str, declared: Duration) -> Duration {
        self.schedules
            .get(id)
            .and_then(|every| parse_interval(every))
            .map_or(declared, |i| i.max(declared))
    }
}

/// Shortest schedule interval.
pub const MIN_SCHEDULE: Duration = Duration::from_secs(60);
/// Longest schedule interval.
pub const MAX_SCHEDULE: Duration = Duration::from_secs(31 * 86_400);

/// `[quotas]`: what one call may do. The manifest may lower the platform's defaults; the
/// provider may set them per installation up to [`Quotas::MAX`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Quotas {
    #[serde(default = "d::http_requests")]
    pub http_requests: u32,
    /// Request and response bodies together.
    #[serde(default = "d::http_bytes")]
    pub http_bytes: u64,
    #[serde(default = "d::record_reads")]
    pub record_reads: u32,
    #[serde(default = "d::record_writes")]
    pub record_writes: u32,
    #[serde(default = "d::events")]
    pub events: u32,
    /// Wall-clock cap of a whole call, host calls included. `None`: the hook's default
    /// ([`Quotas::wall_for`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wall_ms: Option<u32>,
}

mod d {
    pub fn http_requests() -> u32 {
        20
    }
    pub fn http_bytes() -> u64 {
        16 << 20
    }
    pub fn record_reads() -> u32 {
        1_000
    }
    pub fn record_writes() -> u32 {
        100
    }
    pub fn events() -> u32 {
        100
    }
}

impl Default for Quotas {
    fn default() -> Self {
        Quotas {
            http_requests: d::http_requests(),
            http_bytes: d::http_bytes(),
            record_reads: d::record_reads(),
            record_writes: d::record_writes(),
            events: d::events(),
            wall_ms: None,
        }
    }
}

impl Quotas {
    /// The most the provider may allow one installation.
    pub const MAX: Quotas = Quotas {
        http_requests: 200,
        http_bytes: 256 << 20,
        record_reads: 10_000,
        record_writes: 1_000,
        events: 1_000,
        wall_ms: Some(120_000),
    };

    /// The default wall-clock cap of a hook's call.
    pub fn default_wall(hook: crate::Hook) -> Duration {
        match hook {
            crate::Hook::ScoreLead => Duration::from_secs(5),
            crate::Hook::HandleWebhook => Duration::from_secs(15),
            _ => Duration::from_secs(60),
        }
    }

    /// The wall-clock cap of a call of `hook`: the hook's default, or the manifest's when
    /// it is lower (a manifest lowers quotas, never raises them).
    pub fn wall_for(&self, hook: crate::Hook) -> Duration {
        let default = Self::default_wall(hook);
        self.wall_ms
            .map_or(default, |ms| Duration::from_millis(ms as u64).min(default))
    }

    /// Each of these quotas, capped by the same quota in `max`.
    pub fn capped_by(self, max: Quotas) -> Quotas {
        Quotas {
            http_requests: self.http_requests.min(max.http_requests),
            http_bytes: self.http_bytes.min(max.http_bytes),
            record_reads: self.record_reads.min(max.record_reads),
            record_writes: self.record_writes.min(max.record_writes),
            events: self.events.min(max.events),
            wall_ms: match (self.wall_ms, max.wall_ms) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
        }
    }
}

/// The problems of the 0.2.0 parts of a manifest, each a sentence naming the field.
pub(crate) fn validate(m: &crate::Manifest, errors: &mut Vec<String>) {
    let v2 = m.api >= semver::Version::new(0, 2, 0);
    let uses = m.http.is_some()
        || !m.connections.is_empty()
        || m.webhooks.is_some()
        || !m.schedules.is_empty();
    if !v2 && uses {
        errors.push(format!(
            "http, connections, webhooks and schedules need api 0.2.0 or later (this manifest declares {})",
            m.api
        ));
    }
    let http = m.requests(crate::Capability::Http);
    if let Some(spec) = &m.http {
        if !http {
            errors.push("http: listing hosts needs the http capability".into());
        }
        if spec.hosts.is_empty() || spec.hosts.len() > 64 {
            errors.push("http.hosts: list 1 to 64 host names".into());
        }
        for host in &spec.hosts {
            if !valid_host_pattern(host) {
                errors.push(format!(
                    "http.hosts: {:?} is not a lowercase host name such as \"api.sam.gov\" or \"*.api.intuit.com\"",
                    short(host)
                ));
            }
        }
    }
    if !m.connections.is_empty() && !http {
        errors
            .push("connections: a connection is used through http; request that capability".into());
    }
    if m.connections.len() > 8 {
        errors.push("connections: at most 8".into());
    }
    for (id, c) in &m.connections {
        validate_connection(id, c, errors);
    }
    if let Some(w) = &m.webhooks {
        validate_webhooks(m, w, errors);
    }
    if !m.schedules.is_empty() && !m.has_hook(crate::Hook::OnSchedule) {
        errors.push("schedules: schedules need the on-schedule hook".into());
    }
    if m.has_hook(crate::Hook::OnSchedule) && m.schedules.is_empty() {
        errors.push("schedules: the on-schedule hook needs at least one schedule".into());
    }
    if m.schedules.len() > 16 {
        errors.push("schedules: at most 16".into());
    }
    for (id, s) in &m.schedules {
        if !valid_name(id) {
            errors.push(format!(
                "schedules.{:?}: use lowercase letters, digits and '-'",
                short(id)
            ));
        }
        match s.interval() {
            Some(i) if (MIN_SCHEDULE..=MAX_SCHEDULE).contains(&i) && i.as_secs() % 60 == 0 => {}
            _ => errors.push(format!(
                "schedules.{}.every: {:?} is not a whole number of minutes from 1m to 31d (such as \"15m\", \"1h\", \"1d\")",
                short(id),
                short(&s.every)
            )),
        }
    }
    let q = m.quotas;
    let max = Quotas::default();
    for (name, value, limit) in [
        (
            "http-requests",
            q.http_requests as u64,
            max.http_requests as u64,
        ),
        ("http-bytes", q.http_bytes, max.http_bytes),
        (
            "record-reads",
            q.record_reads as u64,
            max.record_reads as u64,
        ),
        (
            "record-writes",
            q.record_writes as u64,
            max.record_writes as u64,
        ),
        ("events", q.events as u64, max.events as u64),
    ] {
        if value > limit {
            errors.push(format!(
                "quotas.{name}: a manifest may lower the platform's {limit}, not raise it"
            ));
        }
    }
    if let Some(ms) = q.wall_ms
        && !(100..=Quotas::MAX.wall_ms.unwrap_or(u32::MAX)).contains(&ms)
    {
        errors.push(format!(
            "quotas.wall-ms: between 100 and {}",
            Quotas::MAX.wall_ms.unwrap_or(u32::MAX)
        ));
    }
}

/// Parameters of the authorization URL the host sets itself (PKCE and the redirect among
/// them): a manifest cannot replace them.
const RESERVED_AUTHORIZE_PARAMS: [&str; 10] = [
    "response_type",
    "client_id",
    "redirect_uri",
    "scope",
    "state",
    "code_challenge",
    "code_challenge_method",
    // A request object carries its own redirect and state; the response mode changes how
    // the callback is reached.
    "request",
    "request_uri",
    "response_mode",
];

fn validate_connection(id: &str, c: &ConnectionSpec, errors: &mut Vec<String>) {
    let at = format!("connections.{}", short(id));
    if !valid_name(id) {
        errors.push(format!("{at}: use lowercase letters, digits and '-'"));
    }
    let mut check_urls = |urls: &ConnectionUrls, part: &str| {
        for (name, url) in urls.each() {
            if let Some(url) = url
                && !url.starts_with("https://")
            {
                errors.push(format!(
                    "{at}.{part}{name}: {:?} is not an https:// URL (a provider may point a connection at a local service with its own URLs)",
                    short(url)
                ));
            }
        }
    };
    check_urls(&c.urls, "urls.");
    if let Some(sandbox) = &c.sandbox {
        check_urls(sandbox, "sandbox.");
    }
    match c.kind {
        ConnectionKind::Oauth2AuthorizationCode if c.urls.authorize.is_none() => errors.push(
            format!("{at}.urls.authorize: the authorization code flow needs it"),
        ),
        _ => {}
    }
    if c.kind.is_oauth2() && c.urls.token.is_none() {
        errors.push(format!("{at}.urls.token: OAuth2 needs a token URL"));
    }
    if let Some(path) = &c.verify_metadata
        && (!path.starts_with('/') || c.callback_metadata.is_empty() || c.urls.api.is_none())
    {
        errors.push(format!(
            "{at}.verify-metadata: a path starting with '/' under urls.api, for a connection with callback-metadata"
        ));
    }
    if !c.authorize_params.is_empty() && c.kind != ConnectionKind::Oauth2AuthorizationCode {
        errors.push(format!(
            "{at}.authorize-params: only the authorization code flow has an authorization URL"
        ));
    }
    for name in c.authorize_params.keys() {
        let reserved = RESERVED_AUTHORIZE_PARAMS
            .iter()
            .any(|r| r.eq_ignore_ascii_case(name));
        if reserved || !valid_header_name(name) {
            errors.push(format!(
                "{at}.authorize-params: {:?} cannot be set (the host sets {})",
                short(name),
                RESERVED_AUTHORIZE_PARAMS.join(", ")
            ));
        }
    }
    if c.kind != ConnectionKind::Oauth2AuthorizationCode && !c.callback_metadata.is_empty() {
        errors.push(format!(
            "{at}.callback-metadata: only the authorization code flow has a callback"
        ));
    }
    if c.credential_in != CredentialIn::Bearer && c.credential_name.is_none() {
        errors.push(format!(
            "{at}.credential-name: name the header or query parameter the credential goes in"
        ));
    }
    if let Some(name) = &c.credential_name
        && !valid_header_name(name)
    {
        errors.push(format!(
            "{at}.credential-name: {:?} is not a header or parameter name",
            short(name)
        ));
    }
    for header in c.headers.keys() {
        if !valid_header_name(header) || header.eq_ignore_ascii_case("authorization") {
            errors.push(format!("{at}.headers: {:?} cannot be set", short(header)));
        }
    }
    for (name, schema) in [
        ("provider-settings", &c.provider_settings),
        ("tenant-settings", &c.tenant_settings),
    ] {
        if let Some(schema) = schema {
            if schema.get("type").and_then(|t| t.as_str()) != Some("object") {
                errors.push(format!("{at}.{name}: a JSON Schema of an object"));
            } else {
                errors.extend(
                    crate::config_schema::scan(schema)
                        .problems
                        .into_iter()
                        .map(|p| format!("{at}.{name}: {p}")),
                );
            }
        }
    }
    if c.scopes.iter().any(|s| s.is_empty() || s.contains(' ')) {
        errors.push(format!("{at}.scopes: each scope is one word"));
    }
}

fn validate_webhooks(m: &crate::Manifest, w: &WebhookSpec, errors: &mut Vec<String>) {
    if !m.has_hook(crate::Hook::HandleWebhook) {
        errors.push("webhooks: verifying webhooks needs the handle-webhook hook".into());
    }
    if w.verify == WebhookScheme::HmacSha256 {
        match (&w.signature_header, w.header_from_config()) {
            (_, Some(pointer)) => {
                if !pointer.starts_with('/') {
                    errors.push(format!(
                        "webhooks.signature-header: {:?} is not \"config:/pointer\"",
                        short(pointer)
                    ));
                }
                if w.route.is_some() {
                    errors.push("webhooks.signature-header: an app-wide (routed) webhook is verified before any tenant is known; name its header in the manifest".into());
                }
            }
            (Some(h), None) if valid_header_name(h) => {}
            _ => errors.push("webhooks.signature-header: hmac-sha256 needs the header that carries the signature".into()),
        }
    }
    match w.secret_source() {
        None => errors.push(format!(
            "webhooks.secret: {:?} is neither \"config:/pointer\" nor \"connection:<id>/<setting>\"",
            short(&w.secret)
        )),
        Some(SecretSource::Connection { connection, .. })
            if !m.connections.contains_key(&connection) =>
        {
            errors.push(format!(
                "webhooks.secret: no connection {:?} in this manifest",
                short(&connection)
            ))
        }
        Some(SecretSource::Config(pointer)) if !m.secret_fields().contains(&pointer) => {
            errors.push(format!(
                "webhooks.secret: {pointer:?} is not a writeOnly field of the config schema"
            ))
        }
        Some(_) => {}
    }
    if let Some(route) = &w.route {
        if let Some(c) = m.connections.get(&route.connection)
            && c.callback_metadata.contains(&route.metadata)
            && c.verify_metadata.is_none()
        {
            errors.push(format!(
                "webhooks.route: {} comes from the OAuth2 callback's query, which the service does not sign; \
                 set connections.{}.verify-metadata so the service confirms it before webhooks are routed by it",
                short(&route.metadata),
                short(&route.connection)
            ));
        }
        if !m.connections.contains_key(&route.connection) {
            errors.push(format!(
                "webhooks.route.connection: no connection {:?} in this manifest",
                short(&route.connection)
            ));
        }
        let pointers = route.pointer.all();
        if pointers.is_empty() || pointers.len() > 4 || pointers.iter().any(|p| !p.starts_with('/'))
        {
            errors.push("webhooks.route.pointer: one to four JSON pointers into the body, such as \"/eventNotifications/*/realmId\"".into());
        }
        if matches!(w.secret_source(), Some(SecretSource::Config(_))) {
            errors.push("webhooks.secret: an app-wide (routed) webhook is verified before any tenant is known; take its secret from a connection's provider setting".into());
        }
    }
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn valid_header_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn short(s: &str) -> String {
    s.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_patterns() {
        let spec = HttpSpec {
            hosts: vec!["*.api.intuit.com".into(), "api.sam.gov".into()],
        };
        assert!(spec.allows("quickbooks.api.intuit.com"));
        assert!(spec.allows("Sandbox-Quickbooks.API.intuit.com."));
        assert!(!spec.allows("api.intuit.com"));
        assert!(!spec.allows("evilapi.intuit.com"));
        assert!(!spec.allows("x.api.intuit.com.evil.test"));
        assert!(spec.allows("api.sam.gov"));
        assert!(!spec.allows("open.api.sam.gov"));
        for bad in [
            "*",
            "*.com",
            "*.com.",
            "127.0.0.1",
            "a..b",
            "-a.com",
            "a",
            "UPPER.com",
        ] {
            assert!(!valid_host_pattern(bad), "{bad}");
        }
        for good in [
            "*.example.com",
            "api.sam.gov",
            "*.api.intuit.com",
            "x1-2.example.org",
        ] {
            assert!(valid_host_pattern(good), "{good}");
        }
    }

    #[test]
    fn a_manifest_lowers_the_wall_clock_cap_never_raises_it() {
        use crate::Hook;
        let q = |ms| Quotas {
            wall_ms: ms,
            ..Quotas::default()
        };
        assert_eq!(q(None).wall_for(Hook::ScoreLead), Duration::from_secs(5));
        assert_eq!(q(None).wall_for(Hook::RunAction), Duration::from_secs(60));
        assert_eq!(
            q(Some(2_000)).wall_for(Hook::ScoreLead),
            Duration::from_secs(2)
        );
        assert_eq!(
            q(Some(90_000)).wall_for(Hook::ScoreLead),
            Duration::from_secs(5)
        );
        assert_eq!(
            q(Some(90_000)).wall_for(Hook::OnSchedule),
            Duration::from_secs(60)
        );
    }

    #[test]
    fn intervals() {
        assert_eq!(parse_interval("15m"), Some(Duration::from_secs(900)));
        assert_eq!(parse_interval("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_interval("2d"), Some(Duration::from_secs(172_800)));
        assert_eq!(parse_interval("120s"), Some(Duration::from_secs(120)));
        for bad in ["", "m", "5", "5 m", "1w", "-1m", "99999999999999999999d"] {
            assert_eq!(parse_interval(bad), None, "{bad}");
        }
    }

    #[test]
    fn webhook_secret_sources() {
        let spec = |secret: &str| WebhookSpec {
            verify: WebhookScheme::Stripe,
            signature_header: None,
            encoding: SignatureEncoding::Hex,
            secret: secret.into(),
            route: None,
        };
        assert_eq!(
            spec("config:/signing_secret").secret_source(),
            Some(SecretSource::Config("/signing_secret".into()))
        );
        assert_eq!(
            spec("connection:quickbooks/verifier_token").secret_source(),
            Some(SecretSource::Connection {
                connection: "quickbooks".into(),
                setting: "verifier_token".into()
            })
        );
        for bad in ["config:x", "connection:qb", "connection:/x", "env:HOME"] {
            assert_eq!(spec(bad).secret_source(), None, "{bad}");
        }
    }

    #[test]
    fn authorize_params_cannot_replace_the_hosts_own() {
        let spec = |kind: &str, params: &str| -> ConnectionSpec {
            toml::from_str(&format!(
                r#"kind = "{kind}"
urls = {{ authorize = "https://a.test/auth", token = "https://a.test/token" }}
authorize-params = {params}"#
            ))
            .unwrap()
        };
        let errors = |c: &ConnectionSpec| {
            let mut errors = Vec::new();
            validate_connection("c", c, &mut errors);
            errors
        };
        let google = spec(
            "oauth2-authorization-code",
            r#"{ access_type = "offline", prompt = "consent" }"#,
        );
        assert_eq!(errors(&google), Vec::<String>::new());
        let reserved = errors(&spec(
            "oauth2-authorization-code",
            r#"{ Redirect_URI = "https://evil.test/", "bad name" = "x", request_uri = "urn:x" }"#,
        ));
        assert_eq!(reserved.len(), 3, "{reserved:?}");
        for name in ["bad name", "Redirect_URI", "request_uri"] {
            assert!(
                reserved
                    .iter()
                    .any(|e| e.contains(&format!("{name:?} cannot be set"))),
                "{name}: {reserved:?}"
            );
        }
        let machine = errors(&spec(
            "oauth2-client-credentials",
            r#"{ access_type = "offline" }"#,
        ));
        assert!(
            machine[0].contains("only the authorization code flow"),
            "{machine:?}"
        );
    }
}
