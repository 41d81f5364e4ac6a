//! A local fake of ServiceTitan (its identity server and the CRM and JPM APIs) on an
//! ephemeral loopback port, checking what the real service checks: client credentials in
//! the form body, a bearer token of that ServiceTitan tenant, the app key header on every
//! call, the tenant id in the path, the booking's required fields (answered with an
//! `ApiErrorResponse`), `page`/`pageSize`/`hasMore` paging and `modifiedOnOrAfter`.
//! Throttling (429 with `Retry-After`) and a failing page are switched on by the tests.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use crate::fake::form_pairs;

pub const APP_KEY: &str = "ak1.fake-app-key-5e1f";
pub const HOSTS: [&str; 2] = [
    "api-integration.servicetitan.io",
    "auth-integration.servicetitan.io",
];

/// One ServiceTitan tenant (a business) and its data.
#[derive(Default)]
pub struct StTenant {
    pub client_id: String,
    pub client_secret: String,
    pub customers: Vec<Value>,
    pub jobs: Vec<Value>,
    pub bookings: Vec<Value>,
}

#[derive(Default)]
pub struct StState {
    pub tenants: Mutex<HashMap<String, StTenant>>,
    /// access token → ServiceTitan tenant id
    tokens: Mutex<HashMap<String, String>>,
    pub issued: Mutex<Vec<String>>,
    serial: AtomicU64,
    /// Calls answered 429 (with `Retry-After: 7`) before the next succeeds.
    pub throttle: AtomicU32,
    /// `(resource, page)` answered 500 while set.
    pub failing_page: Mutex<Option<(String, u32)>>,
    /// Each list request, as (tenant, resource, page).
    pub pages: Mutex<Vec<(String, String, u32)>>,
    pub token_requests: AtomicU32,
    /// Calls refused for a missing or wrong app key, or a token of another tenant.
    pub refused: AtomicU32,
    /// The query of each list request, as (resource, query).
    pub queries: Mutex<Vec<(String, HashMap<String, String>)>>,
    /// The next booking is stored but its answer lost (a 500 after the write).
    pub lose_next_booking_answer: std::sync::atomic::AtomicBool,
    pub booking_posts: AtomicU32,
}

pub struct FakeSt {
    pub port: u16,
    pub state: Arc<StState>,
}

impl FakeSt {
    pub async fn start() -> FakeSt {
        let state = Arc::new(StState::default());
        let app = Router::new()
            .route("/connect/token", post(token))
            .route("/{module}/v2/tenant/{tenant}/{resource}", get(list))
            .route("/jpm/v2/tenant/{tenant}/jobs/{id}", get(get_job))
            .route(
                "/crm/v2/tenant/{tenant}/booking-provider/{provider}/bookings",
                post(create_booking).get(list_bookings),
            )
            .with_state(state.clone());
        let port = crate::fake::serve(app).await;
        FakeSt { port, state }
    }

    pub fn url(&self, host: &str, path: &str) -> String {
        format!("http://{host}:{}{path}", self.port)
    }

    /// A ServiceTitan tenant with `customers` customers and `jobs` jobs (each job for one of
    /// the customers), all modified at `modified_on`.
    pub fn tenant(&self, id: &str, client_id: &str, secret: &str, customers: u32, jobs: u32) {
        let modified = "2026-11-20T09:00:00Z";
        let mut t = StTenant {
            client_id: client_id.into(),
            client_secret: secret.into(),
            ..StTenant::default()
        };
        for i in 0..customers {
            // Every 50th customer is inactive: the default list (active only) leaves it out.
            t.customers.push(json!({
                "id": 1000 + i as i64, "active": i % 50 != 49, "name": format!("Customer {i} of {id}"), "type": "Residential",
                "address": {"street": format!("{i} Main St"), "city": "Austin", "state": "TX", "zip": "78701", "country": "USA"},
                "contacts": [{"id": 1, "type": "MobilePhone", "value": format!("512555{i:04}"), "memo": null}],
                "balance": 0, "createdOn": modified, "modifiedOn": modified, "mergedToId": null,
            }));
        }
        for i in 0..jobs {
            t.jobs.push(json!({
                "id": 50_000 + i as i64, "jobNumber": format!("J{}", 50_000 + i), "customerId": 1000 + (i % customers.max(1)) as i64,
                "locationId": 2000, "jobStatus": "Scheduled", "completedOn": null, "businessUnitId": 11, "jobTypeId": 21,
                "priority": "Normal", "campaignId": 31, "summary": format!("<p>Job {i}: AC not cooling</p>"),
                "createdOn": modified, "modifiedOn": modified,
            }));
        }
        self.state.tenants.lock().unwrap().insert(id.into(), t);
    }

    /// A job changes in ServiceTitan.
    pub fn change_job(&self, tenant: &str, id: i64, status: &str, at: &str) {
        let mut tenants = self.state.tenants.lock().unwrap();
        let job = tenants
            .get_mut(tenant)
            .unwrap()
            .jobs
            .iter_mut()
            .find(|j| j["id"] == id)
            .unwrap();
        job["jobStatus"] = json!(status);
        job["modifiedOn"] = json!(at);
    }

    /// A customer gets an email address (a contact of type Email).
    pub fn give_email(&self, tenant: &str, id: i64, email: &str) {
        let mut tenants = self.state.tenants.lock().unwrap();
        let customer = tenants
            .get_mut(tenant)
            .unwrap()
            .customers
            .iter_mut()
            .find(|c| c["id"] == id)
            .unwrap();
        customer["contacts"]
            .as_array_mut()
            .unwrap()
            .push(json!({"id": 2, "type": "Email", "value": email, "memo": null}));
    }

    /// Every access token stops working (as their 15 minutes passing would).
    pub fn expire_tokens(&self) {
        self.state.tokens.lock().unwrap().clear();
    }

    pub fn bookings(&self, tenant: &str) -> Vec<Value> {
        self.state.tenants.lock().unwrap()[tenant].bookings.clone()
    }

    /// Pages requested of `resource` for `tenant`, in order.
    pub fn pages_of(&self, tenant: &str, resource: &str) -> Vec<u32> {
        self.state
            .pages
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, r, _)| t == tenant && r == resource)
            .map(|(_, _, p)| *p)
            .collect()
    }

    pub fn leaked(&self, text: &str) -> bool {
        text.contains(APP_KEY)
            || self
                .state
                .issued
                .lock()
                .unwrap()
                .iter()
                .any(|t| text.contains(t.as_str()))
            || self
                .state
                .tenants
                .lock()
                .unwrap()
                .values()
                .any(|t| text.contains(&t.client_secret))
    }
}

fn problem(status: u16, title: &str, errors: Value) -> Response {
    (
        StatusCode::from_u16(status).unwrap(),
        axum::Json(json!({"type": "https://tools.ietf.org/html/rfc7231#section-6.5.1", "title": title, "status": status,
                          "traceId": format!("00-{}-01", uuid::Uuid::new_v4().simple()), "errors": errors, "data": {}})),
    )
        .into_response()
}

async fn token(State(state): State<Arc<StState>>, headers: HeaderMap, body: String) -> Response {
    state.token_requests.fetch_add(1, Ordering::SeqCst);
    if headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| !v.starts_with("application/x-www-form-urlencoded"))
    {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "invalid_request"})),
        )
            .into_response();
    }
    let form: HashMap<String, String> = form_pairs(&body).into_iter().collect();
    let field = |k: &str| form.get(k).cloned().unwrap_or_default();
    if field("grant_type") != "client_credentials" {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "unsupported_grant_type"})),
        )
            .into_response();
    }
    let tenant = state
        .tenants
        .lock()
        .unwrap()
        .iter()
        .find(|(_, t)| {
            t.client_id == field("client_id") && t.client_secret == field("client_secret")
        })
        .map(|(id, _)| id.clone());
    let Some(tenant) = tenant else {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "invalid_client"})),
        )
            .into_response();
    };
    let n = state.serial.fetch_add(1, Ordering::SeqCst);
    let access = format!("eyJst-{n}-{}", uuid::Uuid::new_v4().simple());
    state.tokens.lock().unwrap().insert(access.clone(), tenant);
    state.issued.lock().unwrap().push(access.clone());
    axum::Json(json!({"access_token": access, "expires_in": 900, "token_type": "Bearer", "scope": "tn.crm tn.jpm"}))
        .into_response()
}

/// The checks of every API call: token, app key, tenant, throttling.
fn guard(state: &StState, headers: &HeaderMap, tenant: &str) -> Result<(), Box<Response>> {
    if headers.get("st-app-key").and_then(|v| v.to_str().ok()) != Some(APP_KEY) {
        state.refused.fetch_add(1, Ordering::SeqCst);
        return Err(Box::new(problem(
            401,
            "The ST-App-Key header is missing or wrong.",
            json!({}),
        )));
    }
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    match state.tokens.lock().unwrap().get(bearer) {
        // An expired or unknown token: the client asks for a new one.
        None => return Err(Box::new(problem(401, "Unauthorized", json!({})))),
        Some(own) if own != tenant => {
            state.refused.fetch_add(1, Ordering::SeqCst);
            return Err(Box::new(problem(
                403,
                "The token is not for this tenant.",
                json!({}),
            )));
        }
        Some(_) => {}
    }
    if state
        .throttle
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        let mut response = problem(429, "Too many requests.", json!({}));
        response
            .headers_mut()
            .insert("retry-after", "7".parse().unwrap());
        return Err(Box::new(response));
    }
    Ok(())
}

fn page_of(
    state: &StState,
    tenant: &str,
    resource: &str,
    items: &[Value],
    q: &HashMap<String, String>,
) -> Response {
    let page: u32 = q
        .get("page")
        .and_then(|p| p.parse().ok())
        .unwrap_or(1)
        .max(1);
    let size: usize = q
        .get("pageSize")
        .and_then(|p| p.parse().ok())
        .unwrap_or(50)
        .clamp(1, 5000);
    state
        .pages
        .lock()
        .unwrap()
        .push((tenant.into(), resource.into(), page));
    state
        .queries
        .lock()
        .unwrap()
        .push((resource.into(), q.clone()));
    if state.failing_page.lock().unwrap().as_ref() == Some(&(resource.to_string(), page)) {
        return problem(500, "An unexpected error occurred.", json!({}));
    }
    let active = q.get("active").map(String::as_str).unwrap_or("True");
    let mut rows: Vec<&Value> = items
        .iter()
        .filter(|i| match active {
            "Any" => true,
            "False" => i["active"] == false,
            _ => i["active"] != false,
        })
        .filter(|i| {
            q.get("modifiedOnOrAfter")
                .is_none_or(|since| i["modifiedOn"].as_str().unwrap_or_default() >= since.as_str())
        })
        .collect();
    rows.sort_by_key(|i| i["id"].as_i64());
    let start = (page as usize - 1) * size;
    let data: Vec<&Value> = rows.iter().skip(start).take(size).copied().collect();
    let has_more = start + data.len() < rows.len();
    axum::Json(json!({"page": page, "pageSize": size, "hasMore": has_more, "data": data}))
        .into_response()
}

/// `GET .../customers` and `GET .../jobs`: the tenant's list of that resource, paged.
async fn list(
    State(state): State<Arc<StState>>,
    Path((module, tenant, resource)): Path<(String, String, String)>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Err(r) = guard(&state, &headers, &tenant) {
        return *r;
    }
    let items = {
        let tenants = state.tenants.lock().unwrap();
        match (module.as_str(), resource.as_str()) {
            ("crm", "customers") => tenants[&tenant].customers.clone(),
            ("jpm", "jobs") => tenants[&tenant].jobs.clone(),
            _ => return problem(404, "No such resource.", json!({})),
        }
    };
    page_of(&state, &tenant, &resource, &items, &q)
}

async fn get_job(
    State(state): State<Arc<StState>>,
    Path((tenant, id)): Path<(String, i64)>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = guard(&state, &headers, &tenant) {
        return *r;
    }
    let tenants = state.tenants.lock().unwrap();
    match tenants[&tenant].jobs.iter().find(|j| j["id"] == id) {
        Some(job) => axum::Json(job.clone()).into_response(),
        None => problem(404, "Job not found.", json!({})),
    }
}

async fn create_booking(
    State(state): State<Arc<StState>>,
    Path((tenant, provider)): Path<(String, i64)>,
    headers: HeaderMap,
    body: String,
) -> Response {
    if let Err(r) = guard(&state, &headers, &tenant) {
        return *r;
    }
    let Ok(input) = serde_json::from_str::<Value>(&body) else {
        return problem(400, "The request body is not JSON.", json!({}));
    };
    let mut errors = serde_json::Map::new();
    for field in ["source", "name", "summary", "externalId"] {
        if input[field].as_str().is_none_or(|v| v.trim().is_empty()) {
            let name = field[..1].to_uppercase() + &field[1..];
            errors.insert(
                name.clone(),
                json!([format!("The {name} field is required.")]),
            );
        }
    }
    if !input["isFirstTimeClient"].is_boolean() {
        errors.insert(
            "IsFirstTimeClient".into(),
            json!(["The IsFirstTimeClient field is required."]),
        );
    }
    if !errors.is_empty() {
        return problem(
            400,
            "One or more validation errors occurred.",
            Value::Object(errors),
        );
    }
    state.booking_posts.fetch_add(1, Ordering::SeqCst);
    let now = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let mut tenants = state.tenants.lock().unwrap();
    let t = tenants.get_mut(&tenant).unwrap();
    let mut booking = input.clone();
    booking["id"] = json!(70_000 + t.bookings.len() as i64);
    booking["status"] = json!("New");
    booking["bookingProviderId"] = json!(provider);
    booking["createdOn"] = json!(now);
    booking["modifiedOn"] = json!(now);
    booking["start"] = json!(null);
    t.bookings.push(booking.clone());
    if state.lose_next_booking_answer.swap(false, Ordering::SeqCst) {
        return problem(500, "An unexpected error occurred.", json!({}));
    }
    axum::Json(booking).into_response()
}

async fn list_bookings(
    State(state): State<Arc<StState>>,
    Path((tenant, _provider)): Path<(String, i64)>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Err(r) = guard(&state, &headers, &tenant) {
        return *r;
    }
    let items = state.tenants.lock().unwrap()[&tenant].bookings.clone();
    page_of(&state, &tenant, "bookings", &items, &q)
}
