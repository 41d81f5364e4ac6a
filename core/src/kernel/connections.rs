//! Connections: credentials the kernel holds for a plugin and adds to its requests, which
//! the plugin never sees (Salesforce's named credentials). The provider sets each
//! connection's app settings (client id and secret, app key, certificate) and may replace
//! its URLs; each tenant connects, by OAuth2 authorization code with PKCE, by client
//! credentials, or with an API key. Access tokens refresh before they expire and once on a
//! 401; a rotated refresh token is saved only over the generation it was read from, so two
//! nodes refreshing at once keep the newer one.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use streamflow_runtime::integration::{
    ClientAuth, ConnectionKind, ConnectionSpec, ConnectionUrls, CredentialIn,
};
use streamflow_runtime::{ConnectionInfo, ConnectionStatus, EventKind, Manifest};
use uuid::Uuid;

use super::Kernel;
use crate::error::FieldError;
use crate::outbound::{self, Identity, OutboundError};
use crate::store::events::NewEvent;
use crate::store::integrations::ConnectionRow;
use crate::store::{StoreError, TenantScope, now_micros};

/// How long an authorization may take from `authorize` to the callback.
pub const STATE_TTL: Duration = Duration::from_secs(600);
/// A token this close to expiry is refreshed before use.
const REFRESH_MARGIN: i64 = 60_000_000;
/// Timeout of a token request.
const TOKEN_TIMEOUT: Duration = Duration::from_secs(15);
/// How long one node's refresh holds the connection: well over a token request's timeout,
/// so a slow but live refresh is not taken over (its refresh token would be used twice).
const REFRESH_LEASE: Duration = Duration::from_secs(45);

/// Why a connection call failed, as the API and plugins are told it.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error("no plugin {0} is installed here, or it declares no such connection")]
    Unknown(String),
    #[error("{}", crate::error::summarize(.0))]
    Invalid(Vec<FieldError>),
    #[error("{0}")]
    NotReady(String),
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<Vec<FieldError>> for ConnectionError {
    fn from(e: Vec<FieldError>) -> Self {
        ConnectionError::Invalid(e)
    }
}

/// What a connection adds to a request.
#[derive(Debug, Default)]
pub struct Applied {
    pub headers: Vec<(String, String)>,
    pub query: Vec<(String, String)>,
    pub identity: Option<Arc<Identity>>,
    /// The base relative URLs are joined to.
    pub api_base: Option<String>,
    /// The hosts of the connection's URLs: the provider chose them, so requests to them
    /// are allowed besides the manifest's `[http] hosts`.
    pub hosts: Vec<String>,
    /// An OAuth2 connection's generation, to refresh from on a 401.
    pub generation: Option<i64>,
}

/// Stored tokens (sealed).
#[derive(Debug, Clone, serde::Serialize, Deserialize)]
struct Tokens {
    access_token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    refresh_token: Option<String>,
}

#[derive(Debug, Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    expires_in: Option<i64>,
}

#[derive(Debug, Deserialize)]
struct TokenError {
    error: String,
    #[serde(default)]
    error_description: Option<String>,
}

/// Connections of the kernel.
pub struct Connections<'k> {
    pub(super) kernel: &'k Kernel,
}

fn app_aad(plugin: &str, connection: &str) -> Vec<u8> {
    format!("connection_apps.settings/{plugin}/{connection}").into_bytes()
}

fn tenant_aad(tenant: Uuid, plugin: &str, connection: &str, part: &str) -> Vec<u8> {
    format!("connections.{part}/{tenant}/{plugin}/{connection}").into_bytes()
}

/// Hash of an OAuth2 `state`, as stored.
fn state_hash(state: &str) -> String {
    streamflow_runtime::package::hex(&Sha256::digest(state.as_bytes()))
}

/// A setting read as text.
fn setting<'a>(settings: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    settings
        .get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

impl Connections<'_> {
    fn open_map(&self, sealed: Option<&[u8]>, aad: &[u8]) -> Map<String, Value> {
        let Some(sealed) = sealed else {
            return Map::new();
        };
        match self.kernel.plugins.secret_box().open(sealed, aad) {
            Ok(plain) => serde_json::from_slice(&plain).unwrap_or_default(),
            Err(_) => {
                tracing::error!(
                    "a connection's sealed settings could not be opened (wrong STREAMFLOW_SECRET_KEY?)"
                );
                Map::new()
            }
        }
    }

    fn seal(&self, value: &impl serde::Serialize, aad: &[u8]) -> Vec<u8> {
        let plain = serde_json::to_vec(value).expect("serialises");
        self.kernel.plugins.secret_box().seal(&plain, aad)
    }

    /// The newest approved manifest of a plugin (the provider's view of its connections).
    pub(crate) async fn newest_manifest(
        &self,
        plugin_id: &str,
    ) -> Result<Manifest, ConnectionError> {
        let versions = self.kernel.store.approved_versions(plugin_id).await?;
        versions
            .iter()
            .filter_map(|v| v.manifest().ok())
            .max_by(|a, b| a.version.cmp(&b.version))
            .ok_or_else(|| ConnectionError::Unknown(plugin_id.to_string()))
    }

    /// The manifest of the tenant's installation of a plugin.
    async fn installed_manifest(
        &self,
        scope: &TenantScope,
        plugin_id: &str,
    ) -> Result<Manifest, ConnectionError> {
        let row = self
            .kernel
            .store
            .get_installation(scope, plugin_id)
            .await?
            .ok_or_else(|| ConnectionError::Unknown(plugin_id.to_string()))?;
        let version = self
            .kernel
            .store
            .get_version(plugin_id, &row.version)
            .await?
            .ok_or_else(|| ConnectionError::Unknown(plugin_id.to_string()))?;
        version
            .manifest()
            .map_err(|_| ConnectionError::Unknown(plugin_id.to_string()))
    }

    fn spec<'m>(
        manifest: &'m Manifest,
        connection: &str,
    ) -> Result<&'m ConnectionSpec, ConnectionError> {
        manifest.connections.get(connection).ok_or_else(|| {
            ConnectionError::Unknown(format!("{} (connection {connection:?})", manifest.id))
        })
    }

    /// The app settings and the URLs (the manifest's, with the provider's replacements).
    async fn app(
        &self,
        plugin_id: &str,
        connection: &str,
        spec: &ConnectionSpec,
    ) -> Result<(Map<String, Value>, ConnectionUrls), ConnectionError> {
        let row = self
            .kernel
            .store
            .connection_app(plugin_id, connection)
            .await?;
        let (settings, over) = match row {
            None => (Map::new(), ConnectionUrls::default()),
            Some(row) => (
                self.open_map(row.settings.as_deref(), &app_aad(plugin_id, connection)),
                serde_json::from_value(row.urls.0).unwrap_or_default(),
            ),
        };
        Ok((settings, spec.urls.overlaid(&over)))
    }

    /// The provider's view of a connection's app settings: secrets as `{"set": true}`.
    pub async fn app_view(
        &self,
        plugin_id: &str,
        connection: &str,
    ) -> Result<Value, ConnectionError> {
        let manifest = self.newest_manifest(plugin_id).await?;
        let spec = Self::spec(&manifest, connection)?;
        let (settings, urls) = self.app(plugin_id, connection, spec).await?;
        let secret = streamflow_runtime::config_schema::scan(&spec.provider_schema()).fields;
        let shown = masked(settings, &secret);
        Ok(json!({
            "plugin": plugin_id,
            "connection": connection,
            "kind": spec.kind.as_str(),
            "settings": shown,
            "urls": urls,
            "sandbox_urls": spec.sandbox,
            "scopes": spec.scopes,
            "redirect_uri": self.redirect_uri(),
        }))
    }

    /// Sets a connection's app settings (validated by the manifest's `provider-settings`;
    /// a secret left out keeps its value) and URL replacements. `None` keeps what is set.
    pub async fn put_app(
        &self,
        plugin_id: &str,
        connection: &str,
        settings: Option<Value>,
        urls: Option<ConnectionUrls>,
    ) -> Result<Value, ConnectionError> {
        let manifest = self.newest_manifest(plugin_id).await?;
        let spec = Self::spec(&manifest, connection)?;
        let (kept, _) = self.app(plugin_id, connection, spec).await?;
        let schema = spec.provider_schema();
        let secret_fields = streamflow_runtime::config_schema::scan(&schema).fields;
        let kept = Value::Object(kept);
        let kept_secrets: Map<String, Value> = secret_fields
            .iter()
            .filter_map(|p| kept.pointer(p).map(|v| (p.clone(), v.clone())))
            .collect();
        let settings = settings.unwrap_or_else(|| {
            let mut public = kept.clone();
            for pointer in &secret_fields {
                crate::plugins::config::take_pointer(&mut public, pointer);
            }
            public
        });
        let prepared =
            crate::plugins::config::prepare(&schema, &secret_fields, settings, &kept_secrets)
                .map_err(|errors| prefix_errors(errors, "/settings"))?;
        let all = rejoined(prepared);
        let urls = match urls {
            Some(urls) => urls,
            None => self
                .kernel
                .store
                .connection_app(plugin_id, connection)
                .await?
                .and_then(|row| serde_json::from_value(row.urls.0).ok())
                .unwrap_or_default(),
        };
        check_urls(&urls)?;
        let sealed = self.seal(&all, &app_aad(plugin_id, connection));
        self.kernel
            .store
            .put_connection_app(
                plugin_id,
                connection,
                Some(&sealed),
                &serde_json::to_value(&urls).unwrap_or_default(),
            )
            .await?;
        self.app_view(plugin_id, connection).await
    }

    /// One text setting of a connection: the tenant's own (when a tenant is given) over the
    /// provider's. For the host's own use (a webhook's signing secret), never a plugin's.
    pub(crate) async fn setting(
        &self,
        scope: Option<&TenantScope>,
        plugin_id: &str,
        connection: &str,
        key: &str,
    ) -> Result<Option<String>, StoreError> {
        if let Some(scope) = scope
            && let Some(row) = self
                .kernel
                .store
                .connection(scope, plugin_id, connection)
                .await?
            && let Some(value) = setting(&self.credentials_of(scope, &row), key)
        {
            return Ok(Some(value.to_string()));
        }
        let Some(row) = self
            .kernel
            .store
            .connection_app(plugin_id, connection)
            .await?
        else {
            return Ok(None);
        };
        let app = self.open_map(row.settings.as_deref(), &app_aad(plugin_id, connection));
        Ok(setting(&app, key).map(str::to_string))
    }

    /// `STREAMFLOW_PUBLIC_URL` + `/oauth/callback`.
    pub fn redirect_uri(&self) -> String {
        format!("{}/oauth/callback", self.kernel.config.public_base())
    }

    /// Every connection the tenant's installed plugins declare, connected or not.
    pub async fn list(&self, scope: &TenantScope) -> Result<Vec<Value>, ConnectionError> {
        let rows = self.kernel.store.connections(scope).await?;
        let mut items = Vec::new();
        for active in self.kernel.plugins.active(scope).await?.iter() {
            for (id, spec) in &active.manifest.connections {
                let row = rows
                    .iter()
                    .find(|r| r.plugin_id == active.plugin_id && &r.connection == id);
                items.push(view_json(&active.plugin_id, &info_of(id, spec, row)));
            }
        }
        Ok(items)
    }

    /// A connection as a plugin sees it.
    pub async fn info(
        &self,
        scope: &TenantScope,
        manifest: &Manifest,
        connection: &str,
    ) -> Result<Option<ConnectionInfo>, ConnectionError> {
        let Some(spec) = manifest.connections.get(connection) else {
            return Ok(None);
        };
        let row = self
            .kernel
            .store
            .connection(scope, &manifest.id, connection)
            .await?;
        Ok(Some(info_of(connection, spec, row.as_ref())))
    }

    /// Sets the tenant's own credentials (an API key, its client id and secret, a
    /// certificate), validated by the manifest's `tenant-settings`. A client credentials
    /// connection requests a token at once, so a wrong secret is said now, not at the
    /// first plugin call.
    pub async fn put_credentials(
        &self,
        scope: &TenantScope,
        plugin_id: &str,
        connection: &str,
        credentials: Value,
    ) -> Result<Value, ConnectionError> {
        let manifest = self.installed_manifest(scope, plugin_id).await?;
        let spec = Self::spec(&manifest, connection)?.clone();
        let schema = spec.tenant_schema();
        let secret_fields = streamflow_runtime::config_schema::scan(&schema).fields;
        let prepared =
            crate::plugins::config::prepare(&schema, &secret_fields, credentials, &Map::new())
                .map_err(|errors| prefix_errors(errors, "/credentials"))?;
        let public = prepared.public.as_object().cloned().unwrap_or_default();
        let all = rejoined(prepared);
        let metadata: Map<String, Value> = spec
            .metadata
            .iter()
            .filter_map(|k| public.get(k).map(|v| (k.clone(), v.clone())))
            .collect();
        self.check_routing(scope, &manifest, connection, &metadata)
            .await?;
        let sealed = self.seal(
            &all,
            &tenant_aad(scope.tenant_id(), plugin_id, connection, "credentials"),
        );
        let (tokens, expires_at, status) = match spec.kind {
            ConnectionKind::ApiKey => (None, None, ConnectionStatus::Connected),
            ConnectionKind::Oauth2ClientCredentials => {
                let (app, urls) = self.app(plugin_id, connection, &spec).await?;
                let merged = merged_settings(&app, &all);
                let (tokens, expires_at) = self
                    .token_request(
                        &spec,
                        &urls,
                        &merged,
                        &[("grant_type", "client_credentials")],
                        true,
                    )
                    .await
                    .map_err(ConnectionError::Refused)?;
                let sealed_tokens = self.seal(
                    &tokens,
                    &tenant_aad(scope.tenant_id(), plugin_id, connection, "tokens"),
                );
                (Some(sealed_tokens), expires_at, ConnectionStatus::Connected)
            }
            // Credentials of an authorization code connection (a tenant's own app) are kept
            // for the authorization that follows.
            ConnectionKind::Oauth2AuthorizationCode => (None, None, ConnectionStatus::NotConnected),
        };
        self.kernel
            .store
            .put_connection(
                scope,
                plugin_id,
                connection,
                status.as_str(),
                &Value::Object(metadata),
                Some(&sealed),
                tokens.as_deref(),
                expires_at,
            )
            .await?;
        self.view(scope, plugin_id, connection).await
    }

    /// One connection's view for the tenant.
    pub async fn view(
        &self,
        scope: &TenantScope,
        plugin_id: &str,
        connection: &str,
    ) -> Result<Value, ConnectionError> {
        let manifest = self.installed_manifest(scope, plugin_id).await?;
        let info = self
            .info(scope, &manifest, connection)
            .await?
            .ok_or_else(|| ConnectionError::Unknown(plugin_id.to_string()))?;
        Ok(view_json(plugin_id, &info))
    }

    /// Disconnects: the credentials and tokens are deleted, and the token revoked where
    /// the connection has a revocation URL.
    pub async fn disconnect(
        &self,
        scope: &TenantScope,
        plugin_id: &str,
        connection: &str,
    ) -> Result<bool, ConnectionError> {
        let manifest = self.installed_manifest(scope, plugin_id).await?;
        let spec = Self::spec(&manifest, connection)?.clone();
        if let Some(row) = self
            .kernel
            .store
            .connection(scope, plugin_id, connection)
            .await?
            && let Some(tokens) = self.tokens_of(scope, &row)
        {
            let (app, urls) = self.app(plugin_id, connection, &spec).await?;
            if let Some(revoke) = &urls.revoke {
                let creds = self.credentials_of(scope, &row);
                let merged = merged_settings(&app, &creds);
                let token = tokens
                    .refresh_token
                    .as_deref()
                    .unwrap_or(&tokens.access_token);
                if let Err(e) = self
                    .form_post(revoke, &merged, &[("token", token)], &spec)
                    .await
                {
                    tracing::warn!(plugin = plugin_id, connection, error = %e, "revoking a token on disconnect failed; the credentials are deleted anyway");
                }
            }
        }
        Ok(self
            .kernel
            .store
            .delete_connection(scope, plugin_id, connection)
            .await?)
    }

    /// Starts an authorization code flow: the URL the admin is sent to.
    pub async fn authorize(
        &self,
        scope: &TenantScope,
        user_id: Uuid,
        plugin_id: &str,
        connection: &str,
    ) -> Result<String, ConnectionError> {
        let manifest = self.installed_manifest(scope, plugin_id).await?;
        let spec = Self::spec(&manifest, connection)?;
        if spec.kind != ConnectionKind::Oauth2AuthorizationCode {
            return Err(ConnectionError::NotReady(format!(
                "connection {connection} is {}: set its credentials with PUT instead",
                spec.kind.as_str()
            )));
        }
        let (app, urls) = self.app(plugin_id, connection, spec).await?;
        let creds = self
            .tenant_credentials(scope, plugin_id, connection)
            .await?;
        let merged = merged_settings(&app, &creds);
        let client_id = setting(&merged, "client_id").ok_or_else(|| {
            ConnectionError::NotReady(format!(
                "the provider has not set the client_id of {plugin_id}'s {connection} connection yet"
            ))
        })?;
        let authorize = urls
            .authorize
            .clone()
            .ok_or_else(|| ConnectionError::NotReady("no authorize URL".into()))?;
        let state = crate::crypto::random_token(32);
        let verifier = crate::crypto::random_token(48);
        let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
        let sealed = self.seal(&verifier, &state_aad(&state_hash(&state)));
        self.kernel
            .store
            .insert_oauth_state(
                scope,
                &state_hash(&state),
                user_id,
                plugin_id,
                connection,
                &sealed,
                now_micros() + STATE_TTL.as_micros() as i64,
            )
            .await?;
        let mut url = reqwest::Url::parse(&authorize).map_err(|_| {
            ConnectionError::NotReady("the connection's authorize URL is not a URL".into())
        })?;
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", client_id)
            .append_pair("redirect_uri", &self.redirect_uri())
            .append_pair("scope", &spec.scopes.join(" "))
            .append_pair("state", &state)
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256");
        for (name, value) in &spec.authorize_params {
            url.query_pairs_mut().append_pair(name, value);
        }
        Ok(url.to_string())
    }

    /// Completes an authorization: `state` is taken once (it is bound to the tenant, user
    /// and verifier), the code exchanged, the tokens and the callback metadata saved.
    /// Returns the tenant, plugin and connection.
    pub async fn callback(
        &self,
        state: &str,
        code: &str,
        query: &Map<String, Value>,
    ) -> Result<(Uuid, String, String), ConnectionError> {
        let taken = self
            .kernel
            .store
            .take_oauth_state(&state_hash(state))
            .await?
            .ok_or_else(|| ConnectionError::Refused("this authorization link is unknown, was already used or has expired (10 minutes); start again from StreamFlow".into()))?;
        let verifier: String = self
            .kernel
            .plugins
            .secret_box()
            .open(&taken.verifier, &state_aad(&state_hash(state)))
            .ok()
            .and_then(|p| serde_json::from_slice(&p).ok())
            .ok_or_else(|| {
                ConnectionError::Refused("the authorization could not be read back".into())
            })?;
        let scope = self
            .kernel
            .store
            .active_tenant_scope(taken.tenant_id)
            .await?
            .ok_or_else(|| ConnectionError::Refused("the tenant no longer exists".into()))?;
        // The person who started it must still be allowed to connect services.
        let allowed = self
            .kernel
            .store
            .user_by_id(&scope, taken.user_id)
            .await?
            .is_some_and(|u| {
                u.status == "active"
                    && crate::tenancy::Role::parse(&u.role)
                        .is_some_and(|r| r.allows(crate::tenancy::Permission::IntegrationsManage))
            });
        if !allowed {
            return Err(ConnectionError::Refused(
                "the person who started this authorization may no longer connect services".into(),
            ));
        }
        let (plugin_id, connection) = (taken.plugin_id, taken.connection);
        let manifest = self.installed_manifest(&scope, &plugin_id).await?;
        let spec = Self::spec(&manifest, &connection)?.clone();
        let (app, urls) = self.app(&plugin_id, &connection, &spec).await?;
        let creds_row = self
            .kernel
            .store
            .connection(&scope, &plugin_id, &connection)
            .await?;
        let creds = creds_row
            .as_ref()
            .map(|r| self.credentials_of(&scope, r))
            .unwrap_or_default();
        let merged = merged_settings(&app, &creds);
        let redirect = self.redirect_uri();
        let (tokens, expires_at) = self
            .token_request(
                &spec,
                &urls,
                &merged,
                &[
                    ("grant_type", "authorization_code"),
                    ("code", code),
                    ("redirect_uri", &redirect),
                    ("code_verifier", &verifier),
                ],
                false,
            )
            .await
            .map_err(ConnectionError::Refused)?;
        let mut metadata = creds_row
            .as_ref()
            .and_then(|r| r.metadata.0.as_object().cloned())
            .unwrap_or_default();
        for key in &spec.callback_metadata {
            if let Some(v) = query.get(key) {
                metadata.insert(key.clone(), v.clone());
            }
        }
        // Confirmed by the service first: an account the token is not for is refused
        // before anything is said about who else holds it.
        self.confirm_metadata(&spec, &urls, &tokens, &metadata, &merged)
            .await?;
        self.check_routing(&scope, &manifest, &connection, &metadata)
            .await?;
        let sealed_tokens = self.seal(
            &tokens,
            &tenant_aad(scope.tenant_id(), &plugin_id, &connection, "tokens"),
        );
        let sealed_creds = creds_row.and_then(|r| r.credentials);
        self.kernel
            .store
            .put_connection(
                &scope,
                &plugin_id,
                &connection,
                ConnectionStatus::Connected.as_str(),
                &Value::Object(metadata),
                sealed_creds.as_deref(),
                Some(&sealed_tokens),
                expires_at,
            )
            .await?;
        tracing::info!(tenant = %scope.tenant_id(), plugin = %plugin_id, connection = %connection, user = %taken.user_id, "connection authorized");
        Ok((scope.tenant_id(), plugin_id, connection))
    }

    async fn tenant_credentials(
        &self,
        scope: &TenantScope,
        plugin_id: &str,
        connection: &str,
    ) -> Result<Map<String, Value>, ConnectionError> {
        let row = self
            .kernel
            .store
            .connection(scope, plugin_id, connection)
            .await?;
        Ok(row
            .map(|r| self.credentials_of(scope, &r))
            .unwrap_or_default())
    }

    /// A stored connection's tenant-supplied credentials, opened.
    fn credentials_of(&self, scope: &TenantScope, row: &ConnectionRow) -> Map<String, Value> {
        self.open_map(
            row.credentials.as_deref(),
            &tenant_aad(
                scope.tenant_id(),
                &row.plugin_id,
                &row.connection,
                "credentials",
            ),
        )
    }

    fn tokens_of(&self, scope: &TenantScope, row: &ConnectionRow) -> Option<Tokens> {
        let sealed = row.tokens.as_deref()?;
        let plain = self
            .kernel
            .plugins
            .secret_box()
            .open(
                sealed,
                &tenant_aad(scope.tenant_id(), &row.plugin_id, &row.connection, "tokens"),
            )
            .ok()?;
        serde_json::from_slice(&plain).ok()
    }

    /// What a connection adds to one request, refreshing its token first when it is about
    /// to expire (or when `after_401` says the service refused it).
    pub async fn apply(
        &self,
        scope: &TenantScope,
        manifest: &Manifest,
        connection: &str,
        after_401: Option<i64>,
    ) -> Result<Applied, OutboundError> {
        let not_ready = |m: String| OutboundError::Refused(m);
        let spec = manifest.connections.get(connection).ok_or_else(|| {
            not_ready(format!(
                "connection {connection:?} is not declared in the manifest"
            ))
        })?;
        let plugin_id = &manifest.id;
        let store = |e: ConnectionError| {
            OutboundError::Unreachable(format!("connection {connection}: {e}"))
        };
        let (app, urls) = self.app(plugin_id, connection, spec).await.map_err(store)?;
        let row = self
            .kernel
            .store
            .connection(scope, plugin_id, connection)
            .await
            .map_err(|e| store(e.into()))?;
        let creds = row
            .as_ref()
            .map(|r| self.credentials_of(scope, r))
            .unwrap_or_default();
        let merged = merged_settings(&app, &creds);
        let mut applied = Applied {
            api_base: urls.api.clone(),
            hosts: [&urls.api]
                .into_iter()
                .flatten()
                .filter_map(|u| {
                    reqwest::Url::parse(u)
                        .ok()?
                        .host_str()
                        .map(str::to_ascii_lowercase)
                })
                .collect(),
            ..Applied::default()
        };
        for (header, key) in &spec.headers {
            if let Some(value) = setting(&merged, key) {
                applied.headers.push((header.clone(), value.to_string()));
            }
        }
        if spec.mutual_tls {
            applied.identity = Some(identity_of(&merged).ok_or_else(|| {
                not_ready(format!(
                    "connection {connection} needs a client certificate and key (mutual TLS); the provider or tenant has not set them"
                ))
            })?);
        }
        let credential =
            match spec.kind {
                ConnectionKind::ApiKey => setting(&merged, "api_key")
                    .map(str::to_string)
                    .ok_or_else(|| {
                        not_ready(format!(
                            "connection {connection} has no API key yet: a tenant admin sets it"
                        ))
                    })?,
                _ => {
                    let row = row.ok_or_else(|| {
                        not_ready(format!(
                            "connection {connection} is not connected: a tenant admin connects it"
                        ))
                    })?;
                    applied.generation = Some(row.generation);
                    self.access_token(scope, spec, &urls, &merged, row, after_401)
                        .await?
                }
            };
        place_credential(spec, credential, &mut applied.headers, &mut applied.query);
        Ok(applied)
    }

    /// Refuses routing metadata another tenant's connection holds: app-wide webhooks are
    /// routed by it, so two tenants with one value could not be told apart.
    async fn check_routing(
        &self,
        scope: &TenantScope,
        manifest: &Manifest,
        connection: &str,
        metadata: &Map<String, Value>,
    ) -> Result<(), ConnectionError> {
        let Some(route) = manifest.webhooks.as_ref().and_then(|w| w.route.as_ref()) else {
            return Ok(());
        };
        if route.connection != connection {
            return Ok(());
        }
        let value = match metadata.get(&route.metadata) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => return Ok(()),
        };
        let taken = self
            .kernel
            .store
            .routing_metadata(&manifest.id, connection, &route.metadata)
            .await?
            .into_iter()
            .any(|(tenant, v)| tenant != scope.tenant_id() && v == value);
        if taken {
            return Err(ConnectionError::Refused(format!(
                "this account ({} {value}) is already connected for another business on this platform; \
                 it must be disconnected there first",
                route.metadata
            )));
        }
        Ok(())
    }

    /// Asks the service to confirm the callback's metadata with the new token (the
    /// manifest's `verify-metadata`).
    async fn confirm_metadata(
        &self,
        spec: &ConnectionSpec,
        urls: &ConnectionUrls,
        tokens: &Tokens,
        metadata: &Map<String, Value>,
        settings: &Map<String, Value>,
    ) -> Result<(), ConnectionError> {
        let Some(path) = &spec.verify_metadata else {
            return Ok(());
        };
        let refused = |why: &str| {
            ConnectionError::Refused(format!(
                "the service did not confirm the account this authorization is for ({why}); start again from StreamFlow"
            ))
        };
        let mut filled = path.clone();
        for key in &spec.callback_metadata {
            let value = match metadata.get(key) {
                Some(Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
                None => String::new(),
            };
            filled = filled.replace(&format!("{{{key}}}"), &path_segment(&value));
        }
        let base = urls.api.as_deref().ok_or_else(|| refused("no API URL"))?;
        let url = reqwest::Url::parse(&format!("{}{filled}", base.trim_end_matches('/')))
            .map_err(|_| refused("the check's URL is not valid"))?;
        let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
        // What a plugin's request through this connection would carry.
        let mut headers = vec![("Accept".to_string(), "application/json".to_string())];
        for (header, key) in &spec.headers {
            if let Some(value) = setting(settings, key) {
                headers.push((header.clone(), value.to_string()));
            }
        }
        let mut query = Vec::new();
        place_credential(spec, tokens.access_token.clone(), &mut headers, &mut query);
        let identity = if spec.mutual_tls {
            Some(identity_of(settings).ok_or_else(|| refused("no client certificate"))?)
        } else {
            None
        };
        let mut url = url;
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query.iter());
        }
        let request = outbound::Request {
            method: "GET".into(),
            url,
            headers,
            body: Vec::new(),
            timeout: TOKEN_TIMEOUT,
            follow_redirects: false,
            max_response_bytes: 256 * 1024,
            user_agent: "StreamFlow".into(),
            identity,
            credential_headers: Vec::new(),
        };
        match self.kernel.outbound.send(request, &|h| h == host).await {
            Ok(r) if (200..300).contains(&r.status) => Ok(()),
            Ok(r) => Err(refused(&format!("it answered {}", r.status))),
            Err(e) => Err(refused(&e.to_string())),
        }
    }

    /// A usable access token: the stored one, or a refreshed one when it expires within
    /// a minute, or when the service refused it (`after_401`, the generation it was read
    /// from).
    async fn access_token(
        &self,
        scope: &TenantScope,
        spec: &ConnectionSpec,
        urls: &ConnectionUrls,
        settings: &Map<String, Value>,
        row: ConnectionRow,
        after_401: Option<i64>,
    ) -> Result<String, OutboundError> {
        let connection = row.connection.clone();
        let status = ConnectionStatus::parse(&row.status).unwrap_or(ConnectionStatus::Error);
        if status == ConnectionStatus::Expired {
            return Err(expired(
                &connection,
                row.last_error
                    .as_deref()
                    .unwrap_or("the service refused its refresh"),
            ));
        }
        let tokens = self.tokens_of(scope, &row).ok_or_else(|| {
            OutboundError::Refused(format!(
                "connection {connection} is not connected: a tenant admin connects it"
            ))
        })?;
        let stale = row
            .expires_at
            .is_some_and(|at| at - REFRESH_MARGIN <= now_micros());
        let refused = after_401 == Some(row.generation);
        if !stale && !refused {
            return Ok(tokens.access_token);
        }
        self.refresh(scope, spec, urls, settings, row, tokens).await
    }

    /// Refreshes a token and saves it over the generation it was read from. When another
    /// node saved first, its (newer) token is used instead.
    async fn refresh(
        &self,
        scope: &TenantScope,
        spec: &ConnectionSpec,
        urls: &ConnectionUrls,
        settings: &Map<String, Value>,
        row: ConnectionRow,
        tokens: Tokens,
    ) -> Result<String, OutboundError> {
        let connection = row.connection.clone();
        let plugin_id = row.plugin_id.clone();
        // One node refreshes at a time: a rotated refresh token is accepted once, so a
        // second concurrent refresh would be refused and could lose the newer token.
        let lease = (REFRESH_LEASE.as_micros()) as i64;
        let store_err =
            |e: StoreError| OutboundError::Unreachable(format!("connection {connection}: {e}"));
        if !self
            .kernel
            .store
            .claim_refresh(scope, &plugin_id, &connection, row.generation, lease)
            .await
            .map_err(store_err)?
            && let Some(token) = self.await_refresh(scope, &row).await?
        {
            return Ok(token);
        }
        let result = match (spec.kind, &tokens.refresh_token) {
            (ConnectionKind::Oauth2ClientCredentials, _) => {
                self.token_request(
                    spec,
                    urls,
                    settings,
                    &[("grant_type", "client_credentials")],
                    true,
                )
                .await
            }
            (_, Some(refresh)) => {
                self.token_request(
                    spec,
                    urls,
                    settings,
                    &[("grant_type", "refresh_token"), ("refresh_token", refresh)],
                    false,
                )
                .await
                .map(|(mut t, e)| {
                    // A service that does not rotate refresh tokens keeps the old one.
                    t.refresh_token = t.refresh_token.or_else(|| Some(refresh.clone()));
                    (t, e)
                })
            }
            (_, None) => Err("invalid_grant: the connection has no refresh token".into()),
        };
        match result {
            Ok((fresh, expires_at)) => {
                let sealed = self.seal(
                    &fresh,
                    &tenant_aad(scope.tenant_id(), &plugin_id, &connection, "tokens"),
                );
                let saved = self
                    .kernel
                    .store
                    .save_tokens(
                        scope,
                        &plugin_id,
                        &connection,
                        row.generation,
                        &sealed,
                        expires_at,
                    )
                    .await
                    .map_err(store_err)?;
                if saved {
                    return Ok(fresh.access_token);
                }
                // Another node refreshed first: its tokens are the newest; ours may already
                // be invalid (a rotated refresh token is single use at most services).
                let newer = self
                    .kernel
                    .store
                    .connection(scope, &plugin_id, &connection)
                    .await
                    .map_err(store_err)?
                    .and_then(|r| self.tokens_of(scope, &r))
                    .ok_or_else(|| {
                        OutboundError::Refused(format!("connection {connection} was disconnected"))
                    })?;
                Ok(newer.access_token)
            }
            Err(reason) => {
                // `invalid_grant`: the service will not refresh this grant again.
                let refused = reason.starts_with("invalid_grant");
                let status = if refused {
                    ConnectionStatus::Expired
                } else {
                    ConnectionStatus::Error
                };
                let marked = self
                    .kernel
                    .store
                    .mark_connection(
                        scope,
                        &plugin_id,
                        &connection,
                        row.generation,
                        status.as_str(),
                        &reason,
                    )
                    .await
                    .map_err(store_err)?;
                if !marked && let Some(newer) = self.newer_token(scope, &row).await {
                    // Another node saved newer tokens meanwhile: the refusal was of ours.
                    return Ok(newer);
                }
                if !refused {
                    return Err(OutboundError::Unreachable(format!(
                        "connection {connection}: refreshing its token failed: {reason}"
                    )));
                }
                if marked {
                    let payload =
                        json!({"plugin": plugin_id, "connection": connection, "reason": reason});
                    let event = NewEvent {
                        id: Uuid::now_v7(),
                        kind: EventKind::ConnectionExpired.as_str(),
                        record: None,
                        actor: "kernel",
                        payload: &payload,
                        depth: 0,
                        root: None,
                    };
                    if let Err(e) = self.kernel.store.insert_event(scope, &event).await {
                        tracing::error!(error = %e, "could not record connection.expired");
                    }
                    tracing::warn!(tenant = %scope.tenant_id(), plugin = %plugin_id, connection = %connection, "connection expired: its refresh was refused");
                }
                Err(expired(&connection, &reason))
            }
        }
    }

    /// The access token of a connected generation newer than `row`'s, if another node saved
    /// one.
    async fn newer_token(&self, scope: &TenantScope, row: &ConnectionRow) -> Option<String> {
        let current = self
            .kernel
            .store
            .connection(scope, &row.plugin_id, &row.connection)
            .await
            .ok()??;
        (current.generation != row.generation && current.status == "connected")
            .then(|| self.tokens_of(scope, &current))
            .flatten()
            .map(|t| t.access_token)
    }

    /// Waits for another node's refresh of `row` to finish and returns its token; `None`
    /// when that node's lease lapsed (it died mid-refresh) and this one took the refresh
    /// over.
    async fn await_refresh(
        &self,
        scope: &TenantScope,
        row: &ConnectionRow,
    ) -> Result<Option<String>, OutboundError> {
        let connection = &row.connection;
        let store_err =
            |e: StoreError| OutboundError::Unreachable(format!("connection {connection}: {e}"));
        let deadline = tokio::time::Instant::now() + REFRESH_LEASE;
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let current = self
                .kernel
                .store
                .connection(scope, &row.plugin_id, connection)
                .await
                .map_err(store_err)?
                .ok_or_else(|| {
                    OutboundError::Refused(format!("connection {connection} was disconnected"))
                })?;
            let status =
                ConnectionStatus::parse(&current.status).unwrap_or(ConnectionStatus::Error);
            if current.generation != row.generation && status == ConnectionStatus::Connected {
                return self
                    .tokens_of(scope, &current)
                    .map(|t| Some(t.access_token))
                    .ok_or_else(|| {
                        OutboundError::Refused(format!("connection {connection} is not connected"))
                    });
            }
            let lapsed = current
                .refresh_lease_until
                .is_some_and(|until| until < now_micros());
            if current.generation == row.generation
                && lapsed
                && self
                    .kernel
                    .store
                    .claim_refresh(
                        scope,
                        &row.plugin_id,
                        connection,
                        row.generation,
                        REFRESH_LEASE.as_micros() as i64,
                    )
                    .await
                    .map_err(store_err)?
            {
                return Ok(None);
            }
            if current.refresh_lease_until.is_none() && status != ConnectionStatus::Connected {
                let reason = current.last_error.unwrap_or_default();
                return Err(if status == ConnectionStatus::Expired {
                    expired(connection, &reason)
                } else {
                    OutboundError::Unreachable(format!(
                        "connection {connection}: refreshing its token failed: {reason}"
                    ))
                });
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(OutboundError::Unreachable(format!(
                    "connection {connection}: another node's token refresh did not finish"
                )));
            }
        }
    }

    /// POSTs a token request (client authentication by HTTP Basic) and reads the answer.
    /// The error is `error: description` (the OAuth2 error code first), never a secret.
    async fn token_request(
        &self,
        spec: &ConnectionSpec,
        urls: &ConnectionUrls,
        settings: &Map<String, Value>,
        form: &[(&str, &str)],
        with_scope: bool,
    ) -> Result<(Tokens, Option<i64>), String> {
        let token_url = urls
            .token
            .as_deref()
            .ok_or("the connection has no token URL")?;
        let scope = spec.scopes.join(" ");
        let mut form: Vec<(&str, &str)> = form.to_vec();
        if with_scope && !scope.is_empty() {
            form.push(("scope", &scope));
        }
        let response = self.form_post(token_url, settings, &form, spec).await?;
        if !(200..300).contains(&response.status) {
            return Err(match serde_json::from_slice::<TokenError>(&response.body) {
                Ok(e) => format!(
                    "{}: {}",
                    e.error.chars().take(64).collect::<String>(),
                    e.error_description
                        .unwrap_or_default()
                        .chars()
                        .take(200)
                        .collect::<String>()
                ),
                Err(_) => format!("the token endpoint answered {}", response.status),
            });
        }
        let parsed: TokenResponse = serde_json::from_slice(&response.body)
            .map_err(|_| "the token endpoint's answer has no access_token".to_string())?;
        let expires_at = parsed
            .expires_in
            .map(|s| now_micros() + s.clamp(0, 10 * 365 * 86_400) * 1_000_000);
        Ok((
            Tokens {
                access_token: parsed.access_token,
                refresh_token: parsed.refresh_token,
            },
            expires_at,
        ))
    }

    async fn form_post(
        &self,
        url: &str,
        settings: &Map<String, Value>,
        form: &[(&str, &str)],
        spec: &ConnectionSpec,
    ) -> Result<outbound::Response, String> {
        let url = reqwest::Url::parse(url).map_err(|_| "the token URL is not a URL".to_string())?;
        let mut headers = vec![
            ("Accept".to_string(), "application/json".to_string()),
            (
                "Content-Type".to_string(),
                "application/x-www-form-urlencoded".to_string(),
            ),
        ];
        let mut form: Vec<(&str, &str)> = form.to_vec();
        if let (Some(id), Some(secret)) = (
            setting(settings, "client_id"),
            setting(settings, "client_secret"),
        ) {
            match spec.client_auth {
                ClientAuth::Basic => {
                    let basic = base64::engine::general_purpose::STANDARD.encode(format!(
                        "{}:{}",
                        form_encode(id),
                        form_encode(secret)
                    ));
                    headers.push(("Authorization".to_string(), format!("Basic {basic}")));
                }
                ClientAuth::Body => {
                    form.push(("client_id", id));
                    form.push(("client_secret", secret));
                }
            }
        }
        let identity = match spec.mutual_tls {
            true => {
                Some(identity_of(settings).ok_or("mutual TLS needs a client certificate and key")?)
            }
            false => None,
        };
        let body = serde_urlencoded_pairs(&form);
        let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
        let request = outbound::Request {
            method: "POST".into(),
            url,
            headers,
            body: body.into_bytes(),
            timeout: TOKEN_TIMEOUT,
            follow_redirects: false,
            max_response_bytes: 256 * 1024,
            user_agent: "StreamFlow".into(),
            identity,
            credential_headers: Vec::new(),
        };
        // The provider chose the token URL: its host is allowed.
        self.kernel
            .outbound
            .send(request, &|h| h == host)
            .await
            .map_err(|e| e.to_string())
    }
}

fn state_aad(hash: &str) -> Vec<u8> {
    format!("oauth_states.verifier/{hash}").into_bytes()
}

/// What a request through an expired connection is told.
fn expired(connection: &str, reason: &str) -> OutboundError {
    OutboundError::Refused(format!(
        "connection {connection} has expired ({reason}); a tenant admin must connect it again"
    ))
}

/// A metadata value as one path segment: anything but letters, digits, `-` and `_`
/// percent-encoded (so `..` or `/` cannot move the path).
fn path_segment(value: &str) -> String {
    value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Puts a credential where the connection says: a bearer header, a named header or a
/// query parameter.
fn place_credential(
    spec: &ConnectionSpec,
    credential: String,
    headers: &mut Vec<(String, String)>,
    query: &mut Vec<(String, String)>,
) {
    match spec.credential_in {
        CredentialIn::Bearer => {
            headers.push(("Authorization".into(), format!("Bearer {credential}")))
        }
        CredentialIn::Header => {
            headers.push((spec.credential_name.clone().unwrap_or_default(), credential))
        }
        CredentialIn::Query => {
            query.push((spec.credential_name.clone().unwrap_or_default(), credential))
        }
    }
}

/// Form encoding of a pair list.
fn serde_urlencoded_pairs(pairs: &[(&str, &str)]) -> String {
    let mut out = reqwest::Url::parse("x:").expect("a URL");
    out.query_pairs_mut().extend_pairs(pairs);
    out.query().unwrap_or_default().to_string()
}

/// RFC 6749 §2.3.1: the client id and secret are form-encoded before Basic.
fn form_encode(text: &str) -> String {
    let mut out = reqwest::Url::parse("x:").expect("a URL");
    out.query_pairs_mut().append_pair("", text);
    out.query()
        .unwrap_or_default()
        .trim_start_matches('=')
        .to_string()
}

/// The provider's settings with the tenant's over them.
fn merged_settings(app: &Map<String, Value>, tenant: &Map<String, Value>) -> Map<String, Value> {
    let mut merged = app.clone();
    merged.extend(tenant.iter().map(|(k, v)| (k.clone(), v.clone())));
    merged
}

fn prefix_errors(errors: Vec<FieldError>, prefix: &str) -> ConnectionError {
    ConnectionError::Invalid(
        errors
            .into_iter()
            .map(|e| FieldError::new(format!("{prefix}{}", e.path), e.message))
            .collect(),
    )
}

/// URLs a provider sets: absolute http(s) URLs (http for a local service the allow list
/// names; the guard refuses it otherwise).
fn check_urls(urls: &ConnectionUrls) -> Result<(), ConnectionError> {
    let mut errors = Vec::new();
    for (name, url) in [
        ("authorize", &urls.authorize),
        ("token", &urls.token),
        ("api", &urls.api),
        ("revoke", &urls.revoke),
    ] {
        if let Some(url) = url {
            match reqwest::Url::parse(url) {
                Ok(u) if matches!(u.scheme(), "https" | "http") && u.host_str().is_some() => {}
                _ => errors.push(FieldError::new(
                    format!("/urls/{name}"),
                    format!("{url:?} is not an absolute https:// URL"),
                )),
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ConnectionError::Invalid(errors))
    }
}

/// A connection as `GET /api/connections` shows it.
fn view_json(plugin_id: &str, info: &ConnectionInfo) -> Value {
    json!({
        "plugin": plugin_id,
        "connection": info.id,
        "kind": info.kind,
        "status": info.status.as_str(),
        "metadata": serde_json::from_str::<Value>(&info.metadata).unwrap_or_default(),
        "expires_at": info.expires_at.map(crate::store::format_micros),
        "last_error": info.last_error,
    })
}

/// The client certificate and key of a mutual TLS connection, from its settings.
fn identity_of(settings: &Map<String, Value>) -> Option<Arc<Identity>> {
    let cert = setting(settings, "client_certificate")?;
    let key = setting(settings, "client_key")?;
    Some(Arc::new(Identity {
        pem: format!("{cert}\n{key}\n").into_bytes(),
    }))
}

/// Validated settings with their secrets put back in place (`prepare` splits them off by
/// pointer), as they are sealed.
fn rejoined(prepared: crate::plugins::config::PreparedConfig) -> Map<String, Value> {
    let mut all = prepared.public;
    for (pointer, value) in prepared.secrets {
        crate::plugins::config::set_pointer(&mut all, &pointer, value);
    }
    match all {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// Settings as the provider sees them: each secret the schema marks `writeOnly` that is
/// set shows as `{"set": true}`.
fn masked(settings: Map<String, Value>, secret_fields: &[String]) -> Value {
    let mut shown = Value::Object(settings);
    for pointer in secret_fields {
        if shown.pointer(pointer).is_some() {
            crate::plugins::config::set_pointer(&mut shown, pointer, json!({"set": true}));
        }
    }
    shown
}

/// A connection as a plugin or a tenant sees it.
fn info_of(id: &str, spec: &ConnectionSpec, row: Option<&ConnectionRow>) -> ConnectionInfo {
    match row {
        None => ConnectionInfo {
            id: id.to_string(),
            kind: spec.kind.as_str().to_string(),
            status: ConnectionStatus::NotConnected,
            metadata: "{}".into(),
            expires_at: None,
            last_error: None,
        },
        Some(r) => ConnectionInfo {
            id: id.to_string(),
            kind: spec.kind.as_str().to_string(),
            status: ConnectionStatus::parse(&r.status).unwrap_or(ConnectionStatus::Error),
            metadata: r.metadata.0.to_string(),
            expires_at: r.expires_at,
            last_error: r.last_error.clone(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_sealed_in_place_and_shown_as_set() {
        let prepared = crate::plugins::config::PreparedConfig {
            public: json!({"client_id": "abc", "tls": {"name": "x"}}),
            secrets: Map::from_iter([
                ("/client_secret".to_string(), json!("s3cret")),
                ("/tls/key".to_string(), json!("PEM")),
            ]),
        };
        let all = rejoined(prepared);
        assert_eq!(setting(&all, "client_secret"), Some("s3cret"));
        assert_eq!(all["tls"]["key"], "PEM");
        let fields = vec![
            "/client_secret".to_string(),
            "/tls/key".to_string(),
            "/unset".to_string(),
        ];
        let shown = masked(all, &fields).to_string();
        assert!(
            !shown.contains("s3cret") && !shown.contains("PEM"),
            "{shown}"
        );
        assert!(shown.contains(r#""client_secret":{"set":true}"#), "{shown}");
        assert!(!shown.contains("unset"), "{shown}");
    }

    #[test]
    fn metadata_stays_one_path_segment() {
        assert_eq!(path_segment("9130350"), "9130350");
        assert_eq!(path_segment("../admin"), "%2E%2E%2Fadmin");
        assert_eq!(path_segment("a b?c"), "a%20b%3Fc");
    }

    #[test]
    fn basic_credentials_are_form_encoded() {
        assert_eq!(form_encode("a b:c/d"), "a+b%3Ac%2Fd");
        assert_eq!(
            serde_urlencoded_pairs(&[("grant_type", "refresh_token"), ("refresh_token", "x&y")]),
            "grant_type=refresh_token&refresh_token=x%26y"
        );
    }
}
