//! The bundled ADP Workforce Now plugin end to end, against the local fake of ADP behind
//! mutual TLS: 250 workers over 3 pages imported as employees without duplicates, then a
//! termination and a hire through the event queue (acknowledged only once stored); a week
//! of approved time entries appended to the pay data batch once, even after maintenance, a
//! lost answer and repeated runs; hours ADP refuses sent back with its words; the client
//! certificate required on every handshake; a suspended tenant's schedules not run; and two
//! employers whose data never cross.

use std::sync::atomic::Ordering;
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::client::{Api, IMPORT_GRANTS};
use crate::fake_adp::{self, FakeAdp};
use crate::fake_mtls::stranger_certificate;
use crate::harness::{Backend, TestServer};
use crate::integrations::integration_server;
use crate::quickbooks::{plugin_kv_of, record_keys};

const ID: &str = "adp-workforce-now";

struct World {
    api: Api,
    srv: TestServer,
    fake: FakeAdp,
    provider: String,
    _roots: tempfile::NamedTempFile,
}

async fn world(backend: Backend, scheduler: bool) -> Option<World> {
    let fake = FakeAdp::start().await;
    // The fake's CA stands in for the public roots ADP's server certificate chains to.
    let roots = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(roots.path(), &fake.pki.ca_pem).unwrap();
    let path = roots.path().to_path_buf();
    let (srv, api, provider) =
        integration_server(backend, fake.port, &fake_adp::HOSTS, scheduler, move |c| {
            c.http_extra_roots = Some(path);
        })
        .await?;
    let w = World {
        api,
        srv,
        provider,
        _roots: roots,
        fake,
    };
    let (cert, key) = (
        w.fake.pki.client_cert.clone(),
        w.fake.pki.client_key.clone(),
    );
    w.set_app(&cert, &key).await;
    Some(w)
}

impl World {
    /// The provider's ADP app: its certificate and key, and the fake's URLs.
    async fn set_app(&self, cert: &str, key: &str) {
        let body = self
            .api
            .ok(
                Method::PUT,
                &format!("/provider/plugins/{ID}/connections/adp"),
                &self.provider,
                Some(json!({
                    "settings": {"client_certificate": cert, "client_key": key},
                    "urls": {
                        "token": self.fake.url(fake_adp::ACCOUNTS, "/auth/oauth/v2/token"),
                        "api": self.fake.url(fake_adp::API, ""),
                    },
                })),
            )
            .await;
        assert!(!body.to_string().contains("PRIVATE KEY"), "{body}");
    }

    /// A business on `template` with its own ADP employer of `workers` workers, the plugin
    /// installed with `config`, its client credentials entered.
    async fn business(&self, slug: &str, workers: u32, config: Value) -> (String, String) {
        let owner = self.api.tenant_on(&self.provider, slug, "hvac").await;
        let client_id = format!("adp-client-{slug}");
        let secret = format!("adp-secret-{slug}-7f3e9a");
        self.fake.employer(&client_id, &secret, workers);
        let (status, body) = self
            .api
            .call(
                Method::PUT,
                &format!("/provider/tenants/{slug}/plugins/{ID}"),
                Some(&self.provider),
                Some(json!({
                    "grants": IMPORT_GRANTS,
                    "config": config,
                    "quotas": {"record-writes": 500, "record-reads": 1000, "http-requests": 50},
                })),
            )
            .await;
        assert!(status == 200 || status == 201, "{body}");
        let body = self
            .api
            .ok(
                Method::PUT,
                &format!("/api/connections/{ID}/adp"),
                &owner,
                Some(json!({"credentials": {"client_id": client_id, "client_secret": secret}})),
            )
            .await;
        assert_eq!(body["status"], "connected", "{body}");
        assert!(!body.to_string().contains(&secret), "{body}");
        (owner, client_id)
    }

    async fn run(&self, token: &str, schedule: &str) -> Value {
        self.api.run_schedule(token, ID, schedule).await
    }

    async fn employees(&self, token: &str) -> Vec<Value> {
        self.api.records(token, "employee").await
    }
}

fn by_aoid<'a>(employees: &'a [Value], aoid: &str) -> &'a Value {
    employees
        .iter()
        .find(|e| e["data"]["adp"]["associate_oid"] == aoid)
        .unwrap_or_else(|| panic!("no employee {aoid}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_sqlite() {
    workers_and_events_keep_employees_in_step(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_postgres() {
    workers_and_events_keep_employees_in_step(Backend::Postgres).await;
}

async fn workers_and_events_keep_employees_in_step(backend: Backend) {
    let Some(w) = world(backend, false).await else {
        return;
    };
    let mapping = json!({"custom_fields": [{"name": "EPA 608", "to": "certifications", "label": "EPA 608 certified"}]});
    let (owner, client) = w.business("crewco", 250, mapping).await;
    let (other, other_client) = w.business("rivalco", 3, json!({})).await;

    // 250 workers over 3 pages, then the 204 past the end, in one run (the quota holds a
    // page of 100 per 200 writes).
    let runs = w.api.import_until_done(&owner, ID, 3).await;
    assert_eq!(runs, 1);
    let pages: Vec<String> = w
        .fake
        .requests_of(&client)
        .into_iter()
        .filter(|r| r.starts_with("GET /hr/v2/workers?"))
        .collect();
    assert_eq!(
        pages,
        [
            "GET /hr/v2/workers?$top=100&$skip=0",
            "GET /hr/v2/workers?$top=100&$skip=100",
            "GET /hr/v2/workers?$top=100&$skip=200",
            "GET /hr/v2/workers?$top=100&$skip=250",
        ]
    );
    let employees = w.employees(&owner).await;
    assert_eq!(employees.len(), 250);
    let mut keys: Vec<&str> = employees
        .iter()
        .map(|e| e["data"]["adp"]["associate_oid"].as_str().unwrap())
        .collect();
    keys.sort_unstable();
    keys.dedup();
    assert_eq!(keys.len(), 250, "one employee per worker");
    let first = by_aoid(&employees, &FakeAdp::aoid(0));
    assert_eq!(first["data"]["name"], "Tech0 Of adp-client-crewco");
    assert_eq!(first["data"]["email"], "tech0@adp-client-crewco.example");
    assert_eq!(first["data"]["job_title"], "Lead Technician");
    assert_eq!(first["data"]["department"], "Field Service");
    assert_eq!(first["data"]["status"], "active");
    assert_eq!(
        first["data"]["certifications"],
        json!(["EPA 608 certified"])
    );
    assert_eq!(
        by_aoid(&employees, &FakeAdp::aoid(1))["data"]["certifications"],
        json!([])
    );
    assert_eq!(first["data"]["adp"]["payroll_file_number"], "000000");

    // A 429 on the second page of the next sweep ends the run, saying when to come back;
    // the next run resumes at that page.
    *w.fake.state.throttle_skip.lock().unwrap() = Some(100);
    let throttled = w.run(&owner, "import").await;
    assert_ne!(throttled["status"], "ok", "{throttled}");
    assert!(
        throttled.to_string().contains("retry after 30 s"),
        "{throttled}"
    );
    let cursor = w
        .api
        .action_output(&owner, ID, "import-status", json!({}))
        .await;
    assert_eq!(cursor["cursor"]["skip"], 100, "{cursor}");

    // The sweep completes, finding every worker as it is: nothing is written again.
    let versions: Vec<i64> = employees
        .iter()
        .map(|e| e["version"].as_i64().unwrap())
        .collect();
    let before = w.fake.requests_of(&client).len();
    w.api.import_until_done(&owner, ID, 3).await;
    assert_eq!(
        w.fake.requests_of(&client)[before],
        "GET /hr/v2/workers?$top=100&$skip=100"
    );
    let again = w.employees(&owner).await;
    assert_eq!(again.len(), 250);
    assert_eq!(
        again
            .iter()
            .map(|e| e["version"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        versions
    );

    // A termination and a hire arrive through the event queue, with an event about
    // something else; the first worker read fails, so nothing is acknowledged that run.
    let fired = FakeAdp::aoid(7);
    w.fake.terminate(&client, &fired, "2026-11-27");
    let hired = w.fake.hire(&client, 900);
    w.fake.queue_other(&client);
    w.fake.state.failing_worker_reads.store(1, Ordering::SeqCst);
    let run = w.run(&owner, "events").await;
    assert_ne!(run["status"], "ok", "{run}");
    assert_eq!(
        w.fake.queue_len(&client),
        3,
        "nothing acknowledged before it is stored"
    );
    let run = w.run(&owner, "events").await;
    assert_eq!(run["status"], "ok", "{run}");
    assert_eq!(w.fake.queue_len(&client), 0);
    let employees = w.employees(&owner).await;
    assert_eq!(employees.len(), 251);
    let gone = by_aoid(&employees, &fired);
    assert_eq!(gone["data"]["status"], "terminated", "marked, not deleted");
    assert_eq!(gone["data"]["terminated_on"], "2026-11-27");
    assert_eq!(by_aoid(&employees, &hired)["data"]["status"], "active");
    let acks = w
        .fake
        .requests_of(&client)
        .iter()
        .filter(|r| r.starts_with("DELETE "))
        .count();
    assert_eq!(acks, 3);
    // A message whose worker ADP refuses to show fails the run, and after five tries is
    // acknowledged unhandled and listed, so the queue moves on.
    w.fake.terminate(&client, &FakeAdp::aoid(8), "2026-11-28");
    w.fake.state.refused_worker_reads.store(5, Ordering::SeqCst);
    for _ in 0..4 {
        assert_ne!(w.run(&owner, "events").await["status"], "ok");
        assert_eq!(w.fake.queue_len(&client), 1);
    }
    assert_eq!(w.run(&owner, "events").await["status"], "ok");
    assert_eq!(w.fake.queue_len(&client), 0);
    let status = w
        .api
        .action_output(&owner, ID, "import-status", json!({}))
        .await;
    let dropped = status["dropped_events"].as_array().unwrap();
    assert_eq!(dropped.len(), 1, "{status}");
    assert!(
        dropped[0]["error"]
            .as_str()
            .unwrap()
            .contains("not entitled to read this worker"),
        "{status}"
    );

    // An empty queue is one request and a 204.
    let before = w.fake.requests_of(&client).len();
    assert_eq!(w.run(&owner, "events").await["status"], "ok");
    assert_eq!(w.fake.requests_of(&client).len(), before + 1);

    // ADP revoked the token: the host asks for a new one on the 401, once.
    let tokens = w.fake.state.token_requests.load(Ordering::SeqCst);
    w.fake.revoke_tokens();
    assert_eq!(w.run(&owner, "events").await["status"], "ok");
    assert_eq!(
        w.fake.state.token_requests.load(Ordering::SeqCst),
        tokens + 1
    );

    // The other employer's import sees only its own workers; neither tenant sees the other's.
    w.api.import_until_done(&other, ID, 2).await;
    assert_eq!(w.employees(&other).await.len(), 3);
    assert_eq!(w.employees(&owner).await.len(), 251);
    assert!(
        w.fake
            .requests_of(&other_client)
            .iter()
            .all(|r| !r.contains("AOID000000000007"))
    );
    assert_eq!(record_keys(&w.srv, ID).await, 254);
    // Neither the plugin's storage nor the logs hold a credential or the app's key.
    let kv = plugin_kv_of(&w.srv, ID).await;
    assert!(
        !kv.contains("adp-secret") && !kv.contains("adp-at-"),
        "{kv}"
    );
    let logs = crate::integrations::logs();
    assert!(
        !logs.contains("adp-secret-") && !logs.contains("adp-at-") && !logs.contains("PRIVATE KEY"),
        "a secret in the logs"
    );
}

/// Moves a time entry to `approved`; its id.
async fn approve(w: &World, owner: &str, entry: &Value) -> String {
    let id = entry["id"].as_str().unwrap().to_string();
    w.api
        .ok(
            Method::PATCH,
            &format!("/api/records/time_entry/{id}"),
            owner,
            Some(json!({"stage": "approved", "version": entry["version"]})),
        )
        .await;
    id
}

/// A new time entry of `employee`: submitted, `regular` hours (and `overtime`) on `day`.
async fn entry(
    w: &World,
    owner: &str,
    employee: &Value,
    day: &str,
    regular: f64,
    overtime: f64,
) -> Value {
    w.api
        .ok(
            Method::POST,
            "/api/records/time_entry",
            owner,
            Some(json!({"data": {
                "employee_id": employee["id"], "work_date": day,
                "regular_hours": regular, "overtime_hours": overtime,
            }})),
        )
        .await
}

/// A week (Monday 2026-11-16 to Friday) for two technicians, approved; one more entry
/// still submitted and one in the current week.
async fn time_entries(w: &World, owner: &str, employees: &[Value]) -> Vec<String> {
    let mut ids = Vec::new();
    for (n, employee) in employees.iter().take(2).enumerate() {
        for day in 16..=20 {
            let overtime = if n == 0 && day == 20 { 3.0 } else { 0.0 };
            let entry = entry(w, owner, employee, &format!("2026-11-{day}"), 8.0, overtime).await;
            ids.push(approve(w, owner, &entry).await);
        }
    }
    for (day, approved) in [("2026-11-17", false), ("2999-01-04", true)] {
        let entry = entry(w, owner, &employees[2], day, 4.0, 0.0).await;
        if approved {
            approve(w, owner, &entry).await;
        }
    }
    ids
}

async fn stages(w: &World, owner: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = w
        .api
        .records(owner, "time_entry")
        .await
        .iter()
        .map(|e| {
            (
                e["data"]["work_date"].as_str().unwrap().to_string(),
                e["stage"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approved_hours_reach_payroll_once() {
    let Some(w) = world(Backend::Sqlite, false).await else {
        return;
    };
    let payroll = json!({"payroll": {"batch_id": "WEEK-47", "frequency": "weekly", "period_anchor": "2026-11-02"}});
    let (owner, client) = w.business("payco", 3, payroll).await;
    w.api.import_until_done(&owner, ID, 2).await;
    let mut employees = w.employees(&owner).await;
    employees.sort_by(|a, b| {
        a["data"]["adp"]["associate_oid"]
            .as_str()
            .cmp(&b["data"]["adp"]["associate_oid"].as_str())
    });
    let week = time_entries(&w, &owner, &employees).await;

    // ADP is down for maintenance (503, Retry-After): nothing is taken, the run says so.
    w.fake.state.maintenance.store(1, Ordering::SeqCst);
    let run = w.run(&owner, "payroll").await;
    assert_ne!(run["status"], "ok", "{run}");
    assert!(run.to_string().contains("retry after 120 s"), "{run}");
    assert!(w.fake.batch(&client, "WEEK-47").is_empty());

    // The schedule and the action at once: each technician's week is appended once, as one
    // group each (an entry claimed by one run is left by the other).
    let path = format!("/api/plugins/{ID}/actions/push-hours");
    let (scheduled, pushed) = tokio::join!(
        w.run(&owner, "payroll"),
        w.api.call(
            Method::POST,
            &path,
            Some(&owner),
            Some(json!({"input": {}}))
        ),
    );
    assert_eq!(scheduled["status"], "ok", "{scheduled}");
    assert_eq!(pushed.0, 200, "{}", pushed.1);
    let batch = w.fake.batch(&client, "WEEK-47");
    assert_eq!(batch.len(), 2, "{batch:?}");
    let hours = |payee: &Value| -> Vec<(String, f64)> {
        payee["payrollProfilePayInputs"][0]["payInputs"][0]["earningInputs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["earningCode"]["codeValue"].as_str().unwrap().to_string(),
                    e["numberOfHours"].as_f64().unwrap(),
                )
            })
            .collect()
    };
    let first = batch
        .iter()
        .find(|p| p["associateOID"] == FakeAdp::aoid(0))
        .unwrap();
    assert_eq!(
        hours(first),
        [("R".to_string(), 40.0), ("O".to_string(), 3.0)]
    );
    let second = batch
        .iter()
        .find(|p| p["associateOID"] == FakeAdp::aoid(1))
        .unwrap();
    assert_eq!(hours(second), [("R".to_string(), 40.0)]);
    let entries = w.api.records(&owner, "time_entry").await;
    for id in &week {
        let entry = entries.iter().find(|e| e["id"] == id.as_str()).unwrap();
        assert_eq!(entry["stage"], "sent_to_payroll", "{entry}");
        assert_eq!(entry["data"]["adp"]["batch"], "WEEK-47");
        assert!(
            entry["data"]["adp"]["processing_job_id"]
                .as_str()
                .unwrap()
                .starts_with("WEEK-47_"),
            "{entry}"
        );
    }
    // Submitted and current-week entries wait.
    let waiting: Vec<(String, String)> = stages(&w, &owner)
        .await
        .into_iter()
        .filter(|(_, s)| s != "sent_to_payroll")
        .collect();
    assert_eq!(
        waiting,
        [
            ("2026-11-17".to_string(), "submitted".to_string()),
            ("2999-01-04".to_string(), "approved".to_string())
        ]
    );

    // Repeated runs send nothing again.
    let posts = w.fake.state.pay_posts.lock().unwrap().len();
    for _ in 0..2 {
        assert_eq!(w.run(&owner, "payroll").await["status"], "ok");
    }
    assert_eq!(w.fake.state.pay_posts.lock().unwrap().len(), posts);
    assert_eq!(w.fake.batch(&client, "WEEK-47").len(), 2);
    // Every post carried roleCode: practitioner (the fake refuses one without).
    assert_eq!(w.fake.state.without_role.load(Ordering::SeqCst), 0);

    // A late entry whose answer is lost (ADP took it, the 502 came back): held, not sent
    // again, until a person settles it.
    let late = entry(&w, &owner, &employees[2], "2026-11-18", 6.0, 0.0).await;
    let late_id = approve(&w, &owner, &late).await;
    w.fake.state.lose_answers.store(1, Ordering::SeqCst);
    let run = w.run(&owner, "payroll").await;
    assert_ne!(run["status"], "ok", "{run}");
    assert_eq!(w.fake.batch(&client, "WEEK-47").len(), 3);
    let posts = w.fake.state.pay_posts.lock().unwrap().len();
    assert_eq!(w.run(&owner, "payroll").await["status"], "ok");
    assert_eq!(
        w.fake.state.pay_posts.lock().unwrap().len(),
        posts,
        "held, not sent twice"
    );
    let status = w
        .api
        .action_output(&owner, ID, "payroll-status", json!({}))
        .await;
    let groups = status["groups"].as_object().unwrap();
    assert_eq!(groups.len(), 1, "{status}");
    let (group, held) = groups.iter().next().unwrap();
    assert_eq!(held["state"], "unconfirmed", "{status}");
    assert_eq!(held["entries"], json!([late_id]));
    // The office finds the hours in ADP's batch and settles the group as sent.
    let settled = w
        .api
        .action_output(
            &owner,
            ID,
            "push-hours",
            json!({"settle": {"group": group, "as": "sent"}}),
        )
        .await;
    assert_eq!(settled["as"], "sent", "{settled}");
    assert_eq!(
        w.api.record(&owner, "time_entry", &late_id).await["stage"],
        "sent_to_payroll"
    );
    assert_eq!(w.fake.batch(&client, "WEEK-47").len(), 3);

    // A gateway's bare 503 proves nothing either: held. The office finds nothing in ADP and
    // settles it as not sent; the next run sends it, once.
    let another = entry(&w, &owner, &employees[2], "2026-11-20", 3.0, 0.0).await;
    let another_id = approve(&w, &owner, &another).await;
    w.fake.state.gateway_errors.store(1, Ordering::SeqCst);
    assert_ne!(w.run(&owner, "payroll").await["status"], "ok");
    assert_eq!(w.fake.batch(&client, "WEEK-47").len(), 3);
    let status = w
        .api
        .action_output(&owner, ID, "payroll-status", json!({}))
        .await;
    let (group, held) = status["groups"].as_object().unwrap().iter().next().unwrap();
    assert_eq!(held["state"], "unconfirmed", "{status}");
    w.api
        .action_output(
            &owner,
            ID,
            "push-hours",
            json!({"settle": {"group": group, "as": "not_sent"}}),
        )
        .await;
    assert_eq!(w.run(&owner, "payroll").await["status"], "ok");
    assert_eq!(w.run(&owner, "payroll").await["status"], "ok");
    assert_eq!(w.fake.batch(&client, "WEEK-47").len(), 4);
    assert_eq!(
        w.api.record(&owner, "time_entry", &another_id).await["stage"],
        "sent_to_payroll"
    );

    // Hours ADP refuses (a file number it does not have) go back to the office with ADP's
    // words, and are not sent again until someone resubmits them.
    w.fake
        .state
        .employers
        .lock()
        .unwrap()
        .get_mut(&client)
        .unwrap()
        .workers[2]["workAssignments"][0]["payrollFileNumber"] = json!("999999");
    let refused = entry(&w, &owner, &employees[2], "2026-11-19", 2.0, 0.0).await;
    let refused_id = approve(&w, &owner, &refused).await;
    let run = w.run(&owner, "payroll").await;
    assert_eq!(run["status"], "ok", "{run}");
    let entry = w.api.record(&owner, "time_entry", &refused_id).await;
    assert_eq!(entry["stage"], "rejected", "{entry}");
    let reason = entry["data"]["rejected_reason"].as_str().unwrap();
    assert!(
        reason.contains("ADP payroll refused these hours")
            && reason.contains("payrollFileNumber \"000002\" is not on file"),
        "{reason}"
    );
    let posts = w.fake.state.pay_posts.lock().unwrap().len();
    assert_eq!(w.run(&owner, "payroll").await["status"], "ok");
    assert_eq!(w.fake.state.pay_posts.lock().unwrap().len(), posts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_certificate_is_required_on_every_handshake() {
    let Some(w) = world(Backend::Sqlite, false).await else {
        return;
    };
    // Straight to the fake without a client certificate: the handshake itself fails.
    let ca = reqwest::Certificate::from_pem(w.fake.pki.ca_pem.as_bytes()).unwrap();
    let direct = reqwest::Client::builder()
        .add_root_certificate(ca)
        .resolve(fake_adp::ACCOUNTS, ([127, 0, 0, 1], w.fake.port).into())
        .build()
        .unwrap();
    let refused = direct
        .post(w.fake.url(fake_adp::ACCOUNTS, "/auth/oauth/v2/token"))
        .body("grant_type=client_credentials")
        .send()
        .await;
    assert!(refused.is_err(), "{refused:?}");
    assert_eq!(w.fake.state.handshakes.load(Ordering::SeqCst), 0);

    // An app certificate ADP did not sign: connecting fails before any token request.
    let (cert, key) = stranger_certificate();
    w.set_app(&cert, &key).await;
    let owner = w.api.tenant_on(&w.provider, "tlsco", "hvac").await;
    w.fake.employer("adp-client-tlsco", "adp-secret-tls-1", 2);
    w.api
        .install(&w.provider, "tlsco", ID, &IMPORT_GRANTS, json!({}))
        .await;
    let (status, body) = w
        .api
        .call(
            Method::PUT,
            &format!("/api/connections/{ID}/adp"),
            Some(&owner),
            Some(json!({"credentials": {"client_id": "adp-client-tlsco", "client_secret": "adp-secret-tls-1"}})),
        )
        .await;
    assert!(status >= 400, "{status} {body}");
    assert!(!body.to_string().contains("adp-secret-tls-1"), "{body}");
    assert_eq!(w.fake.state.token_requests.load(Ordering::SeqCst), 0);
    // Without a connection, a run says what to do.
    let run = w.run(&owner, "import").await;
    assert_ne!(run["status"], "ok", "{run}");
    assert!(run.to_string().contains("not connected"), "{run}");

    // The provider sets the app's real certificate: connecting works.
    let (cert, key) = (
        w.fake.pki.client_cert.clone(),
        w.fake.pki.client_key.clone(),
    );
    w.set_app(&cert, &key).await;
    let body = w
        .api
        .ok(
            Method::PUT,
            &format!("/api/connections/{ID}/adp"),
            &owner,
            Some(json!({"credentials": {"client_id": "adp-client-tlsco", "client_secret": "adp-secret-tls-1"}})),
        )
        .await;
    assert_eq!(body["status"], "connected", "{body}");
    assert!(w.fake.state.handshakes.load(Ordering::SeqCst) >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspended_tenants_schedules_do_not_run() {
    let Some(w) = world(Backend::Sqlite, true).await else {
        return;
    };
    let (_, active) = w.business("awake", 2, json!({})).await;
    let (_, asleep) = w.business("asleep", 2, json!({})).await;
    w.api
        .ok(
            Method::POST,
            "/provider/tenants/asleep/suspend",
            &w.provider,
            Some(json!({})),
        )
        .await;
    // Every schedule of both is due (a second ago).
    let due = streamflow::store::now_micros() - 1_000_000;
    crate::integrations::sql(
        &w.srv,
        &format!("UPDATE plugin_schedules SET next_run_at = {due}"),
    )
    .await;
    let before = w.fake.requests_of(&asleep).len();
    // The scheduler runs the awake tenant's schedules (import, events) on its own.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while w
        .fake
        .requests_of(&active)
        .iter()
        .filter(|r| r.contains("event-notification"))
        .count()
        < 1
        || w.fake
            .requests_of(&active)
            .iter()
            .all(|r| !r.starts_with("GET /hr/v2/workers?"))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the scheduler never ran the awake tenant"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        w.fake.requests_of(&asleep).len(),
        before,
        "{:?}",
        w.fake.requests_of(&asleep)
    );
}
