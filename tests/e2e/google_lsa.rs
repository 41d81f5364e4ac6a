//! The bundled Google Local Services Ads plugin end to end, against the local fake of
//! Google's OAuth server and the Google Ads API: a business connects through the real
//! authorize and callback routes (offline access, consent prompted); 40 leads over two polls
//! imported once each, scored, paged across `nextPageToken`s, a WIPED_OUT lead without
//! contact details among them, a status changed at Google updating its lead; won and lost
//! leads reported to Google exactly once (redelivered, moved again, answered 500 after
//! Google applied it) and not at all when feedback is off; a missing developer token and a
//! manager account without access said plainly; a 429 ending a run that the next resumes; a
//! second that holds more leads than a search; a suspended tenant not polled; other tenants
//! untouched; no token in the plugin's kv or the logs.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use crate::client::{Api, IMPORT_GRANTS, PUBLIC, runs_of};
use crate::fake_google_ads::{self as fake, FakeGoogleAds, lead};
use crate::harness::{Backend, TestServer};
use crate::integrations::integration_server;

const ID: &str = "google-lsa";

struct World {
    api: Api,
    srv: TestServer,
    fake: FakeGoogleAds,
    provider: String,
}

async fn world(backend: Backend, developer_token: bool) -> Option<World> {
    let fake = FakeGoogleAds::start().await;
    // Runs are made by the tests alone.
    let (srv, api, provider) =
        integration_server(backend, fake.port, &fake::HOSTS, false, |_| {}).await?;
    let w = World {
        api,
        srv,
        fake,
        provider,
    };
    w.app_settings(developer_token).await;
    Some(w)
}

/// Account time (the tests' accounts are in America/Chicago, six hours behind UTC in
/// winter), `minutes` ago, as Google writes it.
fn ago(minutes: i64) -> String {
    let t = time::OffsetDateTime::now_utc()
        - time::Duration::hours(6)
        - time::Duration::minutes(minutes);
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    t.format(format).unwrap()
}

fn kind(i: u64) -> &'static str {
    ["PHONE_CALL", "MESSAGE", "BOOKING"][(i % 3) as usize]
}

impl World {
    /// The provider's OAuth client, developer token and manager account, pointed at the
    /// fake.
    async fn app_settings(&self, developer_token: bool) {
        let f = &self.fake;
        let mut settings = json!({"client_id": fake::CLIENT_ID, "client_secret": fake::CLIENT_SECRET, "login_customer_id": fake::MANAGER});
        if developer_token {
            settings["developer_token"] = json!(fake::DEVELOPER_TOKEN);
        }
        let body = self
            .api
            .ok(
                Method::PUT,
                &format!("/provider/plugins/{ID}/connections/google-ads"),
                &self.provider,
                Some(json!({
                    "settings": settings,
                    "urls": {
                        "authorize": f.url("accounts.google.com", "/o/oauth2/v2/auth"),
                        "token": f.url("oauth2.googleapis.com", "/token"),
                        "api": f.url("googleads.googleapis.com", ""),
                        "revoke": f.url("oauth2.googleapis.com", "/revoke"),
                    },
                })),
            )
            .await;
        assert!(!self.fake.leaked(&body.to_string()), "{body}");
    }

    /// A business on the HVAC template with the plugin installed, its customer id entered
    /// (as the Google Ads screens show it, with dashes) and its Google account connected.
    async fn business(
        &self,
        slug: &str,
        customer_id: &str,
        config: Value,
        quotas: Value,
    ) -> String {
        let owner = self.api.tenant(&self.provider, slug).await;
        let (status, body) = self
            .api
            .call(
                Method::PUT,
                &format!("/provider/tenants/{slug}/plugins/{ID}"),
                Some(&self.provider),
                Some(json!({"grants": IMPORT_GRANTS, "config": config, "quotas": quotas})),
            )
            .await;
        assert!(status == 200 || status == 201, "{body}");
        let dashed = format!(
            "{}-{}-{}",
            &customer_id[..3],
            &customer_id[3..6],
            &customer_id[6..]
        );
        self.api
            .ok(
                Method::PUT,
                &format!("/api/connections/{ID}/google-ads"),
                &owner,
                Some(json!({"credentials": {"customer_id": dashed}})),
            )
            .await;
        let (status, page) = self
            .api
            .connect_oauth(&owner, ID, "google-ads", PUBLIC, &[])
            .await;
        assert_eq!(status, 200, "{page}");
        let list = self
            .api
            .ok(Method::GET, "/api/connections", &owner, None)
            .await;
        let connection = list["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["plugin"] == ID)
            .cloned()
            .unwrap();
        assert_eq!(connection["status"], "connected", "{connection}");
        assert_eq!(
            connection["metadata"]["customer_id"], dashed,
            "{connection}"
        );
        owner
    }

    async fn poll(&self, token: &str) -> Value {
        self.api.run_schedule(token, ID, "poll").await
    }

    async fn status(&self, token: &str) -> Value {
        self.api
            .action_output(token, ID, "import-status", json!({}))
            .await
    }

    /// The tenant's leads by Google id.
    async fn leads(&self, token: &str) -> HashMap<String, Value> {
        let all = self.api.records(token, "lead").await;
        let by_id: HashMap<String, Value> = all
            .iter()
            .map(|l| {
                (
                    l["data"]["google_lsa"]["id"].as_str().unwrap().to_string(),
                    l.clone(),
                )
            })
            .collect();
        assert_eq!(by_id.len(), all.len(), "a Google lead stored twice");
        by_id
    }

    /// Changes a lead's data (and stage) at its current version, as a user would.
    async fn change(&self, token: &str, id: &str, stage: &str, change: impl FnOnce(&mut Value)) {
        let lead = self.api.record(token, "lead", id).await;
        let mut data = lead["data"].clone();
        change(&mut data);
        self.api
            .ok(
                Method::PATCH,
                &format!("/api/records/lead/{id}"),
                token,
                Some(json!({"data": data, "version": lead["version"], "stage": stage})),
            )
            .await;
    }

    /// Books a lead and moves it to `won`.
    async fn win(&self, token: &str, id: &str) {
        self.change(token, id, "service_booked", |d| {
            d["address"] = json!("12 Elm St, Austin, TX");
            d["service_type"] = json!("repair");
        })
        .await;
        self.change(token, id, "won", |_| {}).await;
    }

    async fn lose(&self, token: &str, id: &str, reason: &str) {
        self.change(token, id, "lost", |d| d["lost_reason"] = json!(reason))
            .await;
    }

    /// Waits until the plugin has handled `n` events of this tenant.
    async fn handled(&self, token: &str, n: usize) {
        self.api
            .wait_runs(token, &format!("{n} deliveries to {ID}"), |runs| {
                runs_of(runs, ID)
                    .iter()
                    .filter(|r| r["status"] == "done")
                    .count()
                    >= n
            })
            .await;
    }

    async fn wait_lead(&self, token: &str, id: &str, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let lead = self.api.record(token, "lead", id).await;
            if check(&lead["data"]["google_lsa"]) {
                return lead;
            }
            if Instant::now() > deadline {
                let runs = self.api.runs(token).await;
                panic!("lead {id} never got there: {lead}; runs {runs:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leads_sqlite() {
    leads_are_imported_once_scored_and_updated(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leads_postgres() {
    leads_are_imported_once_scored_and_updated(Backend::Postgres).await;
}

async fn leads_are_imported_once_scored_and_updated(backend: Backend) {
    let Some(w) = world(backend, true).await else {
        return;
    };
    let (cid, rival_cid) = ("1234567890", "5550001111");
    w.fake.account(cid, true);
    w.fake.account(rival_cid, true);
    // Pages of 10, so a poll follows nextPageToken.
    w.fake.state.page_size.store(10, Ordering::SeqCst);
    // 25 leads over the last two days; the 10th and 11th in the same second, across the
    // first page's end; a WIPED_OUT lead without contact details; an empty and a malformed
    // email.
    let mut times: HashMap<u64, String> = HashMap::new();
    for i in 0..25u64 {
        let id = 1000 + i;
        let at = if i == 10 {
            times[&1009].clone()
        } else {
            ago(48 * 60 - i as i64 * 90)
        };
        let contact = match i {
            7 => None,
            4 => Some((
                "Customer 4".to_string(),
                "+15125550004".to_string(),
                String::new(),
            )),
            12 => Some((
                "Customer 12".into(),
                "+15125550012".into(),
                "not-an-email".into(),
            )),
            _ => Some((
                format!("Customer {i}"),
                format!("+1512555{i:04}"),
                format!("customer{i}@example.com"),
            )),
        };
        let status = if i == 7 { "WIPED_OUT" } else { "NEW" };
        let contact = contact
            .as_ref()
            .map(|(n, p, e)| (n.as_str(), p.as_str(), e.as_str()));
        w.fake
            .add_lead(cid, lead(cid, id, &at, kind(i), status, contact));
        times.insert(id, at);
    }
    for i in 0..3u64 {
        w.fake.add_lead(
            rival_cid,
            lead(
                rival_cid,
                7000 + i,
                &ago(100 + i as i64),
                "MESSAGE",
                "NEW",
                Some(("Rival customer", "+15125559999", "")),
            ),
        );
    }
    let owner = w.business("comfort", cid, json!({}), json!({})).await;
    let rival = w.business("rival", rival_cid, json!({}), json!({})).await;
    // The consent screen was asked for offline access and a new consent (a refresh token).
    for q in w.fake.state.authorizations.lock().unwrap().iter() {
        assert_eq!(
            q.get("access_type").map(String::as_str),
            Some("offline"),
            "{q:?}"
        );
        assert_eq!(
            q.get("prompt").map(String::as_str),
            Some("consent"),
            "{q:?}"
        );
        assert_eq!(
            q.get("scope").map(String::as_str),
            Some(fake::SCOPE),
            "{q:?}"
        );
    }
    assert_eq!(w.poll(&rival).await["status"], "ok");
    let rival_before = w.leads(&rival).await;
    assert_eq!(rival_before.len(), 3);

    // The first poll: 25 leads over three pages, each scored as it arrived.
    let run = w.poll(&owner).await;
    assert_eq!(run["status"], "ok", "{run}");
    let leads = w.leads(&owner).await;
    assert_eq!(leads.len(), 25);
    assert!(
        leads.values().all(|l| l["score"].is_object()),
        "every lead scored"
    );
    let searches = w.fake.searches_of(cid);
    assert_eq!(searches.len(), 3, "{searches:?}");
    assert!(searches[0].page_token.is_none());
    assert!(
        searches[1..]
            .iter()
            .all(|s| s.page_token.is_some() && s.query == searches[0].query)
    );
    assert_eq!(
        searches.iter().map(|s| s.rows).collect::<Vec<_>>(),
        [10, 10, 5]
    );
    assert!(
        searches
            .iter()
            .all(|s| s.login_customer_id.as_deref() == Some(fake::MANAGER))
    );
    let q = &searches[0].query;
    assert!(
        q.contains(" FROM local_services_lead WHERE local_services_lead.creation_date_time >= '"),
        "{q}"
    );
    assert!(
        q.contains("ORDER BY local_services_lead.creation_date_time, local_services_lead.id"),
        "{q}"
    );

    let first = &leads["1001"]["data"];
    assert_eq!(first["name"], "Customer 1");
    assert_eq!(first["phone"], "+15125550001");
    assert_eq!(first["email"], "customer1@example.com");
    assert_eq!(first["source"], "google_lsa");
    let lsa = &first["google_lsa"];
    assert_eq!(lsa["lead_type"], "message");
    assert_eq!(lsa["status"], "new");
    assert_eq!(lsa["charged"], false);
    assert_eq!(lsa["category_id"], "xcat:service_area_business_hvac");
    assert_eq!(
        lsa["resource_name"],
        format!("customers/{cid}/localServicesLeads/1001")
    );
    assert_eq!(
        lsa["created_at"], times[&1001],
        "account time, as Google wrote it"
    );
    let wiped = &leads["1007"]["data"];
    assert_eq!(wiped["name"], "Google LSA lead 1007");
    assert!(
        wiped.get("phone").is_none() && wiped.get("email").is_none(),
        "{wiped}"
    );
    assert_eq!(wiped["google_lsa"]["status"], "wiped_out");
    assert!(leads["1004"]["data"].get("email").is_none());
    assert!(leads["1012"]["data"].get("email").is_none());
    assert_eq!(leads["1012"]["data"]["phone"], "+15125550012");
    assert_eq!(
        leads["1010"]["data"]["google_lsa"]["created_at"],
        times[&1009]
    );

    // The second poll: 14 newer leads, one that reached the API late (created before the
    // newest lead of the first poll), and two recent leads whose status changed at Google.
    let newest = times[&1024].clone();
    for i in 25..39u64 {
        let id = 1000 + i;
        let at = ago(11 * 60 - (i as i64 - 25) * 45);
        w.fake.add_lead(
            cid,
            lead(
                cid,
                id,
                &at,
                kind(i),
                "NEW",
                Some(("Later customer", "+15125550100", "")),
            ),
        );
        times.insert(id, at);
    }
    let late = ago(12 * 60 + 30);
    assert!(late < newest);
    w.fake.add_lead(
        cid,
        lead(
            cid,
            1039,
            &late,
            "PHONE_CALL",
            "NEW",
            Some(("Late caller", "+15125550139", "")),
        ),
    );
    w.fake.change_lead(cid, 1024, |l| {
        l["leadStatus"] = json!("ACTIVE");
        l["leadCharged"] = json!(true);
        l["creditDetails"] = json!({"creditState": "PENDING"});
    });
    w.fake
        .change_lead(cid, 1023, |l| l["leadStatus"] = json!("BOOKED"));
    let run = w.poll(&owner).await;
    assert_eq!(run["status"], "ok", "{run}");
    let after = w.leads(&owner).await;
    assert_eq!(after.len(), 40);
    assert!(after.values().all(|l| l["score"].is_object()));
    assert_eq!(after["1039"]["data"]["name"], "Late caller");
    let changed = &after["1024"];
    assert_eq!(
        changed["id"], leads["1024"]["id"],
        "updated, not created again"
    );
    assert!(changed["version"].as_i64() > leads["1024"]["version"].as_i64());
    assert_eq!(changed["data"]["google_lsa"]["status"], "active");
    assert_eq!(changed["data"]["google_lsa"]["charged"], true);
    assert_eq!(changed["data"]["google_lsa"]["credit_state"], "pending");
    assert_eq!(changed["data"]["name"], "Customer 24");
    assert_eq!(after["1023"]["data"]["google_lsa"]["status"], "booked");
    assert_eq!(
        after["1000"]["version"], leads["1000"]["version"],
        "unchanged"
    );
    // It searched from two hours before the newest lead it had.
    let second = &w.fake.searches_of(cid)[3];
    let from = {
        let format =
            time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
        let t = time::PrimitiveDateTime::parse(&newest, format).unwrap() - time::Duration::hours(2);
        t.format(format).unwrap()
    };
    assert!(second.page_token.is_none());
    assert!(
        second
            .query
            .contains(&format!("creation_date_time >= '{from}'")),
        "{}",
        second.query
    );

    // Polled again: nothing changes.
    let run = w.poll(&owner).await;
    assert_eq!(run["status"], "ok", "{run}");
    let again = w.leads(&owner).await;
    assert_eq!(again.len(), 40);
    for (id, l) in &again {
        assert_eq!(
            l["version"], after[id]["version"],
            "lead {id} written again"
        );
    }
    let status = w.status(&owner).await;
    let newest = times.values().max().unwrap();
    assert_eq!(status["cursor"]["newest"], *newest, "{status}");
    assert!(status["cursor"]["last_completed"].is_string(), "{status}");
    assert_eq!(status["skipped"], json!([]));

    // The other business has its own leads, none written meanwhile.
    let rival_after = w.leads(&rival).await;
    assert_eq!(rival_after.len(), 3);
    for (id, l) in &rival_after {
        assert_eq!(l["version"], rival_before[id]["version"]);
    }
    assert!(again.keys().all(|id| id.starts_with('1')));
    // No token, secret or developer token in the plugin's kv or a log line.
    let kv = crate::quickbooks::plugin_kv_of(&w.srv, ID).await;
    assert!(!kv.is_empty());
    assert!(!w.fake.leaked(&kv), "a credential in the plugin's kv: {kv}");
    assert!(
        !w.fake.leaked(&crate::integrations::logs()),
        "a credential in a log line"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn won_and_lost_leads_are_reported_to_google_once() {
    let w = world(Backend::Sqlite, true).await.unwrap();
    let (cid, quiet_cid) = ("2223334444", "3334445555");
    w.fake.account(cid, true);
    w.fake.account(quiet_cid, true);
    for (n, id) in [2001u64, 2002, 2003, 2004].into_iter().enumerate() {
        w.fake.add_lead(
            cid,
            lead(
                cid,
                id,
                &ago(300 - n as i64),
                "PHONE_CALL",
                "NEW",
                Some(("Pat Doe", "+15125550142", "pat@example.com")),
            ),
        );
    }
    w.fake.add_lead(
        quiet_cid,
        lead(
            quiet_cid,
            2101,
            &ago(300),
            "PHONE_CALL",
            "NEW",
            Some(("Sam Roe", "+15125550143", "")),
        ),
    );
    let owner = w
        .business(
            "reports",
            cid,
            json!({"feedback": {"enabled": true}}),
            json!({}),
        )
        .await;
    let quiet = w.business("quiet", quiet_cid, json!({}), json!({})).await;
    assert_eq!(w.poll(&owner).await["status"], "ok");
    assert_eq!(w.poll(&quiet).await["status"], "ok");
    let leads = w.leads(&owner).await;
    let record = |gid: &str| leads[gid]["id"].as_str().unwrap().to_string();

    // Won: a satisfied survey, a booked customer.
    w.win(&owner, &record("2001")).await;
    let won = w
        .wait_lead(&owner, &record("2001"), |g| g["feedback_sent"].is_object())
        .await;
    let sent = &won["data"]["google_lsa"]["feedback_sent"];
    assert_eq!(sent["outcome"], "won", "{sent}");
    assert_eq!(sent["credit_issuance_decision"], "FAIL_NOT_ELIGIBLE");
    assert_eq!(won["data"]["google_lsa"]["feedback_submitted"], true);
    let reports = w.fake.feedback_of(cid);
    assert_eq!(reports.len(), 1);
    assert_eq!(
        reports[0].0,
        format!("customers/{cid}/localServicesLeads/2001")
    );
    assert_eq!(
        reports[0].1,
        json!({"surveyAnswer": "VERY_SATISFIED", "surveySatisfied": {"surveySatisfiedReason": "BOOKED_CUSTOMER"}})
    );
    // The same event delivered again: not sent again.
    w.handled(&owner, 1).await;
    let runs = w.api.runs(&owner).await;
    let event = runs_of(&runs, ID)[0]["event_id"]
        .as_str()
        .unwrap()
        .to_string();
    crate::quickbooks::redeliver(&w.srv, &event).await;
    w.api
        .wait_runs(&owner, "the redelivery", |runs| {
            runs_of(runs, ID)
                .iter()
                .any(|r| r["event_id"] == event.as_str() && r["status"] == "done")
        })
        .await;
    assert_eq!(w.fake.feedback_of(cid).len(), 1);

    // Lost as out of area; Google applies the report but its answer is lost (500): the
    // redelivery asks Google first, finds it, and does not send it again.
    w.fake
        .state
        .lose_next_feedback_answer
        .store(true, Ordering::SeqCst);
    w.lose(&owner, &record("2002"), "out_of_area").await;
    let lost = w
        .wait_lead(&owner, &record("2002"), |g| g["feedback_sent"].is_object())
        .await;
    assert_eq!(
        lost["data"]["google_lsa"]["feedback_sent"]["outcome"],
        "lost"
    );
    assert_eq!(
        lost["data"]["google_lsa"]["feedback_sent"]["already_submitted"],
        true
    );
    let reports = w.fake.feedback_of(cid);
    assert_eq!(reports.len(), 2);
    assert_eq!(
        reports[1].1,
        json!({"surveyAnswer": "DISSATISFIED", "surveyDissatisfied": {"surveyDissatisfiedReason": "GEO_MISMATCH"}})
    );
    // Moved on and lost again: reported already, not again.
    w.handled(&owner, 2).await;
    w.change(&owner, &record("2002"), "new", |_| {}).await;
    w.lose(&owner, &record("2002"), "price").await;
    w.handled(&owner, 3).await;
    assert_eq!(w.fake.feedback_of(cid).len(), 2);

    // Feedback given in Google's own screens since the import: not sent.
    w.fake
        .change_lead(cid, 2003, |l| l["leadFeedbackSubmitted"] = json!(true));
    w.lose(&owner, &record("2003"), "price").await;
    let given = w
        .wait_lead(&owner, &record("2003"), |g| g["feedback_sent"].is_object())
        .await;
    assert_eq!(
        given["data"]["google_lsa"]["feedback_sent"]["already_submitted"],
        true
    );
    // A reason Google has no value for: "other", in words.
    w.lose(&owner, &record("2004"), "went_with_competitor")
        .await;
    w.wait_lead(&owner, &record("2004"), |g| g["feedback_sent"].is_object())
        .await;
    let reports = w.fake.feedback_of(cid);
    assert_eq!(reports.len(), 3, "{reports:?}");
    assert_eq!(
        reports[2].1["surveyDissatisfied"],
        json!({"surveyDissatisfiedReason": "OTHER_DISSATISFIED_REASON", "otherReasonComment": "Lost in StreamFlow: went with competitor"})
    );

    // Feedback off: nothing is reported.
    let theirs = w.leads(&quiet).await;
    let id = theirs["2101"]["id"].as_str().unwrap().to_string();
    w.win(&quiet, &id).await;
    w.handled(&quiet, 1).await;
    assert!(w.fake.feedback_of(quiet_cid).is_empty());
    let lead = w.api.record(&quiet, "lead", &id).await;
    assert!(
        lead["data"]["google_lsa"].get("feedback_sent").is_none(),
        "{lead}"
    );
    assert!(
        !w.fake.leaked(&crate::integrations::logs()),
        "a credential in a log line"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_mistakes_throttling_and_suspension_stop_polls_plainly() {
    let w = world(Backend::Sqlite, false).await.unwrap();
    let cid = "4445556666";
    w.fake.account(cid, true);
    let mut times = Vec::new();
    for i in 0..12u64 {
        let at = ago(600 - i as i64 * 20);
        w.fake.add_lead(
            cid,
            lead(
                cid,
                3000 + i,
                &at,
                kind(i),
                "NEW",
                Some(("Lee", "+15125550150", "")),
            ),
        );
        times.push(at);
    }
    let owner = w.business("acme", cid, json!({}), json!({})).await;

    // No developer token yet: the run fails saying who sets it.
    let run = w.poll(&owner).await;
    assert_eq!(run["status"], "failed", "{run}");
    let error = run["error"].as_str().unwrap();
    assert!(
        error.contains("the provider has not set the developer token"),
        "{error}"
    );
    assert!(
        error.contains("DEVELOPER_TOKEN_PARAMETER_MISSING"),
        "{error}"
    );
    assert!(w.leads(&owner).await.is_empty());
    w.app_settings(true).await;
    // The provider can take a secret away again: null removes it (left out keeps it).
    let path = format!("/provider/plugins/{ID}/connections/google-ads");
    let settings = |token: Value| json!({"settings": {"client_id": fake::CLIENT_ID, "login_customer_id": fake::MANAGER, "developer_token": token}});
    let view = w
        .api
        .ok(Method::PUT, &path, &w.provider, Some(settings(Value::Null)))
        .await;
    assert!(view["settings"].get("developer_token").is_none(), "{view}");
    assert_eq!(
        view["settings"]["client_secret"],
        json!({"set": true}),
        "{view}"
    );
    assert_eq!(w.poll(&owner).await["status"], "failed");
    w.app_settings(true).await;

    // An account the manager account is not linked to.
    let stranger_cid = "7778889999";
    w.fake.account(stranger_cid, false);
    let stranger = w
        .business("stranger", stranger_cid, json!({}), json!({}))
        .await;
    let run = w.poll(&stranger).await;
    assert_eq!(run["status"], "failed", "{run}");
    let error = run["error"].as_str().unwrap();
    assert!(
        error.contains("refused access to customer 7778889999"),
        "{error}"
    );
    assert!(error.contains("USER_PERMISSION_DENIED"), "{error}");
    assert!(!w.fake.leaked(error), "{error}");

    // Throttled on the second page: the run ends to be retried later, the first page kept.
    w.fake.state.page_size.store(5, Ordering::SeqCst);
    w.fake.state.throttle_after.store(1, Ordering::SeqCst);
    let run = w.poll(&owner).await;
    assert_eq!(run["status"], "failed", "{run}");
    let error = run["error"].as_str().unwrap();
    assert!(
        error.contains("retried later") && error.contains("throttling") && error.contains("429"),
        "{error}"
    );
    assert_eq!(w.leads(&owner).await.len(), 5);
    let status = w.status(&owner).await;
    assert_eq!(status["cursor"]["from"], times[4], "{status}");
    assert!(
        status["cursor"]["paused"]
            .as_str()
            .unwrap()
            .contains("throttling"),
        "{status}"
    );
    // The next run resumes at the last stored lead, not at the lookback.
    let before = w.fake.searches_of(cid).len();
    let run = w.poll(&owner).await;
    assert_eq!(run["status"], "ok", "{run}");
    let resumed = &w.fake.searches_of(cid)[before];
    assert!(resumed.page_token.is_none());
    assert!(
        resumed.query.contains(&format!(">= '{}'", times[4])),
        "{}",
        resumed.query
    );
    assert_eq!(w.leads(&owner).await.len(), 12);

    // A second with more leads than one run's quota stores in a search (4 here): the rest
    // of that second is searched by id, and the import completes over runs.
    let busy_cid = "6667778888";
    w.fake.account(busy_cid, true);
    let second = ago(240);
    for i in 0..6u64 {
        w.fake.add_lead(
            busy_cid,
            lead(busy_cid, 5000 + i * 7, &second, "MESSAGE", "NEW", None),
        );
    }
    for i in 0..2u64 {
        w.fake.add_lead(
            busy_cid,
            lead(
                busy_cid,
                4000 + i,
                &ago(200 - i as i64),
                "MESSAGE",
                "NEW",
                None,
            ),
        );
    }
    let busy = w
        .business(
            "busy",
            busy_cid,
            json!({}),
            json!({"record-writes": 8, "record-reads": 8}),
        )
        .await;
    let mut completed = false;
    for _ in 0..6 {
        let run = w.poll(&busy).await;
        assert_eq!(run["status"], "ok", "{run}");
        if w.status(&busy).await["cursor"]["last_completed"].is_string() {
            completed = true;
            break;
        }
    }
    assert!(completed, "{}", w.status(&busy).await);
    assert_eq!(w.leads(&busy).await.len(), 8);
    let by_id = format!("creation_date_time = '{second}' AND local_services_lead.id > ");
    assert!(
        w.fake
            .searches_of(busy_cid)
            .iter()
            .any(|s| s.query.contains(&by_id)),
        "{:?}",
        w.fake.searches_of(busy_cid)
    );

    // A suspended tenant's schedule does not run.
    let before = w.fake.state.searches.lock().unwrap().len();
    let (status, body) = w
        .api
        .call(
            Method::POST,
            "/provider/tenants/acme/suspend",
            Some(&w.provider),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let run = w
        .api
        .ok(
            Method::POST,
            &format!("/provider/tenants/acme/plugins/{ID}/schedules/poll/run"),
            &w.provider,
            None,
        )
        .await;
    assert_eq!(run["status"], "failed", "{run}");
    assert!(
        run["error"].as_str().unwrap().contains("suspended"),
        "{run}"
    );
    assert_eq!(w.fake.state.searches.lock().unwrap().len(), before);
}

/// The fake refuses what Google refuses (so the tests above could catch a plugin that sends
/// what Google would not take).
#[tokio::test]
async fn the_fake_refuses_what_google_refuses() {
    let f = FakeGoogleAds::start().await;
    let cid = "1112223333";
    f.account(cid, true);
    for i in 0..3u64 {
        f.add_lead(
            cid,
            lead(
                cid,
                10 + i,
                &format!("2026-12-0{} 10:00:00", i + 1),
                "MESSAGE",
                "NEW",
                None,
            ),
        );
    }
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let base = format!("http://127.0.0.1:{}", f.port);
    // Consent without offline access: no refresh token.
    let verifier = "a-verifier-of-at-least-forty-three-characters-0123";
    let challenge = {
        use base64::Engine;
        use sha2::Digest;
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(sha2::Sha256::digest(verifier.as_bytes()))
    };
    let code = |offline: bool| {
        let mut url = reqwest::Url::parse(&format!("{base}/o/oauth2/v2/auth")).unwrap();
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", fake::CLIENT_ID)
            .append_pair("redirect_uri", "https://sf.example.test/oauth/callback")
            .append_pair("scope", fake::SCOPE)
            .append_pair("state", "s")
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256");
        if offline {
            url.query_pairs_mut().append_pair("access_type", "offline");
        }
        let http = http.clone();
        async move {
            let answer = http.get(url).send().await.unwrap();
            assert_eq!(answer.status().as_u16(), 303);
            let to = reqwest::Url::parse(answer.headers()["location"].to_str().unwrap()).unwrap();
            to.query_pairs()
                .find(|(k, _)| k == "code")
                .unwrap()
                .1
                .into_owned()
        }
    };
    let exchange = |code: String| {
        let http = http.clone();
        let base = base.clone();
        async move {
            http.post(format!("{base}/token"))
                .form(&[
                    ("grant_type", "authorization_code"),
                    ("code", &code),
                    ("redirect_uri", "https://sf.example.test/oauth/callback"),
                    ("code_verifier", verifier),
                    ("client_id", fake::CLIENT_ID),
                    ("client_secret", fake::CLIENT_SECRET),
                ])
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let online = exchange(code(false).await).await;
    assert!(
        online["access_token"].is_string() && online.get("refresh_token").is_none(),
        "{online}"
    );
    let offline = exchange(code(true).await).await;
    let refresh = offline["refresh_token"].as_str().unwrap().to_string();
    // A second grant without prompt=consent: no refresh token again.
    let again = exchange(code(true).await).await;
    assert!(again.get("refresh_token").is_none(), "{again}");
    let refreshed: Value = http
        .post(format!("{base}/token"))
        .basic_auth(fake::CLIENT_ID, Some(fake::CLIENT_SECRET))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh.as_str()),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        refreshed.get("refresh_token").is_none(),
        "not rotated: {refreshed}"
    );
    let token = refreshed["access_token"].as_str().unwrap().to_string();

    let search = |version: &str, headers: &[(&str, &str)], body: Value| {
        let mut request = http
            .post(format!("{base}/{version}/customers/{cid}/googleAds:search"))
            .bearer_auth(&token)
            .json(&body);
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        async move {
            let answer = request.send().await.unwrap();
            (
                answer.status().as_u16(),
                answer.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let ok = [
        ("developer-token", fake::DEVELOPER_TOKEN),
        ("login-customer-id", fake::MANAGER),
    ];
    let code_of = |body: &Value| {
        body.pointer("/error/details/0/errors/0/errorCode")
            .and_then(Value::as_object)
            .and_then(|c| c.values().next())
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let q = "SELECT local_services_lead.id, local_services_lead.creation_date_time FROM local_services_lead WHERE local_services_lead.creation_date_time > '2026-12-01 10:00:00' ORDER BY local_services_lead.creation_date_time";
    let (status, body) = search("v26", &ok, json!({"query": q})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["results"].as_array().unwrap().len(),
        2,
        "strictly after"
    );
    assert_eq!(
        body["results"][0]["localServicesLead"],
        json!({"resourceName": format!("customers/{cid}/localServicesLeads/11"), "id": "11", "creationDateTime": "2026-12-02 10:00:00"})
    );
    let (status, body) = search("v26", &ok[1..], json!({"query": q})).await;
    assert_eq!(
        (status, code_of(&body)),
        (400, "DEVELOPER_TOKEN_PARAMETER_MISSING".into()),
        "{body}"
    );
    let (status, body) = search("v26", &ok[..1], json!({"query": q})).await;
    assert_eq!(
        (status, code_of(&body)),
        (403, "USER_PERMISSION_DENIED".into()),
        "{body}"
    );
    assert_eq!(body["error"]["status"], "PERMISSION_DENIED");
    let (status, _) = search("v19", &ok, json!({"query": q})).await;
    assert_eq!(status, 404, "a sunset version");
    for bad in [
        "SELECT local_services_lead.id FROM",
        "SELECT local_services_lead.nope FROM local_services_lead",
        "SELECT local_services_lead.id FROM local_services_lead WHERE local_services_lead.creation_date_time >= '2026-12-01'",
        "SELECT local_services_lead.id FROM local_services_lead LIMIT 0",
        "local_services_lead.id FROM local_services_lead",
    ] {
        let (status, body) = search("v26", &ok, json!({"query": bad})).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(
            body["error"]["details"][0]["errors"][0]["errorCode"]["queryError"].is_string(),
            "{bad}: {body}"
        );
    }
    let (status, body) = search("v26", &ok, json!({"query": q, "pageSize": 1})).await;
    assert_eq!(
        (status, code_of(&body)),
        (400, "PAGE_SIZE_NOT_SUPPORTED".into())
    );
    // Page tokens belong to their query.
    f.state.page_size.store(1, Ordering::SeqCst);
    let (_, body) = search("v26", &ok, json!({"query": q})).await;
    let next = body["nextPageToken"].as_str().unwrap().to_string();
    let (status, body) = search("v26", &ok, json!({"query": q, "pageToken": next})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"][0]["localServicesLead"]["id"], "12");
    assert!(body.get("nextPageToken").is_none());
    let other = q.replace("> '2026", ">= '2026");
    let (status, body) = search("v26", &ok, json!({"query": other, "pageToken": next})).await;
    assert_eq!(
        (status, code_of(&body)),
        (400, "INVALID_PAGE_TOKEN".into()),
        "{body}"
    );
    let (status, body) = search("v26", &ok, json!({"query": q, "pageToken": "garbled"})).await;
    assert_eq!(
        (status, code_of(&body)),
        (400, "INVALID_PAGE_TOKEN".into()),
        "{body}"
    );

    // Feedback: the survey's details must match its answer, and an "other" reason needs
    // its comment; once per lead.
    let feedback = |body: Value| {
        let request = http
            .post(format!(
                "{base}/v26/customers/{cid}/localServicesLeads/10:provideLeadFeedback"
            ))
            .bearer_auth(&token)
            .header("developer-token", fake::DEVELOPER_TOKEN)
            .header("login-customer-id", fake::MANAGER)
            .json(&body);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(feedback(json!({"surveyAnswer": "SATISFIED", "surveyDissatisfied": {"surveyDissatisfiedReason": "SPAM"}})).await, 400);
    assert_eq!(feedback(json!({"surveyAnswer": "DISSATISFIED", "surveyDissatisfied": {"surveyDissatisfiedReason": "OTHER_DISSATISFIED_REASON"}})).await, 400);
    assert_eq!(feedback(json!({"surveyAnswer": "DISSATISFIED", "surveyDissatisfied": {"surveyDissatisfiedReason": "SPAM"}})).await, 200);
    assert_eq!(feedback(json!({"surveyAnswer": "DISSATISFIED", "surveyDissatisfied": {"surveyDissatisfiedReason": "SPAM"}})).await, 400);
    assert_eq!(f.feedback_of(cid).len(), 1);
}
