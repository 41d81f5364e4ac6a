//! The integration plugins against the suite's local fakes (`tests/e2e/fake_qbo.rs`,
//! `tests/e2e/fake_st.rs`), in one process on SQLite, each beside a baseline taken in the
//! same run:
//! - **QuickBooks invoices**: `BENCH_INVOICES` (300) jobs invoiced one after another through
//!   the `create-invoice` action over the API, the customer and item already mapped (as in
//!   steady state: one QuickBooks call per invoice), against the same invoice requests sent
//!   straight to the fake. The difference is what the plugin and the host add per invoice
//!   (the API call, the sandbox, the connection's credentials, the record read and write,
//!   the kv mapping, the event).
//! - **ServiceTitan import**: `BENCH_JOBS` (5,000) jobs and a tenth as many customers
//!   imported by runs of the `import` schedule until its sweep completes (pages of 250, a
//!   run stores up to 1,000 records), against the same pages fetched straight from the fake
//!   and the same number of records created straight through the kernel.
//!
//! - **SAM.gov import**: `BENCH_NOTICES` (5,000) opportunities imported as scored leads by
//!   runs of the `import` schedule (pages of 1,000), against the same pages fetched straight
//!   from the fake.
//!
//! - **ADP workers**: `BENCH_WORKERS` (2,500) workers imported as employees by runs of the
//!   `import` schedule (pages of 100, ADP's maximum), over mutual TLS, against the same pages
//!   fetched straight from the fake with the same client certificate.
//!
//! - **Google LSA leads**: `BENCH_LEADS` (2,000) leads imported as scored leads by runs of
//!   the `poll` schedule, against the same searches sent straight to the fake; then the lag
//!   from a new lead in the fake to the scored lead in StreamFlow, `BENCH_LAG_SAMPLES` (30)
//!   times: the poll's own share, measured, beside the wait for the schedule's next run.
//!
//! Run: `cargo bench -p streamflow --bench connectors` (prints Markdown tables);
//! `BENCH_ONLY=invoices|import|sam|adp|lsa` picks one part.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use reqwest::Method;
use serde_json::{Value, json};
use streamflow::config::Config;
use streamflow::kernel::{NewId, NewRecord, WriteContext};

#[allow(dead_code)]
#[path = "../../tests/e2e/client.rs"]
mod client;
#[allow(dead_code)]
#[path = "../../tests/e2e/fake.rs"]
mod fake;
#[allow(dead_code)]
#[path = "../../tests/e2e/fake_adp.rs"]
mod fake_adp;
#[allow(dead_code)]
#[path = "../../tests/e2e/fake_google_ads.rs"]
mod fake_google_ads;
#[allow(dead_code)]
#[path = "../../tests/e2e/fake_mtls.rs"]
mod fake_mtls;
#[allow(dead_code)]
#[path = "../../tests/e2e/fake_qbo.rs"]
mod fake_qbo;
#[allow(dead_code)]
#[path = "../../tests/e2e/fake_sam.rs"]
mod fake_sam;
#[allow(dead_code)]
#[path = "../../tests/e2e/fake_st.rs"]
mod fake_st;

use client::{Api, PUBLIC};

const PROVIDER_EMAIL: &str = "bench@provider.test";
const PROVIDER_PASSWORD: &str = "bench-provider-password";
const GRANTS: [&str; 6] = [
    "http",
    "kv",
    "records:read",
    "records:read-pii",
    "records:write",
    "events",
];

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn wanted(part: &str) -> bool {
    std::env::var("BENCH_ONLY").map_or(true, |only| only == part)
}

/// Prints a table's header; each call of the returned closure prints one path's row
/// (`records` over its time).
fn rate_table(records: f64) -> impl Fn(&str, Duration) {
    println!("| path | records/s | total |\n|---|---:|---:|");
    move |name, t| {
        println!(
            "| {name} | {:.0} | {:.2} s |",
            records / t.as_secs_f64(),
            t.as_secs_f64()
        )
    }
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1e6
}

async fn invoices(api: &Api, provider: &str, qbo: &fake_qbo::FakeQbo) {
    let n: usize = env_or("BENCH_INVOICES", 300);
    api.ok(
        Method::PUT,
        "/provider/plugins/quickbooks/connections/quickbooks",
        provider,
        Some(json!({
            "settings": {"client_id": fake_qbo::CLIENT_ID, "client_secret": fake_qbo::CLIENT_SECRET, "verifier": fake_qbo::VERIFIER},
            "urls": {
                "authorize": qbo.url("appcenter.intuit.com", "/connect/oauth2"),
                "token": qbo.url("oauth.platform.intuit.com", "/oauth2/v1/tokens/bearer"),
                "api": qbo.url("sandbox-quickbooks.api.intuit.com", ""),
            },
        })),
    )
    .await;
    let owner = api.tenant(provider, "bench-qb").await;
    api.install(provider, "bench-qb", "quickbooks", &GRANTS, json!({}))
        .await;
    let realm = "9341450";
    qbo.company(realm);
    let (status, page) = api
        .connect_oauth(
            &owner,
            "quickbooks",
            "quickbooks",
            PUBLIC,
            &[("realm", realm)],
        )
        .await;
    assert_eq!(status, 200, "{page}");
    eprintln!("creating {n} jobs...");
    let mut jobs = Vec::with_capacity(n + 1);
    for i in 0..=n {
        let body = api
            .ok(
                Method::POST,
                "/api/records/job",
                &owner,
                Some(json!({"stage": "in_progress", "data": {"title": format!("Job {i}"), "customer_name": "Bench Customer", "amount": 100 + i}})),
            )
            .await;
        jobs.push(body["id"].as_str().unwrap().to_string());
    }
    let invoice = |job: String| {
        let (api, owner) = (&api, &owner);
        async move {
            let (status, out) = api
                .call(
                    Method::POST,
                    "/api/plugins/quickbooks/actions/create-invoice",
                    Some(owner),
                    Some(json!({"input": {"job_id": job}})),
                )
                .await;
            assert_eq!(status, 200, "{out}");
        }
    };
    // Warm-up: the customer and the item are looked up and mapped once.
    invoice(jobs[0].clone()).await;
    let mut through = Histogram::<u64>::new(3).unwrap();
    let started = Instant::now();
    for job in &jobs[1..] {
        let t = Instant::now();
        invoice(job.clone()).await;
        through.record(t.elapsed().as_nanos() as u64).unwrap();
    }
    let through_total = started.elapsed();

    // The fake alone: the same invoice bodies, straight to it with a token it issued.
    let token = {
        let issued = qbo.state.issued.lock().unwrap();
        issued
            .iter()
            .rev()
            .find(|t| t.starts_with("eyJ"))
            .unwrap()
            .clone()
    };
    let customer = qbo.customers(realm)[0]["Id"].clone();
    let http = reqwest::Client::new();
    let mut direct = Histogram::<u64>::new(3).unwrap();
    let started = Instant::now();
    for i in 0..n {
        let url = qbo.url(
            "127.0.0.1",
            &format!("/v3/company/{realm}/invoice?requestid=bench-direct-{i}&minorversion=75"),
        );
        let body = json!({"CustomerRef": {"value": customer}, "TxnDate": "2026-12-07", "DueDate": "2027-01-06",
            "Line": [{"DetailType": "SalesItemLineDetail", "Amount": 100 + i, "Description": format!("Job {i}"),
                      "SalesItemLineDetail": {"ItemRef": {"value": "1", "name": "Services"}}}]});
        let t = Instant::now();
        let answer = http
            .post(url)
            .bearer_auth(&token)
            .header("Accept", "application/json")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
        let _: Value = answer.json().await.unwrap();
        direct.record(t.elapsed().as_nanos() as u64).unwrap();
    }
    let direct_total = started.elapsed();
    assert_eq!(qbo.invoices(realm).len(), 2 * n + 1);

    println!("\n### QuickBooks invoices ({n} jobs, one after another, after a warm-up invoice)\n");
    println!("| path | invoices/s | p50 | p99 |\n|---|---:|---:|---:|");
    let rate = |total: Duration| n as f64 / total.as_secs_f64();
    println!(
        "| invoice request straight to the fake | {:.0} | {:.2} ms | {:.2} ms |",
        rate(direct_total),
        ms(&direct, 0.5),
        ms(&direct, 0.99)
    );
    println!(
        "| `create-invoice` action through the API and the plugin | {:.0} | {:.2} ms | {:.2} ms |",
        rate(through_total),
        ms(&through, 0.5),
        ms(&through, 0.99)
    );
    let overhead = (through_total.as_secs_f64() - direct_total.as_secs_f64()) / n as f64 * 1e3;
    println!(
        "\nPlugin and host overhead per invoice, the fake's HTTP cost subtracted: {overhead:.2} ms (mean), {:.2} ms (p50)",
        ms(&through, 0.5) - ms(&direct, 0.5)
    );
}

async fn import(
    api: &Api,
    provider: &str,
    st: &fake_st::FakeSt,
    state: &streamflow::api::AppState,
) {
    let jobs: u32 = env_or("BENCH_JOBS", 5000);
    let customers = (jobs / 10).max(1);
    api.ok(
        Method::PUT,
        "/provider/plugins/servicetitan/connections/servicetitan",
        provider,
        Some(json!({
            "settings": {"app_key": fake_st::APP_KEY},
            "urls": {
                "token": st.url("auth-integration.servicetitan.io", "/connect/token"),
                "api": st.url("api-integration.servicetitan.io", ""),
            },
        })),
    )
    .await;
    let owner = api.tenant(provider, "bench-st").await;
    st.tenant("8310", "cid.bench", "cs1.bench-secret", customers, jobs);
    let (status, body) = api
        .call(
            Method::PUT,
            "/provider/tenants/bench-st/plugins/servicetitan",
            Some(provider),
            Some(json!({
                "grants": GRANTS,
                "config": {"page_size": 250},
                "quotas": {"record-writes": 1000, "record-reads": 10000, "http-requests": 200, "wall-ms": 120000},
            })),
        )
        .await;
    assert!(status == 200 || status == 201, "{body}");
    api.ok(
        Method::PUT,
        "/api/connections/servicetitan/servicetitan",
        &owner,
        Some(json!({"credentials": {"client_id": "cid.bench", "client_secret": "cs1.bench-secret", "tenant_id": "8310"}})),
    )
    .await;
    let total = (jobs + customers) as f64;
    let started = Instant::now();
    let runs = api.import_until_done(&owner, "servicetitan", 100).await;
    let import_total = started.elapsed();

    // The fake alone: the same pages fetched straight from it.
    let token = st.state.issued.lock().unwrap()[0].clone();
    let http = reqwest::Client::new();
    let started = Instant::now();
    let mut fetched = 0;
    for resource in ["crm/v2/tenant/8310/customers", "jpm/v2/tenant/8310/jobs"] {
        for page in 1.. {
            let url = st.url(
                "127.0.0.1",
                &format!("/{resource}?page={page}&pageSize=250&sort=%2BId&active=Any"),
            );
            let answer: Value = http
                .get(url)
                .bearer_auth(&token)
                .header("ST-App-Key", fake_st::APP_KEY)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            fetched += answer["data"].as_array().unwrap().len();
            if answer["hasMore"] != true {
                break;
            }
        }
    }
    let fetch_total = started.elapsed();
    assert_eq!(fetched as f64, total);

    // The kernel alone: as many records created straight through it.
    let tenant = state
        .store
        .create_tenant("bench-kernel", "bench-kernel")
        .await
        .unwrap()
        .unwrap();
    let scope = tenant.scope();
    let records = state.kernel.records();
    let started = Instant::now();
    for i in 0..total as usize {
        let ctx = WriteContext::direct(scope, "bench".into(), None);
        records
            .create(
                &ctx,
                NewRecord {
                    id: NewId::Fresh,
                    record_type: "job".into(),
                    stage: None,
                    data: json!({"title": format!("Job {i}"), "servicetitan": {"id": i.to_string(), "status": "Scheduled"}}),
                },
            )
            .await
            .unwrap();
    }
    let kernel_total = started.elapsed();

    println!("\n### ServiceTitan import ({jobs} jobs and {customers} customers, pages of 250)\n");
    let row = rate_table(total);
    row("pages fetched straight from the fake", fetch_total);
    row(
        "records created straight through the kernel, one after another",
        kernel_total,
    );
    row(
        &format!("the plugin's import ({runs} runs of the schedule)"),
        import_total,
    );
}

async fn sam(api: &Api, provider: &str, fake: &fake_sam::FakeSam) {
    let n: usize = env_or("BENCH_NOTICES", 5000);
    api.ok(
        Method::PUT,
        "/provider/plugins/sam-gov/connections/sam",
        provider,
        Some(json!({"urls": {"api": fake.url("")}})),
    )
    .await;
    let owner = api
        .tenant_on(provider, "bench-sam", "gov-contracting")
        .await;
    let (status, body) = api
        .call(
            Method::PUT,
            "/provider/tenants/bench-sam/plugins/sam-gov",
            Some(provider),
            Some(json!({
                "grants": client::IMPORT_GRANTS,
                "config": {"naics": ["561210"], "daily_requests": 10000, "page_size": 1000},
                "quotas": {"record-writes": 1000, "record-reads": 2000, "wall-ms": 120000},
            })),
        )
        .await;
    assert!(status == 200 || status == 201, "{body}");
    api.ok(
        Method::PUT,
        "/api/connections/sam-gov/sam",
        &owner,
        Some(json!({"credentials": {"api_key": fake_sam::API_KEY}})),
    )
    .await;
    let today = time::OffsetDateTime::now_utc().date();
    fake.publish("B", n, "561210", today);
    let started = Instant::now();
    let runs = api.import_until_done(&owner, "sam-gov", 100).await;
    let import_total = started.elapsed();
    let http = reqwest::Client::new();
    let from = (today - time::Duration::days(30))
        .format(time::macros::format_description!("[month]/[day]/[year]"))
        .unwrap();
    let to = today
        .format(time::macros::format_description!("[month]/[day]/[year]"))
        .unwrap();
    let started = Instant::now();
    let mut fetched = 0;
    for page in 0.. {
        let url = format!(
            "http://127.0.0.1:{}/opportunities/v2/search?api_key={}&postedFrom={from}&postedTo={to}&ncode=561210&limit=1000&offset={page}",
            fake.port,
            fake_sam::API_KEY
        );
        let answer = http.get(url).send().await.unwrap();
        if answer.status() == 404 {
            break;
        }
        let body: Value = answer.json().await.unwrap();
        let got = body["opportunitiesData"].as_array().unwrap().len();
        fetched += got;
        if got < 1000 {
            break;
        }
    }
    let fetch_total = started.elapsed();
    assert_eq!(fetched, n);
    println!("\n### SAM.gov import ({n} opportunities, pages of 1,000)\n");
    let row = rate_table(n as f64);
    row("pages fetched straight from the fake", fetch_total);
    row(
        &format!("the plugin's import, each lead scored ({runs} runs)"),
        import_total,
    );
}

async fn adp(api: &Api, provider: &str, fake: &fake_adp::FakeAdp) {
    let n: u32 = env_or("BENCH_WORKERS", 2500);
    api.ok(
        Method::PUT,
        "/provider/plugins/adp-workforce-now/connections/adp",
        provider,
        Some(json!({
            "settings": {"client_certificate": fake.pki.client_cert, "client_key": fake.pki.client_key},
            "urls": {
                "token": fake.url(fake_adp::ACCOUNTS, "/auth/oauth/v2/token"),
                "api": fake.url(fake_adp::API, ""),
            },
        })),
    )
    .await;
    let owner = api.tenant(provider, "bench-adp").await;
    fake.employer("bench-adp", "bench-adp-secret", n);
    let (status, body) = api
        .call(
            Method::PUT,
            "/provider/tenants/bench-adp/plugins/adp-workforce-now",
            Some(provider),
            Some(json!({
                "grants": client::IMPORT_GRANTS,
                "quotas": {"record-writes": 1000, "record-reads": 2000, "http-requests": 50, "wall-ms": 120000},
            })),
        )
        .await;
    assert!(status == 200 || status == 201, "{body}");
    api.ok(
        Method::PUT,
        "/api/connections/adp-workforce-now/adp",
        &owner,
        Some(
            json!({"credentials": {"client_id": "bench-adp", "client_secret": "bench-adp-secret"}}),
        ),
    )
    .await;
    let started = Instant::now();
    let runs = api
        .import_until_done(&owner, "adp-workforce-now", 100)
        .await;
    let import_total = started.elapsed();

    // The fake alone: the same pages, over the same mutual TLS, with a token of its own.
    let mut pem = fake.pki.client_cert.clone().into_bytes();
    pem.extend_from_slice(fake.pki.client_key.as_bytes());
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(fake.pki.ca_pem.as_bytes()).unwrap())
        .identity(reqwest::Identity::from_pem(&pem).unwrap())
        .resolve(fake_adp::API, ([127, 0, 0, 1], fake.port).into())
        .resolve(fake_adp::ACCOUNTS, ([127, 0, 0, 1], fake.port).into())
        .build()
        .unwrap();
    let started = Instant::now();
    let token: Value = http
        .post(fake.url(fake_adp::ACCOUNTS, "/auth/oauth/v2/token"))
        .basic_auth("bench-adp", Some("bench-adp-secret"))
        .body("grant_type=client_credentials")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = token["access_token"].as_str().unwrap().to_string();
    let mut fetched = 0;
    loop {
        let answer = http
            .get(fake.url(
                fake_adp::API,
                &format!("/hr/v2/workers?$top=100&$skip={fetched}"),
            ))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        if answer.status() == 204 {
            break;
        }
        let body: Value = answer.json().await.unwrap();
        fetched += body["workers"].as_array().unwrap().len();
    }
    let fetch_total = started.elapsed();
    assert_eq!(fetched, n as usize);
    println!("\n### ADP Workforce Now workers ({n} workers, pages of 100, mutual TLS)\n");
    let row = rate_table(f64::from(n));
    row("pages fetched straight from the fake", fetch_total);
    row(
        &format!("the plugin's import as employees ({runs} runs)"),
        import_total,
    );
}

async fn lsa(api: &Api, provider: &str, fake: &fake_google_ads::FakeGoogleAds) {
    use fake_google_ads as g;
    let n: u64 = env_or("BENCH_LEADS", 2000);
    let samples: usize = env_or("BENCH_LAG_SAMPLES", 30);
    api.ok(
        Method::PUT,
        "/provider/plugins/google-lsa/connections/google-ads",
        provider,
        Some(json!({
            "settings": {"client_id": g::CLIENT_ID, "client_secret": g::CLIENT_SECRET, "developer_token": g::DEVELOPER_TOKEN, "login_customer_id": g::MANAGER},
            "urls": {
                "authorize": fake.url("accounts.google.com", "/o/oauth2/v2/auth"),
                "token": fake.url("oauth2.googleapis.com", "/token"),
                "api": fake.url("googleads.googleapis.com", ""),
            },
        })),
    )
    .await;
    let customer = "1234567890";
    fake.account(customer, true);
    let owner = api.tenant(provider, "bench-lsa").await;
    let (status, body) = api
        .call(
            Method::PUT,
            "/provider/tenants/bench-lsa/plugins/google-lsa",
            Some(provider),
            Some(json!({
                "grants": client::IMPORT_GRANTS,
                "quotas": {"record-writes": 1000, "record-reads": 2000, "wall-ms": 120000},
            })),
        )
        .await;
    assert!(status == 200 || status == 201, "{body}");
    api.ok(
        Method::PUT,
        "/api/connections/google-lsa/google-ads",
        &owner,
        Some(json!({"credentials": {"customer_id": customer}})),
    )
    .await;
    let (status, page) = api
        .connect_oauth(&owner, "google-lsa", "google-ads", PUBLIC, &[])
        .await;
    assert_eq!(status, 200, "{page}");
    // Account time (America/Chicago in winter), as Google writes it.
    let account_time = |seconds_ago: i64| {
        (time::OffsetDateTime::now_utc()
            - time::Duration::hours(6)
            - time::Duration::seconds(seconds_ago))
        .format(time::macros::format_description!(
            "[year]-[month]-[day] [hour]:[minute]:[second]"
        ))
        .unwrap()
    };
    let kinds = ["PHONE_CALL", "MESSAGE", "BOOKING"];
    for i in 0..n {
        let phone = format!("+1512555{:04}", i % 10_000);
        let name = format!("Caller {i}");
        let email = format!("caller{i}@example.com");
        fake.add_lead(
            customer,
            g::lead(
                customer,
                1_000_000 + i,
                &account_time(60 + (n - i) as i64 * 30),
                kinds[(i % 3) as usize],
                "NEW",
                Some((&name, &phone, &email)),
            ),
        );
    }
    let started = Instant::now();
    let runs = api
        .sweep_until_done(&owner, "google-lsa", "poll", 100)
        .await;
    let import_total = started.elapsed();
    assert_eq!(api.records(&owner, "lead").await.len() as u64, n);

    // The fake alone: the plugin's searches sent again straight to it, in order.
    let searches = fake.searches_of(customer);
    let token = fake.state.issued.lock().unwrap()[0].clone();
    let http = reqwest::Client::new();
    let started = Instant::now();
    let mut fetched = 0;
    for s in &searches {
        let mut body = json!({"query": s.query});
        if let Some(t) = &s.page_token {
            body["pageToken"] = json!(t);
        }
        let answer: Value = http
            .post(fake.url(
                "127.0.0.1",
                &format!("/v26/customers/{customer}/googleAds:search"),
            ))
            .bearer_auth(&token)
            .header("developer-token", g::DEVELOPER_TOKEN)
            .header("login-customer-id", g::MANAGER)
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        fetched += answer["results"].as_array().map_or(0, Vec::len);
    }
    let fetch_total = started.elapsed();
    assert!(fetched as u64 >= n, "{fetched}");

    // Lag: a new lead in the fake, then the poll as the scheduler runs it, until the lead
    // is in StreamFlow with its score.
    let mut lag = Histogram::<u64>::new(3).unwrap();
    for k in 0..samples as u64 {
        let id = 5_000_000 + k;
        let since = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap();
        let started = Instant::now();
        fake.add_lead(
            customer,
            g::lead(
                customer,
                id,
                &account_time(0),
                "MESSAGE",
                "NEW",
                Some(("New caller", "+15125550000", "new@example.com")),
            ),
        );
        let run = api.run_schedule(&owner, "google-lsa", "poll").await;
        assert_eq!(run["status"], "ok", "{run}");
        let found = api
            .ok(
                Method::GET,
                &format!(
                    "/api/records/lead?updated_since={}",
                    since.replace('+', "%2B")
                ),
                &owner,
                None,
            )
            .await;
        lag.record(started.elapsed().as_nanos() as u64).unwrap();
        let newest = &found["items"][0];
        assert_eq!(
            newest["data"]["google_lsa"]["id"],
            id.to_string(),
            "{found}"
        );
        assert!(!newest["score"].is_null(), "{newest}");
    }
    println!("\n### Google LSA leads ({n} leads; the plugin's searches of up to 500 leads)\n");
    let row = rate_table(n as f64);
    row("the same searches sent straight to the fake", fetch_total);
    row(
        &format!("the plugin's import, each lead scored ({runs} runs)"),
        import_total,
    );
    println!("\n### Google LSA: a new lead in the fake to a scored lead ({samples} leads)\n");
    println!("| part | p50 | p99 |\n|---|---:|---:|");
    println!(
        "| the poll: search, lead stored and scored, read back over the API | {:.1} ms | {:.1} ms |",
        ms(&lag, 0.5),
        ms(&lag, 0.99)
    );
    // At the default schedule a new lead also waits for the next run: uniformly 0 to 5
    // minutes, plus up to one claim poll of the scheduler (1 s). Computed from the
    // measured poll, not measured (a sample would take minutes).
    let (interval, claim) = (300.0, 1.0);
    println!(
        "\nEnd to end at the default 5-minute schedule (computed: the wait for the next run, uniform over 0-{interval:.0} s plus up to {claim:.0} s of claim poll, and the poll above): p50 {:.1} s, p99 {:.1} s, at most {:.1} s.",
        interval * 0.5 + claim * 0.5 + ms(&lag, 0.5) / 1e3,
        interval * 0.99 + claim * 0.99 + ms(&lag, 0.99) / 1e3,
        interval + claim + ms(&lag, 1.0) / 1e3,
    );
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let qbo = fake_qbo::FakeQbo::start().await;
        let st = fake_st::FakeSt::start().await;
        let sam_fake = fake_sam::FakeSam::start().await;
        let adp_fake = fake_adp::FakeAdp::start().await;
        let ads_fake = fake_google_ads::FakeGoogleAds::start().await;
        let adp_roots = dir.path().join("adp-ca.pem");
        std::fs::write(&adp_roots, &adp_fake.pki.ca_pem).unwrap();
        let localhost: std::net::IpAddr = "127.0.0.1".parse().unwrap();
        let mut allow: Vec<(String, u16)> = fake_qbo::HOSTS
            .iter()
            .map(|h| (h.to_string(), qbo.port))
            .collect();
        allow.extend(fake_st::HOSTS.iter().map(|h| (h.to_string(), st.port)));
        allow.extend(
            fake_sam::HOSTS
                .iter()
                .map(|h| (h.to_string(), sam_fake.port)),
        );
        allow.extend(
            fake_adp::HOSTS
                .iter()
                .map(|h| (h.to_string(), adp_fake.port)),
        );
        allow.extend(
            fake_google_ads::HOSTS
                .iter()
                .map(|h| (h.to_string(), ads_fake.port)),
        );
        let config = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            database_url: format!("sqlite://{}", dir.path().join("bench.db").display()),
            data_dir: dir.path().to_path_buf(),
            secret_key: Some("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=".into()),
            provider_email: Some(PROVIDER_EMAIL.into()),
            provider_password: Some(PROVIDER_PASSWORD.into()),
            bundled_plugins: true,
            dispatcher: false,
            scheduler: false,
            public_url: Some(PUBLIC.into()),
            http_resolve: allow.iter().map(|(h, _)| (h.clone(), localhost)).collect(),
            http_allow_hosts: allow,
            login_per_ip_per_minute: 100_000,
            http_extra_roots: Some(adp_roots),
            ..Config::default()
        };
        let state = streamflow::server::build_state(config).await.unwrap();
        streamflow::server::bootstrap_provider(&state)
            .await
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let serving = state.clone();
        tokio::spawn(async move {
            streamflow::server::serve(serving, listener, std::future::pending())
                .await
                .unwrap()
        });
        let api = Api::new(&base);
        let provider = api.provider(PROVIDER_EMAIL, PROVIDER_PASSWORD).await;
        println!("## Integration plugins (`cargo bench -p streamflow --bench connectors`)");
        if wanted("invoices") {
            invoices(&api, &provider, &qbo).await;
        }
        if wanted("import") {
            import(&api, &provider, &st, &state).await;
        }
        if wanted("sam") {
            sam(&api, &provider, &sam_fake).await;
        }
        if wanted("adp") {
            adp(&api, &provider, &adp_fake).await;
        }
        if wanted("lsa") {
            lsa(&api, &provider, &ads_fake).await;
        }
    });
}
