//! The checks `streamflow template lint` and applying run: one function per part of the
//! template, each adding its problems in the order they are reported.

use std::collections::BTreeSet;

use serde_json::{Map, Value};
use streamflow_runtime::EventKind;

use super::{
    Automation, BUILT_IN_TYPES, KnownPlugins, MAX_DUE_DAYS, Problem, RunKind, Template,
    valid_template_id,
};
use crate::records::{compile_schema, valid_type_id};

/// The problems found so far, in order.
#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn add(&mut self, at: String, message: String) {
        self.0.push(Problem { at, message });
    }
}

impl Template {
    /// Every problem with the template; empty when it is sound. `plugins` are the manifests
    /// the checks can see: a plugin named by the template but not among them is a problem.
    pub fn check(&self, plugins: &KnownPlugins) -> Vec<Problem> {
        let mut problems = Problems::default();
        self.check_header(&mut problems);
        self.check_record_types(&mut problems);
        self.check_pipelines(&mut problems);
        let listed = self.check_plugins(plugins, &mut problems);
        self.check_automations(plugins, &listed, &mut problems);
        if let Some(cycle) = self.automation_cycle() {
            problems.add(
                "automations".into(),
                format!(
                    "these automations would trigger each other forever: {}",
                    cycle.join(" → ")
                ),
            );
        }
        problems.0
    }

    fn type_known(&self, id: &str) -> bool {
        self.record_type(id).is_some() || BUILT_IN_TYPES.contains(&id)
    }

    fn field_known(&self, type_id: &str, field: &str) -> bool {
        match self.record_type(type_id) {
            Some(t) => t.fields.contains_key(field),
            // A built-in type the template does not describe: its fields are free.
            None => BUILT_IN_TYPES.contains(&type_id),
        }
    }

    /// The template's id and name.
    fn check_header(&self, problems: &mut Problems) {
        if !valid_template_id(&self.id) {
            problems.add(
                "id".into(),
                format!(
                    "{:?} is not a template id: use lowercase letters, digits and '-'",
                    self.id
                ),
            );
        }
        if self.name.trim().is_empty() {
            problems.add("name".into(), "must not be empty".into());
        }
    }

    /// Record types and their schemas.
    fn check_record_types(&self, problems: &mut Problems) {
        let mut seen = BTreeSet::new();
        for (i, t) in self.record_types.iter().enumerate() {
            let at = format!("record_types[{i}] ({})", t.id);
            if !valid_type_id(&t.id) {
                problems.add(
                    at.clone(),
                    "the id must be lowercase letters, digits and '_', starting with a letter"
                        .into(),
                );
            }
            if !seen.insert(t.id.as_str()) {
                problems.add(at.clone(), "this record type is declared twice".into());
            }
            for (name, field) in &t.fields {
                if !field.is_object() {
                    problems.add(
                        format!("{at}.fields.{name}"),
                        "a field is a JSON Schema table such as { type = \"string\" }".into(),
                    );
                }
                if let Some(pii) = field.get("pii")
                    && !pii.is_boolean()
                {
                    problems.add(
                        format!("{at}.fields.{name}.pii"),
                        "must be true or false".into(),
                    );
                }
            }
            for name in &t.required {
                if !t.fields.contains_key(name) {
                    problems.add(
                        format!("{at}.required"),
                        format!("{name:?} is not one of the type's fields"),
                    );
                }
            }
            if let Err(e) = compile_schema(&t.schema()) {
                problems.add(format!("{at}.fields"), format!("invalid JSON Schema: {e}"));
            }
        }
    }

    /// Pipelines: known stages, reachable from the first, required fields that exist.
    fn check_pipelines(&self, problems: &mut Problems) {
        let mut piped = BTreeSet::new();
        for (i, p) in self.pipelines.iter().enumerate() {
            let at = format!("pipelines[{i}] ({})", p.record_type);
            if !self.type_known(&p.record_type) {
                problems.add(
                    at.clone(),
                    format!("record type {:?} is not declared", p.record_type),
                );
            }
            if !piped.insert(p.record_type.as_str()) {
                problems.add(at.clone(), "a record type has at most one pipeline".into());
            }
            if p.stages.is_empty() {
                problems.add(at.clone(), "a pipeline needs at least one stage".into());
                continue;
            }
            if let Some(field) = &p.value_field {
                match self
                    .record_type(&p.record_type)
                    .and_then(|t| t.fields.get(field))
                {
                    None if !self.field_known(&p.record_type, field) => problems.add(
                        format!("{at}.value_field"),
                        format!("{field:?} is not a field of {}", p.record_type),
                    ),
                    Some(schema) if !allows_number(schema) => problems.add(
                        format!("{at}.value_field"),
                        format!("{field:?} is not a number field"),
                    ),
                    _ => {}
                }
            }
            self.check_stages(p, &at, problems);
        }
    }

    /// The stages of pipeline `p` (at `at`), which has at least one.
    fn check_stages(&self, p: &super::Pipeline, at: &str, problems: &mut Problems) {
        let ids: Vec<&str> = p.stages.iter().map(|s| s.id.as_str()).collect();
        for (j, s) in p.stages.iter().enumerate() {
            let at = format!("{at}.stages[{j}] ({})", s.id);
            if let Err(e) = crate::records::check_stage(&s.id, "") {
                problems.add(at.clone(), format!("stage id {}", e.message));
            }
            if ids.iter().filter(|id| **id == s.id).count() > 1 {
                problems.add(at.clone(), "stage ids must be unique".into());
            }
            for next in &s.next {
                if !ids.contains(&next.as_str()) {
                    problems.add(
                        format!("{at}.next"),
                        format!("{next:?} is not a stage of this pipeline"),
                    );
                }
            }
            for field in &s.required {
                if !self.field_known(&p.record_type, field) {
                    problems.add(
                        format!("{at}.required"),
                        format!("{field:?} is not a field of {}", p.record_type),
                    );
                }
            }
        }
        let reachable = p.reachable();
        for s in &p.stages {
            if !reachable.contains(s.id.as_str()) && !s.retired {
                problems.add(
                    format!("{at}.stages ({})", s.id),
                    format!(
                        "stage {:?} cannot be reached from the first stage {:?}",
                        s.id, p.stages[0].id
                    ),
                );
            }
        }
    }

    /// Plugins; returns the ids the template lists.
    fn check_plugins(&self, plugins: &KnownPlugins, problems: &mut Problems) -> BTreeSet<&str> {
        let mut listed = BTreeSet::new();
        for (i, spec) in self.plugins.iter().enumerate() {
            let at = format!("plugins[{i}] ({})", spec.id);
            if !listed.insert(spec.id.as_str()) {
                problems.add(at.clone(), "this plugin is listed twice".into());
            }
            if let Err(e) = semver::VersionReq::parse(&spec.version) {
                problems.add(
                    format!("{at}.version"),
                    format!("{:?} is not a semver requirement: {e}", spec.version),
                );
            }
            let Some(manifest) = plugins.get(&spec.id) else {
                problems.add(
                    at,
                    "this plugin is not available here (neither bundled with the server nor approved in the registry)".to_string(),
                );
                continue;
            };
            if let Err(errors) = crate::plugins::check_grants(manifest, &spec.grants) {
                for e in errors {
                    problems.add(format!("{at}{}", e.path.replace('/', ".")), e.message);
                }
            }
            for secret in manifest.secret_fields() {
                if spec.config.pointer(&secret).is_some() {
                    problems.add(
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
                    problems.add(format!("{at}.config{}", &e.path[7..]), e.message);
                }
            }
        }
        listed
    }

    /// Automations: ids, events, conditions and what they run. `listed` are the plugins the
    /// template lists.
    fn check_automations(
        &self,
        plugins: &KnownPlugins,
        listed: &BTreeSet<&str>,
        problems: &mut Problems,
    ) {
        let mut seen = BTreeSet::new();
        for (i, a) in self.automations.iter().enumerate() {
            let at = format!("automations[{i}] ({})", a.id);
            if !valid_template_id(&a.id) {
                problems.add(
                    at.clone(),
                    "the id must be lowercase letters, digits and '-'".into(),
                );
            }
            if !seen.insert(a.id.as_str()) {
                problems.add(at.clone(), "automation ids must be unique".into());
            }
            if !(EventKind::parse(&a.on).is_some_and(EventKind::is_record)
                || a.on.starts_with("plugin.") && a.on.split('.').count() >= 3)
            {
                problems.add(
                    format!("{at}.on"),
                    format!(
                        "{:?} is not an event automations can react to ({} or plugin.<id>.<kind>)",
                        a.on,
                        EventKind::names(&EventKind::RECORD)
                    ),
                );
            }
            if let Some(t) = &a.record_type
                && !self.type_known(t)
            {
                problems.add(
                    format!("{at}.record_type"),
                    format!("record type {t:?} is not declared"),
                );
            }
            for (j, c) in a.when.iter().enumerate() {
                if let Err(e) = c.check() {
                    problems.add(format!("{at}.when[{j}]"), e);
                }
            }
            match a.run.kind() {
                Err(e) => problems.add(format!("{at}.run"), e),
                Ok(RunKind::Plugin { plugin, action }) => {
                    check_plugin_run(plugin, action, plugins, listed, &at, problems)
                }
                Ok(RunKind::CreateRecord) => self.check_create_record(a, &at, problems),
            }
        }
    }

    /// A built-in `create-record` run of automation `a` (at `at`).
    fn check_create_record(&self, a: &Automation, at: &str, problems: &mut Problems) {
        let target = a.run.record_type.as_deref().unwrap_or_default();
        if !self.type_known(target) {
            problems.add(
                format!("{at}.run.record_type"),
                format!("record type {target:?} is not declared"),
            );
        }
        if let Some(stage) = &a.run.stage
            && let Some(p) = self.pipeline(target)
            && !p.stages.iter().any(|s| &s.id == stage)
        {
            problems.add(
                format!("{at}.run.stage"),
                format!("{stage:?} is not a stage of the {target} pipeline"),
            );
        }
        let mut targets: Vec<&String> = a.run.copy.keys().collect();
        targets.extend(a.run.data.keys());
        targets.extend(&a.run.link);
        targets.extend(a.run.due.as_ref().map(|d| &d.field));
        for field in targets {
            if !self.field_known(target, field) {
                problems.add(
                    format!("{at}.run"),
                    format!("{field:?} is not a field of {target}"),
                );
            }
        }
        if let Some(source) = &a.record_type {
            for field in a.run.copy.values() {
                if !self.field_known(source, field) {
                    problems.add(
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
            problems.add(
                format!("{at}.run.due"),
                format!("give one of in_hours or in_days, from 0 to {MAX_DUE_DAYS} days"),
            );
        }
    }
}

/// A plugin action run (at `at`): the plugin must be listed and, when its manifest is
/// known, have the run-action hook and the action.
fn check_plugin_run(
    plugin: &str,
    action: &str,
    plugins: &KnownPlugins,
    listed: &BTreeSet<&str>,
    at: &str,
    problems: &mut Problems,
) {
    if !listed.contains(plugin) {
        problems.add(
            format!("{at}.run.plugin"),
            format!("{plugin:?} is not in this template's [[plugins]]"),
        );
    } else if let Some(m) = plugins.get(plugin) {
        if !m.has_hook(streamflow_runtime::Hook::RunAction) {
            problems.add(
                format!("{at}.run.plugin"),
                format!("{plugin} has no run-action hook"),
            );
        } else if !m.actions.iter().any(|x| x == action) {
            problems.add(
                format!("{at}.run.action"),
                format!(
                    "{plugin} has no action {action:?}; it has: {}",
                    m.actions.join(", ")
                ),
            );
        }
    }
}

fn allows_number(schema: &Value) -> bool {
    match schema.get("type") {
        Some(Value::String(t)) => t == "number" || t == "integer",
        Some(Value::Array(ts)) => ts.iter().any(|t| t == "number" || t == "integer"),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::fixtures::{SMALL, small};
    use super::*;
    use crate::templates::{Automation, Condition, Run};

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
}
