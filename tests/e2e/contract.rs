//! Contract versions side by side: a package built against the frozen 0.1.0 (with
//! wit-bindgen, no SDK) keeps running, unrebuilt, on the same host as 0.2.0 packages.

use serde_json::json;

use crate::harness::{Backend, TestServer, plugin_package};

const LEGACY: &str = "tests/plugins/legacy-v0-1";
const HOSTILE: &str = "tests/plugins/hostile";

#[tokio::test]
async fn a_0_1_0_plugin_runs_beside_0_2_0_plugins() {
    let srv = TestServer::start(Backend::Sqlite).await;
    let provider = srv.provider_token().await;
    srv.tenant(&provider, "old").await;
    srv.tenant(&provider, "new").await;
    let old = srv.user(&provider, "old", "owner").await;
    let new = srv.user(&provider, "new", "owner").await;

    // The packages say which contract each was built against.
    let legacy = streamflow_runtime::Package::parse(plugin_package(LEGACY)).unwrap();
    assert_eq!(legacy.info.world(), "streamflow:plugin/plugin@0.1.0");
    let current = streamflow_runtime::Package::parse(plugin_package(HOSTILE)).unwrap();
    assert_eq!(current.info.world(), "streamflow:plugin/plugin@0.2.0");

    srv.install_plugin(&provider, LEGACY, "old", json!({"grants": ["kv"]}))
        .await;
    srv.install_plugin(
        &provider,
        HOSTILE,
        "new",
        json!({"grants": ["kv"], "config": {"mode": "ok"}}),
    )
    .await;

    // Each tenant's lead is scored by its own plugin, on one host.
    let lead = srv.lead(&old, json!({"name": "Old contract"})).await;
    assert_eq!(
        (
            lead["score"]["plugin"].as_str(),
            lead["score"]["value"].as_u64()
        ),
        (Some("legacy-v0-1"), Some(42)),
        "{lead}"
    );
    assert_eq!(lead["score"]["temperature"], "warm");
    let lead = srv.lead(&new, json!({"name": "New contract"})).await;
    assert_eq!(lead["score"]["plugin"], "hostile", "{lead}");

    // Host calls work through the 0.1.0 bindings: kv written and read back.
    let (status, out) = srv
        .post(
            "/api/plugins/legacy-v0-1/actions/remember",
            &old,
            json!({"input": {"note": "kept"}}),
        )
        .await;
    assert_eq!(
        (status, &out["output"]),
        (200, &json!({"stored": true})),
        "{out}"
    );
    let (status, out) = srv
        .post(
            "/api/plugins/legacy-v0-1/actions/recall",
            &old,
            json!({"input": {}}),
        )
        .await;
    assert_eq!(
        (status, &out["output"]),
        (200, &json!({"note": "kept"})),
        "{out}"
    );
    let (status, out) = srv
        .post(
            "/api/plugins/hostile/actions/kv-set",
            &new,
            json!({"input": {"key": "k", "value": "v"}}),
        )
        .await;
    assert_eq!(status, 200, "{out}");
}
