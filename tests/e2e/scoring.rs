//! Every lead is scored by the tenant's scorer, whoever writes it: a person over HTTP, an
//! automation's `create-record`, a plugin's action. The one exception: what the scorer
//! itself writes while it scores is not scored again.

use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{Backend, TestServer, event_kinds};

const HOSTILE: &str = "tests/plugins/hostile";

/// A referral becomes a lead through the built-in `create-record`; the template's scorer is
/// the bundled rules scorer.
const REFERRALS: &str = r#"
id = "referrals"
name = "Referrals"
version = "1.0.0"
[[record_types]]
id = "referral"
name = "Referral"
[record_types.fields]
name = { type = "string" }
email = { type = "string" }
[[automations]]
id = "referral-makes-lead"
name = "A referral becomes a lead"
on = "record.created"
record_type = "referral"
[automations.run]
builtin = "create-record"
record_type = "lead"
copy = { name = "name", email = "email" }
data = { source = "referral" }
[[plugins]]
id = "lead-score-rules"
version = "^0.1"
grants = []
"#;

/// The tenant's leads, waiting up to 20 s for there to be `count`.
async fn leads(srv: &TestServer, token: &str, count: usize) -> Vec<Value> {
    for _ in 0..200 {
        let (status, page) = srv.get("/api/records/lead", token).await;
        assert_eq!(status, 200, "{page}");
        let items = page["items"].as_array().unwrap().clone();
        if items.len() >= count {
            return items;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the tenant never had {count} leads");
}

async fn automation_leads_are_scored(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("referrals.toml"), REFERRALS).unwrap();
    let templates_dir = dir.path().to_path_buf();
    let Some(srv) = TestServer::start_with(backend, |c| {
        c.bundled_plugins = true;
        c.templates_dir = Some(templates_dir);
    })
    .await
    else {
        return;
    };
    let provider = srv.provider_token().await;
    let (status, tenant) = srv
        .post(
            "/provider/tenants",
            &provider,
            json!({"slug": "refer", "name": "Referrals Inc", "template": "referrals"}),
        )
        .await;
    assert_eq!(status, 201, "{tenant}");
    let owner = srv.user(&provider, "refer", "owner").await;
    let (status, referral) = srv
        .post(
            "/api/records/referral",
            &owner,
            json!({"data": {"name": "Ada Lovelace", "email": "ada@example.test"}}),
        )
        .await;
    assert_eq!(status, 201, "{referral}");

    let lead = leads(&srv, &owner, 1).await.remove(0);
    assert_eq!(lead["data"]["name"], "Ada Lovelace", "{lead}");
    assert_eq!(lead["score"]["plugin"], "lead-score-rules", "{lead}");
    assert!(lead["score"]["value"].is_number(), "{lead}");
    let kinds = event_kinds(&srv, lead["id"].as_str().unwrap()).await;
    assert!(kinds.contains(&"lead.scored".to_string()), "{kinds:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leads_made_by_automations_are_scored_sqlite() {
    automation_leads_are_scored(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leads_made_by_automations_are_scored_postgres() {
    automation_leads_are_scored(Backend::Postgres).await;
}

crate::both_backends! {
    /// A plugin action's lead is scored; the lead a scorer writes while scoring is not.
    async fn leads_made_by_plugins_are_scored(srv) {
        let provider = srv.provider_token().await;
        srv.tenant(&provider, "plug").await;
        let owner = srv.user(&provider, "plug", "owner").await;
        srv.install_plugin(
            &provider,
            HOSTILE,
            "plug",
            json!({"grants": ["records:read", "records:write"], "config": {"mode": "ok"}}),
        )
        .await;

        let (status, out) = srv
            .post("/api/plugins/hostile/actions/create-lead", &owner, json!({"input": {"name": "From a plugin"}}))
            .await;
        assert_eq!(status, 200, "{out}");
        let id = out["output"]["ok"]["id"].as_str().unwrap_or_else(|| panic!("{out}")).to_string();
        let (status, lead) = srv.get(&format!("/api/records/lead/{id}"), &owner).await;
        assert_eq!(status, 200, "{lead}");
        assert_eq!(lead["score"]["plugin"], "hostile", "{lead}");
        assert_eq!(lead["score"]["value"], 50, "{lead}");
        assert!(event_kinds(&srv, &id).await.contains(&"lead.scored".to_string()));

        // The scorer writes a lead while scoring one: the outer lead is scored, the
        // scorer's own is stored unscored (scoring it would call the scorer again).
        let (status, _) = srv
            .call(
                reqwest::Method::PUT,
                "/provider/tenants/plug/plugins/hostile",
                Some(&provider),
                Some(json!({"grants": ["records:read", "records:write"], "config": {"mode": "spawn"}})),
            )
            .await;
        assert_eq!(status, 200);
        let outer = srv.lead(&owner, json!({"name": "Outer"})).await;
        assert_eq!(outer["score"]["value"], 60, "{outer}");
        let spawned_id = outer["score"]["reasons"][0]
            .as_str()
            .and_then(|r| r.strip_prefix("spawned "))
            .unwrap_or_else(|| panic!("{outer}"))
            .to_string();
        let (status, spawned) = srv.get(&format!("/api/records/lead/{spawned_id}"), &owner).await;
        assert_eq!(status, 200, "{spawned}");
        assert!(spawned["score"].is_null(), "{spawned}");
        assert_eq!(
            spawned["data"]["name"],
            format!("spawned while scoring {}", outer["id"].as_str().unwrap())
        );
        let kinds = event_kinds(&srv, &spawned_id).await;
        assert!(!kinds.contains(&"lead.scored".to_string()), "{kinds:?}");
        assert!(!kinds.contains(&"plugin.failed".to_string()), "{kinds:?}");
    }
}

/// Each vertical's scorer agrees with at least 90% of 30 leads a person in the trade
/// labelled (`industry-templates/scoring/`), scored as a tenant on the template scores them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_verticals_scorer_agrees_with_its_labelled_leads() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../industry-templates/scoring");
    for template in [
        "hvac",
        "plumbing",
        "electrical",
        "roofing",
        "landscaping",
        "gov-contracting",
    ] {
        let text = std::fs::read_to_string(format!("{dir}/{template}.toml")).unwrap();
        let evaluation = streamflow::score_eval::evaluate(Some(template), &text, None)
            .await
            .unwrap();
        assert_eq!(evaluation.total, 30, "{template}");
        assert!(evaluation.agreement() >= 0.9, "{}", evaluation.report());
        // Each temperature is mostly told right, not only the sum: no class is guessed.
        for (i, row) in evaluation.matrix.iter().enumerate() {
            let labelled: usize = row.iter().sum();
            assert!(
                labelled >= 5 && row[i] * 10 >= labelled * 8,
                "{}",
                evaluation.report()
            );
        }
    }
}
