//! Industry templates, pipelines and automations: a provider applies a vertical and the
//! client works its pipelines; the dispatcher runs the automations with the bundled plugins.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{Backend, TestServer};

/// A server with the bundled first-party plugins registered, as `serve` starts by default.
async fn bundled(backend: Backend) -> Option<TestServer> {
    TestServer::start_with(backend, |c| c.bundled_plugins = true).await
}

/// Waits until the dispatcher has handled every event in the outbox.
pub async fn settle(srv: &TestServer) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let pending = srv.state.store.pending_events().await.unwrap();
        if pending == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{pending} events still undispatched after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn records(srv: &TestServer, token: &str, record_type: &str) -> Vec<Value> {
    let (status, body) = srv
        .get(&format!("/api/records/{record_type}?limit=200"), token)
        .await;
    assert_eq!(status, 200, "{body}");
    body["items"].as_array().unwrap().clone()
}

async fn create(srv: &TestServer, token: &str, record_type: &str, body: Value) -> Value {
    let (status, created) = srv
        .post(&format!("/api/records/{record_type}"), token, body)
        .await;
    assert_eq!(status, 201, "{created}");
    created
}

async fn move_to(srv: &TestServer, token: &str, record: &Value, body: Value) -> (u16, Value) {
    let mut body = body;
    body["version"] = record["version"].clone();
    srv.patch(
        &format!(
            "/api/records/{}/{}",
            record["type"].as_str().unwrap(),
            record["id"].as_str().unwrap()
        ),
        token,
        body,
    )
    .await
}

macro_rules! bundled_backends {
    (async fn $name:ident($srv:ident) $body:block) => {
        mod $name {
            use super::*;
            async fn story($srv: TestServer) $body

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                story(bundled(Backend::Sqlite).await.unwrap()).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let Some(srv) = bundled(Backend::Postgres).await else { return };
                story(srv).await;
            }
        }
    };
}

bundled_backends! {
    async fn roofing_day_one(srv) {
        let provider = srv.provider_token().await;
        // The catalog offers the six verticals.
        let (status, catalog) = srv.get("/provider/templates", &provider).await;
        assert_eq!(status, 200);
        let ids: Vec<&str> = catalog["items"].as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap()).collect();
        for id in ["electrical", "gov-contracting", "hvac", "landscaping", "plumbing", "roofing"] {
            assert!(ids.contains(&id), "{ids:?}");
        }

        // A tenant made with its template at once.
        let (status, tenant) = srv
            .post("/provider/tenants", &provider, json!({"slug": "summit", "name": "Summit Roofing", "template": "roofing"}))
            .await;
        assert_eq!(status, 201, "{tenant}");
        assert_eq!(tenant["template"]["id"], "roofing");
        assert_eq!(tenant["template"]["version"], "1.1.0");
        let (_, plugins) = srv.get("/provider/tenants/summit/plugins", &provider).await;
        let installed: Vec<&str> = plugins["items"].as_array().unwrap().iter().map(|p| p["plugin_id"].as_str().unwrap()).collect();
        assert_eq!(installed, ["job-scheduler", "lead-followup", "lead-score-rules"]);

        // Applying again changes nothing; another template is refused.
        let (status, again) = srv.post("/provider/tenants/summit/template", &provider, json!({"id": "roofing"})).await;
        assert_eq!((status, &again["changed"]), (200, &json!(false)), "{again}");
        let (status, other) = srv.post("/provider/tenants/summit/template", &provider, json!({"id": "hvac"})).await;
        assert_eq!((status, other["error"]["code"].as_str()), (409, Some("template_conflict")), "{other}");
        let (status, missing) = srv.post("/provider/tenants/summit/template", &provider, json!({"id": "roofing", "version": "9.9.9"})).await;
        assert_eq!(status, 404, "{missing}");
        assert!(missing["error"]["message"].as_str().unwrap().contains("1.1.0"), "{missing}");

        let owner = srv.user(&provider, "summit", "owner").await;

        // The client sees its record types with their schemas, and its pipelines.
        let (_, types) = srv.get("/api/record-types", &owner).await;
        let lead_type = types["items"].as_array().unwrap().iter().find(|t| t["id"] == "lead").unwrap().clone();
        assert_eq!(lead_type["schema"]["properties"]["phone"]["x-pii"], true, "{lead_type}");
        for id in ["inspection", "claim", "estimate", "job", "task"] {
            assert!(types["items"].as_array().unwrap().iter().any(|t| t["id"] == id), "{id} missing: {types}");
        }
        let (status, pipelines) = srv.get("/api/pipelines", &owner).await;
        assert_eq!(status, 200, "{pipelines}");
        let lead_pipeline = pipelines["items"].as_array().unwrap().iter().find(|p| p["record_type"] == "lead").unwrap().clone();
        let stages: Vec<&str> = lead_pipeline["stages"].as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap()).collect();
        assert_eq!(stages, ["new", "contacted", "inspection_scheduled", "converted", "lost"]);
        assert!(lead_pipeline["transitions"].as_array().unwrap().contains(&json!({"from": "new", "to": "contacted"})));

        // Records are validated against the template's schema.
        let (status, bad) = srv.post("/api/records/lead", &owner, json!({"data": {"phone": "555"}})).await;
        assert_eq!(status, 422, "{bad}");
        let (status, bad) = srv.post("/api/records/lead", &owner, json!({"data": {"name": "X", "source": "carrier pigeon"}})).await;
        assert_eq!(status, 422, "{bad}");
        assert_eq!(bad["error"]["details"]["errors"][0]["path"], "/data/source", "{bad}");

        // A new lead starts in the first stage and is scored by the bundled scorer.
        let lead = create(&srv, &owner, "lead", json!({"data": {
            "name": "Gary Holt", "phone": "303-555-0101", "address": "12 Elm St, Boulder CO",
            "source": "referral", "service_type": "storm_damage", "timeline": "asap", "budget": 24000,
        }})).await;
        assert_eq!(lead["stage"], "new");
        assert_eq!(lead["score"]["temperature"], "hot", "{lead}");
        assert_eq!(lead["score"]["plugin"], "lead-score-rules");

        // Moves are checked against the transitions and the required fields.
        let (status, refused) = move_to(&srv, &owner, &lead, json!({"stage": "converted"})).await;
        assert_eq!(status, 422, "{refused}");
        assert_eq!(refused["error"]["code"], "stage_refused");
        assert_eq!(refused["error"]["details"]["allowed"], json!(["contacted", "inspection_scheduled", "lost"]));
        let (status, refused) = move_to(&srv, &owner, &lead, json!({"stage": "inspection_scheduled"})).await;
        assert_eq!(status, 422, "{refused}");
        assert_eq!(refused["error"]["details"]["missing_fields"], json!(["inspection_at"]));
        assert_eq!(refused["error"]["details"]["errors"][0]["path"], "/data/inspection_at");
        let (status, refused) = move_to(&srv, &owner, &lead, json!({"stage": "nowhere"})).await;
        assert_eq!(status, 422, "{refused}");
        let mut data = lead["data"].clone();
        data["inspection_at"] = json!("2026-12-01T15:00:00Z");
                let (status, moved) = move_to(&srv, &owner, &lead, json!({"stage": "inspection_scheduled", "data": data})).await;
        assert_eq!(status, 200, "{moved}");
        // A record keeps what its stage requires: dropping the appointment is refused.
        let mut without = moved["data"].clone();
        without.as_object_mut().unwrap().remove("inspection_at");
        let (status, refused) = move_to(&srv, &owner, &moved, json!({"data": without})).await;
        assert_eq!(status, 422, "{refused}");
        assert_eq!(refused["error"]["details"]["missing_fields"], json!(["inspection_at"]));
        let lead_id = lead["id"].as_str().unwrap();
        let (status, history) = srv.get(&format!("/api/records/lead/{lead_id}/history"), &owner).await;
        assert_eq!(status, 200, "{history}");
        let items = history["items"].as_array().unwrap();
        assert_eq!(items.len(), 2, "{history}");
        assert_eq!((&items[0]["from"], &items[0]["to"]), (&Value::Null, &json!("new")));
        assert_eq!((&items[1]["from"], &items[1]["to"]), (&json!("new"), &json!("inspection_scheduled")));
        assert!(items[1]["by"].as_str().unwrap().starts_with("user:"), "{history}");
        assert!(items[1]["at"].as_str().unwrap().ends_with('Z'));

        // The dispatcher runs the automations: booking the inspection creates it, and the
        // hot lead gets its follow-up tasks once, though it was scored twice.
        settle(&srv).await;
        let inspections = records(&srv, &owner, "inspection").await;
        assert_eq!(inspections.len(), 1, "{inspections:?}");
        assert_eq!(inspections[0]["data"]["lead_id"], lead_id);
        assert_eq!(inspections[0]["data"]["customer_name"], "Gary Holt");
        assert_eq!(inspections[0]["stage"], "scheduled");
        let tasks = records(&srv, &owner, "task").await;
        assert_eq!(tasks.len(), 2, "{tasks:?}");
        assert!(tasks.iter().all(|t| t["data"]["lead_id"] == lead_id && t["stage"] == "open"), "{tasks:?}");

        // Storm damage found on the inspection opens a claim, which gets its filing task.
        let inspection = &inspections[0];
        let mut data = inspection["data"].clone();
        for (k, v) in [("inspector", json!("Ray")), ("roof_type", json!("architectural_shingle")),
                       ("damage_found", json!(true)), ("damage_cause", json!("hail")), ("recommendation", json!("insurance_claim"))] {
            data[k] = v;
        }
        let (status, done) = move_to(&srv, &owner, inspection, json!({"stage": "completed", "data": data})).await;
        assert_eq!(status, 200, "{done}");
        settle(&srv).await;
        let claims = records(&srv, &owner, "claim").await;
        assert_eq!(claims.len(), 1, "{claims:?}");
        assert_eq!(claims[0]["data"]["inspection_id"], inspection["id"]);
        assert_eq!(claims[0]["data"]["lead_id"], lead_id);
        assert_eq!(records(&srv, &owner, "task").await.len(), 3);

        // A signed estimate becomes a scheduled job through the job-scheduler plugin.
        let estimate = create(&srv, &owner, "estimate", json!({"data": {
            "customer_name": "Gary Holt", "address": "12 Elm St", "lead_id": lead_id, "job_type": "roof_replacement",
            "funding": "insurance", "amount": 18500, "description": "Tear off and replace 28 squares",
        }})).await;
        assert_eq!(estimate["stage"], "draft");
        let (status, sent) = move_to(&srv, &owner, &estimate, json!({"stage": "sent"})).await;
        assert_eq!(status, 200, "{sent}");
        let (status, won) = move_to(&srv, &owner, &sent, json!({"stage": "won"})).await;
        assert_eq!(status, 200, "{won}");
        settle(&srv).await;
        let jobs = records(&srv, &owner, "job").await;
        assert_eq!(jobs.len(), 1, "{jobs:?}");
        assert_eq!(jobs[0]["stage"], "scheduled");
        assert_eq!(jobs[0]["data"]["estimate_id"], estimate["id"]);
        assert_eq!(jobs[0]["data"]["amount"], 18500);
        assert!(jobs[0]["data"]["scheduled_for"].as_str().unwrap().len() == 10, "{jobs:?}");

        let (_, runs) = srv.get("/api/automation-runs", &owner).await;
        let run = runs["items"].as_array().unwrap().iter()
            .find(|r| r["target"] == "automation:won-estimate-schedules-job").expect("the run is listed").clone();
        assert_eq!(run["status"], "done", "{run}");
        assert!(run["output"].as_str().unwrap().contains(jobs[0]["id"].as_str().unwrap()), "{run}");
        assert!(runs["items"].as_array().unwrap().iter().any(|r| r["target"] == "plugin:lead-followup"));
        // A cold lead does not wake lead-followup at all: its manifest filters `lead.scored`
        // by the temperatures the tenant follows up, and the host applies the filter.
        let followups = |runs: &Value| runs["items"].as_array().unwrap().iter().filter(|r| r["target"] == "plugin:lead-followup").count();
        let before = followups(&runs);
        let cold = create(&srv, &owner, "lead", json!({"data": {"name": "Just Looking", "source": "other", "timeline": "just_browsing"}})).await;
        assert_eq!(cold["score"]["temperature"], "cold", "{cold}");
        settle(&srv).await;
        let (_, runs) = srv.get("/api/automation-runs", &owner).await;
        assert_eq!(followups(&runs), before, "{runs}");
        assert_eq!(records(&srv, &owner, "task").await.len(), 3, "no follow-up for a cold lead");

        // The pipeline view counts records and sums the value field per stage.
        let (_, pipelines) = srv.get("/api/pipelines", &owner).await;
        let estimates = pipelines["items"].as_array().unwrap().iter().find(|p| p["record_type"] == "estimate").unwrap().clone();
        let won_stage = estimates["stages"].as_array().unwrap().iter().find(|s| s["id"] == "won").unwrap().clone();
        assert_eq!((won_stage["count"].as_i64(), won_stage["value"].as_f64()), (Some(1), Some(18500.0)), "{estimates}");
        assert_eq!(won_stage["required_fields"], json!(["amount"]));

        // Another tenant sees none of it.
        srv.tenant(&provider, "other").await;
        let stranger = srv.user(&provider, "other", "owner").await;
        let (status, _) = srv.get(&format!("/api/records/lead/{lead_id}/history"), &stranger).await;
        assert_eq!(status, 404);
        let (_, none) = srv.get("/api/pipelines", &stranger).await;
        assert_eq!(none["items"], json!([]));
        let (_, none) = srv.get("/api/automation-runs", &stranger).await;
        assert_eq!(none["items"], json!([]));
        // Client tokens cannot apply templates.
        let (status, _) = srv.post("/provider/tenants/other/template", &owner, json!({"id": "roofing"})).await;
        assert_eq!(status, 401);
    }
}

/// Roofing as it was before the crew fragment (1.0.0): no employees, no time entries.
fn roofing_1_0() -> String {
    let text = include_str!("../../industry-templates/roofing.toml");
    let text = text.replacen("version = \"1.1.0\"", "version = \"1.0.0\"", 1);
    assert!(
        text.contains("\ninclude = [\"crew\"]\n"),
        "update this test"
    );
    text.replacen("\ninclude = [\"crew\"]\n", "\n", 1)
}

/// A field line, a version and the task pipeline changed: what a template's next release
/// looks like.
fn roofing_1_2() -> String {
    let text = include_str!("../../industry-templates/roofing.toml");
    let text = text.replacen("version = \"1.1.0\"", "version = \"1.2.0\"", 1);
    let text = text.replacen(
        "notes = { type = \"string\", title = \"Notes\", maxLength = 5000 }",
        "notes = { type = \"string\", title = \"Notes\", maxLength = 5000 }\ngutter_guards = { type = \"boolean\", title = \"Wants gutter guards\" }",
        1,
    );
    let old_tasks = "  { id = \"open\", name = \"Open\", next = [\"done\", \"cancelled\"] },\n  { id = \"done\", name = \"Done\", next = [\"open\"] },\n  { id = \"cancelled\", name = \"Cancelled\", next = [\"open\"] },\n";
    assert!(
        text.contains(old_tasks),
        "the roofing task pipeline changed; update this test"
    );
    text.replacen(
        old_tasks,
        "  { id = \"open\", name = \"Open\", next = [\"done\", \"waiting\"] },\n  { id = \"waiting\", name = \"Waiting on someone\", next = [\"open\", \"done\"] },\n  { id = \"done\", name = \"Done\", next = [\"open\"] },\n",
        1,
    )
}

const BAD_SCHEMA: &str = r#"
id = "bad-schema"
name = "Bad schema"
version = "1.0.0"
[[record_types]]
id = "visit"
name = "Visit"
[record_types.fields]
when = { type = "sometimes" }
"#;

const UNREACHABLE: &str = r#"
id = "unreachable"
name = "Unreachable stage"
version = "1.0.0"
[[record_types]]
id = "visit"
name = "Visit"
[[pipelines]]
record_type = "visit"
stages = [{ id = "planned", name = "Planned", next = ["done"] }, { id = "done", name = "Done" }, { id = "island", name = "Island", next = ["done"] }]
"#;

const CYCLE: &str = r#"
id = "cycle"
name = "Automations that feed each other"
version = "1.0.0"
[[record_types]]
id = "ping"
name = "Ping"
[[record_types]]
id = "pong"
name = "Pong"
[[automations]]
id = "ping-makes-pong"
name = "ping makes pong"
on = "record.created"
record_type = "ping"
run = { builtin = "create-record", record_type = "pong" }
[[automations]]
id = "pong-makes-ping"
name = "pong makes ping"
on = "record.created"
record_type = "pong"
run = { builtin = "create-record", record_type = "ping" }
"#;

const GHOST_PLUGIN: &str = r#"
id = "ghost-plugin"
name = "Names plugins nobody has"
version = "1.0.0"
[[record_types]]
id = "visit"
name = "Visit"
[[automations]]
id = "call-ghost"
name = "Calls a plugin the template does not install"
on = "record.created"
run = { plugin = "ghostwriter", action = "write" }
[[plugins]]
id = "phantom-scheduler"
version = "^1"
"#;

/// Automations that a plugin action makes trigger each other (invisible to the lint): the
/// dispatcher cuts the chain.
const PLUGIN_LOOP: &str = r#"
id = "plugin-loop"
name = "A task that spawns a task"
version = "1.0.0"
[[record_types]]
id = "task"
name = "Task"
[record_types.fields]
title = { type = "string" }
[[automations]]
id = "task-spawns-task"
name = "Every task spawns another"
on = "record.created"
record_type = "task"
run = { plugin = "job-scheduler", action = "schedule-job", params = { record_type = "task", link = "parent_id" } }
[[plugins]]
id = "job-scheduler"
version = "^0.1"
grants = ["records:read", "records:write"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_keep_data_and_bad_templates_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in [
        ("roofing-1.0.0.toml", roofing_1_0()),
        ("roofing-1.2.0.toml", roofing_1_2()),
        ("bad-schema.toml", BAD_SCHEMA.into()),
        ("unreachable.toml", UNREACHABLE.into()),
        ("cycle.toml", CYCLE.into()),
        ("ghost.toml", GHOST_PLUGIN.into()),
        ("plugin-loop.toml", PLUGIN_LOOP.into()),
    ] {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let templates_dir = dir.path().to_path_buf();
    let srv = TestServer::start_with(Backend::Sqlite, |c| {
        c.bundled_plugins = true;
        c.templates_dir = Some(templates_dir);
    })
    .await
    .unwrap();
    let provider = srv.provider_token().await;

    // Each bad template is refused with the reason, and no tenant is left half made.
    for (id, expected) in [
        ("bad-schema", "invalid JSON Schema"),
        ("unreachable", "stage \"island\" cannot be reached"),
        (
            "cycle",
            "would trigger each other forever: ping-makes-pong → pong-makes-ping → ping-makes-pong",
        ),
        (
            "ghost-plugin",
            "\"ghostwriter\" is not in this template's [[plugins]]",
        ),
        ("ghost-plugin", "phantom-scheduler"),
    ] {
        let (status, refused) = srv
            .post(
                "/provider/tenants",
                &provider,
                json!({"slug": "halfmade", "name": "H", "template": id}),
            )
            .await;
        assert_eq!(status, 422, "{refused}");
        assert_eq!(refused["error"]["code"], "template_invalid");
        assert!(
            refused.to_string().contains(&expected.replace('"', "\\\"")),
            "{id}: {refused}"
        );
        let (status, _) = srv.get("/provider/tenants/halfmade", &provider).await;
        assert_eq!(status, 404, "{id} left a tenant behind");
    }
    srv.tenant(&provider, "grower").await;
    let (status, _) = srv
        .post(
            "/provider/tenants/grower/template",
            &provider,
            json!({"id": "cycle"}),
        )
        .await;
    assert_eq!(status, 422);
    let (status, _) = srv
        .get("/provider/tenants/grower/template", &provider)
        .await;
    assert_eq!(status, 404, "a refused template must not be recorded");
    let owner = srv.user(&provider, "grower", "owner").await;
    let (_, types) = srv.get("/api/record-types", &owner).await;
    assert_eq!(
        types["items"].as_array().unwrap().len(),
        3,
        "only the built-in types: {types}"
    );

    // A tenant on 1.0.0 moves to 1.1.0 and gets the crew types, with their pipeline.
    let (status, applied) = srv
        .post(
            "/provider/tenants/grower/template",
            &provider,
            json!({"id": "roofing", "version": "1.0.0"}),
        )
        .await;
    assert_eq!(status, 200, "{applied}");
    let (status, crew) = srv
        .post(
            "/provider/tenants/grower/template",
            &provider,
            json!({"id": "roofing", "version": "1.1.0"}),
        )
        .await;
    assert_eq!(status, 200, "{crew}");
    assert_eq!(
        crew["added"]["record_types"],
        json!(["employee", "time_entry"]),
        "{crew}"
    );
    let (_, pipelines) = srv.get("/api/pipelines", &owner).await;
    assert!(
        pipelines["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["record_type"] == "time_entry"),
        "{pipelines}"
    );

    // Version 1.1.0, some work, then 1.2.0: new things are added, nothing is lost.
    let (status, applied) = srv
        .post(
            "/provider/tenants/grower/template",
            &provider,
            json!({"id": "roofing", "version": "1.1.0"}),
        )
        .await;
    assert_eq!(
        (status, &applied["changed"]),
        (200, &json!(false)),
        "{applied}"
    );
    let keep = create(
        &srv,
        &owner,
        "task",
        json!({"data": {"title": "Order dumpster"}}),
    )
    .await;
    let (status, cancelled) = move_to(&srv, &owner, &keep, json!({"stage": "cancelled"})).await;
    assert_eq!(status, 200, "{cancelled}");
    let (status, upgraded) = srv
        .post(
            "/provider/tenants/grower/template",
            &provider,
            json!({"id": "roofing"}),
        )
        .await;
    assert_eq!(status, 200, "{upgraded}");
    assert_eq!(
        (
            upgraded["version"].as_str(),
            upgraded["previous_version"].as_str()
        ),
        (Some("1.2.0"), Some("1.1.0"))
    );
    assert_eq!(
        upgraded["added"]["fields"],
        json!(["lead.gutter_guards"]),
        "{upgraded}"
    );
    assert_eq!(
        upgraded["added"]["stages"],
        json!(["task.waiting"]),
        "{upgraded}"
    );
    let (_, tenant) = srv.get("/provider/tenants/grower", &provider).await;
    assert_eq!(tenant["template"]["version"], "1.2.0");
    let (_, pipelines) = srv.get("/api/pipelines", &owner).await;
    let tasks = pipelines["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["record_type"] == "task")
        .unwrap()
        .clone();
    let stages: Vec<(&str, bool, i64)> = tasks["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["id"].as_str().unwrap(),
                s["retired"].as_bool().unwrap_or(false),
                s["count"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        stages,
        [
            ("open", false, 0),
            ("waiting", false, 0),
            ("done", false, 0),
            ("cancelled", true, 1)
        ]
    );
    // The record in the retired stage is intact and can move on; nothing can move in.
    let (status, reopened) = move_to(&srv, &owner, &cancelled, json!({"stage": "open"})).await;
    assert_eq!(status, 200, "{reopened}");
    let (status, refused) = move_to(&srv, &owner, &reopened, json!({"stage": "cancelled"})).await;
    assert_eq!(status, 422, "{refused}");
    let lead = create(
        &srv,
        &owner,
        "lead",
        json!({"data": {"name": "Ana", "gutter_guards": true, "roof_age_years": 20}}),
    )
    .await;
    assert_eq!(lead["data"]["gutter_guards"], true);
    // Templates only move forward.
    let (status, down) = srv
        .post(
            "/provider/tenants/grower/template",
            &provider,
            json!({"id": "roofing", "version": "1.1.0"}),
        )
        .await;
    assert_eq!(
        (status, down["error"]["code"].as_str()),
        (409, Some("template_downgrade"))
    );

    // A chain a plugin action keeps feeding is cut at the depth limit and reported.
    srv.post(
        "/provider/tenants",
        &provider,
        json!({"slug": "looper", "name": "L", "template": "plugin-loop"}),
    )
    .await;
    let looper = srv.user(&provider, "looper", "owner").await;
    create(&srv, &looper, "task", json!({"data": {"title": "first"}})).await;
    settle(&srv).await;
    let tasks = records(&srv, &looper, "task").await;
    assert_eq!(
        tasks.len(),
        1 + streamflow::templates::MAX_AUTOMATION_DEPTH as usize,
        "{}",
        tasks.len()
    );
    let stopped: i64 = streamflow::on_pool!(streamflow::store::test_support::pool(&srv.state.store), pool => {
        sqlx::query_scalar("SELECT COUNT(*) FROM events WHERE kind = 'automation.loop_stopped'")
            .fetch_one(pool).await.unwrap()
    });
    assert_eq!(stopped, 1);
    let (_, runs) = srv.get("/api/automation-runs", &looper).await;
    assert!(
        runs["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["status"] == "skipped"),
        "{runs}"
    );
}

/// Every new note runs a plugin action.
const BURST: &str = r#"
id = "burst"
name = "A plugin action per note"
version = "1.0.0"
[[record_types]]
id = "note"
name = "Note"
[record_types.fields]
title = { type = "string" }
[[record_types]]
id = "task"
name = "Task"
[record_types.fields]
title = { type = "string" }
note_id = { type = "string" }
[[automations]]
id = "note-makes-task"
name = "Every note gets a task"
on = "record.created"
record_type = "note"
run = { plugin = "job-scheduler", action = "schedule-job", params = { record_type = "task", link = "note_id" } }
[[plugins]]
id = "job-scheduler"
version = "^0.1"
grants = ["records:read", "records:write"]
"#;

/// A burst of events that run plugin actions is dispatched within the tenant's share of the
/// sandbox: the dispatcher waits for a slot instead of failing `busy` and retrying later
/// (which made a backlog of plugin actions drain at ~70 a second).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_plugin_actions_is_not_refused_as_busy() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("burst.toml"), BURST).unwrap();
    let templates_dir = dir.path().to_path_buf();
    let srv = TestServer::start_with(Backend::Sqlite, |c| {
        c.bundled_plugins = true;
        c.templates_dir = Some(templates_dir);
        // A tenant's share is 2 instances.
        c.plugin_instances = 8;
    })
    .await
    .unwrap();
    let provider = srv.provider_token().await;
    let (status, tenant) = srv
        .post(
            "/provider/tenants",
            &provider,
            json!({"slug": "bursty", "name": "Bursty", "template": "burst"}),
        )
        .await;
    assert_eq!(status, 201, "{tenant}");
    let owner = srv.user(&provider, "bursty", "owner").await;
    let notes = 24;
    let creates = (0..notes).map(|n| {
        let (srv, owner) = (&srv, &owner);
        async move {
            create(
                srv,
                owner,
                "note",
                json!({"data": {"title": format!("Note {n}")}}),
            )
            .await
        }
    });
    futures_util::future::join_all(creates).await;
    settle(&srv).await;
    assert_eq!(records(&srv, &owner, "task").await.len(), notes);
    let (_, runs) = srv.get("/api/automation-runs", &owner).await;
    let runs: Vec<&Value> = runs["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["target"] == "automation:note-makes-task")
        .collect();
    assert_eq!(runs.len(), notes);
    assert!(
        runs.iter()
            .all(|r| r["status"] == "done" && r["attempts"] == 1),
        "every run done at its first attempt: {runs:?}"
    );
}
