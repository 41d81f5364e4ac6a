//! Industry templates: the TOML format (`industry-templates/README.md`), the checks
//! `streamflow template lint` and applying run, the catalog of templates this server offers,
//! and merging a newer version into what a tenant already has.

pub mod catalog;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use uuid::Uuid;

pub use crate::error::{Problem, StageRefusal};
use crate::store::cache::ExpiringMap;
use crate::store::{Store, StoreError, StoreResult, TenantScope};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use streamflow_runtime::{EventKind, Manifest};

use crate::records::{compile_schema, valid_type_id};

/// Automation chains longer than this are cut at run time (`automation.loop_stopped`).
pub const MAX_AUTOMATION_DEPTH: i64 = 8;

/// The furthest a built-in action's `due` may lie after its event.
pub const MAX_DUE_DAYS: f64 = 3650.0;
/// Types every tenant has before any template (see `store::tenants`).
pub const BUILT_IN_TYPES: &[&str] = &["lead", "contact", "job"];

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Template {
    pub id: String,
    pub name: String,
    pub version: semver::Version,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub record_types: Vec<RecordTypeSpec>,
    #[serde(default)]
    pub pipelines: Vec<Pipeline>,
    #[serde(default)]
    pub automations: Vec<Automation>,
    #[serde(default)]
    pub plugins: Vec<PluginSpec>,
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
    fn hours(&self) -> f64 {
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
        toml::from_str(text).map_err(|e| e.to_string())
    }

    pub fn record_type(&self, id: &str) -> Option<&RecordTypeSpec> {
        self.record_types.iter().find(|t| t.id == id)
    }

    pub fn pipeline(&self, record_type: &str) -> Option<&Pipeline> {
        self.pipelines.iter().find(|p| p.record_type == record_type)
    }

    /// Every problem with the template; empty when it is sound. `plugins` are the manifests
    /// the checks can see: a plugin named by the template but not among them is a problem.
    pub fn check(&self, plugins: &KnownPlugins) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut problem = |at: String, message: String| problems.push(Problem { at, message });
        if !valid_template_id(&self.id) {
            problem(
                "id".into(),
                format!(
                    "{:?} is not a template id: use lowercase letters, digits and '-'",
                    self.id
                ),
            );
        }
        if self.name.trim().is_empty() {
            problem("name".into(), "must not be empty".into());
        }

        // Record types and their schemas.
        let mut seen = BTreeSet::new();
        for (i, t) in self.record_types.iter().enumerate() {
            let at = format!("record_types[{i}] ({})", t.id);
            if !valid_type_id(&t.id) {
                problem(
                    at.clone(),
                    "the id must be lowercase letters, digits and '_', starting with a letter"
                        .into(),
                );
            }
            if !seen.insert(t.id.as_str()) {
                problem(at.clone(), "this record type is declared twice".into());
            }
            for (name, field) in &t.fields {
                if !field.is_object() {
                    problem(
                        format!("{at}.fields.{name}"),
                        "a field is a JSON Schema table such as { type = \"string\" }".into(),
                    );
                }
                if let Some(pii) = field.get("pii")
                    && !pii.is_boolean()
                {
                    problem(
                        format!("{at}.fields.{name}.pii"),
                        "must be true or false".into(),
                    );
                }
            }
            for name in &t.required {
                if !t.fields.contains_key(name) {
                    problem(
                        format!("{at}.required"),
                        format!("{name:?} is not one of the type's fields"),
                    );
                }
            }
            if let Err(e) = compile_schema(&t.schema()) {
                problem(format!("{at}.fields"), format!("invalid JSON Schema: {e}"));
            }
        }
        let type_known = |id: &str| self.record_type(id).is_some() || BUILT_IN_TYPES.contains(&id);
        let field_known = |type_id: &str, field: &str| match self.record_type(type_id) {
            Some(t) => t.fields.contains_key(field),
            // A built-in type the template does not describe: its fields are free.
            None => BUILT_IN_TYPES.contains(&type_id),
        };

        // Pipelines: known stages, reachable from the first, required fields that exist.
        let mut piped = BTreeSet::new();
        for (i, p) in self.pipelines.iter().enumerate() {
            let at = format!("pipelines[{i}] ({})", p.record_type);
            if !type_known(&p.record_type) {
                problem(
                    at.clone(),
                    format!("record type {:?} is not declared", p.record_type),
                );
            }
            if !piped.insert(p.record_type.as_str()) {
                problem(at.clone(), "a record type has at most one pipeline".into());
            }
            if p.stages.is_empty() {
                problem(at.clone(), "a pipeline needs at least one stage".into());
                continue;
            }
            if let Some(field) = &p.value_field {
                match self
                    .record_type(&p.record_type)
                    .and_then(|t| t.fields.get(field))
                {
                    None if !field_known(&p.record_type, field) => problem(
                        format!("{at}.value_field"),
                        format!("{field:?} is not a field of {}", p.record_type),
                    ),
                    Some(schema) if !allows_number(schema) => problem(
                        format!("{at}.value_field"),
                        format!("{field:?} is not a number field"),
                    ),
                    _ => {}
                }
            }
            let ids: Vec<&str> = p.stages.iter().map(|s| s.id.as_str()).collect();
            for (j, s) in p.stages.iter().enumerate() {
                let at = format!("{at}.stages[{j}] ({})", s.id);
                if let Err(e) = crate::records::check_stage(&s.id, "") {
                    problem(at.clone(), format!("stage id {}", e.message));
                }
                if ids.iter().filter(|id| **id == s.id).count() > 1 {
                    problem(at.clone(), "stage ids must be unique".into());
                }
                for next in &s.next {
                    if !ids.contains(&next.as_str()) {
                        problem(
                            format!("{at}.next"),
                            format!("{next:?} is not a stage of this pipeline"),
                        );
                    }
                }
                for field in &s.required {
                    if !field_known(&p.record_type, field) {
                        problem(
                            format!("{at}.required"),
                            format!("{field:?} is not a field of {}", p.record_type),
                        );
                    }
                }
            }
            let reachable = p.reachable();
            for s in &p.stages {
                if !reachable.contains(s.id.as_str()) && !s.retired {
                    problem(
                        format!("{at}.stages ({})", s.id),
                        format!(
                            "stage {:?} cannot be reached from the first stage {:?}",
                            s.id, p.stages[0].id
                        ),
                    );
                }
            }
        }

        // Plugins.
        let mut listed = BTreeSet::new();
        for (i, spec) in self.plugins.iter().enumerate() {
            let at = format!("plugins[{i}] ({})", spec.id);
            if !listed.insert(spec.id.as_str()) {
                problem(at.clone(), "this plugin is listed twice".into());
            }
            if let Err(e) = semver::VersionReq::parse(&spec.version) {
                problem(
                    format!("{at}.version"),
                    format!("{:?} is not a semver requirement: {e}", spec.version),
                );
            }
            let Some(manifest) = plugins.get(&spec.id) else {
                problem(
                    at,
                    "this plugin is not available here (neither bundled with the server nor approved in the registry)".to_string(),
                );
                continue;
            };
            if let Err(errors) = crate::plugins::check_grants(manifest, &spec.grants) {
                for e in errors {
                    problem(format!("{at}{}", e.path.replace('/', ".")), e.message);
                }
            }
            for secret in manifest.secret_fields() {
                if spec.config.pointer(&secret).is_some() {
                    problem(
                        format!("{at}.config{secret}"),
                        "is a secret: set it on the tenant's installation, never in a template"
                            .into(),
                    );
                }
            }
            if let Err(errors) = crate::plugins::config::prepare(
                &manifest.config_schema(),
                &manifest.secret_fields(),
                spec.config.clone(),
                &Map::new(),
            ) {
                for e in errors {
                    problem(format!("{at}.config{}", &e.path[7..]), e.message);
                }
            }
        }

        // Automations.
        let mut seen = BTreeSet::new();
        for (i, a) in self.automations.iter().enumerate() {
            let at = format!("automations[{i}] ({})", a.id);
            if !valid_template_id(&a.id) {
                problem(
                    at.clone(),
                    "the id must be lowercase letters, digits and '-'".into(),
                );
            }
            if !seen.insert(a.id.as_str()) {
                problem(at.clone(), "automation ids must be unique".into());
            }
            if !(EventKind::parse(&a.on).is_some_and(EventKind::is_record)
                || a.on.starts_with("plugin.") && a.on.split('.').count() >= 3)
            {
                problem(
                    format!("{at}.on"),
                    format!(
                        "{:?} is not an event automations can react to ({} or plugin.<id>.<kind>)",
                        a.on,
                        EventKind::names(&EventKind::RECORD)
                    ),
                );
            }
            if let Some(t) = &a.record_type
                && !type_known(t)
            {
                problem(
                    format!("{at}.record_type"),
                    format!("record type {t:?} is not declared"),
                );
            }
            for (j, c) in a.when.iter().enumerate() {
                if let Err(e) = c.check() {
                    problem(format!("{at}.when[{j}]"), e);
                }
            }
            match a.run.kind() {
                Err(e) => problem(format!("{at}.run"), e),
                Ok(RunKind::Plugin { plugin, action }) => {
                    if !listed.contains(plugin) {
                        problem(
                            format!("{at}.run.plugin"),
                            format!("{plugin:?} is not in this template's [[plugins]]"),
                        );
                    } else if let Some(m) = plugins.get(plugin) {
                        if !m.has_hook(streamflow_runtime::Hook::RunAction) {
                            problem(
                                format!("{at}.run.plugin"),
                                format!("{plugin} has no run-action hook"),
                            );
                        } else if !m.actions.iter().any(|x| x == action) {
                            problem(
                                format!("{at}.run.action"),
                                format!(
                                    "{plugin} has no action {action:?}; it has: {}",
                                    m.actions.join(", ")
                                ),
                            );
                        }
                    }
                }
                Ok(RunKind::CreateRecord) => {
                    let target = a.run.record_type.as_deref().unwrap_or_default();
                    if !type_known(target) {
                        problem(
                            format!("{at}.run.record_type"),
                            format!("record type {target:?} is not declared"),
                        );
                    }
                    if let Some(stage) = &a.run.stage
                        && let Some(p) = self.pipeline(target)
                        && !p.stages.iter().any(|s| &s.id == stage)
                    {
                        problem(
                            format!("{at}.run.stage"),
                            format!("{stage:?} is not a stage of the {target} pipeline"),
                        );
                    }
                    let mut targets: Vec<&String> = a.run.copy.keys().collect();
                    targets.extend(a.run.data.keys());
                    targets.extend(&a.run.link);
                    targets.extend(a.run.due.as_ref().map(|d| &d.field));
                    for field in targets {
                        if !field_known(target, field) {
                            problem(
                                format!("{at}.run"),
                                format!("{field:?} is not a field of {target}"),
                            );
                        }
                    }
                    if let Some(source) = &a.record_type {
                        for field in a.run.copy.values() {
                            if !field_known(source, field) {
                                problem(
                                    format!("{at}.run.copy"),
                                    format!("{field:?} is not a field of {source}"),
                                );
                            }
                        }
                    }
                    if let Some(due) = &a.run.due
                        && (due.in_hours.is_some() == due.in_days.is_some()
                            || !(0.0..=MAX_DUE_DAYS * 24.0).contains(&due.hours()))
                    {
                        problem(
                            format!("{at}.run.due"),
                            format!(
                                "give one of in_hours or in_days, from 0 to {MAX_DUE_DAYS} days"
                            ),
                        );
                    }
                }
            }
        }
        if let Some(cycle) = self.automation_cycle() {
            problem(
                "automations".into(),
                format!(
                    "these automations would trigger each other forever: {}",
                    cycle.join(" → ")
                ),
            );
        }
        problems
    }

    /// A cycle of built-in `create-record` automations: one creates a record whose creation
    /// (or entry into its first stage) triggers the next, back to the first. (Plugin
    /// actions are opaque here; the dispatcher bounds them at run time.)
    pub fn automation_cycle(&self) -> Option<Vec<String>> {
        let creates = |a: &Automation| match a.run.kind() {
            Ok(RunKind::CreateRecord) => a.run.record_type.clone(),
            _ => None,
        };
        // A created record emits `record.created`, and `stage.changed` into the stage it
        // starts in when its type has a pipeline; conditions on that event are evaluated,
        // conditions on anything else are assumed to hold.
        let triggered_by = |b: &Automation, creator: &Automation, created: &str| {
            if b.record_type.as_deref().is_some_and(|t| t != created) {
                return false;
            }
            match EventKind::parse(&b.on) {
                Some(EventKind::RecordCreated) => true,
                Some(EventKind::StageChanged) => {
                    let Some(pipeline) = self.pipeline(created) else {
                        return false;
                    };
                    let stage = creator
                        .run
                        .stage
                        .clone()
                        .unwrap_or_else(|| pipeline.first().id.clone());
                    let event = json!({"event": {"kind": EventKind::StageChanged.as_str(), "record_type": created,
                        "payload": {"from": null, "to": stage}}});
                    b.when
                        .iter()
                        .filter(|c| c.field.starts_with("event."))
                        .all(|c| c.holds(&event))
                }
                _ => false,
            }
        };
        let n = self.automations.len();
        let edges: Vec<Vec<usize>> = self
            .automations
            .iter()
            .map(|a| match creates(a) {
                None => Vec::new(),
                Some(t) => (0..n)
                    .filter(|&j| triggered_by(&self.automations[j], a, &t))
                    .collect(),
            })
            .collect();
        // Depth-first search with the path kept, to name the cycle.
        fn visit(i: usize, edges: &[Vec<usize>], state: &mut [u8], path: &mut Vec<usize>) -> bool {
            state[i] = 1;
            path.push(i);
            for &j in &edges[i] {
                if state[j] == 1 {
                    path.push(j);
                    return true;
                }
                if state[j] == 0 && visit(j, edges, state, path) {
                    return true;
                }
            }
            path.pop();
            state[i] = 2;
            false
        }
        let mut state = vec![0u8; n];
        for i in 0..n {
            let mut path = Vec::new();
            if state[i] == 0 && visit(i, &edges, &mut state, &mut path) {
                let last = *path.last().expect("a cycle has a node");
                let start = path.iter().position(|&k| k == last).unwrap_or(0);
                return Some(
                    path[start..]
                        .iter()
                        .map(|&k| self.automations[k].id.clone())
                        .collect(),
                );
            }
        }
        None
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

    fn check(&self) -> Result<(), String> {
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

impl Pipeline {
    pub fn stage(&self, id: &str) -> Option<&Stage> {
        self.stages.iter().find(|s| s.id == id)
    }

    pub fn first(&self) -> &Stage {
        &self.stages[0]
    }

    fn reachable(&self) -> BTreeSet<&str> {
        let mut seen = BTreeSet::new();
        let mut queue = VecDeque::from([self.stages[0].id.as_str()]);
        while let Some(id) = queue.pop_front() {
            if !seen.insert(id) {
                continue;
            }
            if let Some(stage) = self.stage(id) {
                queue.extend(stage.next.iter().map(String::as_str));
            }
        }
        seen
    }

    /// The allowed transitions, in stage order. A retired stage leads to every current one.
    pub fn transitions(&self) -> Vec<(&str, &str)> {
        let current: Vec<&str> = self
            .stages
            .iter()
            .filter(|s| !s.retired)
            .map(|s| s.id.as_str())
            .collect();
        self.stages
            .iter()
            .flat_map(|s| {
                let targets: Vec<&str> = if s.retired {
                    current.clone()
                } else {
                    s.next.iter().map(String::as_str).collect()
                };
                targets.into_iter().map(move |n| (s.id.as_str(), n))
            })
            .collect()
    }
}

fn allows_number(schema: &Value) -> bool {
    match schema.get("type") {
        Some(Value::String(t)) => t == "number" || t == "integer",
        Some(Value::Array(ts)) => ts.iter().any(|t| t == "number" || t == "integer"),
        _ => true,
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

/// Merges a newer version into what a tenant has: the newer version's record types,
/// pipelines, automations and plugins, keeping every field and stage the tenant's data may
/// still use. Fields the newer version dropped stay in the schema (not required); stages it
/// dropped stay, retired, at the end of their pipeline.
pub fn merge(old: &Template, new: &Template) -> Template {
    let mut merged = new.clone();
    for t in &mut merged.record_types {
        if let Some(previous) = old.record_type(&t.id) {
            for (name, field) in &previous.fields {
                t.fields
                    .entry(name.clone())
                    .or_insert_with(|| field.clone());
            }
        }
    }
    for previous in &old.record_types {
        if merged.record_type(&previous.id).is_none() {
            let mut kept = previous.clone();
            kept.required.clear();
            merged.record_types.push(kept);
        }
    }
    for p in &mut merged.pipelines {
        if let Some(previous) = old.pipeline(&p.record_type) {
            let ids: BTreeSet<String> = p.stages.iter().map(|s| s.id.clone()).collect();
            for s in &previous.stages {
                if !ids.contains(&s.id) {
                    let mut retired = s.clone();
                    retired.retired = true;
                    retired.next.retain(|n| ids.contains(n));
                    p.stages.push(retired);
                }
            }
        }
    }
    for previous in &old.pipelines {
        if merged.pipeline(&previous.record_type).is_none() {
            merged.pipelines.push(previous.clone());
        }
    }
    merged
}

/// Each tenant's applied template (merged spec), cached for a couple of seconds: the
/// pipelines writes are checked against and the automations the dispatcher runs.
#[derive(Default)]
pub struct Workflows {
    specs: ExpiringMap<Uuid, Option<Arc<Template>>>,
}

impl Workflows {
    pub async fn spec(
        &self,
        store: &Store,
        scope: &TenantScope,
    ) -> StoreResult<Option<Arc<Template>>> {
        if let Some(found) = self.specs.get(&scope.tenant_id()) {
            return Ok(found);
        }
        let generation = self.specs.generation();
        let spec = match store.tenant_template(scope).await? {
            None => None,
            // Failing open (no pipelines, no automations) would let writes skip the rules
            // and drop automations silently: an unreadable spec is an error.
            Some(row) => Some(Arc::new(
                serde_json::from_value::<Template>(row.spec.0).map_err(|e| {
                    StoreError::Corrupt(format!(
                        "template spec of tenant {}: {e}",
                        scope.tenant_id()
                    ))
                })?,
            )),
        };
        self.specs
            .insert(scope.tenant_id(), spec.clone(), generation);
        Ok(spec)
    }

    pub fn forget(&self, _scope: &TenantScope) {
        self.specs.clear();
    }
}

impl Pipeline {
    /// Checks a record's move from `from` (None: a new record) into `to`, with `data` as
    /// it will be.
    pub fn check_move(
        &self,
        from: Option<&str>,
        to: &str,
        data: &Value,
    ) -> Result<(), StageRefusal> {
        let Some(target) = self.stage(to) else {
            return Err(StageRefusal::UnknownStage {
                allowed: self
                    .stages
                    .iter()
                    .filter(|s| !s.retired)
                    .map(|s| s.id.clone())
                    .collect(),
            });
        };
        let staying = from == Some(to);
        if staying && target.retired {
            return Ok(());
        }
        if target.retired {
            return Err(StageRefusal::Retired);
        }
        // A new record (or one whose stage the pipeline does not know) may start in any
        // stage whose requirements it meets, and a record in a retired stage may leave for
        // any current one: the version that retired it may have dropped its next stages too.
        if let Some(current) = from.and_then(|f| self.stage(f))
            && !staying
            && !current.retired
            && !current.next.iter().any(|n| n == to)
        {
            return Err(StageRefusal::NotAllowed {
                from: current.id.clone(),
                allowed: current.next.clone(),
            });
        }
        let missing: Vec<String> = target
            .required
            .iter()
            .filter(|f| !has_value(data, f))
            .cloned()
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(StageRefusal::MissingFields(missing))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: &str = r#"
id = "small"
name = "Small"
version = "1.0.0"
[[record_types]]
id = "estimate"
name = "Estimate"
required = ["customer_name"]
[record_types.fields]
customer_name = { type = "string", pii = true }
amount = { type = "number", minimum = 0 }
[[pipelines]]
record_type = "estimate"
value_field = "amount"
stages = [
  { id = "draft", name = "Draft", next = ["sent"] },
  { id = "sent", name = "Sent", next = ["won", "lost"], required = ["amount"] },
  { id = "won", name = "Won" },
  { id = "lost", name = "Lost" },
]
[[automations]]
id = "won-makes-job"
name = "Won makes a job"
on = "stage.changed"
record_type = "estimate"
when = [{ field = "event.payload.to", equals = "won" }]
run = { builtin = "create-record", record_type = "job", link = "estimate_id", copy = { customer = "customer_name" } }
"#;

    fn small() -> Template {
        Template::from_toml(SMALL).unwrap()
    }

    #[test]
    fn a_sound_template_has_no_problems_and_marks_pii() {
        let t = small();
        assert_eq!(t.check(&KnownPlugins::new()), vec![]);
        let schema = t.record_types[0].schema();
        assert_eq!(schema["properties"]["customer_name"]["x-pii"], true);
        assert!(schema["properties"]["customer_name"].get("pii").is_none());
        assert_eq!(schema["required"], json!(["customer_name"]));
    }

    #[test]
    fn unreachable_stages_bad_references_and_schemas_are_reported() {
        let text = SMALL
            .replace(
                "{ id = \"draft\", name = \"Draft\", next = [\"sent\"] }",
                "{ id = \"draft\", name = \"Draft\", next = [\"snet\"] }",
            )
            .replace("minimum = 0", "minimum = \"zero\"")
            .replace(
                "required = [\"amount\"]",
                "required = [\"amount\", \"nope\"]",
            );
        let problems = Template::from_toml(&text)
            .unwrap()
            .check(&KnownPlugins::new());
        let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        let all = text.join("\n");
        assert!(all.contains("\"snet\" is not a stage"), "{all}");
        assert!(all.contains("stage \"sent\" cannot be reached"), "{all}");
        assert!(all.contains("invalid JSON Schema"), "{all}");
        assert!(all.contains("\"nope\" is not a field of estimate"), "{all}");
    }

    #[test]
    fn automation_problems_and_cycles() {
        let mut t = small();
        t.automations.push(Automation {
            id: "job-makes-estimate".into(),
            name: "loop".into(),
            on: "record.created".into(),
            record_type: Some("job".into()),
            when: vec![],
            run: Run {
                builtin: Some("create-record".into()),
                record_type: Some("estimate".into()),
                ..Run::default()
            },
        });
        t.automations.push(Automation {
            id: "estimate-makes-job".into(),
            name: "loop".into(),
            on: "record.created".into(),
            record_type: Some("estimate".into()),
            when: vec![],
            run: Run {
                builtin: Some("create-record".into()),
                record_type: Some("job".into()),
                ..Run::default()
            },
        });
        t.automations.push(Automation {
            id: "ghost".into(),
            name: "ghost plugin".into(),
            on: "record.exploded".into(),
            record_type: None,
            when: vec![Condition {
                field: "record.data.x".into(),
                ..Condition::default()
            }],
            run: Run {
                plugin: Some("nowhere".into()),
                action: Some("go".into()),
                ..Run::default()
            },
        });
        let all = t
            .check(&KnownPlugins::new())
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join("\n");
        assert!(all.contains("would trigger each other forever: job-makes-estimate → estimate-makes-job → job-makes-estimate"), "{all}");
        assert!(all.contains("\"record.exploded\" is not an event"), "{all}");
        assert!(all.contains("give an operator"), "{all}");
        assert!(
            all.contains("\"nowhere\" is not in this template's [[plugins]]"),
            "{all}"
        );
    }

    #[test]
    fn a_cycle_through_stage_changes_is_found() {
        let mut t = small();
        // A won estimate makes a job; a job created into its first stage makes an estimate
        // that starts as won.
        t.record_types.push(RecordTypeSpec {
            id: "job".into(),
            name: "Job".into(),
            required: vec![],
            fields: BTreeMap::new(),
        });
        t.pipelines.push(Pipeline {
            record_type: "job".into(),
            value_field: None,
            stages: vec![Stage {
                id: "scheduled".into(),
                name: "Scheduled".into(),
                next: vec![],
                required: vec![],
                retired: false,
            }],
        });
        t.automations.push(Automation {
            id: "job-makes-won-estimate".into(),
            name: "loop".into(),
            on: "stage.changed".into(),
            record_type: Some("job".into()),
            when: vec![
                toml::from_str("field = \"event.payload.to\"\nequals = \"scheduled\"").unwrap(),
            ],
            run: Run {
                builtin: Some("create-record".into()),
                record_type: Some("estimate".into()),
                stage: Some("won".into()),
                data: serde_json::from_value(json!({"amount": 1})).unwrap(),
                ..Run::default()
            },
        });
        let cycle = t.automation_cycle().expect("a cycle");
        assert!(
            cycle.contains(&"job-makes-won-estimate".to_string()),
            "{cycle:?}"
        );
        // Starting the estimate as a draft breaks it: the condition on `to` no longer holds.
        t.automations[1].run.stage = Some("draft".into());
        assert_eq!(t.automation_cycle(), None);
    }

    #[test]
    fn moves_follow_transitions_and_requirements() {
        let mut p = small().pipelines[0].clone();
        let amount = json!({"amount": 5});
        assert_eq!(
            p.check_move(None, "sent", &json!({})),
            Err(StageRefusal::MissingFields(vec!["amount".into()]))
        );
        assert_eq!(p.check_move(None, "sent", &amount), Ok(()));
        assert!(matches!(
            p.check_move(Some("draft"), "won", &amount),
            Err(StageRefusal::NotAllowed { .. })
        ));
        // Staying in a stage keeps its requirements.
        assert_eq!(
            p.check_move(Some("sent"), "sent", &json!({})),
            Err(StageRefusal::MissingFields(vec!["amount".into()]))
        );
        // A retired stage: nothing enters, records leave for any current stage.
        p.stages[3].retired = true;
        assert_eq!(
            p.check_move(Some("sent"), "lost", &amount),
            Err(StageRefusal::Retired)
        );
        assert_eq!(p.check_move(Some("lost"), "draft", &json!({})), Ok(()));
        assert_eq!(p.check_move(Some("lost"), "lost", &json!({})), Ok(()));
        assert!(p.transitions().contains(&("lost", "draft")));
    }

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
    fn merging_a_newer_version_keeps_fields_and_retires_stages() {
        let old = small();
        let mut new = small();
        new.version = semver::Version::new(1, 1, 0);
        new.record_types[0].fields.remove("amount");
        new.record_types[0]
            .fields
            .insert("valid_until".into(), json!({"type": "string"}));
        new.pipelines[0].stages.retain(|s| s.id != "lost");
        new.pipelines[0].stages[1].next = vec!["won".into()];
        let merged = merge(&old, &new);
        let fields = &merged.record_types[0].fields;
        assert!(fields.contains_key("amount") && fields.contains_key("valid_until"));
        let lost = merged.pipelines[0].stage("lost").unwrap();
        assert!(lost.retired);
        assert_eq!(merged.check(&KnownPlugins::new()), vec![]);
    }
}
