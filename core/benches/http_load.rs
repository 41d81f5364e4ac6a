//! HTTP load benchmark: authenticated lead creates against the real `streamflow` binary,
//! driven from this (second) process.
//!
//! For each backend (SQLite always; PostgreSQL when `STREAMFLOW_TEST_POSTGRES_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`, is reachable) and each write mode (group commit
//! on, and the baseline of one transaction per create), it measures:
//! - peak throughput: `BENCH_CONCURRENCY` (64) clients creating leads as fast as they can for
//!   `BENCH_SECONDS` (5) seconds;
//! - latency at a fixed offered load of `BENCH_RATE` (1,000) creates per second (each
//!   request is sent at its own time, whether or not earlier ones have been answered, and
//!   timed from when it was sent; the table also says how late the generator itself sent).
//!
//! For comparison it also measures `GET /api/records/lead/{id}` (auth plus one indexed read)
//! at peak.
//!
//! Run: `cargo bench --bench http_load` (prints a Markdown table for docs/BENCHMARKS.md);
//! - creates with the bundled rules scorer installed against the same without it, on one
//!   SQLite server, two tenants measured in turns.
//!
//! `BENCH_ONLY=sqlite` or `BENCH_ONLY=postgresql` measures one backend; `BENCH_ONLY=scoring`
//! only the scorer comparison. `BENCH_SERVER_BIN=path` runs another build of the server.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{Value, json};
use sqlx::Connection;
use tokio::sync::Mutex;

mod common;
use common::{drop_postgres_database, postgres_database};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Server {
    child: Child,
    base: String,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

fn start_server(database_url: Option<&str>, write_batch: usize) -> Server {
    let dir = tempfile::tempdir().unwrap();
    // `BENCH_SERVER_BIN` measures another build of the server (a baseline) with this load.
    let bin = std::env::var("BENCH_SERVER_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_streamflow").to_string());
    let mut cmd = Command::new(bin);
    cmd.arg("serve")
        .current_dir(dir.path())
        .env("STREAMFLOW_LISTEN", "127.0.0.1:0")
        .env("STREAMFLOW_PROVIDER_EMAIL", "bench@provider.test")
        .env("STREAMFLOW_PROVIDER_PASSWORD", "bench-password-1")
        .env("STREAMFLOW_WRITE_BATCH", write_batch.to_string())
        .env("STREAMFLOW_LOGIN_PER_IP", "100000")
        .env("STREAMFLOW_LOG", "warn")
        .env_remove("STREAMFLOW_DATABASE_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some(url) = database_url {
        cmd.env("STREAMFLOW_DATABASE_URL", url);
    }
    let mut child = cmd.spawn().expect("start streamflow");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let base = loop {
        let line = lines.next().expect("streamflow exited early").unwrap();
        if let Some(rest) = line.strip_prefix("StreamFlow listening on ") {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    Server {
        child,
        base,
        _dir: dir,
    }
}

async fn post(client: &reqwest::Client, url: String, token: Option<&str>, body: Value) -> Value {
    let mut req = client.post(url).json(&body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    assert!(
        resp.status().is_success(),
        "setup failed: {}",
        resp.status()
    );
    resp.json().await.unwrap()
}

/// The provider's access token.
async fn provider_token(client: &reqwest::Client, base: &str) -> String {
    let p = post(
        client,
        format!("{base}/provider/auth/login"),
        None,
        json!({"email": "bench@provider.test", "password": "bench-password-1"}),
    )
    .await;
    p["access_token"].as_str().unwrap().to_string()
}

/// Creates a tenant and an owner; returns the owner's access token.
async fn setup_tenant(client: &reqwest::Client, base: &str, provider: &str, slug: &str) -> String {
    post(
        client,
        format!("{base}/provider/tenants"),
        Some(provider),
        json!({"slug": slug, "name": slug}),
    )
    .await;
    post(
        client,
        format!("{base}/provider/tenants/{slug}/users"),
        Some(provider),
        json!({"email": format!("owner@{slug}.test"), "password": "bench-password-1", "role": "owner"}),
    )
    .await;
    let c = post(
        client,
        format!("{base}/api/auth/login"),
        None,
        json!({"tenant": slug, "email": format!("owner@{slug}.test"), "password": "bench-password-1"}),
    )
    .await;
    c["access_token"].as_str().unwrap().to_string()
}

/// Creates the tenant `bench` and its owner; returns the owner's access token.
async fn setup(client: &reqwest::Client, base: &str) -> String {
    let provider = provider_token(client, base).await;
    setup_tenant(client, base, &provider, "bench").await
}

/// Lead creates with the bundled rules scorer installed against the same creates without
/// it, on one server (two tenants, measured in turns so both see the same machine).
async fn scoring(seconds: u64, concurrency: usize) {
    let server = start_server(None, 256);
    let client = reqwest::Client::new();
    let provider = provider_token(&client, &server.base).await;
    let bare = setup_tenant(&client, &server.base, &provider, "bare").await;
    let scored = setup_tenant(&client, &server.base, &provider, "scored").await;
    let installed = client
        .put(format!(
            "{}/provider/tenants/scored/plugins/lead-score-rules",
            server.base
        ))
        .bearer_auth(&provider)
        .json(&json!({"config": {}}))
        .send()
        .await
        .unwrap();
    assert!(
        installed.status().is_success(),
        "install: {}",
        installed.status()
    );
    let (mut bare_runs, mut scored_runs) = (Vec::new(), Vec::new());
    for round in 0..3 {
        for (token, runs) in [(&bare, &mut bare_runs), (&scored, &mut scored_runs)] {
            let f = peak(&server.base, token, &Op::CreateLead, concurrency, seconds).await;
            if round > 0 {
                runs.push(f); // the first round warms both up
            }
        }
    }
    println!("
lead creates over HTTP on SQLite, group commit, {concurrency} clients, two rounds of {seconds} s each, taken in turns
");
    println!("| tenant | creates/s | p50 ms | p99 ms | errors | vs no scorer |");
    println!("|---|---:|---:|---:|---:|---:|");
    let mean = |runs: &[Figures], f: fn(&Figures) -> f64| {
        runs.iter().map(f).sum::<f64>() / runs.len() as f64
    };
    let base_rate = mean(&bare_runs, |f| f.per_second);
    for (name, runs) in [
        ("no plugin", &bare_runs),
        ("lead-score-rules scorer", &scored_runs),
    ] {
        let rate = mean(runs, |f| f.per_second);
        println!(
            "| {name} | {rate:.0} | {:.2} | {:.2} | {} | {:.0}% |",
            mean(runs, |f| f.p50_ms),
            mean(runs, |f| f.p99_ms),
            runs.iter().map(|f| f.errors).sum::<u64>(),
            rate / base_rate * 100.0
        );
    }
}

fn lead_body(i: u64) -> Value {
    json!({"stage": "new", "data": {
        "name": format!("Lead {i}"), "email": format!("lead{i}@example.com"), "phone": "+1 512 555 0100",
        "source": "google_ads", "service": "ac_replacement", "budget": 9500, "postal_code": "78704",
        "notes": "Wants a quote for a 3-ton heat pump before summer."
    }})
}

#[derive(Clone)]
enum Op {
    CreateLead,
    /// Read one lead by id.
    GetLead(String),
}

async fn send(client: &reqwest::Client, base: &str, token: &str, op: &Op, i: u64) -> bool {
    let resp = match op {
        Op::CreateLead => {
            client
                .post(format!("{base}/api/records/lead"))
                .bearer_auth(token)
                .json(&lead_body(i))
                .send()
                .await
        }
        Op::GetLead(id) => {
            client
                .get(format!("{base}/api/records/lead/{id}"))
                .bearer_auth(token)
                .send()
                .await
        }
    };
    match resp {
        Ok(r) => {
            let ok = r.status().is_success();
            let _ = r.bytes().await;
            ok
        }
        Err(_) => false,
    }
}

struct Figures {
    per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
    /// Open loop only: the 99th percentile of how late the generator sent a request.
    send_lag_p99_ms: Option<f64>,
}

/// Closed loop: `concurrency` clients back to back for `seconds`.
async fn peak(base: &str, token: &str, op: &Op, concurrency: usize, seconds: u64) -> Figures {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()
        .unwrap();
    let hist = Arc::new(Mutex::new(Histogram::<u64>::new(3).unwrap()));
    let errors = Arc::new(AtomicU64::new(0));
    let counter = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, base, token, hist, errors, counter, op) = (
            client.clone(),
            base.to_string(),
            token.to_string(),
            hist.clone(),
            errors.clone(),
            counter.clone(),
            op.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut local = Histogram::<u64>::new(3).unwrap();
            while Instant::now() < end {
                let i = counter.fetch_add(1, Ordering::Relaxed);
                let t = Instant::now();
                if !send(&client, &base, &token, &op, i).await {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                local.record(t.elapsed().as_micros() as u64).unwrap();
            }
            hist.lock().await.add(local).unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let hist = hist.lock().await;
    let errors = errors.load(Ordering::Relaxed);
    Figures {
        per_second: (hist.len() - errors) as f64 / elapsed,
        p50_ms: hist.value_at_quantile(0.50) as f64 / 1000.0,
        p99_ms: hist.value_at_quantile(0.99) as f64 / 1000.0,
        errors,
        send_lag_p99_ms: None,
    }
}

/// Open loop: one request every 1/rate seconds, each timed from when it was due.
async fn fixed_rate(base: &str, token: &str, rate: u64, seconds: u64) -> Figures {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()
        .unwrap();
    let hist = Arc::new(Mutex::new(Histogram::<u64>::new(3).unwrap()));
    let lag = Arc::new(Mutex::new(Histogram::<u64>::new(3).unwrap()));
    let errors = Arc::new(AtomicU64::new(0));
    let total = rate * seconds;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let due = start + interval * i as u32;
        tokio::time::sleep_until(due.into()).await;
        let (client, base, token, hist, lag, errors) = (
            client.clone(),
            base.to_string(),
            token.to_string(),
            hist.clone(),
            lag.clone(),
            errors.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            if !send(&client, &base, &token, &Op::CreateLead, i).await {
                errors.fetch_add(1, Ordering::Relaxed);
            }
            let took = sent.elapsed().as_micros() as u64;
            hist.lock().await.record(took).unwrap();
            let late = sent.duration_since(due).as_micros() as u64;
            lag.lock().await.record(late).unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let hist = hist.lock().await;
    Figures {
        per_second: total as f64 / start.elapsed().as_secs_f64(),
        p50_ms: hist.value_at_quantile(0.50) as f64 / 1000.0,
        p99_ms: hist.value_at_quantile(0.99) as f64 / 1000.0,
        errors: errors.load(Ordering::Relaxed),
        send_lag_p99_ms: Some(lag.lock().await.value_at_quantile(0.99) as f64 / 1000.0),
    }
}

fn row(backend: &str, mode: &str, what: &str, f: &Figures) {
    let lag = f
        .send_lag_p99_ms
        .map(|l| format!("{l:.2}"))
        .unwrap_or_else(|| "-".into());
    println!(
        "| {backend} | {mode} | {what} | {:.0} | {:.2} | {:.2} | {lag} | {} |",
        f.per_second, f.p50_ms, f.p99_ms, f.errors
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo bench` passes `--bench`; `cargo test` runs bench targets with no such flag.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let seconds: u64 = env_or("BENCH_SECONDS", 5);
    let concurrency: usize = env_or("BENCH_CONCURRENCY", 64);
    let rate: u64 = env_or("BENCH_RATE", 1000);
    println!(
        "\nlead creates over HTTP: {concurrency} clients for peak, {rate}/s offered for latency, {seconds} s each\n"
    );
    println!(
        "| backend | writes | measure | req/s | p50 ms | p99 ms | generator lag p99 ms | errors |"
    );
    println!("|---|---|---|---:|---:|---:|---:|---:|");
    let pg = postgres_database().await;
    let mut backends: Vec<(&str, Option<String>)> = vec![("SQLite", None)];
    match &pg {
        Some((url, _)) => backends.push(("PostgreSQL", Some(url.clone()))),
        None => eprintln!("PostgreSQL unreachable: only SQLite is measured"),
    }
    // `BENCH_ONLY=sqlite` or `BENCH_ONLY=postgresql` measures one backend.
    let only = std::env::var("BENCH_ONLY")
        .unwrap_or_default()
        .to_lowercase();
    backends.retain(|(name, _)| only.is_empty() || name.to_lowercase() == only);
    for (backend, url) in &backends {
        for (mode, batch) in [("group commit", 256usize), ("one tx per create", 1)] {
            if let Some((_, name)) = &pg
                && url.is_some()
            {
                // A fresh database for each mode, so table sizes match.
                drop_postgres_database(name).await;
                let admin = std::env::var("STREAMFLOW_TEST_POSTGRES_URL")
                    .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
                let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&mut conn)
                    .await
                    .unwrap();
            }
            let server = start_server(url.as_deref(), batch);
            let client = reqwest::Client::new();
            let token = setup(&client, &server.base).await;
            peak(&server.base, &token, &Op::CreateLead, concurrency, 1).await; // warm up
            let p = peak(&server.base, &token, &Op::CreateLead, concurrency, seconds).await;
            row(backend, mode, "create, peak", &p);
            let f = fixed_rate(&server.base, &token, rate, seconds).await;
            row(backend, mode, &format!("create at {rate}/s"), &f);
            if batch > 1 {
                let lead = post(
                    &client,
                    format!("{}/api/records/lead", server.base),
                    Some(&token),
                    lead_body(0),
                )
                .await;
                let read = Op::GetLead(lead["id"].as_str().unwrap().to_string());
                let m = peak(&server.base, &token, &read, concurrency, seconds).await;
                row(backend, "-", "read one lead, peak", &m);
            }
        }
    }
    if let Some((_, name)) = pg {
        drop_postgres_database(&name).await;
    }
    if only.is_empty() || only == "scoring" || only == "sqlite" {
        scoring(seconds, concurrency).await;
    }
}
