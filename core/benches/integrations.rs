//! Contract 0.2.0 benchmarks, in one process on SQLite (`BENCH_PG=1`: PostgreSQL through
//! `STREAMFLOW_TEST_POSTGRES_URL`):
//! - **host HTTP call**: a request from the kernel's guarded client straight to a local
//!   fake (the baseline), against a plugin action making the same request through
//!   `http.send` (manifest hosts, quotas, metering, usage row), with an action making no
//!   request beside it for the sandbox's own cost; `BENCH_CALLS` (2,000) of each, p50/p99;
//! - **webhooks**: signed deliveries to an installation's address through the HTTP server,
//!   verified and handed to the plugin, against deliveries refused for a bad signature
//!   (the host's verification without a plugin call); `BENCH_SECONDS` (5) each, 32 senders;
//! - **schedules**: `BENCH_INSTALLATIONS` (10,000) installations with a one-minute schedule,
//!   then one interval of the scheduler: how many ran and the lag from due to start
//!   (`BENCH_POLL_MS`, default 1000: the scheduler's poll interval).
//!
//! Run: `cargo bench -p streamflow --bench integrations` (prints Markdown tables);
//! `BENCH_ONLY=http|webhooks|schedules` picks one part.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use hdrhistogram::Histogram;
use hmac::Mac;
use serde_json::{Value, json};
use streamflow::config::Config;
use streamflow::kernel::{Install, Kernel};
use streamflow::store::TenantScope;
use streamflow::store::accounts::AccountKind;
use streamflow::store::plugins::{NewVersion, Published, UploadQuota, VersionStatus};
use streamflow_runtime::integration::QuotaOverrides;
use streamflow_runtime::{Call, Package};

mod common;

const ID: &str = "integration-probe";
const VERIFIER: &str = "bench-verifier";
const GRANTS: [&str; 4] = ["kv", "http", "secrets", "records:read"];

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn wanted(part: &str) -> bool {
    std::env::var("BENCH_ONLY").map_or(true, |only| only == part)
}

async fn fake() -> u16 {
    use axum::routing::{get, post};
    let app = axum::Router::new()
        .route(
            "/v1/open",
            get(|| async { axum::Json(json!({"ok": true, "items": [1, 2, 3]})) }),
        )
        .route("/v1/echo", post(|body: String| async move { body }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    port
}

fn quantiles(h: &Histogram<u64>) -> (f64, f64) {
    (
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
    )
}

async fn publish(kernel: &Kernel) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = std::env::temp_dir().join("bench-integration-probe.plugin.wasm");
    eprintln!("building tests/plugins/integration-probe...");
    streamflow::plugin_cli::build(&root.join("tests/plugins/integration-probe"), Some(&out))
        .expect("plugin builds");
    let package = Package::parse(std::fs::read(&out).unwrap()).unwrap();
    let manifest = &package.manifest;
    let hash = streamflow::auth::hash_password("bench-developer-1".into())
        .await
        .unwrap();
    let developer = kernel
        .store
        .create_account(AccountKind::Developer, "bench@dev.test", "", &hash)
        .await
        .unwrap()
        .unwrap()
        .id;
    let version = manifest.version.to_string();
    let published = kernel
        .store
        .publish_version(
            developer,
            &NewVersion {
                plugin_id: &manifest.id,
                version: &version,
                name: &manifest.name,
                api: &manifest.api.to_string(),
                manifest: &serde_json::to_value(manifest).unwrap(),
                package: &package.bytes,
                sha256: &package.sha256,
            },
            UploadQuota::UNLIMITED,
        )
        .await
        .unwrap();
    assert!(matches!(published, Published::Created(_)));
    kernel
        .store
        .review_version(ID, &version, VersionStatus::Approved, None, developer)
        .await
        .unwrap();
}

async fn tenant(kernel: &Kernel, slug: &str) -> TenantScope {
    let tenant = kernel
        .store
        .create_tenant(slug, slug)
        .await
        .unwrap()
        .unwrap();
    let scope = tenant.scope();
    kernel
        .installations()
        .install(
            &scope,
            Install {
                plugin_id: ID.into(),
                requirement: None,
                grants: GRANTS.iter().map(|g| g.to_string()).collect(),
                config: Some(json!({})),
                enabled: None,
                quotas: Some(QuotaOverrides {
                    http_requests: Some(200),
                    ..QuotaOverrides::default()
                }),
                schedules: None,
            },
        )
        .await
        .unwrap();
    scope
}

async fn http_part(kernel: &Arc<Kernel>, port: u16) {
    let scope = tenant(kernel, "http-bench").await;
    let active = kernel.plugins.active(&scope).await.unwrap()[0].clone();
    let calls: usize = env_or("BENCH_CALLS", 2000);
    let url = format!("http://api.probe.test:{port}/v1/open");
    let action = |name: &str, input: Value| Call::RunAction {
        name: name.into(),
        input: input.to_string(),
    };
    let mut rows = Vec::new();
    for round in 0..2 {
        let mut direct = Histogram::<u64>::new(3).unwrap();
        let mut sandbox = Histogram::<u64>::new(3).unwrap();
        let mut through = Histogram::<u64>::new(3).unwrap();
        for _ in 0..calls {
            let started = Instant::now();
            let request = streamflow::outbound::Request {
                method: "GET".into(),
                url: reqwest::Url::parse(&url).unwrap(),
                headers: Vec::new(),
                body: Vec::new(),
                timeout: Duration::from_secs(10),
                follow_redirects: false,
                max_response_bytes: 1 << 20,
                user_agent: "bench".into(),
                identity: None,
                credential_headers: Vec::new(),
            };
            let answer = kernel
                .outbound
                .send(request, &|h| h == "api.probe.test")
                .await
                .unwrap();
            assert_eq!(answer.status, 200);
            direct.record(started.elapsed().as_nanos() as u64).unwrap();

            let started = Instant::now();
            kernel
                .plugins
                .call(&scope, &active, action("limits", json!({})))
                .await
                .unwrap();
            sandbox.record(started.elapsed().as_nanos() as u64).unwrap();

            let started = Instant::now();
            let reply = kernel
                .plugins
                .call(&scope, &active, action("fetch", json!({"url": url})))
                .await
                .unwrap();
            through.record(started.elapsed().as_nanos() as u64).unwrap();
            if let streamflow_runtime::Reply::Output(out) = reply {
                assert!(out.contains("\"status\":200"), "{out}");
            }
        }
        if round == 0 {
            continue; // warm-up: connections, compiled code, caches
        }
        rows.push(("direct request from the kernel", quantiles(&direct)));
        rows.push(("plugin action, no request", quantiles(&sandbox)));
        rows.push(("plugin action, one `http.send`", quantiles(&through)));
    }
    println!("\n### Host HTTP call ({calls} calls each, sequential, after a warm-up round)\n");
    println!("| path | p50 | p99 |\n|---|---:|---:|");
    for (name, (p50, p99)) in &rows {
        println!("| {name} | {p50:.0} µs | {p99:.0} µs |");
    }
    let added = rows[2].1.0 - rows[1].1.0 - rows[0].1.0;
    println!("\nWhat `http.send` adds over the direct request at p50: {added:.0} µs");
}

fn sign(body: &[u8]) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(VERIFIER.as_bytes()).unwrap();
    mac.update(body);
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

async fn webhooks_part(state: streamflow::api::AppState) {
    let kernel = state.kernel.clone();
    let scope = tenant(&kernel, "webhook-bench").await;
    kernel
        .connections()
        .put_app(ID, "code", Some(json!({"verifier": VERIFIER})), None)
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(streamflow::server::serve(
        state,
        listener,
        std::future::pending(),
    ));
    let address = kernel.webhooks().address(&scope, ID).await.unwrap();
    let path = address.replace(&kernel.config.public_base(), &base);
    let seconds: u64 = env_or("BENCH_SECONDS", 5);
    let client = reqwest::Client::new();
    println!(
        "\n### Verified webhooks through a plugin ({seconds} s each, 32 senders, one installation)\n"
    );
    println!("| deliveries | answered | per second |\n|---|---|---:|");
    for (name, valid) in [
        ("signed, verified, delivered to the plugin", true),
        ("bad signature, refused (401)", false),
    ] {
        let done = Arc::new(AtomicU64::new(0));
        let serial = Arc::new(AtomicU64::new(0));
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let mut senders = Vec::new();
        for _ in 0..32 {
            let (client, path, done, serial) =
                (client.clone(), path.clone(), done.clone(), serial.clone());
            senders.push(tokio::spawn(async move {
                while Instant::now() < deadline {
                    let n = serial.fetch_add(1, Ordering::Relaxed);
                    let body = format!(r#"{{"eventNotifications":[{{"realmId":"1","id":{n}}}]}}"#);
                    let signature = if valid {
                        sign(body.as_bytes())
                    } else {
                        sign(b"x")
                    };
                    let answer = client
                        .post(&path)
                        .header("intuit-signature", signature)
                        .body(body)
                        .send()
                        .await
                        .unwrap();
                    let expected = if valid { 200 } else { 401 };
                    assert_eq!(answer.status().as_u16(), expected);
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        let started = Instant::now();
        for s in senders {
            s.await.unwrap();
        }
        let rate = done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
        let status = if valid { 200 } else { 401 };
        println!("| {name} | {status} | {rate:.0} |");
    }
}

async fn schedules_part(kernel: &Arc<Kernel>) {
    let count: usize = env_or("BENCH_INSTALLATIONS", 10_000);
    let setup = Instant::now();
    eprintln!("installing the probe for {count} tenants...");
    for n in 0..count {
        tenant(kernel, &format!("sched-{n:05}")).await;
        if n % 1000 == 999 {
            eprintln!(
                "  {} installed ({:.0} s)",
                n + 1,
                setup.elapsed().as_secs_f64()
            );
        }
    }
    // The first runs were spread over the minute after each install; moved together
    // (keeping each one's place in the minute) so all are due within one minute from two
    // seconds after the scheduler starts.
    let start = streamflow::store::now_micros() + 2_000_000;
    let rows = |sql: &'static str| sqlx::AssertSqlSafe(sql);
    streamflow::on_pool!(streamflow::store::test_support::pool(&kernel.store), pool => {
        sqlx::query(rows("UPDATE plugin_schedules SET next_run_at = $1 + next_run_at % 60000000"))
            .bind(start)
            .execute(pool)
            .await
            .unwrap();
    });
    eprintln!(
        "setup took {:.0} s; running one interval...",
        setup.elapsed().as_secs_f64()
    );
    let stop = streamflow::events::Stop::default();
    let scheduler = streamflow::kernel::schedules::start(kernel.clone(), stop.clone());
    tokio::time::sleep(Duration::from_secs(64)).await;
    stop.stop();
    let _ = scheduler.await;
    let runs: Vec<(i64, i64, i64)> = streamflow::on_pool!(streamflow::store::test_support::pool(&kernel.store), pool => {
        sqlx::query_as(rows(
            "SELECT last_run_at, next_run_at, every_seconds FROM plugin_schedules WHERE last_run_at IS NOT NULL",
        ))
        .fetch_all(pool)
        .await
        .unwrap()
    });
    let mut lag = Histogram::<u64>::new(3).unwrap();
    for (ran, next, every) in &runs {
        let due = next - every * 1_000_000;
        lag.record((ran - due).max(0) as u64).unwrap();
    }
    println!(
        "\n### Schedules: {count} installations, one-minute interval, one interval of the scheduler (poll {} ms)\n",
        kernel.config.scheduler_poll.as_millis()
    );
    println!("| ran in the minute | lag p50 | lag p99 | lag max |\n|---:|---:|---:|---:|");
    println!(
        "| {} of {count} | {:.1} ms | {:.1} ms | {:.1} ms |",
        runs.len(),
        lag.value_at_quantile(0.5) as f64 / 1000.0,
        lag.value_at_quantile(0.99) as f64 / 1000.0,
        lag.max() as f64 / 1000.0
    );
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let (database_url, pg) = if std::env::var("BENCH_PG").is_ok() {
            let (url, name) = common::postgres_database().await.expect("PostgreSQL");
            (url, Some(name))
        } else {
            (
                format!("sqlite://{}", dir.path().join("bench.db").display()),
                None,
            )
        };
        let port = fake().await;
        let localhost: std::net::IpAddr = "127.0.0.1".parse().unwrap();
        let config = Config {
            database_url,
            data_dir: dir.path().to_path_buf(),
            secret_key: Some("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=".into()),
            bundled_plugins: false,
            dispatcher: false,
            scheduler: false,
            http_allow_hosts: vec![("api.probe.test".into(), port)],
            http_resolve: vec![("api.probe.test".into(), localhost)],
            webhook_rate: 1_000_000,
            scheduler_poll: Duration::from_millis(env_or("BENCH_POLL_MS", 1000)),
            ..Config::default()
        };
        let state = streamflow::server::build_state(config).await.unwrap();
        let kernel = state.kernel.clone();
        publish(&kernel).await;
        println!("## Contract 0.2.0 (`cargo bench -p streamflow --bench integrations`)");
        if wanted("http") {
            http_part(&kernel, port).await;
        }
        if wanted("webhooks") {
            webhooks_part(state.clone()).await;
        }
        if wanted("schedules") {
            schedules_part(&kernel).await;
        }
        if let Some(name) = pg {
            common::drop_postgres_database(&name).await;
        }
    });
}
