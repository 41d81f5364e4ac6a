//! A local fake of SAM.gov's Get Opportunities Public API (v2) on an ephemeral loopback
//! port, refusing what the real one refuses: a missing or unknown `api_key`, missing or
//! malformed `postedFrom`/`postedTo` (`MM/dd/yyyy`, under a year apart), a `limit` outside
//! 0-1000, a negative `offset`; answering an empty search with 404 "No Data found", the
//! string `"null"` for absent values, descriptions at their own `noticedesc` URL, and 429
//! once a key's daily requests are used.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use crate::fake::form_pairs;

pub const HOSTS: [&str; 1] = ["api.sam.gov"];
pub const API_KEY: &str = "sam-tenant-key-8c41e2";

#[derive(Default)]
pub struct SamState {
    pub notices: Mutex<Vec<Value>>,
    /// Requests a key may make a day.
    pub daily_cap: AtomicU32,
    pub requests: AtomicU32,
    /// Every search's query, in order.
    pub searches: Mutex<Vec<Vec<(String, String)>>>,
}

pub struct FakeSam {
    pub port: u16,
    pub state: Arc<SamState>,
}

impl FakeSam {
    pub async fn start() -> FakeSam {
        let state = Arc::new(SamState {
            daily_cap: AtomicU32::new(1000),
            ..SamState::default()
        });
        let app = Router::new()
            .route("/opportunities/v2/search", get(search))
            .route("/prod/opportunities/v1/noticedesc", get(description))
            .with_state(state.clone());
        let port = crate::fake::serve(app).await;
        FakeSam { port, state }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://api.sam.gov:{}{path}", self.port)
    }

    /// `n` notices with NAICS `naics`, posted over the last days before `today`
    /// (`YYYY-MM-DD`), ids `{prefix}-{i}`.
    pub fn publish(&self, prefix: &str, n: usize, naics: &str, today: time::Date) {
        let mut notices = self.state.notices.lock().unwrap();
        for i in 0..n {
            let posted = today - time::Duration::days((i % 20) as i64);
            let id = format!("{prefix}{i:05}");
            notices.push(json!({
                "noticeId": id, "title": format!("Facility maintenance {i}"), "solicitationNumber": format!("47PF{i:05}"),
                "fullParentPathName": "GENERAL SERVICES ADMINISTRATION.PUBLIC BUILDINGS SERVICE.PBS R5",
                "fullParentPathCode": "047.4740.47PF", "postedDate": posted.to_string(), "type": "Solicitation",
                "baseType": "Solicitation", "archiveType": "auto15", "archiveDate": "null",
                "typeOfSetAsideDescription": "Total Small Business Set-Aside (FAR 19.5)",
                "typeOfSetAside": if i % 3 == 0 { "SBA" } else { "null" },
                "responseDeadLine": (today + time::Duration::days(20)).to_string() + "T17:00:00-04:00",
                "naicsCode": naics, "classificationCode": "Z1", "active": "Yes",
                "pointOfContact": [{"fax": null, "type": "primary", "email": "jesse.jones@gsa.gov", "phone": "2174941263",
                                     "title": "Contracting Officer", "fullName": "Jesse L. Jones"}],
                "description": format!("https://api.sam.gov/prod/opportunities/v1/noticedesc?noticeid={id}"),
                "organizationType": "OFFICE", "placeOfPerformance": {"state": {"code": "WI", "name": "Wisconsin"}},
                "additionalInfoLink": "null", "uiLink": format!("https://sam.gov/opp/{id}/view"), "links": [], "resourceLinks": [],
            }));
        }
    }

    /// An amendment: the notice's title and deadline change (same noticeId).
    pub fn amend(&self, id: &str, title: &str) {
        let mut notices = self.state.notices.lock().unwrap();
        let notice = notices.iter_mut().find(|n| n["noticeId"] == id).unwrap();
        notice["title"] = json!(title);
        notice["type"] = json!("Combined Synopsis/Solicitation");
        // An amendment is posted anew.
        notice["postedDate"] = json!(time::OffsetDateTime::now_utc().date().to_string());
    }
}

fn refuse(status: StatusCode, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"errorCode": status.as_u16().to_string(), "errorMessage": message})),
    )
        .into_response()
}

fn parse_us(text: &str) -> Option<time::Date> {
    let format = time::macros::format_description!("[month]/[day]/[year]");
    time::Date::parse(text, format).ok()
}

fn pairs(raw: Option<String>) -> Vec<(String, String)> {
    form_pairs(&raw.unwrap_or_default())
}

/// The gateway's key check and daily count (api.data.gov's error shape).
fn key_check(state: &SamState, query: &[(String, String)]) -> Result<(), Box<Response>> {
    let key = query
        .iter()
        .find(|(k, _)| k == "api_key")
        .map(|(_, v)| v.as_str());
    match key {
        None => Err(Box::new((StatusCode::FORBIDDEN, axum::Json(json!({"error": {"code": "API_KEY_MISSING", "message": "No api_key was supplied"}}))).into_response())),
        Some(k) if k != API_KEY => Err(Box::new((StatusCode::FORBIDDEN, axum::Json(json!({"error": {"code": "API_KEY_INVALID", "message": "An invalid api_key was supplied"}}))).into_response())),
        Some(_) => {
            let n = state.requests.fetch_add(1, Ordering::SeqCst) + 1;
            if n > state.daily_cap.load(Ordering::SeqCst) {
                return Err(Box::new((StatusCode::TOO_MANY_REQUESTS, axum::Json(json!({"error": {"code": "OVER_RATE_LIMIT", "message": "You have exceeded your rate limit."}}))).into_response()));
            }
            Ok(())
        }
    }
}

async fn search(State(state): State<Arc<SamState>>, RawQuery(raw): RawQuery) -> Response {
    let query = pairs(raw);
    if let Err(r) = key_check(&state, &query) {
        return *r;
    }
    state.searches.lock().unwrap().push(query.clone());
    let one = |k: &str| query.iter().find(|(q, _)| q == k).map(|(_, v)| v.clone());
    let all = |k: &str| -> Vec<String> {
        query
            .iter()
            .filter(|(q, _)| q == k)
            .map(|(_, v)| v.clone())
            .collect()
    };
    let (Some(from), Some(to)) = (one("postedFrom"), one("postedTo")) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "PostedFrom and PostedTo are mandatory",
        );
    };
    let (Some(from), Some(to)) = (parse_us(&from), parse_us(&to)) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "Invalid Date Entered. Expected date format is MM/dd/yyyy",
        );
    };
    if (to - from).whole_days() >= 365 || to < from {
        return refuse(
            StatusCode::BAD_REQUEST,
            "Date range must be 1 year(s) apart",
        );
    }
    let limit: i64 = match one("limit").map(|l| l.parse::<i64>()) {
        None => 1,
        Some(Ok(l)) if (0..=1000).contains(&l) => l,
        Some(_) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "Limit valid range is 0-1000. Please provide valid input.",
            );
        }
    };
    let offset: i64 = match one("offset").map(|o| o.parse::<i64>()) {
        None => 0,
        Some(Ok(o)) if o >= 0 => o,
        Some(_) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "limit/offset must be a positive number.",
            );
        }
    };
    let ptypes = all("ptype");
    let kinds: HashMap<&str, &str> = [
        ("o", "Solicitation"),
        ("k", "Combined Synopsis/Solicitation"),
        ("p", "Presolicitation"),
        ("r", "Sources Sought"),
    ]
    .into();
    let notices = state.notices.lock().unwrap();
    let matching: Vec<&Value> = notices
        .iter()
        .filter(|n| {
            let posted = n["postedDate"].as_str().and_then(|d| {
                time::Date::parse(d, time::macros::format_description!("[year]-[month]-[day]")).ok()
            });
            posted.is_some_and(|p| p >= from && p <= to)
        })
        .filter(|n| one("ncode").is_none_or(|c| n["naicsCode"] == c.as_str()))
        .filter(|n| one("typeOfSetAside").is_none_or(|c| n["typeOfSetAside"] == c.as_str()))
        .filter(|n| {
            one("state").is_none_or(|c| n["placeOfPerformance"]["state"]["code"] == c.as_str())
        })
        .filter(|n| {
            ptypes.is_empty()
                || ptypes
                    .iter()
                    .any(|t| kinds.get(t.as_str()).is_some_and(|k| n["type"] == *k))
        })
        .collect();
    if matching.is_empty() {
        return refuse(StatusCode::NOT_FOUND, "No Data found");
    }
    // `offset` is the page index.
    let page: Vec<&Value> = matching
        .iter()
        .skip((offset * limit) as usize)
        .take(limit as usize)
        .copied()
        .collect();
    axum::Json(json!({"totalRecords": matching.len(), "limit": limit, "offset": offset, "opportunitiesData": page, "links": []}))
        .into_response()
}

async fn description(State(state): State<Arc<SamState>>, RawQuery(raw): RawQuery) -> Response {
    let query = pairs(raw);
    if let Err(r) = key_check(&state, &query) {
        return *r;
    }
    let id = query
        .iter()
        .find(|(k, _)| k == "noticeid")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    axum::Json(json!({"description": format!("<p>Scope of work for notice {id}: janitorial and maintenance services.</p>")}))
        .into_response()
}
