//! Cycles of built-in `create-record` automations, which would trigger each other forever.

use serde_json::json;
use streamflow_runtime::EventKind;

use super::{Automation, RunKind, Template};

impl Template {
    /// A cycle of built-in `create-record` automations: one creates a record whose creation
    /// (or entry into its first stage) triggers the next, back to the first. (Plugin
    /// actions are opaque here; the dispatcher bounds them at run time.)
    pub fn automation_cycle(&self) -> Option<Vec<String>> {
        let n = self.automations.len();
        let edges: Vec<Vec<usize>> = self
            .automations
            .iter()
            .map(|a| match creates(a) {
                None => Vec::new(),
                Some(t) => (0..n)
                    .filter(|&j| self.triggered_by(&self.automations[j], a, &t))
                    .collect(),
            })
            .collect();
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

    /// Whether `b` runs when `creator` creates a record of type `created`.
    ///
    /// A created record emits `record.created`, and `stage.changed` into the stage it
    /// starts in when its type has a pipeline; conditions on that event are evaluated,
    /// conditions on anything else are assumed to hold.
    fn triggered_by(&self, b: &Automation, creator: &Automation, created: &str) -> bool {
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
    }
}

/// The record type a built-in `create-record` automation creates.
fn creates(a: &Automation) -> Option<String> {
    match a.run.kind() {
        Ok(RunKind::CreateRecord) => a.run.record_type.clone(),
        _ => None,
    }
}

/// Depth-first search with the path kept, to name the cycle.
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::super::fixtures::small;
    use super::*;
    use crate::templates::{Pipeline, RecordTypeSpec, Run, Stage};

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
}
