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

use crate::error::{ApiError, ApiResult, FieldError};
use crate::store::cache::CREDENTIAL_CACHE_TTL;
use crate::store::records::RecordRow;
use crate::store::{Store, TenantScope, format_micros};
use crate::templates::{Pipeline, Workflows};

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
pub fn check_stage(stage: &str, path: &str) -> ApiResult<()> {
    if stage.contains('\0') {
        return Err(ApiError::field(
            path,
            "must not contain the NUL character (U+0000)",
        ));
    }
    if stage.trim().is_empty() {
        return Err(ApiError::field(path, "must not be empty"));
    }
    if stage.chars().count() > MAX_STAGE_LEN {
        return Err(ApiError::field(
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
pub fn check_json(value: &Value, path: &str, max_depth: usize) -> ApiResult<()> {
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
    walk(value, path.to_string(), max_depth).map_err(|e| ApiError::validation(vec![e]))
}

/// Cursor of a record listing: the last id of the page, opaque to clients.
pub fn encode_cursor(id: Uuid) -> String {
    URL_SAFE_NO_PAD.encode(id.as_bytes())
}

pub fn decode_cursor(cursor: &str) -> ApiResult<Uuid> {
    URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|bytes| Uuid::from_slice(&bytes).ok())
        .ok_or_else(|| {
            ApiError::bad_request("invalid_cursor", "cursor is not one this server returned")
                .with_details(serde_json::json!({ "parameter": "cursor" }))
        })
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

/// Refuses references that could make validation recurse. A recursive schema can branch
/// at every level it descends (`anyOf` of several self-references), so the work of one
/// validation grows exponentially with the data's depth: a 200-byte schema was measured
/// taking 23 s on 6 levels of data. Only local JSON-pointer references (`#/...`) that form
/// no cycle are accepted; `$dynamicRef`, `$recursiveRef` and nested `$id`s are refused.
fn check_refs(schema: &Value) -> Result<(), String> {
    fn collect(value: &Value, at: String, refs: &mut Vec<(String, String)>) -> Result<(), String> {
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
                    collect(child, format!("{at}/{key}"), refs)?;
                }
            }
            Value::Array(items) => {
                for (i, child) in items.iter().enumerate() {
                    collect(child, format!("{at}/{i}"), refs)?;
                }
            }
            _ => {}
        }
        Ok(())
    }
    let mut refs = Vec::new();
    collect(schema, String::new(), &mut refs)?;
    // Following reference i leads into the subtree at its target, where reference j sits
    // when j's location is at or below that target. A cycle of such steps is recursion.
    let leads_to = |i: usize, j: usize| {
        let (target, at) = (&refs[i].1, &refs[j].0);
        at == target || at.starts_with(&format!("{target}/"))
    };
    // 0 = not visited, 1 = on the current path, 2 = done.
    fn visit(
        i: usize,
        n: usize,
        state: &mut [u8],
        leads_to: &dyn Fn(usize, usize) -> bool,
    ) -> bool {
        state[i] = 1;
        for j in 0..n {
            if leads_to(i, j) && (state[j] == 1 || (state[j] == 0 && visit(j, n, state, leads_to)))
            {
                return true;
            }
        }
        state[i] = 2;
        false
    }
    let mut state = vec![0u8; refs.len()];
    for i in 0..refs.len() {
        if state[i] == 0 && visit(i, refs.len(), &mut state, &leads_to) {
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
    fn nodes(value: &Value) -> u64 {
        1 + match value {
            Value::Object(map) => map.values().map(nodes).sum(),
            Value::Array(items) => items.iter().map(nodes).sum(),
            _ => 0,
        }
    }
    fn expanded(
        i: usize,
        schema: &Value,
        refs: &[(String, String)],
        leads_to: &dyn Fn(usize, usize) -> bool,
        memo: &mut [Option<u64>],
    ) -> u64 {
        if let Some(n) = memo[i] {
            return n;
        }
        let own = schema.pointer(&refs[i].1).map_or(1, nodes);
        let mut total = own;
        for j in 0..refs.len() {
            if leads_to(i, j) {
                total = total.saturating_add(expanded(j, schema, refs, leads_to, memo));
            }
        }
        memo[i] = Some(total);
        total
    }
    let mut memo = vec![None; refs.len()];
    let mut total = nodes(schema);
    for i in 0..refs.len() {
        total = total.saturating_add(expanded(i, schema, &refs, &leads_to, &mut memo));
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
    ) -> ApiResult<()> {
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
        .map_err(|_| ApiError::internal())?;
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ApiError::validation(errors))
        }
    }

    /// Checks that the tenant has this record type (404 otherwise) and returns its
    /// validator, if it has a schema.
    pub async fn validator(
        &self,
        store: &Store,
        scope: &TenantScope,
        record_type: &str,
    ) -> ApiResult<Option<Arc<jsonschema::Validator>>> {
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
                ApiError::internal()
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
pub fn check_data(data: &Value, limit: usize) -> ApiResult<()> {
    if !data.is_object() {
        return Err(ApiError::field("/data", "must be a JSON object"));
    }
    check_json(data, "/data", MAX_DATA_DEPTH)?;
    let size = crate::store::records::json_len(data);
    if size > limit {
        return Err(ApiError::new(
            axum::http::StatusCode::PAYLOAD_TOO_LARGE,
            "record_too_large",
            format!("the record's data is {size} bytes as JSON; records may hold at most {limit}"),
        )
        .with_details(
            serde_json::json!({ "path": "/data", "size_bytes": size, "limit_bytes": limit }),
        ));
    }
    Ok(())
}

/// The checks every record write passes, whoever makes it (a person, an API key, a plugin
/// or an automation): the data's shape, the type's schema and the type's pipeline.
pub struct WriteRules<'a> {
    pub store: &'a Store,
    pub schemas: &'a SchemaCache,
    pub workflows: &'a Workflows,
}

impl WriteRules<'_> {
    async fn pipeline(
        &self,
        scope: &TenantScope,
        record_type: &str,
    ) -> ApiResult<Option<Pipeline>> {
        Ok(self
            .workflows
            .spec(self.store, scope)
            .await?
            .and_then(|t| t.pipeline(record_type).cloned()))
    }

    /// Checks a new record and returns the stage to store it in: the one asked for, or the
    /// first stage of the type's pipeline.
    pub async fn create(
        &self,
        scope: &TenantScope,
        record_type: &str,
        stage: Option<String>,
        data: &Value,
    ) -> ApiResult<Option<String>> {
        check_data(data, self.schemas.record_limit())?;
        if let Some(stage) = &stage {
            check_stage(stage, "/stage")?;
        }
        self.schemas
            .validate(self.store, scope, record_type, data)
            .await?;
        let Some(pipeline) = self.pipeline(scope, record_type).await? else {
            return Ok(stage);
        };
        let to = stage.unwrap_or_else(|| pipeline.first().id.clone());
        pipeline
            .check_move(None, &to, data)
            .map_err(|refusal| refusal.into_error(&to))?;
        Ok(Some(to))
    }

    /// Checks a change: new data against the schema, a new stage against the pipeline, and
    /// that a record in a stage keeps the fields the stage requires. `current` is the
    /// record as the caller read it, at the version it will write against; it is needed
    /// when [`WriteRules::needs_current`] says so.
    pub async fn update(
        &self,
        scope: &TenantScope,
        record_type: &str,
        current: Option<&RecordRow>,
        stage: Option<&str>,
        data: Option<&Value>,
    ) -> ApiResult<()> {
        if let Some(data) = data {
            check_data(data, self.schemas.record_limit())?;
            self.schemas
                .validate(self.store, scope, record_type, data)
                .await?;
        }
        if let Some(stage) = stage {
            check_stage(stage, "/stage")?;
        }
        let Some(pipeline) = self.pipeline(scope, record_type).await? else {
            return Ok(());
        };
        if stage.is_none() && data.is_none() {
            return Ok(());
        }
        let Some(current) = current else {
            // The tenant's template was applied between the caller's look and this one.
            return Err(ApiError::conflict(
                "template_changed",
                "the tenant's pipelines changed while this change was checked; send it again",
            ));
        };
        let data = data.unwrap_or(&current.data.0);
        let to = stage.or(current.stage.as_deref());
        let Some(to) = to else {
            return Ok(());
        };
        pipeline
            .check_move(current.stage.as_deref(), to, data)
            .map_err(|refusal| refusal.into_error(to))
    }

    /// Whether a change to this type needs the current record to be checked: the type has
    /// a pipeline and the change moves the record or replaces its data.
    pub async fn needs_current(
        &self,
        scope: &TenantScope,
        record_type: &str,
        stage: Option<&str>,
        data: Option<&Value>,
    ) -> ApiResult<bool> {
        Ok((stage.is_some() || data.is_some())
            && self.pipeline(scope, record_type).await?.is_some())
    }
}

pub fn unknown_type(record_type: &str) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::NOT_FOUND,
        "unknown_record_type",
        "this tenant has no such record type; GET /api/record-types lists them",
    )
    .with_details(serde_json::json!({ "type": record_type }))
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
        assert_eq!(decode_cursor(&encode_cursor(id)).unwrap(), id);
        assert!(decode_cursor("not a cursor").is_err());
        assert!(decode_cursor("").is_err());
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
}
