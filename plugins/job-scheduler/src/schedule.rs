//! What the two actions create, as pure functions of the tenant's configuration
//! ([`Settings`]) and the action's input: no host calls, so it runs (and is tested)
//! natively. `lib.rs` hands the planned records to the host.
//!
//! Errors are the messages of `invalid-input`: each names the field that is wrong.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use time::Date;

use crate::calendar::{self, WorkWeek};
use streamflow_plugin_sdk::text::lenient;

/// Longest lead time, in work days (config and `params.lead_time_days`).
pub const MAX_LEAD_TIME_DAYS: u32 = 90;
/// Most visits one run may create (the config's `max_visits` is at most this).
pub const MAX_VISITS: u32 = 60;
/// Most characters of a customer name or a visit title put into a title.
const MAX_TITLE_PART: usize = 80;
/// Longest record type, field name, job type or crew accepted from `params`.
const MAX_NAME: usize = 64;
/// Longest `params.title` of visits.
const MAX_VISIT_TITLE: usize = 100;

/// The plugin's configuration. Every field is optional; unknown fields are ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// Work days between the event and a job's date.
    #[serde(deserialize_with = "lenient::int")]
    pub lead_time_days: u32,
    /// Days jobs and visits may fall on.
    pub work_days: WorkWeek,
    /// `crew` of new jobs.
    pub default_crew: String,
    /// Stage of new jobs ("" for the first stage of the pipeline).
    pub job_stage: String,
    /// Stage of new visits ("" for the first stage of the pipeline).
    pub visit_stage: String,
    /// Most visits one `schedule-recurring` creates.
    #[serde(deserialize_with = "lenient::int")]
    pub max_visits: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            lead_time_days: 3,
            work_days: WorkWeek::MON_FRI,
            default_crew: "unassigned".to_string(),
            job_stage: "scheduled".to_string(),
            visit_stage: "scheduled".to_string(),
            max_visits: 26,
        }
    }
}

impl Settings {
    /// What the schema promises, checked again (the host validates, but a plugin must not
    /// loop or overflow on a configuration that slipped through).
    pub fn check(&self) -> Result<(), String> {
        if self.lead_time_days > MAX_LEAD_TIME_DAYS {
            return Err(format!(
                "lead_time_days: at most {MAX_LEAD_TIME_DAYS}, not {}",
                self.lead_time_days
            ));
        }
        if !(1..=MAX_VISITS).contains(&self.max_visits) {
            return Err(format!(
                "max_visits: from 1 to {MAX_VISITS}, not {}",
                self.max_visits
            ));
        }
        Ok(())
    }
}

/// A record to create.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRecord {
    pub record_type: String,
    /// `None`: the first stage of the type's pipeline.
    pub stage: Option<String>,
    pub data: Value,
}

/// What `schedule-job` creates.
#[derive(Debug, Clone, PartialEq)]
pub struct JobPlan {
    pub job: NewRecord,
    /// `YYYY-MM-DD`.
    pub scheduled_for: String,
}

/// What `schedule-recurring` creates.
#[derive(Debug, Clone, PartialEq)]
pub struct VisitPlan {
    pub record_type: String,
    pub stage: Option<String>,
    /// The visits' data, in date order.
    pub visits: Vec<Value>,
    pub first: String,
    pub last: String,
    /// More visits were due than `max_visits` allows.
    pub capped: bool,
}

/// How often recurring work comes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frequency {
    Weekly,
    Biweekly,
    Monthly,
    Quarterly,
    Semiannual,
}

impl Frequency {
    /// "weekly", "biweekly", "monthly", "quarterly" or "semiannual", in any case and with
    /// or without dashes, spaces or underscores ("Bi-weekly", "semi annual");
    /// "fortnightly" and "semiannually" too.
    pub fn parse(text: &str) -> Option<Frequency> {
        let key: String = text
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .map(|c| c.to_ascii_lowercase())
            .collect();
        Some(match key.as_str() {
            "weekly" => Frequency::Weekly,
            "biweekly" | "fortnightly" => Frequency::Biweekly,
            "monthly" => Frequency::Monthly,
            "quarterly" => Frequency::Quarterly,
            "semiannual" | "semiannually" | "halfyearly" => Frequency::Semiannual,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Frequency::Weekly => "weekly",
            Frequency::Biweekly => "biweekly",
            Frequency::Monthly => "monthly",
            Frequency::Quarterly => "quarterly",
            Frequency::Semiannual => "semiannual",
        }
    }

    /// The `n`th date of the series (0 is `start`). Months are counted from `start`, so a
    /// series from 31 January runs 28 February, 31 March, 30 April. `None` past year 9999.
    pub fn nth(self, start: Date, n: u32) -> Option<Date> {
        match self {
            Frequency::Weekly => calendar::add_days(start, 7 * i64::from(n)),
            Frequency::Biweekly => calendar::add_days(start, 14 * i64::from(n)),
            Frequency::Monthly => calendar::add_months(start, n),
            Frequency::Quarterly => calendar::add_months(start, n.checked_mul(3)?),
            Frequency::Semiannual => calendar::add_months(start, n.checked_mul(6)?),
        }
    }
}

/// The action input `{event, record, params}`, read.
struct Input<'a> {
    /// The event's time (or the record's `updated_at` when the event has none), micros.
    at: i64,
    record: Source<'a>,
    params: &'a Map<String, Value>,
}

/// The record the event is about.
struct Source<'a> {
    id: String,
    record_type: String,
    data: &'a Map<String, Value>,
}

static EMPTY: std::sync::LazyLock<Map<String, Value>> = std::sync::LazyLock::new(Map::new);

impl<'a> Input<'a> {
    fn read(input: &'a Value) -> Result<Input<'a>, String> {
        let Some(input) = input.as_object() else {
            return Err("the input must be a JSON object {event, record, params}".into());
        };
        let params = match input.get("params") {
            None | Some(Value::Null) => &*EMPTY,
            Some(Value::Object(p)) => p,
            Some(_) => return Err("params: must be an object".into()),
        };
        let record = match input.get("record") {
            None | Some(Value::Null) => {
                return Err(
                    "record: this action needs the record the event is about, and there is none"
                        .into(),
                );
            }
            Some(Value::Object(r)) => r,
            Some(_) => return Err("record: must be an object".into()),
        };
        let id = match record.get("id") {
            Some(Value::String(s)) if !s.trim().is_empty() => s.trim().to_string(),
            Some(Value::Number(n)) => n.to_string(),
            _ => return Err("record.id: missing".into()),
        };
        let record_type = match record.get("type").or_else(|| record.get("record_type")) {
            Some(Value::String(s)) if valid_type(s) => s.clone(),
            Some(Value::String(s)) => {
                return Err(format!("record.type: {:?} is not a record type", clip(s)));
            }
            _ => return Err("record.type: missing".into()),
        };
        let data = match record.get("data") {
            None | Some(Value::Null) => &*EMPTY,
            Some(Value::Object(d)) => d,
            Some(_) => return Err("record.data: must be an object".into()),
        };
        let event_at = input.get("event").and_then(|e| e.get("at"));
        let at = match event_at {
            None | Some(Value::Null) => match record.get("updated_at").and_then(micros) {
                Some(at) => at,
                None => {
                    return Err("event.at: missing (microseconds since the Unix epoch)".into());
                }
            },
            Some(v) => micros(v).ok_or_else(|| {
                format!(
                    "event.at: {} is not a time in microseconds since the Unix epoch",
                    clip(&v.to_string())
                )
            })?,
        };
        Ok(Input {
            at,
            record: Source {
                id,
                record_type,
                data,
            },
            params,
        })
    }

    /// The UTC date of the event.
    fn date(&self) -> Result<Date, String> {
        calendar::date_of_micros(self.at)
            .ok_or_else(|| format!("event.at: {} is out of range", self.at))
    }

    /// An optional text parameter: absent or null is `None`; anything but non-blank text of
    /// at most `max` characters is an error.
    fn text_param(&self, name: &str, max: usize) -> Result<Option<String>, String> {
        match self.params.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if !s.trim().is_empty() && s.chars().count() <= max => {
                Ok(Some(s.trim().to_string()))
            }
            Some(_) => Err(format!(
                "params.{name}: give a text of 1 to {max} characters"
            )),
        }
    }

    /// `params.record_type`, checked, or `default`.
    fn target_type(&self, default: &str) -> Result<String, String> {
        match self.text_param("record_type", MAX_NAME)? {
            None => Ok(default.to_string()),
            Some(t) if valid_type(&t) => Ok(t),
            Some(t) => Err(format!(
                "params.record_type: {:?} is not a record type (lowercase letters, digits and '_')",
                clip(&t)
            )),
        }
    }

    /// `params.link`, checked, or `<source type>_id`.
    fn link(&self) -> Result<String, String> {
        match self.text_param("link", MAX_NAME)? {
            None => Ok(format!("{}_id", self.record.record_type)),
            Some(l) if valid_field(&l) => Ok(l),
            Some(l) => Err(format!(
                "params.link: {:?} is not a field name (letters, digits and '_')",
                clip(&l)
            )),
        }
    }

    /// A whole-number parameter within `range`.
    fn int_param(
        &self,
        name: &str,
        range: std::ops::RangeInclusive<u32>,
    ) -> Result<Option<u32>, String> {
        match self.params.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => whole(v)
                .filter(|n| range.contains(n))
                .map(Some)
                .ok_or_else(|| {
                    format!(
                        "params.{name}: give a whole number from {} to {}, not {}",
                        range.start(),
                        range.end(),
                        clip(&v.to_string())
                    )
                }),
        }
    }

    /// The customer's name: `customer_name`, else `name` (a lead's).
    fn customer_name(&self) -> Option<&'a Value> {
        given(self.record.data, "customer_name").or_else(|| given(self.record.data, "name"))
    }
}

/// Plans `schedule-job`: one job for the record, on the first work day at least
/// `lead_time_days` work days after the event.
pub fn plan_job(settings: &Settings, input: &Value) -> Result<JobPlan, String> {
    let input = Input::read(input)?;
    let record_type = input.target_type("job")?;
    let link = input.link()?;
    let lead_time = match input.int_param("lead_time_days", 0..=MAX_LEAD_TIME_DAYS)? {
        Some(days) => days,
        None => settings.lead_time_days,
    };
    let job_type = match input.text_param("job_type", MAX_NAME)? {
        Some(t) => t,
        None => match given(input.record.data, "job_type") {
            Some(Value::String(t)) => t.trim().to_string(),
            _ => "service".to_string(),
        },
    };
    let crew = input
        .text_param("crew", MAX_NAME)?
        .unwrap_or_else(|| settings.default_crew.clone());

    let date = settings.work_days.add_work_days(input.date()?, lead_time);
    let scheduled_for = calendar::format_date(date);

    let customer = input.customer_name();
    let address = given(input.record.data, "address");
    let title = titled(&humanize(&job_type), customer.or(address));

    let mut data = Map::new();
    data.insert("title".into(), json!(title));
    if let Some(name) = customer {
        data.insert("customer_name".into(), name.clone());
    }
    if let Some(address) = address {
        data.insert("address".into(), address.clone());
    }
    if let Some(amount) = input
        .record
        .data
        .get("amount")
        .filter(|a| a.as_f64().is_some_and(f64::is_finite))
    {
        data.insert("amount".into(), amount.clone());
    }
    data.insert("job_type".into(), json!(job_type));
    if !crew.trim().is_empty() {
        data.insert("crew".into(), json!(crew));
    }
    data.insert("scheduled_for".into(), json!(scheduled_for));
    if let Some(lead) = given(input.record.data, "lead_id") {
        data.insert("lead_id".into(), lead.clone());
    }
    data.insert(link, json!(input.record.id));

    Ok(JobPlan {
        job: NewRecord {
            record_type,
            stage: stage(&settings.job_stage),
            data: Value::Object(data),
        },
        scheduled_for,
    })
}

/// Plans `schedule-recurring`: the visits of a contract or agreement, from its start date
/// through its end date (or for its number of visits), each on a work day.
pub fn plan_visits(settings: &Settings, input: &Value) -> Result<VisitPlan, String> {
    let input = Input::read(input)?;
    let data = input.record.data;
    let record_type = input.target_type("visit")?;
    let link = input.link()?;
    let title = input
        .text_param("title", MAX_VISIT_TITLE)?
        .unwrap_or_else(|| "Visit".to_string());

    let frequency = match input.params.get("frequency").filter(|v| !v.is_null()) {
        Some(v) => read_frequency(v, "params.frequency")?,
        None => match data.get("frequency").filter(|v| is_given(v)) {
            Some(v) => read_frequency(v, "record.data.frequency")?,
            None => Frequency::Monthly,
        },
    };
    let start = match data.get("start_date").filter(|v| is_given(v)) {
        Some(v) => read_date(v, "record.data.start_date")?,
        None => input.date()?,
    };
    let end = match data.get("end_date").filter(|v| is_given(v)) {
        Some(v) => Some(read_date(v, "record.data.end_date")?),
        None => None,
    };
    if let Some(end) = end
        && end < start
    {
        return Err(format!(
            "record.data.end_date {} is before the start date {}",
            calendar::format_date(end),
            calendar::format_date(start)
        ));
    }
    let count = match input.int_param("count", 1..=u32::MAX)? {
        Some(n) => Some(n),
        None => match data.get("visits").filter(|v| !v.is_null()) {
            Some(v) => Some(whole(v).filter(|&n| n >= 1).ok_or_else(|| {
                format!(
                    "record.data.visits: give a whole number from 1, not {}",
                    clip(&v.to_string())
                )
            })?),
            None => None,
        },
    };
    if end.is_none() && count.is_none() {
        return Err(
            "record.data.end_date: missing, and there is no number of visits either \
             (record.data.visits or params.count)"
                .into(),
        );
    }

    let limit = settings.max_visits.clamp(1, MAX_VISITS) as usize;
    let mut dates: Vec<Date> = Vec::new();
    let mut capped = false;
    for n in 0u32.. {
        if count.is_some_and(|c| n >= c) {
            break;
        }
        let Some(nominal) = frequency.nth(start, n) else {
            break;
        };
        if end.is_some_and(|end| nominal > end) {
            break;
        }
        if dates.len() == limit {
            capped = true;
            break;
        }
        dates.push(settings.work_days.on_or_after(nominal));
    }
    let (Some(&first), Some(&last)) = (dates.first(), dates.last()) else {
        return Err("record.data.start_date: no visit falls within the dates".into());
    };

    let customer = input.customer_name();
    let address = given(data, "address");
    let total = dates.len();
    let visits = dates
        .iter()
        .enumerate()
        .map(|(i, date)| {
            let mut visit = Map::new();
            let name = format!("{} {} of {total}", clip_to(&title, MAX_TITLE_PART), i + 1);
            visit.insert("title".into(), json!(titled(&name, customer)));
            visit.insert("scheduled_for".into(), json!(calendar::format_date(*date)));
            if let Some(name) = customer {
                visit.insert("customer_name".into(), name.clone());
            }
            if let Some(address) = address {
                visit.insert("address".into(), address.clone());
            }
            visit.insert("sequence".into(), json!(i + 1));
            visit.insert(link.clone(), json!(input.record.id));
            Value::Object(visit)
        })
        .collect();

    Ok(VisitPlan {
        record_type,
        stage: stage(&settings.visit_stage),
        visits,
        first: calendar::format_date(first),
        last: calendar::format_date(last),
        capped,
    })
}

fn read_frequency(value: &Value, field: &str) -> Result<Frequency, String> {
    value.as_str().and_then(Frequency::parse).ok_or_else(|| {
        format!(
            "{field}: {} is not a frequency (weekly, biweekly, monthly, quarterly or semiannual)",
            clip(&value.to_string())
        )
    })
}

fn read_date(value: &Value, field: &str) -> Result<Date, String> {
    value
        .as_str()
        .and_then(calendar::parse_date)
        .ok_or_else(|| {
            format!(
                "{field}: {} is not a date (YYYY-MM-DD)",
                clip(&value.to_string())
            )
        })
}

/// "<what> – <who>", or just "<what>" when there is no text to name who.
fn titled(what: &str, who: Option<&Value>) -> String {
    match who.and_then(Value::as_str).map(str::trim) {
        Some(who) if !who.is_empty() => format!("{what} – {}", clip_to(who, MAX_TITLE_PART)),
        _ => what.to_string(),
    }
}

/// "roof-replacement" → "Roof replacement".
fn humanize(job_type: &str) -> String {
    let words: Vec<&str> = job_type
        .split(|c: char| c == '-' || c == '_' || c.is_whitespace())
        .filter(|w| !w.is_empty())
        .collect();
    let text = clip_to(&words.join(" "), MAX_TITLE_PART);
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => "Job".to_string(),
    }
}

/// A configured stage; "" means the pipeline's first stage.
fn stage(name: &str) -> Option<String> {
    let name = name.trim();
    (!name.is_empty()).then(|| name.to_string())
}

/// A field's value when it is there and not blank.
fn given<'a>(data: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    data.get(key).filter(|v| is_given(v))
}

fn is_given(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::String(s) => !s.trim().is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
        Value::Bool(_) | Value::Number(_) => true,
    }
}

/// A time in microseconds: a whole JSON number.
fn micros(value: &Value) -> Option<i64> {
    value.as_i64().or_else(|| {
        value
            .as_f64()
            .filter(|f| f.fract() == 0.0 && f.abs() < 9e18)
            .map(|f| f as i64)
    })
}

/// A whole non-negative number, written `3` or `3.0`.
fn whole(value: &Value) -> Option<u32> {
    match value {
        Value::Number(n) => n
            .as_u64()
            .or_else(|| {
                n.as_f64()
                    .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f < 1e10)
                    .map(|f| f as u64)
            })
            .and_then(|n| u32::try_from(n).ok()),
        _ => None,
    }
}

/// Record type ids: lowercase letters, digits and '_', starting with a letter.
fn valid_type(name: &str) -> bool {
    let bytes = name.as_bytes();
    (1..=MAX_NAME).contains(&bytes.len())
        && bytes[0].is_ascii_lowercase()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_')
}

/// Field names: letters, digits and '_', starting with a letter.
fn valid_field(name: &str) -> bool {
    let bytes = name.as_bytes();
    (1..=MAX_NAME).contains(&bytes.len())
        && bytes[0].is_ascii_alphabetic()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'_')
}

/// At most 40 characters of input quoted in an error.
fn clip(text: &str) -> String {
    clip_to(text, 40)
}

fn clip_to(text: &str, max: usize) -> String {
    streamflow_plugin_sdk::text::clip(text, max)
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use time::macros::date;

    use super::*;

    /// 2026-03-06T15:00:00Z, a Friday.
    const FRIDAY_3PM: i64 = 1_772_809_200_000_000;

    fn won_estimate(at: i64) -> Value {
        json!({
            "event": {
                "id": "e1",
                "kind": "stage.changed",
                "record_type": "estimate",
                "record_id": "est-1",
                "payload": {"from": "sent", "to": "won"},
                "at": at,
            },
            "record": {
                "id": "est-1",
                "type": "estimate",
                "stage": "won",
                "version": 3,
                "data": {
                    "customer_name": "Dana Smith",
                    "address": "1 Main St",
                    "lead_id": "lead-9",
                    "amount": 12500.5,
                    "description": "Tear-off and new shingles",
                    "job_type": "roof-replacement",
                },
                "created_at": at - 1_000_000,
                "updated_at": at,
            },
            "params": {},
        })
    }

    fn contract(data: Value, params: Value) -> Value {
        json!({
            "event": {"id": "e2", "kind": "record.created", "record_type": "contract",
                      "record_id": "c-1", "payload": {}, "at": FRIDAY_3PM},
            "record": {"id": "c-1", "type": "contract", "stage": "active", "version": 1,
                       "data": data, "created_at": FRIDAY_3PM, "updated_at": FRIDAY_3PM},
            "params": params,
        })
    }

    fn dates(plan: &VisitPlan) -> Vec<&str> {
        plan.visits
            .iter()
            .map(|v| v["scheduled_for"].as_str().unwrap())
            .collect()
    }

    /// The configuration the host hands over when the tenant sets nothing: the schema's
    /// defaults, filled in as the host does (recursively into objects).
    fn schema_defaults() -> Value {
        let schema: Value = serde_json::from_str(include_str!("../config.schema.json")).unwrap();
        streamflow_plugin_sdk::schema::defaults(&schema)
    }

    #[test]
    fn schema_defaults_are_the_code_defaults() {
        let config = schema_defaults();
        assert_eq!(
            serde_json::from_value::<Settings>(config.clone()).unwrap(),
            Settings::default()
        );
        // Every setting is in both, and nothing else.
        let code = serde_json::to_value(Settings::default()).unwrap();
        let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
        assert_eq!(keys(&code), keys(&config));
    }

    #[test]
    fn settings_defaults_and_leniency() {
        let s: Settings = serde_json::from_value(json!({})).unwrap();
        assert_eq!(s, Settings::default());
        assert_eq!(s.lead_time_days, 3);
        assert_eq!(s.max_visits, 26);
        let s: Settings = serde_json::from_value(json!({
            "lead_time_days": 5.0,
            "work_days": ["Mon", "tue", "sat"],
            "default_crew": "Crew A",
            "unknown": 1,
        }))
        .unwrap();
        assert_eq!(s.lead_time_days, 5);
        assert_eq!(s.work_days.names(), ["mon", "tue", "sat"]);
        assert!(s.check().is_ok());
        let too_long = Settings {
            lead_time_days: 91,
            ..Settings::default()
        };
        assert!(too_long.check().unwrap_err().contains("lead_time_days"));
        let none = Settings {
            max_visits: 0,
            ..Settings::default()
        };
        assert!(none.check().unwrap_err().contains("max_visits"));
        assert!(serde_json::from_value::<Settings>(json!({"lead_time_days": 1.5})).is_err());
        assert!(serde_json::from_value::<Settings>(json!({"work_days": []})).is_err());
    }

    #[test]
    fn job_from_a_won_estimate() {
        let plan = plan_job(&Settings::default(), &won_estimate(FRIDAY_3PM)).unwrap();
        // Friday + 3 work days: Mon, Tue, Wed.
        assert_eq!(plan.scheduled_for, "2026-03-11");
        assert_eq!(plan.job.record_type, "job");
        assert_eq!(plan.job.stage.as_deref(), Some("scheduled"));
        assert_eq!(
            plan.job.data,
            json!({
                "title": "Roof replacement – Dana Smith",
                "customer_name": "Dana Smith",
                "address": "1 Main St",
                "amount": 12500.5,
                "job_type": "roof-replacement",
                "crew": "unassigned",
                "scheduled_for": "2026-03-11",
                "lead_id": "lead-9",
                "estimate_id": "est-1",
            })
        );
    }

    #[test]
    fn job_params_override() {
        let mut input = won_estimate(FRIDAY_3PM);
        input["params"] = json!({
            "record_type": "work_order",
            "job_type": "gutter_repair",
            "link": "source_estimate",
            "lead_time_days": 0,
            "crew": "North",
        });
        let settings = Settings {
            job_stage: String::new(),
            ..Settings::default()
        };
        let plan = plan_job(&settings, &input).unwrap();
        assert_eq!(plan.job.record_type, "work_order");
        assert_eq!(plan.job.stage, None);
        // Lead time 0 on a Friday: the same day.
        assert_eq!(plan.scheduled_for, "2026-03-06");
        assert_eq!(plan.job.data["title"], "Gutter repair – Dana Smith");
        assert_eq!(plan.job.data["job_type"], "gutter_repair");
        assert_eq!(plan.job.data["crew"], "North");
        assert_eq!(plan.job.data["source_estimate"], "est-1");
        assert!(plan.job.data.get("estimate_id").is_none());
    }

    #[test]
    fn job_on_a_weekend_event_and_custom_lead_time() {
        // Saturday 2026-03-07 12:00Z with lead time 0 → Monday.
        let saturday = FRIDAY_3PM + 21 * 3_600_000_000;
        let mut input = won_estimate(saturday);
        input["params"] = json!({"lead_time_days": 0});
        assert_eq!(
            plan_job(&Settings::default(), &input)
                .unwrap()
                .scheduled_for,
            "2026-03-09"
        );
        // Config lead time 5 from Saturday: Mon..Fri.
        let settings = Settings {
            lead_time_days: 5,
            ..Settings::default()
        };
        input["params"] = json!({});
        assert_eq!(
            plan_job(&settings, &input).unwrap().scheduled_for,
            "2026-03-13"
        );
        // Only Tuesdays and Thursdays.
        let settings = Settings {
            lead_time_days: 1,
            work_days: serde_json::from_value(json!(["tue", "thu"])).unwrap(),
            ..Settings::default()
        };
        assert_eq!(
            plan_job(&settings, &input).unwrap().scheduled_for,
            "2026-03-10"
        );
    }

    #[test]
    fn job_with_little_data() {
        let input = json!({
            "event": {"at": FRIDAY_3PM},
            "record": {"id": "lead-1", "type": "lead", "data": {"name": "Sam", "amount": "lots"}},
        });
        let plan = plan_job(&Settings::default(), &input).unwrap();
        assert_eq!(
            plan.job.data,
            json!({
                "title": "Service – Sam",
                "customer_name": "Sam",
                "job_type": "service",
                "crew": "unassigned",
                "scheduled_for": "2026-03-11",
                "lead_id": "lead-1",
            })
        );
        let input = json!({
            "event": {"at": FRIDAY_3PM},
            "record": {"id": "e-2", "type": "estimate", "data": {"address": "9 Elm St"}},
        });
        let plan = plan_job(&Settings::default(), &input).unwrap();
        assert_eq!(plan.job.data["title"], "Service – 9 Elm St");
        assert!(plan.job.data.get("customer_name").is_none());
        let input = json!({
            "event": {"at": FRIDAY_3PM},
            "record": {"id": "e-3", "type": "estimate", "data": {"customer_name": "  "}},
        });
        let plan = plan_job(&Settings::default(), &input).unwrap();
        assert_eq!(plan.job.data["title"], "Service");
        assert!(plan.job.data.get("customer_name").is_none());
        assert!(plan.job.data.get("address").is_none());
    }

    #[test]
    fn job_time_falls_back_to_updated_at() {
        let mut input = won_estimate(FRIDAY_3PM);
        input["event"].as_object_mut().unwrap().remove("at");
        assert_eq!(
            plan_job(&Settings::default(), &input)
                .unwrap()
                .scheduled_for,
            "2026-03-11"
        );
        input["record"]
            .as_object_mut()
            .unwrap()
            .remove("updated_at");
        let err = plan_job(&Settings::default(), &input).unwrap_err();
        assert!(err.starts_with("event.at: missing"), "{err}");
    }

    #[test]
    fn job_bad_input() {
        let settings = Settings::default();
        let base = won_estimate(FRIDAY_3PM);
        type Change = Box<dyn Fn(&mut Value)>;
        let cases: Vec<(Change, &str)> = vec![
            (Box::new(|i| i["record"] = Value::Null), "record:"),
            (
                Box::new(|i| i["record"] = json!("x")),
                "record: must be an object",
            ),
            (
                Box::new(|i| {
                    i["record"].as_object_mut().unwrap().remove("id");
                }),
                "record.id: missing",
            ),
            (
                Box::new(|i| {
                    i["record"].as_object_mut().unwrap().remove("type");
                }),
                "record.type: missing",
            ),
            (
                Box::new(|i| i["record"]["data"] = json!([1])),
                "record.data:",
            ),
            (
                Box::new(|i| i["params"] = json!([])),
                "params: must be an object",
            ),
            (
                Box::new(|i| i["event"]["at"] = json!("yesterday")),
                "event.at:",
            ),
            (
                Box::new(|i| i["event"]["at"] = json!(i64::MAX)),
                "event.at:",
            ),
            (
                Box::new(|i| i["params"]["lead_time_days"] = json!(-1)),
                "params.lead_time_days:",
            ),
            (
                Box::new(|i| i["params"]["lead_time_days"] = json!(91)),
                "params.lead_time_days:",
            ),
            (
                Box::new(|i| i["params"]["record_type"] = json!("Job!")),
                "params.record_type:",
            ),
            (
                Box::new(|i| i["params"]["record_type"] = json!("")),
                "params.record_type:",
            ),
            (
                Box::new(|i| i["params"]["link"] = json!("a b")),
                "params.link:",
            ),
            (
                Box::new(|i| i["params"]["job_type"] = json!(7)),
                "params.job_type:",
            ),
        ];
        for (change, expected) in cases {
            let mut input = base.clone();
            change(&mut input);
            let err = plan_job(&settings, &input).unwrap_err();
            assert!(err.starts_with(expected), "{expected} → {err}");
        }
        assert!(plan_job(&settings, &json!(null)).is_err());
        assert!(plan_job(&settings, &json!([])).is_err());
    }

    #[test]
    fn planning_is_deterministic() {
        let input = won_estimate(FRIDAY_3PM);
        let settings = Settings::default();
        assert_eq!(plan_job(&settings, &input), plan_job(&settings, &input));
        let input = contract(
            json!({"start_date": "2026-01-31", "end_date": "2026-12-31", "customer_name": "Acme"}),
            json!({}),
        );
        assert_eq!(
            plan_visits(&settings, &input),
            plan_visits(&settings, &input)
        );
    }

    #[test]
    fn monthly_visits_clamp_and_skip_weekends() {
        let input = contract(
            json!({
                "customer_name": "Acme HOA",
                "address": "2 Park Rd",
                "start_date": "2026-01-31",
                "end_date": "2026-06-30",
                "frequency": "monthly",
            }),
            json!({}),
        );
        let plan = plan_visits(&Settings::default(), &input).unwrap();
        // Jan 31 is a Saturday → Mon Feb 2; Feb 28 Sat → Mon Mar 2; Mar 31 Tue; Apr 30 Thu;
        // May 31 Sun → Mon Jun 1; Jun 30 Tue.
        assert_eq!(
            dates(&plan),
            [
                "2026-02-02",
                "2026-03-02",
                "2026-03-31",
                "2026-04-30",
                "2026-06-01",
                "2026-06-30"
            ]
        );
        assert_eq!(
            (plan.first.as_str(), plan.last.as_str()),
            ("2026-02-02", "2026-06-30")
        );
        assert!(!plan.capped);
        assert_eq!(plan.record_type, "visit");
        assert_eq!(plan.stage.as_deref(), Some("scheduled"));
        assert_eq!(
            plan.visits[0],
            json!({
                "title": "Visit 1 of 6 – Acme HOA",
                "scheduled_for": "2026-02-02",
                "customer_name": "Acme HOA",
                "address": "2 Park Rd",
                "sequence": 1,
                "contract_id": "c-1",
            })
        );
        assert_eq!(plan.visits[5]["title"], "Visit 6 of 6 – Acme HOA");
        assert_eq!(plan.visits[5]["sequence"], 6);
    }

    #[test]
    fn leap_year_series() {
        // From 29 Feb 2028, quarterly for a year and a half: clamped only where needed.
        let input = contract(
            json!({"start_date": "2028-02-29", "end_date": "2029-08-31", "frequency": "quarterly"}),
            json!({}),
        );
        let settings = Settings {
            work_days: serde_json::from_value(json!([
                "mon", "tue", "wed", "thu", "fri", "sat", "sun"
            ]))
            .unwrap(),
            ..Settings::default()
        };
        let plan = plan_visits(&settings, &input).unwrap();
        assert_eq!(
            dates(&plan),
            [
                "2028-02-29",
                "2028-05-29",
                "2028-08-29",
                "2028-11-29",
                "2029-02-28",
                "2029-05-29",
                "2029-08-29"
            ]
        );
        // Monthly from 31 January in a leap year.
        let input = contract(
            json!({"start_date": "2028-01-31", "visits": 3}),
            json!({"frequency": "monthly"}),
        );
        let plan = plan_visits(&settings, &input).unwrap();
        assert_eq!(dates(&plan), ["2028-01-31", "2028-02-29", "2028-03-31"]);
    }

    #[test]
    fn weekly_and_biweekly() {
        // Start on a Sunday: every visit moves to the Monday after.
        let input = contract(
            json!({"start_date": "2026-03-01", "end_date": "2026-03-29", "frequency": "weekly"}),
            json!({"title": "Mowing"}),
        );
        let plan = plan_visits(&Settings::default(), &input).unwrap();
        assert_eq!(
            dates(&plan),
            [
                "2026-03-02",
                "2026-03-09",
                "2026-03-16",
                "2026-03-23",
                "2026-03-30"
            ]
        );
        // The last nominal date (Sunday 29th) is within the end date; its work day is not.
        assert_eq!(plan.last, "2026-03-30");
        assert_eq!(plan.visits[0]["title"], "Mowing 1 of 5");
        let input = contract(
            json!({"start_date": "2026-12-21", "end_date": "2027-01-31", "frequency": "Bi-Weekly"}),
            json!({}),
        );
        let plan = plan_visits(&Settings::default(), &input).unwrap();
        assert_eq!(dates(&plan), ["2026-12-21", "2027-01-04", "2027-01-18"]);
    }

    #[test]
    fn semiannual_agreement_by_count() {
        let input = json!({
            "event": {"at": FRIDAY_3PM},
            "record": {"id": "a-7", "type": "agreement", "data": {
                "customer_name": "Lee", "frequency": "semiannual", "visits": 4,
                "start_date": "2026-04-15"}},
            "params": {"title": "Tune-up"},
        });
        let plan = plan_visits(&Settings::default(), &input).unwrap();
        assert_eq!(
            dates(&plan),
            ["2026-04-15", "2026-10-15", "2027-04-15", "2027-10-15"]
        );
        assert_eq!(plan.visits[1]["agreement_id"], "a-7");
        assert_eq!(plan.visits[1]["title"], "Tune-up 2 of 4 – Lee");
        // params.count overrides the record's visits; no start date means the event's date.
        let input = json!({
            "event": {"at": FRIDAY_3PM},
            "record": {"id": "a-7", "type": "agreement", "data": {"frequency": "quarterly", "visits": 4}},
            "params": {"count": 2, "link": "parent_id", "record_type": "maintenance_visit"},
        });
        let plan = plan_visits(&Settings::default(), &input).unwrap();
        assert_eq!(dates(&plan), ["2026-03-06", "2026-06-08"]);
        assert_eq!(plan.record_type, "maintenance_visit");
        assert_eq!(plan.visits[0]["parent_id"], "a-7");
        assert_eq!(plan.visits[0]["title"], "Visit 1 of 2");
        // Both an end date and a count: whichever comes first.
        let input = contract(
            json!({"start_date": "2026-01-05", "end_date": "2026-12-31", "visits": 3, "frequency": "weekly"}),
            json!({}),
        );
        let plan = plan_visits(&Settings::default(), &input).unwrap();
        assert_eq!(dates(&plan), ["2026-01-05", "2026-01-12", "2026-01-19"]);
    }

    #[test]
    fn visits_are_capped() {
        let input = contract(
            json!({"start_date": "2026-01-05", "end_date": "2027-12-31", "frequency": "weekly"}),
            json!({}),
        );
        let plan = plan_visits(&Settings::default(), &input).unwrap();
        assert_eq!(plan.visits.len(), 26);
        assert!(plan.capped);
        assert_eq!(plan.visits[25]["title"], "Visit 26 of 26");
        let settings = Settings {
            max_visits: 60,
            ..Settings::default()
        };
        let input = contract(
            json!({"start_date": "2026-01-05", "frequency": "weekly"}),
            json!({"count": 1000}),
        );
        let plan = plan_visits(&settings, &input).unwrap();
        assert_eq!(plan.visits.len(), 60);
        assert!(plan.capped);
        // Exactly the cap is not capped.
        let input = contract(
            json!({"start_date": "2026-01-05", "visits": 26, "frequency": "weekly"}),
            json!({}),
        );
        let plan = plan_visits(&Settings::default(), &input).unwrap();
        assert_eq!(plan.visits.len(), 26);
        assert!(!plan.capped);
        // A single-day contract has one visit.
        let input = contract(
            json!({"start_date": "2026-01-05", "end_date": "2026-01-05"}),
            json!({}),
        );
        let plan = plan_visits(&Settings::default(), &input).unwrap();
        assert_eq!(dates(&plan), ["2026-01-05"]);
    }

    #[test]
    fn recurring_bad_input() {
        let settings = Settings::default();
        let cases = [
            (
                json!({"start_date": "soon", "visits": 2}),
                json!({}),
                "record.data.start_date:",
            ),
            (
                json!({"start_date": "2026-02-30", "visits": 2}),
                json!({}),
                "record.data.start_date:",
            ),
            (
                json!({"start_date": 20260101, "visits": 2}),
                json!({}),
                "record.data.start_date:",
            ),
            (
                json!({"end_date": "31/12/2026"}),
                json!({}),
                "record.data.end_date:",
            ),
            (
                json!({"start_date": "2026-06-01", "end_date": "2026-05-31"}),
                json!({}),
                "record.data.end_date 2026-05-31 is before",
            ),
            (
                json!({"frequency": "daily", "visits": 2}),
                json!({}),
                "record.data.frequency:",
            ),
            (
                json!({"visits": 2}),
                json!({"frequency": "hourly"}),
                "params.frequency:",
            ),
            (json!({"visits": 0}), json!({}), "record.data.visits:"),
            (json!({"visits": -3}), json!({}), "record.data.visits:"),
            (json!({"visits": "many"}), json!({}), "record.data.visits:"),
            (json!({}), json!({"count": 0}), "params.count:"),
            (json!({}), json!({}), "record.data.end_date: missing"),
            (json!({"visits": 2}), json!({"title": ""}), "params.title:"),
        ];
        for (data, params, expected) in cases {
            let err = plan_visits(&settings, &contract(data.clone(), params)).unwrap_err();
            assert!(err.starts_with(expected), "{data} → {err}");
        }
        let err = plan_visits(&settings, &json!({"event": {"at": FRIDAY_3PM}})).unwrap_err();
        assert!(err.starts_with("record:"), "{err}");
    }

    #[test]
    fn frequencies() {
        assert_eq!(Frequency::parse("Weekly"), Some(Frequency::Weekly));
        assert_eq!(Frequency::parse("bi-weekly"), Some(Frequency::Biweekly));
        assert_eq!(Frequency::parse("semi annual"), Some(Frequency::Semiannual));
        assert_eq!(Frequency::parse("QUARTERLY"), Some(Frequency::Quarterly));
        assert_eq!(Frequency::parse("yearly"), None);
        let start = date!(2026 - 08 - 31);
        assert_eq!(
            Frequency::Semiannual.nth(start, 1),
            Some(date!(2027 - 02 - 28))
        );
        assert_eq!(
            Frequency::Quarterly.nth(start, 1),
            Some(date!(2026 - 11 - 30))
        );
        assert_eq!(
            Frequency::Biweekly.nth(start, 2),
            Some(date!(2026 - 09 - 28))
        );
        for f in [
            Frequency::Weekly,
            Frequency::Biweekly,
            Frequency::Monthly,
            Frequency::Quarterly,
            Frequency::Semiannual,
        ] {
            assert_eq!(Frequency::parse(f.name()), Some(f));
            assert_eq!(f.nth(start, 0), Some(start));
        }
    }

    #[test]
    fn titles() {
        assert_eq!(humanize("roof-replacement"), "Roof replacement");
        assert_eq!(humanize("ac_install"), "Ac install");
        assert_eq!(humanize("Emergency  repair"), "Emergency repair");
        assert_eq!(humanize("--"), "Job");
        assert_eq!(titled("Service", Some(&json!("Ana"))), "Service – Ana");
        assert_eq!(titled("Service", Some(&json!({"street": "x"}))), "Service");
        assert_eq!(titled("Service", None), "Service");
        let long = "x".repeat(200);
        assert_eq!(titled("S", Some(&json!(long))).chars().count(), 4 + 80);
    }
}
