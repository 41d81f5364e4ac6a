//! Automation benchmark: record change → dispatcher → automation ran → its result stored.
//!
//! In-process (the kernel library, no HTTP): records are created the way the API creates
//! them (`api::records::create`: schema, pipeline, group-commit writer, outbox), and the
//! node's dispatcher runs the tenant's automations. For each backend (SQLite always;
//! PostgreSQL when `STREAMFLOW_TEST_POSTGRES_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`, is reachable) and each kind of work:
//! - `no automation` (baseline): events with nothing to run, the dispatcher's own cost;
//! - `built-in create-record`: each order creates its invoice;
//! - `plugin action`: each won estimate becomes a job through the bundled `job-scheduler`
//!   (a sandboxed wasm call that reads its config and creates a record);
//!
//! it measures
//! - drain: `BENCH_BACKLOG` (5,000) changes queued with the dispatcher stopped, then the
//!   time to run them all (automations per second);
//! - steady load: `BENCH_RATE` (1,000) changes per second for `BENCH_SECONDS` (5) with the
//!   dispatcher running; lag from the change's commit to the automation's result stored,
//!   at p50, p99 and max (from the delivery rows: `finished_at - event_at`).
//!
//! Run: `cargo bench -p streamflow --bench automations` (prints a Markdown table);
//! `BENCH_ONLY=sqlite|postgresql` picks a backend, `BENCH_WORK=note|order|estimate` a kind
//! of work; `BENCH_PG_SOCKET_URL=postgres://postgres@%2Fvar%2Frun%2Fpostgresql/test` adds
//! rows for the same PostgreSQL through its Unix socket.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use streamflow::config::Config;
use streamflow::kernel::{Kernel, NewId, NewRecord, WriteContext};
use streamflow::store::{Store, TenantScope};
use streamflow::templates::Template;

mod common;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

const TEMPLATE: &str = r#"
id = "bench"
name = "Benchmark"
version = "1.0.0"
[[record_types]]
id = "order"
name = "Order"
required = ["customer_name", "amount"]
[record_types.fields]
customer_name = { type = "string", maxLength = 200, pii = true }
amount = { type = "number", minimum = 0 }
[[record_types]]
id = "invoice"
name = "Invoice"
[record_types.fields]
order_id = { type = "string" }
customer_name = { type = "string" }
amount = { type = "number" }
due_at = { type = "string", format = "date-time" }
[[record_types]]
id = "note"
name = "Note (no automation)"
[record_types.fields]
text = { type = "string" }
[[record_types]]
id = "estimate"
name = "Estimate"
[record_types.fields]
customer_name = { type = "string" }
amount = { type = "number" }
job_type = { type = "string" }
[[record_types]]
id = "job"
name = "Job"
[record_types.fields]
title = { type = "string" }
[[pipelines]]
record_type = "job"
stages = [{ id = "scheduled", name = "Scheduled" }]
[[automations]]
id = "order-invoice"
name = "An order gets its invoice"
on = "record.created"
record_type = "order"
run = { builtin = "create-record", record_type = "invoice", link = "order_id", copy = { customer_name = "customer_name", amount = "amount" }, due = { field = "due_at", in_days = 30 } }
[[automations]]
id = "estimate-job"
name = "An estimate becomes a job"
on = "record.created"
record_type = "estimate"
run = { plugin = "job-scheduler", action = "schedule-job", params = { link = "estimate_id" } }
[[plugins]]
id = "job-scheduler"
version = "^0.1"
grants = ["records:read", "records:write"]
"#;

struct Work {
    label: &'static str,
    record_type: &'static str,
    target: Option<&'static str>,
    data: fn(usize) -> Value,
}

static WORK: [Work; 3] = [
    Work {
        label: "no automation (baseline)",
        record_type: "note",
        target: None,
        data: |n| json!({"text": format!("note {n}")}),
    },
    Work {
        label: "built-in create-record",
        record_type: "order",
        target: Some("automation:order-invoice"),
        data: |n| json!({"customer_name": format!("Customer {n}"), "amount": 100 + n}),
    },
    Work {
        label: "plugin action (job-scheduler)",
        record_type: "estimate",
        target: Some("automation:estimate-job"),
        data: |n| json!({"customer_name": format!("Customer {n}"), "amount": 100 + n, "job_type": "repair"}),
    },
];

async fn state(database_url: String) -> Arc<Kernel> {
    let config = Config {
        database_url,
        bundled_plugins: true,
        dispatcher: false,
        data_dir: std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("bench-data"),
        secret_key: Some("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=".into()),
        ..Config::default()
    };
    Kernel::open(config).await.expect("kernel")
}

async fn pending(store: &Store) -> i64 {
    store.pending_events().await.unwrap()
}

async fn drain(store: &Store) {
    while pending(store).await > 0 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Creates `count` records of the work's type, `concurrency` at a time.
async fn create(state: &Arc<Kernel>, scope: TenantScope, work: &Work, from: usize, count: usize) {
    let mut tasks = tokio::task::JoinSet::new();
    for n in from..from + count {
        let state = state.clone();
        let record_type = work.record_type;
        let data = (work.data)(n);
        tasks.spawn(async move {
            let ctx = WriteContext::direct(scope, "bench".into(), None);
            let new = NewRecord {
                id: NewId::Fresh,
                record_type: record_type.into(),
                stage: None,
                data,
            };
            state.records().create(&ctx, new).await.expect("create");
        });
        if tasks.len() >= 256 {
            tasks.join_next().await;
        }
    }
    while tasks.join_next().await.is_some() {}
}

/// Lags (µs) of the work's deliveries whose event is at or after `since`.
async fn lags(store: &Store, target: &str, since: i64) -> Vec<i64> {
    streamflow::on_pool!(streamflow::store::test_support::pool(store), pool => {
        sqlx::query_scalar::<_, i64>(
            "SELECT finished_at - event_at FROM event_deliveries WHERE target = $1 AND event_at >= $2",
        )
        .bind(target)
        .bind(since)
        .fetch_all(pool)
        .await
        .unwrap()
    })
}

struct Row {
    drain_per_s: f64,
    steady_rate: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    ran: usize,
}

async fn measure(state: &Arc<Kernel>, scope: TenantScope, work: &'static Work) -> Row {
    let backlog: usize = env_or("BENCH_BACKLOG", 5_000);
    let rate: usize = env_or("BENCH_RATE", 1_000);
    let seconds: u64 = env_or("BENCH_SECONDS", 5);

    // Drain: queue the backlog, then let one dispatcher run it.
    create(state, scope, work, 0, backlog).await;
    let stop = streamflow::events::Stop::default();
    let started = Instant::now();
    let dispatcher = streamflow::events::start(state.clone(), stop.clone());
    drain(&state.store).await;
    let drain_per_s = backlog as f64 / started.elapsed().as_secs_f64();

    // Steady load: `rate` changes a second, sent in 10 ms ticks, dispatcher running.
    let since = streamflow::store::now_micros();
    let load_started = Instant::now();
    let per_tick = (rate / 100).max(1);
    let mut sent = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    while load_started.elapsed() < Duration::from_secs(seconds) {
        tick.tick().await;
        let state = state.clone();
        let from = backlog + sent;
        tokio::spawn(async move { create(&state, scope, work, from, per_tick).await });
        sent += per_tick;
    }
    let steady_rate = sent as f64 / load_started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(200)).await;
    drain(&state.store).await;
    stop.stop();
    let _ = dispatcher.await;

    let (mut lag, ran) = match work.target {
        Some(target) => {
            let all = lags(&state.store, target, 0).await.len();
            (lags(&state.store, target, since).await, all)
        }
        None => (Vec::new(), 0),
    };
    lag.sort_unstable();
    let pct = |p: f64| {
        lag.get(((lag.len() as f64 * p) as usize).min(lag.len().saturating_sub(1)))
            .map_or(f64::NAN, |v| *v as f64 / 1000.0)
    };
    Row {
        drain_per_s,
        steady_rate,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        max_ms: lag.last().map_or(f64::NAN, |v| *v as f64 / 1000.0),
        ran,
    }
}

async fn bench_backend(name: &str, database_url: String) {
    let state = state(database_url).await;
    let only_work = std::env::var("BENCH_WORK").unwrap_or_default();
    for work in WORK
        .iter()
        .filter(|w| only_work.is_empty() || w.record_type == only_work)
    {
        // A tenant per kind of work, so each run's events are its own.
        let slug = format!("bench-{}", work.record_type);
        let tenant = state
            .store
            .create_tenant(&slug, &slug)
            .await
            .unwrap()
            .unwrap();
        let scope = tenant.scope();
        let template = Arc::new(Template::from_toml(TEMPLATE).unwrap());
        state
            .templates()
            .apply(&scope, &template)
            .await
            .expect("the benchmark template applies");
        let row = measure(&state, scope, work).await;
        println!(
            "| {name} | {} | {:.0} | {:.0} | {:.1} | {:.1} | {:.1} | {} |",
            work.label,
            row.drain_per_s,
            row.steady_rate,
            row.p50_ms,
            row.p99_ms,
            row.max_ms,
            row.ran
        );
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    // `STREAMFLOW_LOG=streamflow::events=debug` shows each dispatch round's phases.
    streamflow::telemetry::init_logging(false);
    println!(
        "| backend | work | drain (automations/s) | steady load (changes/s) | lag p50 (ms) | lag p99 (ms) | lag max (ms) | automations run |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    if only.is_empty() || only == "sqlite" {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("bench.db").display());
        bench_backend("SQLite", url).await;
    }
    if only.is_empty() || only == "postgresql" {
        match common::postgres_database().await {
            Some((url, name)) => {
                bench_backend("PostgreSQL", url).await;
                common::drop_postgres_database(&name).await;
            }
            None => eprintln!("PostgreSQL not reachable: its rows are skipped"),
        }
        // The same server through its Unix socket: sqlx 0.9.0 leaves Nagle's algorithm on
        // for TCP, which stalls some round trips for a delayed ACK (40 ms).
        if let Ok(socket_url) = std::env::var("BENCH_PG_SOCKET_URL") {
            match common::postgres_database_at(&socket_url).await {
                Some((url, name)) => {
                    bench_backend("PostgreSQL (Unix socket)", url).await;
                    common::drop_postgres_database(&name).await;
                }
                None => eprintln!("PostgreSQL not reachable at BENCH_PG_SOCKET_URL"),
            }
        }
    }
}
