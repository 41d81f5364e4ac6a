//! The bundled SAM.gov plugin end to end, against the local fake of the Get Opportunities
//! API: 2,500 opportunities over 3 runs with no duplicates, each scored by the
//! gov-contracting template's scorer; an amended notice updating its lead; the key's daily
//! cap respected and said; a 429 ending a run; a refused key said plainly; another tenant
//! untouched; the key never seen by the plugin.

use std::sync::atomic::Ordering;

use reqwest::Method;
use serde_json::{Value, json};

use crate::client::{Api, IMPORT_GRANTS};
use crate::fake_sam::{self, FakeSam};
use crate::harness::{Backend, TestServer};
use crate::integrations::integration_server;

const ID: &str = "sam-gov";
const NAICS: &str = "561210";

struct World {
    api: Api,
    srv: TestServer,
    fake: FakeSam,
    provider: String,
}

async fn world(backend: Backend) -> Option<World> {
    let fake = FakeSam::start().await;
    let (srv, api, provider) =
        integration_server(backend, fake.port, &fake_sam::HOSTS, false, |_| {}).await?;
    api.ok(
        Method::PUT,
        &format!("/provider/plugins/{ID}/connections/sam"),
        &provider,
        Some(json!({"urls": {"api": fake.url("")}})),
    )
    .await;
    Some(World {
        api,
        srv,
        fake,
        provider,
    })
}

impl World {
    async fn business(&self, slug: &str, config: Value, key: &str) -> String {
        let owner = self
            .api
            .tenant_on(&self.provider, slug, "gov-contracting")
            .await;
        let (status, body) = self
            .api
            .call(
                Method::PUT,
                &format!("/provider/tenants/{slug}/plugins/{ID}"),
                Some(&self.provider),
                Some(json!({"grants": IMPORT_GRANTS, "config": config, "quotas": {"record-writes": 1000, "record-reads": 2000}})),
            )
            .await;
        assert!(status == 200 || status == 201, "{body}");
        let body = self
            .api
            .ok(
                Method::PUT,
                &format!("/api/connections/{ID}/sam"),
                &owner,
                Some(json!({"credentials": {"api_key": key}})),
            )
            .await;
        assert!(!body.to_string().contains(key), "{body}");
        owner
    }

    async fn run(&self, token: &str) -> Value {
        self.api.run_schedule(token, ID, "import").await
    }

    async fn status(&self, token: &str) -> Value {
        self.api
            .action_output(token, ID, "import-status", json!({}))
            .await
    }

    async fn leads(&self, token: &str) -> Vec<Value> {
        self.api.records(token, "lead").await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opportunities_sqlite() {
    opportunities_are_imported_once_scored_and_amended(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opportunities_postgres() {
    opportunities_are_imported_once_scored_and_amended(Backend::Postgres).await;
}

async fn opportunities_are_imported_once_scored_and_amended(backend: Backend) {
    let Some(w) = world(backend).await else {
        return;
    };
    let today = time::OffsetDateTime::now_utc().date();
    w.fake.publish("N", 2_500, NAICS, today);
    w.fake.publish("X", 40, "999999", today);
    let config = json!({"naics": [NAICS], "daily_requests": 1000, "page_size": 1000});
    let owner = w.business("govwin", config, fake_sam::API_KEY).await;
    let bystander = w
        .api
        .tenant_on(&w.provider, "bystander", "gov-contracting")
        .await;

    // Three runs of one page each (a run's writes fit one page of 1,000).
    for run in 1..=3 {
        let answer = w.run(&owner).await;
        assert_eq!(answer["status"], "ok", "run {run}: {answer}");
    }
    let status = w.status(&owner).await;
    assert!(status["cursor"]["last_completed"].is_string(), "{status}");
    let leads = w.leads(&owner).await;
    assert_eq!(leads.len(), 2_500);
    let mut ids: Vec<&str> = leads
        .iter()
        .map(|l| l["data"]["notice_id"].as_str().unwrap())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 2_500, "no notice twice");
    assert!(
        ids.iter().all(|id| id.starts_with('N')),
        "only the configured NAICS code"
    );
    // Each scored by gov-opportunity-fit as it arrived.
    assert!(leads.iter().all(|l| l["score"].is_object()), "{}", leads[0]);
    let first = leads
        .iter()
        .find(|l| l["data"]["notice_id"] == "N00003")
        .unwrap();
    assert_eq!(first["data"]["title"], "Facility maintenance 3");
    assert_eq!(first["data"]["set_aside"], "small_business");
    assert_eq!(first["data"]["naics"], NAICS);
    assert_eq!(first["data"]["place_of_performance"], "WI");
    assert_eq!(first["data"]["agency"], "GENERAL SERVICES ADMINISTRATION");
    assert_eq!(first["data"]["source"], "sam_gov");
    assert!(
        first["data"]["sam"].get("archive_date").is_none(),
        "\"null\" is no value"
    );
    // Each search asked for the window in SAM.gov's date format and the configured types.
    for search in w.fake.state.searches.lock().unwrap().iter() {
        let get = |k: &str| search.iter().find(|(q, _)| q == k).map(|(_, v)| v.clone());
        assert!(get("postedFrom").unwrap().contains('/'), "{search:?}");
        assert_eq!(get("ncode").as_deref(), Some(NAICS));
        assert_eq!(search.iter().filter(|(k, _)| k == "ptype").count(), 4);
    }

    // An amended notice updates its lead on the next run; nothing else is created.
    w.fake
        .amend("N00007", "Facility maintenance 7 (amendment 1)");
    let answer = w.run(&owner).await;
    assert_eq!(answer["status"], "ok", "{answer}");
    let leads = w.leads(&owner).await;
    assert_eq!(leads.len(), 2_500);
    let amended = leads
        .iter()
        .find(|l| l["data"]["notice_id"] == "N00007")
        .unwrap();
    assert_eq!(
        amended["data"]["title"],
        "Facility maintenance 7 (amendment 1)"
    );
    assert_eq!(amended["data"]["notice_type"], "combined");

    // The other tenant has none of it.
    assert!(w.leads(&bystander).await.is_empty());
    let kv = crate::quickbooks::plugin_kv_of(&w.srv, ID).await;
    assert!(
        !kv.contains(fake_sam::API_KEY),
        "the key in the plugin's kv"
    );
    assert!(
        !crate::integrations::logs().contains(fake_sam::API_KEY),
        "the key in a log line"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daily_cap_a_429_and_a_refused_key_stop_the_import_plainly() {
    let w = world(Backend::Sqlite).await.unwrap();
    let today = time::OffsetDateTime::now_utc().date();
    w.fake.publish("C", 30, NAICS, today);

    // A key with 2 requests a day: the plugin stops before a third and says why.
    let config = json!({"naics": [NAICS], "daily_requests": 2, "page_size": 10, "fetch_descriptions": false});
    let owner = w.business("capped", config, fake_sam::API_KEY).await;
    let answer = w.run(&owner).await;
    assert_eq!(answer["status"], "ok", "{answer}");
    let status = w.status(&owner).await;
    assert_eq!(status["requests_today"]["requests"], 2, "{status}");
    assert!(
        status["cursor"]["paused"]
            .as_str()
            .unwrap()
            .contains("daily cap"),
        "{status}"
    );
    assert_eq!(w.leads(&owner).await.len(), 20);
    let asked = w.fake.state.requests.load(Ordering::SeqCst);
    w.run(&owner).await;
    assert_eq!(
        w.fake.state.requests.load(Ordering::SeqCst),
        asked,
        "no request past the cap"
    );

    // SAM.gov's own limit (429) ends a run without an error, and no more requests are made
    // that day; the cursor stays.
    let config = json!({"naics": [NAICS], "daily_requests": 1000, "page_size": 10});
    let other = w.business("throttled", config, fake_sam::API_KEY).await;
    w.fake.state.daily_cap.store(0, Ordering::SeqCst);
    let answer = w.run(&other).await;
    assert_eq!(answer["status"], "ok", "{answer}");
    let status = w.status(&other).await;
    assert!(
        status["cursor"]["paused"].as_str().unwrap().contains("429"),
        "{status}"
    );
    assert_eq!(status["requests_today"]["requests"], 1000, "{status}");
    let asked = w.fake.state.requests.load(Ordering::SeqCst);
    w.run(&other).await;
    assert_eq!(w.fake.state.requests.load(Ordering::SeqCst), asked);
    assert!(w.leads(&other).await.is_empty());

    // Descriptions come from their own address, with the key added by the host. (A page of
    // 10 with their descriptions is 11 requests: one page a run fits the manifest's 20
    // requests, and each run asks for the next sooner.)
    w.fake.state.daily_cap.store(100_000, Ordering::SeqCst);
    let config = json!({"naics": [NAICS], "daily_requests": 1000, "page_size": 10, "fetch_descriptions": true});
    let described = w.business("described", config, fake_sam::API_KEY).await;
    for _ in 0..5 {
        let answer = w.run(&described).await;
        assert_eq!(answer["status"], "ok", "{answer}");
        if w.status(&described).await["cursor"]["last_completed"].is_string() {
            break;
        }
    }
    let leads = w.leads(&described).await;
    assert_eq!(leads.len(), 30);
    assert!(
        leads.iter().all(|l| l["data"]["sam"]["description"]
            .as_str()
            .is_some_and(|d| d.contains("Scope of work"))),
        "{}",
        leads[0]
    );

    // A key SAM.gov does not know: the run fails saying so.
    let config = json!({"naics": [NAICS]});
    let refused = w.business("badkey", config, "not-a-real-key-000").await;
    let answer = w.run(&refused).await;
    assert_eq!(answer["status"], "failed", "{answer}");
    let error = answer["error"].as_str().unwrap();
    assert!(
        error.contains("refused the API key") && error.contains("An invalid api_key was supplied"),
        "{error}"
    );
    assert!(!error.contains("not-a-real-key"), "{error}");
}
