//! The `streamflow` binary itself: first start, demo data, graceful shutdown on SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub(crate) struct Process {
    pub(crate) child: Child,
    pub(crate) base: String,
    pub(crate) stdout: Vec<String>,
}

/// Starts `streamflow <args>` on a free port and waits until it says where it listens.
pub(crate) fn spawn(args: &[&str], dir: &std::path::Path, env: &[(&str, &str)]) -> Process {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_streamflow"));
    cmd.args(args)
        .current_dir(dir)
        .env("STREAMFLOW_LISTEN", "127.0.0.1:0")
        .env_remove("STREAMFLOW_DATABASE_URL")
        .env_remove("STREAMFLOW_PROVIDER_EMAIL")
        .env_remove("STREAMFLOW_PROVIDER_PASSWORD")
        .env("STREAMFLOW_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("the streamflow binary starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut stdout = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let Some(Ok(line)) = lines.next() else { break };
        stdout.push(line.clone());
        if let Some(rest) = line.strip_prefix("StreamFlow listening on ") {
            let base = rest.split_whitespace().next().unwrap().to_string();
            return Process {
                child,
                base,
                stdout,
            };
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("streamflow did not report its address; it printed {stdout:?}");
}

impl Drop for Process {
    /// A failing test must not leave a server behind.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Process {
    fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "streamflow did not stop within 20 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

pub(crate) async fn post(base: &str, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .json(&body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    (
        resp.status().as_u16(),
        resp.json().await.unwrap_or(Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_start_prints_a_generated_provider_password_once_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let process = spawn(&["serve"], dir.path(), &[]);
    assert!(
        dir.path().join("streamflow.db").exists(),
        "the default SQLite file is created in the working directory"
    );
    let line = process
        .stdout
        .iter()
        .find(|l| l.contains("with password"))
        .expect("the generated password is printed");
    let password = line
        .split("with password ")
        .nth(1)
        .unwrap()
        .trim()
        .to_string();
    let (status, body) = post(
        &process.base,
        "/provider/auth/login",
        None,
        json!({"email": "admin@streamflow.local", "password": password}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let token = body["access_token"].as_str().unwrap().to_string();
    let (status, _) = post(
        &process.base,
        "/provider/tenants",
        Some(&token),
        json!({"slug": "kept", "name": "Kept"}),
    )
    .await;
    assert_eq!(status, 201);
    assert!(process.terminate().success(), "a clean exit on SIGTERM");

    // Second start: same database, nothing printed about passwords, the data is still there.
    let again = spawn(&["serve"], dir.path(), &[]);
    assert!(
        !again.stdout.iter().any(|l| l.contains("password")),
        "{:?}",
        again.stdout
    );
    let (status, body) = post(
        &again.base,
        "/provider/auth/login",
        None,
        json!({"email": "admin@streamflow.local", "password": password}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let resp = reqwest::Client::new()
        .get(format!("{}/provider/tenants/kept", again.base))
        .bearer_auth(body["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(again.terminate().success());
}

/// Logs in as the demo's acme-hvac owner; returns the token.
async fn demo_owner(base: &str) -> String {
    let login = json!({"tenant": "acme-hvac", "email": "owner@acme-hvac.demo", "password": "streamflow-demo"});
    let (status, body) = post(base, "/api/auth/login", None, login).await;
    assert_eq!(status, 200, "{body}");
    body["access_token"].as_str().unwrap().to_string()
}

async fn demo_records(base: &str, token: &str, record_type: &str) -> Vec<Value> {
    let page: Value = reqwest::Client::new()
        .get(format!("{base}/api/records/{record_type}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    page["items"].as_array().unwrap().clone()
}

/// The compiled-plugin cache the binary tests share.
const DATA_DIR: (&str, &str) = (
    "STREAMFLOW_DATA_DIR",
    concat!(env!("CARGO_TARGET_TMPDIR"), "/e2e-data"),
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_seeds_templates_scored_leads_and_runs_automations() {
    let dir = tempfile::tempdir().unwrap();
    let process = spawn(&["demo"], dir.path(), &[DATA_DIR]);
    let printed = process.stdout.join("\n");
    for slug in ["acme-hvac", "summit-roofing", "capitol-federal"] {
        assert!(printed.contains(slug), "{printed}");
    }
    assert!(
        !printed.contains("note:"),
        "every template applied: {printed}"
    );
    let owner = demo_owner(&process.base).await;
    let leads = demo_records(&process.base, &owner, "lead").await;
    assert_eq!(leads.len(), 4);
    assert!(
        leads.iter().all(|l| l["score"]["value"].is_u64()),
        "every lead is scored: {leads:?}"
    );
    // The automations run once the server is up: the won estimate and the no-heat call
    // become jobs, the active agreement its two tune-up visits.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let jobs = demo_records(&process.base, &owner, "job").await.len();
        let visits = demo_records(&process.base, &owner, "visit").await.len();
        if jobs == 2 && visits == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after 30 s: {jobs} jobs, {visits} visits"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, _) = post(
        &process.base,
        "/provider/auth/login",
        None,
        json!({"email": "provider@demo.streamflow.dev", "password": "streamflow-demo"}),
    )
    .await;
    assert_eq!(status, 200);
    assert!(process.terminate().success());
    // Seeding again adds nothing twice.
    let again = spawn(&["serve", "--demo"], dir.path(), &[DATA_DIR]);
    let owner = demo_owner(&again.base).await;
    assert_eq!(demo_records(&again.base, &owner, "lead").await.len(), 4);
    assert_eq!(demo_records(&again.base, &owner, "job").await.len(), 2);
    assert!(again.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_runs_on_postgresql_from_the_environment() {
    if !crate::harness::postgres_available().await {
        return;
    }
    let (url, name) = crate::harness::create_postgres_database("sf_bin").await;
    let dir = tempfile::tempdir().unwrap();
    let process = spawn(
        &["serve"],
        dir.path(),
        &[
            ("STREAMFLOW_DATABASE_URL", &url),
            ("STREAMFLOW_PROVIDER_EMAIL", "boss@provider.test"),
            ("STREAMFLOW_PROVIDER_PASSWORD", "boss-password-1"),
        ],
    );
    assert!(!dir.path().join("streamflow.db").exists());
    let (status, _) = post(
        &process.base,
        "/provider/auth/login",
        None,
        json!({"email": "boss@provider.test", "password": "boss-password-1"}),
    )
    .await;
    assert_eq!(status, 200);
    assert!(process.terminate().success());
    crate::harness::drop_postgres_database(&name).await;

    // A bad URL is a clear error, not a panic.
    let out = Command::new(env!("CARGO_BIN_EXE_streamflow"))
        .args([
            "migrate",
            "--database-url",
            "postgres://nobody:secret-pw@127.0.0.1:1/none",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot connect to PostgreSQL"), "{err}");
    assert!(
        !err.contains("secret-pw"),
        "the password is not printed: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_the_request_id_and_never_a_password() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_streamflow"));
    cmd.args(["serve", "--log-format", "json"])
        .current_dir(dir.path())
        .env("STREAMFLOW_LISTEN", "127.0.0.1:0")
        .env("STREAMFLOW_LOG", "info")
        .env("STREAMFLOW_PROVIDER_EMAIL", "logs@provider.test")
        .env("STREAMFLOW_PROVIDER_PASSWORD", "secret-provider-password")
        .env_remove("STREAMFLOW_DATABASE_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let base = loop {
        let line = lines
            .next()
            .expect("streamflow printed its address")
            .unwrap();
        if let Some(rest) = line.strip_prefix("StreamFlow listening on ") {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    let resp = reqwest::Client::new()
        .post(format!("{base}/provider/auth/login"))
        .header("x-request-id", "trace-4242")
        .json(&json!({"email": "logs@provider.test", "password": "secret-provider-password"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // Stop the server, then read everything it logged.
    assert!(
        Process {
            child,
            base,
            stdout: Vec::new()
        }
        .terminate()
        .success()
    );
    let mut logs = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut logs).unwrap();
    let request_lines: Vec<Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.to_string().contains("trace-4242"))
        .collect();
    assert!(
        !request_lines.is_empty(),
        "no JSON log line carries the request id:\n{logs}"
    );
    assert!(
        request_lines
            .iter()
            .any(|v| v.to_string().contains("/provider/auth/login"))
    );
    assert!(
        !logs.contains("secret-provider-password"),
        "a password reached the logs"
    );
}

#[test]
fn template_lint_passes_the_shipped_verticals_and_names_each_problem() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../industry-templates");
    let files: Vec<String> = [
        "hvac",
        "roofing",
        "plumbing",
        "electrical",
        "landscaping",
        "gov-contracting",
    ]
    .iter()
    .map(|id| format!("{root}/{id}.toml"))
    .collect();
    let out = Command::new(env!("CARGO_BIN_EXE_streamflow"))
        .args(["template", "lint"])
        .args(&files)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.matches(": ok").count(), 6, "{stdout}");

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        r#"
id = "bad"
name = "Bad"
version = "1.0.0"
[[record_types]]
id = "job"
name = "Job"
[record_types.fields]
crew = { type = "string" }
[[pipelines]]
record_type = "job"
stages = [{ id = "open", name = "Open" }, { id = "closed", name = "Closed", required = ["signature"] }]
[[automations]]
id = "notify"
name = "Notify"
on = "record.created"
run = { plugin = "job-scheduler", action = "teleport" }
[[plugins]]
id = "job-scheduler"
version = "^0.1"
grants = ["ai"]
"#,
    )
    .unwrap();
    let garbage = dir.path().join("garbage.toml");
    std::fs::write(&garbage, "id = \"x\"\nversion = 1\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_streamflow"))
        .args(["template", "lint"])
        .arg(&bad)
        .arg(&garbage)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    for expected in [
        "stage \"closed\" cannot be reached",
        "\"signature\" is not a field of job",
        "job-scheduler has no action \"teleport\"",
        "the plugin does not request ai",
        "garbage.toml: 1 problem(s)",
    ] {
        assert!(
            stdout.contains(expected),
            "{expected:?} missing from:\n{stdout}"
        );
    }
    assert!(String::from_utf8_lossy(&out.stderr).contains("2 of 2 template(s) have problems"));
}

#[test]
fn score_eval_prints_agreement_and_fails_below_the_bar() {
    let fixtures = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../industry-templates/scoring/plumbing.toml"
    );
    let eval = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_streamflow"))
            .args(["score", "eval", "--fixtures", fixtures])
            .args(extra)
            .output()
            .unwrap()
    };
    let out = eval(&["--template", "plumbing"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.starts_with("plumbing 1.1.0, scored by lead-score-rules"),
        "{stdout}"
    );
    assert!(
        stdout.contains("expected \\ scored    hot  warm  cold"),
        "{stdout}"
    );

    for (extra, expected) in [
        // A bar it cannot reach: the report, then a failure saying what to do.
        (&["--min-agreement", "99.9"][..], "tune the scorer's config"),
        // A fraction where a percentage belongs is refused, saying which.
        (
            &["--min-agreement", "0.9"][..],
            "a percentage from 0 to 100",
        ),
        // Fixtures for another template are refused, naming both.
        (
            &["--template", "hvac"][..],
            "written for template \"plumbing\", not \"hvac\"",
        ),
    ] {
        let out = eval(extra);
        assert!(!out.status.success(), "{extra:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{extra:?}: {stderr}");
    }
}
