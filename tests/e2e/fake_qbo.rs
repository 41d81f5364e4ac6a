//! A local fake of QuickBooks Online (Intuit's OAuth2 server and the Accounting API) on an
//! ephemeral loopback port, checking what the real service checks: client authentication
//! by HTTP Basic, single-use codes, rotated refresh tokens, a bearer token for the company
//! in the path, `Accept: application/json`, required fields, unique display names (fault
//! 6240), references that exist, SyncTokens (fault 5010, inside a 200) and `requestid`
//! (a repeat gets the first answer). Its quirks are the documented ones: an empty
//! `QueryResponse` has no entity key, a created invoice gains a subtotal line.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{any, get, post};
use base64::Engine;
use hmac::Mac;
use serde_json::{Value, json};

use crate::fake::{basic, form_pairs};

pub const CLIENT_ID: &str = "ABqbo-client-77";
pub const CLIENT_SECRET: &str = "qbo-client-secret-c0ffee";
pub const VERIFIER: &str = "qbo-verifier-token-8d2e";
pub const SCOPE: &str = "com.intuit.quickbooks.accounting";
/// The hosts of the manifest, all served by the fake.
pub const HOSTS: [&str; 4] = [
    "sandbox-quickbooks.api.intuit.com",
    "appcenter.intuit.com",
    "oauth.platform.intuit.com",
    "developer.api.intuit.com",
];

#[derive(Default)]
pub struct Company {
    pub customers: Vec<Value>,
    pub invoices: Vec<Value>,
    pub payments: Vec<Value>,
    pub items: Vec<Value>,
    /// requestid → the first answer.
    answers: HashMap<String, (u16, Value)>,
}

#[derive(Default)]
pub struct QboState {
    pub companies: Mutex<HashMap<String, Company>>,
    codes: Mutex<HashMap<String, (String, String)>>,
    /// access token → realm
    access: Mutex<HashMap<String, String>>,
    /// refresh token → realm
    refresh: Mutex<HashMap<String, String>>,
    pub issued: Mutex<Vec<String>>,
    serial: AtomicU64,
    /// API calls answered 429 before the next succeeds.
    pub throttle: AtomicU32,
    /// Refresh requests refused with `invalid_grant`.
    pub refuse_refresh: AtomicBool,
    /// How long an invoice create is held after it is stored (the answer comes late).
    pub hold_invoice_ms: AtomicU64,
    pub invoice_posts: AtomicU32,
    pub stale_faults: AtomicU32,
    pub api_calls: AtomicU32,
    /// The next customer create loses a race: another request creates the same name just
    /// before it (answered with fault 6240).
    pub lose_next_customer_race: AtomicBool,
    /// Calls without `minorversion`, or without `Accept: application/json`.
    pub sloppy_calls: AtomicU32,
}

pub struct FakeQbo {
    pub port: u16,
    pub state: Arc<QboState>,
}

impl FakeQbo {
    pub async fn start() -> FakeQbo {
        let state = Arc::new(QboState::default());
        let app = Router::new()
            .route("/connect/oauth2", get(authorize))
            .route("/oauth2/v1/tokens/bearer", post(token))
            .route(
                "/v2/oauth2/tokens/revoke",
                post(|| async { StatusCode::OK }),
            )
            .route("/v3/company/{realm}/{*rest}", any(api))
            .with_state(state.clone());
        let port = crate::fake::serve(app).await;
        FakeQbo { port, state }
    }

    pub fn url(&self, host: &str, path: &str) -> String {
        format!("http://{host}:{}{path}", self.port)
    }

    /// A company with the sample company's service items.
    pub fn company(&self, realm: &str) {
        let mut companies = self.state.companies.lock().unwrap();
        let c = companies.entry(realm.to_string()).or_default();
        c.items = vec![
            json!({"Id": "1", "Name": "Services", "Type": "Service", "Active": true, "SyncToken": "0"}),
            json!({"Id": "3", "Name": "Concrete", "Type": "Service", "Active": true, "SyncToken": "1"}),
            json!({"Id": "5", "Name": "Labor", "Type": "Service", "Active": true, "SyncToken": "0"}),
        ];
    }

    /// A customer made inactive in QuickBooks (a query without `Active in (true, false)`
    /// does not find it; its name stays taken).
    pub fn inactive_customer(&self, realm: &str, name: &str) -> String {
        let mut companies = self.state.companies.lock().unwrap();
        let c = companies.get_mut(realm).unwrap();
        let id = format!("{}", 60 + c.customers.len());
        c.customers.push(
            json!({"Id": id, "DisplayName": name, "SyncToken": "3", "Active": false, "Balance": 0}),
        );
        id
    }

    pub fn invoices(&self, realm: &str) -> Vec<Value> {
        self.state.companies.lock().unwrap()[realm].invoices.clone()
    }

    pub fn customers(&self, realm: &str) -> Vec<Value> {
        self.state.companies.lock().unwrap()[realm]
            .customers
            .clone()
    }

    /// Changes an invoice as someone working in QuickBooks would (its SyncToken moves on).
    fn change_invoice(&self, realm: &str, id: &str, change: impl FnOnce(&mut Value)) {
        let mut companies = self.state.companies.lock().unwrap();
        let invoice = companies
            .get_mut(realm)
            .unwrap()
            .invoices
            .iter_mut()
            .find(|i| i["Id"] == id)
            .unwrap();
        change(invoice);
        bump(invoice);
    }

    /// Someone edits the invoice in QuickBooks.
    pub fn edit_invoice(&self, realm: &str, id: &str) {
        self.change_invoice(realm, id, |i| {
            i["PrivateNote"] = json!("edited in QuickBooks")
        });
    }

    /// Voids an invoice in QuickBooks: its amounts go to zero.
    pub fn void_invoice(&self, realm: &str, id: &str) {
        self.change_invoice(realm, id, |i| {
            i["TotalAmt"] = json!(0.0);
            i["Balance"] = json!(0.0);
            i["PrivateNote"] = json!("Voided");
        });
    }

    /// Records a payment of `amount` against an invoice; returns the payment's id.
    pub fn pay(&self, realm: &str, invoice_id: &str, amount: f64) -> String {
        let mut companies = self.state.companies.lock().unwrap();
        let company = companies.get_mut(realm).unwrap();
        let id = format!("{}", 500 + company.payments.len());
        let invoice = company
            .invoices
            .iter_mut()
            .find(|i| i["Id"] == invoice_id)
            .unwrap();
        let balance = invoice["Balance"].as_f64().unwrap() - amount;
        invoice["Balance"] = json!((balance * 100.0).round() / 100.0);
        bump(invoice);
        let customer = invoice["CustomerRef"].clone();
        company.payments.push(json!({
            "Id": id, "SyncToken": "0", "TotalAmt": amount, "CustomerRef": customer,
            "Line": [{"Amount": amount, "LinkedTxn": [{"TxnId": invoice_id, "TxnType": "Invoice"}]}],
        }));
        id
    }

    /// Makes every access token invalid (as an expiry would).
    pub fn expire_access_tokens(&self) {
        self.state.access.lock().unwrap().clear();
    }

    /// Whether `text` holds any token the fake issued.
    pub fn leaked(&self, text: &str) -> bool {
        self.state
            .issued
            .lock()
            .unwrap()
            .iter()
            .any(|t| text.contains(t.as_str()))
            || text.contains(CLIENT_SECRET)
            || text.contains(VERIFIER)
    }
}

fn bump(entity: &mut Value) {
    let next = entity["SyncToken"]
        .as_str()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(0)
        + 1;
    entity["SyncToken"] = json!(next.to_string());
}

/// `intuit-signature` of a body: base64 HMAC-SHA256 keyed by the verifier token.
pub fn sign(body: &[u8]) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(VERIFIER.as_bytes()).unwrap();
    mac.update(body);
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// A legacy-format delivery about these (entity, id, operation) changes.
pub fn legacy(realm: &str, changes: &[(&str, &str, &str)]) -> Vec<u8> {
    let entities: Vec<Value> = changes
        .iter()
        .map(|(name, id, op)| json!({"name": name, "id": id, "operation": op, "lastUpdated": "2026-12-07T10:00:00.000Z"}))
        .collect();
    serde_json::to_vec(&json!({"eventNotifications": [{"realmId": realm, "dataChangeEvent": {"entities": entities}}]})).unwrap()
}

/// A CloudEvents-format delivery.
pub fn cloudevents(realm: &str, changes: &[(&str, &str, &str)]) -> Vec<u8> {
    let events: Vec<Value> = changes
        .iter()
        .map(|(name, id, op)| {
            json!({"specversion": "1.0", "id": uuid::Uuid::new_v4().to_string(),
                   "source": "intuit.test", "type": format!("qbo.{}.{op}.v1", name.to_lowercase()),
                   "datacontenttype": "application/json", "time": "2026-12-07T10:00:00Z",
                   "intuitentityid": id, "intuitaccountid": realm, "data": {}})
        })
        .collect();
    serde_json::to_vec(&events).unwrap()
}

async fn authorize(
    State(state): State<Arc<QboState>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let need = |k: &str| q.get(k).cloned().unwrap_or_default();
    if need("response_type") != "code" || need("client_id") != CLIENT_ID || need("scope") != SCOPE {
        return (
            StatusCode::BAD_REQUEST,
            "bad client, response_type or scope",
        )
            .into_response();
    }
    if need("state").is_empty() || need("redirect_uri").is_empty() {
        return (
            StatusCode::BAD_REQUEST,
            "state and redirect_uri are required",
        )
            .into_response();
    }
    let realm = q.get("realm").cloned().unwrap_or_else(|| "9130350".into());
    let code = format!("AB11-{}", uuid::Uuid::new_v4().simple());
    state
        .codes
        .lock()
        .unwrap()
        .insert(code.clone(), (need("redirect_uri"), realm.clone()));
    let mut to = reqwest::Url::parse(&need("redirect_uri")).unwrap();
    to.query_pairs_mut()
        .append_pair("code", &code)
        .append_pair("state", &need("state"))
        .append_pair("realmId", &realm);
    Redirect::to(to.as_str()).into_response()
}

fn oauth_error(error: &str) -> Response {
    (StatusCode::BAD_REQUEST, axum::Json(json!({"error": error}))).into_response()
}

fn issue(state: &QboState, realm: &str) -> Value {
    let n = state.serial.fetch_add(1, Ordering::SeqCst);
    let access = format!("eyJqbo-at-{n}-{}", uuid::Uuid::new_v4().simple());
    let refresh = format!("AB11qbo-rt-{n}-{}", uuid::Uuid::new_v4().simple());
    state
        .access
        .lock()
        .unwrap()
        .insert(access.clone(), realm.into());
    state
        .refresh
        .lock()
        .unwrap()
        .insert(refresh.clone(), realm.into());
    state
        .issued
        .lock()
        .unwrap()
        .extend([access.clone(), refresh.clone()]);
    json!({"token_type": "bearer", "access_token": access, "refresh_token": refresh,
           "expires_in": 3600, "x_refresh_token_expires_in": 8_726_400})
}

async fn token(State(state): State<Arc<QboState>>, headers: HeaderMap, body: String) -> Response {
    let form: HashMap<String, String> = form_pairs(&body).into_iter().collect();
    if basic(&headers) != Some((CLIENT_ID.into(), CLIENT_SECRET.into())) {
        return oauth_error("invalid_client");
    }
    let field = |k: &str| form.get(k).cloned().unwrap_or_default();
    match field("grant_type").as_str() {
        "authorization_code" => {
            let Some((redirect, realm)) = state.codes.lock().unwrap().remove(&field("code")) else {
                return oauth_error("invalid_grant");
            };
            if redirect != field("redirect_uri") {
                return oauth_error("invalid_grant");
            }
            axum::Json(issue(&state, &realm)).into_response()
        }
        "refresh_token" => {
            if state.refuse_refresh.load(Ordering::SeqCst) {
                return oauth_error("invalid_grant");
            }
            let Some(realm) = state
                .refresh
                .lock()
                .unwrap()
                .remove(&field("refresh_token"))
            else {
                return oauth_error("invalid_grant");
            };
            axum::Json(issue(&state, &realm)).into_response()
        }
        _ => oauth_error("unsupported_grant_type"),
    }
}

fn fault(status: u16, kind: &str, code: &str, message: &str, detail: &str) -> (u16, Value) {
    (
        status,
        json!({"Fault": {"Error": [{"Message": message, "Detail": detail, "code": code, "element": ""}], "type": kind},
               "time": "2026-12-07T10:00:00.000-08:00"}),
    )
}

fn reply((status, body): (u16, Value)) -> Response {
    (StatusCode::from_u16(status).unwrap(), axum::Json(body)).into_response()
}

/// `'King\'s'` → `King's` (backslash escapes).
fn literal_after(statement: &str, marker: &str) -> Option<String> {
    let at = statement.find(marker)? + marker.len();
    let rest = statement[at..].trim_start().strip_prefix('\'')?;
    let mut out = String::new();
    let mut chars = rest.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(chars.next()?),
            '\'' => return Some(out),
            c => out.push(c),
        }
    }
    None
}

async fn api(
    State(state): State<Arc<QboState>>,
    Path((realm, rest)): Path<(String, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    body: String,
) -> Response {
    state.api_calls.fetch_add(1, Ordering::SeqCst);
    if !q.contains_key("minorversion")
        || headers.get("accept").and_then(|v| v.to_str().ok()) != Some("application/json")
    {
        state.sloppy_calls.fetch_add(1, Ordering::SeqCst);
    }
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_string();
    let Some(own) = state.access.lock().unwrap().get(&bearer).cloned() else {
        return reply(fault(
            401,
            "AUTHENTICATION",
            "3200",
            "message=AuthenticationFailed; errorCode=003200; statusCode=401",
            "",
        ));
    };
    if own != realm {
        return reply(fault(
            403,
            "AuthorizationFault",
            "3100",
            "message=ApplicationAuthorizationFailed; errorCode=003100; statusCode=403",
            "",
        ));
    }
    if state
        .throttle
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        return reply(fault(
            429,
            "ThrottleExceeded",
            "3001",
            "message=ThrottleExceeded; errorCode=003001; statusCode=429",
            "The request limit was reached.",
        ));
    }
    if headers.get("accept").and_then(|v| v.to_str().ok()) != Some("application/json") {
        return (
            StatusCode::OK,
            "<IntuitResponse>XML unless JSON is asked for</IntuitResponse>",
        )
            .into_response();
    }
    let request_id = q.get("requestid").cloned();
    let segments: Vec<&str> = rest.split('/').collect();
    let input: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let invoice_create =
        segments == ["invoice"] && method == Method::POST && input.get("Id").is_none();
    if invoice_create {
        state.invoice_posts.fetch_add(1, Ordering::SeqCst);
    }
    if let Some(id) = &request_id {
        if id.len() > 50 {
            return reply(fault(
                400,
                "ValidationFault",
                "2010",
                "Request has invalid or unsupported property",
                "requestid is longer than 50 characters",
            ));
        }
        let companies = state.companies.lock().unwrap();
        if let Some(answer) = companies.get(&realm).and_then(|c| c.answers.get(id)) {
            return reply(answer.clone());
        }
    }
    let answer = {
        let mut companies = state.companies.lock().unwrap();
        let Some(company) = companies.get_mut(&realm) else {
            return reply(fault(
                400,
                "ValidationFault",
                "610",
                "Object Not Found",
                "no such company",
            ));
        };
        match (method.as_str(), segments.as_slice()) {
            ("GET", ["companyinfo", id]) if *id == realm => (
                200,
                json!({"CompanyInfo": {"Id": "1", "CompanyName": "Sandbox Company", "Country": "US"}}),
            ),
            ("GET", ["query"]) => query(
                company,
                q.get("query").map(String::as_str).unwrap_or_default(),
            ),
            ("GET", [entity, id]) => {
                let list = match *entity {
                    "invoice" => &company.invoices,
                    "payment" => &company.payments,
                    "customer" => &company.customers,
                    _ => {
                        return reply(fault(400, "ValidationFault", "610", "Object Not Found", ""));
                    }
                };
                match list.iter().find(|e| e["Id"] == *id) {
                    Some(e) => (
                        200,
                        json!({ capitalised(entity): e, "time": "2026-12-07T10:00:00Z" }),
                    ),
                    None => fault(
                        400,
                        "ValidationFault",
                        "610",
                        "Object Not Found",
                        &format!(
                            "Object Not Found : Something you're trying to use has been made inactive. Check the fields with accounts, customers, items, vendors or employees. {id}"
                        ),
                    ),
                }
            }
            ("POST", ["customer"]) if input.get("Id").is_some() => {
                update_customer(&state, company, &input)
            }
            ("POST", ["customer"]) => {
                if state.lose_next_customer_race.swap(false, Ordering::SeqCst) {
                    let _ = create_customer(company, &json!({"DisplayName": input["DisplayName"]}));
                }
                create_customer(company, &input)
            }
            ("POST", ["invoice"]) if input.get("Id").is_some() => {
                update_invoice(&state, company, &input)
            }
            ("POST", ["invoice"]) => create_invoice(company, &input),
            _ => (
                400,
                json!({"Fault": {"Error": [{"Message": "Unsupported Operation", "Detail": uri.path(), "code": "500"}], "type": "ValidationFault"}}),
            ),
        }
    };
    if let Some(id) = request_id {
        state
            .companies
            .lock()
            .unwrap()
            .get_mut(&realm)
            .unwrap()
            .answers
            .insert(id, answer.clone());
    }
    if invoice_create {
        let hold = state.hold_invoice_ms.load(Ordering::SeqCst);
        if hold > 0 {
            tokio::time::sleep(Duration::from_millis(hold)).await;
        }
    }
    reply(answer)
}

fn capitalised(entity: &str) -> String {
    match entity {
        "invoice" => "Invoice",
        "payment" => "Payment",
        "customer" => "Customer",
        _ => "Entity",
    }
    .into()
}

fn query(company: &Company, statement: &str) -> (u16, Value) {
    let lower = statement.to_lowercase();
    let (entity, list, key) = if lower.starts_with("select * from customer") {
        ("Customer", &company.customers, "DisplayName")
    } else if lower.starts_with("select * from item") {
        ("Item", &company.items, "Name")
    } else {
        return fault(
            400,
            "ValidationFault",
            "4000",
            "Error parsing query",
            statement,
        );
    };
    let Some(wanted) = literal_after(statement, &format!("{key} =")) else {
        return fault(
            400,
            "ValidationFault",
            "4000",
            "Error parsing query",
            statement,
        );
    };
    let inactive_too = lower.contains("active in (true, false)");
    let rows: Vec<Value> = list
        .iter()
        .filter(|e| e[key] == wanted.as_str())
        .filter(|e| inactive_too || e["Active"] != false)
        .cloned()
        .collect();
    let mut response = json!({});
    if !rows.is_empty() {
        response = json!({ entity: rows, "startPosition": 1, "maxResults": rows.len() });
    }
    (
        200,
        json!({"QueryResponse": response, "time": "2026-12-07T10:00:00Z"}),
    )
}

fn create_customer(company: &mut Company, input: &Value) -> (u16, Value) {
    let Some(name) = input["DisplayName"]
        .as_str()
        .filter(|n| !n.trim().is_empty())
    else {
        return fault(
            400,
            "ValidationFault",
            "2010",
            "Request has invalid or unsupported property",
            "DisplayName or a name part is required",
        );
    };
    if company.customers.iter().any(|c| {
        c["DisplayName"]
            .as_str()
            .is_some_and(|d| d.eq_ignore_ascii_case(name))
    }) {
        return fault(
            400,
            "ValidationFault",
            "6240",
            "Duplicate Name Exists Error",
            &format!(
                "The name supplied already exists. : Another customer, vendor or employee is already using this name. Please use a different name. {name}"
            ),
        );
    }
    let mut customer = input.clone();
    customer["Id"] = json!(format!("{}", 60 + company.customers.len()));
    customer["SyncToken"] = json!("0");
    customer["Active"] = json!(true);
    customer["Balance"] = json!(0);
    company.customers.push(customer.clone());
    (
        200,
        json!({"Customer": customer, "time": "2026-12-07T10:00:00Z"}),
    )
}

fn update_customer(state: &QboState, company: &mut Company, input: &Value) -> (u16, Value) {
    let id = input["Id"].as_str().unwrap_or_default().to_string();
    let Some(at) = company
        .customers
        .iter()
        .position(|c| c["Id"] == id.as_str())
    else {
        return fault(400, "ValidationFault", "610", "Object Not Found", &id);
    };
    if input["SyncToken"] != company.customers[at]["SyncToken"] {
        state.stale_faults.fetch_add(1, Ordering::SeqCst);
        return fault(
            200,
            "ValidationFault",
            "5010",
            "Stale Object Error",
            "Stale Object Error : You and root were working on this at the same time.",
        );
    }
    if input["sparse"] != true {
        return fault(
            400,
            "ValidationFault",
            "2020",
            "Required param missing",
            "a full update needs every field; send sparse",
        );
    }
    let mut customer = company.customers[at].clone();
    for (k, v) in input.as_object().unwrap() {
        if !matches!(k.as_str(), "Id" | "SyncToken" | "sparse") {
            customer[k] = v.clone();
        }
    }
    bump(&mut customer);
    company.customers[at] = customer.clone();
    (
        200,
        json!({"Customer": customer, "time": "2026-12-07T10:00:00Z"}),
    )
}

fn lines_total(company: &Company, lines: &Value) -> Result<(f64, Vec<Value>), (u16, Value)> {
    let Some(lines) = lines.as_array().filter(|l| !l.is_empty()) else {
        return Err(fault(
            400,
            "ValidationFault",
            "2020",
            "Required param missing, need to supply the required value for the API",
            "Required parameter Line is missing in the request",
        ));
    };
    let mut total = 0.0;
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line["DetailType"] != "SalesItemLineDetail" {
            return Err(fault(
                400,
                "ValidationFault",
                "2020",
                "Required param missing",
                "DetailType",
            ));
        }
        let item = line
            .pointer("/SalesItemLineDetail/ItemRef/value")
            .and_then(Value::as_str);
        if !item.is_some_and(|id| company.items.iter().any(|it| it["Id"] == id)) {
            return Err(fault(
                400,
                "ValidationFault",
                "2500",
                "Invalid Reference Id",
                "Invalid Reference Id : Item assigned to this transaction has been deleted or does not exist",
            ));
        }
        let Some(amount) = line["Amount"].as_f64() else {
            return Err(fault(
                400,
                "ValidationFault",
                "2020",
                "Required param missing",
                "Amount",
            ));
        };
        if amount > 99_999_999_999.0 {
            return Err(fault(
                400,
                "ValidationFault",
                "6000",
                "A business validation error has occurred while processing your request",
                "Business Validation Error: The amount is greater than 99,999,999,999.",
            ));
        }
        total += amount;
        let mut line = line.clone();
        line["Id"] = json!((i + 1).to_string());
        line["LineNum"] = json!(i + 1);
        out.push(line);
    }
    out.push(
        json!({"Amount": total, "DetailType": "SubTotalLineDetail", "SubTotalLineDetail": {}}),
    );
    Ok(((total * 100.0).round() / 100.0, out))
}

fn create_invoice(company: &mut Company, input: &Value) -> (u16, Value) {
    let customer = input.pointer("/CustomerRef/value").and_then(Value::as_str);
    if !customer.is_some_and(|id| company.customers.iter().any(|c| c["Id"] == id)) {
        return fault(
            400,
            "ValidationFault",
            "2500",
            "Invalid Reference Id",
            "Invalid Reference Id : Customer does not exist",
        );
    }
    let (total, lines) = match lines_total(company, &input["Line"]) {
        Ok(t) => t,
        Err(e) => return e,
    };
    let n = company.invoices.len();
    let mut invoice = input.clone();
    invoice["Id"] = json!(format!("{}", 130 + n));
    invoice["DocNumber"] = json!(format!("{}", 1037 + n));
    invoice["SyncToken"] = json!("0");
    invoice["TotalAmt"] = json!(total);
    invoice["Balance"] = json!(total);
    invoice["Line"] = json!(lines);
    invoice["MetaData"] = json!({"CreateTime": "2026-12-07T10:00:00-08:00", "LastUpdatedTime": "2026-12-07T10:00:00-08:00"});
    company.invoices.push(invoice.clone());
    (
        200,
        json!({"Invoice": invoice, "time": "2026-12-07T10:00:00Z"}),
    )
}

fn update_invoice(state: &QboState, company: &mut Company, input: &Value) -> (u16, Value) {
    let id = input["Id"].as_str().unwrap_or_default().to_string();
    let Some(at) = company.invoices.iter().position(|i| i["Id"] == id.as_str()) else {
        return fault(400, "ValidationFault", "610", "Object Not Found", &id);
    };
    if input["SyncToken"] != company.invoices[at]["SyncToken"] {
        state.stale_faults.fetch_add(1, Ordering::SeqCst);
        // As seen in the wild: a Fault inside a 200.
        return fault(
            200,
            "ValidationFault",
            "5010",
            "Stale Object Error",
            "Stale Object Error : You and root were working on this at the same time. root finished before you did, so your work was not saved.",
        );
    }
    if input["sparse"] != true {
        return fault(
            400,
            "ValidationFault",
            "2020",
            "Required param missing",
            "a full update needs every field; send sparse",
        );
    }
    let mut invoice = company.invoices[at].clone();
    if input.get("Line").is_some() {
        let (total, lines) = match lines_total(company, &input["Line"]) {
            Ok(t) => t,
            Err(e) => return e,
        };
        let paid = invoice["TotalAmt"].as_f64().unwrap() - invoice["Balance"].as_f64().unwrap();
        invoice["Line"] = json!(lines);
        invoice["TotalAmt"] = json!(total);
        invoice["Balance"] = json!(((total - paid) * 100.0).round() / 100.0);
    }
    bump(&mut invoice);
    company.invoices[at] = invoice.clone();
    (
        200,
        json!({"Invoice": invoice, "time": "2026-12-07T10:00:00Z"}),
    )
}
