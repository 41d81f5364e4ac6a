//! Records: the generic business objects (leads, contacts, jobs, and types a tenant adds),
//! their API representation, JSON Schema validation and list cursors.
//!
//! A tenant's record type may carry a JSON Schema; writes are validated against it. Schemas
//! are compiled with remote and file `$ref` resolution off and with a linear-time regex
//! engine for `pattern`, so a tenant's schema can neither reach the network nor stall the
//! host. Compiled validators are cached per tenant, type and schema version.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use crate::error::{FieldError, RecordError, RecordResult};
use crate::store::cache::CREDENTIAL_CACHE_TTL;
use crate::store::events::QueuedEvent;
use crate::store::records::RecordRow;
use crate::store::{Store, TenantScope, format_micros};

/// Most validation errors reported for one write.
const MAX_REPORTED_ERRORS: usize = 50;
/// Validators kept in memory before the cache is emptied and refilled on demand.
const MAX_CACHED_VALIDATORS: usize = 10_000;
/// Longest stage name.
pub const MAX_STAGE_LEN: usize = 100;

/// A record as the API returns it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RecordView {
    pub id: Uuid,
    #[serde(rename = "type")]
    pub record_type: String,
    pub stage: Option<String>,
    #[schema(value_type = Object)]
    pub data: Value,
    /// Incremented on every change; send it back with a PATCH.
    pub version: i64,
    pub created_at: String,
    pub updated_at: String,
    /// Leads only: the latest score, null until a scorer has scored the lead.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub score: Option<Value>,
}

impl From<RecordRow> for RecordView {
    fn from(row: RecordRow) -> Self {
        let score =
            (row.record_type == "lead").then(|| row.score.map(|s| s.0).unwrap_or(Value::Null));
        Self {
            id: row.id,
            record_type: row.record_type,
            stage: row.stage,
            data: row.data.0,
            version: row.version,
            created_at: format_micros(row.created_at),
            updated_at: format_micros(row.updated_at),
            score,
        }
    }
}

/// Whether `id` is a well-formed record type id: lowercase letters, digits and `_`,
/// starting with a letter, at most 40 characters.
pub fn valid_type_id(id: &str) -> bool {
    let mut chars = id.chars();
    matches!(chars.next(), Some('a'..='z'))
        && id.len() <= 40
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'))
}

/// Checks a stage name; `path` locates it in the request for the error.
pub fn check_stage(stage: &str, path: &str) -> Result<(), FieldError> {
    if stage.contains('\0') {
        return Err(FieldError::new(
            path,
            "must not contain the NUL character (U+0000)",
        ));
    }
    if stage.trim().is_empty() {
        return Err(FieldError::new(path, "must not be empty"));
    }
    if stage.chars().count() > MAX_STAGE_LEN {
        return Err(FieldError::new(
            path,
            format!("must be at most {MAX_STAGE_LEN} characters"),
        ));
    }
    Ok(())
}

/// Deepest nesting of objects and arrays accepted in record data. It bounds the work of
/// validating against a tenant's schema, which a crafted schema could make grow with every
/// level, and it is far more than business records need.
pub const MAX_DATA_DEPTH: usize = 16;
/// Deepest nesting accepted in a record type's schema.
pub const MAX_SCHEMA_DEPTH: usize = 32;

/// Refuses JSON the host should not store or walk: U+0000 in a string or key (PostgreSQL
/// cannot store it, so it is refused on every backend alike) and nesting deeper than
/// `max_depth`. `path` is the JSON pointer of `value` in the request.
pub fn check_json(value: &Value, path: &str, max_depth: usize) -> Result<(), FieldError> {
    fn walk(value: &Value, path: String, depth_left: usize) -> Result<(), FieldError> {
        let nested = matches!(value, Value::Array(_) | Value::Object(_));
        if nested && depth_left == 0 {
            return Err(FieldError::new(path, "is nested too deeply"));
        }
        match value {
            Value::String(s) if s.contains('\0') => Err(FieldError::new(
                path,
                "must not contain the NUL character (U+0000)",
            )),
            Value::Array(items) => items
                .iter()
                .enumerate()
                .try_for_each(|(i, v)| walk(v, format!("{path}/{i}"), depth_left - 1)),
            Value::Object(map) => map.iter().try_for_each(|(k, v)| {
                let here = format!("{path}/{}", streamflow_runtime::pointer::escape(k));
                if k.contains('\0') {
                    return Err(FieldError::new(here, "keys must not contain U+0000"));
                }
                walk(v, here, depth_left - 1)
            }),
            _ => Ok(()),
        }
    }
    walk(value, path.to_string(), max_depth)
}

/// Cursor of a record listing: the last id of the page, opaque to clients.
pub fn encode_cursor(id: Uuid) -> String {
    URL_SAFE_NO_PAD.encode(id.as_bytes())
}

/// The id a cursor of [`encode_cursor`] holds; `None` for text this server never returned.
pub fn decode_cursor(cursor: &str) -> Option<Uuid> {
    URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|bytes| Uuid::from_slice(&bytes).ok())
}

/// Compiles a tenant-supplied JSON Schema safely, or says why it is not a usable schema.
pub fn compile_schema(schema: &Value) -> Result<jsonschema::Validator, String> {
    if !schema.is_object() {
        return Err("a schema must be a JSON object".into());
    }
    check_refs(schema)?;
    jsonschema::options()
        .with_pattern_options(jsonschema::PatternOptions::regex())
        .build(schema)
        .map_err(|e| e.to_string())
}

/// Every `$ref` under `value` (located by `at`): its location and its target pointer;
/// refuses the reference kinds that are not supported.
fn collect_refs(value: &Value, at: String, refs: &mut Vec<(String, String)>) -> Result<(), String> {
    match value {
        Value::Object(map) => {
            for key in ["$dynamicRef", "$recursiveRef"] {
                if map.contains_key(key) {
                    return Err(format!("{key} is not supported (at {at:?})"));
                }
            }
            if !at.is_empty() && map.contains_key("$id") {
                return Err(format!("$id is only allowed at the root (found at {at:?})"));
            }
            if let Some(target) = map.get("$ref") {
                let target = target
                    .as_str()
                    .ok_or(format!("$ref at {at:?} must be a string"))?;
                let pointer = target
                    .strip_prefix('#')
                    .filter(|p| p.is_empty() || p.starts_with('/'))
                    .ok_or(format!(
                        "$ref {target:?} at {at:?}: only local references such as \"#/$defs/name\" are allowed"
                    ))?;
                refs.push((at.clone(), pointer.to_string()));
            }
            for (key, child) in map {
                let key = streamflow_runtime::pointer::escape(key);
                collect_refs(child, format!("{at}/{key}"), refs)?;
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                collect_refs(child, format!("{at}/{i}"), refs)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Depth-first search from reference `i` for a cycle of `leads_to` steps (`state`: 0 not
/// visited, 1 on the current path, 2 done).
fn ref_cycle_from(
    i: usize,
    n: usize,
    state: &mut [u8],
    leads_to: &dyn Fn(usize, usize) -> bool,
) -> bool {
    state[i] = 1;
    for j in 0..n {
        if leads_to(i, j)
            && (state[j] == 1 || (state[j] == 0 && ref_cycle_from(j, n, state, leads_to)))
        {
            return true;
        }
    }
    state[i] = 2;
    false
}

/// Nodes of a JSON value.
fn schema_nodes(value: &Value) -> u64 {
    1 + match value {
        Value::Object(map) => map.values().map(schema_nodes).sum(),
        Value::Array(items) => items.iter().map(schema_nodes).sum(),
        _ => 0,
    }
}

/// Nodes of reference `i`'s target with every reference under it expanded (memoised).
fn expanded_nodes(
    i: usize,
    schema: &Value,
    refs: &[(String, String)],
    leads_to: &dyn Fn(usize, usize) -> bool,
    memo: &mut [Option<u64>],
) -> u64 {
    if let Some(n) = memo[i] {
        return n;
    }
    let own = schema.pointer(&refs[i].1).map_or(1, schema_nodes);
    let mut total = own;
    for j in 0..refs.len() {
        if leads_to(i, j) {
            total = total.saturating_add(expanded_nodes(j, schema, refs, leads_to, memo));
        }
    }
    memo[i] = Some(total);
    total
}

/// Refuses references that could make validation recurse. A recursive schema can branch
/// at every level it descends (`anyOf` of several self-references), so the work of one
/// validation grows exponentially with the data's depth: a 200-byte schema was measured
/// taking 23 s on 6 levels of data. Only local JSON-pointer references (`#/...`) that form
/// no cycle are accepted; `$dynamicRef`, `$recursiveRef` and nested `$id`s are refused.
fn check_refs(schema: &Value) -> Result<(), String> {
    let mut refs = Vec::new();
    collect_refs(schema, String::new(), &mut refs)?;
    // Following reference i leads into the subtree at its target, where reference j sits
    // when j's location is at or below that target. A cycle of such steps is recursion.
    let leads_to = |i: usize, j: usize| {
        let (target, at) = (&refs[i].1, &refs[j].0);
        at == target || at.starts_with(&format!("{target}/"))
    };
    // 0 = not visited, 1 = on the current path, 2 = done.
    let mut state = vec![0u8; refs.len()];
    for i in 0..refs.len() {
        if state[i] == 0 && ref_cycle_from(i, refs.len(), &mut state, &leads_to) {
            return Err(format!(
                "the $ref at {:?} can lead back to itself; recursive schemas are not supported",
                refs[i].0
            ));
        }
    }
    // No cycle, but references that share targets can still multiply: `allOf: [{$ref: a1},
    // {$ref: a1}]`, with `a1` built the same way, level after level, makes validation walk
    // 2^levels subschemas. Count the schema as validation sees it, each reference replaced
    // by its target (memoised, so counting is linear), and refuse it past a bound.
    let mut memo = vec![None; refs.len()];
    let mut total = schema_nodes(schema);
    for i in 0..refs.len() {
        total = total.saturating_add(expanded_nodes(i, schema, &refs, &leads_to, &mut memo));
    }
    if total > MAX_EXPANDED_SCHEMA_NODES {
        return Err(format!(
            "its $refs expand it to more than {MAX_EXPANDED_SCHEMA_NODES} subschemas, which \
             would make every validation slow; reference shared definitions fewer times"
        ));
    }
    Ok(())
}

/// Largest a schema may be once each `$ref` is replaced by what it points at.
const MAX_EXPANDED_SCHEMA_NODES: u64 = 100_000;

/// A cached validator: when its version was last confirmed, the schema version it was
/// compiled from, and the validator (none when the type has no schema).
type CachedValidator = (Instant, i64, Option<Arc<jsonschema::Validator>>);

/// Compiled validators per (tenant, record type). A schema change on this node is seen at
/// once ([`SchemaCache::forget`]); one made on another node within
/// [`CREDENTIAL_CACHE_TTL`], when the cached version is next confirmed.
pub struct SchemaCache {
    validators: RwLock<HashMap<(Uuid, String), CachedValidator>>,
    /// Validations allowed to run at once, shared fairly between tenants.
    validation_slots: crate::fair::FairPool,
    /// Largest record `data`, in bytes of JSON.
    record_limit: usize,
}

/// Largest record `data` when the server's configuration does not say.
pub const DEFAULT_RECORD_LIMIT: usize = 256 * 1024;

/// Concurrent validations: enough to keep both cores busy, few enough that a flood of
/// expensive writes queues instead of piling up threads.
const VALIDATION_SLOTS: usize = 4;
/// Of which one tenant may hold at most this many, so a tenant flooding expensive writes
/// queues behind itself and leaves the rest to the others.
const VALIDATION_SLOTS_PER_TENANT: usize = 2;

impl Default for SchemaCache {
    fn default() -> Self {
        Self::new(DEFAULT_RECORD_LIMIT)
    }
}

impl SchemaCache {
    /// A cache whose writes refuse record data larger than `record_limit` bytes of JSON.
    pub fn new(record_limit: usize) -> Self {
        Self {
            validators: RwLock::default(),
            validation_slots: crate::fair::FairPool::new(
                VALIDATION_SLOTS,
                VALIDATION_SLOTS_PER_TENANT,
            ),
            record_limit,
        }
    }

    /// Largest record `data`, in bytes of JSON.
    pub fn record_limit(&self) -> usize {
        self.record_limit
    }

    /// Validates `data` (a record's `data`) against the type's schema. Returns 404 if the
    /// tenant has no such type, 422 with each failing field's path if the data is invalid.
    pub async fn validate(
        &self,
        store: &Store,
        scope: &TenantScope,
        record_type: &str,
        data: &Value,
    ) -> RecordResult<()> {
        let Some(validator) = self.validator(store, scope, record_type).await? else {
            return Ok(());
        };
        // Validation is CPU work whose cost depends on the tenant's schema and data: it runs
        // on the blocking pool, a few at a time, never on the threads that serve requests.
        let _slot = self.validation_slots.acquire(scope.tenant_id()).await;
        let data = data.clone();
        let errors: Vec<FieldError> = tokio::task::spawn_blocking(move || {
            validator
                .iter_errors(&data)
                .take(MAX_REPORTED_ERRORS)
                .map(|e| FieldError::new(format!("/data{}", e.instance_path()), e.to_string()))
                .collect()
        })
        .await
        .map_err(|_| RecordError::Internal("a schema validation crashed"))?;
        if errors.is_empty() {
            Ok(())
        } else {
            Err(RecordError::Invalid(errors))
        }
    }

    /// Checks that the tenant has this record type (404 otherwise) and returns its
    /// validator, if it has a schema.
    pub async fn validator(
        &self,
        store: &Store,
        scope: &TenantScope,
        record_type: &str,
    ) -> RecordResult<Option<Arc<jsonschema::Validator>>> {
        if !valid_type_id(record_type) {
            return Err(unknown_type(record_type));
        }
        let key = (scope.tenant_id(), record_type.to_string());
        let cached = self
            .validators
            .read()
            .expect("not poisoned")
            .get(&key)
            .cloned();
        if let Some((confirmed, _, validator)) = &cached
            && confirmed.elapsed() < CREDENTIAL_CACHE_TTL
        {
            return Ok(validator.clone());
        }
        let version = store
            .record_type_version(scope, record_type)
            .await?
            .ok_or_else(|| unknown_type(record_type))?;
        if let Some((_, v, validator)) = cached
            && v == version
        {
            self.store(key, version, validator.clone());
            return Ok(validator);
        }
        let record_type_row = store
            .record_type(scope, record_type)
            .await?
            .ok_or_else(|| unknown_type(record_type))?;
        let validator = match &record_type_row.schema {
            None => None,
            Some(schema) => Some(Arc::new(compile_schema(&schema.0).map_err(|e| {
                tracing::error!(record_type, error = %e, "stored schema does not compile");
                RecordError::Internal("a stored record type schema does not compile")
            })?)),
        };
        self.store(key, record_type_row.version, validator.clone());
        Ok(validator)
    }

    fn store(
        &self,
        key: (Uuid, String),
        version: i64,
        validator: Option<Arc<jsonschema::Validator>>,
    ) {
        let mut cache = self.validators.write().expect("not poisoned");
        if cache.len() >= MAX_CACHED_VALIDATORS {
            cache.clear();
        }
        cache.insert(key, (Instant::now(), version, validator));
    }

    /// Drops the cached validator of a type whose schema just changed.
    pub fn forget(&self, scope: &TenantScope, record_type: &str) {
        self.validators
            .write()
            .expect("not poisoned")
            .remove(&(scope.tenant_id(), record_type.to_string()));
    }
}

/// `data` of a write: a JSON object the host is willing to store and walk, at most
/// `limit` bytes as JSON text.
pub fn check_data(data: &Value, limit: usize) -> RecordResult<()> {
    if !data.is_object() {
        return Err(RecordError::field("/data", "must be a JSON object"));
    }
    check_json(data, "/data", MAX_DATA_DEPTH).map_err(|e| RecordError::Invalid(vec![e]))?;
    let size = crate::store::records::json_len(data);
    if size > limit {
        return Err(RecordError::TooLarge { size, limit });
    }
    Ok(())
}

fn unknown_type(record_type: &str) -> RecordError {
    RecordError::UnknownType(record_type.to_string())
}

/// Where a plugin call or built-in action comes from when the dispatcher makes it: what
/// makes its writes idempotent and how deep in an automation chain it is.
#[derive(Debug, Clone)]
pub struct Origin {
    /// Derived from the event id and the target.
    pub key: [u8; 32],
    /// The depth of the events its writes cause.
    pub depth: i64,
    /// The event's time, in milliseconds, used as the time part of derived record ids.
    pub at_ms: u64,
    /// The event the chain started from: what it creates spends that root's budget.
    pub root: Uuid,
}

impl Origin {
    /// The origin of `target`'s run for `event`.
    pub fn of(event: &QueuedEvent, target: &str) -> Origin {
        use sha2::{Digest, Sha256};
        let mut hash = Sha256::new();
        hash.update(event.id.as_bytes());
        hash.update(target.as_bytes());
        Origin {
            key: hash.finalize().into(),
            depth: event.depth + 1,
            at_ms: (event.created_at / 1000).max(0) as u64,
            root: event.root(),
        }
    }

    /// The id of the `n`th thing (record, event) this origin creates: the same on every
    /// run, shaped like a UUIDv7 from the event's time so listings stay in creation order.
    pub fn derived_id(&self, n: u32) -> Uuid {
        use sha2::{Digest, Sha256};
        let mut hash = Sha256::new();
        hash.update(self.key);
        hash.update(n.to_be_bytes());
        let digest = hash.finalize();
        let mut bytes = [0u8; 16];
        bytes[..6].copy_from_slice(&self.at_ms.to_be_bytes()[2..]);
        bytes[6..].copy_from_slice(&digest[..10]);
        bytes[6] = 0x70 | (bytes[6] & 0x0f);
        bytes[8] = 0x80 | (bytes[8] & 0x3f);
        Uuid::from_bytes(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn type_ids() {
        assert!(valid_type_id("lead"));
        assert!(valid_type_id("service_call2"));
        assert!(!valid_type_id("Lead"));
        assert!(!valid_type_id("1lead"));
        assert!(!valid_type_id("lead'; DROP TABLE records;--"));
        assert!(!valid_type_id(""));
    }

    #[test]
    fn cursor_round_trips_and_rejects_garbage() {
        let id = Uuid::now_v7();
        assert_eq!(decode_cursor(&encode_cursor(id)), Some(id));
        assert!(decode_cursor("not a cursor").is_none());
        assert!(decode_cursor("").is_none());
    }

    #[test]
    fn schema_refuses_recursion_but_takes_plain_local_refs() {
        let branch = json!({"type": "object", "properties": {"x": {"$ref": "#"}}});
        let bomb = json!({"anyOf": [branch, branch, branch]});
        assert!(compile_schema(&bomb).unwrap_err().contains("recursive"));
        let chain = json!({"$defs": {
            "a": {"properties": {"b": {"$ref": "#/$defs/b"}}},
            "b": {"items": {"$ref": "#/$defs/a"}}
        }, "$ref": "#/$defs/a"});
        assert!(compile_schema(&chain).unwrap_err().contains("recursive"));
        assert!(compile_schema(&json!({"$dynamicRef": "#node"})).is_err());
        assert!(compile_schema(&json!({"$ref": "#anchor"})).is_err());
        let reuse = json!({
            "$defs": {"money": {"type": "number", "minimum": 0}},
            "properties": {"budget": {"$ref": "#/$defs/money"}, "paid": {"$ref": "#/$defs/money"}}
        });
        let v = compile_schema(&reuse).unwrap();
        assert!(!v.is_valid(&json!({"budget": -1})));
        assert!(v.is_valid(&json!({"budget": 5, "paid": 0})));
    }

    #[test]
    fn schema_refuses_references_that_multiply() {
        let mut defs = serde_json::Map::new();
        for i in 0..40 {
            let next = format!("#/$defs/a{}", i + 1);
            defs.insert(
                format!("a{i}"),
                json!({"allOf": [{"$ref": next}, {"$ref": next}]}),
            );
        }
        defs.insert("a40".into(), json!({"type": "string"}));
        let doubling = json!({"$defs": defs, "$ref": "#/$defs/a0"});
        let err = compile_schema(&doubling).unwrap_err();
        assert!(err.contains("expand"), "{err}");
        // Sharing a definition a few times is fine.
        let shared = json!({
            "$defs": {"money": {"type": "number", "minimum": 0}},
            "properties": {"a": {"$ref": "#/$defs/money"}, "b": {"$ref": "#/$defs/money"}}
        });
        assert!(compile_schema(&shared).is_ok());
    }

    #[test]
    fn schema_refuses_remote_refs_and_bad_schemas() {
        assert!(compile_schema(&json!({"$ref": "https://example.com/s.json"})).is_err());
        assert!(compile_schema(&json!({"type": "nope"})).is_err());
        assert!(compile_schema(&json!([1])).is_err());
        let v = compile_schema(
            &json!({"type": "object", "properties": {"budget": {"type": "number"}}}),
        )
        .unwrap();
        let data = json!({"budget": "x"});
        let errors: Vec<_> = v.iter_errors(&data).collect();
        assert_eq!(errors[0].instance_path().to_string(), "/budget");
    }

    #[test]
    fn derived_ids_are_stable_distinct_and_time_ordered() {
        let origin = |key: u8, at_ms| Origin {
            key: [key; 32],
            depth: 1,
            at_ms,
            root: Uuid::nil(),
        };
        let a = origin(1, 1_700_000_000_000);
        assert_eq!(a.derived_id(0), a.derived_id(0));
        assert_ne!(a.derived_id(0), a.derived_id(1));
        assert_ne!(a.derived_id(0), origin(2, 1_700_000_000_000).derived_id(0));
        assert_eq!(a.derived_id(0).get_version_num(), 7);
        assert!(origin(9, 1_700_000_000_001).derived_id(0) > a.derived_id(0));
    }
}
