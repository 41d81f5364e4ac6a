//! Merging a newer template version into what a tenant already has.

use std::collections::BTreeSet;

use super::Template;

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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::fixtures::small;
    use super::*;
    use crate::templates::KnownPlugins;

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
