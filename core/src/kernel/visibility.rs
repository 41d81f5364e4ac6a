//! What plugins may see of records and events.
//!
//! `records:read` is needed for any record data: without it a plugin is told which record
//! changed (kind, type, id) and its stage, nothing more. `records:read-pii` adds the fields
//! the record type's schema marks `"x-pii": true`; without it they are left out of events,
//! action inputs and what the `records` capability returns. Every path to a plugin (hook
//! inputs from the dispatcher, action inputs, capability answers, event filters) goes
//! through here, with one exception by design: `score-lead` is handed the whole lead (a
//! scorer is installed to read it).

use serde_json::{Map, Value, json};
use streamflow_runtime::{Capability, Grants};

use crate::store::events::QueuedEvent;
use crate::store::records::RecordRow;
use crate::store::{Store, StoreResult, TenantScope};

/// A record as automations' conditions and plugin actions see it.
pub fn record_json(row: &RecordRow) -> Value {
    json!({
        "id": row.id,
        "type": row.record_type,
        "stage": row.stage,
        "version": row.version,
        "data": row.data.0,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
    })
}

/// Payload keys that are about a record's place in its pipeline, not its data.
const STAGE_KEYS: &[&str] = &["stage", "from", "to", "version", "previous_version"];

/// An event's payload as a plugin with `grants` may see it.
pub async fn plugin_payload(
    store: &Store,
    scope: &TenantScope,
    grants: &Grants,
    event: &QueuedEvent,
    record: Option<&RecordRow>,
) -> StoreResult<Value> {
    let payload = &event.payload.0;
    let Some(record_type) = event.record_type.as_deref() else {
        // Not about a record: the kernel's reports (kinds, depths, target names) and a
        // plugin's own events.
        return Ok(payload.clone());
    };
    if !grants.allows(Capability::RecordsRead) {
        let mut view = Map::new();
        for key in STAGE_KEYS {
            if let Some(v) = payload.get(*key) {
                view.insert(key.to_string(), v.clone());
            }
        }
        if let Some(row) = record {
            view.insert("stage".into(), json!(row.stage));
        }
        return Ok(Value::Object(view));
    }
    let mut payload = payload.clone();
    if !grants.allows(Capability::RecordsReadPii)
        && let Some(data) = payload.get_mut("data")
    {
        strip_pointers(data, &pii_fields(store, scope, record_type).await?);
    }
    Ok(payload)
}

/// What the manifest's event filters may look at: the payload as the plugin would be
/// shown it (its top-level fields; `data` is an object, which no filter value equals).
pub fn filter_view<'e>(grants: &Grants, event: &'e QueuedEvent) -> std::borrow::Cow<'e, Value> {
    if event.record_type.is_none() || grants.allows(Capability::RecordsRead) {
        return std::borrow::Cow::Borrowed(&event.payload.0);
    }
    let mut view = Map::new();
    for key in STAGE_KEYS {
        if let Some(v) = event.payload.0.get(*key) {
            view.insert(key.to_string(), v.clone());
        }
    }
    std::borrow::Cow::Owned(Value::Object(view))
}

/// A record as a plugin action's input shows it, by the plugin's grants.
pub async fn plugin_record_json(
    store: &Store,
    scope: &TenantScope,
    grants: &Grants,
    row: &RecordRow,
) -> StoreResult<Value> {
    let mut view = record_json(row);
    if !grants.allows(Capability::RecordsRead) {
        if let Some(object) = view.as_object_mut() {
            object.remove("data");
        }
    } else if !grants.allows(Capability::RecordsReadPii) {
        strip_pointers(
            &mut view["data"],
            &pii_fields(store, scope, &row.record_type).await?,
        );
    }
    Ok(view)
}

/// The PII fields of a tenant's record type (see [`pii_pointers`]).
pub async fn pii_fields(
    store: &Store,
    scope: &TenantScope,
    record_type: &str,
) -> StoreResult<Vec<String>> {
    Ok(store
        .record_type(scope, record_type)
        .await?
        .and_then(|t| t.schema)
        .map(|schema| pii_pointers(&schema.0))
        .unwrap_or_default())
}

/// Schema nodes looked at, at most: a schema whose `$ref`s branch so much that it
/// would take longer is treated as personal throughout.
const MAX_VISITS: usize = 20_000;

/// The walk [`pii_pointers`] makes: the schema's root (for `$ref`s), the nodes visited so
/// far and the pointers found.
struct Scan<'a> {
    root: &'a Value,
    visits: usize,
    out: Vec<String>,
}

/// Whether a schema node carries `"x-pii": true` itself.
fn marked(node: &Value) -> bool {
    node.get("x-pii").and_then(Value::as_bool) == Some(true)
}

impl Scan<'_> {
    fn tick(&mut self) -> bool {
        self.visits += 1;
        self.visits <= MAX_VISITS
    }
    /// Whether a mark sits in `node` outside the places `walk` follows (`top`: the
    /// node's own mark, `properties`, `allOf` and `$ref` are walked precisely).
    fn elsewhere(&mut self, node: &Value, seen: &mut Vec<String>, top: bool) -> bool {
        if !self.tick() {
            return true;
        }
        match node {
            Value::Array(items) => items.iter().any(|v| self.elsewhere(v, seen, false)),
            Value::Object(map) => {
                if !top && marked(node) {
                    return true;
                }
                if !top
                    && let Some(Value::String(r)) = map.get("$ref")
                    && let Some(pointer) = r.strip_prefix('#')
                    && !seen.iter().any(|s| s == pointer)
                {
                    seen.push(pointer.to_string());
                    let root = self.root;
                    if let Some(target) = root.pointer(pointer)
                        && self.elsewhere(target, seen, false)
                    {
                        return true;
                    }
                }
                map.iter().any(|(k, v)| {
                    let walked = top && matches!(k.as_str(), "properties" | "allOf" | "$ref");
                    if walked {
                        return false;
                    }
                    // Maps whose values are schemas, whatever their keys: a property
                    // may well be named `default` or `enum`.
                    if matches!(
                        k.as_str(),
                        "properties" | "patternProperties" | "dependentSchemas"
                    ) && let Value::Object(schemas) = v
                    {
                        return schemas.values().any(|s| self.elsewhere(s, seen, false));
                    }
                    let not_schema = matches!(
                        k.as_str(),
                        "enum" | "const" | "default" | "examples" | "$defs" | "definitions"
                    );
                    !not_schema && self.elsewhere(v, seen, false)
                })
            }
            _ => false,
        }
    }
    fn walk(&mut self, node: &Value, at: String, depth: usize) {
        if self.out.iter().any(|p| p.is_empty()) {
            return;
        }
        if depth > 64 || !self.tick() {
            self.out = vec![String::new()];
            return;
        }
        if marked(node) || self.elsewhere(node, &mut Vec::new(), true) {
            if !self.out.contains(&at) {
                self.out.push(at);
            }
            return;
        }
        if let Some(Value::Object(props)) = node.get("properties") {
            for (name, sub) in props {
                let here = format!("{at}/{}", streamflow_runtime::pointer::escape(name));
                self.walk(sub, here, depth + 1);
            }
        }
        if let Some(Value::Array(all)) = node.get("allOf") {
            for sub in all {
                self.walk(sub, at.clone(), depth + 1);
            }
        }
        let root = self.root;
        if let Some(Value::String(r)) = node.get("$ref")
            && let Some(target) = r.strip_prefix('#').and_then(|p| root.pointer(p))
        {
            self.walk(target, at, depth + 1);
        }
    }
}

/// JSON pointers (into a record's data) of what a schema marks `"x-pii": true`: fields
/// reached through `properties` (and `allOf` / local `$ref`, which apply at the same
/// place). A mark anywhere else beneath a field (under `items`, `anyOf`, ...) makes that
/// whole field personal, and one that cannot be tied to a field makes the whole data so
/// (`""`): when in doubt, leave out more.
pub fn pii_pointers(schema: &Value) -> Vec<String> {
    let mut scan = Scan {
        root: schema,
        visits: 0,
        out: Vec::new(),
    };
    scan.walk(schema, String::new(), 0);
    if scan.out.iter().any(|p| p.is_empty()) {
        return vec![String::new()];
    }
    scan.out
}

/// Removes each pointer's value from `data` (`""`: everything).
pub fn strip_pointers(data: &mut Value, pointers: &[String]) {
    for pointer in pointers {
        if pointer.is_empty() {
            *data = Value::Object(Map::new());
            return;
        }
        crate::plugins::config::take_pointer(data, pointer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_see_only_what_the_plugin_may_see() {
        let event = QueuedEvent {
            seq: 1,
            id: uuid::Uuid::nil(),
            tenant_id: uuid::Uuid::nil(),
            kind: "lead.scored".into(),
            record_type: Some("lead".into()),
            record_id: Some(uuid::Uuid::nil()),
            actor: None,
            payload: sqlx::types::Json(json!({"temperature": "hot", "value": 90, "version": 2})),
            created_at: 0,
            depth: 0,
            attempts: 0,
            root_id: None,
        };
        let reader = Grants::new(vec![Capability::RecordsRead]);
        assert_eq!(filter_view(&reader, &event)["temperature"], "hot");
        let blind = filter_view(&Grants::default(), &event);
        assert_eq!(*blind, json!({"version": 2}));
    }

    #[test]
    fn pii_fields_are_found_wherever_they_are_marked() {
        let pii = json!({"type": "string", "x-pii": true});
        let schema = json!({
            "type": "object",
            "properties": {
                "name": pii,
                "budget": {"type": "number"},
                "address": {"type": "object", "properties": {"street": pii, "city": {"type": "string"}}},
                "phones": {"type": "array", "items": pii},
                "contact": {"$ref": "#/$defs/person"},
                "either": {"anyOf": [{"type": "null"}, {"$ref": "#/$defs/secretish"}]}
            },
            "allOf": [{"properties": {"email": pii}}],
            "$defs": {
                "person": {"type": "object", "properties": {"phone": pii, "role": {"type": "string"}}},
                "secretish": pii
            }
        });
        let mut found = pii_pointers(&schema);
        found.sort();
        assert_eq!(
            found,
            vec![
                "/address/street",
                "/contact/phone",
                "/either",
                "/email",
                "/name",
                "/phones"
            ]
        );
        let mut data = json!({
            "name": "Ada", "budget": 5, "address": {"street": "1 Way", "city": "Oslo"},
            "phones": ["1"], "contact": {"phone": "2", "role": "x"}, "either": "3", "email": "a@b"
        });
        strip_pointers(&mut data, &pii_pointers(&schema));
        assert_eq!(
            data,
            json!({"budget": 5, "address": {"city": "Oslo"}, "contact": {"role": "x"}})
        );
        // A mark that cannot be tied to a field hides all the data.
        let loose = json!({"type": "object", "patternProperties": {"^p": pii}});
        assert_eq!(pii_pointers(&loose), vec![String::new()]);
        let mut data = json!({"p1": "x", "q": 1});
        strip_pointers(&mut data, &pii_pointers(&loose));
        assert_eq!(data, json!({}));
        assert!(
            pii_pointers(
                &json!({"type": "object", "properties": {"a": {"enum": [{"x-pii": true}]}}})
            )
            .is_empty()
        );
        // A property named like a non-schema keyword is still a schema.
        let named = json!({"type": "object", "properties": {"items": {"type": "array",
            "items": {"type": "object", "properties": {"default": pii}}}}});
        assert_eq!(pii_pointers(&named), vec!["/items".to_string()]);
    }
}
