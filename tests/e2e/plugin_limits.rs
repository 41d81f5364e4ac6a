//! What plugins may see and how much they may cost: secrets wherever the config schema
//! places them, events filtered by grants, the budget of an event chain, the kv quota and
//! the aggregated audit of denied calls. Driven by the hostile test plugin.

use reqwest::Method;
use serde_json::{Value, json};
use streamflow::config::Config;

use crate::harness::{Backend, TestServer, plugin_package};
use crate::plugins::{HOSTILE, with_manifest};

/// Runs `story` against SQLite and, when available, PostgreSQL, each configured by `tweak`.
macro_rules! each_backend {
    ($name:ident, $tweak:expr, $story:ident) => {
        mod $name {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let srv = TestServer::start_with(Backend::Sqlite, $tweak)
                    .await
                    .unwrap();
                $story(srv).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let Some(srv) = TestServer::start_with(Backend::Postgres, $tweak).await else {
                    return;
                };
                $story(srv).await;
            }
        }
    };
}

fn defaults(_: &mut Config) {}

async fn put(srv: &TestServer, path: &str, token: &str, body: Value) -> (u16, Value) {
    srv.call(Method::PUT, path, Some(token), Some(body)).await
}

/// Runs one of the hostile plugin's actions as `token`; its output.
async fn action(srv: &TestServer, token: &str, name: &str, input: Value) -> Value {
    let path = format!("/api/plugins/hostile/actions/{name}");
    let (status, body) = srv.post(&path, token, json!({ "input": input })).await;
    assert_eq!(status, 200, "{path}: {body}");
    body["output"].clone()
}

async fn tenant_id(srv: &TestServer, slug: &str) -> uuid::Uuid {
    streamflow::on_pool!(streamflow::store::test_support::pool(&srv.state.store), pool => {
        sqlx::query_scalar::<_, uuid::Uuid>("SELECT id FROM tenants WHERE slug = $1")
            .bind(slug)
            .fetch_one(pool)
            .await
            .unwrap()
    })
}

/// Waits until the dispatcher has nothing left for `tenant` (polling; no assertion on time).
async fn drained(srv: &TestServer, tenant: uuid::Uuid) {
    for _ in 0..1200 {
        let pending: i64 = streamflow::on_pool!(streamflow::store::test_support::pool(&srv.state.store), pool => {
            sqlx::query_scalar("SELECT COUNT(*) FROM events WHERE tenant_id = $1 AND dispatched_at IS NULL")
                .bind(tenant)
                .fetch_one(pool)
                .await
                .unwrap()
        });
        if pending == 0 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the dispatcher did not finish the tenant's events");
}

async fn count(srv: &TestServer, sql: &'static str, tenant: uuid::Uuid) -> i64 {
    streamflow::on_pool!(streamflow::store::test_support::pool(&srv.state.store), pool => {
        sqlx::query_scalar::<_, i64>(sql).bind(tenant).fetch_one(pool).await.unwrap()
    })
}

each_backend!(
    nested_secrets_are_sealed_and_never_echoed,
    defaults,
    nested_secrets
);

async fn nested_secrets(srv: TestServer) {
    let provider = srv.provider_token().await;
    srv.tenant(&provider, "acme").await;
    let owner = srv.user(&provider, "acme", "owner").await;
    let installed = srv
        .install_plugin(
            &provider,
            HOSTILE,
            "acme",
            json!({"config": {"api_key": "sk-live-top", "creds": {"token": "tok-nested-ref-secret"}}}),
        )
        .await;
    // The secret under nested properties and a $ref is found, sealed and never shown.
    assert_eq!(
        installed["secrets_set"],
        json!(["/api_key", "/creds/token"]),
        "{installed}"
    );
    assert!(
        !installed.to_string().contains("tok-nested-ref-secret"),
        "{installed}"
    );
    let (_, listed) = srv.get("/provider/tenants/acme/plugins", &provider).await;
    assert!(
        !listed.to_string().contains("tok-nested-ref-secret"),
        "{listed}"
    );
    let (_, mine) = srv.get("/api/plugins", &owner).await;
    assert!(
        !mine.to_string().contains("tok-nested-ref-secret"),
        "{mine}"
    );
    // Not in the stored plain config either, and not handed to config.get.
    let stored: String = streamflow::on_pool!(streamflow::store::test_support::pool(&srv.state.store), pool => {
        sqlx::query_scalar::<_, sqlx::types::Json<Value>>(
            "SELECT config FROM plugin_installations WHERE plugin_id = 'hostile'",
        )
        .fetch_one(pool)
        .await
        .unwrap()
        .0
        .to_string()
    });
    assert!(!stored.contains("tok-nested-ref-secret"), "{stored}");
    let seen = action(&srv, &owner, "config", json!({})).await;
    assert!(
        seen.get("creds").is_none_or(|c| c.get("token").is_none()),
        "{seen}"
    );
    assert!(!seen.to_string().contains("tok-nested"), "{seen}");

    // A secret too short for its schema is refused without being echoed, however short.
    let (status, body) = put(
        &srv,
        "/provider/tenants/acme/plugins/hostile",
        &provider,
        json!({"config": {"creds": {"token": "zq"}}}),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    let text = body.to_string();
    assert!(text.contains("/config/creds/token"), "{text}");
    assert!(!text.contains("zq"), "the secret is quoted: {text}");
    // The kept secret still works, untouched.
    let (_, listed) = srv.get("/provider/tenants/acme/plugins", &provider).await;
    assert_eq!(
        listed["items"][0]["secrets_set"],
        json!(["/api_key", "/creds/token"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misplaced_secrets_and_foreign_subscriptions_are_refused_at_upload() {
    let srv = TestServer::start(Backend::Sqlite).await;
    let provider = srv.provider_token().await;
    let dev = srv.developer(&provider, "dev@refused.test").await;
    plugin_package(HOSTILE); // builds the component
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let component =
        std::fs::read(root.join("target/wasm32-wasip2/release/hostile_plugin.wasm")).unwrap();
    let manifest = |extra: Value| {
        let mut m = json!({
            "id": "copycat", "name": "Copycat", "version": "0.1.0", "api": "0.2.0",
            "hooks": ["score-lead", "run-action", "on-event"],
            "capabilities": ["kv", "records:read", "events"],
            "actions": ["seen"],
            "subscriptions": ["record.deleted"]
        });
        for (k, v) in extra.as_object().unwrap() {
            m[k] = v.clone();
        }
        m
    };
    let (status, body) = srv
        .publish(
            &dev,
            with_manifest(
                component.clone(),
                &manifest(json!({"subscriptions": ["plugin.lead-followup.followup"]})),
            ),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body.to_string()
            .contains("subscriptions: \\\"plugin.lead-followup.followup\\\"")
            && body.to_string().contains("not another plugin's"),
        "{body}"
    );
    let (status, body) = srv
        .publish(
            &dev,
            with_manifest(
                component.clone(),
                &manifest(json!({"config": {"schema": {
                    "type": "object",
                    "properties": {"keys": {"type": "array", "items": {"type": "string", "writeOnly": true}}}
                }}})),
            ),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body.to_string()
            .contains("config.schema/properties/keys/items: \\\"writeOnly\\\" under \\\"items\\\""),
        "{body}"
    );
    let (status, body) = srv
        .publish(
            &dev,
            with_manifest(
                component,
                &manifest(json!({"config": {"schema": {
                    "type": "object",
                    "properties": {"auth": {"oneOf": [{"type": "string", "writeOnly": true}, {"type": "null"}]}}
                }}})),
            ),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body.to_string()
            .contains("config.schema/properties/auth/oneOf/0"),
        "{body}"
    );
    assert_eq!(
        srv.get("/provider/plugins", &provider).await.1["items"],
        json!([])
    );
}

each_backend!(events_carry_only_what_grants_allow, defaults, event_grants);

/// Deletes a new lead and returns what the hostile plugin was handed for it.
async fn deleted(srv: &TestServer, owner: &str, tenant: uuid::Uuid) -> Value {
    let lead = srv
        .lead(
            owner,
            json!({"name": "Ada Private", "contact": {"phone": "555-0199"}, "budget": 5}),
        )
        .await;
    let id = lead["id"].as_str().unwrap().to_string();
    let (status, body) = srv.delete(&format!("/api/records/lead/{id}"), owner).await;
    assert_eq!(status, 204, "{body}");
    drained(srv, tenant).await;
    let seen = action(srv, owner, "seen", json!({"kind": "record.deleted"})).await;
    assert_eq!(seen["ok"]["record_id"], id, "{seen}");
    seen["ok"].clone()
}

async fn event_grants(srv: TestServer) {
    let provider = srv.provider_token().await;
    srv.tenant(&provider, "acme").await;
    let tenant = tenant_id(&srv, "acme").await;
    let owner = srv.user(&provider, "acme", "owner").await;
    let (status, body) = put(
        &srv,
        "/api/record-types/lead",
        &owner,
        json!({"name": "Lead", "schema": {"type": "object", "properties": {
            "name": {"type": "string", "x-pii": true},
            "contact": {"type": "object", "properties": {"phone": {"type": "string", "x-pii": true}}},
            "budget": {"type": "number"}
        }}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    srv.install_plugin(&provider, HOSTILE, "acme", json!({"grants": ["kv"]}))
        .await;
    let path = "/provider/tenants/acme/plugins/hostile";

    // No records:read: which record, of what type, in which stage; no data.
    let seen = deleted(&srv, &owner, tenant).await;
    assert_eq!(seen["record_type"], "lead");
    assert_eq!(seen["payload"]["stage"], "new", "{seen}");
    assert!(seen["payload"].get("data").is_none(), "{seen}");
    // The payload, not the whole event: a record id may hold "555" by chance.
    let payload = seen["payload"].to_string();
    assert!(
        !payload.contains("Ada") && !payload.contains("555"),
        "{seen}"
    );
    // records:read without the PII grant: the data, less the fields marked x-pii.
    put(
        &srv,
        path,
        &provider,
        json!({"grants": ["kv", "records:read"]}),
    )
    .await;
    srv.state.plugins.forget();
    let seen = deleted(&srv, &owner, tenant).await;
    assert_eq!(
        seen["payload"]["data"],
        json!({"budget": 5, "contact": {}}),
        "{seen}"
    );
    // The records capability hides them the same way.
    let kept = srv
        .lead(&owner, json!({"name": "Bea Private", "budget": 7}))
        .await;
    let read = action(&srv, &owner, "read-record", json!({"id": kept["id"]})).await;
    assert_eq!(
        serde_json::from_str::<Value>(read["ok"].as_str().unwrap()).unwrap(),
        json!({"budget": 7}),
        "{read}"
    );
    // With records:read-pii: everything.
    put(
        &srv,
        path,
        &provider,
        json!({"grants": ["kv", "records:read", "records:read-pii"]}),
    )
    .await;
    srv.state.plugins.forget();
    let seen = deleted(&srv, &owner, tenant).await;
    assert_eq!(seen["payload"]["data"]["name"], "Ada Private", "{seen}");
    assert_eq!(
        seen["payload"]["data"]["contact"]["phone"], "555-0199",
        "{seen}"
    );
}

const WATCH: &str = r#"
id = "watch"
name = "Watch"
version = "1.0.0"
description = "Hands every new lead to the hostile plugin's keep-input action."

[[record_types]]
id = "lead"
name = "Lead"
[record_types.fields]
name = { type = "string", pii = true }
budget = { type = "number" }

[[automations]]
id = "keep"
name = "Keep the input"
on = "record.created"
record_type = "lead"
run = { plugin = "hostile", action = "keep-input", params = { why = "test" } }

[[plugins]]
id = "hostile"
version = "^0.1"
grants = ["kv", "records:read"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn automation_action_inputs_carry_only_what_grants_allow() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("watch.toml"), WATCH).unwrap();
    let templates_dir = dir.path().to_path_buf();
    let srv = TestServer::start_with(Backend::Sqlite, |c| c.templates_dir = Some(templates_dir))
        .await
        .unwrap();
    let provider = srv.provider_token().await;
    let dev = srv.developer(&provider, "dev@watch.test").await;
    assert_eq!(srv.publish(&dev, plugin_package(HOSTILE)).await.0, 201);
    let (status, body) = srv
        .post(
            "/provider/plugins/hostile/versions/0.1.0/approve",
            &provider,
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = srv
        .post(
            "/provider/tenants",
            &provider,
            json!({"slug": "acme", "name": "Acme", "template": "watch"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let tenant = tenant_id(&srv, "acme").await;
    let owner = srv.user(&provider, "acme", "owner").await;
    // records:read, no PII grant: the record without its personal fields.
    let input = run_keep(&srv, &owner, tenant).await;
    assert_eq!(input["record"]["data"], json!({"budget": 5}), "{input}");
    assert_eq!(input["params"], json!({"why": "test"}), "{input}");
    assert_eq!(input["event"]["kind"], "record.created", "{input}");
    // No records:read: which record and its stage, no data.
    let (status, body) = put(
        &srv,
        "/provider/tenants/acme/plugins/hostile",
        &provider,
        json!({"grants": ["kv"]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let input = run_keep(&srv, &owner, tenant).await;
    assert!(input["record"].get("data").is_none(), "{input}");
    assert!(input["record"]["id"].is_string(), "{input}");
    assert!(!input.to_string().contains("Ada"), "{input}");
}

/// Creates a lead, lets the automation run, and returns the input its action was handed.
async fn run_keep(srv: &TestServer, owner: &str, tenant: uuid::Uuid) -> Value {
    let lead = srv
        .lead(owner, json!({"name": "Ada Private", "budget": 5}))
        .await;
    drained(srv, tenant).await;
    let seen = action(srv, owner, "seen", json!({"kind": "action"})).await;
    assert_eq!(seen["ok"]["record"]["id"], lead["id"], "{seen}");
    seen["ok"].clone()
}

each_backend!(
    a_self_subscribing_plugin_is_stopped_by_its_budget,
    |c: &mut Config| c.automation_budget = 10,
    budget
);

async fn budget(srv: TestServer) {
    let provider = srv.provider_token().await;
    srv.tenant(&provider, "acme").await;
    let tenant = tenant_id(&srv, "acme").await;
    let owner = srv.user(&provider, "acme", "owner").await;
    srv.install_plugin(&provider, HOSTILE, "acme", json!({"grants": ["events"]}))
        .await;
    // Two pings; each delivery answers with three (3^depth without a budget).
    assert_eq!(
        action(&srv, &owner, "ping", json!({})).await,
        json!({"ok": "pinged"})
    );
    drained(&srv, tenant).await;
    let pings = count(
        &srv,
        "SELECT COUNT(*) FROM events WHERE tenant_id = $1 AND kind = 'plugin.hostile.ping'",
        tenant,
    )
    .await;
    let delivered = count(
        &srv,
        "SELECT COUNT(*) FROM event_deliveries WHERE tenant_id = $1 AND target = 'plugin:hostile' AND status = 'done'",
        tenant,
    )
    .await;
    let stopped = count(
        &srv,
        "SELECT COUNT(*) FROM events WHERE tenant_id = $1 AND kind = 'automation.budget_exhausted'",
        tenant,
    )
    .await;
    // The action's two pings (one call, so one chain) are delivered, then the budget's 10:
    // 12 deliveries of 3 pings each.
    assert_eq!(delivered, 12);
    assert_eq!(pings, 2 + 3 * 12);
    assert_eq!(stopped, 1, "reported once per chain");
    let skipped = count(
        &srv,
        "SELECT COUNT(*) FROM event_deliveries WHERE tenant_id = $1 AND status = 'skipped'",
        tenant,
    )
    .await;
    assert_eq!(
        skipped,
        pings - delivered,
        "every ping past the budget is skipped"
    );
    let roots = count(
        &srv,
        "SELECT COUNT(DISTINCT root_id) FROM events WHERE tenant_id = $1 AND root_id IS NOT NULL",
        tenant,
    )
    .await;
    assert_eq!(roots, 1, "the whole chain carries one root");
}

each_backend!(
    kv_quota_holds_under_concurrent_writers,
    |c: &mut Config| c.plugin_kv_bytes = 1000,
    kv_quota
);

async fn kv_quota(srv: TestServer) {
    let provider = srv.provider_token().await;
    srv.tenant(&provider, "acme").await;
    let tenant = tenant_id(&srv, "acme").await;
    let owner = srv.user(&provider, "acme", "owner").await;
    srv.install_plugin(&provider, HOSTILE, "acme", json!({"grants": ["kv"]}))
        .await;
    // 20 writers at once, 303 bytes each (key and value) against 1000: three fit.
    let value = "v".repeat(300);
    let writes = (0..20).map(|i| {
        let (srv, owner, value) = (&srv, owner.clone(), value.clone());
        async move {
            action(
                srv,
                &owner,
                "kv-set",
                json!({"key": format!("k{i:02}"), "value": value}),
            )
            .await
        }
    });
    let outcomes = futures_util::future::join_all(writes).await;
    let stored = outcomes.iter().filter(|o| o["ok"] == "stored").count();
    let refused: Vec<&Value> = outcomes.iter().filter(|o| o["ok"] != "stored").collect();
    assert_eq!(stored, 3, "{outcomes:?}");
    assert!(
        refused
            .iter()
            .all(|o| o["host_error"].as_str().unwrap().contains("kv quota")),
        "{refused:?}"
    );
    assert_eq!(kv_usage(&srv, tenant).await, (909, 3));
    // What is stored matches the usage row.
    let bytes = count(
        &srv,
        "SELECT CAST(COALESCE(SUM(length(value)), 0) AS BIGINT) FROM plugin_kv WHERE tenant_id = $1",
        tenant,
    )
    .await;
    assert_eq!(bytes, 900);
    // Overwriting a stored key with a smaller value always works, and frees room.
    let first = outcomes.iter().position(|o| o["ok"] == "stored").unwrap();
    let out = action(
        &srv,
        &owner,
        "kv-set",
        json!({"key": format!("k{first:02}"), "value": "small"}),
    )
    .await;
    assert_eq!(out["ok"], "stored", "{out}");
    assert_eq!(kv_usage(&srv, tenant).await, (606 + 3 + 5, 3));
}

async fn kv_usage(srv: &TestServer, tenant: uuid::Uuid) -> (i64, i64) {
    streamflow::on_pool!(streamflow::store::test_support::pool(&srv.state.store), pool => {
        sqlx::query_as::<_, (i64, i64)>(
            "SELECT bytes, key_count FROM plugin_kv_usage WHERE tenant_id = $1 AND plugin_id = 'hostile'",
        )
        .bind(tenant)
        .fetch_one(pool)
        .await
        .unwrap()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_calls_are_counted_not_written_one_by_one() {
    let srv = TestServer::start(Backend::Sqlite).await;
    let provider = srv.provider_token().await;
    srv.tenant(&provider, "acme").await;
    let owner = srv.user(&provider, "acme", "owner").await;
    srv.install_plugin(&provider, HOSTILE, "acme", json!({"grants": []}))
        .await;
    assert_eq!(
        action(&srv, &owner, "deny", json!({"n": 1000})).await,
        json!({"ok": 1000})
    );
    let (_, audit) = srv
        .get("/provider/tenants/acme/plugins/hostile/audit", &provider)
        .await;
    let items = audit["items"].as_array().unwrap();
    // One entry per minute: two at most if the calls straddled a minute boundary.
    assert!(!items.is_empty() && items.len() <= 2, "{audit}");
    assert!(items.iter().all(|i| i["operation"] == "kv.get"), "{audit}");
    let calls: i64 = items.iter().map(|i| i["calls"].as_i64().unwrap()).sum();
    assert_eq!(calls, 1000, "{audit}");
}
