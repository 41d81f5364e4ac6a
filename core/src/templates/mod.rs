//! Industry templates: the TOML format (`industry-templates/README.md`), the checks
//! `streamflow template lint` and applying run, the catalog of templates this server offers,
//! and merging a newer version into what a tenant already has.
//!
//! `format` holds the serde types, `checks` the checks (`cycles` the automation-loop one),
//! `pipeline` the stage-move rules, `merge` the merging, `workflows` each tenant's applied
//! spec, cached, and `catalog` the templates offered; every item is re-exported here.

pub mod catalog;

mod checks;
mod cycles;
mod format;
mod merge;
mod pipeline;
mod workflows;

pub use crate::error::{Problem, StageRefusal};
pub use format::{
    Automation, Condition, Due, KnownPlugins, Pipeline, PluginSpec, RecordTypeSpec, Run, RunKind,
    Stage, Template, has_value, valid_template_id,
};
pub use merge::merge;
pub use workflows::Workflows;

/// Automation chains longer than this are cut at run time (`automation.loop_stopped`).
pub const MAX_AUTOMATION_DEPTH: i64 = 8;

/// The furthest a built-in action's `due` may lie after its event.
pub const MAX_DUE_DAYS: f64 = 3650.0;
/// Types every tenant has before any template (see `store::tenants`).
pub const BUILT_IN_TYPES: &[&str] = &["lead", "contact", "job"];

/// The small template the unit tests share.
#[cfg(test)]
mod fixtures {
    use super::Template;

    pub(super) const SMALL: &str = r#"
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

    pub(super) fn small() -> Template {
        Template::from_toml(SMALL).unwrap()
    }
}
