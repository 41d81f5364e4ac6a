//! Plugins end to end: the acceptance walk (build with the CLI, publish, approve, install
//! with a config, score leads), hostile plugins, capability grants and tenant isolation,
//! and packages the registry must refuse.

use std::time::Instant;

use reqwest::Method;
use serde_json::{Value, json};

use crate::both_backends;
use crate::harness::{Backend, TestServer, event_kinds, plugin_package};

const SCORER: &str = "plugins/lead-score-rules";
pub(crate) const HOSTILE: &str = "tests/plugins/hostile";

async fn put(srv: &TestServer, path: &str, token: &str, body: Value) -> (u16, Value) {
    srv.call(Method::PUT, path, Some(token), Some(body)).await
}

fn hot_lead() -> Value {
    json!({"name": "Dana Reyes", "email": "dana@example.com", "phone": "555-010-7788",
           "address": "1 Main St", "postal_code": "78701", "source": "referral",
           "budget": 18000, "timeline": "asap", "service": "replacement"})
}

fn cold_lead() -> Value {
    json!({"name": "x", "source": "facebook", "timeline": "just_browsing", "postal_code": "99999"})
}

both_backends! {
    async fn acceptance_walk(srv) {
        let provider = srv.provider_token().await;
        srv.tenant(&provider, "acme").await;
        srv.tenant(&provider, "other").await;
        let owner = srv.user(&provider, "acme", "owner").await;
        let other_owner = srv.user(&provider, "other", "owner").await;

        // A developer publishes the package the CLI built; it starts pending.
        let package = plugin_package(SCORER);
        let dev = srv.developer(&provider, "dev@scorers.test").await;
        let (status, version) = srv.publish(&dev, package.clone()).await;
        assert_eq!(status, 201, "{version}");
        assert_eq!((version["id"].as_str(), version["version"].as_str(), version["status"].as_str()),
                   (Some("lead-score-rules"), Some("0.1.3"), Some("pending")));
        // Versions are immutable, and ids belong to their first publisher.
        let (status, body) = srv.publish(&dev, package.clone()).await;
        assert_eq!((status, body["error"]["code"].as_str()), (409, Some("version_exists")), "{body}");
        let intruder = srv.developer(&provider, "intruder@scorers.test").await;
        assert_eq!(srv.publish(&intruder, package).await.0, 403);
        let (_, mine) = srv.get("/developer/plugins", &dev).await;
        assert_eq!(mine["items"].as_array().unwrap().len(), 1);
        assert_eq!(srv.get("/developer/plugins", &intruder).await.1["items"], json!([]));
        // Not installable until approved; developers cannot approve.
        let install = |body: Value| put(&srv, "/provider/tenants/acme/plugins/lead-score-rules", &provider, body);
        assert_eq!(install(json!({})).await.0, 404);
        assert_eq!(srv.post("/provider/plugins/lead-score-rules/versions/0.1.3/approve", &dev, json!({})).await.0, 401);
        let (_, pending) = srv.get("/provider/plugins?status=pending", &provider).await;
        assert_eq!(pending["items"][0]["id"], "lead-score-rules");
        let (status, approved) = srv.post("/provider/plugins/lead-score-rules/versions/0.1.3/approve", &provider, json!({})).await;
        assert_eq!((status, approved["status"].as_str()), (200, Some("approved")), "{approved}");

        // A bad config is refused with every error's path; nothing is installed.
        let (status, body) = install(json!({"version": "^0.1", "config": {
            "hot": 500, "sources": {"referral": "lots"}, "colour": "red"}})).await;
        assert_eq!(status, 422, "{body}");
        let paths: Vec<&str> = body["error"]["details"]["errors"].as_array().unwrap().iter()
            .map(|e| e["path"].as_str().unwrap()).collect();
        for path in ["/config/hot", "/config/sources/referral", "/config"] {
            assert!(paths.contains(&path), "{path} missing from {body}");
        }
        assert_eq!(srv.get("/api/plugins", &owner).await.1["items"], json!([]));
        // Grants must be capabilities the plugin asked for.
        let (status, body) = install(json!({"grants": ["kv"]})).await;
        assert_eq!(status, 422, "{body}");
        assert_eq!(body["error"]["details"]["errors"][0]["path"], "/grants/0");
        assert_eq!(install(json!({"version": "^2"})).await.0, 422);

        let (status, installed) = install(json!({"version": "^0.1", "config": {
            "postal_prefixes": ["787"], "hot": 65}})).await;
        assert_eq!(status, 201, "{installed}");
        assert_eq!(installed["version"], "0.1.3");
        assert_eq!(installed["config"]["hot"], 65);
        assert_eq!(installed["config"]["warm"], 40, "defaults are filled in: {installed}");
        assert_eq!(installed["health"]["breaker"], "closed");

        // The tenant's leads are scored on create, and the score comes back with the lead.
        let (status, hot) = srv.post("/api/records/lead", &owner, json!({"data": hot_lead(), "stage": "new"})).await;
        assert_eq!(status, 201, "{hot}");
        let score = &hot["score"];
        assert_eq!(score["temperature"], "hot", "{hot}");
        assert!(score["value"].as_u64().unwrap() >= 65, "{score}");
        assert_eq!((score["plugin"].as_str(), score["version"].as_str()), (Some("lead-score-rules"), Some("0.1.3")));
        assert!(score["confidence"].as_f64().unwrap() > 0.9, "{score}");
        assert!(score["reasons"].as_array().unwrap().iter().any(|r| r.as_str().unwrap().contains("referral")), "{score}");
        let (_, cold) = srv.post("/api/records/lead", &owner, json!({"data": cold_lead()})).await;
        assert_eq!(cold["score"]["temperature"], "cold", "{cold}");
        assert!(cold["score"]["value"].as_u64().unwrap() < 40);
        let path = format!("/api/records/lead/{}", hot["id"].as_str().unwrap());
        assert_eq!(srv.get(&path, &owner).await.1["score"], hot["score"], "stored with the lead");
        assert!(event_kinds(&srv, hot["id"].as_str().unwrap()).await.contains(&"lead.scored".to_string()));
        // Contacts are not scored.
        let (_, contact) = srv.post("/api/records/contact", &owner, json!({"data": {"name": "Dana"}})).await;
        assert!(contact.get("score").is_none());

        // Updates are scored again.
        let (status, cooled) = srv.patch(&path, &owner, json!({"data": cold_lead(), "version": 1})).await;
        assert_eq!(status, 200, "{cooled}");
        assert_eq!(cooled["score"]["temperature"], "cold");
        let (status, _) = srv.patch(&path, &owner, json!({"stage": "contacted", "version": 1})).await;
        assert_eq!(status, 409, "a stale version is refused before scoring");

        // A tenant without the plugin gets no score.
        let (_, unscored) = srv.post("/api/records/lead", &other_owner, json!({"data": hot_lead()})).await;
        assert!(unscored["score"].is_null(), "{unscored}");
        assert_eq!(srv.get("/api/plugins", &other_owner).await.1["items"], json!([]));

        // The client sees its plugin; owners and admins may change the config, others not.
        let (_, mine) = srv.get("/api/plugins", &owner).await;
        assert_eq!(mine["items"][0]["plugin_id"], "lead-score-rules");
        assert!(mine["items"][0].get("health").is_none());
        let member = srv.user(&provider, "acme", "member").await;
        assert_eq!(put(&srv, "/api/plugins/lead-score-rules/config", &member, json!({"config": {}})).await.0, 403);
        let (status, body) = put(&srv, "/api/plugins/lead-score-rules/config", &owner, json!({"config": {"warm": "x"}})).await;
        assert_eq!((status, body["error"]["details"]["errors"][0]["path"].as_str()), (422, Some("/config/warm")), "{body}");
        let (status, body) = put(&srv, "/api/plugins/lead-score-rules/config", &owner, json!({"config": {"hot": 99}})).await;
        assert_eq!((status, body["config"]["hot"].as_i64()), (200, Some(99)), "{body}");
        let (_, rescored) = srv.post("/api/records/lead", &owner, json!({"data": hot_lead()})).await;
        assert_eq!(rescored["score"]["temperature"], "warm", "the new threshold applies: {rescored}");
        assert_eq!(put(&srv, "/api/plugins/lead-score-rules/config", &other_owner, json!({"config": {}})).await.0, 404);

        // Rejecting a version stops it for the tenants that had it.
        srv.post("/provider/plugins/lead-score-rules/versions/0.1.3/reject", &provider, json!({})).await;
        let (_, after) = srv.post("/api/records/lead", &owner, json!({"data": hot_lead()})).await;
        assert!(after["score"].is_null(), "{after}");
    }
}

/// Installs the hostile plugin for `slug` with `mode`; returns its installation.
async fn set_mode(srv: &TestServer, provider: &str, slug: &str, mode: &str) -> Value {
    let (status, body) = put(
        srv,
        &format!("/provider/tenants/{slug}/plugins/hostile"),
        provider,
        json!({"config": {"mode": mode}, "grants": []}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn health(srv: &TestServer, provider: &str, slug: &str) -> Value {
    let (_, list) = srv
        .get(&format!("/provider/tenants/{slug}/plugins"), provider)
        .await;
    list["items"][0]["health"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_plugins_fail_alone() {
    let srv = TestServer::start(Backend::Sqlite).await;
    let provider = srv.provider_token().await;
    srv.tenant(&provider, "victim").await;
    srv.tenant(&provider, "bystander").await;
    let owner = srv.user(&provider, "victim", "owner").await;
    let bystander = srv.user(&provider, "bystander", "owner").await;
    srv.install_plugin(
        &provider,
        HOSTILE,
        "victim",
        json!({"config": {"mode": "ok", "api_key": "sk-live-secret"}}),
    )
    .await;

    // Secrets are stored, never shown, and not handed to the plugin's config.
    let (_, ok) = srv
        .post("/api/records/lead", &owner, json!({"data": {"name": "a"}}))
        .await;
    assert_eq!(ok["score"]["reasons"][0], "secret visible: false", "{ok}");
    let (_, listed) = srv.get("/provider/tenants/victim/plugins", &provider).await;
    assert!(!listed.to_string().contains("sk-live-secret"), "{listed}");
    assert_eq!(listed["items"][0]["secrets_set"], json!(["/api_key"]));

    for (mode, kind) in [
        ("loop", "timeout"),
        ("grow", "memory_limit"),
        ("recurse", "stack_overflow"),
        ("big", "output_too_large"),
        ("panic", "panic"),
    ] {
        set_mode(&srv, &provider, "victim", mode).await;
        let started = Instant::now();
        let (status, lead) = srv
            .post("/api/records/lead", &owner, json!({"data": {"name": mode}}))
            .await;
        let elapsed = started.elapsed();
        assert_eq!(status, 201, "{mode}: the lead is saved anyway: {lead}");
        assert!(lead["score"].is_null(), "{mode}: {lead}");
        let h = health(&srv, &provider, "victim").await;
        assert_eq!(h["last_failure"]["kind"], kind, "{mode}: {h}");
        let events = event_kinds(&srv, lead["id"].as_str().unwrap()).await;
        assert!(
            events.contains(&"plugin.failed".to_string()),
            "{mode}: {events:?}"
        );
        if mode == "loop" {
            // The deadline is 400 ms of the plugin's own time; allow for a debug build and a
            // busy machine.
            assert!(
                elapsed.as_millis() < 5_000,
                "an infinite loop held the request for {elapsed:?}"
            );
            eprintln!("infinite loop stopped: {}", h["last_failure"]["message"]);
        }
        if mode == "panic" {
            assert!(
                h["last_failure"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("hostile plugin panics"),
                "{h}"
            );
        }
        // The other tenant is served throughout.
        let (status, _) = srv
            .post(
                "/api/records/lead",
                &bystander,
                json!({"data": {"name": "fine"}}),
            )
            .await;
        assert_eq!(status, 201);
    }

    // Five failures in a row opened the breaker: calls stop until the provider resets it.
    let h = health(&srv, &provider, "victim").await;
    assert_eq!(
        (h["breaker"].as_str(), h["consecutive_failures"].as_u64()),
        (Some("open"), Some(5)),
        "{h}"
    );
    set_mode(&srv, &provider, "victim", "ok").await;
    let (_, paused) = srv
        .post(
            "/api/records/lead",
            &owner,
            json!({"data": {"name": "paused"}}),
        )
        .await;
    assert!(paused["score"].is_null());
    assert_eq!(
        health(&srv, &provider, "victim").await["calls"],
        h["calls"],
        "no call while open"
    );
    let (status, reset) = srv
        .post(
            "/provider/tenants/victim/plugins/hostile/reset",
            &provider,
            json!({}),
        )
        .await;
    assert_eq!(
        (status, reset["health"]["breaker"].as_str()),
        (200, Some("closed")),
        "{reset}"
    );
    let (_, back) = srv
        .post(
            "/api/records/lead",
            &owner,
            json!({"data": {"name": "back"}}),
        )
        .await;
    assert_eq!(back["score"]["value"], 50, "{back}");

    // An action that loops is cut off too, and reported as a plugin failure.
    let (status, body) = srv
        .post("/api/plugins/hostile/actions/loop", &owner, json!({}))
        .await;
    assert_eq!(
        (status, body["error"]["details"]["kind"].as_str()),
        (502, Some("timeout")),
        "{body}"
    );
    assert_eq!(srv.get("/health", &owner).await.0, 200);
    let metrics = srv
        .http
        .get(format!("{}/metrics", srv.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("streamflow_plugin_calls_total"), "metered");
}

both_backends! {
    async fn capabilities_are_granted_audited_and_scoped(srv) {
        let provider = srv.provider_token().await;
        srv.tenant(&provider, "alpha").await;
        srv.tenant(&provider, "beta").await;
        let alpha = srv.user(&provider, "alpha", "owner").await;
        let beta = srv.user(&provider, "beta", "owner").await;
        let alpha_lead = srv.lead(&alpha, json!({"name": "Alpha lead"})).await;
        let beta_lead = srv.lead(&beta, json!({"name": "Beta secret lead"})).await;
        srv.install_plugin(&provider, HOSTILE, "alpha", json!({"grants": ["records:read"]})).await;
        let srv = &srv;
        let action = |token: &str, name: &str, input: Value| {
            let (path, token) = (format!("/api/plugins/hostile/actions/{name}"), token.to_string());
            async move {
                let (status, body) = srv.post(&path, &token, json!({"input": input})).await;
                assert_eq!(status, 200, "{path}: {body}");
                body["output"].clone()
            }
        };

        // Not granted: denied, told why, and audited.
        let out = action(&alpha, "kv-get", json!({"key": "k"})).await;
        assert!(out["host_error"].as_str().unwrap().contains("Denied"), "{out}");
        let out = action(&alpha, "emit", json!({})).await;
        assert!(out["host_error"].as_str().unwrap().contains("events"), "{out}");
        let (_, audit) = srv.get("/provider/tenants/alpha/plugins/hostile/audit", &provider).await;
        let ops: Vec<&str> = audit["items"].as_array().unwrap().iter().map(|a| a["operation"].as_str().unwrap()).collect();
        assert!(ops.contains(&"kv.get") && ops.contains(&"events.emit"), "{audit}");

        // Granted records:read reaches this tenant's records only.
        let out = action(&alpha, "read-record", json!({"id": alpha_lead["id"]})).await;
        assert!(out["ok"].as_str().unwrap().contains("Alpha lead"), "{out}");
        let out = action(&alpha, "read-record", json!({"id": beta_lead["id"]})).await;
        assert_eq!(out, json!({"ok": null}), "another tenant's record is invisible");
        assert_eq!(action(&alpha, "list-records", json!({})).await, json!({"ok": 1}));

        // kv is private to tenant x plugin.
        put(srv, "/provider/tenants/alpha/plugins/hostile", &provider, json!({"grants": ["kv", "records:read"]})).await;
        assert_eq!(action(&alpha, "kv-set", json!({"key": "shared", "value": "alpha-only"})).await, json!({"ok": "stored"}));
        assert_eq!(action(&alpha, "kv-get", json!({"key": "shared"})).await, json!({"ok": "alpha-only"}));
        let (status, _) = put(srv, "/provider/tenants/beta/plugins/hostile", &provider, json!({"grants": ["kv"]})).await;
        assert_eq!(status, 201);
        assert_eq!(action(&beta, "kv-get", json!({"key": "shared"})).await, json!({"ok": null}));
        let out = action(&beta, "kv-get", json!({"key": "x".repeat(600)})).await;
        assert!(out["host_error"].as_str().unwrap().contains("Invalid"), "{out}");

        // Only declared actions run; viewers may not run them; unknown plugins are 404.
        assert_eq!(srv.post("/api/plugins/hostile/actions/steal", &alpha, json!({})).await.0, 404);
        let viewer = srv.user(&provider, "alpha", "viewer").await;
        assert_eq!(srv.post("/api/plugins/hostile/actions/kv-get", &viewer, json!({})).await.0, 403);
        assert_eq!(srv.post("/api/plugins/nope/actions/kv-get", &alpha, json!({})).await.0, 404);
    }
}

pub(crate) fn with_manifest(component: Vec<u8>, manifest: &Value) -> Vec<u8> {
    with_manifest_bytes(component, &serde_json::to_vec(manifest).unwrap())
}

fn with_manifest_bytes(mut component: Vec<u8>, data: &[u8]) -> Vec<u8> {
    fn leb(out: &mut Vec<u8>, mut v: usize) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }
    let name = b"streamflow-manifest";
    let mut body = Vec::new();
    leb(&mut body, name.len());
    body.extend_from_slice(name);
    body.extend_from_slice(data);
    component.push(0);
    leb(&mut component, body.len());
    component.extend_from_slice(&body);
    component
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_packages_are_refused() {
    let srv = TestServer::start_with(Backend::Sqlite, |c| c.plugin_size_limit = 2 * 1024 * 1024)
        .await
        .unwrap();
    let provider = srv.provider_token().await;
    let dev = srv.developer(&provider, "dev@bad.test").await;

    // The CLI refuses to package a component that imports what the host does not offer...
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_streamflow"))
        .args(["plugin", "build"])
        .arg(root.join("tests/plugins/foreign-import"))
        .arg("-o")
        .arg(std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("foreign.plugin.wasm"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("imports evil:host/escape, which this host does not offer"),
        "{stderr}"
    );
    // ...and so does the registry when someone packages it by hand.
    let component =
        std::fs::read(root.join("target/wasm32-wasip2/release/foreign_import_plugin.wasm"))
            .unwrap();
    let manifest = json!({"id": "foreign-import", "name": "x", "version": "0.1.0", "api": "0.1.0", "hooks": ["score-lead"]});
    let (status, body) = srv
        .publish(&dev, with_manifest(component.clone(), &manifest))
        .await;
    assert_eq!(status, 422, "{body}");
    let text = body.to_string();
    assert!(
        text.contains("evil:host/escape")
            && text.contains("does not export streamflow:plugin/scoring@0.1.0"),
        "{text}"
    );

    // A manifest that does not match its component is refused, saying what differs.
    let scorer = plugin_package(SCORER);
    let hostile = plugin_package(HOSTILE);
    let bare = &hostile[..hostile.len() - 1200.min(hostile.len())];
    let (status, body) = srv.publish(&dev, bare.to_vec()).await;
    assert_eq!(status, 422, "a truncated package: {body}");
    let mut lying = manifest.clone();
    lying["hooks"] = json!(["score-lead", "handle-webhook"]);
    lying["api"] = json!("0.9.0");
    let (status, body) = srv.publish(&dev, with_manifest(component, &lying)).await;
    assert_eq!(status, 422);
    assert!(body.to_string().contains("api 0.9.0"), "{body}");
    let (status, body) = srv.publish(&dev, b"\0asm\x01\0\0\0".to_vec()).await;
    assert!(
        status == 422 && body.to_string().contains("core WebAssembly module"),
        "{body}"
    );
    assert_eq!(srv.publish(&dev, b"not wasm".to_vec()).await.0, 422);
    assert_eq!(srv.publish(&dev, Vec::new()).await.0, 422);
    let (status, _) = srv
        .raw(
            Method::POST,
            "/developer/plugins",
            &dev,
            Some("application/json"),
            scorer.clone(),
        )
        .await;
    assert_eq!(status, 415);
    let (status, body) =
        crate::records::headers_only_post(&srv, "/developer/plugins", &dev, 3 * 1024 * 1024).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (413, Some("body_too_large")),
        "{body}"
    );
    // Clients and the provider cannot publish.
    assert_eq!(srv.publish(&provider, scorer.clone()).await.0, 401);
    // Nothing was stored.
    assert_eq!(
        srv.get("/provider/plugins", &provider).await.1["items"],
        json!([])
    );
    assert_eq!(srv.publish(&dev, scorer).await.0, 201);
}

#[test]
fn cli_scaffolds_builds_and_inspects_a_plugin() {
    let dir = tempfile::tempdir().unwrap();
    let crate_dir = dir.path().join("acme-scorer");
    let bin = env!("CARGO_BIN_EXE_streamflow");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(bin)
            .args(args)
            .current_dir(dir.path())
            // Resolve from the crates this workspace already uses, offline.
            .env("CARGO_NET_OFFLINE", "true")
            .env(
                "CARGO_TARGET_DIR",
                std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("scaffold-target"),
            )
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, text) = run(&["plugin", "new", "acme-scorer"]);
    assert!(ok, "{text}");
    let (ok, text) = run(&["plugin", "new", "acme-scorer"]);
    assert!(!ok && text.contains("not empty"), "{text}");
    let (ok, text) = run(&["plugin", "new", "Bad Name"]);
    assert!(!ok && text.contains("not a plugin id"), "{text}");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::copy(root.join("Cargo.lock"), crate_dir.join("Cargo.lock")).unwrap();
    let (ok, text) = run(&["plugin", "build", "acme-scorer", "-o", "acme.plugin.wasm"]);
    assert!(ok, "{text}");
    let (ok, text) = run(&["plugin", "inspect", "acme.plugin.wasm"]);
    assert!(ok, "{text}");
    assert!(
        text.contains("acme-scorer 0.1.0") && text.contains("streamflow:plugin/plugin@0.2.0"),
        "{text}"
    );
    assert!(text.contains("hooks:         score-lead"), "{text}");
    let (ok, text) = run(&["plugin", "inspect", "acme-scorer/Cargo.toml"]);
    assert!(!ok && text.contains("not a usable package"), "{text}");
}

// ---- Uploads: validated on upload, compiled on approval, evicted when unused, limited per
// developer; bundled ids reserved; lists paged; plugin instances shared fairly.

/// `package` with its manifest's id and version replaced (the manifest is the package's
/// last section, as `streamflow plugin build` appends it).
fn repackaged(package: &[u8], id: &str, version: &str) -> Vec<u8> {
    let parsed = streamflow_runtime::Package::parse(package.to_vec()).unwrap();
    let json = serde_json::to_vec(&parsed.manifest).unwrap();
    let section = with_manifest_bytes(Vec::new(), &json);
    assert!(
        package.ends_with(&section),
        "the manifest is the last section"
    );
    let bare = &package[..package.len() - section.len()];
    let mut manifest = parsed.manifest.clone();
    manifest.id = id.to_string();
    manifest.version = semver::Version::parse(version).unwrap();
    streamflow_runtime::Package::assemble(&manifest, bare).unwrap()
}

fn cached_files(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join("plugin-cache"))
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".cwasm"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The registry's view of one version, as the provider lists it.
async fn registry_entry(srv: &TestServer, provider: &str, id: &str, version: &str) -> Value {
    let (status, list) = srv.get("/provider/plugins?limit=200", provider).await;
    assert_eq!(status, 200, "{list}");
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["id"] == id && v["version"] == version)
        .cloned()
        .unwrap_or_else(|| panic!("{id} {version} not listed: {list}"))
}

async fn compile_lifecycle(backend: Backend) {
    // A data directory of its own, so the compiled cache holds only this test's code.
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_path_buf();
    let Some(srv) = TestServer::start_with(backend, |c| c.data_dir = dir.clone()).await else {
        return;
    };
    let provider = srv.provider_token().await;
    srv.tenant(&provider, "acme").await;
    let dev = srv.developer(&provider, "dev@lifecycle.test").await;
    let package = plugin_package(SCORER);

    // An upload is validated, not compiled: nothing in memory, nothing on disk.
    let (status, v1) = srv.publish(&dev, package.clone()).await;
    assert_eq!(
        (status, v1["compiled"].as_str()),
        (201, Some("none")),
        "{v1}"
    );
    let (status, v2) = srv
        .publish(&dev, repackaged(&package, "lead-score-rules", "0.2.0"))
        .await;
    assert_eq!(
        (status, v2["compiled"].as_str()),
        (201, Some("none")),
        "{v2}"
    );
    assert_eq!(cached_files(&dir), Vec::<String>::new());
    assert_eq!(srv.state.plugins.runtime().loaded_count(), 0);

    // Approval compiles; with no installation the code stays on disk only.
    let approve = |v: &'static str| {
        let path = format!("/provider/plugins/lead-score-rules/versions/{v}/approve");
        let (srv, provider) = (&srv, &provider);
        async move { srv.post(&path, provider, json!({})).await }
    };
    let (status, approved) = approve("0.1.3").await;
    assert_eq!(
        (status, approved["compiled"].as_str()),
        (200, Some("on_disk")),
        "{approved}"
    );
    assert_eq!(cached_files(&dir).len(), 1);
    assert_eq!(srv.state.plugins.runtime().loaded_count(), 0);
    let entry = registry_entry(&srv, &provider, "lead-score-rules", "0.2.0").await;
    assert_eq!(
        entry["compiled"], "none",
        "a pending version is still not compiled"
    );

    // Installed, it is in memory.
    let install = |version: &'static str| {
        put(
            &srv,
            "/provider/tenants/acme/plugins/lead-score-rules",
            &provider,
            json!({"version": version}),
        )
    };
    assert_eq!(install("=0.1.3").await.0, 201);
    let entry = registry_entry(&srv, &provider, "lead-score-rules", "0.1.3").await;
    assert_eq!(entry["compiled"], "in_memory", "{entry}");

    // 0.2.0 approved: compiled too; 0.1.3 stays in memory while it is installed.
    assert_eq!(approve("0.2.0").await.0, 200);
    let (old, new) = (
        registry_entry(&srv, &provider, "lead-score-rules", "0.1.3").await,
        registry_entry(&srv, &provider, "lead-score-rules", "0.2.0").await,
    );
    assert_eq!(
        (old["compiled"].as_str(), new["compiled"].as_str()),
        (Some("in_memory"), Some("on_disk"))
    );
    assert_eq!(cached_files(&dir).len(), 2);

    // The last installation moves to 0.2.0: 0.1.3 is used by nobody and is not the newest
    // approved version, so it leaves memory and disk; 0.2.0 comes in.
    assert_eq!(install("=0.2.0").await.0, 200);
    let (old, new) = (
        registry_entry(&srv, &provider, "lead-score-rules", "0.1.3").await,
        registry_entry(&srv, &provider, "lead-score-rules", "0.2.0").await,
    );
    assert_eq!(
        (old["compiled"].as_str(), new["compiled"].as_str()),
        (Some("none"), Some("in_memory"))
    );
    assert_eq!(srv.state.plugins.runtime().loaded_count(), 1);
    assert_eq!(cached_files(&dir).len(), 1);

    // Uninstalled, 0.2.0 leaves memory; as the newest approved version it stays on disk,
    // ready for the next installation.
    assert_eq!(
        srv.delete("/provider/tenants/acme/plugins/lead-score-rules", &provider)
            .await
            .0,
        204
    );
    assert_eq!(srv.state.plugins.runtime().loaded_count(), 0);
    let entry = registry_entry(&srv, &provider, "lead-score-rules", "0.2.0").await;
    assert_eq!(entry["compiled"], "on_disk");

    // Rejecting it deletes its compiled code from disk too.
    let (status, rejected) = srv
        .post(
            "/provider/plugins/lead-score-rules/versions/0.2.0/reject",
            &provider,
            json!({}),
        )
        .await;
    assert_eq!(
        (status, rejected["compiled"].as_str()),
        (200, Some("none")),
        "{rejected}"
    );
    assert_eq!(cached_files(&dir), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_compile_on_approval_and_unused_code_is_evicted_sqlite() {
    compile_lifecycle(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_compile_on_approval_and_unused_code_is_evicted_postgres() {
    compile_lifecycle(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_that_does_not_compile_cannot_be_approved() {
    // The scorer's memory needs more than 1 MiB, which this host's sandbox does not allow:
    // the package is valid, but the host cannot load it.
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_path_buf();
    let srv = TestServer::start_with(Backend::Sqlite, |c| {
        c.data_dir = dir.clone();
        c.plugin_max_limits.memory_mb = 1;
    })
    .await
    .unwrap();
    let provider = srv.provider_token().await;
    let dev = srv.developer(&provider, "dev@nocompile.test").await;
    assert_eq!(srv.publish(&dev, plugin_package(SCORER)).await.0, 201);
    let (status, body) = srv
        .post(
            "/provider/plugins/lead-score-rules/versions/0.1.3/approve",
            &provider,
            json!({}),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("plugin_does_not_compile")),
        "{body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("cannot be approved: it does not compile on this host"),
        "{body}"
    );
    let entry = registry_entry(&srv, &provider, "lead-score-rules", "0.1.3").await;
    assert_eq!(entry["status"], "pending", "the version stays as it was");
    assert_eq!(cached_files(&dir), Vec::<String>::new());
}

async fn rate_limited(backend: Backend) {
    let Some(srv) = TestServer::start_with(backend, |c| c.uploads_per_hour = 2).await else {
        return;
    };
    let provider = srv.provider_token().await;
    let dev = srv.developer(&provider, "dev@rate.test").await;
    let package = plugin_package(SCORER);
    // Four at once: the quota holds under concurrency, exactly two get in.
    let uploads = (1..=4).map(|i| {
        let body = repackaged(&package, "lead-score-rules", &format!("0.{i}.0"));
        srv.publish(&dev, body)
    });
    let results = futures_util::future::join_all(uploads).await;
    let mut statuses: Vec<u16> = results.iter().map(|(s, _)| *s).collect();
    statuses.sort();
    assert_eq!(statuses, vec![201, 201, 429, 429], "{results:?}");
    let refused = results.iter().find(|(s, _)| *s == 429).unwrap();
    assert_eq!(refused.1["error"]["code"], "rate_limited", "{}", refused.1);
    // The answer says when to come back, in the header too.
    let resp = srv
        .http
        .post(format!("{}/developer/plugins", srv.base))
        .bearer_auth(&dev)
        .header("content-type", "application/octet-stream")
        .body(repackaged(&package, "lead-score-rules", "0.9.0"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 429);
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=3600).contains(&retry), "{retry}");
    // Only this developer is limited.
    let other = srv.developer(&provider, "other@rate.test").await;
    assert_eq!(
        srv.publish(&other, repackaged(&package, "other-scorer", "0.1.0"))
            .await
            .0,
        201
    );
    let (_, mine) = srv.get("/developer/plugins", &dev).await;
    assert_eq!(mine["items"].as_array().unwrap().len(), 2, "{mine}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_rate_is_limited_per_developer_sqlite() {
    rate_limited(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_rate_is_limited_per_developer_postgres() {
    rate_limited(Backend::Postgres).await;
}

async fn storage_limited(backend: Backend) {
    let package = plugin_package(SCORER);
    let size = package.len() as u64;
    // Room for one and a half packages.
    let Some(srv) =
        TestServer::start_with(backend, |c| c.developer_storage_bytes = size * 3 / 2).await
    else {
        return;
    };
    let provider = srv.provider_token().await;
    let dev = srv.developer(&provider, "dev@bytes.test").await;
    assert_eq!(srv.publish(&dev, package.clone()).await.0, 201);
    let (status, body) = srv
        .publish(&dev, repackaged(&package, "lead-score-rules", "0.2.0"))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (413, Some("storage_quota_exceeded")),
        "{body}"
    );
    assert_eq!(body["error"]["details"]["used_bytes"], size, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("does not fit")
    );
    // A declared length that cannot fit is refused before the body is read.
    let (status, body) =
        crate::records::headers_only_post(&srv, "/developer/plugins", &dev, size as usize).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (413, Some("storage_quota_exceeded")),
        "{body}"
    );
    // Rejected uploads are not stored, so they took nothing; another developer has their own.
    let other = srv.developer(&provider, "other@bytes.test").await;
    assert_eq!(
        srv.publish(&other, repackaged(&package, "other-scorer", "0.1.0"))
            .await
            .0,
        201
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn developer_storage_is_limited_sqlite() {
    storage_limited(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn developer_storage_is_limited_postgres() {
    storage_limited(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundled_plugin_ids_are_reserved() {
    let srv = TestServer::start_with(Backend::Sqlite, |c| c.bundled_plugins = true)
        .await
        .unwrap();
    let provider = srv.provider_token().await;
    let dev = srv.developer(&provider, "dev@squatter.test").await;
    let package = plugin_package(SCORER);
    let (status, body) = srv.publish(&dev, package.clone()).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("plugin_id_reserved")),
        "{body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("lead-score-rules is reserved"),
        "{body}"
    );
    // Every bundled id, not only this one; other ids are free.
    let (status, body) = srv
        .publish(&dev, repackaged(&package, "job-scheduler", "9.0.0"))
        .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        srv.publish(&dev, repackaged(&package, "my-own-scorer", "0.1.0"))
            .await
            .0,
        201
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn templates_never_install_a_developers_plugin_under_a_bundled_id() {
    // A database from before the ids were reserved: a developer took lead-score-rules.
    let old = TestServer::start(Backend::Sqlite).await;
    let provider = old.provider_token().await;
    let dev = old.developer(&provider, "dev@early.test").await;
    assert_eq!(old.publish(&dev, plugin_package(SCORER)).await.0, 201);
    let url = old.state.config.database_url.clone();
    // The same database served with the bundled plugins: the server starts (the developer
    // keeps the id), but no template resolves it to their plugin.
    let srv = TestServer::start_with(Backend::Sqlite, |c| {
        c.database_url = url.clone();
        c.bundled_plugins = true;
    })
    .await
    .unwrap();
    let provider = srv.provider_token().await;
    // Approved by the provider, even: still not the first-party plugin.
    let (status, approved) = srv
        .post(
            "/provider/plugins/lead-score-rules/versions/0.1.3/approve",
            &provider,
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{approved}");
    srv.tenant(&provider, "summit").await;
    let (status, body) = srv
        .post(
            "/provider/tenants/summit/template",
            &provider,
            json!({"id": "roofing"}),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("template_invalid")),
        "{body}"
    );
    let text = body.to_string();
    assert!(
        text.contains("lead-score-rules") && text.contains("not available here"),
        "{text}"
    );
    let (_, installed) = srv.get("/provider/tenants/summit/plugins", &provider).await;
    assert_eq!(installed["items"], json!([]), "nothing was installed");
}

async fn pages(srv: &TestServer, first: &str, token: &str) -> Vec<Vec<Value>> {
    let mut out = Vec::new();
    let mut path = first.to_string();
    loop {
        let (status, page) = srv.get(&path, token).await;
        assert_eq!(status, 200, "{path}: {page}");
        out.push(page["items"].as_array().unwrap().clone());
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("{first}&cursor={cursor}"),
            None => return out,
        }
        assert!(out.len() < 20, "paging does not end");
    }
}

both_backends! {
    async fn registry_and_installation_lists_are_paged(srv) {
        let provider = srv.provider_token().await;
        let dev = srv.developer(&provider, "dev@pages.test").await;
        let package = plugin_package(SCORER);
        for i in 0..5 {
            let (status, body) = srv
                .publish(&dev, repackaged(&package, "paged-scorer", &format!("0.{i}.0")))
                .await;
            assert_eq!(status, 201, "{body}");
        }
        // The developer's list: newest first, two at a time, every version once.
        let got = pages(&srv, "/developer/plugins?limit=2", &dev).await;
        assert_eq!(got.iter().map(Vec::len).collect::<Vec<_>>(), vec![2, 2, 1]);
        let versions: Vec<String> = got.concat().iter()
            .map(|v| v["version"].as_str().unwrap().to_string()).collect();
        assert_eq!(versions, ["0.4.0", "0.3.0", "0.2.0", "0.1.0", "0.0.0"]);
        // The provider's, filtered by status, pages the same way.
        assert_eq!(srv.post("/provider/plugins/paged-scorer/versions/0.2.0/reject", &provider, json!({})).await.0, 200);
        let got = pages(&srv, "/provider/plugins?status=pending&limit=3", &provider).await;
        assert_eq!(got.iter().map(Vec::len).collect::<Vec<_>>(), vec![3, 1]);
        assert!(got.concat().iter().all(|v| v["status"] == "pending" && v["version"] != "0.2.0"));
        let (_, all) = srv.get("/provider/plugins", &provider).await;
        assert_eq!((all["items"].as_array().unwrap().len(), &all["next_cursor"]), (5, &Value::Null));
        // Bad parameters are named.
        for bad in ["limit=0", "limit=201", "limit=x", "status=bogus"] {
            let (status, body) = srv.get(&format!("/provider/plugins?{bad}"), &provider).await;
            assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_parameter")), "{bad}: {body}");
        }
        for bad in ["nope", "AAAA", "W1tdXQ"] {
            let (status, body) = srv.get(&format!("/developer/plugins?cursor={bad}"), &dev).await;
            assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_cursor")), "{bad}: {body}");
        }

        // A tenant's installations, by id.
        srv.tenant(&provider, "paged").await;
        let owner = srv.user(&provider, "paged", "owner").await;
        for crate_dir in ["plugins/lead-followup", "plugins/job-scheduler"] {
            srv.install_plugin(&provider, crate_dir, "paged", json!({})).await;
        }
        for (first, token) in [("/provider/tenants/paged/plugins?limit=1", &provider), ("/api/plugins?limit=1", &owner)] {
            let got = pages(&srv, first, token).await;
            let ids: Vec<&str> = got.iter().flatten().map(|i| i["plugin_id"].as_str().unwrap()).collect();
            assert_eq!(ids, ["job-scheduler", "lead-followup"], "{first}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tenant_cannot_take_every_plugin_instance() {
    let srv = TestServer::start_with(Backend::Sqlite, |c| c.plugin_tenant_share = 2)
        .await
        .unwrap();
    let provider = srv.provider_token().await;
    srv.tenant(&provider, "greedy").await;
    srv.tenant(&provider, "modest").await;
    let greedy = srv.user(&provider, "greedy", "owner").await;
    let modest = srv.user(&provider, "modest", "owner").await;
    srv.install_plugin(&provider, SCORER, "greedy", json!({}))
        .await;
    let (status, body) = put(
        &srv,
        "/provider/tenants/modest/plugins/lead-score-rules",
        &provider,
        json!({}),
    )
    .await;
    assert_eq!(status, 201, "{body}");

    // The greedy tenant runs as many plugin calls as its share allows...
    let pool = srv.state.plugins.instances();
    assert_eq!(pool.share(), 2);
    let greedy_id = srv
        .state
        .store
        .tenant_by_slug("greedy")
        .await
        .unwrap()
        .unwrap()
        .id;
    let held: Vec<_> = (0..2)
        .map(|_| pool.try_acquire(greedy_id).expect("within the share"))
        .collect();
    // ...so its next call is busy (the lead is saved, unscored), while the other tenant's
    // calls still run.
    let lead = srv.lead(&greedy, hot_lead()).await;
    assert!(lead["score"].is_null(), "{lead}");
    assert!(
        event_kinds(&srv, lead["id"].as_str().unwrap())
            .await
            .contains(&"plugin.failed".to_string())
    );
    let lead = srv.lead(&modest, hot_lead()).await;
    assert_eq!(lead["score"]["plugin"], "lead-score-rules", "{lead}");
    // Busy is the host's capacity, not the plugin's fault: its breaker stays closed.
    let (_, list) = srv.get("/provider/tenants/greedy/plugins", &provider).await;
    assert_eq!(
        list["items"][0]["health"]["consecutive_failures"], 0,
        "{list}"
    );
    drop(held);
    let lead = srv.lead(&greedy, hot_lead()).await;
    assert_eq!(lead["score"]["plugin"], "lead-score-rules", "{lead}");
    assert_eq!(pool.active_tenants(), 0, "idle tenants leave no entry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_uploads_count_against_the_attempts() {
    // One version an hour: three attempts, whatever becomes of them.
    let srv = TestServer::start_with(Backend::Sqlite, |c| c.uploads_per_hour = 1)
        .await
        .unwrap();
    let provider = srv.provider_token().await;
    let dev = srv.developer(&provider, "dev@flood.test").await;
    for _ in 0..3 {
        assert_eq!(srv.publish(&dev, b"not wasm".to_vec()).await.0, 422);
    }
    let (status, body) = srv.publish(&dev, plugin_package(SCORER)).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (429, Some("rate_limited")),
        "{body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("refused ones included"),
        "{body}"
    );
    // Someone else is not held up.
    let other = srv.developer(&provider, "other@flood.test").await;
    assert_eq!(srv.publish(&other, plugin_package(SCORER)).await.0, 201);
}
