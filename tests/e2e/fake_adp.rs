//! A local fake of ADP Workforce Now behind mutual TLS (certificates made by
//! [`crate::fake_mtls::Pki`]: a handshake without the app's client certificate fails, the
//! token request's included), checking what ADP checks: client credentials per employer
//! (HTTP Basic or the form), a bearer token of that employer on every call, `$top` at most
//! 100, `roleCode: practitioner` on writes, and a pay data event's batch, payroll group,
//! worker, file number and earning codes, each refusal answered with ADP's
//! `confirmMessage` (`userMessage.messageTxt`). Workers page by `$top`/`$skip` and a page
//! past the end is a 204; the event queue is a FIFO per employer read head first
//! (`adp-msg-msgid`), a message leaving it only on its `DELETE`.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde_json::{Value, json};

use crate::fake::{basic, form_pairs};
use crate::fake_mtls::Pki;

pub const API: &str = "uat-api.adp.com";
pub const ACCOUNTS: &str = "uat-accounts.adp.com";
pub const HOSTS: [&str; 2] = [API, ACCOUNTS];
pub const GROUP: &str = "K4P";

/// One employer (an ADP client organisation) and its data.
#[derive(Default)]
pub struct Employer {
    pub client_secret: String,
    pub workers: Vec<Value>,
    /// `(adp-msg-msgid, body)`, head first.
    pub queue: VecDeque<(String, Value)>,
    /// Batch → the payee inputs appended to it.
    pub batches: HashMap<String, Vec<Value>>,
}

#[derive(Default)]
pub struct AdpState {
    /// client id → employer
    pub employers: Mutex<HashMap<String, Employer>>,
    /// access token → client id
    tokens: Mutex<HashMap<String, String>>,
    serial: AtomicU64,
    pub token_requests: AtomicU32,
    /// Requests by employer, as `METHOD path?query`.
    pub requests: Mutex<Vec<(String, String)>>,
    /// Calls refused for a missing, unknown or revoked token.
    pub unauthorized: AtomicU32,
    /// Pay data posts answered 503 (maintenance, `Retry-After: 120`) before one is taken.
    pub maintenance: AtomicU32,
    /// Pay data posts answered a bare 503 (no `Retry-After`: a gateway's, which proves
    /// nothing) and not taken.
    pub gateway_errors: AtomicU32,
    /// Pay data posts taken and then answered 502, as if the answer were lost.
    pub lose_answers: AtomicU32,
    /// The worker page at this `$skip` is answered 429 (`Retry-After: 30`) once.
    pub throttle_skip: Mutex<Option<usize>>,
    /// Worker reads (`/hr/v2/workers/{aoid}`) answered 503 before one succeeds.
    pub failing_worker_reads: AtomicU32,
    /// Worker reads answered 403 (ADP refusing, for good) before one succeeds.
    pub refused_worker_reads: AtomicU32,
    /// Pay data posts refused for a missing `roleCode: practitioner`.
    pub without_role: AtomicU32,
    /// Every pay data post, as sent (taken or not).
    pub pay_posts: Mutex<Vec<Value>>,
    /// Handshakes completed (a refused handshake never reaches HTTP).
    pub handshakes: Arc<AtomicU32>,
}

pub struct FakeAdp {
    pub port: u16,
    pub state: Arc<AdpState>,
    pub pki: Pki,
}

fn confirm(status: StatusCode, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"confirmMessage": {
            "confirmMessageID": {"idValue": uuid::Uuid::new_v4().to_string(), "schemeName": "confirmMessageID", "schemeAgencyName": "WFN"},
            "protocolStatusCode": {"codeValue": status.as_u16().to_string()},
            "requestStatusCode": {"codeValue": "failed"},
            "resourceMessages": [{"resourceStatusCode": {"codeValue": "failed"}, "processMessages": [
                {"processMessageID": {"idValue": "errors.invalid"}, "messageTypeCode": {"codeValue": "error"}, "userMessage": {"messageTxt": message}}]}]
        }})),
    )
        .into_response()
}

impl FakeAdp {
    pub async fn start() -> FakeAdp {
        let state = Arc::new(AdpState::default());
        let app = Router::new()
            .route("/auth/oauth/v2/token", post(token))
            .route("/hr/v2/workers", get(list_workers))
            .route("/hr/v2/workers/{aoid}", get(get_worker))
            .route("/core/v1/event-notification-messages", get(queue_head))
            .route(
                "/core/v1/event-notification-messages/{id}",
                delete(acknowledge),
            )
            .route("/events/payroll/v1/pay-data-input.modify", post(pay_data))
            .with_state(state.clone());
        let pki = Pki::new();
        let port = pki.serve(&HOSTS, app, state.handshakes.clone()).await;
        FakeAdp { port, state, pki }
    }

    pub fn url(&self, host: &str, path: &str) -> String {
        format!("https://{host}:{}{path}", self.port)
    }

    /// An employer with `workers` active workers, `AOID` + a 12-digit number each.
    pub fn employer(&self, client_id: &str, secret: &str, workers: u32) {
        let mut e = Employer {
            client_secret: secret.into(),
            ..Employer::default()
        };
        e.batches.insert("WEEK-47".into(), Vec::new());
        for i in 0..workers {
            e.workers.push(worker(client_id, i));
        }
        self.state
            .employers
            .lock()
            .unwrap()
            .insert(client_id.into(), e);
    }

    /// A worker is terminated in ADP, and the event is queued.
    pub fn terminate(&self, client_id: &str, aoid: &str, on: &str) {
        let mut employers = self.state.employers.lock().unwrap();
        let e = employers.get_mut(client_id).unwrap();
        let w = e
            .workers
            .iter_mut()
            .find(|w| w["associateOID"] == aoid)
            .unwrap();
        w["workerStatus"] = json!({"statusCode": {"codeValue": "Terminated"}});
        w["workerDates"]["terminationDate"] = json!(on);
        w["workAssignments"][0]["assignmentStatus"] = json!({"statusCode": {"codeValue": "T", "shortName": "Terminated"}, "effectiveDate": on});
        let message = event("worker.terminate", aoid);
        push(e, &self.state, message);
    }

    /// A worker is hired in ADP, and the event is queued.
    pub fn hire(&self, client_id: &str, n: u32) -> String {
        let mut employers = self.state.employers.lock().unwrap();
        let e = employers.get_mut(client_id).unwrap();
        let w = worker(client_id, n);
        let aoid = w["associateOID"].as_str().unwrap().to_string();
        e.workers.push(w);
        push(e, &self.state, event("worker.hire", &aoid));
        aoid
    }

    /// An event that names no worker (ADP's queue carries other kinds too).
    pub fn queue_other(&self, client_id: &str) {
        let mut employers = self.state.employers.lock().unwrap();
        let e = employers.get_mut(client_id).unwrap();
        push(
            e,
            &self.state,
            json!({"events": [{"eventID": "ev-other", "eventNameCode": {"codeValue": "payrollGroup.change"}, "data": {"eventContext": {}}}]}),
        );
    }

    pub fn queue_len(&self, client_id: &str) -> usize {
        self.state.employers.lock().unwrap()[client_id].queue.len()
    }

    /// What the batch holds for an employer.
    pub fn batch(&self, client_id: &str, batch: &str) -> Vec<Value> {
        self.state.employers.lock().unwrap()[client_id].batches[batch].clone()
    }

    /// The employer's requests so far.
    pub fn requests_of(&self, client_id: &str) -> Vec<String> {
        self.state
            .requests
            .lock()
            .unwrap()
            .iter()
            .filter(|(c, _)| c == client_id)
            .map(|(_, r)| r.clone())
            .collect()
    }

    /// Every token issued so far stops working (ADP revoked them): the next call is a 401.
    pub fn revoke_tokens(&self) {
        self.state.tokens.lock().unwrap().clear();
    }

    pub fn aoid(n: u32) -> String {
        format!("AOID{n:012}")
    }
}

fn worker(client_id: &str, i: u32) -> Value {
    let aoid = FakeAdp::aoid(i);
    json!({
        "associateOID": aoid,
        "workerID": {"idValue": format!("W{i:05}")},
        "person": {
            "legalName": {"givenName": format!("Tech{i}"), "familyName1": format!("Of {client_id}"), "formattedName": format!("Of {client_id}, Tech{i}")},
            "communication": {"mobiles": [{"formattedNumber": format!("(512) 555-{:04}", i % 10_000)}]}
        },
        "businessCommunication": {"emails": [{"emailUri": format!("tech{i}@{client_id}.example")}]},
        "workerDates": {"originalHireDate": "2024-03-04"},
        "workerStatus": {"statusCode": {"codeValue": "Active"}},
        "workAssignments": [{
            "itemID": format!("{i}N"), "primaryIndicator": true, "hireDate": "2024-03-04",
            "assignmentStatus": {"statusCode": {"codeValue": "A", "shortName": "Active"}},
            "jobTitle": if i.is_multiple_of(10) { "Lead Technician" } else { "Service Technician" },
            "homeOrganizationalUnits": [{"nameCode": {"codeValue": "FIELD", "shortName": "Field Service"}, "typeCode": {"codeValue": "Department"}}],
            "payCycleCode": {"codeValue": "W", "shortName": "Weekly"},
            "payrollGroupCode": GROUP, "payrollFileNumber": format!("{i:06}"),
        }],
        "customFieldGroup": {"indicatorFields": if i.is_multiple_of(3) { json!([{"nameCode": {"codeValue": "EPA 608"}}]) } else { json!([]) }}
    })
}

fn event(name: &str, aoid: &str) -> Value {
    json!({"events": [{
        "eventID": uuid::Uuid::new_v4().to_string(),
        "eventNameCode": {"codeValue": name},
        "creationDateTime": "2026-11-20T15:00:00Z",
        "originator": {"applicationID": {"idValue": "WFN"}},
        "data": {"eventContext": {"worker": {"associateOID": aoid}}, "output": {"worker": {"associateOID": aoid}}}
    }]})
}

fn push(e: &mut Employer, state: &AdpState, body: Value) {
    let id = format!("msg-{}", state.serial.fetch_add(1, Ordering::SeqCst));
    e.queue.push_back((id, body));
}

async fn token(State(state): State<Arc<AdpState>>, headers: HeaderMap, body: String) -> Response {
    state.token_requests.fetch_add(1, Ordering::SeqCst);
    let form = form_pairs(&body);
    let field = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    if field("grant_type").as_deref() != Some("client_credentials") {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "unsupported_grant_type"})),
        )
            .into_response();
    }
    let (id, secret) = basic(&headers)
        .or_else(|| Some((field("client_id")?, field("client_secret")?)))
        .unwrap_or_default();
    let known = state
        .employers
        .lock()
        .unwrap()
        .get(&id)
        .is_some_and(|e| e.client_secret == secret);
    if !known {
        return (StatusCode::UNAUTHORIZED, axum::Json(json!({"error": "invalid_client", "error_description": "Invalid client credentials"}))).into_response();
    }
    let access = format!(
        "adp-at-{}-{}",
        state.serial.fetch_add(1, Ordering::SeqCst),
        uuid::Uuid::new_v4().simple()
    );
    state.tokens.lock().unwrap().insert(access.clone(), id);
    axum::Json(
        json!({"access_token": access, "token_type": "Bearer", "expires_in": 3600, "scope": "api"}),
    )
    .into_response()
}

/// The employer the bearer token is for, the request logged; else the 401 to answer.
fn employer_of(
    state: &AdpState,
    headers: &HeaderMap,
    request: String,
) -> Result<String, Box<Response>> {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    let Some(id) = state.tokens.lock().unwrap().get(token).cloned() else {
        state.unauthorized.fetch_add(1, Ordering::SeqCst);
        return Err(Box::new(confirm(
            StatusCode::UNAUTHORIZED,
            "Invalid or expired access token.",
        )));
    };
    state.requests.lock().unwrap().push((id.clone(), request));
    Ok(id)
}

async fn list_workers(
    State(state): State<Arc<AdpState>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let line = format!(
        "GET /hr/v2/workers?$top={}&$skip={}",
        q.get("$top").map_or("", |s| s),
        q.get("$skip").map_or("", |s| s)
    );
    let id = match employer_of(&state, &headers, line) {
        Ok(id) => id,
        Err(r) => return *r,
    };
    let top: usize = match q.get("$top").map(|t| t.parse::<usize>()) {
        None => 100,
        Some(Ok(t)) if (1..=100).contains(&t) => t,
        Some(_) => {
            return confirm(
                StatusCode::BAD_REQUEST,
                "$top must be a number from 1 to 100.",
            );
        }
    };
    let skip: usize = match q.get("$skip").map(|s| s.parse::<usize>()) {
        None => 0,
        Some(Ok(s)) => s,
        Some(Err(_)) => return confirm(StatusCode::BAD_REQUEST, "$skip must be a number."),
    };
    if state
        .throttle_skip
        .lock()
        .unwrap()
        .take_if(|at| *at == skip)
        .is_some()
    {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "30")],
            "slow down",
        )
            .into_response();
    }
    let employers = state.employers.lock().unwrap();
    let workers = &employers[&id].workers;
    if skip >= workers.len() {
        return StatusCode::NO_CONTENT.into_response();
    }
    let page: Vec<Value> = workers.iter().skip(skip).take(top).cloned().collect();
    axum::Json(json!({"workers": page, "meta": null})).into_response()
}

async fn get_worker(
    State(state): State<Arc<AdpState>>,
    headers: HeaderMap,
    Path(aoid): Path<String>,
) -> Response {
    let id = match employer_of(&state, &headers, format!("GET /hr/v2/workers/{aoid}")) {
        Ok(id) => id,
        Err(r) => return *r,
    };
    if state
        .failing_worker_reads
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [("retry-after", "60")],
            "maintenance",
        )
            .into_response();
    }
    if state
        .refused_worker_reads
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        return confirm(
            StatusCode::FORBIDDEN,
            "The application is not entitled to read this worker.",
        );
    }
    let employers = state.employers.lock().unwrap();
    match employers[&id]
        .workers
        .iter()
        .find(|w| w["associateOID"] == aoid.as_str())
    {
        Some(w) => axum::Json(json!({"workers": [w]})).into_response(),
        None => confirm(StatusCode::NOT_FOUND, "associateOID is invalid."),
    }
}

async fn queue_head(State(state): State<Arc<AdpState>>, headers: HeaderMap) -> Response {
    let id = match employer_of(
        &state,
        &headers,
        "GET /core/v1/event-notification-messages".into(),
    ) {
        Ok(id) => id,
        Err(r) => return *r,
    };
    let employers = state.employers.lock().unwrap();
    match employers[&id].queue.front() {
        None => StatusCode::NO_CONTENT.into_response(),
        Some((msg, body)) => {
            ([("adp-msg-msgid", msg.as_str())], axum::Json(body.clone())).into_response()
        }
    }
}

async fn acknowledge(
    State(state): State<Arc<AdpState>>,
    headers: HeaderMap,
    Path(msg): Path<String>,
) -> Response {
    let id = match employer_of(
        &state,
        &headers,
        format!("DELETE /core/v1/event-notification-messages/{msg}"),
    ) {
        Ok(id) => id,
        Err(r) => return *r,
    };
    let mut employers = state.employers.lock().unwrap();
    let queue = &mut employers.get_mut(&id).unwrap().queue;
    match queue.front() {
        Some((head, _)) if *head == msg => {
            queue.pop_front();
            StatusCode::OK.into_response()
        }
        _ => confirm(
            StatusCode::NOT_FOUND,
            "No such message at the head of the queue.",
        ),
    }
}

async fn pay_data(
    State(state): State<Arc<AdpState>>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let id = match employer_of(
        &state,
        &headers,
        "POST /events/payroll/v1/pay-data-input.modify".into(),
    ) {
        Ok(id) => id,
        Err(r) => return *r,
    };
    let Ok(event) = serde_json::from_str::<Value>(&body) else {
        return confirm(
            StatusCode::BAD_REQUEST,
            "The request body is not valid JSON.",
        );
    };
    state.pay_posts.lock().unwrap().push(event.clone());
    if headers.get("rolecode").and_then(|v| v.to_str().ok()) != Some("practitioner") {
        state.without_role.fetch_add(1, Ordering::SeqCst);
        return confirm(
            StatusCode::FORBIDDEN,
            "roleCode header is required for event APIs.",
        );
    }
    if state
        .maintenance
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [("retry-after", "120")],
            "ADP is down for maintenance",
        )
            .into_response();
    }
    if state
        .gateway_errors
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        return (StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream").into_response();
    }
    let data = &event["events"][0]["data"];
    let context = &data["eventContext"];
    let payee = &data["transform"]["payDataInput"]["payeePayInputs"][0];
    let mut employers = state.employers.lock().unwrap();
    let employer = employers.get_mut(&id).unwrap();
    let batch = context["payrollProcessingJobID"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if !employer.batches.contains_key(&batch) {
        return confirm(
            StatusCode::BAD_REQUEST,
            &format!("eventContext/payrollProcessingJobID {batch} is invalid."),
        );
    }
    let aoid = payee["associateOID"].as_str().unwrap_or_default();
    let Some(worker) = employer.workers.iter().find(|w| w["associateOID"] == aoid) else {
        return confirm(StatusCode::BAD_REQUEST, "associateOID is invalid.");
    };
    let assignment = &worker["workAssignments"][0];
    if context["payrollGroupCode"]["codeValue"] != assignment["payrollGroupCode"] {
        return confirm(
            StatusCode::BAD_REQUEST,
            "payrollGroupCode does not match the worker's.",
        );
    }
    let profile = &payee["payrollProfilePayInputs"][0];
    if profile["payrollFileNumber"] != assignment["payrollFileNumber"] {
        return confirm(
            StatusCode::BAD_REQUEST,
            &format!(
                "payrollFileNumber {} is not on file for this associate.",
                profile["payrollFileNumber"]
            ),
        );
    }
    if payee["payNumber"].as_str().is_none() {
        return confirm(StatusCode::BAD_REQUEST, "payNumber is required.");
    }
    let inputs = &profile["payInputs"][0];
    if inputs["_modificationTypeCode"] != "Append" {
        return confirm(
            StatusCode::BAD_REQUEST,
            "_modificationTypeCode must be Append for an existing batch.",
        );
    }
    let earnings = inputs["earningInputs"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if earnings.is_empty() {
        return confirm(StatusCode::BAD_REQUEST, "earningInputs is required.");
    }
    for e in &earnings {
        let code = e["earningCode"]["codeValue"].as_str().unwrap_or_default();
        if !["R", "O"].contains(&code) {
            return confirm(
                StatusCode::BAD_REQUEST,
                &format!("Earning code {code} is invalid."),
            );
        }
        if !e["numberOfHours"]
            .as_f64()
            .is_some_and(|h| h > 0.0 && h <= 200.0)
        {
            return confirm(
                StatusCode::BAD_REQUEST,
                "numberOfHours must be a positive number.",
            );
        }
    }
    employer
        .batches
        .get_mut(&batch)
        .unwrap()
        .push(payee.clone());
    if state
        .lose_answers
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        return (StatusCode::BAD_GATEWAY, "upstream reset").into_response();
    }
    let job = format!("{batch}_{}", state.serial.fetch_add(1, Ordering::SeqCst));
    axum::Json(json!({"events": [{"data": {
        "eventContext": context,
        "output": {"payDataInput": {"payrollGroupCode": context["payrollGroupCode"], "payrollProcessingJobID": job, "payeePayInputs": [payee]}}
    }, "links": []}]}))
    .into_response()
}
