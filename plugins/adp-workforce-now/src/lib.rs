//! ADP Workforce Now for StreamFlow.
//!
//! - **Workers → employees** (schedule `import`, daily): `GET /hr/v2/workers` page by page
//!   (`$top`/`$skip`, until an empty page or a 204) into `employee` records keyed by the
//!   worker's associate OID, so a repeated import updates instead of duplicating; a
//!   terminated worker is marked `terminated`, never deleted. The cursor moves past a page
//!   only once it is stored: a run that stops (quota, throttling) resumes there.
//! - **Event notifications** (schedule `events`, every 5 minutes): ADP's pull queue is
//!   drained head first (`GET /core/v1/event-notification-messages`, the id in
//!   `adp-msg-msgid`, 204 when empty); each worker event re-reads that worker and stores it,
//!   and only then is the message acknowledged (`DELETE`), so hires and terminations arrive
//!   between imports and none is lost.
//! - **Hours → payroll** (schedule `payroll`, hourly, and the `push-hours` action): approved
//!   `time_entry` records, grouped per worker and pay period, each group appended to the
//!   configured pay data batch (`pay-data-input.modify`, `roleCode: practitioner`) once; the
//!   confirmation is stored on the entries, which move to `sent_to_payroll`. Hours ADP
//!   refuses go back to `rejected` with ADP's words.
//!
//! The plugin never sees a token, the client secret or the certificate: the host's `adp`
//! connection adds the token to every call and presents the certificate on every handshake.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use streamflow_plugin_sdk::text::{clip, digest, url_encode};
use streamflow_plugin_sdk::{
    Error, HostError, Plugin, Record, ScheduleTick, host_message, kv, limits, log, records,
    schedules,
};

pub mod adp;
pub mod payroll;
pub mod worker;

use adp::AdpError;
use payroll::{EarningCodes, Frequency, PayPeriods};
use worker::CustomField;

const CURSOR: &str = "import:cursor";
const SKIPPED: &str = "import:skipped";
const MAX_SKIPPED: usize = 100;
/// How long a group may be "sending" before it is taken as unanswered: well over one
/// call's wall-clock cap, so a call still waiting for ADP is never overtaken.
const SENDING_LEASE_MICROS: i64 = 180_000_000;
const APPROVED: &str = "approved";
const SENT: &str = "sent_to_payroll";
const REJECTED: &str = "rejected";

#[derive(Deserialize)]
#[serde(default)]
struct Settings {
    page_size: u32,
    custom_fields: Vec<CustomField>,
    payroll: Option<PayrollSettings>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            page_size: 100,
            custom_fields: Vec::new(),
            payroll: None,
        }
    }
}

#[derive(Deserialize)]
struct PayrollSettings {
    batch_id: String,
    #[serde(default = "one")]
    pay_number: String,
    frequency: Frequency,
    /// The first day of any one pay period (weekly and biweekly).
    #[serde(default)]
    period_anchor: Option<String>,
    #[serde(default)]
    earning_codes: EarningCodes,
    /// Hours are sent once their pay period has ended.
    #[serde(default = "yes")]
    closed_periods_only: bool,
}

fn one() -> String {
    "1".into()
}

fn yes() -> bool {
    true
}

impl PayrollSettings {
    fn periods(&self) -> Result<PayPeriods, Error> {
        let anchor = match (&self.period_anchor, self.frequency) {
            (Some(a), _) => payroll::parse_date(a).ok_or_else(|| {
                Error::Failed(format!(
                    "payroll.period_anchor {:?} is not a date (YYYY-MM-DD)",
                    clip(a, 40)
                ))
            })?,
            (None, Frequency::Weekly | Frequency::Biweekly) => {
                return Err(Error::Failed(
                    "set payroll.period_anchor (the first day of any one pay period) in the ADP plugin's config to send weekly or biweekly hours".into(),
                ));
            }
            (None, _) => time::Date::MIN,
        };
        Ok(PayPeriods {
            frequency: self.frequency,
            anchor,
        })
    }
}

fn settings() -> Result<Settings, Error> {
    streamflow_plugin_sdk::config::get()
}

/// A time to the second.
fn rfc3339(micros: i64) -> String {
    rfc3339_micros(micros - micros.rem_euclid(1_000_000))
}

fn rfc3339_micros(micros: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(micros as i128 * 1000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".into())
}

fn today(micros: i64) -> time::Date {
    time::OffsetDateTime::from_unix_timestamp_nanos(micros as i128 * 1000)
        .map(|t| t.date())
        .unwrap_or(time::Date::MIN)
}

/// Asks for the schedule's next run in a minute (work is left over).
fn again_soon(schedule: &str) {
    if let Err(e) = schedules::soon(schedule) {
        log::warn(&format!(
            "could not ask for the next {schedule} run sooner: {}",
            host_message(&e)
        ));
    }
}

pub struct Adp;

impl Plugin for Adp {
    fn on_schedule(tick: ScheduleTick) -> Result<(), Error> {
        let settings = settings()?;
        let summary = match tick.id.as_str() {
            "import" => import(&settings, tick.now)?,
            "events" => drain_events(&settings)?,
            "payroll" => match &settings.payroll {
                Some(p) => push_hours(p, tick.now)?,
                None => json!({"skipped": "payroll is not configured (payroll.batch_id)"}),
            },
            other => {
                return Err(Error::InvalidInput(format!(
                    "no schedule {:?}",
                    clip(other, 64)
                )));
            }
        };
        log::info(&summary.to_string());
        Ok(())
    }

    fn run_action(name: &str, input: Value) -> Result<Value, Error> {
        match name {
            "import-status" => Ok(json!({
                "cursor": kv::get_json::<Cursor>(CURSOR)?.unwrap_or_default(),
                "skipped": kv::get_json::<Value>(SKIPPED)?.unwrap_or(json!([])),
                "dropped_events": kv::get_json::<Value>(DROPPED)?.unwrap_or(json!([])),
            })),
            "restart-import" => {
                kv::delete(CURSOR)?;
                Ok(json!({"cursor": Cursor::default()}))
            }
            "payroll-status" => payroll_status(streamflow_plugin_sdk::now_micros()),
            "push-hours" => {
                let settings = settings()?;
                let payroll = settings.payroll.as_ref().ok_or_else(|| {
                    Error::Failed(
                        "set payroll (batch_id, frequency) in the ADP plugin's config to send hours".into(),
                    )
                })?;
                if let Some(settle) = input.get("settle") {
                    return settle_group(settle, payroll, streamflow_plugin_sdk::now_micros());
                }
                push_hours(payroll, streamflow_plugin_sdk::now_micros())
            }
            other => Err(Error::InvalidInput(format!(
                "no action {:?}; this plugin has import-status, restart-import, payroll-status and push-hours",
                clip(other, 64)
            ))),
        }
    }
}

streamflow_plugin_sdk::export!(Adp);

// ---- Workers → employees ------------------------------------------------------------

/// Where the workers import is.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Cursor {
    /// Workers of this sweep already stored (`$skip` of the next page).
    pub skip: u32,
    /// Employees created or changed by this sweep.
    pub stored: u64,
    pub sweep_started: Option<String>,
    pub last_completed: Option<String>,
}

fn import(settings: &Settings, now: i64) -> Result<Value, Error> {
    adp::ready()?;
    let mut cursor: Cursor = kv::get_json(CURSOR)?.unwrap_or_default();
    if cursor.sweep_started.is_none() {
        cursor.sweep_started = Some(rfc3339(now));
        cursor.stored = 0;
    }
    // ADP Workforce Now serves at most 100 workers a page.
    let wanted = settings.page_size.clamp(1, 100);
    loop {
        // Each worker costs a read (its employee) and at most two writes (a conflict
        // retried): a page is as large as the call can still store.
        let left = limits::remaining();
        let top = wanted
            .min(left.record_writes / 2)
            .min(left.record_reads.saturating_sub(1));
        if left.http_requests < 1 || top < wanted.min(10) || left.wall_ms < 5_000 {
            kv::set_json(CURSOR, &cursor)?;
            again_soon("import");
            return Ok(json!({
                "paused": "this run's quota is used; the next run resumes",
                "cursor": cursor,
            }));
        }
        let path = format!("/hr/v2/workers?$top={top}&$skip={}", cursor.skip);
        let page = match adp::send("GET", &path, None) {
            Ok(page) => page,
            Err(e) => {
                kv::set_json(CURSOR, &cursor)?;
                return Err(e.into());
            }
        };
        let workers = page
            .body
            .get("workers")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        // The end: an empty page, or 204 No Content.
        if page.status == 204 || workers.is_empty() {
            break;
        }
        for w in &workers {
            if upsert_worker(w, settings)? {
                cursor.stored += 1;
            }
        }
        cursor.skip += workers.len() as u32;
        kv::set_json(CURSOR, &cursor)?;
    }
    let done = json!({"import": "complete", "workers": cursor.skip, "stored": cursor.stored});
    kv::set_json(
        CURSOR,
        &Cursor {
            // To the microsecond: two sweeps in one second are still told apart.
            last_completed: Some(rfc3339_micros(now)),
            ..Cursor::default()
        },
    )?;
    Ok(done)
}

/// Keys of the employee record this plugin owns: an import sets them as ADP has them (and
/// removes those ADP no longer has).
const OWNED: [&str; 12] = [
    "name",
    "email",
    "phone",
    "status",
    "worker_id",
    "job_title",
    "department",
    "hired_on",
    "terminated_on",
    "skills",
    "certifications",
    "adp",
];

/// Stores a worker as its employee; false when it was already stored as it is.
fn upsert_worker(w: &Value, settings: &Settings) -> Result<bool, Error> {
    let Some(aoid) = worker::aoid(w).map(str::to_string) else {
        log::warn("ADP sent a worker without an associateOID; it was not imported");
        return Ok(false);
    };
    let mut fields = worker::employee_fields(w, &settings.custom_fields);
    let fingerprint = digest(&Value::Object(fields.clone()).to_string());
    if let Some(Value::Object(a)) = fields.get_mut("adp") {
        a.insert("digest".into(), json!(fingerprint));
    }
    match store_employee(
        &aoid,
        &fields,
        &fingerprint,
        !settings.custom_fields.is_empty(),
    ) {
        Err(HostError::Invalid(m)) => {
            skip(&aoid, &m)?;
            Ok(false)
        }
        Err(HostError::Conflict(m)) => Err(Error::RetryLater(format!(
            "employee {aoid} kept changing in StreamFlow while it was imported ({m})"
        ))),
        other => Ok(other?),
    }
}

fn store_employee(
    aoid: &str,
    fields: &Map<String, Value>,
    fingerprint: &str,
    mapped_customs: bool,
) -> Result<bool, HostError> {
    for _ in 0..3 {
        let Some(existing) = records::get_keyed("employee", aoid)? else {
            match records::create_keyed("employee", aoid, None, &Value::Object(fields.clone())) {
                Ok(_) => return Ok(true),
                Err(HostError::Conflict(_)) => continue,
                Err(e) => return Err(e),
            }
        };
        let mut data = existing
            .json()
            .map_err(|e| HostError::Invalid(e.to_string()))?;
        if data.pointer("/adp/digest").and_then(Value::as_str) == Some(fingerprint) {
            return Ok(false);
        }
        if let Some(object) = data.as_object_mut() {
            for key in OWNED {
                // Without a mapping, skills and certifications are the office's to keep.
                if !mapped_customs && (key == "skills" || key == "certifications") {
                    continue;
                }
                match fields.get(key) {
                    Some(v) => object.insert(key.into(), v.clone()),
                    None => object.remove(key),
                };
            }
        }
        match records::update(
            "employee",
            &existing.id,
            None,
            &data,
            Some(existing.version),
        ) {
            Ok(_) => return Ok(true),
            Err(HostError::Conflict(_)) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(HostError::Conflict("three tries".into()))
}

fn skip(aoid: &str, why: &str) -> Result<(), Error> {
    log::warn(&format!(
        "ADP worker {aoid} was not imported: {}",
        clip(why, 300)
    ));
    let mut skipped: Vec<Value> = kv::get_json(SKIPPED)?.unwrap_or_default();
    skipped.retain(|s| s["associate_oid"] != aoid);
    skipped.push(json!({"associate_oid": aoid, "error": clip(why, 300)}));
    let from = skipped.len().saturating_sub(MAX_SKIPPED);
    kv::set_json(SKIPPED, &skipped[from..].to_vec())?;
    Ok(())
}

// ---- Event notifications ------------------------------------------------------------

/// Failed tries per message id, and the messages given up on.
const ATTEMPTS: &str = "events:attempts";
const DROPPED: &str = "events:dropped";
/// Tries of one message before it is acknowledged unhandled (listed in `import-status`;
/// the daily import brings its workers in anyway), so one bad message cannot stop the queue.
const MAX_ATTEMPTS: u32 = 5;

/// The associate OIDs an event names, wherever in its data.
pub fn event_workers(event: &Value) -> Vec<String> {
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(map) => {
                for (k, v) in map {
                    match (k.as_str(), v) {
                        ("associateOID", Value::String(s)) if !s.is_empty() && s.len() <= 64 => {
                            if !out.contains(s) {
                                out.push(s.clone());
                            }
                        }
                        _ => walk(v, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|i| walk(i, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    if let Some(data) = event.get("data") {
        walk(data, &mut out);
    }
    out
}

/// Enough of this call's quotas for one more worker read and stored, and the message's
/// acknowledgement.
fn room_for_a_worker() -> bool {
    let left = limits::remaining();
    left.http_requests >= 2
        && left.record_reads >= 2
        && left.record_writes >= 2
        && left.wall_ms >= 5_000
}

/// How handling one message ended.
enum Handled {
    Stored(u32),
    /// This call's quotas ran out midway: the message stays for the next run.
    OutOfQuota,
}

/// Reads again and stores every worker a message names.
fn handle_message(events: &[Value], settings: &Settings) -> Result<Handled, Error> {
    let mut stored = 0;
    for event in events {
        let name = event
            .pointer("/eventNameCode/codeValue")
            .and_then(Value::as_str)
            .unwrap_or("(unnamed)");
        let named = event_workers(event);
        if named.is_empty() {
            log::info(&format!(
                "ADP event {} names no worker; acknowledged",
                clip(name, 100)
            ));
        }
        for aoid in &named {
            if !room_for_a_worker() {
                return Ok(Handled::OutOfQuota);
            }
            match adp::send("GET", &format!("/hr/v2/workers/{}", url_encode(aoid)), None) {
                Ok(answer) => {
                    let found = answer
                        .body
                        .get("workers")
                        .and_then(Value::as_array)
                        .and_then(|w| w.first())
                        .cloned();
                    match found {
                        Some(w) => {
                            upsert_worker(&w, settings)?;
                            stored += 1;
                        }
                        None => log::warn(&format!("ADP has no worker {aoid} (event {name})")),
                    }
                }
                Err(AdpError::NotFound) => {
                    log::warn(&format!("ADP has no worker {aoid} (event {name})"))
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(Handled::Stored(stored))
}

fn drain_events(settings: &Settings) -> Result<Value, Error> {
    adp::ready()?;
    let (mut handled, mut workers) = (0u32, 0u32);
    let paused = |handled, workers| {
        again_soon("events");
        Ok(
            json!({"events": handled, "workers": workers, "paused": "this run's quota is used; the queue is read again in a minute"}),
        )
    };
    loop {
        if !room_for_a_worker() {
            return paused(handled, workers);
        }
        let head = adp::send("GET", "/core/v1/event-notification-messages", None)?;
        if head.status == 204 {
            break;
        }
        let id = head
            .header("adp-msg-msgid")
            .map(str::trim)
            .filter(|i| !i.is_empty() && i.len() <= 200)
            .map(str::to_string)
            .ok_or_else(|| {
                Error::Failed(
                    "ADP sent an event notification without its adp-msg-msgid header: it cannot be acknowledged".into(),
                )
            })?;
        let events = head
            .body
            .get("events")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        match handle_message(&events, settings) {
            Ok(Handled::Stored(n)) => workers += n,
            Ok(Handled::OutOfQuota) => return paused(handled, workers),
            Err(e) => {
                // Not stored: the message stays at the head, unless it has failed too often.
                let mut attempts: BTreeMap<String, u32> =
                    kv::get_json(ATTEMPTS)?.unwrap_or_default();
                let tries = attempts.entry(id.clone()).or_default();
                *tries += 1;
                if *tries < MAX_ATTEMPTS {
                    kv::set_json(ATTEMPTS, &attempts)?;
                    return Err(e);
                }
                let why = clip(&host_message_of(&e), 300).to_string();
                log::warn(&format!(
                    "ADP event message {id} failed {MAX_ATTEMPTS} times ({why}); acknowledged without it, the next import brings its workers in"
                ));
                let mut dropped: Vec<Value> = kv::get_json(DROPPED)?.unwrap_or_default();
                dropped.push(json!({"message": id, "error": why, "events": events.len()}));
                let from = dropped.len().saturating_sub(50);
                kv::set_json(DROPPED, &dropped[from..].to_vec())?;
            }
        }
        // Stored (or given up on): now the message may go.
        match adp::send(
            "DELETE",
            &format!("/core/v1/event-notification-messages/{}", url_encode(&id)),
            None,
        ) {
            Ok(_) | Err(AdpError::NotFound) => {}
            Err(e) => return Err(e.into()),
        }
        let mut attempts: BTreeMap<String, u32> = kv::get_json(ATTEMPTS)?.unwrap_or_default();
        if attempts.remove(&id).is_some() {
            kv::set_json(ATTEMPTS, &attempts)?;
        }
        handled += 1;
    }
    Ok(json!({"events": handled, "workers": workers, "queue": "empty"}))
}

// ---- Hours → payroll ----------------------------------------------------------------
//
// A group's entries are claimed before its hours are sent: each gets
// `data.adp.claim = {group, at}` by a version-checked write, so a second run at the same
// time (the schedule and the action) finds them claimed and leaves them. ADP's answer is
// kept in kv (`payroll:confirmed:<group>`) before the entries are marked sent, so a call
// that dies midway is finished by the next run. A claim older than the lease without an
// answer is a group ADP may have taken: held until a person settles it.

/// An entry that is being read or written by this run.
struct Entry {
    record: Record,
    data: Value,
    day: time::Date,
    regular: f64,
    overtime: f64,
}

impl Entry {
    fn of(record: Record) -> Result<Entry, Error> {
        let data = record.json()?;
        let day = data
            .get("work_date")
            .and_then(Value::as_str)
            .and_then(payroll::parse_date)
            .unwrap_or(time::Date::MIN);
        let (regular, overtime) = (
            hours(&data, "regular_hours"),
            hours(&data, "overtime_hours"),
        );
        Ok(Entry {
            record,
            data,
            day,
            regular,
            overtime,
        })
    }

    /// The group that claimed it, when, and whether its request got no answer.
    fn claim(&self) -> Option<(String, i64, bool)> {
        let claim = self.data.pointer("/adp/claim")?;
        Some((
            claim.get("group")?.as_str()?.to_string(),
            claim.get("at")?.as_i64()?,
            claim.get("unanswered") == Some(&Value::Bool(true)),
        ))
    }
}

fn hours(data: &Value, key: &str) -> f64 {
    data.get(key)
        .and_then(Value::as_f64)
        .filter(|h| h.is_finite() && *h >= 0.0)
        .unwrap_or(0.0)
}

fn confirmed_key(group: &str) -> String {
    format!("payroll:confirmed:{group}")
}

/// The approved entries this call can read, with the groups claimed among them.
struct Claimed {
    at: i64,
    unanswered: bool,
    entries: Vec<Entry>,
}

struct Approved {
    free: Vec<Entry>,
    /// Group → its claimed entries.
    claimed: BTreeMap<String, Claimed>,
    full: bool,
}

fn approved() -> Result<Approved, Error> {
    let limit = limits::remaining().record_reads.saturating_sub(20).min(100);
    let listed = records::list("time_entry", Some(APPROVED), limit)?;
    let full = limit > 0 && listed.len() as u32 == limit;
    let mut out = Approved {
        free: Vec::new(),
        claimed: BTreeMap::new(),
        full,
    };
    for record in listed {
        let entry = Entry::of(record)?;
        match entry.claim() {
            Some((group, at, unanswered)) => {
                let claimed = out.claimed.entry(group).or_insert(Claimed {
                    at,
                    unanswered,
                    entries: Vec::new(),
                });
                claimed.unanswered |= unanswered;
                claimed.entries.push(entry);
            }
            None => out.free.push(entry),
        }
    }
    Ok(out)
}

/// A group's state, from its claim and ADP's answer.
fn group_state(group: &str, claimed: &Claimed, now: i64) -> Result<&'static str, Error> {
    Ok(if kv::get(&confirmed_key(group))?.is_some() {
        "confirmed"
    } else if !claimed.unanswered && now - claimed.at <= SENDING_LEASE_MICROS {
        "sending"
    } else {
        "unconfirmed"
    })
}

fn payroll_status(now: i64) -> Result<Value, Error> {
    let approved = approved()?;
    let mut groups = Map::new();
    for (group, claimed) in &approved.claimed {
        groups.insert(
            group.clone(),
            json!({
                "state": group_state(group, claimed, now)?,
                "claimed_at": rfc3339(claimed.at),
                "entries": claimed.entries.iter().map(|e| e.record.id.clone()).collect::<Vec<_>>(),
            }),
        );
    }
    Ok(json!({"groups": groups}))
}

fn push_hours(payroll: &PayrollSettings, now: i64) -> Result<Value, Error> {
    let periods = payroll.periods()?;
    if payroll.batch_id.trim().is_empty() {
        return Err(Error::Failed(
            "payroll.batch_id is empty: name the ADP pay data batch hours are appended to".into(),
        ));
    }
    adp::ready()?;
    let approved = approved()?;
    let mut unconfirmed = Vec::new();
    let mut finished = 0;
    for (group, claimed) in &approved.claimed {
        let entries = &claimed.entries;
        match group_state(group, claimed, now)? {
            // ADP took them; the call that sent them died before marking them all.
            "confirmed" => {
                let confirmed: Value = kv::get_json(&confirmed_key(group))?.unwrap_or(Value::Null);
                mark_sent(entries, &confirmed)?;
                kv::delete(&confirmed_key(group))?;
                finished += entries.len();
            }
            "unconfirmed" => unconfirmed.push(group.clone()),
            _ => {}
        }
    }
    // A period has ended everywhere once its last day is over in UTC+14 and UTC−12 alike:
    // a day after its last day in UTC.
    let ended_by = today(now) - time::Duration::days(1);
    let mut pending: BTreeMap<(String, time::Date), Vec<Entry>> = BTreeMap::new();
    let mut waiting = 0;
    for entry in approved.free {
        let Some(employee) = entry.data.get("employee_id").and_then(Value::as_str) else {
            continue;
        };
        if entry.day == time::Date::MIN {
            continue;
        }
        let period = periods.period_of(entry.day);
        if payroll.closed_periods_only && period.end >= ended_by {
            waiting += 1;
            continue;
        }
        pending
            .entry((employee.to_string(), period.start))
            .or_default()
            .push(entry);
    }
    let (mut sent, mut refused, mut entries_sent) = (0u32, 0u32, 0u32);
    let mut stopped = None;
    for ((employee, start), entries) in pending {
        let left = limits::remaining();
        let n = entries.len() as u32;
        if left.http_requests < 1
            || left.record_writes < 2 * n + 2
            || left.record_reads < 2 * n + 2
            || left.wall_ms < 30_000
        {
            again_soon("payroll");
            stopped = Some("this run's quota is used; the rest is sent in a minute".to_string());
            break;
        }
        match push_group(payroll, &periods, &employee, start, entries, now) {
            Ok(Pushed::Sent(n)) => {
                sent += 1;
                entries_sent += n;
            }
            Ok(Pushed::Refused) => refused += 1,
            Ok(Pushed::Busy) => {}
            Err(e) => {
                if sent == 0 {
                    return Err(e);
                }
                stopped = Some(host_message_of(&e));
                break;
            }
        }
    }
    // More approved entries than one list holds: the next run soon, while this one sent.
    if stopped.is_none() && approved.full && sent > 0 {
        again_soon("payroll");
    }
    if !unconfirmed.is_empty() {
        log::warn(&format!(
            "{} pay data group(s) got no answer from ADP and are held: check batch {} in ADP, then settle each with the push-hours action ({{\"settle\": {{\"group\": ..., \"as\": \"sent\" or \"not_sent\"}}}})",
            unconfirmed.len(),
            payroll.batch_id
        ));
    }
    Ok(json!({
        "groups_sent": sent,
        "entries_sent": entries_sent,
        "groups_refused": refused,
        "finished_from_earlier": finished,
        "waiting_for_period_end": waiting,
        "unconfirmed": unconfirmed,
        "stopped": stopped,
    }))
}

fn host_message_of(e: &Error) -> String {
    match e {
        Error::RetryLater(m) | Error::Failed(m) | Error::InvalidInput(m) => m.clone(),
        other => format!("{other:?}"),
    }
}

enum Pushed {
    Sent(u32),
    /// ADP (or a missing link to ADP) refused them: back to `rejected`.
    Refused,
    /// Another run holds some of them.
    Busy,
}

/// Sends one worker's hours of one pay period.
fn push_group(
    payroll: &PayrollSettings,
    periods: &PayPeriods,
    employee_id: &str,
    start: time::Date,
    entries: Vec<Entry>,
    now: i64,
) -> Result<Pushed, Error> {
    let employee = records::get("employee", employee_id)?;
    let adp_keys = employee
        .as_ref()
        .and_then(|e| e.json().ok())
        .and_then(|d| d.get("adp").cloned())
        .unwrap_or(Value::Null);
    let key = |k: &str| {
        adp_keys
            .get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    let (Some(aoid), Some(group_code), Some(file_number)) = (
        key("associate_oid"),
        key("payroll_group_code"),
        key("payroll_file_number"),
    ) else {
        reject(
            &entries,
            &format!(
                "employee {employee_id} is not linked to an ADP worker with a payroll group and file number; import the workers from ADP, or fix the entry's employee"
            ),
        )?;
        return Ok(Pushed::Refused);
    };
    let mut ids: Vec<&str> = entries.iter().map(|e| e.record.id.as_str()).collect();
    ids.sort_unstable();
    let group = format!(
        "{}-{}",
        payroll::iso(start),
        &digest(&format!("{aoid}|{}", ids.join(",")))[..12]
    );
    let Some(claimed) = claim(entries, &group, now)? else {
        return Ok(Pushed::Busy);
    };
    let lines: Vec<(Option<u32>, f64, f64)> = claimed
        .iter()
        .map(|e| (periods.week_of(e.day), e.regular, e.overtime))
        .collect();
    let event = payroll::pay_data_event(
        &payroll.batch_id,
        &payroll.pay_number,
        &payroll::Payee {
            associate_oid: aoid,
            payroll_group_code: group_code,
            payroll_file_number: file_number,
        },
        &payroll::sum_hours(&lines),
        &payroll.earning_codes,
    );
    match adp::send(
        "POST",
        "/events/payroll/v1/pay-data-input.modify",
        Some(&event),
    ) {
        Ok(answer) => {
            let mut confirmed = payroll::confirmation(&answer.body);
            confirmed["group"] = json!(group);
            confirmed["batch"] = json!(payroll.batch_id);
            confirmed["period_start"] = json!(payroll::iso(start));
            confirmed["sent_at"] = json!(rfc3339(now));
            // Kept before the entries are marked: a call that dies midway is finished by
            // the next run, never sent again.
            kv::set_json(&confirmed_key(&group), &confirmed)?;
            mark_sent(&claimed, &confirmed)?;
            kv::delete(&confirmed_key(&group))?;
            Ok(Pushed::Sent(claimed.len() as u32))
        }
        Err(AdpError::Refused { message, .. }) => {
            reject(
                &claimed,
                &format!("ADP payroll refused these hours: {message}"),
            )?;
            Ok(Pushed::Refused)
        }
        Err(e) if e.not_done() => {
            release(&claimed)?;
            Err(e.into())
        }
        // No answer that says: ADP may have appended them. The claims stay, and the group
        // is held once the lease has passed.
        Err(e) => {
            log::warn(&format!(
                "pay data group {group} got no answer from ADP ({}); it is held until a person settles it",
                clip(&e.to_string(), 300)
            ));
            // Said on the entries at once: the group is held now, not only after the lease.
            write_entries(&claimed, None, |d| {
                if let Some(claim) = d.get_mut("adp").and_then(|a| a.get_mut("claim")) {
                    claim["unanswered"] = json!(true);
                }
            })?;
            Err(e.into())
        }
    }
}

/// Claims every entry for `group`, or none: `None` when another run (or a person) changed
/// one meanwhile.
fn claim(entries: Vec<Entry>, group: &str, now: i64) -> Result<Option<Vec<Entry>>, Error> {
    let mut claimed = Vec::with_capacity(entries.len());
    for entry in entries {
        let mut data = entry.data.clone();
        data["adp"] = json!({"claim": {"group": group, "at": now}});
        match records::update(
            "time_entry",
            &entry.record.id,
            None,
            &data,
            Some(entry.record.version),
        ) {
            Ok(record) => claimed.push(Entry::of(record)?),
            Err(HostError::Conflict(_)) => {
                release(&claimed)?;
                return Ok(None);
            }
            Err(e) => {
                release(&claimed)?;
                return Err(e.into());
            }
        }
    }
    Ok(Some(claimed))
}

/// Writes onto each entry, reading it again on a concurrent change.
fn write_entries(
    entries: &[Entry],
    stage: Option<&str>,
    change: impl Fn(&mut Map<String, Value>),
) -> Result<(), Error> {
    for entry in entries {
        let (mut record, mut data) = (entry.record.clone(), entry.data.clone());
        for attempt in 0..3 {
            if let Some(object) = data.as_object_mut() {
                change(object);
            }
            match records::update("time_entry", &record.id, stage, &data, Some(record.version)) {
                Ok(_) => break,
                Err(HostError::Conflict(_)) if attempt < 2 => {
                    record = records::get("time_entry", &entry.record.id)?.ok_or_else(|| {
                        Error::Failed(format!("time entry {} was deleted", entry.record.id))
                    })?;
                    data = record.json()?;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}

fn mark_sent(entries: &[Entry], confirmed: &Value) -> Result<(), Error> {
    write_entries(entries, Some(SENT), |d| {
        d.insert("adp".into(), confirmed.clone());
    })
}

fn release(entries: &[Entry]) -> Result<(), Error> {
    write_entries(entries, None, |d| {
        d.remove("adp");
    })
}

fn reject(entries: &[Entry], why: &str) -> Result<(), Error> {
    log::warn(why);
    write_entries(entries, Some(REJECTED), |d| {
        d.insert("rejected_reason".into(), json!(clip(why, 500)));
        d.insert("adp".into(), json!({"error": clip(why, 500)}));
    })
}

/// A person settles a group ADP did not answer: `sent` (the hours are in the batch) marks
/// its entries sent; `not_sent` releases them for the next run to send.
fn settle_group(settle: &Value, payroll: &PayrollSettings, now: i64) -> Result<Value, Error> {
    let id = settle.get("group").and_then(Value::as_str).ok_or_else(|| {
        Error::InvalidInput(
            "give the group as {\"settle\": {\"group\": \"...\", \"as\": \"sent\"}}".into(),
        )
    })?;
    let how = settle.get("as").and_then(Value::as_str).unwrap_or_default();
    let mut approved = approved()?;
    let claimed = approved
        .claimed
        .remove(id)
        .ok_or_else(|| Error::InvalidInput(format!("no held pay data group {:?}", clip(id, 80))))?;
    if group_state(id, &claimed, now)? == "sending" {
        return Err(Error::RetryLater(
            "this group's request may still be waiting for ADP's answer; settle it in a few minutes".into(),
        ));
    }
    let entries = claimed.entries;
    match how {
        "sent" => mark_sent(
            &entries,
            &json!({"group": id, "batch": payroll.batch_id, "settled_at": rfc3339(now), "confirmation_id": null}),
        )?,
        "not_sent" => release(&entries)?,
        _ => {
            return Err(Error::InvalidInput(
                "settle a group \"as\": \"sent\" (ADP has the hours) or \"not_sent\" (send them again)".into(),
            ));
        }
    }
    kv::delete(&confirmed_key(id))?;
    Ok(json!({"settled": id, "as": how, "entries": entries.len()}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_names_its_workers_wherever_they_are() {
        let event = json!({"eventNameCode": {"codeValue": "worker.terminate"}, "data": {
            "eventContext": {"worker": {"associateOID": "G3GMA28TB2SVJ2TF"}},
            "output": {"worker": {"associateOID": "G3GMA28TB2SVJ2TF", "workerStatus": {}}},
            "transform": {"workers": [{"associateOID": "ABCDEFGHIJKLMNOP"}]}}});
        assert_eq!(
            event_workers(&event),
            ["G3GMA28TB2SVJ2TF", "ABCDEFGHIJKLMNOP"]
        );
        assert!(event_workers(&json!({"data": {"eventContext": {}}})).is_empty());
    }
}
