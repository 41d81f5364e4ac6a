//! The record service: creating, changing and deleting records, whoever asks (a person or
//! API key over HTTP, an automation, a plugin, the demo seeder). Every write passes the
//! same checks (data shape, the type's schema, its pipeline), and every lead is scored by
//! the tenant's scorer on the way in, with one exception: what the scorer itself writes
//! while scoring is not scored again (it would call itself without end).

use serde_json::Value;
use streamflow_runtime::PluginRecord;
use uuid::Uuid;

use super::Kernel;
use crate::error::{RecordError, RecordResult};
use crate::plugins::ScoreOutcome;
use crate::records::{Origin, check_data, check_stage};
use crate::store::records::RecordRow;
use crate::store::writer::{RecordWrite, WriteOutcome};
use crate::store::{TenantScope, now_micros};
use crate::templates::Pipeline;

/// Who writes and in which chain: everything a write needs besides the change itself.
#[derive(Debug, Clone)]
pub struct WriteContext {
    pub scope: TenantScope,
    /// `user:<id>`, `api_key:<id>`, `plugin:<id>`, `automation:<id>` or `system:<what>`.
    pub actor: String,
    /// The user a new record is credited to, if a person made it.
    pub created_by: Option<Uuid>,
    /// Automation depth of the events the write causes (0 outside the dispatcher).
    pub depth: i64,
    /// The chain the write's events belong to (see `events`); `None` starts a new one.
    pub root: Option<Uuid>,
    /// Whether leads this write creates or changes are scored: false only for the writes a
    /// scorer makes while it scores.
    pub score: bool,
}

impl WriteContext {
    /// A write by a person or API client (or the kernel itself), outside any chain.
    pub fn direct(scope: TenantScope, actor: String, created_by: Option<Uuid>) -> Self {
        Self {
            scope,
            actor,
            created_by,
            depth: 0,
            root: None,
            score: true,
        }
    }

    /// A write an automation makes for the event of `origin`.
    pub fn automation(scope: TenantScope, automation_id: &str, origin: &Origin) -> Self {
        Self {
            scope,
            actor: format!("automation:{automation_id}"),
            created_by: None,
            depth: origin.depth,
            root: Some(origin.root),
            score: true,
        }
    }
}

/// The id of a new record.
#[derive(Debug, Clone, Copy)]
pub enum NewId {
    /// A new UUIDv7.
    Fresh,
    /// Derived from an origin (see [`Origin::derived_id`]): a record already stored under
    /// it is the result of an earlier run of the same work, and is returned as it is.
    Derived(Uuid),
    /// Reserved for a plugin's key (`keyed-records`): a record already stored under it was
    /// created by another call, [`RecordError::KeyTaken`].
    Keyed(Uuid),
}

/// A record to create.
#[derive(Debug, Clone)]
pub struct NewRecord {
    pub id: NewId,
    pub record_type: String,
    /// The stage to start in; the pipeline's first stage when `None`.
    pub stage: Option<String>,
    pub data: Value,
}

/// A change to a record.
#[derive(Debug, Clone, Default)]
pub struct RecordChange {
    /// Replaces the data as a whole.
    pub data: Option<Value>,
    pub stage: Option<String>,
    /// The version the change was made against; `None`: whatever version is current.
    pub expected_version: Option<i64>,
    /// Pointers into the data whose stored values are kept when `data` lacks them: the
    /// fields a plugin could not see, and so could not send back.
    pub keep: Vec<String>,
}

/// The record service of one kernel.
pub struct Records<'k> {
    pub(super) kernel: &'k Kernel,
}

impl Records<'_> {
    fn rules(&self) -> WriteRules<'_> {
        WriteRules {
            kernel: self.kernel,
        }
    }

    /// Creates a record: checked against its type's schema and pipeline, scored when it is
    /// a lead.
    pub async fn create(&self, ctx: &WriteContext, new: NewRecord) -> RecordResult<RecordRow> {
        let (id, derived, keyed) = match new.id {
            NewId::Fresh => (Uuid::now_v7(), false, false),
            NewId::Derived(id) => (id, true, false),
            NewId::Keyed(id) => (id, false, true),
        };
        if (derived || keyed)
            && let Some(row) = self.made_before(ctx, id, &new.record_type).await?
        {
            return if keyed {
                Err(RecordError::KeyTaken)
            } else {
                Ok(row)
            };
        }
        let stage = self
            .rules()
            .create(&ctx.scope, &new.record_type, new.stage, &new.data)
            .await?;
        let now = now_micros();
        let lead = || PluginRecord {
            id: id.to_string(),
            record_type: new.record_type.clone(),
            stage: stage.clone(),
            version: 1,
            data: new.data.to_string(),
            created_at: now,
            updated_at: now,
        };
        let (score, events) = match self.score(ctx, &new.record_type, lead).await? {
            Some(outcome) => (outcome.score, vec![outcome.event]),
            None => (None, Vec::new()),
        };
        let written = self
            .kernel
            .writer
            .submit(RecordWrite::Create {
                scope: ctx.scope,
                id,
                record_type: new.record_type.clone(),
                stage,
                data: new.data,
                score,
                events,
                created_by: ctx.created_by,
                actor: ctx.actor.clone(),
                depth: ctx.depth,
                root: ctx.root,
            })
            .await;
        match written {
            Ok(WriteOutcome::Created(row)) => Ok(row),
            Ok(other) => Err(unexpected(other)),
            Err(e) => {
                // A concurrent run of the same work may have created it first (for a key:
                // another call did, and this one's data was not written).
                if (derived || keyed)
                    && let Ok(Some(row)) = self.made_before(ctx, id, &new.record_type).await
                {
                    return if keyed {
                        Err(RecordError::KeyTaken)
                    } else {
                        Ok(row)
                    };
                }
                Err(e.into())
            }
        }
    }

    /// The record an earlier run stored under a derived id, if there is one.
    async fn made_before(
        &self,
        ctx: &WriteContext,
        id: Uuid,
        record_type: &str,
    ) -> RecordResult<Option<RecordRow>> {
        match self.kernel.store.record_by_id(&ctx.scope, id).await? {
            Some(row) if row.record_type != record_type => Err(RecordError::IdTaken {
                record_type: row.record_type,
            }),
            found => Ok(found),
        }
    }

    /// Changes a record's data and/or stage, if it is still at the expected version; a
    /// scored lead is scored again from the record as it will be.
    pub async fn update(
        &self,
        ctx: &WriteContext,
        record_type: &str,
        id: Uuid,
        change: RecordChange,
    ) -> RecordResult<RecordRow> {
        if change.data.is_none() && change.stage.is_none() {
            return Err(RecordError::field("", "send `data`, `stage` or both"));
        }
        let scope = &ctx.scope;
        let scoring = ctx.score
            && record_type == "lead"
            && self.kernel.plugins.scorer(scope).await?.is_some();
        let rules = self.rules();
        let current = self
            .current_for(ctx, record_type, id, &change, scoring)
            .await?;
        let mut data = change.data;
        if let (Some(data), Some(current)) = (data.as_mut(), &current) {
            keep_stored(data, &current.data.0, &change.keep);
        }
        let expected = match (change.expected_version, &current) {
            (Some(v), _) => v,
            (None, Some(current)) => current.version,
            (None, None) => unreachable!("the current record is read when no version is given"),
        };
        rules
            .update(
                scope,
                record_type,
                current.as_ref(),
                change.stage.as_deref(),
                data.as_ref(),
            )
            .await?;
        let scored = match current.as_ref().filter(|_| scoring) {
            None => None,
            Some(current) => {
                let lead = || PluginRecord {
                    id: id.to_string(),
                    record_type: record_type.to_string(),
                    stage: change.stage.clone().or(current.stage.clone()),
                    version: current.version as u64 + 1,
                    data: data.as_ref().unwrap_or(&current.data.0).to_string(),
                    created_at: current.created_at,
                    updated_at: now_micros(),
                };
                self.score(ctx, record_type, lead).await?
            }
        };
        let (score, events) = match scored {
            Some(outcome) => (Some(outcome.score), vec![outcome.event]),
            None => (None, Vec::new()),
        };
        let outcome = self
            .kernel
            .writer
            .submit(RecordWrite::Update {
                scope: *scope,
                record_type: record_type.to_string(),
                id,
                expected_version: expected,
                data,
                stage: change.stage,
                score,
                events,
                actor: ctx.actor.clone(),
                depth: ctx.depth,
                root: ctx.root,
            })
            .await?;
        match outcome {
            WriteOutcome::Updated(row) => Ok(row),
            other => Err(unexpected(other)),
        }
    }

    /// The record as it is now, when the change needs it: a move within a pipeline, a
    /// re-score and kept fields do (the writer then refuses the change if the record moved
    /// on meanwhile), as does a change made against whatever version is current.
    async fn current_for(
        &self,
        ctx: &WriteContext,
        record_type: &str,
        id: Uuid,
        change: &RecordChange,
        scoring: bool,
    ) -> RecordResult<Option<RecordRow>> {
        let needed = scoring
            || !change.keep.is_empty()
            || change.expected_version.is_none()
            || self
                .rules()
                .needs_current(
                    &ctx.scope,
                    record_type,
                    change.stage.as_deref(),
                    change.data.as_ref(),
                )
                .await?;
        if !needed {
            return Ok(None);
        }
        let current = self
            .kernel
            .store
            .get_record(&ctx.scope, record_type, id)
            .await?
            .ok_or(RecordError::NotFound)?;
        if change
            .expected_version
            .is_some_and(|v| v != current.version)
        {
            return Err(RecordError::VersionConflict {
                current: current.version,
            });
        }
        Ok(Some(current))
    }

    /// Deletes a record.
    pub async fn delete(
        &self,
        ctx: &WriteContext,
        record_type: &str,
        id: Uuid,
    ) -> RecordResult<()> {
        let outcome = self
            .kernel
            .writer
            .submit(RecordWrite::Delete {
                scope: ctx.scope,
                record_type: record_type.to_string(),
                id,
                actor: ctx.actor.clone(),
            })
            .await?;
        match outcome {
            WriteOutcome::Deleted => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// The score to store with a lead and the event it causes (`lead.scored`, or
    /// `plugin.failed` when the scorer failed: the lead is saved whatever the scorer does).
    /// Nothing for other types, for a tenant without a scorer, or for the scorer's own
    /// writes while it scores.
    async fn score(
        &self,
        ctx: &WriteContext,
        record_type: &str,
        lead: impl FnOnce() -> PluginRecord,
    ) -> RecordResult<Option<ScoreOutcome>> {
        if record_type != "lead" || !ctx.score {
            return Ok(None);
        }
        Ok(self.kernel.plugins.score_lead(&ctx.scope, lead()).await?)
    }
}

/// Maps the outcomes a write did not succeed with to their errors.
fn unexpected(outcome: WriteOutcome) -> RecordError {
    match outcome {
        WriteOutcome::NotFound => RecordError::NotFound,
        WriteOutcome::VersionConflict { current_version } => RecordError::VersionConflict {
            current: current_version,
        },
        WriteOutcome::Created(_) | WriteOutcome::Updated(_) | WriteOutcome::Deleted => {
            tracing::error!("record writer answered with the outcome of another kind of write");
            RecordError::Internal("the record writer answered another kind of write")
        }
    }
}

/// Puts back into `data` each `keep` field it lacks, from `stored`.
fn keep_stored(data: &mut Value, stored: &Value, keep: &[String]) {
    for pointer in keep {
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

/// The checks every record write passes, whoever makes it: the data's shape, the type's
/// schema and the type's pipeline.
struct WriteRules<'k> {
    kernel: &'k Kernel,
}

impl WriteRules<'_> {
    async fn pipeline(
        &self,
        scope: &TenantScope,
        record_type: &str,
    ) -> RecordResult<Option<Pipeline>> {
        Ok(self
            .kernel
            .workflows
            .spec(&self.kernel.store, scope)
            .await?
            .and_then(|t| t.pipeline(record_type).cloned()))
    }

    async fn validate(
        &self,
        scope: &TenantScope,
        record_type: &str,
        data: &Value,
    ) -> RecordResult<()> {
        self.kernel
            .schemas
            .validate(&self.kernel.store, scope, record_type, data)
            .await
    }

    /// Checks a new record and returns the stage to store it in: the one asked for, or the
    /// first stage of the type's pipeline.
    async fn create(
        &self,
        scope: &TenantScope,
        record_type: &str,
        stage: Option<String>,
        data: &Value,
    ) -> RecordResult<Option<String>> {
        check_data(data, self.kernel.schemas.record_limit())?;
        if let Some(stage) = &stage {
            check_stage(stage, "/stage").map_err(|e| RecordError::Invalid(vec![e]))?;
        }
        self.validate(scope, record_type, data).await?;
        let Some(pipeline) = self.pipeline(scope, record_type).await? else {
            return Ok(stage);
        };
        let to = stage.unwrap_or_else(|| pipeline.first().id.clone());
        pipeline
            .check_move(None, &to, data)
            .map_err(|refusal| RecordError::StageRefused {
                stage: to.clone(),
                refusal,
            })?;
        Ok(Some(to))
    }

    /// Checks a change: new data against the schema, a new stage against the pipeline, and
    /// that a record in a stage keeps the fields the stage requires. `current` is the
    /// record as the caller read it, at the version it will write against; it is needed
    /// when [`WriteRules::needs_current`] says so.
    async fn update(
        &self,
        scope: &TenantScope,
        record_type: &str,
        current: Option<&RecordRow>,
        stage: Option<&str>,
        data: Option<&Value>,
    ) -> RecordResult<()> {
        if let Some(data) = data {
            check_data(data, self.kernel.schemas.record_limit())?;
            self.validate(scope, record_type, data).await?;
        }
        if let Some(stage) = stage {
            check_stage(stage, "/stage").map_err(|e| RecordError::Invalid(vec![e]))?;
        }
        let Some(pipeline) = self.pipeline(scope, record_type).await? else {
            return Ok(());
        };
        if stage.is_none() && data.is_none() {
            return Ok(());
        }
        // Without it, the tenant's template was applied between the caller's look and this
        // one.
        let current = current.ok_or(RecordError::TemplateChanged)?;
        let data = data.unwrap_or(&current.data.0);
        let Some(to) = stage.or(current.stage.as_deref()) else {
            return Ok(());
        };
        pipeline
            .check_move(current.stage.as_deref(), to, data)
            .map_err(|refusal| RecordError::StageRefused {
                stage: to.to_string(),
                refusal,
            })
    }

    /// Whether a change to this type needs the current record to be checked: the type has
    /// a pipeline and the change moves the record or replaces its data.
    async fn needs_current(
        &self,
        scope: &TenantScope,
        record_type: &str,
        stage: Option<&str>,
        data: Option<&Value>,
    ) -> RecordResult<bool> {
        Ok((stage.is_some() || data.is_some())
            && self.pipeline(scope, record_type).await?.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::keep_stored;
    use serde_json::json;

    #[test]
    fn an_update_keeps_the_fields_the_writer_could_not_see() {
        let stored = json!({"name": "Ada", "contact": {"phone": "1", "city": "Oslo"}, "budget": 5});
        let keep = ["/name".to_string(), "/contact/phone".to_string()];
        // Left out (as the plugin was shown the record): kept.
        let mut data = json!({"budget": 6, "contact": {"city": "Bergen"}});
        keep_stored(&mut data, &stored, &keep);
        assert_eq!(
            data,
            json!({"name": "Ada", "contact": {"phone": "1", "city": "Bergen"}, "budget": 6})
        );
        // Given: the plugin's value stands; a parent that is no longer an object is left be.
        let mut data = json!({"name": "Bo", "contact": "none"});
        keep_stored(&mut data, &stored, &keep);
        assert_eq!(data, json!({"name": "Bo", "contact": "none"}));
        // Nothing visible: the data cannot change.
        let mut data = json!({"x": 1});
        keep_stored(&mut data, &stored, &[String::new()]);
        assert_eq!(data, stored);
    }
}
