//! Which follow-up tasks to create and when they are due, as pure functions of the
//! tenant's configuration ([`Settings`]), the record and the event's time: no host calls,
//! so it runs (and is tested) natively. `lib.rs` reads the record, checks and sets the
//! "followed up" marks in kv and hands the tasks to the host.
//!
//! Errors are the messages of `invalid-input`: each names the field that is wrong.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::hours::{self, WorkWeek, WorkingHours};
use streamflow_plugin_sdk::text::{clip, lenient};

/// Most tasks per follow-up.
pub const MAX_TASKS: usize = 10;
/// Latest due time, in hours after the event.
pub const MAX_DUE_IN_HOURS: f64 = 8760.0;
/// Longest task title template.
const MAX_TITLE: usize = 200;
/// Most characters of a name put into a title.
const MAX_NAME: usize = 80;
/// Longest `params.key`.
const MAX_KEY: usize = 100;

/// The plugin's configuration. Every field is optional; unknown fields are ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// Scores that get followed up: "hot", "warm", "cold".
    pub temperatures: Vec<String>,
    /// Stage of new tasks ("" for the first stage of the pipeline).
    pub task_stage: String,
    /// The tenant's local time, in hours from UTC (quarter hours allowed).
    pub utc_offset_hours: f64,
    pub work_days: WorkWeek,
    #[serde(deserialize_with = "lenient::int")]
    pub day_start_hour: u32,
    #[serde(deserialize_with = "lenient::int")]
    pub day_end_hour: u32,
    /// The tasks created for each record followed up.
    pub tasks: Vec<TaskSpec>,
}

/// One task to create: `{name}` in the title is the record's name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    pub title: String,
    pub due_in_hours: f64,
    #[serde(default = "normal")]
    pub priority: String,
}

fn normal() -> String {
    "normal".to_string()
}

const PRIORITIES: [&str; 4] = ["low", "normal", "high", "urgent"];
const TEMPERATURES: [&str; 3] = ["hot", "warm", "cold"];

impl Default for Settings {
    fn default() -> Self {
        Settings {
            temperatures: vec!["hot".to_string()],
            task_stage: "open".to_string(),
            utc_offset_hours: 0.0,
            work_days: WorkWeek::MON_FRI,
            day_start_hour: 8,
            day_end_hour: 18,
            tasks: vec![
                TaskSpec {
                    title: "Call {name}".to_string(),
                    due_in_hours: 1.0,
                    priority: "urgent".to_string(),
                },
                TaskSpec {
                    title: "Send {name} an estimate".to_string(),
                    due_in_hours: 24.0,
                    priority: "high".to_string(),
                },
            ],
        }
    }
}

impl Settings {
    /// The working hours, and what the schema promises checked again.
    pub fn check(&self) -> Result<WorkingHours, String> {
        for t in &self.temperatures {
            if !TEMPERATURES.contains(&t.to_ascii_lowercase().as_str()) {
                return Err(format!(
                    "temperatures: {:?} is not hot, warm or cold",
                    clip(t, 40)
                ));
            }
        }
        check_tasks(&self.tasks, "tasks")?;
        WorkingHours::new(
            self.utc_offset_hours,
            self.work_days,
            self.day_start_hour,
            self.day_end_hour,
        )
    }

    /// Whether a score of this temperature is followed up.
    pub fn follows(&self, temperature: &str) -> bool {
        self.temperatures
            .iter()
            .any(|t| t.eq_ignore_ascii_case(temperature.trim()))
    }
}

fn check_tasks(tasks: &[TaskSpec], field: &str) -> Result<(), String> {
    if tasks.is_empty() || tasks.len() > MAX_TASKS {
        return Err(format!("{field}: give 1 to {MAX_TASKS} tasks"));
    }
    for (i, task) in tasks.iter().enumerate() {
        if task.title.trim().is_empty() || task.title.chars().count() > MAX_TITLE {
            return Err(format!(
                "{field}[{i}].title: give a title of 1 to {MAX_TITLE} characters"
            ));
        }
        if !(task.due_in_hours.is_finite()
            && task.due_in_hours > 0.0
            && task.due_in_hours <= MAX_DUE_IN_HOURS)
        {
            return Err(format!(
                "{field}[{i}].due_in_hours: a number of hours above 0 and at most {MAX_DUE_IN_HOURS}"
            ));
        }
        if !PRIORITIES.contains(&task.priority.as_str()) {
            return Err(format!(
                "{field}[{i}].priority: {:?} is not low, normal, high or urgent",
                clip(&task.priority, 40)
            ));
        }
    }
    Ok(())
}

/// `params.tasks`, read and checked.
pub fn parse_tasks(value: &Value, field: &str) -> Result<Vec<TaskSpec>, String> {
    let Some(items) = value.as_array() else {
        return Err(format!("{field}: give a list of tasks"));
    };
    let mut tasks = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate().take(MAX_TASKS + 1) {
        let Some(item) = item.as_object() else {
            return Err(format!(
                "{field}[{i}]: give {{title, due_in_hours, priority}}"
            ));
        };
        let title = match item.get("title") {
            Some(Value::String(s)) => s.clone(),
            _ => return Err(format!("{field}[{i}].title: missing")),
        };
        let due_in_hours = item
            .get("due_in_hours")
            .and_then(Value::as_f64)
            .ok_or_else(|| format!("{field}[{i}].due_in_hours: missing"))?;
        let priority = match item.get("priority") {
            None | Some(Value::Null) => normal(),
            Some(Value::String(s)) => s.trim().to_ascii_lowercase(),
            Some(other) => clip(&other.to_string(), 40),
        };
        tasks.push(TaskSpec {
            title,
            due_in_hours,
            priority,
        });
    }
    check_tasks(&tasks, field)?;
    Ok(tasks)
}

/// The record followed up.
#[derive(Debug, Clone, PartialEq)]
pub struct Subject<'a> {
    pub id: String,
    pub record_type: String,
    pub data: &'a Map<String, Value>,
}

impl Subject<'_> {
    /// What `{name}` stands for: the record's `name` (or `first_name` and `last_name`),
    /// else its `customer_name`, else its `title` (a government opportunity's), else
    /// "the lead" (for another type, "the estimate" etc.).
    pub fn name(&self) -> String {
        let text = |key: &str| {
            self.data
                .get(key)
                .and_then(Value::as_str)
                .map(str::trim)
                .filter(|s| !s.is_empty())
        };
        if let Some(name) = text("name") {
            return clip(name, MAX_NAME);
        }
        let parts: Vec<&str> = [text("first_name"), text("last_name")]
            .into_iter()
            .flatten()
            .collect();
        if !parts.is_empty() {
            return clip(&parts.join(" "), MAX_NAME);
        }
        if let Some(name) = text("customer_name").or_else(|| text("title")) {
            return clip(name, MAX_NAME);
        }
        format!("the {}", self.record_type.replace('_', " "))
    }
}

/// The tasks' data for `subject`, due relative to `at` (micros since the Unix epoch) and
/// moved into working hours.
pub fn plan_tasks(
    hours: &WorkingHours,
    tasks: &[TaskSpec],
    subject: &Subject<'_>,
    at: i64,
) -> Result<Vec<Value>, String> {
    let start = hours::from_micros(at).ok_or_else(|| format!("event.at: {at} is out of range"))?;
    let name = subject.name();
    tasks
        .iter()
        .map(|task| {
            let due = hours::add_hours(start, task.due_in_hours)
                .ok_or_else(|| format!("due_in_hours: {} is out of range", task.due_in_hours))?;
            let mut data = Map::new();
            let title = task.title.trim().replace("{name}", &name);
            data.insert("title".into(), json!(clip(&title, MAX_TITLE)));
            data.insert("due_at".into(), json!(hours::format_utc(hours.shift(due))));
            data.insert("priority".into(), json!(task.priority));
            data.insert("related_type".into(), json!(subject.record_type));
            data.insert("related_id".into(), json!(subject.id));
            if subject.record_type == "lead" {
                data.insert("lead_id".into(), json!(subject.id));
            }
            Ok(Value::Object(data))
        })
        .collect()
}

/// The kv key that marks a lead followed up after scoring.
pub fn scored_key(lead_id: &str) -> String {
    format!("followed-up:{lead_id}")
}

/// What a `lead.scored` event asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnScored {
    /// Not a temperature the tenant follows up.
    Ignore,
    /// Follow up this lead (if not done yet).
    FollowUp { lead_id: String },
}

/// Reads a `lead.scored` event: its payload (`{temperature, ...}`) and lead id.
pub fn on_scored(
    settings: &Settings,
    payload: &Value,
    record_id: Option<&str>,
) -> Result<OnScored, String> {
    let temperature = payload
        .get("temperature")
        .and_then(Value::as_str)
        .ok_or("payload.temperature: missing")?;
    if !settings.follows(temperature) {
        return Ok(OnScored::Ignore);
    }
    match record_id.map(str::trim).filter(|id| !id.is_empty()) {
        Some(id) => Ok(OnScored::FollowUp {
            lead_id: id.to_string(),
        }),
        None => Err("record_id: a lead.scored event without a lead".into()),
    }
}

/// What `create-followups` does.
#[derive(Debug, Clone, PartialEq)]
pub struct ActionPlan {
    /// The kv key that marks the record done (`params.once`, the default), or `None`.
    pub once_key: Option<String>,
    pub record_type: String,
    pub tasks: Vec<Value>,
}

/// Plans `create-followups` from its input `{event, record, params}`.
pub fn plan_action(
    settings: &Settings,
    hours: &WorkingHours,
    input: &Value,
) -> Result<ActionPlan, String> {
    let Some(input) = input.as_object() else {
        return Err("the input must be a JSON object {event, record, params}".into());
    };
    let empty = Map::new();
    let params = match input.get("params") {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(p)) => p,
        Some(_) => return Err("params: must be an object".into()),
    };
    let record = match input.get("record") {
        None | Some(Value::Null) => {
            return Err(
                "record: this action needs the record the event is about, and there is none".into(),
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
        Some(Value::String(s)) if !s.trim().is_empty() && s.len() <= 64 => s.trim().to_string(),
        _ => return Err("record.type: missing".into()),
    };
    let data = match record.get("data") {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(d)) => d,
        Some(_) => return Err("record.data: must be an object".into()),
    };
    let at = match input.get("event").and_then(|e| e.get("at")) {
        None | Some(Value::Null) => record
            .get("updated_at")
            .and_then(Value::as_i64)
            .ok_or("event.at: missing (microseconds since the Unix epoch)")?,
        Some(v) => v.as_i64().ok_or_else(|| {
            format!(
                "event.at: {} is not a time in microseconds since the Unix epoch",
                clip(&v.to_string(), 40)
            )
        })?,
    };
    let custom;
    let tasks: &[TaskSpec] = match params.get("tasks").filter(|t| !t.is_null()) {
        Some(value) => {
            custom = parse_tasks(value, "params.tasks")?;
            &custom
        }
        None => &settings.tasks,
    };
    let once = match params.get("once") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err("params.once: true or false".into()),
    };
    let key = match params.get("key") {
        None | Some(Value::Null) => "action".to_string(),
        Some(Value::String(k)) if !k.trim().is_empty() && k.chars().count() <= MAX_KEY => {
            k.trim().to_string()
        }
        Some(_) => {
            return Err(format!(
                "params.key: give a text of 1 to {MAX_KEY} characters"
            ));
        }
    };
    let subject = Subject {
        id: id.clone(),
        record_type: record_type.clone(),
        data,
    };
    Ok(ActionPlan {
        once_key: once.then(|| format!("followed-up:{id}:{key}")),
        tasks: plan_tasks(hours, tasks, &subject, at)?,
        record_type,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// Monday 2026-03-02T14:00:00Z.
    const MONDAY_2PM: i64 = 1_772_460_000_000_000;
    const HOUR: i64 = 3_600_000_000;

    fn lead(data: Value) -> Map<String, Value> {
        data.as_object().unwrap().clone()
    }

    fn default_hours() -> WorkingHours {
        Settings::default().check().unwrap()
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
    fn defaults() {
        let s: Settings = serde_json::from_value(json!({})).unwrap();
        assert_eq!(s, Settings::default());
        assert!(s.check().is_ok());
        assert!(s.follows("hot"));
        assert!(s.follows("HOT"));
        assert!(!s.follows("warm"));
        let s: Settings = serde_json::from_value(json!({
            "temperatures": ["hot", "warm"],
            "day_start_hour": 7.0,
            "utc_offset_hours": -5,
            "tasks": [{"title": "Ring {name}", "due_in_hours": 0.5}],
        }))
        .unwrap();
        assert!(s.follows("warm"));
        assert_eq!(s.tasks[0].priority, "normal");
        assert_eq!(s.check().unwrap().start_hour, 7);
    }

    #[test]
    fn bad_settings() {
        let bad = |patch: Value| {
            let mut base = serde_json::to_value(Settings::default()).unwrap();
            for (k, v) in patch.as_object().unwrap() {
                base[k] = v.clone();
            }
            let s: Settings = serde_json::from_value(base).unwrap();
            s.check().unwrap_err()
        };
        assert!(bad(json!({"temperatures": ["boiling"]})).starts_with("temperatures"));
        assert!(bad(json!({"tasks": []})).starts_with("tasks:"));
        assert!(
            bad(json!({"tasks": [{"title": "x", "due_in_hours": 0}]}))
                .starts_with("tasks[0].due_in_hours")
        );
        assert!(
            bad(json!({"tasks": [{"title": "x", "due_in_hours": 1, "priority": "asap"}]}))
                .starts_with("tasks[0].priority")
        );
        assert!(bad(json!({"day_start_hour": 18, "day_end_hour": 8})).starts_with("day_end_hour"));
        assert!(bad(json!({"utc_offset_hours": -13})).starts_with("utc_offset_hours"));
    }

    #[test]
    fn default_tasks_for_a_hot_lead() {
        let data = lead(json!({"name": "Dana Smith", "phone": "555"}));
        let subject = Subject {
            id: "lead-1".into(),
            record_type: "lead".into(),
            data: &data,
        };
        let tasks = plan_tasks(
            &default_hours(),
            &Settings::default().tasks,
            &subject,
            MONDAY_2PM,
        )
        .unwrap();
        assert_eq!(
            tasks,
            [
                json!({
                    "title": "Call Dana Smith",
                    "due_at": "2026-03-02T15:00:00Z",
                    "priority": "urgent",
                    "related_type": "lead",
                    "related_id": "lead-1",
                    "lead_id": "lead-1",
                }),
                json!({
                    "title": "Send Dana Smith an estimate",
                    "due_at": "2026-03-03T14:00:00Z",
                    "priority": "high",
                    "related_type": "lead",
                    "related_id": "lead-1",
                    "lead_id": "lead-1",
                }),
            ]
        );
    }

    #[test]
    fn due_times_move_into_working_hours() {
        let data = lead(json!({}));
        let subject = Subject {
            id: "l".into(),
            record_type: "lead".into(),
            data: &data,
        };
        let tasks = Settings::default().tasks;
        let due = |at: i64, hours: &WorkingHours| -> Vec<String> {
            plan_tasks(hours, &tasks, &subject, at)
                .unwrap()
                .iter()
                .map(|t| t["due_at"].as_str().unwrap().to_string())
                .collect()
        };
        let h = default_hours();
        // Friday 2026-03-06 17:30Z: the call (18:30) is after hours → Monday 08:00; the
        // estimate (Saturday 17:30) → Monday 08:00 too.
        let friday_evening = MONDAY_2PM + 4 * 24 * HOUR + 3 * HOUR + HOUR / 2;
        assert_eq!(
            due(friday_evening, &h),
            ["2026-03-09T08:00:00Z", "2026-03-09T08:00:00Z"]
        );
        // Monday 03:00Z: the call (04:00) is before hours → 08:00.
        assert_eq!(
            due(MONDAY_2PM - 11 * HOUR, &h),
            ["2026-03-02T08:00:00Z", "2026-03-03T08:00:00Z"]
        );
        // In New York (UTC-5) Monday 14:00Z is 09:00 local: the call at 10:00 local stays.
        let ny = WorkingHours::new(-5.0, WorkWeek::MON_FRI, 8, 18).unwrap();
        assert_eq!(
            due(MONDAY_2PM, &ny),
            ["2026-03-02T15:00:00Z", "2026-03-03T14:00:00Z"]
        );
        // Leap day: Monday 2028-02-28 17:30Z → call 18:30 → Tuesday 29 February 08:00.
        let leap = 1_835_371_800_000_000;
        assert_eq!(
            due(leap, &h),
            ["2028-02-29T08:00:00Z", "2028-02-29T17:30:00Z"]
        );
    }

    #[test]
    fn names() {
        let cases = [
            ("lead", json!({"name": "  Ana  "}), "Ana"),
            (
                "lead",
                json!({"first_name": "Ana", "last_name": "Ruiz"}),
                "Ana Ruiz",
            ),
            ("lead", json!({"last_name": "Ruiz"}), "Ruiz"),
            ("lead", json!({"name": ""}), "the lead"),
            ("lead", json!({"name": 42}), "the lead"),
            ("estimate", json!({"customer_name": "Bo"}), "Bo"),
            ("service_call", json!({}), "the service call"),
            (
                "lead",
                json!({"title": "HVAC upgrade, Fort Lee"}),
                "HVAC upgrade, Fort Lee",
            ),
            ("lead", json!({"name": "Ana", "title": "x"}), "Ana"),
        ];
        for (record_type, data, expected) in cases {
            let data = lead(data);
            let subject = Subject {
                id: "x".into(),
                record_type: record_type.into(),
                data: &data,
            };
            assert_eq!(subject.name(), expected);
        }
        let data = lead(json!({"name": "n".repeat(300)}));
        let subject = Subject {
            id: "x".into(),
            record_type: "lead".into(),
            data: &data,
        };
        assert_eq!(subject.name().chars().count(), MAX_NAME);
    }

    #[test]
    fn titles_stay_within_200_characters() {
        let data = lead(json!({"name": "n".repeat(200)}));
        let subject = Subject {
            id: "x".into(),
            record_type: "lead".into(),
            data: &data,
        };
        let tasks = [TaskSpec {
            title: format!("{} {{name}}", "t".repeat(190)),
            due_in_hours: 1.0,
            priority: "low".into(),
        }];
        let planned = plan_tasks(&default_hours(), &tasks, &subject, MONDAY_2PM).unwrap();
        let title = planned[0]["title"].as_str().unwrap();
        assert_eq!(title.chars().count(), 200);
        assert!(title.ends_with('…'));
    }

    #[test]
    fn scored_events() {
        let s = Settings::default();
        assert_eq!(
            on_scored(&s, &json!({"temperature": "hot", "value": 90}), Some("l-1")),
            Ok(OnScored::FollowUp {
                lead_id: "l-1".into()
            })
        );
        assert_eq!(
            on_scored(&s, &json!({"temperature": "warm"}), Some("l-1")),
            Ok(OnScored::Ignore)
        );
        assert!(
            on_scored(&s, &json!({"value": 90}), Some("l-1"))
                .unwrap_err()
                .starts_with("payload.temperature")
        );
        assert!(
            on_scored(&s, &json!({"temperature": "hot"}), None)
                .unwrap_err()
                .starts_with("record_id")
        );
        // A cold lead without an id is simply not followed up.
        assert_eq!(
            on_scored(&s, &json!({"temperature": "cold"}), None),
            Ok(OnScored::Ignore)
        );
        assert_eq!(scored_key("l-1"), "followed-up:l-1");
    }

    fn action_input(record: Value, params: Value) -> Value {
        json!({
            "event": {"id": "e", "kind": "stage.changed", "record_type": "estimate",
                      "record_id": "est-1", "payload": {}, "at": MONDAY_2PM},
            "record": record,
            "params": params,
        })
    }

    #[test]
    fn action_on_an_estimate() {
        let s = Settings::default();
        let record = json!({"id": "est-1", "type": "estimate", "data": {"customer_name": "Bo"},
                            "updated_at": 0});
        let params = json!({"tasks": [{"title": "Chase {name} about the quote", "due_in_hours": 72,
                                        "priority": "High"}], "key": "quote"});
        let plan = plan_action(&s, &default_hours(), &action_input(record, params)).unwrap();
        assert_eq!(plan.once_key.as_deref(), Some("followed-up:est-1:quote"));
        assert_eq!(plan.record_type, "estimate");
        assert_eq!(
            plan.tasks,
            [json!({
                "title": "Chase Bo about the quote",
                "due_at": "2026-03-05T14:00:00Z",
                "priority": "high",
                "related_type": "estimate",
                "related_id": "est-1",
            })]
        );
    }

    #[test]
    fn action_defaults_and_once() {
        let s = Settings::default();
        let record = json!({"id": "l-2", "type": "lead", "data": {"name": "Cy"}});
        let plan = plan_action(
            &s,
            &default_hours(),
            &action_input(record.clone(), json!({})),
        )
        .unwrap();
        assert_eq!(plan.once_key.as_deref(), Some("followed-up:l-2:action"));
        assert_eq!(plan.tasks.len(), 2);
        assert_eq!(plan.tasks[0]["lead_id"], "l-2");
        let plan = plan_action(
            &s,
            &default_hours(),
            &action_input(record.clone(), json!({"once": false})),
        )
        .unwrap();
        assert_eq!(plan.once_key, None);
        // No params at all, and the time from updated_at when the event has none.
        let input =
            json!({"record": {"id": "l-2", "type": "lead", "data": {}, "updated_at": MONDAY_2PM}});
        let plan = plan_action(&s, &default_hours(), &input).unwrap();
        assert_eq!(plan.tasks[0]["title"], "Call the lead");
        assert_eq!(plan.tasks[0]["due_at"], "2026-03-02T15:00:00Z");
        // Deterministic.
        assert_eq!(
            plan_action(&s, &default_hours(), &input),
            plan_action(&s, &default_hours(), &input)
        );
    }

    #[test]
    fn action_bad_input() {
        let s = Settings::default();
        let record = json!({"id": "l-2", "type": "lead", "data": {}});
        let cases = [
            (action_input(Value::Null, json!({})), "record:"),
            (
                action_input(json!([]), json!({})),
                "record: must be an object",
            ),
            (
                action_input(json!({"type": "lead"}), json!({})),
                "record.id: missing",
            ),
            (
                action_input(json!({"id": "x"}), json!({})),
                "record.type: missing",
            ),
            (
                action_input(json!({"id": "x", "type": "lead", "data": "?"}), json!({})),
                "record.data",
            ),
            (
                action_input(record.clone(), json!("x")),
                "params: must be an object",
            ),
            (
                action_input(record.clone(), json!({"tasks": []})),
                "params.tasks: give 1 to 10",
            ),
            (
                action_input(record.clone(), json!({"tasks": {}})),
                "params.tasks: give a list",
            ),
            (
                action_input(record.clone(), json!({"tasks": ["call"]})),
                "params.tasks[0]:",
            ),
            (
                action_input(record.clone(), json!({"tasks": [{"due_in_hours": 1}]})),
                "params.tasks[0].title",
            ),
            (
                action_input(
                    record.clone(),
                    json!({"tasks": [{"title": "x", "due_in_hours": -2}]}),
                ),
                "params.tasks[0].due_in_hours",
            ),
            (
                action_input(
                    record.clone(),
                    json!({"tasks": [{"title": "x", "due_in_hours": "soon"}]}),
                ),
                "params.tasks[0].due_in_hours",
            ),
            (
                action_input(
                    record.clone(),
                    json!({"tasks": [{"title": "x", "due_in_hours": 1, "priority": 3}]}),
                ),
                "params.tasks[0].priority",
            ),
            (
                action_input(record.clone(), json!({"once": "yes"})),
                "params.once",
            ),
            (
                action_input(record.clone(), json!({"key": ""})),
                "params.key",
            ),
            (
                json!({"record": record.clone(), "event": {"at": "noon"}}),
                "event.at:",
            ),
            (json!({"record": record.clone()}), "event.at: missing"),
            (
                json!({"record": record.clone(), "event": {"at": i64::MAX}}),
                "event.at:",
            ),
            (json!("x"), "the input must be"),
        ];
        for (input, expected) in cases {
            let err = plan_action(&s, &default_hours(), &input).unwrap_err();
            assert!(err.starts_with(expected), "{expected} → {err}");
        }
        let eleven = vec![json!({"title": "x", "due_in_hours": 1}); 11];
        let err = plan_action(
            &s,
            &default_hours(),
            &action_input(record, json!({"tasks": eleven})),
        )
        .unwrap_err();
        assert!(err.starts_with("params.tasks: give 1 to 10"), "{err}");
    }
}
