//! The bundled QuickBooks Online plugin end to end, against the local fake of Intuit's
//! OAuth server and Accounting API: connect through the real authorize and callback
//! routes, invoice a completed job exactly once (retried, delivered twice, the server
//! killed mid-call), a stale SyncToken, throttling, payments back through both webhook
//! formats, a forged webhook, an expired connection; the plugin never sees a token.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use crate::client::{Api, PUBLIC, env_for, runs_of};
use crate::fake_qbo::{self, FakeQbo};
use crate::harness::{Backend, PROVIDER_EMAIL, PROVIDER_PASSWORD, TestServer};
use crate::integrations::integration_server;

const ID: &str = "quickbooks";
const GRANTS: [&str; 6] = [
    "http",
    "kv",
    "records:read",
    "records:read-pii",
    "records:write",
    "events",
];

struct World {
    api: Api,
    srv: Option<TestServer>,
    fake: FakeQbo,
    provider: String,
}

async fn world(backend: Backend) -> Option<World> {
    let fake = FakeQbo::start().await;
    let (srv, api, provider) =
        integration_server(backend, fake.port, &fake_qbo::HOSTS, true, |_| {}).await?;
    let w = World {
        api,
        srv: Some(srv),
        fake,
        provider,
    };
    w.app_settings().await;
    Some(w)
}

impl World {
    /// The provider's Intuit app, pointed at the fake.
    async fn app_settings(&self) {
        let f = &self.fake;
        let body = self
            .api
            .ok(
                Method::PUT,
                &format!("/provider/plugins/{ID}/connections/quickbooks"),
                &self.provider,
                Some(json!({
                    "settings": {"client_id": fake_qbo::CLIENT_ID, "client_secret": fake_qbo::CLIENT_SECRET, "verifier": fake_qbo::VERIFIER},
                    "urls": {
                        "authorize": f.url("appcenter.intuit.com", "/connect/oauth2"),
                        "token": f.url("oauth.platform.intuit.com", "/oauth2/v1/tokens/bearer"),
                        "api": f.url("sandbox-quickbooks.api.intuit.com", ""),
                        "revoke": f.url("developer.api.intuit.com", "/v2/oauth2/tokens/revoke"),
                    },
                })),
            )
            .await;
        assert!(!self.fake.leaked(&body.to_string()), "{body}");
    }

    /// A business on the HVAC template with QuickBooks installed and its company
    /// connected; returns the owner's token.
    async fn business(&self, slug: &str, realm: &str, config: Value) -> String {
        let owner = self.api.tenant(&self.provider, slug).await;
        self.api
            .install(&self.provider, slug, ID, &GRANTS, config)
            .await;
        self.fake.company(realm);
        let (status, page) = self.connect(&owner, realm).await;
        assert_eq!(status, 200, "{page}");
        owner
    }

    async fn connect(&self, token: &str, realm: &str) -> (u16, String) {
        self.api
            .connect_oauth(token, ID, "quickbooks", PUBLIC, &[("realm", realm)])
            .await
    }

    async fn job(&self, token: &str, data: Value) -> String {
        let body = self
            .api
            .ok(
                Method::POST,
                "/api/records/job",
                token,
                Some(json!({"stage": "in_progress", "data": data})),
            )
            .await;
        body["id"].as_str().unwrap().to_string()
    }

    /// Changes a job's data (and stage) at its current version.
    async fn change_job(
        &self,
        token: &str,
        id: &str,
        stage: Option<&str>,
        change: impl FnOnce(&mut Value),
    ) {
        let job = self.api.record(token, "job", id).await;
        let mut data = job["data"].clone();
        change(&mut data);
        let mut body = json!({"data": data, "version": job["version"]});
        if let Some(stage) = stage {
            body["stage"] = json!(stage);
        }
        self.api
            .ok(
                Method::PATCH,
                &format!("/api/records/job/{id}"),
                token,
                Some(body),
            )
            .await;
    }

    /// Moves a job to `completed` (with the fields the stage requires).
    async fn complete(&self, token: &str, id: &str) {
        self.change_job(token, id, Some("completed"), |data| {
            data["work_performed"] = json!("Replaced the capacitor");
            data["completed_on"] = json!("2026-12-01");
        })
        .await;
    }

    async fn quickbooks_of(&self, token: &str, id: &str) -> Value {
        self.api.record(token, "job", id).await["data"]["quickbooks"].clone()
    }

    /// Waits for the job's `data.quickbooks` to satisfy `check`.
    async fn wait_job(&self, token: &str, id: &str, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let q = self.quickbooks_of(token, id).await;
            if check(&q) {
                return q;
            }
            if Instant::now() > deadline {
                let runs = self.api.runs(token).await;
                panic!("job {id} never got there: {q}; runs {runs:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn action(&self, token: &str, name: &str, input: Value) -> (u16, Value) {
        self.api
            .call(
                Method::POST,
                &format!("/api/plugins/{ID}/actions/{name}"),
                Some(token),
                Some(json!({"input": input})),
            )
            .await
    }

    async fn webhook(&self, body: &[u8], signature: &str) -> (u16, String) {
        let answer = self
            .api
            .http
            .post(format!("{}/webhooks/{ID}", self.api.base))
            .header("content-type", "application/json")
            .header("intuit-signature", signature)
            .body(body.to_vec())
            .send()
            .await
            .unwrap();
        (answer.status().as_u16(), answer.text().await.unwrap())
    }

    fn srv(&self) -> &TestServer {
        self.srv.as_ref().unwrap()
    }

    /// Nothing the plugin was given, wrote or logged holds a token or secret.
    async fn assert_plugin_saw_no_credentials(&self, token: &str) {
        let runs = self.api.runs(token).await;
        assert!(!self.fake.leaked(&serde_json::to_string(&runs).unwrap()));
        let kv = plugin_kv_of(self.srv(), ID).await;
        assert!(!kv.is_empty());
        assert!(
            !self.fake.leaked(&kv),
            "a credential in the plugin's kv: {kv}"
        );
        assert!(
            !self.fake.leaked(&crate::integrations::logs()),
            "a credential in a log line"
        );
    }
}

/// How many records `plugin` keeps under keys.
pub(crate) async fn record_keys(srv: &TestServer, plugin: &str) -> i64 {
    streamflow::on_pool!(streamflow::store::test_support::pool(&srv.state.store), pool => {
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM record_keys WHERE plugin_id = $1")
            .bind(plugin)
            .fetch_one(pool)
            .await
            .unwrap()
    })
}

/// Every kv value of one plugin, as text.
pub(crate) async fn plugin_kv_of(srv: &TestServer, plugin: &str) -> String {
    streamflow::on_pool!(streamflow::store::test_support::pool(&srv.state.store), pool => {
        let rows: Vec<(String, Vec<u8>)> =
            sqlx::query_as("SELECT key, value FROM plugin_kv WHERE plugin_id = $1")
                .bind(plugin)
                .fetch_all(pool)
                .await
                .unwrap();
        rows.into_iter()
            .map(|(k, v)| format!("{k}={}\n", String::from_utf8_lossy(&v)))
            .collect()
    })
}

fn one_done(runs: &[Value]) -> bool {
    runs_of(runs, ID).iter().any(|r| r["status"] == "done")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoices_sqlite() {
    invoices_exactly_once_and_payments_back(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoices_postgres() {
    invoices_exactly_once_and_payments_back(Backend::Postgres).await;
}

async fn invoices_exactly_once_and_payments_back(backend: Backend) {
    let Some(w) = world(backend).await else {
        return;
    };
    let realm = "4620816365";
    let owner = w
        .business(
            "comfort",
            realm,
            json!({"invoiced_stage": "invoiced", "paid_stage": "paid"}),
        )
        .await;

    // A completed job: one customer (by name, with an apostrophe the query must escape),
    // one invoice at the job's amount with the default service item.
    let job = w
        .job(&owner, json!({"title": "No cool service call", "customer_name": "King's Groceries", "customer_phone": "(555) 555-0100", "amount": 389.5}))
        .await;
    w.complete(&owner, &job).await;
    let q = w
        .wait_job(&owner, &job, |q| q["invoice_id"].is_string())
        .await;
    assert_eq!(w.fake.invoices(realm).len(), 1);
    let customers = w.fake.customers(realm);
    assert_eq!(customers.len(), 1);
    assert_eq!(customers[0]["DisplayName"], "King's Groceries");
    assert_eq!(
        customers[0]["PrimaryPhone"]["FreeFormNumber"],
        "(555) 555-0100"
    );
    let invoice = &w.fake.invoices(realm)[0];
    assert_eq!(invoice["TotalAmt"], 389.5);
    assert_eq!(
        invoice["Line"][0]["SalesItemLineDetail"]["ItemRef"]["value"],
        "1"
    );
    assert_eq!(invoice["TxnDate"], "2026-12-01");
    assert_eq!(invoice["DueDate"], "2026-12-31");
    assert_eq!(q["doc_number"], invoice["DocNumber"]);
    assert_eq!(q["total"], 389.5);
    assert_eq!(q["balance"], 389.5);
    assert_eq!(q["payment_status"], "unpaid");
    assert_eq!(q["realm_id"], realm);
    let record = w.api.record(&owner, "job", &job).await;
    assert_eq!(record["stage"], "invoiced", "{record}");

    // The action, retried: the stored mapping answers; no second invoice.
    for _ in 0..2 {
        let (status, out) = w
            .action(&owner, "create-invoice", json!({"job_id": job}))
            .await;
        assert_eq!(status, 200, "{out}");
        assert_eq!(out["output"]["invoice_id"], q["invoice_id"]);
    }
    // The job's mapping lost (as when a call's answer never arrived): the repeat carries
    // the same requestid, and QuickBooks answers with the first invoice.
    w.change_job(&owner, &job, None, |d| {
        d.as_object_mut().unwrap().remove("quickbooks");
    })
    .await;
    let (status, out) = w
        .action(&owner, "create-invoice", json!({"job_id": job}))
        .await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["output"]["invoice_id"], q["invoice_id"]);
    assert_eq!(w.fake.invoices(realm).len(), 1);
    assert_eq!(w.fake.customers(realm).len(), 1);

    // The event delivered twice: the second delivery finds the invoice.
    let runs = w.api.runs(&owner).await;
    let event = runs_of(&runs, ID)[0]["event_id"]
        .as_str()
        .unwrap()
        .to_string();
    redeliver(w.srv(), &event).await;
    w.api
        .wait_runs(&owner, "the redelivery", |runs| {
            runs_of(runs, ID)
                .iter()
                .any(|r| r["event_id"] == event.as_str() && r["status"] == "done")
        })
        .await;
    assert_eq!(w.fake.invoices(realm).len(), 1);

    // A second job for the same customer reuses it; QuickBooks throttles the first try
    // (429), the dispatcher tries again.
    w.fake.state.throttle.store(1, Ordering::SeqCst);
    let second = w
        .job(&owner, json!({"title": "Tune-up", "customer_name": "King's Groceries", "amount": 120,
            "line_items": [{"kind": "labor", "description": "Two hours", "quantity": 2, "unit_price": 45}, {"description": "Filter", "amount": 30}]}))
        .await;
    w.complete(&owner, &second).await;
    let q2 = w
        .wait_job(&owner, &second, |q| q["invoice_id"].is_string())
        .await;
    assert_eq!(w.fake.customers(realm).len(), 1, "the customer was reused");
    assert_eq!(w.fake.invoices(realm).len(), 2);
    let invoice = w.fake.invoices(realm)[1].clone();
    assert_eq!(invoice["TotalAmt"], 120.0);
    assert_eq!(invoice["Line"][0]["Amount"], 90.0);
    assert_eq!(invoice["Line"][0]["SalesItemLineDetail"]["Qty"], 2.0);
    let runs = w.api.runs(&owner).await;
    let throttled = runs_of(&runs, ID)
        .into_iter()
        .find(|r| r["attempts"].as_i64().unwrap_or(0) >= 2)
        .unwrap_or_else(|| panic!("a run retried after the 429: {runs:?}"));
    assert_eq!(throttled["status"], "done");

    // A stale SyncToken: the invoice was changed in QuickBooks; the update re-reads it.
    let invoice_id = q2["invoice_id"].as_str().unwrap().to_string();
    w.fake.edit_invoice(realm, &invoice_id);
    w.change_job(&owner, &second, None, |d| {
        d["line_items"][1]["amount"] = json!(55);
    })
    .await;
    let (status, out) = w
        .action(&owner, "update-invoice", json!({"job_id": second}))
        .await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(w.fake.state.stale_faults.load(Ordering::SeqCst), 1);
    assert_eq!(out["output"]["total"], 145.0);
    assert_eq!(w.fake.invoices(realm)[1]["TotalAmt"], 145.0);
    assert_eq!(w.fake.invoices(realm).len(), 2);

    // Payments back. A forged delivery changes nothing.
    let first_invoice = q["invoice_id"].as_str().unwrap().to_string();
    let payment = w.fake.pay(realm, &first_invoice, 389.5);
    let body = fake_qbo::legacy(realm, &[("Payment", &payment, "Create")]);
    let (status, _) = w.webhook(&body, &fake_qbo::sign(b"something else")).await;
    assert_eq!(status, 401);
    assert_eq!(
        w.quickbooks_of(&owner, &job).await["payment_status"],
        "unpaid"
    );
    // The legacy format, then the same delivery again (answered, not handled twice).
    let (status, text) = w.webhook(&body, &fake_qbo::sign(&body)).await;
    assert_eq!(status, 200, "{text}");
    let paid = w
        .wait_job(&owner, &job, |q| q["payment_status"] == "paid")
        .await;
    assert_eq!(paid["balance"], 0.0);
    let (status, text) = w.webhook(&body, &fake_qbo::sign(&body)).await;
    assert_eq!(status, 200);
    assert!(text.contains("already received"), "{text}");
    let record = w.api.record(&owner, "job", &job).await;
    assert_eq!(record["stage"], "paid", "{record}");
    // Paid, the invoice is closed: its kv mapping is gone, and a later change (the payment
    // reversed) still finds the job, by the note the invoice carries.
    assert!(
        !plugin_kv_of(w.srv(), ID)
            .await
            .contains(&format!("invoice:{first_invoice}="))
    );
    w.fake.pay(realm, &first_invoice, -389.5);
    let body = fake_qbo::legacy(realm, &[("Invoice", &first_invoice, "Update")]);
    let (status, text) = w.webhook(&body, &fake_qbo::sign(&body)).await;
    assert_eq!(status, 200, "{text}");
    w.wait_job(&owner, &job, |q| q["payment_status"] == "unpaid")
        .await;
    // CloudEvents: a partial payment of the second invoice, and an older invoice event
    // arriving after it (it re-reads the invoice, so it cannot move the balance back).
    w.fake.pay(realm, &invoice_id, 45.0);
    let body = fake_qbo::cloudevents(realm, &[("Invoice", &invoice_id, "updated")]);
    let (status, text) = w.webhook(&body, &fake_qbo::sign(&body)).await;
    assert_eq!(status, 200, "{text}");
    let partial = w
        .wait_job(&owner, &second, |q| q["payment_status"] == "partial")
        .await;
    assert_eq!(partial["balance"], 100.0);
    let late = fake_qbo::legacy(
        realm,
        &[
            ("Invoice", &invoice_id, "Update"),
            ("Invoice", "999", "Update"),
        ],
    );
    let (status, _) = w.webhook(&late, &fake_qbo::sign(&late)).await;
    assert_eq!(status, 200);
    assert_eq!(w.quickbooks_of(&owner, &second).await["balance"], 100.0);

    // Every call sent minorversion and asked for JSON.
    assert_eq!(w.fake.state.sloppy_calls.load(Ordering::SeqCst), 0);
    w.assert_plugin_saw_no_credentials(&owner).await;
}

/// Puts an event back in the outbox, as a redelivery after a lost acknowledgement would.
pub(crate) async fn redeliver(srv: &TestServer, event_id: &str) {
    let id = uuid::Uuid::parse_str(event_id).unwrap();
    streamflow::on_pool!(streamflow::store::test_support::pool(&srv.state.store), pool => {
        sqlx::query("DELETE FROM event_deliveries WHERE event_id = $1").bind(id).execute(pool).await.unwrap();
        sqlx::query("UPDATE events SET dispatched_at = NULL, attempts = 0, next_attempt_at = 0, claimed_until = NULL, failed_at = NULL WHERE id = $1")
            .bind(id).execute(pool).await.unwrap();
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_and_an_expired_connection_are_shown_to_the_admin() {
    let w = world(Backend::Sqlite).await.unwrap();
    let realm = "123145";
    let owner = w.business("refusals", realm, json!({})).await;
    let bystander_realm = "8880002";
    let bystander = w.business("bystander", bystander_realm, json!({})).await;

    // A validation fault is permanent: one attempt, QuickBooks' own words in the run.
    let job = w
        .job(&owner, json!({"title": "Huge", "customer_name": "Amy's Bird Sanctuary", "amount": 100_000_000_000.0_f64}))
        .await;
    w.complete(&owner, &job).await;
    let runs = w
        .api
        .wait_runs(&owner, "the refused invoice", |runs| {
            runs_of(runs, ID).iter().any(|r| r["status"] == "failed")
        })
        .await;
    let failed = runs_of(&runs, ID)
        .into_iter()
        .find(|r| r["status"] == "failed")
        .unwrap();
    assert_eq!(failed["attempts"], 1, "{failed}");
    let error = failed["error"].as_str().unwrap();
    assert!(
        error.contains("ValidationFault 6000") && error.contains("greater than 99,999,999,999"),
        "{error}"
    );
    assert!(w.fake.invoices(realm).is_empty());
    // Fixed, and tried again: QuickBooks would answer a repeated requestid with the same
    // refusal, so the new attempt is a new request.
    w.change_job(&owner, &job, None, |d| {
        d["amount"] = json!(1200);
    })
    .await;
    let (status, out) = w
        .action(&owner, "create-invoice", json!({"job_id": job}))
        .await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(w.fake.invoices(realm).len(), 1);
    assert_eq!(w.fake.invoices(realm)[0]["TotalAmt"], 1200.0);

    // An item the config names that QuickBooks does not have: said plainly.
    w.api
        .install(
            &w.provider,
            "refusals",
            ID,
            &GRANTS,
            json!({"service_item": "Gold plating"}),
        )
        .await;
    let job = w
        .job(
            &owner,
            json!({"title": "Small", "customer_name": "Amy's Bird Sanctuary", "amount": 10}),
        )
        .await;
    let (status, out) = w
        .action(&owner, "create-invoice", json!({"job_id": job}))
        .await;
    assert_eq!(status, 502, "{out}");
    assert!(
        out["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no item named \"Gold plating\""),
        "{out}"
    );
    let (status, out) = w.action(&owner, "create-invoice", json!({})).await;
    assert_eq!(status, 422, "{out}");

    // The refresh token is refused: the connection expires, the admin sees why.
    w.api
        .install(&w.provider, "refusals", ID, &GRANTS, json!({}))
        .await;
    w.fake.expire_access_tokens();
    w.fake.state.refuse_refresh.store(true, Ordering::SeqCst);
    let job = w
        .job(
            &owner,
            json!({"title": "After expiry", "customer_name": "Amy's Bird Sanctuary", "amount": 10}),
        )
        .await;
    w.complete(&owner, &job).await;
    let runs = w
        .api
        .wait_runs(&owner, "the expired connection", |runs| {
            runs_of(runs, ID).iter().any(|r| {
                r["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("connection expired"))
            })
        })
        .await;
    assert!(!w.fake.leaked(&serde_json::to_string(&runs).unwrap()));
    let connections = w
        .api
        .ok(Method::GET, "/api/connections", &owner, None)
        .await;
    let qb = connections["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["connection"] == "quickbooks")
        .unwrap();
    assert_eq!(qb["status"], "expired", "{qb}");
    // Another business's company and data were never touched, nor its connection.
    assert!(w.fake.invoices(bystander_realm).is_empty());
    assert!(w.fake.customers(bystander_realm).is_empty());
    assert!(runs_of(&w.api.runs(&bystander).await, ID).is_empty());
    let theirs = w
        .api
        .ok(Method::GET, "/api/connections", &bystander, None)
        .await;
    let theirs = theirs["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["connection"] == "quickbooks")
        .unwrap()
        .clone();
    assert_eq!(theirs["status"], "connected", "{theirs}");
    w.assert_plugin_saw_no_credentials(&owner).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_during_the_invoice_call_still_makes_one_invoice() {
    let fake = FakeQbo::start().await;
    let dir = tempfile::tempdir().unwrap();
    let database = format!("sqlite://{}", dir.path().join("sf.db").display());
    let (allow, resolve) = env_for(fake.port, &fake_qbo::HOSTS);
    let env = |data: &std::path::Path| -> Vec<(String, String)> {
        vec![
            ("STREAMFLOW_DATABASE_URL".into(), database.clone()),
            (
                "STREAMFLOW_SECRET_KEY".into(),
                "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=".into(),
            ),
            ("STREAMFLOW_DATA_DIR".into(), data.to_str().unwrap().into()),
            (
                "STREAMFLOW_PROVIDER_EMAIL".into(),
                crate::harness::PROVIDER_EMAIL.into(),
            ),
            (
                "STREAMFLOW_PROVIDER_PASSWORD".into(),
                crate::harness::PROVIDER_PASSWORD.into(),
            ),
            ("STREAMFLOW_PUBLIC_URL".into(), PUBLIC.into()),
            ("STREAMFLOW_HTTP_ALLOW_HOSTS".into(), allow.clone()),
            ("STREAMFLOW_HTTP_RESOLVE".into(), resolve.clone()),
        ]
    };
    let start = |data: &std::path::Path| {
        let vars = env(data);
        let pairs: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        crate::binary::spawn(&["serve"], dir.path(), &pairs)
    };
    let data = tempfile::tempdir().unwrap();
    let first = start(data.path());
    let w = World {
        api: Api::new(&first.base),
        srv: None,
        provider: String::new(),
        fake,
    };
    let provider = w.api.provider(PROVIDER_EMAIL, PROVIDER_PASSWORD).await;
    let w = World { provider, ..w };
    w.app_settings().await;
    let realm = "777001";
    let owner = w.business("killed", realm, json!({})).await;
    let job = w
        .job(
            &owner,
            json!({"title": "Furnace", "customer_name": "Jane Homeowner", "amount": 2400}),
        )
        .await;

    // QuickBooks stores the invoice but its answer is late; the server dies meanwhile.
    w.fake.state.hold_invoice_ms.store(60_000, Ordering::SeqCst);
    w.complete(&owner, &job).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while w.fake.state.invoice_posts.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "the invoice was never posted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut first = first;
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    assert_eq!(w.fake.invoices(realm).len(), 1);
    w.fake.state.hold_invoice_ms.store(0, Ordering::SeqCst);

    // Restarted, it delivers the event again; the repeat's requestid gets the first invoice.
    let second = start(data.path());
    let w = World {
        api: Api::new(&second.base),
        ..w
    };
    let q = w
        .wait_job(&owner, &job, |q| q["invoice_id"].is_string())
        .await;
    assert_eq!(
        w.fake.invoices(realm).len(),
        1,
        "{:?}",
        w.fake.invoices(realm)
    );
    assert_eq!(q["invoice_id"], w.fake.invoices(realm)[0]["Id"]);
    assert!(w.fake.state.invoice_posts.load(Ordering::SeqCst) >= 2);
    let runs = w.api.runs(&owner).await;
    assert!(one_done(&runs), "{runs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_name_reuses_the_customer_quickbooks_has() {
    let w = world(Backend::Sqlite).await.unwrap();
    let realm = "5550001";
    let owner = w.business("names", realm, json!({})).await;

    // Another request created the customer between the query and the create (6240): the
    // plugin looks again and uses that one.
    w.fake
        .state
        .lose_next_customer_race
        .store(true, Ordering::SeqCst);
    let job = w
        .job(
            &owner,
            json!({"title": "Raced", "customer_name": "Pat Race", "amount": 75}),
        )
        .await;
    let first_job = job.clone();
    let (status, out) = w
        .action(&owner, "create-invoice", json!({"job_id": job}))
        .await;
    assert_eq!(status, 200, "{out}");
    let customers = w.fake.customers(realm);
    assert_eq!(customers.len(), 1, "{customers:?}");
    assert_eq!(out["output"]["customer_id"], customers[0]["Id"]);
    assert_eq!(
        w.fake.invoices(realm)[0]["CustomerRef"]["value"],
        customers[0]["Id"]
    );

    // An inactive customer holds the name: found with inactive ones included, made active
    // (a sparse update at its SyncToken), and invoiced.
    let old = w.fake.inactive_customer(realm, "Old Client");
    let job = w
        .job(
            &owner,
            json!({"title": "Returning", "customer_name": "Old Client", "amount": 210}),
        )
        .await;
    w.complete(&owner, &job).await;
    let q = w
        .wait_job(&owner, &job, |q| q["invoice_id"].is_string())
        .await;
    assert_eq!(q["customer_id"], old.as_str());
    let customers = w.fake.customers(realm);
    assert_eq!(customers.len(), 2, "{customers:?}");
    let reactivated = customers.iter().find(|c| c["Id"] == old.as_str()).unwrap();
    assert_eq!(reactivated["Active"], true);
    assert_eq!(reactivated["SyncToken"], "4");

    // Voided in QuickBooks: the job says so (a zero balance is not a payment).
    let invoice = q["invoice_id"].as_str().unwrap().to_string();
    w.fake.void_invoice(realm, &invoice);
    let body = fake_qbo::legacy(realm, &[("Invoice", &invoice, "Void")]);
    let (status, text) = w.webhook(&body, &fake_qbo::sign(&body)).await;
    assert_eq!(status, 200, "{text}");
    let voided = w
        .wait_job(&owner, &job, |q| q["payment_status"] == "voided")
        .await;
    assert_eq!(voided["total"], 0.0);

    // A job deleted in StreamFlow while its invoice is open: a delivery naming that invoice
    // and another still updates the other.
    let raced_invoice = out["output"]["invoice_id"].as_str().unwrap().to_string();
    let (status, _) = w
        .api
        .call(
            Method::DELETE,
            &format!("/api/records/job/{first_job}"),
            Some(&owner),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let third = w
        .job(
            &owner,
            json!({"title": "Third", "customer_name": "Pat Race", "amount": 90}),
        )
        .await;
    let (status, made) = w
        .action(&owner, "create-invoice", json!({"job_id": third}))
        .await;
    assert_eq!(status, 200, "{made}");
    let third_invoice = made["output"]["invoice_id"].as_str().unwrap().to_string();
    w.fake.pay(realm, &raced_invoice, 10.0);
    w.fake.pay(realm, &third_invoice, 50.0);
    let body = fake_qbo::legacy(
        realm,
        &[
            ("Invoice", &raced_invoice, "Update"),
            ("Invoice", &third_invoice, "Update"),
        ],
    );
    let (status, text) = w.webhook(&body, &fake_qbo::sign(&body)).await;
    assert_eq!(status, 200, "{text}");
    let partial = w
        .wait_job(&owner, &third, |q| q["payment_status"] == "partial")
        .await;
    assert_eq!(partial["balance"], 40.0);
}
