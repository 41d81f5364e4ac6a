//! The event dispatcher across processes: killed mid-flight and restarted, and two server
//! processes sharing one PostgreSQL queue. Real `streamflow serve` processes, the bundled
//! plugins, the roofing template.

use std::collections::HashSet;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::binary::{Process, post, spawn};
use crate::harness;

const PROVIDER: (&str, &str) = ("ops@dispatch.test", "dispatch-password-1");
const PASSWORD: &str = "client-password-1";

fn env<'a>(database_url: &'a str, dispatcher: &'a str) -> Vec<(&'static str, &'a str)> {
    vec![
        ("STREAMFLOW_DATABASE_URL", database_url),
        ("STREAMFLOW_DISPATCHER", dispatcher),
        ("STREAMFLOW_PROVIDER_EMAIL", PROVIDER.0),
        ("STREAMFLOW_PROVIDER_PASSWORD", PROVIDER.1),
        // Compiled plugins are cached here across the test's processes.
        (
            "STREAMFLOW_DATA_DIR",
            concat!(env!("CARGO_TARGET_TMPDIR"), "/e2e-data"),
        ),
        (
            "STREAMFLOW_SECRET_KEY",
            "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
        ),
    ]
}

fn kill_hard(process: &mut Process) {
    let pid = process.child.id().to_string();
    Command::new("kill").args(["-KILL", &pid]).status().unwrap();
    let _ = process.child.wait();
}

async fn get(base: &str, path: &str, token: &str) -> Value {
    let resp = reqwest::Client::new()
        .get(format!("{base}{path}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "GET {path}");
    resp.json().await.unwrap()
}

/// A roofing tenant with an owner; returns the owner's token.
async fn roofing_tenant(base: &str, slug: &str) -> String {
    let (status, body) = post(
        base,
        "/provider/auth/login",
        None,
        json!({"email": PROVIDER.0, "password": PROVIDER.1}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let provider = body["access_token"].as_str().unwrap().to_string();
    let (status, body) = post(
        base,
        "/provider/tenants",
        Some(&provider),
        json!({"slug": slug, "name": slug, "template": "roofing"}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let email = format!("owner@{slug}.test");
    let (status, body) = post(
        base,
        &format!("/provider/tenants/{slug}/users"),
        Some(&provider),
        json!({"email": email, "password": PASSWORD, "role": "owner"}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    client_token(base, slug).await
}

async fn client_token(base: &str, slug: &str) -> String {
    let (status, body) = post(
        base,
        "/api/auth/login",
        None,
        json!({"tenant": slug, "email": format!("owner@{slug}.test"), "password": PASSWORD}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["access_token"].as_str().unwrap().to_string()
}

/// A signed estimate: its creation in `won` triggers the job-scheduler automation.
async fn won_estimate(base: &str, token: &str, n: usize) -> String {
    let (status, body) = post(
        base,
        "/api/records/estimate",
        Some(token),
        json!({"stage": "won", "data": {
            "customer_name": format!("Customer {n}"), "job_type": "roof_repair", "amount": 1000 + n,
        }}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    body["id"].as_str().unwrap().to_string()
}

/// The jobs' `estimate_id`s (all pages).
async fn job_links(base: &str, token: &str) -> Vec<String> {
    let mut links = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = get(base, &format!("/api/records/job?limit=200{cursor}"), token).await;
        for job in page["items"].as_array().unwrap() {
            links.push(job["data"]["estimate_id"].as_str().unwrap().to_string());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => return links,
        }
    }
}

/// Waits until there are `n` jobs, then checks that they stay `n` and each estimate has
/// exactly one.
async fn expect_one_job_each(base: &str, token: &str, estimates: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let links = job_links(base, token).await;
        if links.len() >= estimates.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} jobs after 90 s",
            links.len(),
            estimates.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let links = job_links(base, token).await;
    let unique: HashSet<&String> = links.iter().collect();
    assert_eq!(
        links.len(),
        estimates.len(),
        "duplicate jobs: {} for {} estimates",
        links.len(),
        estimates.len()
    );
    assert_eq!(unique, estimates.iter().collect::<HashSet<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn automations_survive_a_killed_server() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("kill.db").display());
    // An API-only node queues the work, then dies without a goodbye.
    let mut api_only = spawn(&["serve"], dir.path(), &env(&url, "0"));
    let token = roofing_tenant(&api_only.base, "killed").await;
    let mut estimates = Vec::new();
    for n in 0..60 {
        estimates.push(won_estimate(&api_only.base, &token, n).await);
    }
    assert!(
        job_links(&api_only.base, &token).await.is_empty(),
        "nothing dispatches on an API-only node"
    );
    kill_hard(&mut api_only);

    // A dispatching node starts on the work and is killed as soon as some is done.
    let mut first = spawn(&["serve"], dir.path(), &env(&url, "1"));
    let token = client_token(&first.base, "killed").await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while job_links(&first.base, &token).await.is_empty() {
        assert!(Instant::now() < deadline, "no automation ran within 60 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    kill_hard(&mut first);
    let done_before_restart = {
        let second = spawn(&["serve"], dir.path(), &env(&url, "0"));
        let n = job_links(&second.base, &client_token(&second.base, "killed").await)
            .await
            .len();
        drop(second);
        n
    };

    // After a restart every automation has run exactly once.
    let again = spawn(&["serve"], dir.path(), &env(&url, "1"));
    let token = client_token(&again.base, "killed").await;
    expect_one_job_each(&again.base, &token, &estimates).await;
    eprintln!(
        "killed with {done_before_restart} of {} automations done; all ran once after the restart",
        estimates.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_server_processes_share_the_postgres_queue() {
    if !harness::postgres_available().await {
        return;
    }
    let (url, name) = harness::create_postgres_database("sf_two").await;
    let dir = tempfile::tempdir().unwrap();
    let a = spawn(&["serve"], dir.path(), &env(&url, "1"));
    let b = spawn(&["serve"], dir.path(), &env(&url, "1"));
    let token = roofing_tenant(&a.base, "shared").await;
    let token_b = client_token(&b.base, "shared").await;
    let mut estimates = Vec::new();
    for n in 0..120 {
        let (base, token) = if n % 2 == 0 {
            (&a.base, &token)
        } else {
            (&b.base, &token_b)
        };
        estimates.push(won_estimate(base, token, n).await);
    }
    expect_one_job_each(&a.base, &token, &estimates).await;
    let runs = get(&a.base, "/api/automation-runs", &token).await;
    let nodes: HashSet<&str> = runs["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["target"] == "automation:won-estimate-schedules-job")
        .map(|r| r["node"].as_str().unwrap())
        .collect();
    assert_eq!(nodes.len(), 2, "both processes dispatched: {nodes:?}");
    drop(a);
    drop(b);
    harness::drop_postgres_database(&name).await;
}
