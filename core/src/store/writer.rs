//! The record writer: every record change goes through here, and concurrent changes are
//! committed together (group commit).
//!
//! One transaction per HTTP request caps the API at the database's commit rate (a few
//! thousand per second on this class of machine); a commit of a hundred rows costs about as
//! much as a commit of one. Handlers submit a [`RecordWrite`] and await its outcome; writer
//! tasks take whatever is queued (up to [`MAX_BATCH`]), apply it in one transaction with the
//! outbox events each change causes, commit, and answer. When a batch fails as a whole, each
//! write is retried alone so one bad write cannot fail its neighbours.
//!
//! SQLite allows one writer at a time, so it gets one writer task; PostgreSQL gets several.

use std::sync::Arc;

use serde_json::{Value, json};
use sqlx::types::Json;
use tokio::sync::{Mutex, mpsc, oneshot};
use uuid::Uuid;

use super::records::RecordRow;
use super::{Backend, Pool, Store, StoreError, StoreResult, TenantScope, now_micros, on_pool};

/// The most writes committed in one transaction.
pub const MAX_BATCH: usize = 256;
/// Writes waiting for a writer before submitters are made to wait (backpressure).
const QUEUE_DEPTH: usize = 4096;

/// Who caused a change, as recorded on its events (`user:<id>` or `api_key:<id>`).
pub type Actor = String;

#[derive(Debug)]
pub enum RecordWrite {
    Create {
        scope: TenantScope,
        record_type: String,
        stage: Option<String>,
        data: Value,
        created_by: Option<Uuid>,
        actor: Actor,
    },
    /// Replaces `data` and/or `stage` if the stored version is still `expected_version`.
    Update {
        scope: TenantScope,
        record_type: String,
        id: Uuid,
        expected_version: i64,
        data: Option<Value>,
        stage: Option<String>,
        actor: Actor,
    },
    Delete {
        scope: TenantScope,
        record_type: String,
        id: Uuid,
        actor: Actor,
    },
}

#[derive(Debug)]
pub enum WriteOutcome {
    Created(RecordRow),
    Updated(RecordRow),
    Deleted,
    NotFound,
    VersionConflict { current_version: i64 },
}

struct Job {
    write: RecordWrite,
    reply: oneshot::Sender<StoreResult<WriteOutcome>>,
}

/// Handle for submitting record writes (cheap to clone).
#[derive(Clone)]
pub struct RecordWriter {
    queue: mpsc::Sender<Job>,
}

impl RecordWriter {
    /// Starts the writer tasks on the current runtime. They stop when every handle is gone.
    pub fn start(store: &Store) -> Self {
        let (queue, rx) = mpsc::channel(QUEUE_DEPTH);
        let rx = Arc::new(Mutex::new(rx));
        let workers = match store.backend() {
            Backend::Sqlite => 1,
            Backend::Postgres => 4,
        };
        for _ in 0..workers {
            tokio::spawn(run_writer(store.pool().clone(), rx.clone()));
        }
        Self { queue }
    }

    pub async fn submit(&self, write: RecordWrite) -> StoreResult<WriteOutcome> {
        let (reply, outcome) = oneshot::channel();
        self.queue
            .send(Job { write, reply })
            .await
            .map_err(|_| StoreError::Unavailable)?;
        outcome.await.map_err(|_| StoreError::Unavailable)?
    }
}

async fn run_writer(pool: Pool, rx: Arc<Mutex<mpsc::Receiver<Job>>>) {
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    loop {
        {
            let mut rx = rx.lock().await;
            match rx.recv().await {
                Some(job) => batch.push(job),
                None => return,
            }
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
        }
        metrics::histogram!("streamflow_record_write_batch_size").record(batch.len() as f64);
        let writes: Vec<&RecordWrite> = batch.iter().map(|j| &j.write).collect();
        match apply_batch(&pool, &writes).await {
            Ok(outcomes) => {
                for (job, outcome) in batch.drain(..).zip(outcomes) {
                    let _ = job.reply.send(Ok(outcome));
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, size = batch.len(), "batched write failed; retrying each write alone");
                for job in batch.drain(..) {
                    let outcome = apply_batch(&pool, &[&job.write])
                        .await
                        .map(|mut o| o.remove(0))
                        .map_err(StoreError::from);
                    let _ = job.reply.send(outcome);
                }
            }
        }
    }
}

/// Appends an event to the outbox inside the caller's transaction.
macro_rules! insert_event {
    ($conn:expr, $scope:expr, $kind:expr, $record_type:expr, $record_id:expr, $actor:expr, $payload:expr, $now:expr) => {
        sqlx::query(
            "INSERT INTO events (id, tenant_id, kind, record_type, record_id, actor, payload, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(Uuid::now_v7())
        .bind($scope.tenant_id())
        .bind($kind)
        .bind($record_type)
        .bind($record_id)
        .bind($actor)
        .bind(Json($payload))
        .bind($now)
        .execute($conn)
        .await?
    };
}

async fn apply_batch(
    pool: &Pool,
    writes: &[&RecordWrite],
) -> Result<Vec<WriteOutcome>, sqlx::Error> {
    let now = now_micros();
    on_pool!(pool, pool => async {
        let mut tx = pool.begin().await?;
        let mut outcomes = Vec::with_capacity(writes.len());
        for write in writes {
            let outcome = match write {
                RecordWrite::Create { scope, record_type, stage, data, created_by, actor } => {
                    let row = RecordRow {
                        tenant_id: scope.tenant_id(),
                        id: Uuid::now_v7(),
                        record_type: record_type.clone(),
                        stage: stage.clone(),
                        data: Json(data.clone()),
                        version: 1,
                        score: None,
                        created_by: *created_by,
                        created_at: now,
                        updated_at: now,
                    };
                    sqlx::query(
                        "INSERT INTO records (tenant_id, id, type, stage, data, version, created_by, created_at, updated_at) \
                         VALUES ($1, $2, $3, $4, $5, 1, $6, $7, $7)",
                    )
                    .bind(row.tenant_id)
                    .bind(row.id)
                    .bind(&row.record_type)
                    .bind(&row.stage)
                    .bind(&row.data)
                    .bind(row.created_by)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                    insert_event!(&mut *tx, scope, "record.created", &row.record_type, row.id, actor,
                        json!({ "version": 1, "stage": row.stage }), now);
                    WriteOutcome::Created(row)
                }
                RecordWrite::Update { scope, record_type, id, expected_version, data, stage, actor } => {
                    let sql = format!(
                        "SELECT {} FROM records WHERE tenant_id = $1 AND type = $2 AND id = $3",
                        super::records::RECORD_COLUMNS
                    );
                    let current = sqlx::query_as::<_, RecordRow>(sqlx::AssertSqlSafe(sql))
                        .bind(scope.tenant_id())
                        .bind(record_type)
                        .bind(id)
                        .fetch_optional(&mut *tx)
                        .await?;
                    match current {
                        None => WriteOutcome::NotFound,
                        Some(c) if c.version != *expected_version => {
                            WriteOutcome::VersionConflict { current_version: c.version }
                        }
                        Some(mut row) => {
                            let previous_stage = row.stage.clone();
                            if let Some(data) = data {
                                row.data = Json(data.clone());
                            }
                            if let Some(stage) = stage {
                                row.stage = Some(stage.clone());
                            }
                            row.version += 1;
                            row.updated_at = now;
                            let done = sqlx::query(
                                "UPDATE records SET data = $1, stage = $2, version = $3, updated_at = $4 \
                                 WHERE tenant_id = $5 AND id = $6 AND version = $7",
                            )
                            .bind(&row.data)
                            .bind(&row.stage)
                            .bind(row.version)
                            .bind(now)
                            .bind(scope.tenant_id())
                            .bind(id)
                            .bind(expected_version)
                            .execute(&mut *tx)
                            .await?;
                            if done.rows_affected() == 0 {
                                // Another node changed it between our read and write.
                                WriteOutcome::VersionConflict { current_version: row.version }
                            } else {
                                insert_event!(&mut *tx, scope, "record.updated", record_type, *id, actor,
                                    json!({ "version": row.version, "previous_version": expected_version }), now);
                                if previous_stage != row.stage {
                                    insert_event!(&mut *tx, scope, "stage.changed", record_type, *id, actor,
                                        json!({ "from": previous_stage, "to": row.stage, "by": actor, "version": row.version }), now);
                                }
                                WriteOutcome::Updated(row)
                            }
                        }
                    }
                }
                RecordWrite::Delete { scope, record_type, id, actor } => {
                    let deleted: Option<(i64, Json<Value>)> = sqlx::query_as(
                        "DELETE FROM records WHERE tenant_id = $1 AND type = $2 AND id = $3 \
                         RETURNING version, data",
                    )
                    .bind(scope.tenant_id())
                    .bind(record_type)
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?;
                    match deleted {
                        None => WriteOutcome::NotFound,
                        Some((version, data)) => {
                            insert_event!(&mut *tx, scope, "record.deleted", record_type, *id, actor,
                                json!({ "version": version, "data": data.0 }), now);
                            WriteOutcome::Deleted
                        }
                    }
                }
            };
            outcomes.push(outcome);
        }
        tx.commit().await?;
        Ok(outcomes)
    }.await)
}

impl Store {
    /// The outbox events of one record, oldest first (the dispatcher reads the same table).
    pub async fn record_events(
        &self,
        scope: &TenantScope,
        record_id: Uuid,
    ) -> StoreResult<Vec<(String, Value)>> {
        on_pool!(self.pool(), pool => {
            let rows: Vec<(String, Json<Value>)> = sqlx::query_as(
                "SELECT kind, payload FROM events WHERE tenant_id = $1 AND record_id = $2 ORDER BY seq",
            )
            .bind(scope.tenant_id())
            .bind(record_id)
            .fetch_all(pool)
            .await?;
            Ok(rows.into_iter().map(|(k, p)| (k, p.0)).collect())
        })
    }
}
