//! The price of the sandbox: one lead scored by `plugins/lead-score-rules`
//! - natively (the same Rust logic, no WebAssembly),
//! - on a warm instance (one instance reused: no isolation between calls),
//! - through the runtime as the server does it: a fresh store and instance per call,
//!   on 1 and 2 threads.
//!
//! `cargo bench -p streamflow --bench plugin_scoring` (BENCH_SECONDS per measurement,
//! default 3). Each measurement parses the tenant's config and the lead's JSON, as the
//! plugin does on every call.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{Map, json};
use streamflow_runtime::{
    Call, Grants, Invocation, NoServices, Package, PluginRecord, Reply, Runtime, RuntimeConfig,
};

fn seconds() -> Duration {
    let s = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    Duration::from_secs_f64(s)
}

fn lead() -> PluginRecord {
    // About 1 KB of JSON, like a lead from a web form with notes.
    let data = json!({
        "name": "Dana Reyes", "email": "dana@example.com", "phone": "555-010-7788",
        "address": {"street": "1 Main St", "city": "Austin", "postal_code": "78701"},
        "source": "referral", "budget": "$18,500", "timeline": "asap", "service": "AC replacement",
        "notes": "Two-storey house, 2,400 sq ft. Existing unit is 18 years old and short-cycles; \
                  the upstairs is 8 degrees warmer than downstairs in the afternoon. Wants a quote \
                  for a heat pump with zoning, financing options, and a visit this week.",
        "tags": ["web-form", "spring-campaign", "heat-pump"],
        "utm": {"source": "google", "medium": "cpc", "campaign": "hvac-spring"}
    });
    PluginRecord {
        id: "0192f1c4-0000-7000-8000-000000000001".into(),
        record_type: "lead".into(),
        stage: Some("new".into()),
        version: 1,
        data: data.to_string(),
        created_at: 0,
        updated_at: 0,
    }
}

struct Stats {
    p50_us: f64,
    p99_us: f64,
    per_sec: f64,
}

/// Runs `f` for the measurement time on one thread, recording each call.
fn measure(mut f: impl FnMut()) -> Stats {
    let mut hist = Histogram::<u64>::new(3).unwrap();
    for _ in 0..200 {
        f();
    }
    let time = seconds();
    let started = Instant::now();
    let mut calls = 0u64;
    while started.elapsed() < time {
        let t = Instant::now();
        f();
        hist.record(t.elapsed().as_nanos() as u64).unwrap();
        calls += 1;
    }
    Stats {
        p50_us: hist.value_at_quantile(0.5) as f64 / 1000.0,
        p99_us: hist.value_at_quantile(0.99) as f64 / 1000.0,
        per_sec: calls as f64 / started.elapsed().as_secs_f64(),
    }
}

/// Calls per second of `f` on `threads` threads at once.
fn throughput(threads: usize, f: impl Fn() + Sync) -> f64 {
    let time = seconds();
    let started = Instant::now();
    let total: u64 = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut n = 0u64;
                    while started.elapsed() < time {
                        f();
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    total as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = std::env::temp_dir().join("bench-lead-score-rules.plugin.wasm");
    eprintln!("building plugins/lead-score-rules...");
    streamflow::plugin_cli::build(&root.join("plugins/lead-score-rules"), Some(&out))
        .expect("plugin builds");
    let package = Package::parse(std::fs::read(&out).unwrap()).unwrap();
    let manifest = package.manifest.clone();
    let config = streamflow::plugins::config::prepare(
        &manifest.config_schema(),
        &manifest.secret_fields(),
        json!({"postal_prefixes": ["787"]}),
        &Map::new(),
    )
    .unwrap()
    .public
    .to_string();

    let runtime = Runtime::new(RuntimeConfig {
        instances: 64,
        ..RuntimeConfig::default()
    })
    .unwrap();
    let loaded = runtime.load(&package.bytes).unwrap();
    let invocation = Arc::new(Invocation {
        tenant: "bench".into(),
        plugin: manifest.id.clone(),
        version: manifest.version.to_string(),
        config: config.clone(),
        grants: Grants::default(),
        limits: manifest.limits,
        quotas: manifest.quotas,
        wall: manifest
            .quotas
            .wall_for(streamflow_runtime::Hook::ScoreLead),
        services: Arc::new(NoServices),
    });
    let lead = lead();
    println!(
        "lead data: {} bytes of JSON; config: {} bytes",
        lead.data.len(),
        config.len()
    );

    let native = measure(|| {
        let rules: lead_score_rules::rules::Rules = serde_json::from_str(&config).unwrap();
        let data: serde_json::Value = serde_json::from_str(&lead.data).unwrap();
        std::hint::black_box(lead_score_rules::rules::score(&rules, &data));
    });
    let mut warm = runtime.warm_instance(&loaded, invocation.clone()).unwrap();
    let warm_stats = measure(|| {
        let reply = warm.call(Call::ScoreLead(lead.clone())).unwrap();
        assert!(matches!(reply, Reply::Score(_)));
    });
    let fresh_call = || {
        let reply = runtime
            .invoke(&loaded, invocation.clone(), Call::ScoreLead(lead.clone()))
            .unwrap();
        assert!(matches!(reply, Reply::Score(_)));
    };
    let fresh = measure(fresh_call);
    let fresh_2 = throughput(2, fresh_call);
    let native_2 = throughput(2, || {
        let rules: lead_score_rules::rules::Rules = serde_json::from_str(&config).unwrap();
        let data: serde_json::Value = serde_json::from_str(&lead.data).unwrap();
        std::hint::black_box(lead_score_rules::rules::score(&rules, &data));
    });

    println!();
    println!("| score-lead | p50 | p99 | calls/s, 1 thread | calls/s, 2 threads | p50 vs native |");
    println!("|---|---|---|---|---|---|");
    let row = |name: &str, s: &Stats, two: Option<f64>| {
        println!(
            "| {name} | {:.1} µs | {:.1} µs | {:.0} | {} | {:.1}x |",
            s.p50_us,
            s.p99_us,
            s.per_sec,
            two.map(|t| format!("{t:.0}")).unwrap_or_else(|| "-".into()),
            s.p50_us / native.p50_us
        )
    };
    row("native (no WebAssembly)", &native, Some(native_2));
    row("warm instance (no isolation)", &warm_stats, None);
    row("fresh instance per call", &fresh, Some(fresh_2));
}
