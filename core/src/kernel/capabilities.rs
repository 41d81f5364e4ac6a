//! What plugins reach through their capabilities, bound to one tenant and one
//! installation. The runtime has checked the grant before any of these run. Calls come from
//! the blocking thread running the plugin, so they block on the async kernel. Records go
//! through the kernel's record service like every other writer's (so a lead a plugin
//! creates is scored); this module only translates its errors into `host-error`s, and
//! hides what the grants do not allow.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Weak};

use serde_json::Value;
use streamflow_runtime::{
    Capability, ConnectionInfo, Hook, HostError, HostServices, HttpResponse, OutboundRequest,
    PluginRecord,
};
use uuid::Uuid;

use super::Kernel;
use super::records::{NewId, NewRecord, RecordChange, WriteContext};
use super::visibility::{pii_fields, strip_pointers};
use crate::error::{FieldError, RecordError, summarize};
use crate::plugins::{Active, Capabilities};
use crate::records::{MAX_DATA_DEPTH, Origin, check_json, check_stage, valid_type_id};
use crate::store::TenantScope;
use crate::store::events::NewEvent;
use crate::store::plugins::KvSet;
use crate::store::records::{RecordFilter, RecordRow};

/// Keys one tenant × plugin may hold in `kv`.
const MAX_KV_KEYS: i64 = 10_000;
/// Records one `records.list` returns at most.
const MAX_LIST: u32 = 100;
/// Most record JSON one `records.list` call hands a plugin (the list ends early beyond it).
const PLUGIN_LIST_BYTES: usize = 4 * 1024 * 1024;
/// Records and events one plugin call of an automation chain (a delivery the dispatcher
/// makes) may create: bounds what a chain can fan out to at each level.
const MAX_CREATED_PER_CALL: u32 = 100;
/// Largest event payload a plugin may emit.
const MAX_EVENT_PAYLOAD: usize = 64 * 1024;

/// Connects the plugin host to the kernel: the services of each call. It holds the kernel
/// weakly (the kernel holds the host).
pub(super) struct Connector {
    pub kernel: Weak<Kernel>,
}

impl Capabilities for Connector {
    fn services(
        &self,
        scope: TenantScope,
        active: &Arc<Active>,
        hook: Hook,
        origin: Option<Origin>,
    ) -> Option<Arc<dyn HostServices>> {
        let kernel = self.kernel.upgrade()?;
        Some(Arc::new(KernelServices {
            handle: tokio::runtime::Handle::current(),
            kv_bytes: kernel.plugins.kv_quota(),
            kernel,
            scope,
            active: active.clone(),
            // What a scorer writes while it scores is not scored again.
            scores: hook != Hook::ScoreLead,
            call_root: Uuid::now_v7(),
            origin,
            created: AtomicU32::new(0),
            creations: AtomicU32::new(0),
        }))
    }
}

pub(super) struct KernelServices {
    pub(super) handle: tokio::runtime::Handle,
    pub(super) kernel: Arc<Kernel>,
    pub(super) scope: TenantScope,
    /// The installation: its id and version, its grants (records lose their personal
    /// fields without `records:read-pii`), its manifest's hosts and connections.
    pub(super) active: Arc<Active>,
    /// Bytes the installation may keep in `kv`.
    kv_bytes: u64,
    /// Whether the leads this call writes are scored.
    scores: bool,
    /// The chain root of what a call the dispatcher did not make creates: one per call, so
    /// the events one API call emits share one budget (see `events`).
    call_root: Uuid,
    /// Set when the dispatcher makes the call: writes are idempotent per origin.
    origin: Option<Origin>,
    /// Records and events created so far in this call with ids from `next_id` (numbers
    /// derived ids).
    created: AtomicU32,
    /// Everything created so far in this call, keyed records too (the dispatcher's cap).
    creations: AtomicU32,
}

fn unavailable(e: impl std::fmt::Display) -> HostError {
    tracing::warn!(error = %e, "plugin storage call failed");
    HostError::Unavailable("storage is unavailable; try again later".into())
}

/// A refused record write as the plugin is told it. `hidden` are the fields (pointers into
/// `data`) the plugin may not see: an error about one of them says which field, never what
/// it holds.
fn record_error(e: RecordError, hidden: &[String]) -> HostError {
    match e {
        RecordError::NotFound => HostError::Invalid("no such record".into()),
        RecordError::VersionConflict { current } => {
            HostError::Conflict(format!("the record is at version {current}; read it again"))
        }
        RecordError::KeyTaken => HostError::Conflict(
            "a record exists under this key; read it with keyed-records.get and update it".into(),
        ),
        RecordError::IdTaken { record_type } => HostError::Conflict(format!(
            "a repeated run of this delivery created a {record_type} here before"
        )),
        e if e.is_transient() => unavailable(e),
        RecordError::Invalid(errors) => invalid_fields(errors, hidden, None),
        e @ RecordError::StageRefused { .. } => {
            invalid_fields(e.field_errors(), hidden, Some(e.to_string()))
        }
        e => HostError::Invalid(e.to_string()),
    }
}

/// `Invalid` listing each field error, those at or around a hidden field masked; `summary`
/// (or one made from the errors) leads, unless it could quote a hidden value.
fn invalid_fields(
    mut errors: Vec<FieldError>,
    hidden: &[String],
    summary: Option<String>,
) -> HostError {
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
    for error in &mut errors {
        if covers(&error.path) {
            error.message = "does not match the record type's schema (the value is personal data \
                             this plugin may not read, so it is not shown)"
                .into();
            masked = true;
        }
    }
    let summary = if masked {
        "the record's data does not match its type's schema".to_string()
    } else {
        summary.unwrap_or_else(|| summarize(&errors))
    };
    HostError::Invalid(format!("{summary} {}", serde_json::json!(errors)))
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
        format!("plugin:{}", self.active.plugin_id)
    }

    fn context(&self) -> WriteContext {
        WriteContext {
            scope: self.scope,
            actor: self.actor(),
            created_by: None,
            depth: self.depth(),
            root: self.root(),
            score: self.scores,
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
        if self.active.grants.allows(Capability::RecordsReadPii) {
            return Ok(Vec::new());
        }
        pii_fields(&self.kernel.store, &self.scope, record_type)
            .await
            .map_err(unavailable)
    }

    /// The id of the next thing this call creates: derived from the origin when the
    /// dispatcher made the call (the same on a repeated run), fresh otherwise.
    fn next_id(&self) -> Result<NewId, HostError> {
        self.count_created()?;
        let n = self.created.fetch_add(1, Ordering::SeqCst);
        Ok(match &self.origin {
            Some(origin) => NewId::Derived(origin.derived_id(n)),
            None => NewId::Fresh,
        })
    }

    /// Counts one more record or event this call creates, against the cap of a dispatcher
    /// call. (Derived ids are numbered by their own counter: a keyed create a repeated run
    /// skips, because it finds the record, must not shift the numbers of what follows.)
    fn count_created(&self) -> Result<(), HostError> {
        let n = self.creations.fetch_add(1, Ordering::SeqCst);
        // A call the dispatcher made is one level of an automation chain: its fan-out is
        // capped. Other calls (a schedule's import, a webhook, an action an admin runs) are
        // bounded by the installation's record-writes and events quotas alone.
        if self.origin.is_some() && n >= MAX_CREATED_PER_CALL {
            return Err(HostError::Limit(format!(
                "one call creates at most {MAX_CREATED_PER_CALL} records and events"
            )));
        }
        Ok(())
    }

    fn parse_data(&self, data: &str) -> Result<Value, HostError> {
        let value: Value = serde_json::from_str(data)
            .map_err(|e| HostError::Invalid(format!("data is not JSON: {e}")))?;
        if !value.is_object() {
            return Err(HostError::Invalid("data must be a JSON object".into()));
        }
        check_json(&value, "/data", MAX_DATA_DEPTH)
            .map_err(|e| invalid_fields(vec![e], &[], None))?;
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

impl HostServices for KernelServices {
    fn kv_get(&self, key: &str) -> Result<Option<Vec<u8>>, HostError> {
        self.handle
            .block_on(
                self.kernel
                    .store
                    .kv_get(&self.scope, &self.active.plugin_id, key),
            )
            .map_err(unavailable)
    }

    fn kv_set(&self, key: &str, value: &[u8]) -> Result<(), HostError> {
        let quota = i64::try_from(self.kv_bytes).unwrap_or(i64::MAX);
        let outcome = self
            .handle
            .block_on(self.kernel.store.kv_set(
                &self.scope,
                &self.active.plugin_id,
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
            .block_on(
                self.kernel
                    .store
                    .kv_delete(&self.scope, &self.active.plugin_id, key),
            )
            .map_err(unavailable)
    }

    fn record_get(&self, record_type: &str, id: &str) -> Result<Option<PluginRecord>, HostError> {
        Self::check_type(record_type)?;
        let Ok(id) = Uuid::parse_str(id) else {
            return Ok(None);
        };
        self.handle.block_on(async {
            let row = self
                .kernel
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
            check_stage(stage, "stage").map_err(|e| invalid_fields(vec![e], &[], None))?;
        }
        let filter = RecordFilter {
            stage: stage.map(str::to_string),
            ..Default::default()
        };
        let limit = limit.clamp(1, MAX_LIST) as i64;
        self.handle.block_on(async {
            let (rows, _) = self
                .kernel
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
            let hidden = self.hidden(record_type).await?;
            let new = NewRecord {
                id,
                record_type: record_type.to_string(),
                stage: stage.map(str::to_string),
                data,
            };
            let row = self
                .kernel
                .records()
                .create(&self.context(), new)
                .await
                .map_err(|e| record_error(e, &[]))?;
            Ok(to_plugin(row, &hidden))
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
        let data = self.parse_data(data)?;
        self.handle.block_on(async {
            // Fields the plugin cannot see, and so leaves out, keep their stored values: an
            // update replaces data as a whole and must not erase them.
            let hidden = self.hidden(record_type).await?;
            let change = RecordChange {
                data: Some(data),
                stage: stage.map(str::to_string),
                expected_version: expected_version.map(|v| v as i64),
                keep: hidden.clone(),
            };
            match self
                .kernel
                .records()
                .update(&self.context(), record_type, id, change)
                .await
            {
                Ok(row) => Ok(to_plugin(row, &hidden)),
                Err(RecordError::NotFound) => Err(not_found()),
                Err(e) => Err(record_error(e, &hidden)),
            }
        })
    }

    fn schedule_soon(&self, schedule: &str) -> Result<(), HostError> {
        if !self.active.manifest.schedules.contains_key(schedule) {
            return Err(HostError::Invalid(format!(
                "{schedule:?} is not one of this plugin's schedules"
            )));
        }
        if self.active.overrides.schedules.contains_key(schedule) {
            // The provider chose this installation's pace: the plugin cannot quicken it.
            return Err(HostError::Denied(format!(
                "the provider set the interval of schedule {schedule:?} for this installation; it runs no sooner"
            )));
        }
        let at = crate::store::now_micros()
            + streamflow_runtime::integration::MIN_SCHEDULE.as_micros() as i64;
        self.handle.block_on(async {
            self.kernel
                .store
                .schedule_soon(&self.scope, &self.active.plugin_id, schedule, at)
                .await
                .map_err(unavailable)
                .map(|_| ())
        })
    }

    fn record_get_keyed(
        &self,
        record_type: &str,
        key: &str,
    ) -> Result<Option<PluginRecord>, HostError> {
        Self::check_type(record_type)?;
        self.handle.block_on(async {
            let store = &self.kernel.store;
            let plugin = &self.active.plugin_id;
            let Some(id) = store
                .record_key(&self.scope, plugin, record_type, key)
                .await
                .map_err(unavailable)?
            else {
                return Ok(None);
            };
            let row = store
                .get_record(&self.scope, record_type, id)
                .await
                .map_err(unavailable)?;
            let hidden = self.hidden(record_type).await?;
            Ok(row.map(|r| to_plugin(r, &hidden)))
        })
    }

    fn record_create_keyed(
        &self,
        record_type: &str,
        key: &str,
        stage: Option<&str>,
        data: &str,
    ) -> Result<PluginRecord, HostError> {
        Self::check_type(record_type)?;
        let data = self.parse_data(data)?;
        self.count_created()?;
        self.handle.block_on(async {
            let store = &self.kernel.store;
            // The key's id is reserved first: a run that dies before the record is written
            // leaves the reservation, and the next create writes the record under it.
            let candidate = Uuid::now_v7();
            let id = store
                .reserve_record_key(&self.scope, &self.active.plugin_id, record_type, key, candidate)
                .await
                .map_err(unavailable)?;
            if store
                .get_record(&self.scope, record_type, id)
                .await
                .map_err(unavailable)?
                .is_some()
            {
                return Err(HostError::Conflict(format!(
                    "a {record_type} exists under this key; read it with keyed-records.get and update it"
                )));
            }
            let hidden = self.hidden(record_type).await?;
            let new = NewRecord {
                id: NewId::Keyed(id),
                record_type: record_type.to_string(),
                stage: stage.map(str::to_string),
                data,
            };
            match self.kernel.records().create(&self.context(), new).await {
                Ok(row) => Ok(to_plugin(row, &hidden)),
                Err(e) => {
                    // Refused (a type, stage or field the record type does not allow): the
                    // reservation this call made goes too, so refused creates leave no rows.
                    // One another call made, or one kept after a transient failure, stays.
                    if id == candidate && !e.is_transient() && !matches!(e, RecordError::KeyTaken)
                        && let Err(release) = store
                            .release_record_key(&self.scope, &self.active.plugin_id, record_type, key, id)
                            .await
                    {
                        tracing::warn!(error = %release, "could not release a record key");
                    }
                    Err(record_error(e, &[]))
                }
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
        check_json(&payload, "/payload", MAX_DATA_DEPTH)
            .map_err(|e| invalid_fields(vec![e], &[], None))?;
        let kind = format!("plugin.{}.{kind}", self.active.plugin_id);
        let id = match self.next_id()? {
            NewId::Derived(id) | NewId::Keyed(id) => id,
            NewId::Fresh => Uuid::now_v7(),
        };
        self.handle
            .block_on(self.kernel.store.insert_event(
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

    fn http_send(&self, request: OutboundRequest) -> Result<HttpResponse, HostError> {
        self.handle.block_on(self.send_http(request))
    }

    fn connection(&self, id: &str) -> Result<Option<ConnectionInfo>, HostError> {
        self.handle
            .block_on(
                self.kernel
                    .connections()
                    .info(&self.scope, &self.active.manifest, id),
            )
            .map_err(unavailable)
    }

    fn connections(&self) -> Result<Vec<ConnectionInfo>, HostError> {
        self.handle.block_on(async {
            let mut all = Vec::new();
            for id in self.active.manifest.connections.keys() {
                let info = self
                    .kernel
                    .connections()
                    .info(&self.scope, &self.active.manifest, id)
                    .await
                    .map_err(unavailable)?;
                all.extend(info);
            }
            Ok(all)
        })
    }

    /// Reads one of the installation's stored secrets; each read (found or not) is
    /// counted in the audit, which the provider sees.
    fn secret(&self, pointer: &str) -> Result<Option<String>, HostError> {
        self.handle.block_on(async {
            let row = self
                .kernel
                .store
                .get_installation(&self.scope, &self.active.plugin_id)
                .await
                .map_err(unavailable)?
                .ok_or_else(|| HostError::Unavailable("the installation is gone".into()))?;
            let secrets = self.kernel.plugins.open_secrets(&row).map_err(|_| {
                tracing::error!(tenant = %self.scope.tenant_id(), plugin = %self.active.plugin_id,
                    "an installation's secrets could not be opened (wrong STREAMFLOW_SECRET_KEY?)");
                HostError::Unavailable("the installation's secrets cannot be read".into())
            })?;
            // Audited by field: a pointer that names none of the schema's secrets is one
            // row, so a plugin cannot fill the audit with made-up names.
            let known = self
                .active
                .manifest
                .secret_fields()
                .iter()
                .any(|f| f == pointer);
            let operation = if known {
                format!("secrets.get {pointer}")
            } else {
                "secrets.get (not a secret field)".to_string()
            };
            if let Err(e) = self
                .kernel
                .store
                .audit_call(
                    &self.scope,
                    &self.active.plugin_id,
                    &self.active.version,
                    Capability::Secrets.as_str(),
                    &operation,
                    "allowed",
                    1,
                )
                .await
            {
                // A read that cannot be audited is not made.
                tracing::error!(error = %e, "could not audit a secret read");
                return Err(unavailable(e));
            }
            if !known {
                return Ok(None);
            }
            Ok(secrets.get(pointer).map(|v| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            }))
        })
    }

    /// Counts the denial in its minute's audit row; only the window's first denial is
    /// logged, so a plugin looping on a refused call costs one row and one line a minute.
    fn denied(&self, capability: Capability, operation: &str, calls: u32) {
        let result = self.handle.block_on(self.kernel.store.audit_call(
            &self.scope,
            &self.active.plugin_id,
            &self.active.version,
            capability.as_str(),
            operation,
            "denied",
            calls,
        ));
        match result {
            Ok(total) if total == i64::from(calls) => tracing::warn!(
                tenant = %self.scope.tenant_id(),
                plugin = %self.active.plugin_id,
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
    use super::{invalid_fields, record_error};
    use crate::error::{FieldError, RecordError, StageRefusal};

    #[test]
    fn errors_about_hidden_fields_do_not_quote_them() {
        let errors = || {
            vec![
                FieldError::new("/data/email", "\"ada@secret.test\" is not a \"uri\""),
                FieldError::new("/data/budget", "-5 is less than the minimum of 0"),
            ]
        };
        let text = |e: streamflow_runtime::HostError| format!("{e:?}");
        let shown = text(invalid_fields(errors(), &["/email".to_string()], None));
        assert!(!shown.contains("ada@secret.test"), "{shown}");
        assert!(
            shown.contains("/data/email") && shown.contains("-5 is less"),
            "{shown}"
        );
        let all = text(invalid_fields(errors(), &[String::new()], None));
        assert!(!all.contains("ada@secret") && !all.contains("-5"), "{all}");
        assert!(text(invalid_fields(errors(), &[], None)).contains("ada@secret.test"));
    }

    #[test]
    fn refused_writes_become_host_errors_that_say_why() {
        let refused = RecordError::StageRefused {
            stage: "won".into(),
            refusal: StageRefusal::MissingFields(vec!["amount".into()]),
        };
        let text = format!("{:?}", record_error(refused, &[]));
        assert!(
            text.contains("Invalid") && text.contains("needs amount"),
            "{text}"
        );
        assert!(text.contains("/data/amount"), "{text}");
        let stale = format!(
            "{:?}",
            record_error(RecordError::VersionConflict { current: 3 }, &[])
        );
        assert!(
            stale.contains("Conflict") && stale.contains("version 3"),
            "{stale}"
        );
        let down = format!(
            "{:?}",
            record_error(
                RecordError::Store(crate::store::StoreError::Unavailable),
                &[]
            )
        );
        assert!(down.contains("Unavailable"), "{down}");
    }
}
