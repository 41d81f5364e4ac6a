//! SAM.gov opportunities for StreamFlow: a schedule searches SAM.gov's Get Opportunities API
//! (v2) for notices posted since the last search, filtered by the business's NAICS codes,
//! notice types, set-asides and states, and keeps each notice as a lead (the gov-contracting
//! template's opportunity) under its `noticeId`: an amended notice updates its lead, none is
//! stored twice, and each new one is scored by the tenant's scorer on arrival.
//!
//! SAM.gov keys have a small daily cap (10 requests a day without a SAM.gov role): the plugin
//! counts its requests per day and stops before the cap; the search resumes where it stopped.
//! The key is the host's: it adds `api_key` to each request, and the plugin never sees it.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use streamflow_plugin_sdk::text::{clip, digest, url_encode};
use streamflow_plugin_sdk::{
    Error, HostError, Plugin, ScheduleTick, host_message, http, kv, limits, log, records, schedules,
};

const CONNECTION: &str = "sam";
const CURSOR: &str = "import:cursor";
const USAGE: &str = "usage";
const SKIPPED: &str = "import:skipped";
const MAX_SKIPPED: usize = 100;
/// SAM.gov refuses a posted-date range of a year or more.
const MAX_WINDOW_DAYS: i64 = 364;

#[derive(Deserialize)]
#[serde(default)]
struct Settings {
    naics: Vec<String>,
    notice_types: Vec<String>,
    set_asides: Vec<String>,
    states: Vec<String>,
    lookback_days: i64,
    page_size: u32,
    daily_requests: u32,
    fetch_descriptions: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            naics: Vec::new(),
            notice_types: vec!["o".into(), "k".into(), "p".into(), "r".into()],
            set_asides: Vec::new(),
            states: Vec::new(),
            lookback_days: 30,
            page_size: 1000,
            daily_requests: 10,
            fetch_descriptions: false,
        }
    }
}

/// Where the search is: a window of posted dates, one query per NAICS code, pages of each.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Cursor {
    /// The window being searched (`YYYY-MM-DD`); none between windows.
    pub from: Option<String>,
    pub to: Option<String>,
    /// The NAICS code's index in the config (one query each).
    pub query: usize,
    /// SAM.gov's `offset`: the page index.
    pub page: u32,
    /// Where the next window starts: the day the last one ended (searched again, since it
    /// may have gained notices after the search).
    pub next_from: Option<String>,
    pub stored: u64,
    pub last_completed: Option<String>,
    /// Why the last run stopped early, if it did.
    pub paused: Option<String>,
    /// This window's page size.
    #[serde(default)]
    pub page_size: u32,
}

#[derive(Default, Serialize, Deserialize)]
struct Usage {
    day: String,
    requests: u32,
}

pub struct SamGov;

impl Plugin for SamGov {
    fn on_schedule(tick: ScheduleTick) -> Result<(), Error> {
        let settings: Settings = streamflow_plugin_sdk::config::get()?;
        import(&settings, tick.now)
    }

    fn run_action(name: &str, _input: Value) -> Result<Value, Error> {
        match name {
            "import-status" => Ok(json!({
                "cursor": kv::get_json::<Cursor>(CURSOR)?.unwrap_or_default(),
                "requests_today": kv::get_json::<Usage>(USAGE)?.map(|u| json!({"day": u.day, "requests": u.requests})),
                "skipped": kv::get_json::<Value>(SKIPPED)?.unwrap_or(json!([])),
            })),
            "restart-import" => {
                kv::delete(CURSOR)?;
                Ok(json!({"cursor": Cursor::default()}))
            }
            other => Err(Error::InvalidInput(format!(
                "no action {:?}; this plugin has import-status and restart-import",
                clip(other, 64)
            ))),
        }
    }
}

streamflow_plugin_sdk::export!(SamGov);

const ISO: &[time::format_description::BorrowedFormatItem<'static>] =
    time::macros::format_description!("[year]-[month]-[day]");
const US: &[time::format_description::BorrowedFormatItem<'static>] =
    time::macros::format_description!("[month]/[day]/[year]");

fn day_of(micros: i64) -> time::Date {
    time::OffsetDateTime::from_unix_timestamp_nanos(micros as i128 * 1000)
        .map(|t| t.date())
        .unwrap_or(time::Date::MIN)
}

fn iso(date: time::Date) -> String {
    date.format(ISO).unwrap_or_default()
}

fn parse_iso(text: &str) -> Option<time::Date> {
    time::Date::parse(text, ISO).ok()
}

/// `MM/dd/yyyy`, as SAM.gov wants its dates.
pub fn us_date(date: time::Date) -> String {
    date.format(US).unwrap_or_default()
}

fn pause(cursor: &mut Cursor, why: String, soon: bool) -> Result<(), Error> {
    log::info(&format!("import paused: {why}"));
    cursor.paused = Some(why);
    kv::set_json(CURSOR, cursor)?;
    if soon && let Err(e) = schedules::soon("import") {
        log::warn(&format!(
            "could not ask for the next run sooner: {}",
            host_message(&e)
        ));
    }
    Ok(())
}

/// One run: pages of the current window while the quotas and the key's daily cap allow.
fn import(settings: &Settings, now: i64) -> Result<(), Error> {
    let mut cursor: Cursor = kv::get_json(CURSOR)?.unwrap_or_default();
    cursor.paused = None;
    let today = day_of(now);
    if cursor.from.is_none() {
        // A new window: from where the last ended (or the lookback) to today, under a year.
        let earliest = today - time::Duration::days(MAX_WINDOW_DAYS);
        let from = cursor
            .next_from
            .as_deref()
            .and_then(parse_iso)
            .unwrap_or(
                today - time::Duration::days(settings.lookback_days.clamp(1, MAX_WINDOW_DAYS)),
            )
            .max(earliest);
        cursor.from = Some(iso(from));
        cursor.to = Some(iso(today));
        cursor.query = 0;
        cursor.page = 0;
        cursor.stored = 0;
    }
    let from = cursor.from.as_deref().and_then(parse_iso).unwrap_or(today);
    let to = cursor.to.as_deref().and_then(parse_iso).unwrap_or(today);
    let queries: Vec<Option<&str>> = if settings.naics.is_empty() {
        vec![None]
    } else {
        settings.naics.iter().map(|n| Some(n.as_str())).collect()
    };
    // Pages are numbered by their size, so it holds for a whole window; it is what one run
    // can store, and, with descriptions (a request each), what one run and one day's cap
    // can fetch.
    let left = limits::remaining();
    let mut fits = settings
        .page_size
        .clamp(1, 1000)
        .min(left.record_writes.max(1))
        .min(left.record_reads.max(1));
    if settings.fetch_descriptions {
        fits = fits
            .min(left.http_requests.saturating_sub(1).max(1))
            .min(settings.daily_requests.saturating_sub(1).max(1));
    }
    if cursor.page_size == 0 || (cursor.page == 0 && cursor.page_size != fits) {
        cursor.page_size = fits;
    } else if cursor.page_size > fits {
        // The quotas were lowered mid-query: that query again, in pages that fit.
        cursor.page_size = fits;
        cursor.page = 0;
    }
    let page_size = cursor.page_size;
    while let Some(naics) = queries.get(cursor.query).copied() {
        let left = limits::remaining();
        // A notice costs a read and a write (a lead the record type refuses is written
        // again with fewer fields: should that run out of writes, the next run redoes the
        // page, finding what was stored); a description one request more.
        let requests = if settings.fetch_descriptions {
            1 + page_size
        } else {
            1
        };
        if left.http_requests < requests
            || left.record_writes < page_size
            || left.record_reads < page_size
            || left.wall_ms < 5_000
        {
            return pause(&mut cursor, "this run's quotas are used".into(), true);
        }
        let mut usage: Usage = kv::get_json(USAGE)?.unwrap_or_default();
        if usage.day != iso(today) {
            usage = Usage {
                day: iso(today),
                requests: 0,
            };
        }
        if usage.requests + requests > settings.daily_requests {
            let why = format!(
                "the API key's daily cap: {} of {} requests made today; the search resumes tomorrow",
                usage.requests, settings.daily_requests
            );
            return pause(&mut cursor, why, false);
        }
        let mut url = format!(
            "/opportunities/v2/search?postedFrom={}&postedTo={}&limit={page_size}&offset={}",
            url_encode(&us_date(from)),
            url_encode(&us_date(to)),
            cursor.page
        );
        for t in &settings.notice_types {
            url.push_str(&format!("&ptype={}", url_encode(t)));
        }
        if let Some(code) = naics {
            url.push_str(&format!("&ncode={}", url_encode(code)));
        }
        // One value can be asked of SAM.gov; several are filtered here.
        if let [one] = settings.set_asides.as_slice() {
            url.push_str(&format!("&typeOfSetAside={}", url_encode(one)));
        }
        if let [one] = settings.states.as_slice() {
            url.push_str(&format!("&state={}", url_encode(one)));
        }
        usage.requests += 1;
        kv::set_json(USAGE, &usage)?;
        let page = match search(&url) {
            Ok(page) => page,
            Err(Stop::Throttled) => {
                // The key's day is used up as far as SAM.gov is concerned: no more requests
                // today (each hourly run would spend one more).
                usage.requests = usage.requests.max(settings.daily_requests);
                kv::set_json(USAGE, &usage)?;
                return pause(
                    &mut cursor,
                    "SAM.gov answered 429 (the key is over its rate)".into(),
                    false,
                );
            }
            Err(Stop::Error(e)) => {
                kv::set_json(CURSOR, &cursor)?;
                return Err(e);
            }
        };
        let notices = page
            .get("opportunitiesData")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for notice in &notices {
            if !wanted(notice, settings) {
                continue;
            }
            let description = if settings.fetch_descriptions {
                usage.requests += 1;
                kv::set_json(USAGE, &usage)?;
                description(notice)
            } else {
                None
            };
            upsert(notice, description)?;
            cursor.stored += 1;
        }
        let total = page
            .get("totalRecords")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let seen = (cursor.page as u64 + 1) * page_size as u64;
        if notices.len() < page_size as usize || seen >= total {
            cursor.query += 1;
            cursor.page = 0;
        } else {
            cursor.page += 1;
        }
        kv::set_json(CURSOR, &cursor)?;
    }
    // The window is searched: the next starts on its last day.
    log::info(&format!(
        "SAM.gov search from {} to {} complete: {} notices stored",
        iso(from),
        iso(to),
        cursor.stored
    ));
    let next = Cursor {
        next_from: cursor.to.clone(),
        last_completed: Some(iso(today)),
        stored: cursor.stored,
        ..Cursor::default()
    };
    kv::set_json(CURSOR, &next)?;
    Ok(())
}

enum Stop {
    Throttled,
    Error(Error),
}

/// One search request; SAM.gov's 404 ("No Data found") is an empty page.
fn search(url: &str) -> Result<Value, Stop> {
    let response = http::Request::get(url)
        .connection(CONNECTION)
        .header("Accept", "application/json")
        .timeout_ms(30_000)
        .send()
        .map_err(|e| Stop::Error(e.into()))?;
    let body: Option<Value> = serde_json::from_slice(&response.body).ok();
    let said = || {
        body.as_ref()
            .and_then(|b| {
                b.pointer("/error/message")
                    .or(b.get("errorMessage"))
                    .or(b.get("message"))
                    .or(b.get("error"))
            })
            .and_then(Value::as_str)
            .map(|m| clip(m, 300))
            .unwrap_or_else(|| format!("status {}", response.status))
    };
    match response.status {
        200..=299 => body.ok_or_else(|| {
            Stop::Error(Error::Failed(
                "SAM.gov answered with something that is not JSON".into(),
            ))
        }),
        404 => Ok(json!({"totalRecords": 0, "opportunitiesData": []})),
        429 => Err(Stop::Throttled),
        401 | 403 => Err(Stop::Error(Error::Failed(format!(
            "SAM.gov refused the API key ({}); a tenant admin enters a valid one under Integrations",
            said()
        )))),
        500..=599 => Err(Stop::Error(Error::RetryLater(format!(
            "SAM.gov failed: {}",
            said()
        )))),
        _ => Err(Stop::Error(Error::Failed(format!(
            "SAM.gov refused the search: {}",
            said()
        )))),
    }
}

/// The filters SAM.gov takes one value of, when the config lists several.
fn wanted(notice: &Value, settings: &Settings) -> bool {
    let set_aside_ok = settings.set_asides.len() < 2
        || text(notice, "typeOfSetAside")
            .is_some_and(|s| settings.set_asides.iter().any(|w| w == s));
    let state_ok = settings.states.len() < 2
        || text_at(notice, "/placeOfPerformance/state/code")
            .is_some_and(|s| settings.states.iter().any(|w| w == s));
    set_aside_ok && state_ok
}

/// A string field, SAM.gov's `"null"` (and blanks) as nothing.
fn text<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    clean(v.get(key))
}

fn text_at<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    clean(v.pointer(pointer))
}

fn clean(v: Option<&Value>) -> Option<&str> {
    v.and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty() && *s != "null")
}

fn description(notice: &Value) -> Option<String> {
    let url = text(notice, "description")?;
    if !url.starts_with("https://") && !url.starts_with("http://") {
        return Some(clip(url, 10_000));
    }
    // SAM.gov's own description URL goes through the connection's base (production or
    // alpha, as the provider set it), so the key is added there and nowhere else.
    let path = ["https://api.sam.gov", "https://api-alpha.sam.gov"]
        .iter()
        .find_map(|base| url.strip_prefix(base))
        .filter(|rest| rest.starts_with('/'))?;
    let response = match http::Request::get(path)
        .connection(CONNECTION)
        .timeout_ms(20_000)
        .send()
    {
        Ok(r) if r.is_success() => r,
        Ok(r) => {
            log::warn(&format!("a notice's description answered {}", r.status));
            return None;
        }
        Err(e) => {
            log::warn(&format!("a notice's description: {}", host_message(&e)));
            return None;
        }
    };
    let body: Value = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
    let text = body
        .get("description")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| String::from_utf8_lossy(&response.body).into_owned());
    (text != "Description not found").then(|| clip(&text, 10_000))
}

/// The template's notice type for SAM.gov's.
fn notice_type(kind: &str) -> Option<&'static str> {
    match kind.to_ascii_lowercase().as_str() {
        "solicitation" => Some("solicitation"),
        "combined synopsis/solicitation" => Some("combined"),
        "presolicitation" => Some("presolicitation"),
        "sources sought" => Some("sources_sought"),
        _ => None,
    }
}

/// The template's set-aside for SAM.gov's code: `none` for open competition, nothing for a
/// restriction the template has no value for (a veterans' or Indian set-aside is not open).
fn set_aside(code: Option<&str>) -> Option<&'static str> {
    match code {
        None => Some("none"),
        Some("SBA" | "SBP") => Some("small_business"),
        Some("8A" | "8AN") => Some("8a"),
        Some("HZC" | "HZS") => Some("hubzone"),
        Some("SDVOSBC" | "SDVOSBS") => Some("sdvosb"),
        Some("WOSB" | "WOSBSS") => Some("wosb"),
        Some("EDWOSB" | "EDWOSBSS") => Some("edwosb"),
        Some(_) => None,
    }
}

/// A notice as the lead's fields: those every opportunity has, and those a record type may
/// refuse (formats, patterns) apart.
pub fn mapped(
    notice: &Value,
    description: Option<String>,
) -> (Map<String, Value>, Map<String, Value>) {
    let mut core = Map::new();
    let mut extra = Map::new();
    let id = text(notice, "noticeId").unwrap_or_default();
    core.insert(
        "title".into(),
        json!(clip(
            text(notice, "title").unwrap_or("(untitled notice)"),
            500
        )),
    );
    core.insert("notice_id".into(), json!(id));
    core.insert("source".into(), json!("sam_gov"));
    if let Some(n) = text(notice, "solicitationNumber") {
        core.insert("solicitation_number".into(), json!(clip(n, 100)));
    }
    let path = text(notice, "fullParentPathName").unwrap_or_default();
    let mut parts = path.split('.').map(str::trim).filter(|p| !p.is_empty());
    for key in ["agency", "sub_agency", "office"] {
        if let Some(p) = parts.next() {
            core.insert(key.into(), json!(clip(p, 300)));
        }
    }
    if let Some(s) = set_aside(text(notice, "typeOfSetAside")) {
        core.insert("set_aside".into(), json!(s));
    }
    for (field, from) in [
        ("posted_date", "postedDate"),
        ("response_deadline", "responseDeadLine"),
    ] {
        if let Some(date) = text(notice, from)
            .and_then(|d| d.get(..10))
            .filter(|d| parse_iso(d).is_some())
        {
            extra.insert(field.into(), json!(date));
        }
    }
    if let Some(t) = text(notice, "type")
        .or(text(notice, "baseType"))
        .and_then(notice_type)
    {
        extra.insert("notice_type".into(), json!(t));
    }
    if let Some(n) = text(notice, "naicsCode") {
        extra.insert("naics".into(), json!(n));
    }
    if let Some(c) = text(notice, "classificationCode") {
        extra.insert("psc".into(), json!(clip(c, 8)));
    }
    if let Some(s) = text_at(notice, "/placeOfPerformance/state/code") {
        extra.insert("place_of_performance".into(), json!(s));
    }
    if let Some(link) = text(notice, "uiLink") {
        extra.insert("sam_url".into(), json!(clip(link, 2000)));
    }
    let contacts = notice.get("pointOfContact").and_then(Value::as_array);
    let primary = contacts.and_then(|c| {
        c.iter()
            .find(|p| text(p, "type") == Some("primary"))
            .or(c.first())
    });
    if let Some(p) = primary {
        if let Some(n) = text(p, "fullName") {
            extra.insert("name".into(), json!(clip(n, 200)));
        }
        if let Some(e) = text(p, "email") {
            extra.insert("email".into(), json!(clip(e, 254)));
        }
        if let Some(ph) = text(p, "phone") {
            extra.insert("phone".into(), json!(clip(ph, 40)));
        }
    }
    let mut sam = Map::new();
    sam.insert("notice_id".into(), json!(id));
    for (to, from) in [
        ("type", "type"),
        ("active", "active"),
        ("description_url", "description"),
        ("archive_date", "archiveDate"),
    ] {
        if let Some(v) = text(notice, from) {
            sam.insert(to.into(), json!(clip(v, 2000)));
        }
    }
    if let Some(links) = notice.get("resourceLinks").and_then(Value::as_array) {
        sam.insert(
            "resource_links".into(),
            json!(
                links
                    .iter()
                    .take(50)
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
            ),
        );
    }
    if let Some(d) = description {
        sam.insert("description".into(), json!(d));
    }
    sam.insert("fingerprint".into(), json!(digest(&notice.to_string())));
    core.insert("sam".into(), Value::Object(sam));
    (core, extra)
}

/// The notice's lead, created or updated under its noticeId. A lead the record type refuses
/// with every field is created with the fields every opportunity has; refused with those
/// too, the notice is skipped and listed (`import-status`).
fn upsert(notice: &Value, description: Option<String>) -> Result<(), Error> {
    let Some(id) = text(notice, "noticeId").map(str::to_string) else {
        return Ok(());
    };
    let (core, extra) = mapped(notice, description);
    let mut full = core.clone();
    full.extend(extra);
    for _ in 0..3 {
        match records::get_keyed("lead", &id)? {
            None => {
                let created =
                    match records::create_keyed("lead", &id, None, &Value::Object(full.clone())) {
                        Err(HostError::Invalid(_)) => {
                            records::create_keyed("lead", &id, None, &Value::Object(core.clone()))
                        }
                        other => other,
                    };
                match created {
                    Ok(_) => return Ok(()),
                    Err(HostError::Conflict(_)) => continue,
                    Err(HostError::Invalid(m)) => return skip(&id, &m),
                    Err(e) => return Err(e.into()),
                }
            }
            Some(lead) => {
                let mut data = lead.json()?;
                if data.pointer("/sam/fingerprint")
                    == full.get("sam").and_then(|s| s.get("fingerprint"))
                {
                    return Ok(());
                }
                // The notice's fields are replaced; what the business added stays.
                if let Some(object) = data.as_object_mut() {
                    for (k, v) in &full {
                        object.insert(k.clone(), v.clone());
                    }
                }
                match records::update("lead", &lead.id, None, &data, Some(lead.version)) {
                    Ok(_) => return Ok(()),
                    Err(HostError::Conflict(_)) => continue,
                    Err(HostError::Invalid(m)) => return skip(&id, &m),
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    Err(Error::RetryLater(format!(
        "the lead of notice {id} kept changing while it was imported"
    )))
}

fn skip(id: &str, why: &str) -> Result<(), Error> {
    log::warn(&format!(
        "SAM.gov notice {id} was not imported: {}",
        clip(why, 300)
    ));
    let mut skipped: Vec<Value> = kv::get_json(SKIPPED)?.unwrap_or_default();
    skipped.retain(|s| s["notice_id"] != id);
    skipped.push(json!({"notice_id": id, "error": clip(why, 300)}));
    let from = skipped.len().saturating_sub(MAX_SKIPPED);
    kv::set_json(SKIPPED, &skipped[from..].to_vec())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_written_as_sam_gov_wants_them() {
        let d = time::Date::from_calendar_date(2026, time::Month::March, 7).unwrap();
        assert_eq!(us_date(d), "03/07/2026");
        assert_eq!(iso(d), "2026-03-07");
    }

    #[test]
    fn a_notice_maps_to_an_opportunity_with_nulls_as_nothing() {
        let notice = json!({"noticeId": "5b34", "title": "Historic Office Renovation ", "solicitationNumber": " 47PF0018R0023 ",
            "fullParentPathName": "GENERAL SERVICES ADMINISTRATION.PUBLIC BUILDINGS SERVICE.PBS R5",
            "postedDate": "2018-05-04", "type": "Combined Synopsis/Solicitation", "typeOfSetAside": "null",
            "responseDeadLine": "2018-06-01T17:00:00-04:00", "naicsCode": "236220", "classificationCode": "Z",
            "pointOfContact": [{"type": "secondary", "fullName": "B"}, {"type": "primary", "email": "jesse.jones@gsa.gov", "phone": "2174941263", "fullName": "Jesse L. Jones"}],
            "placeOfPerformance": {"state": {"code": "WI"}}, "uiLink": "https://sam.gov/opp/5b34/view"});
        let (core, extra) = mapped(&notice, None);
        assert_eq!(core["title"], "Historic Office Renovation");
        assert_eq!(core["solicitation_number"], "47PF0018R0023");
        assert_eq!(core["agency"], "GENERAL SERVICES ADMINISTRATION");
        assert_eq!(core["office"], "PBS R5");
        assert_eq!(core["set_aside"], "none");
        assert_eq!(extra["notice_type"], "combined");
        assert_eq!(extra["response_deadline"], "2018-06-01");
        assert_eq!(extra["name"], "Jesse L. Jones");
        assert_eq!(extra["place_of_performance"], "WI");
        assert_eq!(set_aside(Some("SDVOSBC")), Some("sdvosb"));
        assert_eq!(set_aside(Some("VSA")), None);
    }

    #[test]
    fn an_amendment_changes_the_fingerprint() {
        let a = json!({"noticeId": "1", "title": "A"});
        let b = json!({"noticeId": "1", "title": "A (amended)"});
        assert_ne!(
            mapped(&a, None).0["sam"]["fingerprint"],
            mapped(&b, None).0["sam"]["fingerprint"]
        );
        assert_eq!(
            mapped(&a, None).0["sam"]["fingerprint"],
            mapped(&a.clone(), None).0["sam"]["fingerprint"]
        );
    }
}
