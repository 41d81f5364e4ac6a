//! A local fake of Google's OAuth 2.0 server and the Google Ads API's Local Services lead
//! calls, on an ephemeral loopback port, refusing what Google refuses:
//!
//! - OAuth: the client id and secret (HTTP Basic or the form body, as Google takes either),
//!   PKCE S256, the redirect URI, single-use codes; a refresh token only for
//!   `access_type=offline` (and, on a grant already made, only with `prompt=consent`);
//!   refreshes that keep the refresh token (Google does not rotate it); revocation.
//! - `POST /{version}/customers/{cid}/googleAds:search`: a bearer token it issued, a
//!   `developer-token` (missing: 400 `DEVELOPER_TOKEN_PARAMETER_MISSING`; unknown: 401
//!   `DEVELOPER_TOKEN_INVALID`), a `login-customer-id` that is the manager of `cid` (else
//!   403 `USER_PERMISSION_DENIED`), a GAQL query it parses (`SELECT` of known
//!   `local_services_lead` fields, `FROM local_services_lead`, `WHERE` conditions joined by
//!   `AND` on `creation_date_time` (a `'YYYY-MM-DD HH:MM:SS'` literal), `id`, `lead_status`
//!   and `lead_type`, `ORDER BY`, `LIMIT`; else 400 `QUERY_ERROR`), `pageSize` refused as
//!   since v17. Results are lowerCamelCase proto3 JSON of the selected fields only (int64
//!   as strings, false bools and empty strings left out), paged by `nextPageToken` (pages
//!   of `page_size`, 10,000 as Google's unless a test lowers it); a page token that is
//!   garbled or was issued for another query is 400 `INVALID_PAGE_TOKEN`.
//! - `POST /{version}/customers/{cid}/localServicesLeads/{id}:provideLeadFeedback`: the
//!   same checks, a survey answer with the matching satisfied or dissatisfied details
//!   (enum values of the v26 protos; an "other" reason needs its comment), once per lead.
//!
//! Leads are held per account with their creation times as Google gives them: naive
//! strings in the account's time zone (the tests' accounts are in America/Chicago).
//! Not known from Google's docs, and chosen here: the error a second feedback report gets
//! (400 `INVALID_ARGUMENT`, `requestError: RESOURCE_ALREADY_EXISTS`), and the credit
//! decisions it answers with.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use base64::Engine;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::fake::{basic, form_pairs};

pub const CLIENT_ID: &str = "81234567890-lsa.apps.googleusercontent.com";
pub const CLIENT_SECRET: &str = "GOCSPX-lsa-fake-secret-5e1f";
pub const DEVELOPER_TOKEN: &str = "LsaFakeDevToken0123456";
/// The provider's manager account (MCC).
pub const MANAGER: &str = "9876543210";
pub const SCOPE: &str = "https://www.googleapis.com/auth/adwords";
/// The hosts of the manifest, all served by the fake.
pub const HOSTS: [&str; 3] = [
    "googleads.googleapis.com",
    "oauth2.googleapis.com",
    "accounts.google.com",
];
/// The API versions served.
pub const VERSIONS: [&str; 4] = ["v23", "v24", "v25", "v26"];

/// `local_services_lead`'s fields (v26) and whether each may be filtered and sorted on here.
const FIELDS: [&str; 19] = [
    "resource_name",
    "id",
    "category_id",
    "service_id",
    "contact_details",
    "contact_details.phone_number",
    "contact_details.email",
    "contact_details.consumer_name",
    "lead_type",
    "lead_status",
    "creation_date_time",
    "locale",
    "note",
    "note.edit_date_time",
    "note.description",
    "lead_charged",
    "credit_details.credit_state",
    "credit_details.credit_state_last_update_date_time",
    "lead_feedback_submitted",
];
const FILTERABLE: [&str; 4] = ["creation_date_time", "id", "lead_status", "lead_type"];

#[derive(Default)]
pub struct AdsState {
    /// customer id → its leads (full lowerCamelCase JSON).
    pub accounts: Mutex<HashMap<String, Vec<Value>>>,
    /// Accounts linked to the manager.
    pub managed: Mutex<HashSet<String>>,
    /// code → (code_challenge, redirect_uri, offline)
    codes: Mutex<HashMap<String, (String, String, bool)>>,
    access: Mutex<HashSet<String>>,
    refresh: Mutex<HashSet<String>>,
    /// An offline grant was made before (a refresh token again only with prompt=consent).
    granted: AtomicBool,
    pub issued: Mutex<Vec<String>>,
    serial: AtomicU64,
    /// Each authorization request's query.
    pub authorizations: Mutex<Vec<HashMap<String, String>>>,
    /// Rows per page (Google's is 10,000).
    pub page_size: AtomicUsize,
    /// Successful searches before the next is answered 429 once (-1: never).
    pub throttle_after: AtomicI64,
    /// The next feedback report is applied and then answered 500 (its answer lost).
    pub lose_next_feedback_answer: AtomicBool,
    /// page token → (customer id, query, offset)
    tokens: Mutex<HashMap<String, (String, String, usize)>>,
    /// Every search answered 200: (customer id, query, page token, login-customer-id).
    pub searches: Mutex<Vec<Searched>>,
    /// Every feedback report applied: (resource name, body).
    pub feedback: Mutex<Vec<(String, Value)>>,
}

#[derive(Debug, Clone)]
pub struct Searched {
    pub customer: String,
    pub query: String,
    pub page_token: Option<String>,
    pub login_customer_id: Option<String>,
    pub rows: usize,
}

pub struct FakeGoogleAds {
    pub port: u16,
    pub state: Arc<AdsState>,
}

impl FakeGoogleAds {
    pub async fn start() -> FakeGoogleAds {
        let state = Arc::new(AdsState {
            page_size: AtomicUsize::new(10_000),
            throttle_after: AtomicI64::new(-1),
            ..AdsState::default()
        });
        let app = Router::new()
            .route("/o/oauth2/v2/auth", get(authorize))
            .route("/token", post(token))
            .route("/revoke", post(revoke))
            .route("/{version}/customers/{cid}/{method}", post(search))
            .route(
                "/{version}/customers/{cid}/localServicesLeads/{call}",
                post(provide_feedback),
            )
            .with_state(state.clone());
        let port = crate::fake::serve(app).await;
        FakeGoogleAds { port, state }
    }

    pub fn url(&self, host: &str, path: &str) -> String {
        format!("http://{host}:{}{path}", self.port)
    }

    /// An account; `managed`: linked to the provider's manager account.
    pub fn account(&self, customer_id: &str, managed: bool) {
        self.state
            .accounts
            .lock()
            .unwrap()
            .entry(customer_id.to_string())
            .or_default();
        if managed {
            self.state
                .managed
                .lock()
                .unwrap()
                .insert(customer_id.to_string());
        }
    }

    pub fn add_lead(&self, customer_id: &str, lead: Value) {
        self.state
            .accounts
            .lock()
            .unwrap()
            .get_mut(customer_id)
            .expect("an account")
            .push(lead);
    }

    /// Changes a lead as Google would (its status moves on, it is charged, ...).
    pub fn change_lead(&self, customer_id: &str, id: u64, change: impl FnOnce(&mut Value)) {
        let id = id.to_string();
        let mut accounts = self.state.accounts.lock().unwrap();
        let lead = accounts
            .get_mut(customer_id)
            .unwrap()
            .iter_mut()
            .find(|l| l["id"] == id.as_str())
            .expect("a lead");
        change(lead);
    }

    pub fn searches_of(&self, customer_id: &str) -> Vec<Searched> {
        self.state
            .searches
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.customer == customer_id)
            .cloned()
            .collect()
    }

    pub fn feedback_of(&self, customer_id: &str) -> Vec<(String, Value)> {
        let prefix = format!("customers/{customer_id}/");
        self.state
            .feedback
            .lock()
            .unwrap()
            .iter()
            .filter(|(r, _)| r.starts_with(&prefix))
            .cloned()
            .collect()
    }

    /// Whether `text` holds a token the fake issued, the client secret or the developer
    /// token.
    pub fn leaked(&self, text: &str) -> bool {
        self.state
            .issued
            .lock()
            .unwrap()
            .iter()
            .any(|t| text.contains(t.as_str()))
            || text.contains(CLIENT_SECRET)
            || text.contains(DEVELOPER_TOKEN)
    }
}

/// A lead as Google's API renders it: `kind` PHONE_CALL, MESSAGE or BOOKING; `contact`
/// (name, phone, email) left out for a lead whose details are gone (WIPED_OUT).
pub fn lead(
    customer_id: &str,
    id: u64,
    created: &str,
    kind: &str,
    status: &str,
    contact: Option<(&str, &str, &str)>,
) -> Value {
    let mut lead = json!({
        "resourceName": format!("customers/{customer_id}/localServicesLeads/{id}"),
        "id": id.to_string(),
        "categoryId": "xcat:service_area_business_hvac",
        "serviceId": "hvac_repair",
        "leadType": kind,
        "leadStatus": status,
        "creationDateTime": created,
        "locale": "en",
    });
    if let Some((name, phone, email)) = contact {
        let mut details = Map::new();
        for (k, v) in [
            ("consumerName", name),
            ("phoneNumber", phone),
            ("email", email),
        ] {
            // proto3 JSON leaves out an empty string.
            if !v.is_empty() {
                details.insert(k.into(), json!(v));
            }
        }
        lead["contactDetails"] = Value::Object(details);
    }
    lead
}

// ---- Errors ---------------------------------------------------------------------------

/// A refusal on its way out of the checks.
type Refused = Box<Response>;

/// Google's error body, with a GoogleAdsFailure of one error.
fn failure(status: StatusCode, rpc: &str, kind: &str, code: &str, message: &str) -> Response {
    let request_id = format!("fake-{}", uuid::Uuid::new_v4().simple());
    let mut error = json!({"errorCode": {kind: code}, "message": message});
    if code == "RESOURCE_EXHAUSTED" {
        error["details"] = json!({"quotaErrorDetails": {"rateScope": "DEVELOPER", "rateName": "Number of operations for basic access", "retryDelay": "30s"}});
    }
    (
        status,
        axum::Json(json!({"error": {
            "code": status.as_u16(),
            "message": "Request contains an invalid argument.",
            "status": rpc,
            "details": [{
                "@type": "type.googleapis.com/google.ads.googleads.v26.errors.GoogleAdsFailure",
                "errors": [error],
                "requestId": request_id,
            }],
        }})),
    )
        .into_response()
}

/// An error of Google's front end (no GoogleAdsFailure).
fn plain(status: StatusCode, rpc: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": {"code": status.as_u16(), "message": message, "status": rpc}})),
    )
        .into_response()
}

fn query_error(code: &str, message: &str) -> Refused {
    Box::new(failure(
        StatusCode::BAD_REQUEST,
        "INVALID_ARGUMENT",
        "queryError",
        code,
        message,
    ))
}

// ---- OAuth ----------------------------------------------------------------------------

async fn authorize(
    State(state): State<Arc<AdsState>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    state.authorizations.lock().unwrap().push(q.clone());
    let need = |k: &str| q.get(k).cloned().unwrap_or_default();
    if need("response_type") != "code" || need("client_id") != CLIENT_ID {
        return (StatusCode::BAD_REQUEST, "Error 400: invalid_request").into_response();
    }
    if !need("scope").split(' ').any(|s| s == SCOPE) {
        return (StatusCode::BAD_REQUEST, "Error 400: invalid_scope").into_response();
    }
    if need("code_challenge_method") != "S256" || need("code_challenge").len() < 43 {
        return (StatusCode::BAD_REQUEST, "Error 400: invalid_request (PKCE)").into_response();
    }
    if need("redirect_uri").is_empty() || need("state").is_empty() {
        return (StatusCode::BAD_REQUEST, "Error 400: redirect_uri_mismatch").into_response();
    }
    // A refresh token for offline access; after a first grant, only when consent is
    // prompted again.
    let offline = need("access_type") == "offline"
        && (!state.granted.load(Ordering::SeqCst) || need("prompt").contains("consent"));
    let code = format!(
        "4/0fake-{}-{}",
        state.serial.fetch_add(1, Ordering::SeqCst),
        uuid::Uuid::new_v4().simple()
    );
    state.codes.lock().unwrap().insert(
        code.clone(),
        (need("code_challenge"), need("redirect_uri"), offline),
    );
    let mut to = reqwest::Url::parse(&need("redirect_uri")).unwrap();
    to.query_pairs_mut()
        .append_pair("state", &need("state"))
        .append_pair("code", &code)
        .append_pair("scope", SCOPE);
    Redirect::to(to.as_str()).into_response()
}

fn oauth_error(error: &str, description: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({"error": error, "error_description": description})),
    )
        .into_response()
}

fn issue(state: &AdsState, with_refresh: bool) -> Value {
    let n = state.serial.fetch_add(1, Ordering::SeqCst);
    let access = format!("ya29.fake-{n}-{}", uuid::Uuid::new_v4().simple());
    state.access.lock().unwrap().insert(access.clone());
    state.issued.lock().unwrap().push(access.clone());
    let mut answer =
        json!({"access_token": access, "expires_in": 3599, "scope": SCOPE, "token_type": "Bearer"});
    if with_refresh {
        let refresh = format!("1//0fake-{n}-{}", uuid::Uuid::new_v4().simple());
        state.refresh.lock().unwrap().insert(refresh.clone());
        state.issued.lock().unwrap().push(refresh.clone());
        answer["refresh_token"] = json!(refresh);
    }
    answer
}

async fn token(State(state): State<Arc<AdsState>>, headers: HeaderMap, body: String) -> Response {
    let form: HashMap<String, String> = form_pairs(&body).into_iter().collect();
    let field = |k: &str| form.get(k).cloned().unwrap_or_default();
    let client = basic(&headers).unwrap_or_else(|| (field("client_id"), field("client_secret")));
    if client != (CLIENT_ID.to_string(), CLIENT_SECRET.to_string()) {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"error": "invalid_client", "error_description": "Unauthorized"})),
        )
            .into_response();
    }
    match field("grant_type").as_str() {
        "authorization_code" => {
            let Some((challenge, redirect, offline)) =
                state.codes.lock().unwrap().remove(&field("code"))
            else {
                return oauth_error("invalid_grant", "Malformed auth code.");
            };
            if redirect != field("redirect_uri") {
                return oauth_error("redirect_uri_mismatch", "Bad Request");
            }
            let verified = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(Sha256::digest(field("code_verifier").as_bytes()));
            if verified != challenge {
                return oauth_error("invalid_grant", "Invalid code verifier.");
            }
            if offline {
                state.granted.store(true, Ordering::SeqCst);
            }
            axum::Json(issue(&state, offline)).into_response()
        }
        "refresh_token" => {
            if !state
                .refresh
                .lock()
                .unwrap()
                .contains(&field("refresh_token"))
            {
                return oauth_error("invalid_grant", "Token has been expired or revoked.");
            }
            // Google keeps the refresh token: the answer has none.
            axum::Json(issue(&state, false)).into_response()
        }
        _ => oauth_error("unsupported_grant_type", "Invalid grant_type"),
    }
}

async fn revoke(State(state): State<Arc<AdsState>>, body: String) -> StatusCode {
    let form: HashMap<String, String> = form_pairs(&body).into_iter().collect();
    let token = form.get("token").cloned().unwrap_or_default();
    let known =
        state.refresh.lock().unwrap().remove(&token) || state.access.lock().unwrap().remove(&token);
    if known {
        StatusCode::OK
    } else {
        StatusCode::BAD_REQUEST
    }
}

// ---- The API's checks -----------------------------------------------------------------

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The checks every call passes first: the version, the token, the developer token, and
/// access to the customer through the manager account.
fn admit(state: &AdsState, version: &str, cid: &str, headers: &HeaderMap) -> Result<(), Refused> {
    if !VERSIONS.contains(&version) {
        return Err(Box::new(plain(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "Method not found.",
        )));
    }
    let Some(bearer) = header(headers, "authorization").and_then(|v| v.strip_prefix("Bearer "))
    else {
        return Err(Box::new(plain(
            StatusCode::UNAUTHORIZED,
            "UNAUTHENTICATED",
            "Request is missing required authentication credential. Expected OAuth 2 access token, login cookie or other valid authentication credential.",
        )));
    };
    if !state.access.lock().unwrap().contains(bearer) {
        return Err(Box::new(plain(
            StatusCode::UNAUTHORIZED,
            "UNAUTHENTICATED",
            "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential.",
        )));
    }
    match header(headers, "developer-token") {
        None => {
            return Err(Box::new(failure(
                StatusCode::BAD_REQUEST,
                "INVALID_ARGUMENT",
                "requestError",
                "DEVELOPER_TOKEN_PARAMETER_MISSING",
                "The developer-token parameter is required for all requests.",
            )));
        }
        Some(t) if t != DEVELOPER_TOKEN => {
            return Err(Box::new(failure(
                StatusCode::UNAUTHORIZED,
                "UNAUTHENTICATED",
                "authenticationError",
                "DEVELOPER_TOKEN_INVALID",
                "The developer token is not valid.",
            )));
        }
        Some(_) => {}
    }
    if cid.len() != 10 || !cid.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Box::new(failure(
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "requestError",
            "INVALID_CUSTOMER_ID",
            "Invalid customer ID.",
        )));
    }
    let managed = state.managed.lock().unwrap().contains(cid);
    if header(headers, "login-customer-id") != Some(MANAGER) || !managed {
        return Err(Box::new(failure(
            StatusCode::FORBIDDEN,
            "PERMISSION_DENIED",
            "authorizationError",
            "USER_PERMISSION_DENIED",
            "User doesn't have permission to access customer. Note: If you're accessing a client customer, the manager's customer id must be set in the 'login-customer-id' header. See https://developers.google.com/google-ads/api/docs/concepts/call-structure#cid",
        )));
    }
    Ok(())
}

// ---- GAQL -----------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Word(String),
    Text(String),
    Number(u64),
    Op(&'static str),
    Comma,
}

fn tokens(query: &str) -> Result<Vec<Token>, Refused> {
    let mut out = Vec::new();
    let chars: Vec<char> = query.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == ',' {
            out.push(Token::Comma);
            i += 1;
        } else if c == '\'' || c == '"' {
            let end = chars[i + 1..].iter().position(|d| *d == c).ok_or_else(|| {
                query_error("UNEXPECTED_END_OF_QUERY", "A string literal is not closed.")
            })?;
            out.push(Token::Text(chars[i + 1..i + 1 + end].iter().collect()));
            i += end + 2;
        } else if c.is_ascii_digit() {
            let len = chars[i..].iter().take_while(|d| d.is_ascii_digit()).count();
            let text: String = chars[i..i + len].iter().collect();
            out.push(Token::Number(text.parse().map_err(|_| {
                query_error("BAD_NUMBER", "The number is out of range.")
            })?));
            i += len;
        } else if c.is_ascii_alphabetic() || c == '_' {
            let len = chars[i..]
                .iter()
                .take_while(|d| d.is_ascii_alphanumeric() || **d == '_' || **d == '.')
                .count();
            out.push(Token::Word(chars[i..i + len].iter().collect()));
            i += len;
        } else {
            let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
            let op = ["!=", ">=", "<="]
                .into_iter()
                .find(|o| *o == two)
                .or(["=", ">", "<"].into_iter().find(|o| o.starts_with(c)));
            let Some(op) = op else {
                return Err(query_error(
                    "QUERY_ERROR",
                    &format!("Error in query: unexpected input {c}."),
                ));
            };
            out.push(Token::Op(op));
            i += op.len();
        }
    }
    Ok(out)
}

#[derive(Debug, Clone)]
struct Condition {
    field: String,
    op: &'static str,
    value: Token,
}

#[derive(Debug, Clone)]
struct Gaql {
    select: Vec<String>,
    conditions: Vec<Condition>,
    order: Vec<(String, bool)>,
    limit: Option<usize>,
}

fn keyword(t: Option<&Token>, word: &str) -> bool {
    matches!(t, Some(Token::Word(w)) if w.eq_ignore_ascii_case(word))
}

/// A field of `local_services_lead` named in the query, without the resource prefix.
fn field_name(t: Option<&Token>) -> Result<String, Refused> {
    let Some(Token::Word(w)) = t else {
        return Err(query_error(
            "UNEXPECTED_END_OF_QUERY",
            "Error in query: a field name was expected.",
        ));
    };
    let Some(name) = w.strip_prefix("local_services_lead.") else {
        return Err(query_error(
            "UNRECOGNIZED_FIELD",
            &format!("Unrecognized field in the query: '{w}'."),
        ));
    };
    if !FIELDS.contains(&name) {
        return Err(query_error(
            "UNRECOGNIZED_FIELD",
            &format!("Unrecognized field in the query: '{w}'."),
        ));
    }
    Ok(name.to_string())
}

fn parse(query: &str) -> Result<Gaql, Refused> {
    let t = tokens(query)?;
    let mut at = 0;
    if !keyword(t.first(), "SELECT") {
        return Err(query_error(
            "QUERY_ERROR",
            "Error in query: expected SELECT.",
        ));
    }
    at += 1;
    let mut select = Vec::new();
    loop {
        select.push(field_name(t.get(at))?);
        at += 1;
        if t.get(at) == Some(&Token::Comma) {
            at += 1;
            continue;
        }
        break;
    }
    if !keyword(t.get(at), "FROM") {
        return Err(query_error("QUERY_ERROR", "Error in query: expected FROM."));
    }
    at += 1;
    match t.get(at) {
        Some(Token::Word(r)) if r == "local_services_lead" => at += 1,
        Some(Token::Word(r)) => {
            return Err(query_error(
                "QUERY_ERROR",
                &format!("The fake serves only local_services_lead, not {r}."),
            ));
        }
        _ => {
            return Err(query_error(
                "UNEXPECTED_END_OF_QUERY",
                "Error in query: a resource was expected after FROM.",
            ));
        }
    }
    let mut conditions = Vec::new();
    if keyword(t.get(at), "WHERE") {
        at += 1;
        loop {
            let field = field_name(t.get(at))?;
            if !FILTERABLE.contains(&field.as_str()) {
                return Err(query_error(
                    "QUERY_ERROR",
                    &format!("The fake does not filter on {field}."),
                ));
            }
            let Some(Token::Op(op)) = t.get(at + 1) else {
                return Err(query_error(
                    "BAD_OPERATOR",
                    "Error in query: an operator was expected.",
                ));
            };
            let value = t.get(at + 2).cloned().ok_or_else(|| {
                query_error(
                    "UNEXPECTED_END_OF_QUERY",
                    "Error in query: a value was expected.",
                )
            })?;
            match (field.as_str(), &value) {
                ("creation_date_time", Token::Text(v)) if datetime(v) => {}
                ("creation_date_time", _) => {
                    return Err(query_error(
                        "QUERY_ERROR",
                        "creation_date_time is compared with a 'YYYY-MM-DD HH:MM:SS' literal.",
                    ));
                }
                ("id", Token::Number(_)) => {}
                ("lead_status" | "lead_type", Token::Word(_) | Token::Text(_)) => {}
                _ => {
                    return Err(query_error(
                        "QUERY_ERROR",
                        &format!("Error in query: a bad value for {field}."),
                    ));
                }
            }
            conditions.push(Condition { field, op, value });
            at += 3;
            if keyword(t.get(at), "AND") {
                at += 1;
                continue;
            }
            break;
        }
    }
    let mut order = Vec::new();
    if keyword(t.get(at), "ORDER") {
        if !keyword(t.get(at + 1), "BY") {
            return Err(query_error("QUERY_ERROR", "Error in query: expected BY."));
        }
        at += 2;
        loop {
            let field = field_name(t.get(at))?;
            at += 1;
            let mut ascending = true;
            if keyword(t.get(at), "DESC") {
                ascending = false;
                at += 1;
            } else if keyword(t.get(at), "ASC") {
                at += 1;
            }
            order.push((field, ascending));
            if t.get(at) == Some(&Token::Comma) {
                at += 1;
                continue;
            }
            break;
        }
    }
    let mut limit = None;
    if keyword(t.get(at), "LIMIT") {
        match t.get(at + 1) {
            Some(Token::Number(n)) if *n > 0 => limit = Some(*n as usize),
            _ => {
                return Err(query_error(
                    "BAD_LIMIT_VALUE",
                    "LIMIT takes a positive number.",
                ));
            }
        }
        at += 2;
    }
    if at != t.len() {
        return Err(query_error(
            "QUERY_ERROR",
            "Error in query: unexpected input after the query.",
        ));
    }
    Ok(Gaql {
        select,
        conditions,
        order,
        limit,
    })
}

fn datetime(v: &str) -> bool {
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    time::PrimitiveDateTime::parse(v, format).is_ok()
}

/// A field's value in a lead (snake_case path → lowerCamelCase JSON).
fn camel(path: &str) -> Vec<String> {
    path.split('.')
        .map(|part| {
            let mut out = String::new();
            let mut upper = false;
            for c in part.chars() {
                if c == '_' {
                    upper = true;
                } else if upper {
                    out.push(c.to_ascii_uppercase());
                    upper = false;
                } else {
                    out.push(c);
                }
            }
            out
        })
        .collect()
}

fn value_at<'a>(lead: &'a Value, path: &str) -> Option<&'a Value> {
    camel(path).iter().try_fold(lead, |v, k| v.get(k))
}

fn matches(lead: &Value, c: &Condition) -> bool {
    let ord = match (c.field.as_str(), &c.value) {
        ("id", Token::Number(n)) => value_at(lead, "id")
            .and_then(Value::as_str)
            .and_then(|s| s.parse::<u64>().ok())
            .map(|id| id.cmp(n)),
        (_, Token::Text(v) | Token::Word(v)) => value_at(lead, &c.field)
            .and_then(Value::as_str)
            .map(|s| s.cmp(v.as_str())),
        _ => None,
    };
    let Some(ord) = ord else {
        return false;
    };
    match c.op {
        "=" => ord.is_eq(),
        "!=" => ord.is_ne(),
        ">" => ord.is_gt(),
        ">=" => ord.is_ge(),
        "<" => ord.is_lt(),
        _ => ord.is_le(),
    }
}

fn sort_key(lead: &Value, field: &str) -> (u64, String) {
    let v = value_at(lead, field);
    match field {
        "id" => (
            v.and_then(Value::as_str)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0),
            String::new(),
        ),
        _ => (
            0,
            v.map(|v| v.as_str().map(str::to_string).unwrap_or(v.to_string()))
                .unwrap_or_default(),
        ),
    }
}

/// The selected fields of a lead, as the API renders them (the resource name always).
fn project(lead: &Value, select: &[String]) -> Value {
    let mut out = json!({"resourceName": lead["resourceName"]});
    for field in select {
        let Some(value) = value_at(lead, field) else {
            continue;
        };
        // proto3 JSON: a false bool is left out.
        if value == &json!(false) {
            continue;
        }
        let path = camel(field);
        let mut at = &mut out;
        for key in &path[..path.len() - 1] {
            at = at
                .as_object_mut()
                .unwrap()
                .entry(key.clone())
                .or_insert_with(|| json!({}));
        }
        at[path.last().unwrap().as_str()] = value.clone();
    }
    out
}

async fn search(
    State(state): State<Arc<AdsState>>,
    Path((version, cid, method)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: String,
) -> Response {
    if method != "googleAds:search" {
        return plain(StatusCode::NOT_FOUND, "NOT_FOUND", "Method not found.");
    }
    if let Err(r) = admit(&state, &version, &cid, &headers) {
        return *r;
    }
    let Ok(Value::Object(body)) = serde_json::from_str::<Value>(&body) else {
        return plain(
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "Invalid JSON payload received.",
        );
    };
    if body.contains_key("pageSize") {
        return failure(
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "requestError",
            "PAGE_SIZE_NOT_SUPPORTED",
            "Setting the page size is not supported. Search Responses will have fixed page size of '10000' rows.",
        );
    }
    if let Some(unknown) = body
        .keys()
        .find(|k| !["query", "pageToken"].contains(&k.as_str()))
    {
        return plain(
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            &format!(
                "Invalid JSON payload received. Unknown name \"{unknown}\": Cannot find field."
            ),
        );
    }
    let query = body
        .get("query")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let gaql = match parse(&query) {
        Ok(g) => g,
        Err(r) => return *r,
    };
    let token = body
        .get("pageToken")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .map(str::to_string);
    let offset = match &token {
        None => 0,
        Some(t) => match state.tokens.lock().unwrap().get(t) {
            Some((c, q, offset)) if *c == cid && *q == query => *offset,
            Some(_) => {
                return failure(
                    StatusCode::BAD_REQUEST,
                    "INVALID_ARGUMENT",
                    "requestError",
                    "INVALID_PAGE_TOKEN",
                    "Page token is invalid: it was issued for a different query.",
                );
            }
            None => {
                return failure(
                    StatusCode::BAD_REQUEST,
                    "INVALID_ARGUMENT",
                    "requestError",
                    "INVALID_PAGE_TOKEN",
                    "Page token is invalid.",
                );
            }
        },
    };
    let throttled = state
        .throttle_after
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| match n {
            n if n > 0 => Some(n - 1),
            0 => Some(-1),
            _ => None,
        });
    if throttled == Ok(0) {
        return failure(
            StatusCode::TOO_MANY_REQUESTS,
            "RESOURCE_EXHAUSTED",
            "quotaError",
            "RESOURCE_EXHAUSTED",
            "Too many requests. Retry in 30 seconds.",
        );
    }
    let mut found: Vec<Value> = state.accounts.lock().unwrap()[&cid]
        .iter()
        .filter(|l| gaql.conditions.iter().all(|c| matches(l, c)))
        .cloned()
        .collect();
    found.sort_by(|a, b| {
        for (field, ascending) in &gaql.order {
            let ord = sort_key(a, field).cmp(&sort_key(b, field));
            let ord = if *ascending { ord } else { ord.reverse() };
            if !ord.is_eq() {
                return ord;
            }
        }
        std::cmp::Ordering::Equal
    });
    if let Some(limit) = gaql.limit {
        found.truncate(limit);
    }
    let size = state.page_size.load(Ordering::SeqCst).max(1);
    let page: Vec<Value> = found
        .iter()
        .skip(offset)
        .take(size)
        .map(|l| json!({"localServicesLead": project(l, &gaql.select)}))
        .collect();
    let mut answer = json!({
        "results": page,
        "fieldMask": gaql.select.iter().map(|f| format!("localServicesLead.{}", camel(f).join("."))).collect::<Vec<_>>().join(","),
    });
    if offset + size < found.len() {
        let next = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(uuid::Uuid::new_v4().as_bytes());
        state
            .tokens
            .lock()
            .unwrap()
            .insert(next.clone(), (cid.clone(), query.clone(), offset + size));
        answer["nextPageToken"] = json!(next);
    }
    if answer["results"].as_array().unwrap().is_empty() {
        // An empty answer has no results at all.
        answer.as_object_mut().unwrap().remove("results");
    }
    state.searches.lock().unwrap().push(Searched {
        customer: cid,
        query,
        page_token: token,
        login_customer_id: header(&headers, "login-customer-id").map(str::to_string),
        rows: page.len(),
    });
    axum::Json(answer).into_response()
}

const SATISFIED: [&str; 5] = [
    "OTHER_SATISFIED_REASON",
    "BOOKED_CUSTOMER",
    "LIKELY_BOOKED_CUSTOMER",
    "SERVICE_RELATED",
    "HIGH_VALUE_SERVICE",
];
const DISSATISFIED: [&str; 7] = [
    "OTHER_DISSATISFIED_REASON",
    "GEO_MISMATCH",
    "JOB_TYPE_MISMATCH",
    "NOT_READY_TO_BOOK",
    "SPAM",
    "DUPLICATE",
    "SOLICITATION",
];

fn invalid(message: &str) -> Refused {
    Box::new(failure(
        StatusCode::BAD_REQUEST,
        "INVALID_ARGUMENT",
        "requestError",
        "INVALID_INPUT",
        message,
    ))
}

/// Checks a ProvideLeadFeedbackRequest body (the resource name is in the path).
fn check_feedback(body: &Map<String, Value>) -> Result<(), Refused> {
    if let Some(unknown) = body
        .keys()
        .find(|k| !["surveyAnswer", "surveySatisfied", "surveyDissatisfied"].contains(&k.as_str()))
    {
        return Err(Box::new(plain(
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            &format!(
                "Invalid JSON payload received. Unknown name \"{unknown}\": Cannot find field."
            ),
        )));
    }
    let answer = body.get("surveyAnswer").and_then(Value::as_str);
    let satisfied = matches!(answer, Some("VERY_SATISFIED" | "SATISFIED"));
    let dissatisfied = matches!(answer, Some("DISSATISFIED" | "VERY_DISSATISFIED"));
    if !satisfied && !dissatisfied && answer != Some("NEUTRAL") {
        return Err(invalid("survey_answer is required."));
    }
    let (key, reason_key, reasons, other) = if satisfied {
        (
            "surveySatisfied",
            "surveySatisfiedReason",
            &SATISFIED[..],
            "OTHER_SATISFIED_REASON",
        )
    } else {
        (
            "surveyDissatisfied",
            "surveyDissatisfiedReason",
            &DISSATISFIED[..],
            "OTHER_DISSATISFIED_REASON",
        )
    };
    let wrong = if satisfied {
        "surveyDissatisfied"
    } else {
        "surveySatisfied"
    };
    if body.contains_key(wrong) {
        return Err(invalid(&format!(
            "{wrong} does not go with survey answer {}.",
            answer.unwrap_or_default()
        )));
    }
    if answer == Some("NEUTRAL") {
        return Ok(());
    }
    let Some(details) = body.get(key).and_then(Value::as_object) else {
        return Err(invalid(&format!(
            "{key} is required for this survey answer."
        )));
    };
    let reason = details.get(reason_key).and_then(Value::as_str);
    if !reason.is_some_and(|r| reasons.contains(&r)) {
        return Err(invalid(&format!("{reason_key} is not a valid value.")));
    }
    let comment = details
        .get("otherReasonComment")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if reason == Some(other) && comment.trim().is_empty() {
        return Err(invalid(
            "other_reason_comment is required for an other reason.",
        ));
    }
    Ok(())
}

async fn provide_feedback(
    State(state): State<Arc<AdsState>>,
    Path((version, cid, call)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let Some(id) = call.strip_suffix(":provideLeadFeedback") else {
        return plain(StatusCode::NOT_FOUND, "NOT_FOUND", "Method not found.");
    };
    if let Err(r) = admit(&state, &version, &cid, &headers) {
        return *r;
    }
    let Ok(Value::Object(body)) = serde_json::from_str::<Value>(&body) else {
        return plain(
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "Invalid JSON payload received.",
        );
    };
    if let Err(r) = check_feedback(&body) {
        return *r;
    }
    let resource = format!("customers/{cid}/localServicesLeads/{id}");
    {
        let mut accounts = state.accounts.lock().unwrap();
        let Some(lead) = accounts
            .get_mut(&cid)
            .and_then(|leads| leads.iter_mut().find(|l| l["resourceName"] == resource))
        else {
            return failure(
                StatusCode::BAD_REQUEST,
                "INVALID_ARGUMENT",
                "requestError",
                "RESOURCE_NOT_FOUND",
                "Resource was not found.",
            );
        };
        if lead["leadFeedbackSubmitted"] == true {
            return failure(
                StatusCode::BAD_REQUEST,
                "INVALID_ARGUMENT",
                "requestError",
                "RESOURCE_ALREADY_EXISTS",
                "Feedback was already provided for this lead.",
            );
        }
        lead["leadFeedbackSubmitted"] = json!(true);
    }
    state
        .feedback
        .lock()
        .unwrap()
        .push((resource, Value::Object(body.clone())));
    if state
        .lose_next_feedback_answer
        .swap(false, Ordering::SeqCst)
    {
        return plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL",
            "Internal error encountered.",
        );
    }
    let decision = if body.contains_key("surveyDissatisfied") {
        "SUCCESS_NOT_REACHED_THRESHOLD"
    } else {
        "FAIL_NOT_ELIGIBLE"
    };
    axum::Json(json!({"creditIssuanceDecision": decision})).into_response()
}
