//! The storage plugins reach through their capabilities, bound to one tenant and one
//! plugin. The runtime has checked the grant before any of these run. Calls come from the
//! blocking thread running the plugin, so they block on the async store.

use std::sync::Arc;

use serde_json::Value;
use streamflow_runtime::{Capability, Grants, HostError, HostServices, PluginRecord};
use uuid::Uuid;

use std::sync::atomic::{AtomicU32, Ordering};

use crate::error::ApiError;
use crate::events::{Origin, pii_fields, strip_pointers};
use crate::records::{
    MAX_DATA_DEPTH, SchemaCache, WriteRules, check_json, check_stage, valid_type_id,
};
use crate::store::events::NewEvent;
use crate::store::plugins::KvSet;
use crate::store::records::{RecordFilter, RecordRow};
use crate::store::writer::{RecordWrite, RecordWriter, WriteOutcome};
use crate::store::{Store, TenantScope};
use crate::templates::Workflows;

/// Keys one tenant × plugin may hold in `kv`.
const MAX_KV_KEYS: i64 = 10_000;
/// Records one `records.list` returns at most.
const MAX_LIST: u32 = 100;
/// Most record JSON one `records.list` call hands a plugin (the list ends early beyond it).
const PLUGIN_LIST_BYTES: usize = 4 * 1024 * 1024;
/// Records and events one plugin call may create: bounds what an automation chain can fan
/// out to at each level.
const MAX_CREATED_PER_CALL: u32 = 100;
/// Largest event payload a plugin may emit.
const MAX_EVENT_PAYLOAD: usize = 64 * 1024;

pub(super) struct KernelServices {
    pub handle: tokio::runtime::Handle,
    pub store: Store,
    pub writer: RecordWriter,
    pub schemas: Arc<SchemaCache>,
    pub scope: TenantScope,
    pub workflows: Arc<Workflows>,
    pub plugin_id: String,
    pub version: String,
    /// What the installation was granted: records lose their personal fields without
    /// `records:read-pii`.
    pub grants: Grants,
    /// Bytes the installation may keep in `kv`.
    pub kv_bytes: u64,
    /// The chain root of what a call the dispatcher did not make creates: one per call, so
    /// the events one API call emits share one budget (see `events`).
    pub call_root: Uuid,
    /// Set when the dispatcher makes the call: writes are idempotent per origin.
    pub origin: Option<Origin>,
    /// Records and events created so far in this call (numbers derived ids).
    pub created: AtomicU32,
}

fn unavailable(e: impl std::fmt::Display) -> HostError {
    tracing::warn!(error = %e, "plugin storage call failed");
    HostError::Unavailable("storage is unavailable; try again later".into())
}

/// [`invalid`], for a write that carried fields the plugin may not see (`hidden`, pointers
/// into `data`): an error about one of them says which field, never what it holds.
fn invalid_hiding(mut e: ApiError, hidden: &[String]) -> HostError {
    // An error at a hidden field, inside one, or at an object holding one (its message may
    // quote the whole object).
    let related = |a: &str, b: &str| a == b || a.starts_with(&format!("{b}/"));
    let covers = |path: &str| {
        path.strip_prefix("/data").is_some_and(|at| {
            hidden
                .iter()
                .any(|h| h.is_empty() || related(at, h) || related(h, at) || at.is_empty())
        })
    };
    let mut masked = false;
    if let Some(Value::Array(errors)) = e.details.get_mut("errors") {
        for error in errors {
            if error
                .get("path")
                .and_then(Value::as_str)
                .is_some_and(covers)
            {
                error["message"] = Value::String(
                    "does not match the record type's schema (the value is personal data this \
                     plugin may not read, so it is not shown)"
                        .into(),
                );
                masked = true;
            }
        }
    }
    if masked {
        e.message = "the record's data does not match its type's schema".into();
    }
    invalid(e)
}

fn invalid(e: ApiError) -> HostError {
    let details = e
        .details
        .get("errors")
        .map(|d| format!(" {d}"))
        .unwrap_or_default();
    HostError::Invalid(format!("{}{details}", e.message))
}

fn to_plugin(row: RecordRow, pii: &[String]) -> PluginRecord {
    let mut data = row.data.0;
    strip_pointers(&mut data, pii);
    PluginRecord {
        id: row.id.to_string(),
        record_type: row.record_type,
        stage: row.stage,
        version: row.version as u64,
        data: data.to_string(),
        created_at: row.created_at,
        updated_at: row.updated_at,
    }
}

impl KernelServices {
    fn actor(&self) -> String {
        format!("plugin:{}", self.plugin_id)
    }

    fn rules(&self) -> WriteRules<'_> {
        WriteRules {
            store: &self.store,
            schemas: &self.schemas,
            workflows: &self.workflows,
        }
    }

    fn depth(&self) -> i64 {
        self.origin.as_ref().map_or(0, |o| o.depth)
    }

    fn root(&self) -> Option<Uuid> {
        Some(self.origin.as_ref().map_or(self.call_root, |o| o.root))
    }

    /// The fields of `record_type` this plugin may not see (none with `records:read-pii`).
    async fn hidden(&self, record_type: &str) -> Result<Vec<String>, HostError> {
        if self.grants.allows(Capability::RecordsReadPii) {
            return Ok(Vec::new());
        }
        pii_fields(&self.store, &self.scope, record_type)
            .await
            .map_err(unavailable)
    }

    /// The id of the next thing this call creates: derived from the origin when the
    /// dispatcher made the call (the same on a repeated run), fresh otherwise.
    fn next_id(&self) -> Result<Uuid, HostError> {
        let n = self.created.fetch_add(1, Ordering::SeqCst);
        if n >= MAX_CREATED_PER_CALL {
            return Err(HostError::Limit(format!(
                "one call creates at most {MAX_CREATED_PER_CALL} records and events"
            )));
        }
        Ok(match &self.origin {
            Some(origin) => origin.derived_id(n),
            None => Uuid::now_v7(),
        })
    }

    fn parse_data(&self, data: &str) -> Result<Value, HostError> {
        let value: Value = serde_json::from_str(data)
            .map_err(|e| HostError::Invalid(format!("data is not JSON: {e}")))?;
        if !value.is_object() {
            return Err(HostError::Invalid("data must be a JSON object".into()));
        }
        check_json(&value, "/data", MAX_DATA_DEPTH).map_err(invalid)?;
        Ok(value)
    }

    fn check_type(record_type: &str) -> Result<(), HostError> {
        if valid_type_id(record_type) {
            Ok(())
        } else {
            Err(HostError::Invalid(format!(
                "{record_type:?} is not a record type"
            )))
        }
    }
}

/// Puts back into `data` each `hidden` field it lacks, from `stored`.
fn keep_hidden(data: &mut Value, stored: &Value, hidden: &[String]) {
    for pointer in hidden {
        if pointer.is_empty() {
            // Nothing of the record is visible: the update cannot change its data.
            *data = stored.clone();
            return;
        }
        let (Some(value), None) = (stored.pointer(pointer), data.pointer(pointer)) else {
            continue;
        };
        crate::plugins::config::set_pointer(data, pointer, value.clone());
    }
}

impl HostServices for KernelServices {
    fn kv_get(&self, key: &str) -> Result<Option<Vec<u8>>, HostError> {
        self.handle
            .block_on(self.store.kv_get(&self.scope, &self.plugin_id, key))
            .map_err(unavailable)
    }

    fn kv_set(&self, key: &str, value: &[u8]) -> Result<(), HostError> {
        let quota = i64::try_from(self.kv_bytes).unwrap_or(i64::MAX);
        let outcome = self
            .handle
            .block_on(self.store.kv_set(
                &self.scope,
                &self.plugin_id,
                key,
                value,
                MAX_KV_KEYS,
                quota,
            ))
            .map_err(unavailable)?;
        match outcome {
            KvSet::Stored => Ok(()),
            KvSet::TooManyKeys => Err(HostError::Limit(format!(
                "at most {MAX_KV_KEYS} keys per tenant"
            ))),
            KvSet::OverQuota { used } => Err(HostError::Limit(format!(
                "kv quota: {used} of {quota} bytes (keys and values) used; this write needs {} more",
                key.len() + value.len()
            ))),
        }
    }

    fn kv_delete(&self, key: &str) -> Result<(), HostError> {
        self.handle
            .block_on(self.store.kv_delete(&self.scope, &self.plugin_id, key))
            .map_err(unavailable)
    }

    fn record_get(&self, record_type: &str, id: &str) -> Result<Option<PluginRecord>, HostError> {
        Self::check_type(record_type)?;
        let Ok(id) = Uuid::parse_str(id) else {
            return Ok(None);
        };
        self.handle.block_on(async {
            let row = self
                .store
                .get_record(&self.scope, record_type, id)
                .await
                .map_err(unavailable)?;
            let hidden = self.hidden(record_type).await?;
            Ok(row.map(|r| to_plugin(r, &hidden)))
        })
    }

    fn record_list(
        &self,
        record_type: &str,
        stage: Option<&str>,
        limit: u32,
    ) -> Result<Vec<PluginRecord>, HostError> {
        Self::check_type(record_type)?;
        if let Some(stage) = stage {
            check_stage(stage, "stage").map_err(invalid)?;
        }
        let filter = RecordFilter {
            stage: stage.map(str::to_string),
            ..Default::default()
        };
        let limit = limit.clamp(1, MAX_LIST) as i64;
        self.handle.block_on(async {
            let (rows, _) = self
                .store
                .list_records(&self.scope, record_type, &filter, limit, PLUGIN_LIST_BYTES)
                .await
                .map_err(unavailable)?;
            let hidden = self.hidden(record_type).await?;
            Ok(rows.into_iter().map(|r| to_plugin(r, &hidden)).collect())
        })
    }

    fn record_create(
        &self,
        record_type: &str,
        stage: Option<&str>,
        data: &str,
    ) -> Result<PluginRecord, HostError> {
        Self::check_type(record_type)?;
        let data = self.parse_data(data)?;
        let id = self.next_id()?;
        self.handle.block_on(async {
                        if self.origin.is_some()
                && let Some(row) = self
                    .store
                    .record_by_id(&self.scope, id)
                    .await
                    .map_err(unavailable)?
            {
                // Created by an earlier run of the same delivery.
                if row.record_type != record_type {
                    return Err(HostError::Conflict(format!(
                        "a repeated run of this delivery created a {} here before, not a {record_type}",
                        row.record_type
                    )));
                }
                return Ok(to_plugin(row, &self.hidden(record_type).await?));
            }
            let stage = self
                .rules()
                .create(&self.scope, record_type, stage.map(str::to_string), &data)
                .await
                .map_err(invalid)?;
            let outcome = self
                .writer
                .submit(RecordWrite::Create {
                    scope: self.scope,
                    id,
                    record_type: record_type.to_string(),
                    stage,
                    data,
                    score: None,
                    events: Vec::new(),
                    created_by: None,
                    actor: self.actor(),
                    depth: self.depth(),
                    root: self.root(),
                })
                .await
                .map_err(unavailable)?;
            match outcome {
                WriteOutcome::Created(row) => Ok(to_plugin(row, &self.hidden(record_type).await?)),
                _ => Err(HostError::Unavailable("unexpected write outcome".into())),
            }
        })
    }

    fn record_update(
        &self,
        record_type: &str,
        id: &str,
        stage: Option<&str>,
        data: &str,
        expected_version: Option<u64>,
    ) -> Result<PluginRecord, HostError> {
        Self::check_type(record_type)?;
        let not_found = || HostError::Invalid(format!("no {record_type} {id}"));
        let id = Uuid::parse_str(id).map_err(|_| not_found())?;
        let mut data = self.parse_data(data)?;
        self.handle.block_on(async {
            let current = self
                .store
                .get_record(&self.scope, record_type, id)
                .await
                .map_err(unavailable)?
                .ok_or_else(not_found)?;
            // Fields the plugin cannot see, and so leaves out, keep their stored values: an
            // update replaces data as a whole and must not erase them.
            let hidden = self.hidden(record_type).await?;
            keep_hidden(&mut data, &current.data.0, &hidden);
            let expected = expected_version.map_or(current.version, |v| v as i64);
            if expected != current.version {
                return Err(HostError::Conflict(format!(
                    "the record is at version {}; read it again",
                    current.version
                )));
            }
            self.rules()
                .update(&self.scope, record_type, Some(&current), stage, Some(&data))
                .await
                .map_err(|e| invalid_hiding(e, &hidden))?;
            let outcome = self
                .writer
                .submit(RecordWrite::Update {
                    scope: self.scope,
                    record_type: record_type.to_string(),
                    id,
                    expected_version: expected,
                    data: Some(data),
                    stage: stage.map(str::to_string),
                    score: None,
                    events: Vec::new(),
                    actor: self.actor(),
                    depth: self.depth(),
                    root: self.root(),
                })
                .await
                .map_err(unavailable)?;
            match outcome {
                WriteOutcome::Updated(row) => Ok(to_plugin(row, &hidden)),
                WriteOutcome::NotFound => Err(not_found()),
                WriteOutcome::VersionConflict { current_version } => Err(HostError::Conflict(
                    format!("the record is at version {current_version}; read it again"),
                )),
                _ => Err(HostError::Unavailable("unexpected write outcome".into())),
            }
        })
    }

    fn emit_event(&self, kind: &str, payload: &str) -> Result<(), HostError> {
        let valid_kind = (1..=64).contains(&kind.len())
            && kind.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'_' || b == b'-'
            });
        if !valid_kind {
            return Err(HostError::Invalid(
                "kind: 1 to 64 of a-z, 0-9, '.', '_' and '-'".into(),
            ));
        }
        if payload.len() > MAX_EVENT_PAYLOAD {
            return Err(HostError::Limit(format!(
                "payloads are at most {MAX_EVENT_PAYLOAD} bytes"
            )));
        }
        let payload: Value = serde_json::from_str(payload)
            .map_err(|e| HostError::Invalid(format!("payload is not JSON: {e}")))?;
        check_json(&payload, "/payload", MAX_DATA_DEPTH).map_err(invalid)?;
        let kind = format!("plugin.{}.{kind}", self.plugin_id);
        let id = self.next_id()?;
        self.handle
            .block_on(self.store.insert_event(
                &self.scope,
                &NewEvent {
                    id,
                    kind: &kind,
                    record: None,
                    actor: &self.actor(),
                    payload: &payload,
                    depth: self.depth(),
                    root: self.root(),
                },
            ))
            .map_err(unavailable)
    }

    /// Counts the denial in its minute's audit row; only the window's first denial is
    /// logged, so a plugin looping on a refused call costs one row and one line a minute.
    fn denied(&self, capability: Capability, operation: &str, calls: u32) {
        let result = self.handle.block_on(self.store.audit_denied(
            &self.scope,
            &self.plugin_id,
            &self.version,
            capability.as_str(),
            operation,
            calls,
        ));
        match result {
            Ok(total) if total == i64::from(calls) => tracing::warn!(
                tenant = %self.scope.tenant_id(),
                plugin = %self.plugin_id,
                capability = %capability,
                operation,
                "plugin call denied: capability not granted (further denials this minute are counted in the audit, not logged)"
            ),
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "could not audit a denied plugin call"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::keep_hidden;
    use serde_json::json;

    #[test]
    fn errors_about_hidden_fields_do_not_quote_them() {
        use crate::error::{ApiError, FieldError};
        let error = || {
            ApiError::validation(vec![
                FieldError::new("/data/email", "\"ada@secret.test\" is not a \"uri\""),
                FieldError::new("/data/budget", "-5 is less than the minimum of 0"),
            ])
        };
        let text = |e: streamflow_runtime::HostError| format!("{e:?}");
        let shown = text(super::invalid_hiding(error(), &["/email".to_string()]));
        assert!(!shown.contains("ada@secret.test"), "{shown}");
        assert!(
            shown.contains("/data/email") && shown.contains("-5 is less"),
            "{shown}"
        );
        let all = text(super::invalid_hiding(error(), &[String::new()]));
        assert!(!all.contains("ada@secret") && !all.contains("-5"), "{all}");
        assert!(text(super::invalid_hiding(error(), &[])).contains("ada@secret.test"));
    }

    #[test]
    fn an_update_keeps_the_fields_the_plugin_could_not_see() {
        let stored = json!({"name": "Ada", "contact": {"phone": "1", "city": "Oslo"}, "budget": 5});
        let hidden = ["/name".to_string(), "/contact/phone".to_string()];
        // Left out (as the plugin was shown the record): kept.
        let mut data = json!({"budget": 6, "contact": {"city": "Bergen"}});
        keep_hidden(&mut data, &stored, &hidden);
        assert_eq!(
            data,
            json!({"name": "Ada", "contact": {"phone": "1", "city": "Bergen"}, "budget": 6})
        );
        // Given: the plugin's value stands; a parent that is no longer an object is left be.
        let mut data = json!({"name": "Bo", "contact": "none"});
        keep_hidden(&mut data, &stored, &hidden);
        assert_eq!(data, json!({"name": "Bo", "contact": "none"}));
        // Nothing visible: the data cannot change.
        let mut data = json!({"x": 1});
        keep_hidden(&mut data, &stored, &[String::new()]);
        assert_eq!(data, stored);
    }
}
