//! ServiceTitan for StreamFlow.
//!
//! - **Import** (schedule `import`, every 15 minutes): customers become `contact` records
//!   and jobs `job` records, keyed by their ServiceTitan id (`data.servicetitan.id`, and a
//!   kv mapping), so a repeated import updates instead of duplicating. Each sweep asks for
//!   what changed since the last one began (`modifiedOnOrAfter`), page by page; the cursor
//!   moves past a page only once the page is stored, so a failed or throttled run resumes
//!   at the page it stopped on. A run stops before a page it lacks the quota to store.
//! - **Push**: a lead scored at a configured temperature becomes one ServiceTitan booking
//!   (`externalId` = the lead's id), its id written back on the lead.
//! - **Webhooks**: a job change re-reads that job and stores it, between imports.
//!
//! The plugin never sees a token or the app key: the host's `servicetitan` connection adds
//! both to every call.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use streamflow_plugin_sdk::text::{clip, url_encode};
use streamflow_plugin_sdk::{
    Error, Event, HostError, HttpRequest, HttpResponse, Plugin, ScheduleTick, host_message, kv,
    limits, log, records, schedules,
};

pub mod st;

use st::{StError, Tenant, id_text};

const CURSOR: &str = "import:cursor";
/// Jobs one webhook delivery has read (each a request of the call's quota).
const MAX_WEBHOOK_JOBS: usize = 20;
/// How far before a sweep's start the next sweep looks (clock skew between us and
/// ServiceTitan, and changes committed while the sweep ran).
const OVERLAP_SECONDS: i64 = 300;

#[derive(Deserialize)]
#[serde(default)]
struct Settings {
    booking_provider_id: Option<i64>,
    booking_source: String,
    import_customers: bool,
    import_jobs: bool,
    page_size: u32,
    job_stages: BTreeMap<String, String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            booking_provider_id: None,
            booking_source: "StreamFlow".into(),
            import_customers: true,
            import_jobs: true,
            page_size: 100,
            job_stages: BTreeMap::new(),
        }
    }
}

fn settings() -> Result<Settings, Error> {
    streamflow_plugin_sdk::config::get()
}

/// What is being imported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Customers,
    Jobs,
}

impl Phase {
    fn record_type(self) -> &'static str {
        match self {
            Phase::Customers => "contact",
            Phase::Jobs => "job",
        }
    }

    fn path(self) -> (&'static str, &'static str) {
        match self {
            Phase::Customers => ("crm", "customers"),
            Phase::Jobs => ("jpm", "jobs"),
        }
    }
}

/// Where the import is: the page of the phase of the current sweep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cursor {
    pub phase: Phase,
    pub page: u32,
    /// `modifiedOnOrAfter` of this sweep (none: everything).
    pub since: Option<String>,
    /// When this sweep began: the next sweep's `since`.
    pub sweep_started: Option<String>,
    /// Records stored by this sweep so far.
    #[serde(default)]
    pub stored: u64,
    /// When the last sweep finished.
    #[serde(default)]
    pub last_completed: Option<String>,
    /// This sweep's page size (pages are numbered by it, so it holds for a whole sweep).
    #[serde(default)]
    pub page_size: u32,
}

impl Default for Cursor {
    fn default() -> Self {
        Cursor {
            phase: Phase::Customers,
            page: 1,
            since: None,
            sweep_started: None,
            stored: 0,
            last_completed: None,
            page_size: 0,
        }
    }
}

pub struct ServiceTitan;

impl Plugin for ServiceTitan {
    fn on_schedule(tick: ScheduleTick) -> Result<(), Error> {
        let outcome = import(&settings()?, tick.now)?;
        log::info(&outcome.to_string());
        Ok(())
    }

    fn on_event(event: Event) -> Result<(), Error> {
        if event.record_type.as_deref() != Some("lead") {
            return Ok(());
        }
        let Some(lead_id) = event.record_id.as_deref() else {
            return Ok(());
        };
        book_lead(lead_id, &settings()?, event.at).map(|_| ())
    }

    fn run_action(name: &str, input: Value) -> Result<Value, Error> {
        match name {
            "book-lead" => {
                let lead_id = input
                    .get("lead_id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| {
                        Error::InvalidInput("give the lead as {\"lead_id\": \"...\"}".into())
                    })?;
                book_lead(lead_id, &settings()?, 0)
            }
            "import-status" => Ok(json!({
                "cursor": kv::get_json::<Cursor>(CURSOR)?.unwrap_or_default(),
                "skipped": kv::get_json::<Value>(SKIPPED)?.unwrap_or(json!([])),
            })),
            "restart-import" => {
                // The next run imports everything again (upserts: nothing is duplicated).
                kv::delete(CURSOR)?;
                Ok(json!({"cursor": Cursor::default()}))
            }
            other => Err(Error::InvalidInput(format!(
                "no action {:?}; this plugin has book-lead, import-status and restart-import",
                clip(other, 64)
            ))),
        }
    }

    fn handle_webhook(request: HttpRequest) -> Result<HttpResponse, Error> {
        let body: Value = serde_json::from_slice(&request.body)
            .map_err(|_| Error::InvalidInput("the delivery is not JSON".into()))?;
        let ids = webhook_job_ids(&body);
        let tenant = st::tenant()?;
        let settings = settings()?;
        let mut stored = 0;
        if ids.len() > MAX_WEBHOOK_JOBS {
            log::warn(&format!(
                "a delivery named {} jobs; the first {MAX_WEBHOOK_JOBS} are read now, the rest at the next import",
                ids.len()
            ));
        }
        for id in ids.iter().take(MAX_WEBHOOK_JOBS) {
            // The delivery says which job changed; the job as ServiceTitan has it now is
            // what is stored (a late or repeated delivery cannot store an older state).
            match tenant.send(
                "GET",
                &tenant.path("jpm", &format!("jobs/{}", url_encode(id))),
                None,
            ) {
                Ok(job) => {
                    upsert(Phase::Jobs, &job, &settings)?;
                    stored += 1;
                }
                Err(StError::NotFound) => log::warn(&format!("ServiceTitan job {id} is gone")),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(HttpResponse {
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            body: json!({"stored": stored}).to_string().into_bytes(),
        })
    }
}

streamflow_plugin_sdk::export!(ServiceTitan);

/// The job ids a webhook delivery names: a job object (`id` with `jobStatus` or
/// `jobNumber`), a `jobId`, under `data` or at the top, or a list of them.
pub fn webhook_job_ids(body: &Value) -> Vec<String> {
    fn one(v: &Value) -> Option<String> {
        let looks_like_job = v.get("jobStatus").is_some() || v.get("jobNumber").is_some();
        id_text(v.get("jobId")).or_else(|| looks_like_job.then(|| id_text(v.get("id"))).flatten())
    }
    let mut ids = Vec::new();
    let candidates: Vec<&Value> = match body {
        Value::Array(items) => items.iter().collect(),
        _ => vec![body],
    };
    for c in candidates {
        let found = c
            .get("data")
            .and_then(|d| match d {
                Value::Array(items) => Some(items.iter().filter_map(one).collect::<Vec<_>>()),
                d => one(d).map(|i| vec![i]),
            })
            .or_else(|| c.get("job").and_then(one).map(|i| vec![i]))
            .or_else(|| one(c).map(|i| vec![i]))
            .unwrap_or_default();
        for id in found {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
    }
    ids
}

/// How a run ended.
pub enum Outcome {
    /// The sweep is done; the next run asks only for changes.
    Completed { stored: u64 },
    /// Stopped before the sweep's end (quota or throttling); the next run resumes.
    Paused { reason: String, cursor: Cursor },
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Completed { stored } => {
                write!(f, "import sweep complete: {stored} records stored")
            }
            Outcome::Paused { reason, cursor } => write!(
                f,
                "import paused at {:?} page {} ({reason}); the next run resumes there",
                cursor.phase, cursor.page
            ),
        }
    }
}

fn rfc3339(micros: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(micros as i128 * 1000)
        .ok()
        .and_then(|t| t.replace_nanosecond(0).ok())
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".into())
}

/// One import run: pages of the current phase while the quota lasts.
fn import(settings: &Settings, now: i64) -> Result<Outcome, Error> {
    let tenant = st::tenant()?;
    let mut cursor: Cursor = kv::get_json(CURSOR)?.unwrap_or_default();
    if cursor.sweep_started.is_none() {
        cursor.sweep_started = Some(rfc3339(now - OVERLAP_SECONDS * 1_000_000));
        cursor.stored = 0;
    }
    // A record costs at most two reads (itself, a job's customer) and two writes (a stage
    // the pipeline refuses is written again without it): a page must fit in one call's
    // quotas.
    let left = limits::remaining();
    let fits = (left.record_writes / 2).min(left.record_reads / 2).max(1);
    let wanted = settings.page_size.clamp(1, 500).min(fits);
    if cursor.page_size == 0 {
        cursor.page_size = wanted;
    } else if cursor.page_size > fits {
        // The quotas were lowered mid-sweep: this phase again, in pages that fit (what was
        // stored is found again and left as it is).
        log::warn(&format!(
            "pages of {} no longer fit this installation's quotas; the {:?} import restarts in pages of {wanted}",
            cursor.page_size, cursor.phase
        ));
        cursor.page_size = wanted;
        cursor.page = 1;
    }
    let page_size = cursor.page_size;
    loop {
        let enabled = match cursor.phase {
            Phase::Customers => settings.import_customers,
            Phase::Jobs => settings.import_jobs,
        };
        if !enabled {
            if !advance_phase(&mut cursor) {
                break;
            }
            continue;
        }
        let left = limits::remaining();
        // A page costs a request, and per record up to one read (the record it updates)
        // and one write.
        if left.http_requests < 1
            || left.record_writes < 2 * page_size
            || left.record_reads < 2 * page_size
            || left.wall_ms < 5_000
        {
            kv::set_json(CURSOR, &cursor)?;
            // More to do than one run can store: the next run comes in a minute, not at
            // the next interval.
            if let Err(e) = schedules::soon("import") {
                log::warn(&format!(
                    "could not ask for the next run sooner: {}",
                    host_message(&e)
                ));
            }
            return Ok(Outcome::Paused {
                reason: "this run's quota is used".into(),
                cursor,
            });
        }
        let (module, resource) = cursor.phase.path();
        let mut url = format!(
            "{}?page={}&pageSize={page_size}&sort=%2BId&active=Any",
            tenant.path(module, resource),
            cursor.page
        );
        if let Some(since) = &cursor.since {
            url.push_str(&format!("&modifiedOnOrAfter={}", url_encode(since)));
        }
        let page = match tenant.send("GET", &url, None) {
            Ok(page) => page,
            Err(StError::Throttled(after)) => {
                kv::set_json(CURSOR, &cursor)?;
                return Ok(Outcome::Paused {
                    reason: format!(
                        "ServiceTitan throttled the import (429{})",
                        after
                            .map(|s| format!(", retry after {s} s"))
                            .unwrap_or_default()
                    ),
                    cursor,
                });
            }
            Err(e) => {
                kv::set_json(CURSOR, &cursor)?;
                return Err(e.into());
            }
        };
        let items = page
            .get("data")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for item in &items {
            upsert(cursor.phase, item, settings)?;
        }
        cursor.stored += items.len() as u64;
        let more = page
            .get("hasMore")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if more && !items.is_empty() {
            cursor.page += 1;
        } else if !advance_phase(&mut cursor) {
            break;
        }
        kv::set_json(CURSOR, &cursor)?;
    }
    // The sweep is complete: the next asks for what changed since this one began.
    let stored = cursor.stored;
    let next = Cursor {
        since: cursor.sweep_started.take(),
        last_completed: Some(rfc3339(now)),
        ..Cursor::default()
    };
    kv::set_json(CURSOR, &next)?;
    Ok(Outcome::Completed { stored })
}

/// The next phase's first page; false after the last phase.
fn advance_phase(cursor: &mut Cursor) -> bool {
    match cursor.phase {
        Phase::Customers => {
            cursor.phase = Phase::Jobs;
            cursor.page = 1;
            true
        }
        Phase::Jobs => false,
    }
}

fn text<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// A ServiceTitan address as one line.
fn address_line(a: &Value) -> Option<String> {
    let parts: Vec<&str> = ["street", "unit", "city", "state", "zip"]
        .iter()
        .filter_map(|k| text(a, k))
        .collect();
    (!parts.is_empty()).then(|| parts.join(", "))
}

/// What a ServiceTitan customer or job becomes: the record's data (the fields this plugin
/// owns) and its stage.
fn mapped(
    phase: Phase,
    item: &Value,
    settings: &Settings,
    contact: Option<(String, String)>,
) -> (Map<String, Value>, Option<String>) {
    let mut data = Map::new();
    let mut st = Map::new();
    st.insert("id".into(), json!(id_text(item.get("id"))));
    for (from, to) in [("modifiedOn", "modified_on"), ("createdOn", "created_on")] {
        if let Some(v) = item.get(from) {
            st.insert(to.into(), v.clone());
        }
    }
    let mut stage = None;
    match phase {
        Phase::Customers => {
            let name = text(item, "name").unwrap_or("(no name)");
            data.insert("name".into(), json!(clip(name, 200)));
            if let Some(a) = item.get("address").and_then(address_line) {
                data.insert("address".into(), json!(clip(&a, 500)));
            }
            for c in item
                .get("contacts")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let (Some(kind), Some(value)) = (text(c, "type"), text(c, "value")) else {
                    continue;
                };
                let field = match kind {
                    "Email" => "email",
                    "Phone" | "MobilePhone" => "phone",
                    _ => continue,
                };
                data.entry(field).or_insert_with(|| json!(clip(value, 254)));
            }
            st.insert(
                "type".into(),
                item.get("type").cloned().unwrap_or(Value::Null),
            );
            st.insert(
                "active".into(),
                item.get("active").cloned().unwrap_or(json!(true)),
            );
            if let Some(b) = item.get("balance") {
                st.insert("balance".into(), b.clone());
            }
        }
        Phase::Jobs => {
            let number = text(item, "jobNumber")
                .map(str::to_string)
                .or(id_text(item.get("id")))
                .unwrap_or_default();
            let title = text(item, "summary")
                .map(strip_markup)
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| format!("ServiceTitan job {number}"));
            data.insert("title".into(), json!(clip(&title, 200)));
            if let Some((contact_id, name)) = contact {
                data.insert("contact_id".into(), json!(contact_id));
                data.insert("customer_name".into(), json!(clip(&name, 200)));
            }
            st.insert("job_number".into(), json!(number));
            for (from, to) in [
                ("customerId", "customer_id"),
                ("locationId", "location_id"),
                ("jobStatus", "status"),
                ("completedOn", "completed_on"),
                ("businessUnitId", "business_unit_id"),
                ("jobTypeId", "job_type_id"),
            ] {
                if let Some(v) = item.get(from).filter(|v| !v.is_null()) {
                    st.insert(to.into(), v.clone());
                }
            }
            stage = text(item, "jobStatus")
                .and_then(|s| settings.job_stages.get(s))
                .cloned();
        }
    }
    data.insert("servicetitan".into(), Value::Object(st));
    (data, stage)
}

/// Summaries may carry HTML: tags dropped, whitespace folded.
fn strip_markup(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_tag = false;
    for c in text.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => {
                in_tag = false;
                out.push(' ');
            }
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Creates or updates the record of a ServiceTitan customer or job. A record the tenant's
/// record type refuses even without a stage move is skipped (listed by `import-status`),
/// so one bad record cannot stop the import.
fn upsert(phase: Phase, item: &Value, settings: &Settings) -> Result<(), Error> {
    let id = id_text(item.get("id"))
        .ok_or_else(|| Error::Failed("ServiceTitan sent a record without an id".into()))?;
    match store(phase, &id, item, settings) {
        Err(HostError::Invalid(m)) => skip(phase, &id, &m),
        Err(HostError::Conflict(m)) => Err(Error::RetryLater(format!(
            "{} {id} kept changing in StreamFlow while it was imported ({m})",
            phase.record_type()
        ))),
        other => Ok(other?),
    }
}

fn store(phase: Phase, id: &str, item: &Value, settings: &Settings) -> Result<(), HostError> {
    let record_type = phase.record_type();
    // A job's customer, as the import stored it.
    let contact = match phase {
        Phase::Jobs => match id_text(item.get("customerId")) {
            Some(customer) => records::get_keyed("contact", &customer)?.map(|c| {
                let name = c
                    .json()
                    .ok()
                    .and_then(|d| d.get("name").and_then(Value::as_str).map(str::to_string))
                    .unwrap_or_default();
                (c.id, name)
            }),
            None => None,
        },
        Phase::Customers => None,
    };
    let (fields, stage) = mapped(phase, item, settings, contact);
    let fields = Value::Object(fields);
    // Keyed by the ServiceTitan id: the host reserves the record's id for the key, so a run
    // killed midway, or a webhook racing the import, cannot store it twice. A concurrent
    // change in between (a user editing it) is read again, twice at most.
    for _ in 0..3 {
        let Some(existing) = records::get_keyed(record_type, id)? else {
            let created = match records::create_keyed(record_type, id, stage.as_deref(), &fields) {
                // The pipeline refuses the stage (fields it requires that ServiceTitan does
                // not have): the record is still imported, in the pipeline's first stage.
                Err(HostError::Invalid(_)) if stage.is_some() => {
                    records::create_keyed(record_type, id, None, &fields)
                }
                other => other,
            };
            match created {
                Ok(_) => return Ok(()),
                Err(HostError::Conflict(_)) => continue,
                Err(e) => return Err(e),
            }
        };
        let mut data = existing
            .json()
            .map_err(|e| HostError::Invalid(e.to_string()))?;
        let unchanged = data.pointer("/servicetitan/modified_on").is_some()
            && data.pointer("/servicetitan/modified_on") == item.get("modifiedOn")
            && stage
                .as_deref()
                .is_none_or(|s| existing.stage.as_deref() == Some(s));
        if unchanged {
            return Ok(());
        }
        if let (Some(object), Some(new)) = (data.as_object_mut(), fields.as_object()) {
            for (k, v) in new {
                object.insert(k.clone(), v.clone());
            }
        }
        let to = stage
            .as_deref()
            .filter(|s| existing.stage.as_deref() != Some(*s));
        let written =
            match records::update(record_type, &existing.id, to, &data, Some(existing.version)) {
                Err(HostError::Invalid(_)) if to.is_some() => records::update(
                    record_type,
                    &existing.id,
                    None,
                    &data,
                    Some(existing.version),
                ),
                other => other,
            };
        match written {
            Ok(_) => return Ok(()),
            Err(HostError::Conflict(_)) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(HostError::Conflict("three tries".into()))
}

const SKIPPED: &str = "import:skipped";
const MAX_SKIPPED: usize = 100;

/// Notes a record the import could not store, and goes on.
fn skip(phase: Phase, id: &str, why: &str) -> Result<(), Error> {
    log::warn(&format!(
        "ServiceTitan {} {id} was not imported: {}",
        phase.record_type(),
        clip(why, 300)
    ));
    let mut skipped: Vec<Value> = kv::get_json(SKIPPED)?.unwrap_or_default();
    skipped.retain(|s| s["id"] != id || s["type"] != phase.record_type());
    skipped.push(json!({"type": phase.record_type(), "id": id, "error": clip(why, 300)}));
    let from = skipped.len().saturating_sub(MAX_SKIPPED);
    kv::set_json(SKIPPED, &skipped[from..].to_vec())?;
    Ok(())
}

/// Books a lead in ServiceTitan once: its stored booking if it has one; else, after a
/// booking whose answer was lost, the booking ServiceTitan holds for it (found by its
/// `externalId`); else a new one.
fn book_lead(lead_id: &str, settings: &Settings, at: i64) -> Result<Value, Error> {
    let lead = records::get("lead", lead_id)?
        .ok_or_else(|| Error::InvalidInput(format!("no lead {lead_id}")))?;
    let data = lead.json()?;
    if let Some(booking) = data.pointer("/servicetitan/booking_id") {
        return Ok(json!({"booking_id": booking, "status": "already booked"}));
    }
    let provider = settings.booking_provider_id.ok_or_else(|| {
        Error::Failed(
            "set booking_provider_id in the ServiceTitan plugin's config to book leads".into(),
        )
    })?;
    let tenant = st::tenant()?;
    let bookings = tenant.path("crm", &format!("booking-provider/{provider}/bookings"));
    let pending_key = format!("booking:pending:{lead_id}");
    let now = streamflow_plugin_sdk::now_micros();
    let mut booking = None;
    // A booking was asked for before and its answer not stored (lost, or still on its way):
    // ServiceTitan may hold it. Found by its externalId; while the request may still be in
    // flight, nothing is sent again.
    if let Some(pending) = kv::get_json::<Pending>(&pending_key)? {
        booking = find_booking(&tenant, &bookings, lead_id, &pending.since)?;
        if booking.is_none() && now - pending.at < BOOKING_LEASE_MICROS {
            return Err(Error::RetryLater(format!(
                "a booking of lead {lead_id} was requested moments ago and its answer is not in yet"
            )));
        }
    }
    let booking = match booking {
        Some(b) => b,
        None => {
            let name = data
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("(no name)");
            let mut summary = vec![];
            for key in ["service_type", "timeline", "address", "notes"] {
                if let Some(v) = data
                    .get(key)
                    .and_then(Value::as_str)
                    .filter(|v| !v.is_empty())
                {
                    summary.push(format!("{key}: {v}"));
                }
            }
            let mut contacts = vec![];
            if let Some(phone) = data.get("phone").and_then(Value::as_str) {
                contacts.push(json!({"type": "Phone", "value": clip(phone, 40)}));
            }
            if let Some(email) = data.get("email").and_then(Value::as_str) {
                contacts.push(json!({"type": "Email", "value": clip(email, 254)}));
            }
            let body = json!({
                "source": settings.booking_source,
                "name": clip(name, 200),
                "summary": clip(&if summary.is_empty() { "Lead from StreamFlow".to_string() } else { summary.join("\n") }, 4000),
                "isFirstTimeClient": true,
                "externalId": lead_id,
                "contacts": contacts,
                "priority": "High",
            });
            let started = if at > 0 { at.min(now) } else { now };
            kv::set_json(
                &pending_key,
                &Pending {
                    since: rfc3339(started - OVERLAP_SECONDS * 1_000_000),
                    at: now,
                },
            )?;
            match tenant.send("POST", &bookings, Some(&body)) {
                Ok(b) => b,
                // Refused: nothing was booked, and a later try is a new request.
                Err(e @ (StError::Failed(_) | StError::NotFound)) => {
                    kv::delete(&pending_key)?;
                    return Err(e.into());
                }
                Err(e) => return Err(e.into()),
            }
        }
    };
    let booking_id = id_text(booking.get("id"))
        .ok_or_else(|| Error::Failed("ServiceTitan's booking has no id".into()))?;
    write_booking(lead_id, &booking_id, &booking)?;
    kv::delete(&pending_key)?;
    Ok(json!({"booking_id": booking_id, "status": booking.get("status")}))
}

/// A booking request sent and not yet stored.
#[derive(Serialize, Deserialize)]
struct Pending {
    /// Bookings changed since then are looked through for it.
    since: String,
    /// When it was sent (microseconds).
    at: i64,
}

/// How long a sent booking request is waited for before it is sent again.
const BOOKING_LEASE_MICROS: i64 = 60_000_000;

/// The booking ServiceTitan holds for this lead, among those changed since `since`.
fn find_booking(
    tenant: &Tenant,
    bookings: &str,
    lead_id: &str,
    since: &str,
) -> Result<Option<Value>, Error> {
    for page in 1..=10 {
        let url = format!(
            "{bookings}?page={page}&pageSize=200&modifiedOnOrAfter={}",
            url_encode(since)
        );
        let found = tenant.send("GET", &url, None)?;
        let items = found
            .get("data")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if let Some(b) = items
            .iter()
            .find(|b| b.get("externalId").and_then(Value::as_str) == Some(lead_id))
        {
            return Ok(Some(b.clone()));
        }
        if !found
            .get("hasMore")
            .and_then(Value::as_bool)
            .unwrap_or(false)
        {
            break;
        }
    }
    Ok(None)
}

fn write_booking(lead_id: &str, booking_id: &str, booking: &Value) -> Result<(), Error> {
    for _ in 0..4 {
        let lead = records::get("lead", lead_id)?
            .ok_or_else(|| Error::InvalidInput(format!("no lead {lead_id}")))?;
        let mut data = lead.json()?;
        let Some(object) = data.as_object_mut() else {
            return Err(Error::Failed("the lead's data is not an object".into()));
        };
        let entry = object.entry("servicetitan").or_insert_with(|| json!({}));
        if !entry.is_object() {
            *entry = json!({});
        }
        entry["booking_id"] = json!(booking_id);
        entry["booking_status"] = booking.get("status").cloned().unwrap_or(Value::Null);
        match records::update("lead", lead_id, None, &data, Some(lead.version)) {
            Ok(_) => return Ok(()),
            Err(HostError::Conflict(_)) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(Error::RetryLater(format!(
        "lead {lead_id} kept changing while its booking was written"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_bodies_name_their_jobs() {
        assert_eq!(
            webhook_job_ids(
                &json!({"eventType": "Job.Updated", "data": {"id": 5, "jobStatus": "Completed"}})
            ),
            vec!["5"]
        );
        assert_eq!(webhook_job_ids(&json!({"jobId": "77"})), vec!["77"]);
        assert_eq!(
            webhook_job_ids(
                &json!([{"data": {"jobId": 1}}, {"data": {"jobId": 1}}, {"job": {"id": 2, "jobNumber": "J2"}}])
            ),
            vec!["1", "2"]
        );
        assert_eq!(
            webhook_job_ids(&json!({"data": [{"id": 3, "jobStatus": "Hold"}, {"id": 9}]})),
            vec!["3"]
        );
        // A customer's id is not a job's.
        assert!(webhook_job_ids(&json!({"data": {"id": 4, "name": "Jane"}})).is_empty());
    }

    #[test]
    fn a_job_maps_its_status_to_a_stage() {
        let mut settings = Settings::default();
        settings
            .job_stages
            .insert("Completed".into(), "completed".into());
        let job = json!({"id": 10, "jobNumber": "J-10", "summary": "<p>AC not <b>cooling</b></p>", "jobStatus": "Completed",
            "customerId": 1001, "modifiedOn": "2026-12-01T10:00:00Z"});
        let (data, stage) = mapped(
            Phase::Jobs,
            &job,
            &settings,
            Some(("rec-1".into(), "Jane".into())),
        );
        assert_eq!(stage.as_deref(), Some("completed"));
        assert_eq!(data["title"], "AC not cooling");
        assert_eq!(data["customer_name"], "Jane");
        assert_eq!(data["servicetitan"]["id"], "10");
        assert_eq!(data["servicetitan"]["status"], "Completed");
    }

    #[test]
    fn a_customer_maps_its_contacts_and_address() {
        let c = json!({"id": 1001, "name": "Jane Homeowner", "type": "Residential", "active": true,
            "address": {"street": "123 Main St", "city": "Austin", "state": "TX", "zip": "78701", "country": "USA"},
            "contacts": [{"type": "MobilePhone", "value": "5125550100"}, {"type": "Email", "value": "jane@example.com"}]});
        let (data, stage) = mapped(Phase::Customers, &c, &Settings::default(), None);
        assert_eq!(stage, None);
        assert_eq!(data["name"], "Jane Homeowner");
        assert_eq!(data["phone"], "5125550100");
        assert_eq!(data["email"], "jane@example.com");
        assert_eq!(data["address"], "123 Main St, Austin, TX, 78701");
    }

    #[test]
    fn times_are_rfc3339_to_the_second() {
        assert_eq!(rfc3339(1_796_126_400_123_456), "2026-12-01T12:00:00Z");
    }
}
