//! The plugin manifest (`plugin.toml`): who the plugin is, which hooks it implements, what
//! it asks the host for, its limits and the JSON Schema of its per-tenant configuration.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Whether the kernel writes events of `kind` (any plugin may subscribe to them).
pub fn is_kernel_event(kind: &str) -> bool {
    crate::EventKind::parse(kind).is_some()
}

/// Longest plugin id.
pub const MAX_ID_LEN: usize = 64;

/// The hooks a plugin may export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Hook {
    ScoreLead,
    OnEvent,
    RunAction,
    HandleWebhook,
    /// Since contract 0.2.0.
    OnSchedule,
}

impl Hook {
    pub const ALL: [Hook; 5] = [
        Hook::ScoreLead,
        Hook::OnEvent,
        Hook::RunAction,
        Hook::HandleWebhook,
        Hook::OnSchedule,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Hook::ScoreLead => "score-lead",
            Hook::OnEvent => "on-event",
            Hook::RunAction => "run-action",
            Hook::HandleWebhook => "handle-webhook",
            Hook::OnSchedule => "on-schedule",
        }
    }

    /// The exported interface that carries this hook.
    pub fn interface(self) -> &'static str {
        match self {
            Hook::ScoreLead => "scoring",
            Hook::OnEvent => "event-handler",
            Hook::RunAction => "actions",
            Hook::HandleWebhook => "webhooks",
            Hook::OnSchedule => "schedules",
        }
    }

    /// The oldest contract version that has this hook.
    pub fn since(self) -> semver::Version {
        match self {
            Hook::OnSchedule => semver::Version::new(0, 2, 0),
            _ => semver::Version::new(0, 1, 0),
        }
    }
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Host capabilities a plugin can request. `log`, `config` and `limits` need no grant and
/// are not listed. `http` (with `connections`) and `secrets` came with contract 0.2.0;
/// `ai` belongs to a later version, but the grant check is the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Capability {
    #[serde(rename = "kv")]
    Kv,
    #[serde(rename = "records:read")]
    RecordsRead,
    #[serde(rename = "records:write")]
    RecordsWrite,
    /// With `records:read`: records and events include the fields the record type's schema
    /// marks `"x-pii": true` (personal data). Without it they are left out.
    #[serde(rename = "records:read-pii")]
    RecordsReadPii,
    #[serde(rename = "events")]
    Events,
    #[serde(rename = "secrets")]
    Secrets,
    #[serde(rename = "ai")]
    Ai,
    #[serde(rename = "http")]
    Http,
}

impl Capability {
    pub fn as_str(self) -> &'static str {
        match self {
            Capability::Kv => "kv",
            Capability::RecordsRead => "records:read",
            Capability::RecordsWrite => "records:write",
            Capability::RecordsReadPii => "records:read-pii",
            Capability::Events => "events",
            Capability::Secrets => "secrets",
            Capability::Ai => "ai",
            Capability::Http => "http",
        }
    }

    /// Whether contract version `api` has this capability's host interface.
    pub fn available_in(self, api: &semver::Version) -> bool {
        match self {
            Capability::Kv
            | Capability::RecordsRead
            | Capability::RecordsWrite
            | Capability::RecordsReadPii
            | Capability::Events => true,
            Capability::Http | Capability::Secrets => *api >= semver::Version::new(0, 2, 0),
            Capability::Ai => false,
        }
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The set of capabilities the provider granted one installation. Deny by default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Grants(BTreeSet<Capability>);

impl Grants {
    pub fn new(caps: impl IntoIterator<Item = Capability>) -> Self {
        Grants(caps.into_iter().collect())
    }

    pub fn allows(&self, cap: Capability) -> bool {
        self.0.contains(&cap)
    }

    pub fn iter(&self) -> impl Iterator<Item = Capability> + '_ {
        self.0.iter().copied()
    }
}

/// Per-call limits a plugin asks for; the host caps them with the provider's maximums.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Limits {
    /// Wall-clock deadline of one call.
    #[serde(default = "Limits::default_timeout")]
    pub timeout_ms: u32,
    /// Linear memory of one instance.
    #[serde(default = "Limits::default_memory")]
    pub memory_mb: u32,
    /// Size of one call's result (reasons, action output, webhook response).
    #[serde(default = "Limits::default_output")]
    pub output_kb: u32,
}

impl Limits {
    fn default_timeout() -> u32 {
        100
    }
    fn default_memory() -> u32 {
        16
    }
    fn default_output() -> u32 {
        64
    }

    /// These limits, each capped by the same limit in `max`.
    pub fn capped_by(self, max: Limits) -> Limits {
        Limits {
            timeout_ms: self.timeout_ms.min(max.timeout_ms),
            memory_mb: self.memory_mb.min(max.memory_mb),
            output_kb: self.output_kb.min(max.output_kb),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout_ms: Self::default_timeout(),
            memory_mb: Self::default_memory(),
            output_kb: Self::default_output(),
        }
    }
}

/// The per-tenant configuration a plugin accepts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ConfigSpec {
    /// JSON Schema of the configuration object. Fields marked `"writeOnly": true` are
    /// secrets: stored encrypted, never returned, not passed to `config.get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<serde_json::Value>,
    /// Path of a JSON file holding the schema, relative to `plugin.toml`. `plugin build`
    /// inlines it into the package.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_file: Option<String>,
}

/// A plugin manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Manifest {
    pub id: String,
    pub name: String,
    pub version: semver::Version,
    /// The `streamflow:plugin` API version the component targets.
    pub api: semver::Version,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub hooks: Vec<Hook>,
    #[serde(default)]
    pub capabilities: Vec<Capability>,
    /// Event kinds delivered to `on-event`.
    #[serde(default)]
    pub subscriptions: Vec<String>,
    /// Per subscribed kind, conditions on the event's payload the host checks before it
    /// wakes the plugin: `[filters."lead.scored"] temperature = ["hot"]`, or the allowed
    /// values read from the installation's config: `temperature = { in-config =
    /// "/temperatures" }`. An event that does not pass is not delivered at all.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub filters:
        std::collections::BTreeMap<String, std::collections::BTreeMap<String, FilterValues>>,
    /// Names of the actions `run-action` accepts.
    #[serde(default)]
    pub actions: Vec<String>,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<ConfigSpec>,
    /// Hosts outbound requests may go to (0.2.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<crate::integration::HttpSpec>,
    /// Connections the kernel holds for each tenant (0.2.0).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub connections: std::collections::BTreeMap<String, crate::integration::ConnectionSpec>,
    /// How inbound webhooks are verified and routed (0.2.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhooks: Option<crate::integration::WebhookSpec>,
    /// Periodic `on-schedule` calls (0.2.0).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub schedules: std::collections::BTreeMap<String, crate::integration::ScheduleSpec>,
    /// What one call may do.
    #[serde(default, skip_serializing_if = "is_default_quotas")]
    pub quotas: crate::integration::Quotas,
}

fn is_default_quotas(q: &crate::integration::Quotas) -> bool {
    *q == crate::integration::Quotas::default()
}

/// The values a payload field must have for an event to be delivered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum FilterValues {
    /// Any of these.
    Values(Vec<serde_json::Value>),
    /// Any of the values of the JSON array at this pointer of the installation's config.
    InConfig {
        #[serde(rename = "in-config")]
        in_config: String,
    },
}

/// Longest list of filter values, and most filtered fields per kind.
const MAX_FILTER_VALUES: usize = 64;

/// Everything wrong with a manifest, each as a sentence naming the field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}", .0.join("; "))]
pub struct ManifestErrors(pub Vec<String>);

impl Manifest {
    /// Parse `plugin.toml` text. Field errors name the key.
    pub fn from_toml(text: &str) -> Result<Manifest, ManifestErrors> {
        let manifest: Manifest = toml::from_str(text)
            .map_err(|e| ManifestErrors(vec![format!("plugin.toml: {}", e.message())]))?;
        Ok(manifest)
    }

    /// Parse the manifest as stored inside a package (JSON).
    pub fn from_json(bytes: &[u8]) -> Result<Manifest, ManifestErrors> {
        serde_json::from_slice(bytes).map_err(|e| ManifestErrors(vec![format!("manifest: {e}")]))
    }

    /// The configuration schema (inlined), or an empty object schema that accepts `{}`.
    pub fn config_schema(&self) -> serde_json::Value {
        self.config
            .as_ref()
            .and_then(|c| c.schema.clone())
            .unwrap_or_else(|| serde_json::json!({"type": "object", "additionalProperties": false}))
    }

    pub fn has_hook(&self, hook: Hook) -> bool {
        self.hooks.contains(&hook)
    }

    pub fn requests(&self, cap: Capability) -> bool {
        self.capabilities.contains(&cap)
    }

    /// Check the manifest on its own (the component is checked against it separately).
    /// A packaged manifest must have its schema inlined.
    pub fn validate(&self) -> Result<(), ManifestErrors> {
        let mut errors = Vec::new();
        if !valid_id(&self.id) {
            errors.push(format!(
                "id {:?}: use 2 to {MAX_ID_LEN} lowercase letters, digits, '-' or '.', starting with a letter",
                truncate(&self.id)
            ));
        }
        if self.name.trim().is_empty() || self.name.chars().count() > 100 {
            errors.push("name: give a name of 1 to 100 characters".to_string());
        }
        if self
            .description
            .as_ref()
            .is_some_and(|d| d.chars().count() > 2000)
        {
            errors.push("description: at most 2000 characters".to_string());
        }
        if crate::contract::ContractVersion::parse(&self.api.to_string()).is_none() {
            errors.push(format!(
                "api {}: this host runs streamflow:plugin {}",
                self.api,
                crate::contract::names_of(crate::contract::SUPPORTED)
            ));
        }
        if self.hooks.is_empty() {
            errors.push("hooks: declare at least one hook".to_string());
        }
        if has_duplicates(&self.hooks) {
            errors.push("hooks: listed twice".to_string());
        }
        for hook in &self.hooks {
            if hook.since() > self.api {
                errors.push(format!("hooks: {hook} needs api {} or later", hook.since()));
            }
        }
        if has_duplicates(&self.capabilities) {
            errors.push("capabilities: listed twice".to_string());
        }
        for cap in &self.capabilities {
            if !cap.available_in(&self.api) {
                errors.push(format!(
                    "capabilities: {cap} is not offered by streamflow:plugin {} yet",
                    self.api
                ));
            }
        }
        if self.requests(Capability::RecordsReadPii) && !self.requests(Capability::RecordsRead) {
            errors.push(
                "capabilities: records:read-pii adds personal fields to records:read; request both"
                    .into(),
            );
        }
        if !self.subscriptions.is_empty() && !self.has_hook(Hook::OnEvent) {
            errors.push(
                "subscriptions: events can only be delivered to a plugin with the on-event hook"
                    .into(),
            );
        }
        self.validate_filters(&mut errors);
        if self.has_hook(Hook::OnEvent) && self.subscriptions.is_empty() {
            errors.push("subscriptions: the on-event hook needs at least one event kind".into());
        }
        for s in &self.subscriptions {
            if !valid_event_kind(s) {
                errors.push(format!(
                    "subscriptions: {:?} is not an event kind such as \"record.created\"",
                    truncate(s)
                ));
            } else if !self.may_receive(s) {
                errors.push(format!(
                    "subscriptions: {:?}: a plugin receives the kernel's events ({}) and its own \"plugin.{}.<kind>\" events, not another plugin's",
                    truncate(s),
                    crate::EventKind::names(&[crate::EventKind::RECORD.as_slice(), &crate::EventKind::CHAIN, &crate::EventKind::CONNECTION].concat()),
                    self.id
                ));
            }
        }
        if !self.actions.is_empty() && !self.has_hook(Hook::RunAction) {
            errors.push("actions: actions need the run-action hook".into());
        }
        for a in &self.actions {
            if !valid_action(a) {
                errors.push(format!(
                    "actions: {:?}: use lowercase letters, digits and '-'",
                    truncate(a)
                ));
            }
        }
        let l = self.limits;
        if !(1..=60_000).contains(&l.timeout_ms) {
            errors.push("limits.timeout-ms: between 1 and 60000".into());
        }
        if !(1..=4096).contains(&l.memory_mb) {
            errors.push("limits.memory-mb: between 1 and 4096".into());
        }
        if !(1..=65_536).contains(&l.output_kb) {
            errors.push("limits.output-kb: between 1 and 65536".into());
        }
        crate::integration::validate(self, &mut errors);
        if let Some(config) = &self.config {
            match (&config.schema, &config.schema_file) {
                (Some(_), Some(_)) => errors.push("config: give schema or schema-file, not both".into()),
                (None, Some(file)) => errors.push(format!(
                    "config.schema-file {file:?} must be inlined: build the package with `streamflow plugin build`"
                )),
                (None, None) => errors.push("config: give a schema".into()),
                (Some(schema), None) => {
                    if !schema.is_object() {
                        errors.push("config.schema: a JSON Schema object".into());
                    } else if schema.get("type").and_then(|t| t.as_str()) != Some("object") {
                        errors.push("config.schema: the configuration must be an object (\"type\": \"object\")".into());
                    } else {
                        errors.extend(crate::config_schema::scan(schema).problems);
                    }
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ManifestErrors(errors))
        }
    }

    /// JSON pointers (into the configuration) of the fields the schema marks as secret.
    /// [`Manifest::validate`] refuses a schema that marks secrets where they cannot be
    /// found (see [`crate::config_schema`]).
    pub fn secret_fields(&self) -> Vec<String> {
        crate::config_schema::scan(&self.config_schema()).fields
    }

    /// Whether an event of `kind` with `payload` passes the manifest's filters for the
    /// installation whose config is `config`. Filters compare top-level payload fields;
    /// `payload` is what the plugin may see of it (a field it may not see fails the
    /// filter, always, so being woken tells nothing). A config pointer that holds no array
    /// filters nothing (the event is delivered): the plugin decides.
    pub fn admits(
        &self,
        kind: &str,
        payload: &serde_json::Value,
        config: &serde_json::Value,
    ) -> bool {
        let Some(fields) = self.filters.get(kind) else {
            return true;
        };
        fields.iter().all(|(field, allowed)| {
            let value = payload.get(field);
            match allowed {
                FilterValues::Values(values) => value.is_some_and(|v| values.contains(v)),
                FilterValues::InConfig { in_config } => match config.pointer(in_config) {
                    Some(serde_json::Value::Array(values)) => {
                        value.is_some_and(|v| values.contains(v))
                    }
                    _ => true,
                },
            }
        })
    }

    /// The problems of the `filters` table.
    fn validate_filters(&self, errors: &mut Vec<String>) {
        for (kind, fields) in &self.filters {
            if !self.subscriptions.contains(kind) {
                errors.push(format!(
                    "filters.{:?}: not one of the subscriptions",
                    truncate(kind)
                ));
            }
            if fields.is_empty() || fields.len() > MAX_FILTER_VALUES {
                errors.push(format!(
                    "filters.{:?}: name 1 to {MAX_FILTER_VALUES} payload fields",
                    truncate(kind)
                ));
            }
            for (field, allowed) in fields {
                let at = format!("filters.{:?}.{:?}", truncate(kind), truncate(field));
                if field.is_empty() || field.len() > 64 {
                    errors.push(format!("{at}: a payload field name of 1 to 64 characters"));
                }
                match allowed {
                    FilterValues::Values(values)
                        if values.is_empty() || values.len() > MAX_FILTER_VALUES =>
                    {
                        errors.push(format!("{at}: list 1 to {MAX_FILTER_VALUES} values"));
                    }
                    FilterValues::Values(values)
                        if values.iter().any(|v| v.is_array() || v.is_object()) =>
                    {
                        errors.push(format!("{at}: values are strings, numbers or booleans"));
                    }
                    FilterValues::InConfig { in_config } if !in_config.starts_with('/') => {
                        errors.push(format!(
                            "{at}: in-config is a JSON pointer into the config, such as \"/temperatures\""
                        ));
                    }
                    _ => {}
                }
            }
        }
    }

    /// Whether this plugin may receive events of `kind`: the kernel's own, and its own
    /// `plugin.<id>.*` events. Other plugins' events are theirs.
    pub fn may_receive(&self, kind: &str) -> bool {
        is_kernel_event(kind)
            || kind
                .strip_prefix("plugin.")
                .and_then(|rest| rest.strip_prefix(self.id.as_str()))
                .is_some_and(|rest| rest.len() > 1 && rest.starts_with('.'))
    }
}

fn has_duplicates<T: Ord>(items: &[T]) -> bool {
    let set: BTreeSet<&T> = items.iter().collect();
    set.len() != items.len()
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

/// Plugin ids: lowercase, digits, '-' and '.', starting with a letter.
pub fn valid_id(id: &str) -> bool {
    let bytes = id.as_bytes();
    (2..=MAX_ID_LEN).contains(&bytes.len())
        && bytes[0].is_ascii_lowercase()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-' || *b == b'.')
        && !id.ends_with(['-', '.'])
        && !id.contains("..")
}

fn valid_event_kind(kind: &str) -> bool {
    (1..=100).contains(&kind.len())
        && kind.split('.').all(|part| {
            !part.is_empty()
                && part.bytes().all(|b| {
                    b.is_ascii_lowercase()
                        || b.is_ascii_digit()
                        || b == b'_'
                        || b == b'-'
                        || b == b'*'
                })
        })
}

fn valid_action(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
id = "lead-score-rules"
name = "Rules"
version = "0.1.0"
api = "0.1.0"
hooks = ["score-lead"]

[config.schema]
type = "object"
properties = { api_key = { type = "string", writeOnly = true }, nested = { type = "object", properties = { token = { type = "string", writeOnly = true } } } }
"#;

    #[test]
    fn parses_and_finds_secret_fields() {
        let m = Manifest::from_toml(GOOD).unwrap();
        m.validate().unwrap();
        assert_eq!(m.limits, Limits::default());
        assert_eq!(
            m.secret_fields(),
            vec!["/api_key".to_string(), "/nested/token".to_string()]
        );
    }

    #[test]
    fn names_every_problem() {
        let text = GOOD
            .replace("lead-score-rules", "Bad Id")
            .replace("api = \"0.1.0\"", "api = \"0.9.0\"")
            .replace(
                "hooks = [\"score-lead\"]",
                "hooks = []\ncapabilities = [\"ai\", \"kv\", \"kv\"]",
            );
        let errors = Manifest::from_toml(&text)
            .unwrap()
            .validate()
            .unwrap_err()
            .0;
        let all = errors.join("\n");
        for needle in [
            "id \"Bad Id\"",
            "api 0.9.0",
            "hooks: declare",
            "capabilities: listed twice",
            "ai is not offered",
        ] {
            assert!(all.contains(needle), "{needle} missing from {all}");
        }
    }

    #[test]
    fn filters_decide_which_events_wake_a_plugin() {
        let text = GOOD.replace(
            "hooks = [\"score-lead\"]",
            "hooks = [\"on-event\"]\nsubscriptions = [\"lead.scored\", \"record.created\"]\n\
             [filters.\"lead.scored\"]\ntemperature = { in-config = \"/temperatures\" }\n\
             [filters.\"record.created\"]\nstage = [\"new\"]",
        );
        let m = Manifest::from_toml(&text).unwrap();
        m.validate().unwrap();
        let config = serde_json::json!({"temperatures": ["hot", "warm"]});
        let scored = |t: &str| serde_json::json!({"temperature": t, "value": 90});
        assert!(m.admits("lead.scored", &scored("hot"), &config));
        assert!(!m.admits("lead.scored", &scored("cold"), &config));
        assert!(!m.admits("lead.scored", &serde_json::json!({}), &config));
        // No list at the pointer: the plugin decides.
        assert!(m.admits("lead.scored", &scored("cold"), &serde_json::json!({})));
        assert!(m.admits(
            "record.created",
            &serde_json::json!({"stage": "new"}),
            &config
        ));
        assert!(!m.admits(
            "record.created",
            &serde_json::json!({"stage": "won"}),
            &config
        ));
        assert!(m.admits("record.deleted", &serde_json::json!({}), &config));
        // The stored (JSON) manifest keeps its filters.
        let stored: Manifest = serde_json::from_value(serde_json::to_value(&m).unwrap()).unwrap();
        assert_eq!(stored, m);

        let bad = GOOD.replace(
            "hooks = [\"score-lead\"]",
            "hooks = [\"on-event\"]\nsubscriptions = [\"lead.scored\"]\n\
             [filters.\"record.deleted\"]\nstage = []\n\
             [filters.\"lead.scored\"]\ntemperature = { in-config = \"temperatures\" }",
        );
        let err = Manifest::from_toml(&bad)
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("not one of the subscriptions"), "{err}");
        assert!(err.contains("list 1 to"), "{err}");
        assert!(err.contains("JSON pointer"), "{err}");
    }

    #[test]
    fn subscriptions_are_kernel_kinds_or_the_plugins_own() {
        let with = |subs: &str| {
            GOOD.replace(
                "hooks = [\"score-lead\"]",
                &format!("hooks = [\"on-event\"]\nsubscriptions = [{subs}]"),
            )
        };
        let m = Manifest::from_toml(&with(
            "\"record.deleted\", \"plugin.lead-score-rules.done\", \"plugin.failed\"",
        ))
        .unwrap();
        m.validate().unwrap();
        assert!(m.may_receive("plugin.lead-score-rules.done"));
        for other in [
            "plugin.lead-followup.task",
            "plugin.lead-score-rules-x.done",
            "plugin.lead-score-rules",
            "lead.qualified",
        ] {
            assert!(!m.may_receive(other), "{other}");
            let err = Manifest::from_toml(&with(&format!("\"{other}\"")))
                .unwrap()
                .validate()
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&format!("subscriptions: \"{other}\"")) && err.contains("its own"),
                "{err}"
            );
        }
    }

    #[test]
    fn webhooks_routed_by_unsigned_callback_metadata_need_its_confirmation() {
        let routed = |verify: &str| {
            format!(
                r#"
id = "qb"
name = "QB"
version = "0.1.0"
api = "0.2.0"
hooks = ["handle-webhook"]
capabilities = ["http"]

[connections.quickbooks]
kind = "oauth2-authorization-code"
urls = {{ authorize = "https://a.example.com/auth", token = "https://a.example.com/token", api = "https://api.example.com" }}
callback-metadata = ["realmId"]
{verify}

[webhooks]
verify = "hmac-sha256"
signature-header = "intuit-signature"
secret = "connection:quickbooks/verifier"
route = {{ connection = "quickbooks", metadata = "realmId", pointer = "/eventNotifications/*/realmId" }}
"#
            )
        };
        let err = Manifest::from_toml(&routed(""))
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("verify-metadata"), "{err}");
        Manifest::from_toml(&routed(
            "verify-metadata = \"/v3/company/{realmId}/companyinfo/{realmId}\"",
        ))
        .unwrap()
        .validate()
        .unwrap();
    }

    #[test]
    fn webhook_routes_take_pointer_lists_and_headers_may_come_from_the_config() {
        let base = r#"
id = "st"
name = "ST"
version = "0.1.0"
api = "0.2.0"
hooks = ["handle-webhook"]
capabilities = ["http"]

[connections.st]
kind = "oauth2-client-credentials"
client-auth = "body"
urls = { token = "https://auth.example.com/token", api = "https://api.example.com" }
metadata = ["tenant_id"]

[config.schema]
type = "object"
properties = { header = { type = "string" }, key = { type = "string", writeOnly = true } }
"#;
        let with = |webhooks: &str| Manifest::from_toml(&format!("{base}\n[webhooks]\n{webhooks}"));
        let m = with("verify = \"hmac-sha256\"\nsignature-header = \"config:/header\"\nencoding = \"auto\"\nsecret = \"config:/key\"").unwrap();
        m.validate().unwrap();
        assert_eq!(
            m.connections["st"].client_auth,
            crate::integration::ClientAuth::Body
        );
        assert_eq!(
            m.webhooks.as_ref().unwrap().header_from_config(),
            Some("/header")
        );
        // Routed deliveries are verified before a tenant (and its config) is known.
        let err = with("verify = \"hmac-sha256\"\nsignature-header = \"config:/header\"\nsecret = \"connection:st/key\"\nroute = { connection = \"st\", metadata = \"tenant_id\", pointer = \"/tenant\" }")
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("name its header in the manifest"), "{err}");
        // Several pointers, one per payload format; none, or one that is not a pointer, is refused.
        let routed = |pointer: &str| {
            with(&format!("verify = \"hmac-sha256\"\nsignature-header = \"x-sig\"\nsecret = \"connection:st/key\"\nroute = {{ connection = \"st\", metadata = \"tenant_id\", pointer = {pointer} }}"))
                .unwrap()
                .validate()
        };
        routed(r#"["/eventNotifications/*/realmId", "/*/intuitaccountid"]"#).unwrap();
        for bad in [
            r#"[]"#,
            r#"["realmId"]"#,
            r#"["/a", "/b", "/c", "/d", "/e"]"#,
        ] {
            let err = routed(bad).unwrap_err().to_string();
            assert!(err.contains("webhooks.route.pointer"), "{bad}: {err}");
        }
    }

    #[test]
    fn misplaced_secrets_and_pii_without_read_are_refused() {
        let text = GOOD.replace(
            "nested = { type = \"object\", properties",
            "list = { type = \"array\", items = { type = \"string\", writeOnly = true } }, nested = { type = \"object\", properties",
        );
        let err = Manifest::from_toml(&text)
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("config.schema/properties/list/items: \"writeOnly\" under \"items\""),
            "{err}"
        );
        let text = GOOD.replace(
            "hooks = [\"score-lead\"]",
            "hooks = [\"score-lead\"]\ncapabilities = [\"records:read-pii\"]",
        );
        let err = Manifest::from_toml(&text)
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("request both"), "{err}");
    }

    #[test]
    fn unknown_hooks_and_keys_are_refused() {
        let err = Manifest::from_toml(&GOOD.replace("score-lead", "steal-data")).unwrap_err();
        assert!(err.to_string().contains("steal-data"), "{err}");
        let err = Manifest::from_toml(&format!("{GOOD}\n[extra]\nx = 1\n")).unwrap_err();
        assert!(err.to_string().contains("extra"), "{err}");
    }

    #[test]
    fn limits_are_capped() {
        let asked = Limits {
            timeout_ms: 5000,
            memory_mb: 8,
            output_kb: 1024,
        };
        let max = Limits {
            timeout_ms: 1000,
            memory_mb: 64,
            output_kb: 256,
        };
        assert_eq!(
            asked.capped_by(max),
            Limits {
                timeout_ms: 1000,
                memory_mb: 8,
                output_kb: 256
            }
        );
    }

    #[test]
    fn ids() {
        for ok in ["ab", "lead-score-rules", "com.acme.scorer", "a1"] {
            assert!(valid_id(ok), "{ok}");
        }
        for bad in [
            "a",
            "1ab",
            "Ab",
            "a_b",
            "a..b",
            "ab-",
            "ab.",
            "../x",
            &"a".repeat(65),
        ] {
            assert!(!valid_id(bad), "{bad}");
        }
    }
}
