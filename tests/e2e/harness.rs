//! Test harness: the real server on an ephemeral port, against a real database.
//!
//! SQLite tests use a fresh file in a temporary folder. PostgreSQL tests create a fresh
//! database on the server at `STREAMFLOW_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`) and drop it afterwards. When that server is
//! unreachable the PostgreSQL variants return early (the `postgres_suite` test target says
//! so plainly), unless `STREAMFLOW_TEST_POSTGRES=required`, when they fail.

use std::sync::OnceLock;

use reqwest::Method;
use serde_json::{Value, json};
use sqlx::Connection;
use streamflow::api::AppState;
use streamflow::config::Config;
use tokio::sync::oneshot;

pub const PROVIDER_EMAIL: &str = "ops@provider.test";
pub const PROVIDER_PASSWORD: &str = "provider-password-1";
pub const PASSWORD: &str = "correct-horse-battery";

#[derive(Clone, Copy, Debug)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub fn postgres_admin_url() -> String {
    std::env::var("STREAMFLOW_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

fn postgres_required() -> bool {
    std::env::var("STREAMFLOW_TEST_POSTGRES").is_ok_and(|v| v == "required" || v == "1")
}

/// Whether PostgreSQL tests can run; panics when they are required and cannot.
pub async fn postgres_available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    if let Some(ok) = AVAILABLE.get() {
        return *ok;
    }
    let ok = match sqlx::PgConnection::connect(&postgres_admin_url()).await {
        Ok(conn) => {
            let _ = conn.close().await;
            true
        }
        Err(e) => {
            if postgres_required() {
                panic!("STREAMFLOW_TEST_POSTGRES=required but PostgreSQL is unreachable: {e}");
            }
            false
        }
    };
    *AVAILABLE.get_or_init(|| ok)
}

/// Runs one test body on SQLite and on PostgreSQL.
#[macro_export]
macro_rules! both_backends {
    ($(#[$meta:meta])* async fn $name:ident($srv:ident) $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            async fn story($srv: $crate::harness::TestServer) $body

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                story($crate::harness::TestServer::start($crate::harness::Backend::Sqlite).await).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let Some(srv) = $crate::harness::TestServer::start_postgres().await else { return };
                story(srv).await;
            }
        }
    };
}

pub struct TestServer {
    pub base: String,
    pub state: AppState,
    pub http: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
    _dir: Option<tempfile::TempDir>,
    pg_database: Option<String>,
}

impl TestServer {
    pub async fn start(backend: Backend) -> Self {
        Self::start_with(backend, |_| {})
            .await
            .expect("backend available")
    }

    pub async fn start_postgres() -> Option<Self> {
        Self::start_with(Backend::Postgres, |_| {}).await
    }

    /// Starts a server; `tweak` adjusts the test configuration. `None` when the backend is
    /// PostgreSQL and it is not available (and not required).
    pub async fn start_with(backend: Backend, tweak: impl FnOnce(&mut Config)) -> Option<Self> {
        let (database_url, dir, pg_database) = match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}", dir.path().join("test.db").display());
                (url, Some(dir), None)
            }
            Backend::Postgres => {
                if !postgres_available().await {
                    return None;
                }
                let (url, name) = create_postgres_database("sf_t").await;
                (url, None, Some(name))
            }
        };
        Some(Self::launch(database_url, dir, pg_database, tweak).await)
    }

    /// The database this server uses.
    pub fn database_url(&self) -> String {
        self.state.config.database_url.clone()
    }

    async fn launch(
        database_url: String,
        dir: Option<tempfile::TempDir>,
        pg_database: Option<String>,
        tweak: impl FnOnce(&mut Config),
    ) -> Self {
        let mut config = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            database_url,
            login_per_ip_per_minute: 100_000,
            login_per_account_per_minute: 100_000,
            login_per_account_global_per_minute: 100_000,
            provider_email: Some(PROVIDER_EMAIL.into()),
            provider_password: Some(PROVIDER_PASSWORD.into()),
            // Shared by the tests so each plugin compiles once; compiled artifacts are keyed
            // by the package's hash, and the secret key is given so no key file is written.
            data_dir: std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("e2e-data"),
            secret_key: Some("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=".into()),
            // The plugin tests publish the reference plugins themselves; the template tests
            // turn the bundled ones on.
            bundled_plugins: false,
            ..Config::default()
        };
        tweak(&mut config);
        let state = streamflow::server::build_state(config)
            .await
            .expect("server state");
        streamflow::server::bootstrap_provider(&state)
            .await
            .expect("bootstrap provider");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let serve_state = state.clone();
        tokio::spawn(async move {
            streamflow::server::serve(serve_state, listener, async {
                let _ = rx.await;
            })
            .await
            .expect("server runs");
        });
        Self {
            base: format!("http://{addr}"),
            state,
            // No idle connections kept: a route that answers before reading a large body
            // (401, 413) makes the server close the connection, and a pooled client could
            // send the next request on it before noticing (a broken pipe).
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .expect("HTTP client"),
            shutdown: Some(tx),
            _dir: dir,
            pg_database,
        }
    }

    /// Tells the server to stop, as SIGTERM does: it stops accepting and finishes what is in
    /// flight.
    pub fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Sends a request with an optional bearer token and JSON body; returns status and JSON.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request sent");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if status >= 400 {
            assert!(
                value.pointer("/error/code").is_some_and(Value::is_string)
                    && value
                        .pointer("/error/message")
                        .is_some_and(Value::is_string)
                    && value.pointer("/error/details").is_some(),
                "error {status} for {path} is not in the error shape: {value}"
            );
        }
        (status, value)
    }

    pub async fn get(&self, path: &str, token: &str) -> (u16, Value) {
        self.call(Method::GET, path, Some(token), None).await
    }
    pub async fn post(&self, path: &str, token: &str, body: Value) -> (u16, Value) {
        self.call(Method::POST, path, Some(token), Some(body)).await
    }
    pub async fn patch(&self, path: &str, token: &str, body: Value) -> (u16, Value) {
        self.call(Method::PATCH, path, Some(token), Some(body))
            .await
    }
    pub async fn delete(&self, path: &str, token: &str) -> (u16, Value) {
        self.call(Method::DELETE, path, Some(token), None).await
    }

    /// Sends raw bytes with the given content type (for malformed and oversized bodies).
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        token: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token)
            .body(body);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        let resp = req.send().await.expect("request sent");
        let status = resp.status().as_u16();
        let value = resp.json::<Value>().await.unwrap_or(Value::Null);
        (status, value)
    }

    pub async fn provider_login(&self) -> Value {
        let (status, body) = self
            .call(
                Method::POST,
                "/provider/auth/login",
                None,
                Some(json!({"email": PROVIDER_EMAIL, "password": PROVIDER_PASSWORD})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }

    pub async fn provider_token(&self) -> String {
        self.provider_login().await["access_token"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Creates a tenant and returns its slug.
    pub async fn tenant(&self, provider: &str, slug: &str) -> String {
        let (status, body) = self
            .post(
                "/provider/tenants",
                provider,
                json!({"slug": slug, "name": format!("Tenant {slug}")}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        slug.to_string()
    }

    /// Creates a user with `role` in `slug` and returns a client access token.
    pub async fn user(&self, provider: &str, slug: &str, role: &str) -> String {
        let email = format!("{role}-{}@{slug}.test", uuid::Uuid::new_v4().simple());
        let (status, body) = self
            .post(
                &format!("/provider/tenants/{slug}/users"),
                provider,
                json!({"email": email, "password": PASSWORD, "role": role}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        self.client_login(slug, &email).await["access_token"]
            .as_str()
            .unwrap()
            .to_string()
    }

    pub async fn client_login(&self, slug: &str, email: &str) -> Value {
        let (status, body) = self
            .call(
                Method::POST,
                "/api/auth/login",
                None,
                Some(json!({"tenant": slug, "email": email, "password": PASSWORD})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }

    pub async fn lead(&self, token: &str, data: Value) -> Value {
        let (status, body) = self
            .post(
                "/api/records/lead",
                token,
                json!({"data": data, "stage": "new"}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        body
    }
}

/// The kinds of the outbox events of one record, oldest first.
pub async fn event_kinds(srv: &TestServer, record_id: &str) -> Vec<String> {
    let id = uuid::Uuid::parse_str(record_id).unwrap();
    streamflow::on_pool!(streamflow::store::test_support::pool(&srv.state.store), pool => {
        sqlx::query_scalar::<_, String>("SELECT kind FROM events WHERE record_id = $1 ORDER BY seq")
            .bind(id)
            .fetch_all(pool)
            .await
            .unwrap()
    })
}

/// Creates a fresh, empty database on the test PostgreSQL; returns its URL and name.
pub async fn create_postgres_database(prefix: &str) -> (String, String) {
    let name = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
    let mut admin = sqlx::PgConnection::connect(&postgres_admin_url())
        .await
        .expect("admin connection");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .expect("create test database");
    let _ = admin.close().await;
    (database_url_for(&name), name)
}

/// Drops a database made by [`create_postgres_database`], whoever is still connected.
pub async fn drop_postgres_database(name: &str) {
    if let Ok(mut admin) = sqlx::PgConnection::connect(&postgres_admin_url()).await {
        let drop = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
        let _ = sqlx::query(sqlx::AssertSqlSafe(drop))
            .execute(&mut admin)
            .await;
    }
}

fn database_url_for(name: &str) -> String {
    let admin = postgres_admin_url();
    match admin.rfind('/') {
        Some(i) if admin[..i].contains("://") && i > admin.find("://").unwrap() + 2 => {
            format!("{}/{name}", &admin[..i])
        }
        _ => format!("{admin}/{name}"),
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(name) = self.pg_database.take() {
            // Drop the database from a thread of its own: Drop cannot await.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(drop_postgres_database(&name));
            })
            .join();
        }
    }
}

/// The package file of a plugin crate in this repository (`plugins/...` or
/// `tests/plugins/...`), built once per test run with `streamflow plugin build`.
pub fn plugin_package(crate_dir: &str) -> Vec<u8> {
    static BUILT: std::sync::Mutex<Vec<(String, std::path::PathBuf)>> =
        std::sync::Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, path)) = built.iter().find(|(dir, _)| dir == crate_dir) {
        return std::fs::read(path).unwrap();
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("{}.plugin.wasm", crate_dir.replace('/', "_")));
    let result = std::process::Command::new(env!("CARGO_BIN_EXE_streamflow"))
        .args(["plugin", "build"])
        .arg(root.join(crate_dir))
        .arg("-o")
        .arg(&out)
        .output()
        .expect("run streamflow plugin build");
    assert!(
        result.status.success(),
        "plugin build {crate_dir} failed:\n{}\n{}",
        String::from_utf8_lossy(&result.stdout),
        String::from_utf8_lossy(&result.stderr)
    );
    built.push((crate_dir.to_string(), out.clone()));
    std::fs::read(out).unwrap()
}

impl TestServer {
    /// Creates a developer account and returns its access token.
    pub async fn developer(&self, provider: &str, email: &str) -> String {
        let (status, body) = self
            .post(
                "/provider/developers",
                provider,
                json!({"email": email, "password": "developer-pass-1", "name": "Dev"}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        let (status, body) = self
            .call(
                Method::POST,
                "/developer/auth/login",
                None,
                Some(json!({"email": email, "password": "developer-pass-1"})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body["access_token"].as_str().unwrap().to_string()
    }

    /// Uploads a package as `developer`.
    pub async fn publish(&self, developer: &str, package: Vec<u8>) -> (u16, Value) {
        self.raw(
            Method::POST,
            "/developer/plugins",
            developer,
            Some("application/octet-stream"),
            package,
        )
        .await
    }

    /// Publishes (as a fresh developer), approves and installs a plugin for `slug`.
    pub async fn install_plugin(
        &self,
        provider: &str,
        crate_dir: &str,
        slug: &str,
        body: Value,
    ) -> Value {
        let package = plugin_package(crate_dir);
        let dev = self
            .developer(
                provider,
                &format!("dev-{}@plugins.test", uuid::Uuid::new_v4().simple()),
            )
            .await;
        let (status, version) = self.publish(&dev, package).await;
        assert!(status == 201 || status == 409, "{version}");
        let (id, v) = match status {
            201 => (
                version["id"].as_str().unwrap().to_string(),
                version["version"].as_str().unwrap().to_string(),
            ),
            _ => unreachable!("each test server has its own registry"),
        };
        let (status, approved) = self
            .post(
                &format!("/provider/plugins/{id}/versions/{v}/approve"),
                provider,
                json!({}),
            )
            .await;
        assert_eq!(status, 200, "{approved}");
        let (status, installed) = self
            .call(
                Method::PUT,
                &format!("/provider/tenants/{slug}/plugins/{id}"),
                Some(provider),
                Some(body),
            )
            .await;
        assert_eq!(status, 201, "{installed}");
        installed
    }
}
