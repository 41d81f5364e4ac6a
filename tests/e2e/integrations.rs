//! Contract 0.2.0 end to end, against a local fake of an external service: connections
//! (OAuth2 with PKCE, refresh before expiry and on a 401, rotation under concurrency,
//! `invalid_grant`, client credentials, API keys), the SSRF guard, per-call quotas, audited
//! secrets, verified webhooks on both addresses, and schedules across two nodes.

use std::sync::atomic::Ordering;
use std::time::Duration;

use base64::Engine;
use hmac::Mac;
use reqwest::Method;
use serde_json::{Value, json};

use crate::fake::{self, Fake};
use crate::harness::{Backend, TestServer};

const PROBE: &str = "tests/plugins/integration-probe";
const ID: &str = "integration-probe";
const PUBLIC: &str = "https://sf.example.test";
const VERIFIER: &str = "intuit-verifier-token-5521";
const ALL_GRANTS: [&str; 6] = [
    "kv",
    "http",
    "secrets",
    "records:read",
    "records:write",
    "events",
];

/// Every log line of this test process (from the first call on), capped: the tests check
/// that no credential reaches a log line.
static LOGS: std::sync::Mutex<Vec<u8>> = std::sync::Mutex::new(Vec::new());

struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut logs = LOGS.lock().unwrap_or_else(|e| e.into_inner());
        if logs.len() < 64 << 20 {
            logs.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub(crate) fn capture_logs() {
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                "streamflow=debug,streamflow_runtime=debug,tower_http=debug",
            ))
            .with_writer(|| LogWriter)
            .with_ansi(false)
            .try_init();
    });
}

/// A server for an integration plugin's tests, with the bundled plugins and the fake's
/// hosts on loopback (`fake_port`), logs captured, its scheduler off unless `scheduler`
/// (runs are the tests'), and `tweak` applied; the client and the provider's token.
pub(crate) async fn integration_server(
    backend: Backend,
    fake_port: u16,
    hosts: &[&str],
    scheduler: bool,
    tweak: impl FnOnce(&mut streamflow::config::Config),
) -> Option<(TestServer, crate::client::Api, String)> {
    capture_logs();
    let base = crate::client::config_for(fake_port, hosts);
    let srv = TestServer::start_with(backend, move |c| {
        base(c);
        c.scheduler = scheduler;
        tweak(c);
    })
    .await?;
    let api = crate::client::Api::new(&srv.base);
    let provider = api
        .provider(
            crate::harness::PROVIDER_EMAIL,
            crate::harness::PROVIDER_PASSWORD,
        )
        .await;
    Some((srv, api, provider))
}

pub(crate) fn logs() -> String {
    String::from_utf8_lossy(&LOGS.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
}

struct World {
    srv: TestServer,
    fake: Fake,
    provider: String,
}

fn outbound_config(config: &mut streamflow::config::Config, port: u16) {
    let localhost: std::net::IpAddr = "127.0.0.1".parse().unwrap();
    config.public_url = Some(PUBLIC.into());
    config.http_allow_hosts = vec![
        ("api.probe.test".into(), port),
        ("auth.probe.test".into(), port),
    ];
    config.http_resolve = vec![
        ("api.probe.test".into(), localhost),
        ("auth.probe.test".into(), localhost),
        // A name the manifest allows that resolves to loopback, not allow-listed.
        ("evil.probe.test".into(), localhost),
    ];
}

async fn world(backend: Backend) -> Option<World> {
    world_with(backend, |_| {}).await
}

async fn world_with(
    backend: Backend,
    tweak: impl FnOnce(&mut streamflow::config::Config),
) -> Option<World> {
    capture_logs();
    let fake = Fake::start().await;
    let port = fake.port;
    let srv = TestServer::start_with(backend, |c| {
        outbound_config(c, port);
        c.scheduler_poll = Duration::from_millis(100);
        tweak(c);
    })
    .await?;
    let provider = srv.provider_token().await;
    Some(World {
        srv,
        fake,
        provider,
    })
}

impl World {
    fn url(&self, host: &str, path: &str) -> String {
        format!("http://{host}:{}{path}", self.fake.port)
    }

    /// Installs the probe for a new tenant (publishing it first, once); returns its
    /// owner's token.
    async fn tenant(&self, slug: &str, grants: &[&str], config: Value) -> String {
        self.srv.tenant(&self.provider, slug).await;
        let body = json!({"grants": grants, "config": config});
        let (_, registry) = self.srv.get("/provider/plugins", &self.provider).await;
        let published = registry.to_string().contains(ID);
        if published {
            let (status, installed) = self
                .srv
                .call(
                    Method::PUT,
                    &format!("/provider/tenants/{slug}/plugins/{ID}"),
                    Some(&self.provider),
                    Some(body),
                )
                .await;
            assert_eq!(status, 201, "{installed}");
        } else {
            self.srv
                .install_plugin(&self.provider, PROBE, slug, body)
                .await;
        }
        self.srv.user(&self.provider, slug, "owner").await
    }

    /// The provider points the probe's connections at the fake.
    async fn provider_settings(&self) {
        let (status, body) = self
            .srv
            .call(
                Method::PUT,
                &format!("/provider/plugins/{ID}/connections/code"),
                Some(&self.provider),
                Some(json!({
                    "settings": {"client_id": fake::CLIENT_ID, "client_secret": fake::CLIENT_SECRET, "verifier": VERIFIER},
                    "urls": {
                        "authorize": self.url("auth.probe.test", "/authorize"),
                        "token": self.url("auth.probe.test", "/token"),
                        "api": self.url("api.probe.test", "/v1"),
                        "revoke": self.url("auth.probe.test", "/revoke"),
                    },
                })),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let text = body.to_string();
        assert!(
            !text.contains(fake::CLIENT_SECRET) && !text.contains(VERIFIER),
            "{text}"
        );
        assert_eq!(
            body["settings"]["client_secret"],
            json!({"set": true}),
            "{body}"
        );
        assert_eq!(body["settings"]["client_id"], fake::CLIENT_ID);
        assert_eq!(body["redirect_uri"], format!("{PUBLIC}/oauth/callback"));
        for connection in ["machine", "key"] {
            let (status, body) = self
                .srv
                .call(
                    Method::PUT,
                    &format!("/provider/plugins/{ID}/connections/{connection}"),
                    Some(&self.provider),
                    Some(json!({"urls": {
                        "token": self.url("auth.probe.test", "/token"),
                        "api": self.url("api.probe.test", "/v1"),
                    }})),
                )
                .await;
            assert_eq!(status, 200, "{body}");
        }
    }

    /// Runs the authorization code flow as the admin's browser would; returns the
    /// callback's answer.
    async fn connect(&self, token: &str, realm: &str) -> (u16, String, String) {
        self.connect_as(token, realm, realm).await
    }

    /// [`World::connect`] where the callback's `realmId` is changed on its way back (the
    /// query of a redirect is not signed).
    async fn connect_as(
        &self,
        token: &str,
        realm: &str,
        callback_realm: &str,
    ) -> (u16, String, String) {
        let (status, body) = self
            .srv
            .post(
                &format!("/api/connections/{ID}/code/authorize"),
                token,
                json!({}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let authorize = reqwest::Url::parse(body["authorize_url"].as_str().unwrap()).unwrap();
        let query: std::collections::HashMap<String, String> =
            authorize.query_pairs().into_owned().collect();
        assert_eq!(query["code_challenge_method"], "S256");
        // The manifest's own parameters (Google's, for a refresh token).
        assert_eq!(
            (query["access_type"].as_str(), query["prompt"].as_str()),
            ("offline", "consent")
        );
        assert_eq!(query["redirect_uri"], format!("{PUBLIC}/oauth/callback"));
        assert!(query["state"].len() >= 40, "{authorize}");
        // The browser at the consent screen (the fake approves at once).
        let consent = format!(
            "http://127.0.0.1:{}/authorize?{}&realm={realm}",
            self.fake.port,
            authorize.query().unwrap()
        );
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let sent = client.get(consent).send().await.unwrap();
        assert_eq!(sent.status().as_u16(), 303, "{:?}", sent.text().await);
        let location = sent.headers()["location"].to_str().unwrap().to_string();
        let callback = location.replace(PUBLIC, &self.srv.base).replace(
            &format!("realmId={realm}"),
            &format!("realmId={callback_realm}"),
        );
        let (status, page) = self.browser(&callback).await;
        (status, page, callback)
    }

    async fn browser(&self, url: &str) -> (u16, String) {
        let answer = self.srv.http.get(url).send().await.unwrap();
        (answer.status().as_u16(), answer.text().await.unwrap())
    }

    async fn action(&self, token: &str, name: &str, input: Value) -> Value {
        let (status, body) = self
            .srv
            .post(
                &format!("/api/plugins/{ID}/actions/{name}"),
                token,
                json!({"input": input}),
            )
            .await;
        assert_eq!(status, 200, "{name}: {body}");
        body["output"].clone()
    }

    async fn connections(&self, token: &str) -> Value {
        let (status, body) = self.srv.get("/api/connections", token).await;
        assert_eq!(status, 200, "{body}");
        body
    }

    fn assert_no_credentials(&self, text: &str) {
        assert!(!self.fake.issued(text), "a token leaked: {text}");
        for secret in [
            fake::CLIENT_SECRET,
            fake::MACHINE_SECRET,
            fake::API_KEY,
            VERIFIER,
        ] {
            assert!(!text.contains(secret), "a secret leaked: {text}");
        }
    }
}

fn connection<'a>(list: &'a Value, id: &str) -> &'a Value {
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["connection"] == id)
        .unwrap_or_else(|| panic!("no connection {id} in {list}"))
}

pub(crate) async fn sql(srv: &TestServer, statement: &str) {
    streamflow::on_pool!(streamflow::store::test_support::pool(&srv.state.store), pool => {
        sqlx::query(sqlx::AssertSqlSafe(statement.to_string()))
            .execute(pool)
            .await
            .unwrap();
    });
}

async fn count(srv: &TestServer, statement: &str) -> i64 {
    streamflow::on_pool!(streamflow::store::test_support::pool(&srv.state.store), pool => {
        sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(statement.to_string()))
            .fetch_one(pool)
            .await
            .unwrap()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth_connections_sqlite() {
    oauth_connections_refresh_expire_and_disconnect(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth_connections_postgres() {
    oauth_connections_refresh_expire_and_disconnect(Backend::Postgres).await;
}

async fn oauth_connections_refresh_expire_and_disconnect(backend: Backend) {
    let Some(w) = world(backend).await else {
        return;
    };
    let owner = w.tenant("acme", &ALL_GRANTS, json!({})).await;
    w.provider_settings().await;
    let member = w.srv.user(&w.provider, "acme", "member").await;

    // Every declared connection is listed, none connected.
    let list = w.connections(&owner).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 4, "{list}");
    assert_eq!(connection(&list, "code")["status"], "not_connected");
    assert_eq!(
        connection(&list, "code")["kind"],
        "oauth2-authorization-code"
    );

    // Only owners and admins connect.
    let (status, _) = w
        .srv
        .post(
            &format!("/api/connections/{ID}/code/authorize"),
            &member,
            json!({}),
        )
        .await;
    assert_eq!(status, 403);

    let (status, page, callback) = w.connect(&owner, "9130350").await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("Connected"), "{page}");
    // The state is single use.
    let (status, page) = w.browser(&callback).await;
    assert_eq!(status, 400);
    assert!(page.contains("already used"), "{page}");

    let list = w.connections(&owner).await;
    let code = connection(&list, "code");
    assert_eq!(code["status"], "connected", "{list}");
    assert_eq!(code["metadata"]["realmId"], "9130350");
    w.assert_no_credentials(&list.to_string());

    // The plugin sees status and metadata, never a token.
    let seen = w.action(&owner, "connections", json!({})).await;
    w.assert_no_credentials(&seen.to_string());
    let mine = seen
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "code")
        .unwrap();
    assert_eq!(mine["metadata"]["realmId"], "9130350", "{seen}");

    // A relative URL reaches the connection's API with the bearer token added.
    let fetched = w
        .action(
            &owner,
            "fetch",
            json!({"url": "/company/9130350/query", "connection": "code"}),
        )
        .await;
    assert_eq!(fetched["status"], 200, "{fetched}");
    let echo: Value = serde_json::from_str(fetched["body"].as_str().unwrap()).unwrap();
    assert_eq!(echo["authorized_by"], "bearer");
    assert_eq!(echo["path"], "/v1/company/9130350/query");
    assert_eq!(
        echo["user_agent"],
        "StreamFlow-Plugin/integration-probe@0.1.0"
    );
    // The credentials go only to the connection's own API host, not to any host the
    // manifest lists.
    let elsewhere = w
        .action(
            &owner,
            "fetch",
            json!({"url": "https://collector.probe.test/steal", "connection": "code"}),
        )
        .await;
    assert_eq!(elsewhere["error"], "denied", "{elsewhere}");
    assert!(
        elsewhere["message"]
            .as_str()
            .unwrap()
            .contains("not a host of connection code"),
        "{elsewhere}"
    );
    let refreshes = || w.fake.state.refreshes.load(Ordering::SeqCst);
    assert_eq!(refreshes(), 0);

    // Revoked elsewhere: the 401 refreshes once and the request is retried.
    w.fake.invalidate_access_tokens();
    w.fake.state.expires_in.store(30, Ordering::SeqCst);
    let fetched = w
        .action(
            &owner,
            "fetch",
            json!({"url": "/again", "connection": "code"}),
        )
        .await;
    assert_eq!(fetched["status"], 200, "{fetched}");
    assert_eq!(refreshes(), 1);
    // That token expires within the minute: it is refreshed before use.
    w.fake.state.expires_in.store(3600, Ordering::SeqCst);
    let fetched = w
        .action(
            &owner,
            "fetch",
            json!({"url": "/soon", "connection": "code"}),
        )
        .await;
    assert_eq!(fetched["status"], 200, "{fetched}");
    assert_eq!(refreshes(), 2);
    let fetched = w
        .action(
            &owner,
            "fetch",
            json!({"url": "/fresh", "connection": "code"}),
        )
        .await;
    assert_eq!(fetched["status"], 200, "{fetched}");
    assert_eq!(refreshes(), 2, "a fresh token is used as it is");

    // The service refuses the refresh: the connection expires, says why, and emits
    // connection.expired.
    w.fake.state.refuse_refresh.store(true, Ordering::SeqCst);
    w.fake.invalidate_access_tokens();
    let refused = w
        .action(&owner, "fetch", json!({"url": "/x", "connection": "code"}))
        .await;
    assert_eq!(refused["error"], "denied", "{refused}");
    assert!(
        refused["message"].as_str().unwrap().contains("expired"),
        "{refused}"
    );
    let list = w.connections(&owner).await;
    let code = connection(&list, "code");
    assert_eq!(code["status"], "expired", "{list}");
    assert!(
        code["last_error"]
            .as_str()
            .unwrap()
            .contains("invalid_grant"),
        "{list}"
    );
    let expired = count(
        &w.srv,
        "SELECT COUNT(*) FROM events WHERE kind = 'connection.expired'",
    )
    .await;
    assert_eq!(expired, 1);
    let payloads = count(&w.srv, "SELECT COUNT(*) FROM events WHERE kind = 'connection.expired' AND CAST(payload AS TEXT) LIKE '%at-%'").await;
    assert_eq!(payloads, 0, "no token in the event");

    // Disconnect deletes the credentials and revokes the token.
    let (status, _) = w
        .srv
        .delete(&format!("/api/connections/{ID}/code"), &member)
        .await;
    assert_eq!(status, 403);
    let (status, body) = w
        .srv
        .delete(&format!("/api/connections/{ID}/code"), &owner)
        .await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(w.fake.state.revoked.lock().unwrap().len(), 1);
    let list = w.connections(&owner).await;
    assert_eq!(connection(&list, "code")["status"], "not_connected");
    let gone = w
        .action(&owner, "fetch", json!({"url": "/x", "connection": "code"}))
        .await;
    assert_eq!(gone["error"], "denied", "{gone}");
    let logged = logs();
    assert!(
        logged.contains("connection authorized"),
        "logs are captured"
    );
    w.assert_no_credentials(&logged);
}

#[tokio::test]
async fn an_expired_or_forged_state_is_refused() {
    let w = world(Backend::Sqlite).await.unwrap();
    let owner = w.tenant("late", &ALL_GRANTS, json!({})).await;
    w.provider_settings().await;
    let (status, body) = w
        .srv
        .post(
            &format!("/api/connections/{ID}/code/authorize"),
            &owner,
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    sql(&w.srv, "UPDATE oauth_states SET expires_at = 0").await;
    let url = reqwest::Url::parse(body["authorize_url"].as_str().unwrap()).unwrap();
    let state = url
        .query_pairs()
        .find(|(k, _)| k == "state")
        .unwrap()
        .1
        .to_string();
    let (status, page) = w
        .browser(&format!(
            "{}/oauth/callback?code=c&state={state}",
            w.srv.base
        ))
        .await;
    assert_eq!(status, 400, "{page}");
    assert!(page.contains("expired"), "{page}");
    let (status, _) = w
        .browser(&format!(
            "{}/oauth/callback?code=c&state=forged",
            w.srv.base
        ))
        .await;
    assert_eq!(status, 400);
    let (status, page) = w
        .browser(&format!(
            "{}/oauth/callback?error=access_denied&state={state}",
            w.srv.base
        ))
        .await;
    assert_eq!(status, 400);
    assert!(page.contains("access_denied"), "{page}");
    let list = w.connections(&owner).await;
    assert_eq!(connection(&list, "code")["status"], "not_connected");
}

#[tokio::test]
async fn client_credentials_and_api_keys_stay_in_the_kernel() {
    let w = world(Backend::Sqlite).await.unwrap();
    let owner = w.tenant("keys", &ALL_GRANTS, json!({})).await;
    w.provider_settings().await;
    let admin = w.srv.user(&w.provider, "keys", "admin").await;
    let member = w.srv.user(&w.provider, "keys", "member").await;
    let path = format!("/api/connections/{ID}/machine");

    // A wrong client secret is said at once, without the secret.
    let wrong = json!({"credentials": {"client_id": fake::MACHINE_ID, "client_secret": "not-the-secret-42"}});
    let (status, body) = w
        .srv
        .call(Method::PUT, &path, Some(&admin), Some(wrong))
        .await;
    assert_eq!(status, 502, "{body}");
    assert!(body.to_string().contains("invalid_client"), "{body}");
    assert!(!body.to_string().contains("not-the-secret-42"), "{body}");
    let right = json!({"credentials": {"client_id": fake::MACHINE_ID, "client_secret": fake::MACHINE_SECRET}});
    let (status, _) = w
        .srv
        .call(Method::PUT, &path, Some(&member), Some(right.clone()))
        .await;
    assert_eq!(status, 403);
    let (status, body) = w
        .srv
        .call(Method::PUT, &path, Some(&admin), Some(right))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "connected");
    let fetched = w
        .action(
            &owner,
            "fetch",
            json!({"url": "/workers", "connection": "machine"}),
        )
        .await;
    assert_eq!(fetched["status"], 200, "{fetched}");
    assert!(
        fetched["body"]
            .as_str()
            .unwrap()
            .contains("\"authorized_by\":\"bearer\"")
    );
    // No refresh token: a 401 requests a new token.
    w.fake.invalidate_access_tokens();
    let fetched = w
        .action(
            &owner,
            "fetch",
            json!({"url": "/workers", "connection": "machine"}),
        )
        .await;
    assert_eq!(fetched["status"], 200, "{fetched}");

    // An API key goes in the query parameter the manifest names.
    let key = format!("/api/connections/{ID}/key");
    let (status, _) = w
        .srv
        .call(
            Method::PUT,
            &key,
            Some(&owner),
            Some(json!({"credentials": {"api_key": fake::API_KEY, "extra": 1}})),
        )
        .await;
    assert_eq!(status, 422, "unknown settings are refused");
    let (status, body) = w
        .srv
        .call(
            Method::PUT,
            &key,
            Some(&owner),
            Some(json!({"credentials": {"api_key": fake::API_KEY}})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let fetched = w
        .action(
            &owner,
            "fetch",
            json!({"url": "/opportunities?limit=10", "connection": "key"}),
        )
        .await;
    let echo: Value = serde_json::from_str(fetched["body"].as_str().unwrap()).unwrap();
    assert_eq!(
        (echo["authorized_by"].as_str(), echo["api_key_ok"].as_bool()),
        (Some("api_key"), Some(true)),
        "{echo}"
    );
    assert_eq!(echo["query"]["limit"], "10");

    // Nothing a person or the plugin reads holds a credential.
    for text in [
        w.connections(&owner).await.to_string(),
        w.action(&owner, "connections", json!({})).await.to_string(),
        w.srv
            .get("/provider/tenants/keys/connections", &w.provider)
            .await
            .1
            .to_string(),
        w.srv
            .get(
                &format!("/provider/plugins/{ID}/connections/code"),
                &w.provider,
            )
            .await
            .1
            .to_string(),
    ] {
        w.assert_no_credentials(&text);
    }
    let leaked = count(
        &w.srv,
        &format!("SELECT COUNT(*) FROM events WHERE CAST(payload AS TEXT) LIKE '%{}%' OR CAST(payload AS TEXT) LIKE '%{}%'", fake::API_KEY, fake::MACHINE_SECRET),
    )
    .await;
    assert_eq!(leaked, 0);
    w.assert_no_credentials(&logs());
    assert!(!logs().contains("not-the-secret-42"));
}

#[tokio::test]
async fn outbound_requests_pass_the_guard_or_are_refused() {
    let w = world(Backend::Sqlite).await.unwrap();
    let owner = w.tenant("guard", &ALL_GRANTS, json!({})).await;
    let fetch = |input: Value| w.action(&owner, "fetch", input);

    let open = w.url("api.probe.test", "/v1/open");
    let ok = fetch(json!({"url": open})).await;
    assert_eq!(ok["status"], 200, "{ok}");

    let port = w.fake.port;
    for (url, why) in [
        (
            "https://api.example.com/".to_string(),
            "not among the hosts",
        ),
        (format!("http://127.0.0.1:{port}/v1/open"), "http://"),
        ("https://127.0.0.1/".to_string(), "not among the hosts"),
        ("https://[::1]/".to_string(), "not among the hosts"),
        ("https://10.1.2.3/".to_string(), "not among the hosts"),
        (
            "https://169.254.169.254/latest/meta-data".to_string(),
            "not among the hosts",
        ),
        (
            "https://evil.probe.test/".to_string(),
            "resolves to 127.0.0.1",
        ),
        (format!("http://www.probe.test:{port}/"), "http://"),
        (
            format!("https://api.probe.test:{}/v1/open", port + 1),
            "STREAMFLOW_HTTP_ALLOW_HOSTS",
        ),
    ] {
        let refused = fetch(json!({"url": url})).await;
        assert_eq!(refused["error"], "denied", "{url}: {refused}");
        assert!(
            refused["message"].as_str().unwrap().contains(why),
            "{url}: {refused}"
        );
    }

    // Redirects: not followed unless asked; each hop is checked.
    let to_metadata = w.url("api.probe.test", "/v1/redirect?to=https://169.254.169.254/");
    let unfollowed = fetch(json!({"url": to_metadata})).await;
    assert_eq!(unfollowed["status"], 307, "{unfollowed}");
    let followed = fetch(json!({"url": to_metadata, "follow": true})).await;
    assert_eq!(followed["error"], "denied", "{followed}");
    let to_loopback = w.url(
        "api.probe.test",
        &format!("/v1/redirect?to=http://127.0.0.1:{port}/v1/open"),
    );
    let followed = fetch(json!({"url": to_loopback, "follow": true})).await;
    assert_eq!(followed["error"], "denied", "{followed}");
    let to_open = w.url("api.probe.test", "/v1/redirect?to=/v1/open");
    let followed = fetch(json!({"url": to_open, "follow": true})).await;
    assert_eq!(followed["status"], 200, "{followed}");

    // Oversized and slow responses.
    let big = fetch(json!({"url": w.url("api.probe.test", "/v1/big")})).await;
    assert_eq!(big["error"], "limit", "{big}");
    let slow = fetch(json!({"url": w.url("api.probe.test", "/v1/slow"), "timeout_ms": 300})).await;
    assert_eq!(slow["error"], "timeout", "{slow}");

    // Headers the host sets cannot be forged.
    let forged = fetch(json!({"url": open, "headers": {"host": "169.254.169.254"}})).await;
    assert_eq!(forged["error"], "invalid", "{forged}");

    // Without the http grant, nothing is sent, and the denial is audited.
    let calls = w.fake.state.api_calls.load(Ordering::SeqCst);
    let other = w.tenant("nogrant", &["kv"], json!({})).await;
    let denied = w.action(&other, "fetch", json!({"url": open})).await;
    assert_eq!(denied["error"], "denied", "{denied}");
    assert_eq!(w.fake.state.api_calls.load(Ordering::SeqCst), calls);
    let (_, audit) = w
        .srv
        .get(
            &format!("/provider/tenants/nogrant/plugins/{ID}/audit"),
            &w.provider,
        )
        .await;
    assert_eq!(audit["items"][0]["capability"], "http", "{audit}");
    assert_eq!(audit["items"][0]["outcome"], "denied", "{audit}");

    // Metered per tenant × plugin × host, in the usage table and in Prometheus.
    // Usage rows are written just after each call, off its path.
    let mut usage = 0;
    for _ in 0..50 {
        usage = count(
            &w.srv,
            "SELECT COALESCE(SUM(calls), 0) FROM plugin_http_usage WHERE host = 'api.probe.test'",
        )
        .await;
        let errors = count(
            &w.srv,
            "SELECT COALESCE(SUM(errors), 0) FROM plugin_http_usage WHERE host = 'api.probe.test'",
        )
        .await;
        if usage >= 8 && errors >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(usage >= 8, "{usage}");
    let errors = count(
        &w.srv,
        "SELECT COALESCE(SUM(errors), 0) FROM plugin_http_usage WHERE host = 'api.probe.test'",
    )
    .await;
    assert!(errors >= 3, "{errors}");
    let metrics = w
        .srv
        .http
        .get(format!("{}/metrics", w.srv.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("streamflow_plugin_http_requests_total"),
        "{metrics}"
    );
}

#[tokio::test]
async fn quotas_stop_a_call_and_limits_tell_what_remains() {
    let w = world(Backend::Sqlite).await.unwrap();
    let owner = w.tenant("quota", &ALL_GRANTS, json!({})).await;
    w.srv.lead(&owner, json!({"name": "One lead"})).await;
    let left = w.action(&owner, "limits", json!({})).await;
    assert_eq!(
        (
            &left["http_requests"],
            &left["record_reads"],
            &left["record_writes"],
            &left["events"]
        ),
        (&json!(5), &json!(3), &json!(2), &json!(2)),
        "{left}"
    );
    let wall = left["wall_ms"].as_u64().unwrap();
    assert!(wall > 50_000 && wall <= 60_000, "{left}");
    for (action, done, quota) in [
        ("burst", 5, "http-requests"),
        ("reads", 3, "record-reads"),
        ("writes", 2, "record-writes"),
        ("emits", 2, "events"),
    ] {
        let input = json!({"url": w.url("api.probe.test", "/v1/open")});
        let out = w.action(&owner, action, input).await;
        assert_eq!(out["done"], done, "{action}: {out}");
        assert_eq!(out["stopped"]["error"], "limit", "{action}: {out}");
        assert!(
            out["stopped"]["message"].as_str().unwrap().contains(quota),
            "{action}: {out}"
        );
    }
}

#[tokio::test]
async fn secret_reads_are_audited() {
    let w = world(Backend::Sqlite).await.unwrap();
    let owner = w
        .tenant(
            "secret",
            &ALL_GRANTS,
            json!({"api_token": "tok-0123456789"}),
        )
        .await;
    let read = w
        .action(&owner, "secret", json!({"pointer": "/api_token"}))
        .await;
    assert_eq!(read, json!({"found": true, "length": 14, "prefix": "tok"}));
    let missing = w
        .action(&owner, "secret", json!({"pointer": "/label"}))
        .await;
    assert_eq!(
        missing,
        json!({"found": false}),
        "a public value is not a secret"
    );
    let bad = w
        .action(&owner, "secret", json!({"pointer": "api_token"}))
        .await;
    assert_eq!(bad["error"], "invalid", "{bad}");
    let (_, audit) = w
        .srv
        .get(
            &format!("/provider/tenants/secret/plugins/{ID}/audit"),
            &w.provider,
        )
        .await;
    let reads: Vec<&Value> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["capability"] == "secrets" && e["outcome"] == "allowed")
        .collect();
    let api_token = reads
        .iter()
        .find(|e| e["operation"] == "secrets.get /api_token")
        .unwrap();
    assert_eq!(api_token["calls"], 1, "{audit}");
    assert!(!audit.to_string().contains("tok-0123456789"));

    let other = w
        .tenant("nosecret", &["kv"], json!({"api_token": "tok-0123456789"}))
        .await;
    let denied = w
        .action(&other, "secret", json!({"pointer": "/api_token"}))
        .await;
    assert_eq!(denied["error"], "denied", "{denied}");
}

fn sign(body: &[u8]) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(VERIFIER.as_bytes()).unwrap();
    mac.update(body);
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

impl World {
    async fn seen(&self, token: &str) -> Value {
        self.action(token, "webhooks", json!({})).await
    }

    async fn webhook(&self, path: &str, body: &[u8], signature: Option<&str>) -> (u16, String) {
        let mut request = self
            .srv
            .http
            .post(format!("{}{path}", self.srv.base))
            .header("content-type", "application/json")
            .body(body.to_vec());
        if let Some(signature) = signature {
            request = request.header("intuit-signature", signature);
        }
        let answer = request.send().await.unwrap();
        (answer.status().as_u16(), answer.text().await.unwrap())
    }
}

#[tokio::test]
async fn webhooks_are_verified_routed_and_delivered_once() {
    let w = world_with(Backend::Sqlite, |c| c.webhook_rate = 10)
        .await
        .unwrap();
    let a = w.tenant("realm-a", &ALL_GRANTS, json!({})).await;
    w.provider_settings().await;
    let b = w.tenant("realm-b", &ALL_GRANTS, json!({})).await;
    assert_eq!(w.connect(&a, "111").await.0, 200);
    assert_eq!(w.connect(&b, "222").await.0, 200);
    // Routing is by realmId, so nobody else may hold one: not by connecting the same
    // account again, nor by changing the realmId in the callback's (unsigned) query.
    let c = w.tenant("realm-c", &ALL_GRANTS, json!({})).await;
    let (status, page, _) = w.connect(&c, "111").await;
    assert_eq!(status, 400, "{page}");
    assert!(
        page.contains("already connected for another business"),
        "{page}"
    );
    let (status, page, _) = w.connect_as(&c, "333", "222").await;
    assert_eq!(status, 400, "{page}");
    assert!(page.contains("did not confirm"), "{page}");
    let list = w.connections(&c).await;
    assert_eq!(
        connection(&list, "code")["status"],
        "not_connected",
        "{list}"
    );

    // App-wide: one delivery for every account of the app, split by realmId.
    let body = serde_json::to_vec(&json!({"eventNotifications": [
        {"realmId": "111", "dataChangeEvent": {"entities": [{"name": "Payment", "id": "1"}]}},
        {"realmId": "222", "dataChangeEvent": {"entities": [{"name": "Payment", "id": "2"}]}},
        {"realmId": "999", "dataChangeEvent": {"entities": [{"name": "Payment", "id": "3"}]}},
    ]}))
    .unwrap();
    let app = format!("/webhooks/{ID}");
    let (status, text) = w.webhook(&app, &body, None).await;
    assert_eq!(status, 401, "{text}");
    assert!(
        text.contains("intuit-signature header is missing"),
        "{text}"
    );
    let (status, _) = w.webhook(&app, &body, Some(&sign(b"other body"))).await;
    assert_eq!(status, 401);
    let (status, _) = w.webhook(&app, &body, Some("not base64 !")).await;
    assert_eq!(status, 401);
    assert_eq!(w.seen(&a).await, json!([]), "nothing reached the plugin");
    let (status, text) = w.webhook(&app, &body, Some(&sign(&body))).await;
    assert_eq!(status, 200, "{text}");
    let got_a = w.seen(&a).await;
    let got_b = w.seen(&b).await;
    assert_eq!(got_a.as_array().unwrap().len(), 1, "{got_a}");
    let entries = &got_a[0]["body"]["eventNotifications"];
    assert_eq!(
        entries.as_array().unwrap().len(),
        1,
        "only its own realm: {got_a}"
    );
    assert_eq!(entries[0]["realmId"], "111");
    assert_eq!(
        got_b[0]["body"]["eventNotifications"][0]["realmId"], "222",
        "{got_b}"
    );
    // A replay is answered 200 and not delivered again.
    let (status, _) = w.webhook(&app, &body, Some(&sign(&body))).await;
    assert_eq!(status, 200);
    assert_eq!(w.seen(&a).await.as_array().unwrap().len(), 1);
    // Nobody here for that realm: answered 200 so the sender stops.
    let lonely = br#"{"eventNotifications":[{"realmId":"404"}]}"#;
    let (status, _) = w.webhook(&app, lonely, Some(&sign(lonely))).await;
    assert_eq!(status, 200);

    // Per installation: an opaque address in the installation view.
    let (_, installed) = w
        .srv
        .get("/provider/tenants/realm-a/plugins", &w.provider)
        .await;
    let address = installed["items"][0]["webhook_url"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        address.starts_with(&format!("{PUBLIC}/webhooks/i/")),
        "{installed}"
    );
    assert!(!address.contains("realm-a"));
    assert_eq!(
        installed["items"][0]["app_webhook_url"],
        format!("{PUBLIC}/webhooks/{ID}")
    );
    let path = format!("{}/jobs", address.trim_start_matches(PUBLIC));
    let single = br#"{"event":"job.updated","id":"J-7"}"#;
    let (status, _) = w.webhook(&path, single, Some(&sign(b"{}"))).await;
    assert_eq!(status, 401);
    let (status, text) = w.webhook(&path, single, Some(&sign(single))).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(text, r#"{"ok":true}"#, "the plugin's answer");
    let (status, _) = w.webhook(&path, single, Some(&sign(single))).await;
    assert_eq!(status, 200);
    let got_a = w.seen(&a).await;
    assert_eq!(got_a.as_array().unwrap().len(), 2, "{got_a}");
    assert_eq!(got_a[1]["path"], "/jobs");
    assert_eq!(
        w.seen(&b).await.as_array().unwrap().len(),
        1,
        "not b's address"
    );
    let (status, _) = w
        .webhook(
            "/webhooks/i/unknown-token/jobs",
            single,
            Some(&sign(single)),
        )
        .await;
    assert_eq!(status, 404);
    // The plugin fails: the sender is told to retry, and the retry reaches the plugin.
    let failing = br#"{"event":"job.updated","fail":true}"#;
    let before = w.seen(&a).await.as_array().unwrap().len();
    for _ in 0..2 {
        let (status, _) = w.webhook(&path, failing, Some(&sign(failing))).await;
        assert_eq!(status, 502);
    }
    assert_eq!(
        w.seen(&a).await.as_array().unwrap().len(),
        before + 2,
        "both attempts reached it"
    );
    let (status, _) = w.webhook(&path, &vec![b' '; 2 << 20], None).await;
    assert_eq!(status, 413);

    // Receipts: what came, whether it verified, what became of it; never the body.
    let member = w.srv.user(&w.provider, "realm-a", "member").await;
    let (status, _) = w
        .srv
        .get(&format!("/api/plugins/{ID}/webhooks"), &member)
        .await;
    assert_eq!(status, 403);
    let (status, receipts) = w.srv.get(&format!("/api/plugins/{ID}/webhooks"), &a).await;
    assert_eq!(status, 200, "{receipts}");
    let outcomes: Vec<&str> = receipts["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    for expected in ["delivered", "replayed", "unverified"] {
        assert!(outcomes.contains(&expected), "{outcomes:?}");
    }
    assert!(
        !receipts.to_string().contains("J-7") && !receipts.to_string().contains("dataChangeEvent")
    );
    let (status, provider_view) = w
        .srv
        .get(
            &format!("/provider/tenants/realm-a/plugins/{ID}/webhooks"),
            &w.provider,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        provider_view["items"].as_array().unwrap().len(),
        receipts["items"].as_array().unwrap().len()
    );
    // The provider also sees what reached no tenant (refused app-wide deliveries).
    let (status, all) = w
        .srv
        .get(&format!("/provider/plugins/{ID}/webhooks"), &w.provider)
        .await;
    assert_eq!(status, 200, "{all}");
    let unattributed = all["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["tenant_id"].is_null())
        .count();
    assert!(unattributed >= 3, "{all}");

    // A flood is cut by the per tenant × plugin rate limit.
    let mut limited = 0;
    for n in 0..60 {
        let body = format!("{{\"n\":{n}}}");
        let (status, _) = w
            .webhook(&path, body.as_bytes(), Some(&sign(body.as_bytes())))
            .await;
        if status == 429 {
            limited += 1;
        }
    }
    assert!(limited > 0, "the rate limit never applied");
}

#[tokio::test]
async fn schedules_list_and_run_now() {
    let w = world(Backend::Sqlite).await.unwrap();
    let owner = w.tenant("sched", &ALL_GRANTS, json!({})).await;
    let member = w.srv.user(&w.provider, "sched", "member").await;
    let (status, list) = w
        .srv
        .get(&format!("/api/plugins/{ID}/schedules"), &member)
        .await;
    assert_eq!(status, 200, "{list}");
    let item = &list["items"][0];
    assert_eq!(
        (&item["id"], &item["every"]),
        (&json!("poll"), &json!("1m")),
        "{list}"
    );
    assert!(
        item["last_run_at"].is_null() && item["next_run_at"].is_string(),
        "{list}"
    );

    let run = format!("/api/plugins/{ID}/schedules/poll/run");
    let (status, _) = w.srv.post(&run, &member, json!({})).await;
    assert_eq!(status, 403);
    let (status, out) = w.srv.post(&run, &owner, json!({})).await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["status"], "ok");
    let ticks = w.action(&owner, "ticks", json!({})).await;
    assert_eq!(ticks["count"], 1, "{ticks}");
    assert_eq!(ticks["id"], "poll");
    let (status, out) = w
        .srv
        .post(
            &format!("/provider/tenants/sched/plugins/{ID}/schedules/poll/run"),
            &w.provider,
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{out}");
    let ticks = w.action(&owner, "ticks", json!({})).await;
    assert_eq!(ticks["count"], 2);
    assert!(
        ticks["last_run_at"].is_number(),
        "the second tick knows the first: {ticks}"
    );
    let (_, list) = w
        .srv
        .get(&format!("/api/plugins/{ID}/schedules"), &owner)
        .await;
    assert!(list["items"][0]["last_run_at"].is_string(), "{list}");
    let (status, _) = w
        .srv
        .post(
            &format!("/api/plugins/{ID}/schedules/nope/run"),
            &owner,
            json!({}),
        )
        .await;
    assert_eq!(status, 404);
    // A run in progress (its lease held, as by a node killed mid-run until the lease
    // lapses) is not started twice.
    sql(
        &w.srv,
        &format!("UPDATE plugin_schedules SET lease_until = {}", i64::MAX / 2),
    )
    .await;
    let (status, body) = w.srv.post(&run, &owner, json!({})).await;
    assert_eq!(status, 409, "{body}");
    sql(&w.srv, "UPDATE plugin_schedules SET lease_until = 1").await;
    let (status, _) = w.srv.post(&run, &owner, json!({})).await;
    assert_eq!(status, 200, "a lapsed lease is claimed again");

    // Uninstalled: its schedules go with it.
    let (status, _) = w
        .srv
        .delete(
            &format!("/provider/tenants/sched/plugins/{ID}"),
            &w.provider,
        )
        .await;
    assert_eq!(status, 204);
    assert_eq!(
        count(&w.srv, "SELECT COUNT(*) FROM plugin_schedules").await,
        0
    );
}

/// Two server processes on one PostgreSQL database (this test's server and the binary):
/// a due schedule runs once, and two concurrent refreshes of one connection keep the newer
/// rotated token.
#[tokio::test]
async fn two_nodes_share_schedules_and_refreshes() {
    let Some(w) = world(Backend::Postgres).await else {
        return;
    };
    let port = w.fake.port;
    // The second node is another process: the `streamflow` binary on the same database.
    let dir = tempfile::tempdir().unwrap();
    let allow = format!("api.probe.test:{port},auth.probe.test:{port}");
    let database = w.srv.database_url();
    let second = crate::binary::spawn(
        &["serve"],
        dir.path(),
        &[
            ("STREAMFLOW_DATABASE_URL", database.as_str()),
            (
                "STREAMFLOW_SECRET_KEY",
                "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
            ),
            ("STREAMFLOW_DATA_DIR", dir.path().to_str().unwrap()),
            ("STREAMFLOW_BUNDLED_PLUGINS", "0"),
            ("STREAMFLOW_SCHEDULER_POLL_MS", "100"),
            ("STREAMFLOW_PUBLIC_URL", PUBLIC),
            ("STREAMFLOW_HTTP_ALLOW_HOSTS", allow.as_str()),
            (
                "STREAMFLOW_HTTP_RESOLVE",
                "api.probe.test=127.0.0.1,auth.probe.test=127.0.0.1",
            ),
        ],
    );
    let on_second = |token: &str, path: &str, body: Value| {
        let request = w
            .srv
            .http
            .post(format!("{}{path}", second.base))
            .bearer_auth(token)
            .json(&body);
        async move {
            let answer = request.send().await.unwrap();
            let status = answer.status().as_u16();
            (status, answer.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let owner = w.tenant("nodes", &ALL_GRANTS, json!({})).await;
    w.provider_settings().await;

    // Due now on both nodes: it runs once.
    for round in 1..=2 {
        // Due a second ago: the claim moves the run to that grid's next point, a minute on
        // (due at 0, the next point could be the next whole minute, moments away).
        let due = streamflow::store::now_micros() - 1_000_000;
        sql(
            &w.srv,
            &format!("UPDATE plugin_schedules SET next_run_at = {due}"),
        )
        .await;
        let mut count = 0;
        for _ in 0..100 {
            count = w.action(&owner, "ticks", json!({})).await["count"]
                .as_u64()
                .unwrap();
            if count >= round {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(count, round, "round {round}");
        // Both nodes keep polling: still once.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let after = w.action(&owner, "ticks", json!({})).await["count"]
            .as_u64()
            .unwrap();
        assert_eq!(after, round, "round {round} ran twice");
    }

    // A token about to expire, refreshed from both nodes at once: the service accepts each
    // refresh token once, and the newer token must survive.
    w.fake.state.expires_in.store(30, Ordering::SeqCst);
    assert_eq!(w.connect(&owner, "77").await.0, 200);
    w.fake.state.expires_in.store(3600, Ordering::SeqCst);
    w.fake.state.refresh_delay_ms.store(300, Ordering::SeqCst);
    let input = json!({"input": {"url": "/both", "connection": "code"}});
    let path = format!("/api/plugins/{ID}/actions/fetch");
    let (one, two) = tokio::join!(
        w.srv.post(&path, &owner, input.clone()),
        on_second(&owner, &path, input.clone())
    );
    for (status, body) in [one, two] {
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["output"]["status"], 200, "{body}");
    }
    assert_eq!(
        w.fake.state.refreshes.load(Ordering::SeqCst),
        1,
        "one node refreshed"
    );
    w.fake.state.refresh_delay_ms.store(0, Ordering::SeqCst);
    // The saved token is the newest: a 401 now refreshes with the rotated refresh token.
    w.fake.invalidate_access_tokens();
    let (status, body) = on_second(&owner, &path, input).await;
    assert_eq!(
        (status, &body["output"]["status"]),
        (200, &json!(200)),
        "{body}"
    );
    let list = w.connections(&owner).await;
    assert_eq!(connection(&list, "code")["status"], "connected", "{list}");
}

#[tokio::test]
async fn mutual_tls_connections_present_the_tenant_certificate() {
    use crate::fake_mtls::{HOST, MtlsFake};
    let mtls = MtlsFake::start().await;
    let roots = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(roots.path(), &mtls.ca_pem).unwrap();
    let (port, path) = (mtls.port, roots.path().to_path_buf());
    let w = world_with(Backend::Sqlite, move |c| {
        c.http_allow_hosts.push((HOST.into(), port));
        c.http_resolve
            .push((HOST.into(), "127.0.0.1".parse().unwrap()));
        c.http_extra_roots = Some(path);
    })
    .await
    .unwrap();
    let owner = w.tenant("tls", &ALL_GRANTS, json!({})).await;
    let base = format!("https://{HOST}:{port}");
    let (status, body) = w
        .srv
        .call(
            Method::PUT,
            &format!("/provider/plugins/{ID}/connections/mtls"),
            Some(&w.provider),
            Some(json!({"urls": {"token": format!("{base}/token"), "api": format!("{base}/v1")}})),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    // Without a client certificate the service refuses the handshake.
    let refused = w
        .action(
            &owner,
            "fetch",
            json!({"url": format!("{base}/v1/workers")}),
        )
        .await;
    assert_eq!(refused["error"], "unavailable", "{refused}");
    assert_eq!(mtls.requests.load(Ordering::SeqCst), 0);

    // The tenant's certificate is presented on the token request and on every call.
    let credentials = json!({"credentials": {
        "client_id": "adp-client", "client_secret": "adp-secret-1",
        "client_certificate": mtls.client_cert, "client_key": mtls.client_key,
    }});
    let (status, body) = w
        .srv
        .call(
            Method::PUT,
            &format!("/api/connections/{ID}/mtls"),
            Some(&owner),
            Some(credentials),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "connected");
    assert!(!body.to_string().contains("PRIVATE KEY"), "{body}");
    let fetched = w
        .action(
            &owner,
            "fetch",
            json!({"url": "/workers", "connection": "mtls"}),
        )
        .await;
    assert_eq!(fetched["status"], 200, "{fetched}");
    assert_eq!(fetched["body"], r#"{"path":"/v1/workers","bearer":true}"#);
    assert_eq!(mtls.requests.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn the_provider_sets_quotas_and_intervals_per_installation() {
    let w = world(Backend::Sqlite).await.unwrap();
    let owner = w.tenant("tuned", &ALL_GRANTS, json!({})).await;
    let path = format!("/provider/tenants/tuned/plugins/{ID}");
    let put = |body: Value| {
        w.srv
            .call(Method::PUT, &path, Some(&w.provider), Some(body))
    };

    let (status, body) = put(json!({
        "grants": ALL_GRANTS,
        "quotas": {"http-requests": 500, "wall-ms": 10},
        "schedules": {"poll": "30s", "nope": "1h"},
    }))
    .await;
    assert_eq!(status, 422, "{body}");
    let paths: Vec<&str> = body["error"]["details"]["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    for expected in [
        "/quotas/http-requests",
        "/quotas/wall-ms",
        "/schedules/poll",
        "/schedules/nope",
    ] {
        assert!(paths.contains(&expected), "{expected}: {body}");
    }

    // The provider may raise a quota the manifest lowered (within the maxima) and
    // lengthen a schedule.
    let (status, body) = put(json!({
        "grants": ALL_GRANTS,
        "quotas": {"http-requests": 7, "wall-ms": 2000},
        "schedules": {"poll": "1h"},
    }))
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["quotas"]["http-requests"], 7, "{body}");
    assert_eq!(body["overrides"]["schedules"]["poll"], "1h", "{body}");
    let left = w.action(&owner, "limits", json!({})).await;
    assert_eq!(left["http_requests"], 7, "{left}");
    assert!(left["wall_ms"].as_u64().unwrap() <= 2000, "{left}");
    // The wall-clock cap bounds a request asking for longer: the call against the slow
    // fake (3 s) is stopped at its 2 s.
    let started = std::time::Instant::now();
    let (status, body) = w
        .srv
        .post(
            &format!("/api/plugins/{ID}/actions/fetch"),
            &owner,
            json!({"input": {"url": w.url("api.probe.test", "/v1/slow"), "timeout_ms": 10_000}}),
        )
        .await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"]["details"]["kind"], "timeout", "{body}");
    assert!(
        started.elapsed() < Duration::from_millis(2900),
        "stopped at the cap"
    );
    // The bytes quota: a response larger than what is left is refused, naming the quota.
    let (status, body) =
        put(json!({"grants": ALL_GRANTS, "quotas": {"http-requests": 7, "http-bytes": 64}})).await;
    assert_eq!(status, 200, "{body}");
    let open = w
        .action(
            &owner,
            "fetch",
            json!({"url": w.url("api.probe.test", "/v1/open")}),
        )
        .await;
    assert_eq!(open["error"], "limit", "{open}");
    assert!(
        open["message"].as_str().unwrap().contains("http-bytes"),
        "{open}"
    );
    let posted = w
        .action(
            &owner,
            "fetch",
            json!({"url": w.url("api.probe.test", "/v1/open"), "method": "POST", "body": "x".repeat(100)}),
        )
        .await;
    assert_eq!(posted["error"], "limit", "{posted}");
    assert!(
        posted["message"].as_str().unwrap().contains("http-bytes"),
        "{posted}"
    );
    let (_, list) = w
        .srv
        .get(&format!("/api/plugins/{ID}/schedules"), &owner)
        .await;
    assert_eq!(list["items"][0]["every"], "1h", "{list}");

    // A change that leaves them out keeps them; `{}` clears them.
    let (status, body) = put(json!({"grants": ALL_GRANTS})).await;
    assert_eq!(
        (status, &body["quotas"]["http-requests"]),
        (200, &json!(7)),
        "{body}"
    );
    let (status, body) = put(json!({"grants": ALL_GRANTS, "quotas": {}, "schedules": {}})).await;
    assert_eq!(
        (status, &body["quotas"]["http-requests"]),
        (200, &json!(5)),
        "{body}"
    );
    let (_, list) = w
        .srv
        .get(&format!("/api/plugins/{ID}/schedules"), &owner)
        .await;
    assert_eq!(list["items"][0]["every"], "1m", "{list}");
}

/// A Standard Webhooks delivery: `webhook-id`, `webhook-timestamp`, `webhook-signature`.
fn standard_headers(secret: &[u8], id: &str, timestamp: i64, body: &[u8]) -> Vec<(String, String)> {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    let signature = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    vec![
        ("webhook-id".into(), id.into()),
        ("webhook-timestamp".into(), timestamp.to_string()),
        ("webhook-signature".into(), format!("v1,{signature}")),
    ]
}

#[tokio::test]
async fn standard_webhooks_are_verified_with_the_installations_secret() {
    let srv = TestServer::start(Backend::Sqlite).await;
    let provider = srv.provider_token().await;
    srv.tenant(&provider, "std").await;
    let key = b"a-32-byte-standard-webhooks-key!";
    let secret = format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    );
    let installed = srv
        .install_plugin(
            &provider,
            "tests/plugins/standard-webhooks-probe",
            "std",
            json!({"grants": ["kv"], "config": {"webhook_secret": secret}}),
        )
        .await;
    assert!(
        installed.get("app_webhook_url").is_none(),
        "no route, no app-wide address"
    );
    let owner = srv.user(&provider, "std", "owner").await;
    let address = installed["webhook_url"].as_str().unwrap();
    let path = reqwest::Url::parse(address).unwrap().path().to_string();
    let send = |headers: Vec<(String, String)>, body: &'static [u8]| {
        let mut request = srv
            .http
            .post(format!("{}{path}/events", srv.base))
            .body(body);
        for (k, v) in headers {
            request = request.header(k, v);
        }
        async move {
            let answer = request.send().await.unwrap();
            (answer.status().as_u16(), answer.text().await.unwrap())
        }
    };
    let seen = || async {
        let (_, out) = srv
            .post(
                "/api/plugins/standard-webhooks-probe/actions/webhooks",
                &owner,
                json!({"input": {}}),
            )
            .await;
        out["output"].as_array().map_or(0, Vec::len)
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let body: &'static [u8] = br#"{"type":"invoice.paid","data":{"id":"in_1"}}"#;

    let (status, text) = send(Vec::new(), body).await;
    assert_eq!(status, 401, "{text}");
    assert!(text.contains("webhook-id header is missing"), "{text}");
    let (status, _) = send(
        standard_headers(b"another key entirely!!", "msg_1", now, body),
        body,
    )
    .await;
    assert_eq!(status, 401);
    let (status, text) = send(standard_headers(key, "msg_1", now - 600, body), body).await;
    assert_eq!(status, 401, "{text}");
    assert!(text.contains("stale"), "{text}");
    assert_eq!(seen().await, 0, "nothing reached the plugin");

    let (status, text) = send(standard_headers(key, "msg_1", now, body), body).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(seen().await, 1);
    // The same webhook-id again (a retry or a replay): answered, not delivered twice.
    let (status, _) = send(standard_headers(key, "msg_1", now + 1, body), body).await;
    assert_eq!(status, 200);
    assert_eq!(seen().await, 1);
    let (status, _) = send(standard_headers(key, "msg_2", now, body), body).await;
    assert_eq!(status, 200);
    assert_eq!(seen().await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_records_are_created_once_per_key_plugin_and_tenant() {
    let w = world(Backend::Sqlite).await.unwrap();
    let a = w.tenant("keyed-a", &ALL_GRANTS, json!({})).await;
    let b = w.tenant("keyed-b", &ALL_GRANTS, json!({})).await;
    let first = w
        .action(
            &a,
            "keyed",
            json!({"key": "st-job-50001", "data": {"name": "Keyed"}}),
        )
        .await;
    let id = first["created"]["ok"]["id"].as_str().unwrap().to_string();
    assert_eq!(first["found"]["ok"]["id"], id.as_str(), "{first}");
    // Again: the record exists under the key, so it is not created twice.
    let again = w
        .action(
            &a,
            "keyed",
            json!({"key": "st-job-50001", "data": {"name": "Twice"}}),
        )
        .await;
    assert!(
        again["created"]["err"]
            .as_str()
            .unwrap()
            .starts_with("conflict:"),
        "{again}"
    );
    assert_eq!(again["found"]["ok"]["id"], id.as_str());
    assert_eq!(again["found"]["ok"]["data"]["name"], "Keyed");
    // Another tenant's key of the same name is its own.
    let other = w
        .action(
            &b,
            "keyed",
            json!({"key": "st-job-50001", "data": {"name": "Theirs"}}),
        )
        .await;
    let theirs = other["created"]["ok"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{other}"));
    assert_ne!(theirs, id);
    assert_eq!(other["found"]["ok"]["id"], theirs);
    assert_eq!(other["found"]["ok"]["data"]["name"], "Theirs");
    // Keys are 1 to 200 bytes of text.
    for key in [String::new(), "k".repeat(201), "a\u{7}b".into()] {
        let refused = w
            .action(&a, "keyed", json!({"key": key, "data": {"name": "Bad"}}))
            .await;
        assert!(
            refused["created"]["err"]
                .as_str()
                .unwrap()
                .starts_with("invalid:"),
            "{refused}"
        );
    }
    let (_, leads) = w.srv.get("/api/records/lead", &a).await;
    assert_eq!(leads["items"].as_array().unwrap().len(), 1, "{leads}");
    // A reservation whose record is gone (deleted) is written again under the same id.
    let (status, _) = w.srv.delete(&format!("/api/records/lead/{id}"), &a).await;
    assert_eq!(status, 204);
    let back = w
        .action(
            &a,
            "keyed",
            json!({"key": "st-job-50001", "data": {"name": "Back"}}),
        )
        .await;
    assert_eq!(back["created"]["ok"]["id"], id.as_str(), "{back}");
}
