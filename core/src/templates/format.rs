//! The template format: the serde types of a template file, parsing, small accessors, what
//! an automation runs, conditions and the JSON Schema of a record type.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use streamflow_runtime::Manifest;

use super::MAX_DUE_DAYS;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Template {
    pub id: String,
    pub name: String,
    pub version: semver::Version,
    #[serde(default)]
    pub description: String,
    /// Built-in fragments whose record types and pipelines this template takes
    /// (`industry-templates/fragments/<name>.toml`); resolved when parsed, so a parsed
    /// template holds them and this list is empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include: Vec<String>,
    #[serde(default)]
    pub record_types: Vec<RecordTypeSpec>,
    #[serde(default)]
    pub pipelines: Vec<Pipeline>,
    #[serde(default)]
    pub automations: Vec<Automation>,
    #[serde(default)]
    pub plugins: Vec<PluginSpec>,
}

/// A part several templates share: record types and their pipelines.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Fragment {
    #[serde(default)]
    record_types: Vec<RecordTypeSpec>,
    #[serde(default)]
    pipelines: Vec<Pipeline>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordTypeSpec {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub required: Vec<String>,
    /// Field name → JSON Schema (plus `pii`).
    #[serde(default)]
    pub fields: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Pipeline {
    pub record_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_field: Option<String>,
    pub stages: Vec<Stage>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Stage {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub next: Vec<String>,
    #[serde(default)]
    pub required: Vec<String>,
    /// Set when a newer template version no longer has the stage: records in it stay and
    /// can move on, nothing moves into it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retired: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Automation {
    pub id: String,
    pub name: String,
    pub on: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record_type: Option<String>,
    #[serde(default)]
    pub when: Vec<Condition>,
    pub run: Run,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    pub field: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub equals: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_equals: Option<Value>,
    #[serde(default, rename = "in", skip_serializing_if = "Option::is_none")]
    pub is_in: Option<Vec<Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_in: Option<Vec<Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exists: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gt: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gte: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lt: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lte: Option<f64>,
}

/// What an automation runs: a plugin action, or the built-in `create-record`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Run {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub params: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub builtin: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub data: Map<String, Value>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub copy: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due: Option<Due>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Due {
    pub field: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_hours: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_days: Option<f64>,
}

impl Due {
    /// Hours after the event.
    pub(super) fn hours(&self) -> f64 {
        self.in_hours.unwrap_or(0.0) + self.in_days.unwrap_or(0.0) * 24.0
    }

    /// Microseconds after the event (at most [`MAX_DUE_DAYS`]).
    pub fn offset_micros(&self) -> i64 {
        (self.hours().clamp(0.0, MAX_DUE_DAYS * 24.0) * 3_600_000_000.0) as i64
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginSpec {
    pub id: String,
    /// A semver requirement such as `^0.1`.
    pub version: String,
    #[serde(default)]
    pub grants: Vec<String>,
    #[serde(default = "empty_object")]
    pub config: Value,
}

fn empty_object() -> Value {
    Value::Object(Map::new())
}

/// What the checks know about plugins: their manifests by id (the bundled ones for `lint`,
/// the registry's approved versions when applying).
pub type KnownPlugins = HashMap<String, Manifest>;

impl Template {
    /// Parses a template file; the error names the line and the key.
    pub fn from_toml(text: &str) -> Result<Template, String> {
        let mut template: Template = toml::from_str(text).map_err(|e| e.to_string())?;
        template.take_fragments(crate::bundled::FRAGMENTS)?;
        Ok(template)
    }

    /// Adds the record types and pipelines of the fragments `include` names. A record type
    /// (or pipeline) both define is refused: a template changes a shared type by not
    /// including it.
    fn take_fragments(&mut self, fragments: &[(&str, &str)]) -> Result<(), String> {
        for name in std::mem::take(&mut self.include) {
            let text = fragments
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, text)| *text)
                .ok_or_else(|| {
                    let known: Vec<&str> = fragments.iter().map(|(n, _)| *n).collect();
                    format!(
                        "include: no fragment {name:?}; the fragments are {}",
                        known.join(", ")
                    )
                })?;
            let fragment: Fragment =
                toml::from_str(text).map_err(|e| format!("fragment {name}: {e}"))?;
            for t in fragment.record_types {
                if self.record_type(&t.id).is_some() {
                    return Err(format!(
                        "record type {} is defined by the template and by its fragment {name}; drop one",
                        t.id
                    ));
                }
                self.record_types.push(t);
            }
            for p in fragment.pipelines {
                if self.pipeline(&p.record_type).is_some() {
                    return Err(format!(
                        "the pipeline of {} is defined by the template and by its fragment {name}; drop one",
                        p.record_type
                    ));
                }
                self.pipelines.push(p);
            }
        }
        Ok(())
    }

    pub fn record_type(&self, id: &str) -> Option<&RecordTypeSpec> {
        self.record_types.iter().find(|t| t.id == id)
    }

    pub fn pipeline(&self, record_type: &str) -> Option<&Pipeline> {
        self.pipelines.iter().find(|p| p.record_type == record_type)
    }
}

pub enum RunKind<'a> {
    Plugin { plugin: &'a str, action: &'a str },
    CreateRecord,
}

impl Run {
    pub fn kind(&self) -> Result<RunKind<'_>, String> {
        match (&self.plugin, &self.action, &self.builtin) {
            (Some(plugin), Some(action), None) => Ok(RunKind::Plugin { plugin, action }),
            (None, None, Some(b)) if b == "create-record" => {
                if self.record_type.is_none() {
                    Err("create-record needs record_type".into())
                } else {
                    Ok(RunKind::CreateRecord)
                }
            }
            (None, None, Some(b)) => Err(format!(
                "{b:?} is not a built-in action; the built-in action is create-record"
            )),
            _ => Err(
                "run either a plugin action ({ plugin, action, params }) or a built-in ({ builtin = \"create-record\", ... })"
                    .into(),
            ),
        }
    }
}

impl Condition {
    fn operators(&self) -> usize {
        [
            self.equals.is_some(),
            self.not_equals.is_some(),
            self.is_in.is_some(),
            self.not_in.is_some(),
            self.exists.is_some(),
            self.gt.is_some(),
            self.gte.is_some(),
            self.lt.is_some(),
            self.lte.is_some(),
        ]
        .into_iter()
        .filter(|b| *b)
        .count()
    }

    pub(super) fn check(&self) -> Result<(), String> {
        let root = self.field.split('.').next().unwrap_or_default();
        if !matches!(root, "event" | "record") || self.field.split('.').any(str::is_empty) {
            return Err(format!(
                "field {:?} must be a dotted path starting with event. or record.",
                self.field
            ));
        }
        match self.operators() {
            1 => Ok(()),
            0 => Err(
                "give an operator: equals, not_equals, in, not_in, exists, gt, gte, lt or lte"
                    .into(),
            ),
            _ => Err("give exactly one operator".into()),
        }
    }

    /// Whether the condition holds in `context` (`{event, record}`).
    pub fn holds(&self, context: &Value) -> bool {
        let mut value = Some(context);
        for part in self.field.split('.') {
            value = value.and_then(|v| v.get(part));
        }
        let value = value.filter(|v| !v.is_null());
        let number = value.and_then(Value::as_f64);
        let compare = |limit: Option<f64>, ok: fn(f64, f64) -> bool| {
            limit.map(|l| number.is_some_and(|n| ok(n, l)))
        };
        if let Some(expected) = &self.equals {
            return value == Some(expected);
        }
        if let Some(expected) = &self.not_equals {
            return value != Some(expected);
        }
        if let Some(options) = &self.is_in {
            return value.is_some_and(|v| options.contains(v));
        }
        if let Some(options) = &self.not_in {
            return !value.is_some_and(|v| options.contains(v));
        }
        if let Some(exists) = self.exists {
            return value.is_some() == exists;
        }
        compare(self.gt, |n, l| n > l)
            .or(compare(self.gte, |n, l| n >= l))
            .or(compare(self.lt, |n, l| n < l))
            .or(compare(self.lte, |n, l| n <= l))
            .unwrap_or(false)
    }
}

impl RecordTypeSpec {
    /// The JSON Schema the type's records are validated against.
    pub fn schema(&self) -> Value {
        let properties: Map<String, Value> = self
            .fields
            .iter()
            .map(|(name, field)| {
                let mut field = field.clone();
                if let Some(map) = field.as_object_mut()
                    && let Some(pii) = map.remove("pii")
                    && pii == Value::Bool(true)
                {
                    map.insert("x-pii".into(), Value::Bool(true));
                }
                (name.clone(), field)
            })
            .collect();
        let mut schema = json!({ "type": "object", "properties": properties });
        if !self.required.is_empty() {
            schema["required"] = json!(self.required);
        }
        schema
    }
}

pub fn valid_template_id(id: &str) -> bool {
    let mut chars = id.chars();
    matches!(chars.next(), Some('a'..='z'))
        && id.len() <= 64
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '-'))
}

/// A field "has a value" for a stage's `required` list: present, not null, not an empty
/// string or list.
pub fn has_value(data: &Value, field: &str) -> bool {
    match data.get(field) {
        None | Some(Value::Null) => false,
        Some(Value::String(s)) => !s.trim().is_empty(),
        Some(Value::Array(a)) => !a.is_empty(),
        Some(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions() {
        let ctx = json!({"event": {"payload": {"to": "won", "value": 72}}, "record": {"data": {"urgency": "emergency", "none": null}}});
        let c = |toml_text: &str| -> Condition { toml::from_str(toml_text).unwrap() };
        assert!(c("field = \"event.payload.to\"\nequals = \"won\"").holds(&ctx));
        assert!(!c("field = \"event.payload.to\"\nequals = \"lost\"").holds(&ctx));
        assert!(c("field = \"record.data.urgency\"\nin = [\"emergency\", \"urgent\"]").holds(&ctx));
        assert!(c("field = \"record.data.none\"\nexists = false").holds(&ctx));
        assert!(c("field = \"record.data.missing\"\nnot_in = [1]").holds(&ctx));
        assert!(c("field = \"event.payload.value\"\ngte = 72").holds(&ctx));
        assert!(!c("field = \"event.payload.value\"\ngt = 72").holds(&ctx));
        assert!(!c("field = \"event.payload.to\"\nlt = 5").holds(&ctx));
    }

    #[test]
    fn fragments_add_their_types_once() {
        const CREW: &str = r#"
[[record_types]]
id = "employee"
name = "Employee"
[[pipelines]]
record_type = "employee"
stages = [{ id = "active", name = "Active" }]
"#;
        let parse = |text: &str| -> Template { toml::from_str(text).unwrap() };
        let fragments = [("crew", CREW)];
        let mut t = parse("id = \"t\"\nname = \"T\"\nversion = \"1.0.0\"\ninclude = [\"crew\"]");
        t.take_fragments(&fragments).unwrap();
        assert!(t.include.is_empty());
        assert_eq!(t.record_type("employee").unwrap().name, "Employee");
        assert_eq!(t.pipeline("employee").unwrap().stages[0].id, "active");

        let mut unknown =
            parse("id = \"t\"\nname = \"T\"\nversion = \"1.0.0\"\ninclude = [\"crews\"]");
        let e = unknown.take_fragments(&fragments).unwrap_err();
        assert_eq!(e, "include: no fragment \"crews\"; the fragments are crew");

        let mut twice = parse(
            "id = \"t\"\nname = \"T\"\nversion = \"1.0.0\"\ninclude = [\"crew\"]\n[[record_types]]\nid = \"employee\"\nname = \"Mine\"",
        );
        let e = twice.take_fragments(&fragments).unwrap_err();
        assert!(
            e.contains("record type employee is defined by the template and by its fragment crew"),
            "{e}"
        );
    }

    #[test]
    fn the_field_crew_templates_have_employees_and_time_entries() {
        for (file, text) in crate::bundled::TEMPLATES {
            let t = Template::from_toml(text).unwrap();
            let crews = t.record_type("employee").is_some();
            assert_eq!(crews, t.id != "gov-contracting", "{file}");
            if crews {
                assert!(
                    t.pipeline("time_entry")
                        .unwrap()
                        .stage("approved")
                        .is_some()
                );
            }
        }
    }
}
