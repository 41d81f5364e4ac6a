//! A local fake of an external service (OAuth2 authorization server and API) on an
//! ephemeral loopback port. It checks what a real one checks: client authentication,
//! PKCE, the redirect URI, single-use codes, rotated single-use refresh tokens, bearer
//! tokens and API keys.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{any, get, post};
use base64::Engine;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

pub const CLIENT_ID: &str = "probe-app";
pub const CLIENT_SECRET: &str = "probe-app-secret-9f2c";
pub const MACHINE_ID: &str = "tenant-machine";
pub const MACHINE_SECRET: &str = "tenant-machine-secret-77aa";
pub const API_KEY: &str = "sam-key-31415926";

#[derive(Default)]
pub struct FakeState {
    /// code → (code_challenge, redirect_uri, realm)
    codes: Mutex<HashMap<String, (String, String, String)>>,
    /// The account (realm) each access and refresh token is for.
    realms: Mutex<HashMap<String, String>>,
    /// Valid access tokens and refresh tokens.
    access: Mutex<Vec<String>>,
    refresh: Mutex<Vec<String>>,
    serial: AtomicU32,
    /// `expires_in` of the tokens it issues.
    pub expires_in: AtomicI64,
    /// Refresh requests refused with `invalid_grant`.
    pub refuse_refresh: AtomicBool,
    pub refreshes: AtomicU32,
    pub token_requests: AtomicU32,
    pub api_calls: AtomicU32,
    /// What the last API call carried.
    pub last_call: Mutex<Value>,
    /// Revoked tokens (the revocation endpoint).
    pub revoked: Mutex<Vec<String>>,
    /// Delay of `/v1/refresh-slowly` token answers, to overlap two refreshes.
    pub refresh_delay_ms: AtomicI64,
}

pub struct Fake {
    pub port: u16,
    pub state: Arc<FakeState>,
}

impl Fake {
    pub async fn start() -> Fake {
        let state = Arc::new(FakeState {
            expires_in: AtomicI64::new(3600),
            ..FakeState::default()
        });
        let app = Router::new()
            .route("/authorize", get(authorize))
            .route("/token", post(token))
            .route("/revoke", post(revoke))
            .route("/v1/big", get(big))
            .route("/v1/slow", get(slow))
            .route("/v1/redirect", get(redirect))
            .route("/v1/{*rest}", any(api))
            .with_state(state.clone());
        let port = serve(app).await;
        Fake { port, state }
    }

    /// Makes the current access tokens invalid (as a revocation elsewhere would).
    pub fn invalidate_access_tokens(&self) {
        self.state.access.lock().unwrap().clear();
    }

    pub fn issued(&self, text: &str) -> bool {
        let s = &self.state;
        s.access
            .lock()
            .unwrap()
            .iter()
            .any(|t| text.contains(t.as_str()))
            || s.refresh
                .lock()
                .unwrap()
                .iter()
                .any(|t| text.contains(t.as_str()))
    }
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The consent screen, approved at once: redirects to the client with a code (and the
/// account's `realmId`, as QuickBooks does).
async fn authorize(
    State(state): State<Arc<FakeState>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let need = |k: &str| q.get(k).cloned().unwrap_or_default();
    if need("response_type") != "code" || need("client_id") != CLIENT_ID {
        return (StatusCode::BAD_REQUEST, "bad client or response_type").into_response();
    }
    if need("code_challenge_method") != "S256" || need("code_challenge").len() < 43 {
        return (StatusCode::BAD_REQUEST, "PKCE S256 required").into_response();
    }
    if need("scope") != "probe.read probe.write" {
        return (StatusCode::BAD_REQUEST, "wrong scope").into_response();
    }
    let n = state.serial.fetch_add(1, Ordering::SeqCst);
    let code = format!("code-{n}-{}", uuid::Uuid::new_v4().simple());
    let realm = q.get("realm").cloned().unwrap_or_else(|| "9130350".into());
    state.codes.lock().unwrap().insert(
        code.clone(),
        (need("code_challenge"), need("redirect_uri"), realm.clone()),
    );
    let mut to = reqwest::Url::parse(&need("redirect_uri")).unwrap();
    to.query_pairs_mut()
        .append_pair("code", &code)
        .append_pair("state", &need("state"))
        .append_pair("realmId", &realm);
    Redirect::to(to.as_str()).into_response()
}

fn token_error(error: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(
            json!({"error": error, "error_description": format!("the fake refused: {error}")}),
        ),
    )
        .into_response()
}

/// Serves a fake's router on an ephemeral loopback port; the port.
pub async fn serve(app: Router) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    port
}

pub fn basic(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get("authorization")?.to_str().ok()?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(value.strip_prefix("Basic ")?)
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (id, secret) = text.split_once(':')?;
    let unform = |t: &str| url_decode(t);
    Some((unform(id), unform(secret)))
}

/// `a=1&b=2` (a form body or a query string) as decoded pairs, in order.
pub fn form_pairs(text: &str) -> Vec<(String, String)> {
    text.split('&')
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (url_decode(k), url_decode(v)))
        .collect()
}

pub fn url_decode(text: &str) -> String {
    let pairs: Vec<(String, String)> = reqwest::Url::parse(&format!("x:?v={text}"))
        .unwrap()
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    pairs.into_iter().next().map(|(_, v)| v).unwrap_or_default()
}

fn issue(state: &FakeState, with_refresh: bool, realm: Option<String>) -> Value {
    let n = state.serial.fetch_add(1, Ordering::SeqCst);
    let access = format!("at-{n}-{}", uuid::Uuid::new_v4().simple());
    state.access.lock().unwrap().push(access.clone());
    if let Some(realm) = &realm {
        state
            .realms
            .lock()
            .unwrap()
            .insert(access.clone(), realm.clone());
    }
    let mut answer = json!({
        "access_token": access,
        "token_type": "bearer",
        "expires_in": state.expires_in.load(Ordering::SeqCst),
    });
    if with_refresh {
        let refresh = format!("rt-{n}-{}", uuid::Uuid::new_v4().simple());
        state.refresh.lock().unwrap().push(refresh.clone());
        if let Some(realm) = realm {
            state.realms.lock().unwrap().insert(refresh.clone(), realm);
        }
        answer["refresh_token"] = json!(refresh);
    }
    answer
}

async fn token(State(state): State<Arc<FakeState>>, headers: HeaderMap, body: String) -> Response {
    state.token_requests.fetch_add(1, Ordering::SeqCst);
    let form: HashMap<String, String> = reqwest::Url::parse(&format!("x:?{body}"))
        .unwrap()
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let field = |k: &str| form.get(k).cloned().unwrap_or_default();
    let Some((id, secret)) = basic(&headers) else {
        return token_error("invalid_client");
    };
    match field("grant_type").as_str() {
        "authorization_code" => {
            if (id.as_str(), secret.as_str()) != (CLIENT_ID, CLIENT_SECRET) {
                return token_error("invalid_client");
            }
            let Some((challenge, redirect, realm)) =
                state.codes.lock().unwrap().remove(&field("code"))
            else {
                return token_error("invalid_grant");
            };
            if redirect != field("redirect_uri") {
                return token_error("invalid_grant");
            }
            if b64url(&Sha256::digest(field("code_verifier").as_bytes())) != challenge {
                return token_error("invalid_grant");
            }
            axum::Json(issue(&state, true, Some(realm))).into_response()
        }
        "refresh_token" => {
            if (id.as_str(), secret.as_str()) != (CLIENT_ID, CLIENT_SECRET) {
                return token_error("invalid_client");
            }
            state.refreshes.fetch_add(1, Ordering::SeqCst);
            let delay = state.refresh_delay_ms.load(Ordering::SeqCst);
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay as u64)).await;
            }
            if state.refuse_refresh.load(Ordering::SeqCst) {
                return token_error("invalid_grant");
            }
            // Single use: a refresh token works once, then the new one replaces it.
            let given = field("refresh_token");
            {
                let mut refresh = state.refresh.lock().unwrap();
                let Some(at) = refresh.iter().position(|t| *t == given) else {
                    return token_error("invalid_grant");
                };
                refresh.remove(at);
            }
            let realm = state.realms.lock().unwrap().get(&given).cloned();
            axum::Json(issue(&state, true, realm)).into_response()
        }
        "client_credentials" => {
            if (id.as_str(), secret.as_str()) != (MACHINE_ID, MACHINE_SECRET) {
                return token_error("invalid_client");
            }
            axum::Json(issue(&state, false, None)).into_response()
        }
        _ => token_error("unsupported_grant_type"),
    }
}

async fn revoke(State(state): State<Arc<FakeState>>, body: String) -> StatusCode {
    let token = url_decode(body.trim_start_matches("token="));
    state.revoked.lock().unwrap().push(token);
    StatusCode::OK
}

/// The API: a valid bearer token or API key, else 401. Echoes what it was sent.
async fn api(
    State(state): State<Arc<FakeState>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    body: String,
) -> Response {
    state.api_calls.fetch_add(1, Ordering::SeqCst);
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    // The API key is checked, not echoed (a test asserts no secret reaches a response).
    let shown: HashMap<&String, &String> = q.iter().filter(|(k, _)| *k != "api_key").collect();
    let echo = json!({
        "path": uri.path(),
        "query": shown,
        "api_key_ok": q.get("api_key").map(|k| k == API_KEY),
        "user_agent": headers.get("user-agent").and_then(|v| v.to_str().ok()),
        "authorized_by": match (&bearer, q.get("api_key")) {
            (Some(_), _) => "bearer",
            (None, Some(_)) => "api_key",
            _ => "nothing",
        },
        "body": body,
    });
    *state.last_call.lock().unwrap() = echo.clone();
    if uri.path() == "/v1/open" {
        return axum::Json(echo).into_response();
    }
    // `/v1/company/{realm}/info`: only a token issued for that account may read it.
    if let Some(realm) = uri
        .path()
        .strip_prefix("/v1/company/")
        .and_then(|p| p.strip_suffix("/info"))
    {
        let own = bearer
            .as_ref()
            .and_then(|t| state.realms.lock().unwrap().get(t).cloned());
        if own.as_deref() != Some(realm) {
            return (
                StatusCode::FORBIDDEN,
                axum::Json(json!({"fault": "not this company"})),
            )
                .into_response();
        }
    }
    let ok = match (&bearer, q.get("api_key")) {
        (Some(token), _) => state.access.lock().unwrap().contains(token),
        (None, Some(key)) => key == API_KEY,
        _ => false,
    };
    if !ok {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"fault": "AuthenticationFailed"})),
        )
            .into_response();
    }
    axum::Json(echo).into_response()
}

async fn big() -> Vec<u8> {
    vec![b'x'; 5 * 1024 * 1024]
}

async fn slow() -> &'static str {
    tokio::time::sleep(Duration::from_secs(3)).await;
    "late"
}

async fn redirect(Query(q): Query<HashMap<String, String>>) -> Response {
    Redirect::temporary(q.get("to").map(String::as_str).unwrap_or("/v1/open")).into_response()
}
