//! The record writer: every record change goes through here, and concurrent changes are
//! committed together (group commit).
//!
//! One transaction per HTTP request caps the API at the database's commit rate (a few
//! thousand per second on this class of machine); a commit of a hundred rows costs about as
//! much as a commit of one. Handlers submit a [`RecordWrite`] and await its outcome; the writer
//! takes whatever is queued (up to [`MAX_BATCH`]), applies it in one transaction with the
//! outbox events each change causes, commits, and answers. When a batch fails as a whole, each
//! write is retried alone so one bad write cannot fail its neighbours.
//!
//! Each node has one writer task, with a connection and a thread of its own. SQLite allows
//! one writer at a time anyway; on PostgreSQL one writer per node measured faster than two or
//! four on a 2-core machine (bigger batches, fewer round trips and context switches), and
//! several nodes still write concurrently.

use serde_json::{Value, json};
use sqlx::types::Json;
use streamflow_runtime::EventKind;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use std::future::Future;

use super::dialect::Dialect;
use super::records::{RecordRow, record_by_key_sql};
use super::{Pool, Store, StoreError, StoreResult, TenantScope, now_micros};

/// The most writes committed in one transaction, unless configured otherwise.
pub const MAX_BATCH: usize = 256;
/// Writes waiting for a writer before submitters are made to wait (backpressure).
const QUEUE_DEPTH: usize = 4096;

/// Who caused a change, as recorded on its events (`user:<id>` or `api_key:<id>`).
pub type Actor = String;

#[derive(Debug)]
pub enum RecordWrite {
    Create {
        scope: TenantScope,
        /// Chosen by the caller, so a scorer can see the id before the record is stored.
        id: Uuid,
        record_type: String,
        stage: Option<String>,
        data: Value,
        /// The lead's score, stored with it.
        score: Option<Value>,
        /// Further events the change causes (`lead.scored`, `plugin.failed`).
        events: Vec<(EventKind, Value)>,
        created_by: Option<Uuid>,
        actor: Actor,
        /// How many automations led to this change (0 for people and API clients).
        depth: i64,
        /// The event the automation chain started from (None for people and API clients).
        root: Option<Uuid>,
    },
    /// Replaces `data` and/or `stage` if the stored version is still `expected_version`.
    Update {
        scope: TenantScope,
        record_type: String,
        id: Uuid,
        expected_version: i64,
        data: Option<Value>,
        stage: Option<String>,
        /// `Some`: replace the stored score (with null when scoring failed).
        score: Option<Option<Value>>,
        events: Vec<(EventKind, Value)>,
        actor: Actor,
        depth: i64,
        root: Option<Uuid>,
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
    committed: std::sync::Arc<tokio::sync::Notify>,
}

impl RecordWriter {
    /// Starts the writer: `max_batch` writes at most per transaction, on a connection of its
    /// own.
    ///
    /// The writers run on a thread and runtime of their own. On the shared runtime each of
    /// a batch's round trips (begin, inserts, commit) waited behind every ready HTTP task,
    /// which made a PostgreSQL batch take milliseconds of queueing for microseconds of work.
    /// They stop when every handle is gone.
    pub fn start(store: &Store, max_batch: usize) -> std::io::Result<Self> {
        let max_batch = max_batch.max(1);
        let (queue, rx) = mpsc::channel(QUEUE_DEPTH);
        let shared = store.pool().clone();
        let committed = std::sync::Arc::new(tokio::sync::Notify::new());
        let notify = committed.clone();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name("record-writer".into())
            .spawn(move || runtime.block_on(run_writer(shared, rx, max_batch, notify)))?;
        Ok(Self { queue, committed })
    }

    /// Notified after every commit: new events are waiting in the outbox.
    pub fn committed(&self) -> std::sync::Arc<tokio::sync::Notify> {
        self.committed.clone()
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

/// A writer's own connection, opened with the shared pool's options. A writer keeps it for
/// as long as it works: a pooled connection would cost a liveness ping and a hand-back on
/// every batch.
enum WriterConnection {
    Sqlite(sqlx::SqliteConnection),
    Postgres(sqlx::PgConnection),
}

async fn open_connection(shared: &Pool) -> Result<WriterConnection, sqlx::Error> {
    use sqlx::ConnectOptions;
    Ok(match shared {
        Pool::Sqlite(p) => WriterConnection::Sqlite(p.connect_options().connect().await?),
        Pool::Postgres(p) => {
            let options = p.connect_options();
            let connection = options.connect().await?;
            super::dialect::nodelay_to(&super::dialect::tcp_peers(&options).await);
            WriterConnection::Postgres(connection)
        }
    })
}

async fn run_writer(
    shared: Pool,
    mut rx: mpsc::Receiver<Job>,
    max_batch: usize,
    committed: std::sync::Arc<tokio::sync::Notify>,
) {
    let mut batch: Vec<Job> = Vec::with_capacity(max_batch);
    let mut connection: Option<WriterConnection> = None;
    loop {
        match rx.recv().await {
            Some(job) => batch.push(job),
            None => return,
        }
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        metrics::histogram!("streamflow_record_write_batch_size").record(batch.len() as f64);
        let writes: Vec<&RecordWrite> = batch.iter().map(|j| &j.write).collect();
        let started = std::time::Instant::now();
        if connection.is_none() {
            match open_connection(&shared).await {
                Ok(c) => connection = Some(c),
                Err(err) => {
                    tracing::error!(error = %err, "record writer cannot connect to the database");
                    for job in batch.drain(..) {
                        let _ = job.reply.send(Err(StoreError::Unavailable));
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    continue;
                }
            }
        }
        let conn = connection.as_mut().expect("opened above");
        let applied = apply_batch(conn, &writes).await;
        metrics::histogram!("streamflow_record_write_batch_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        match applied {
            Ok(outcomes) => {
                committed.notify_one();
                for (job, outcome) in batch.drain(..).zip(outcomes) {
                    let _ = job.reply.send(Ok(outcome));
                }
            }
            Err(BatchError::Commit(err)) => {
                tracing::error!(error = %err, size = batch.len(), "commit failed; its outcome is unknown");
                connection = None;
                for job in batch.drain(..) {
                    let _ = job.reply.send(Err(StoreError::CommitUnconfirmed));
                }
            }
            Err(BatchError::Statement(err)) => {
                tracing::warn!(error = %err, size = batch.len(), "batched write failed; retrying each write alone");
                // The connection may be what failed: start the retries on a fresh one.
                connection = open_connection(&shared).await.ok();
                for job in batch.drain(..) {
                    let outcome = match connection.as_mut() {
                        Some(conn) => match apply_batch(conn, &[&job.write]).await {
                            Ok(mut outcomes) => Ok(outcomes.remove(0)),
                            Err(BatchError::Statement(e)) => Err(StoreError::Database(e)),
                            Err(BatchError::Commit(_)) => Err(StoreError::CommitUnconfirmed),
                        },
                        None => Err(StoreError::Unavailable),
                    };
                    let _ = job.reply.send(outcome);
                }
                committed.notify_one();
            }
        }
    }
}

/// Why a batch failed: before its commit (nothing is stored, so each write can be retried
/// alone) or at its commit (the outcome is unknown, so nothing is retried).
enum BatchError {
    Statement(sqlx::Error),
    Commit(sqlx::Error),
}

impl From<sqlx::Error> for BatchError {
    fn from(err: sqlx::Error) -> Self {
        BatchError::Statement(err)
    }
}

/// An outbox event produced by a write, inserted with the rest of its batch.
pub(crate) struct PendingEvent {
    pub tenant_id: Uuid,
    pub kind: EventKind,
    pub record_type: String,
    pub record_id: Uuid,
    pub actor: Actor,
    pub payload: Value,
    pub depth: i64,
    pub root: Option<Uuid>,
}

/// The score's value as a number, kept in its own column for sorting and filtering.
pub(crate) fn score_value(score: &Option<Json<Value>>) -> Option<i64> {
    score
        .as_ref()
        .and_then(|s| s.0.get("value"))
        .and_then(Value::as_i64)
}

/// The statements the writer runs one record at a time: the same SQL on both backends,
/// implemented once per driver by the macro below so each copy is type-checked against its
/// own (the backends' differences are in [`super::dialect`]).
trait RecordStatements: Send {
    /// The record a write names, read inside the batch's transaction.
    fn current(
        &mut self,
        scope: &TenantScope,
        record_type: &str,
        id: Uuid,
    ) -> impl Future<Output = Result<Option<RecordRow>, sqlx::Error>> + Send;

    /// Stores `row` (its new version) if the stored one is still `expected`; false if not.
    fn replace(
        &mut self,
        row: &RecordRow,
        expected: i64,
    ) -> impl Future<Output = Result<bool, sqlx::Error>> + Send;

    /// The stored version of a record, if it exists.
    fn stored_version(
        &mut self,
        scope: &TenantScope,
        id: Uuid,
    ) -> impl Future<Output = Result<Option<i64>, sqlx::Error>> + Send;

    fn delete(
        &mut self,
        scope: &TenantScope,
        id: Uuid,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;
}

macro_rules! record_statements {
    ($connection:ty) => {
        impl RecordStatements for $connection {
            async fn current(
                &mut self,
                scope: &TenantScope,
                record_type: &str,
                id: Uuid,
            ) -> Result<Option<RecordRow>, sqlx::Error> {
                Ok(
                    sqlx::query_as::<_, RecordRow>(sqlx::AssertSqlSafe(record_by_key_sql()))
                        .bind(scope.tenant_id())
                        .bind(id)
                        .fetch_optional(&mut *self)
                        .await?
                        .filter(|r| r.record_type == record_type),
                )
            }

            async fn replace(
                &mut self,
                row: &RecordRow,
                expected: i64,
            ) -> Result<bool, sqlx::Error> {
                let done = sqlx::query(
                    "UPDATE records SET data = $1, stage = $2, version = $3, updated_at = $4, \
                     score = $8, score_value = $9 \
                     WHERE tenant_id = $5 AND id = $6 AND version = $7",
                )
                .bind(&row.data)
                .bind(&row.stage)
                .bind(row.version)
                .bind(row.updated_at)
                .bind(row.tenant_id)
                .bind(row.id)
                .bind(expected)
                .bind(&row.score)
                .bind(score_value(&row.score))
                .execute(&mut *self)
                .await?;
                Ok(done.rows_affected() > 0)
            }

            async fn stored_version(
                &mut self,
                scope: &TenantScope,
                id: Uuid,
            ) -> Result<Option<i64>, sqlx::Error> {
                sqlx::query_scalar("SELECT version FROM records WHERE tenant_id = $1 AND id = $2")
                    .bind(scope.tenant_id())
                    .bind(id)
                    .fetch_optional(&mut *self)
                    .await
            }

            async fn delete(&mut self, scope: &TenantScope, id: Uuid) -> Result<(), sqlx::Error> {
                sqlx::query("DELETE FROM records WHERE tenant_id = $1 AND id = $2")
                    .bind(scope.tenant_id())
                    .bind(id)
                    .execute(&mut *self)
                    .await?;
                Ok(())
            }
        }
    };
}

record_statements!(sqlx::SqliteConnection);
record_statements!(sqlx::PgConnection);

/// Applies a batch in one transaction. Creates become one multi-row INSERT and all events
/// another, because each statement costs a round trip (on SQLite, a hand-off to the
/// connection's thread) that would otherwise dominate a create.
async fn apply_batch(
    conn: &mut WriterConnection,
    writes: &[&RecordWrite],
) -> Result<Vec<WriteOutcome>, BatchError> {
    match conn {
        WriterConnection::Sqlite(c) => apply_on(c, writes).await,
        WriterConnection::Postgres(c) => apply_on(c, writes).await,
    }
}

async fn apply_on<C>(conn: &mut C, writes: &[&RecordWrite]) -> Result<Vec<WriteOutcome>, BatchError>
where
    C: sqlx::Connection + Dialect + RecordStatements,
{
    let now = now_micros();
    let mut outcomes = Vec::with_capacity(writes.len());
    let mut events = Vec::with_capacity(writes.len());
    let created = created_rows(writes, now);
    let mut tx = conn.begin_with(C::BEGIN_WRITE).await?;
    Dialect::insert_records(&mut *tx, &created).await?;
    let mut created = created.into_iter();
    for write in writes {
        let outcome = match write {
            RecordWrite::Create { .. } => {
                let row = created.next().expect("one row per create");
                created_events(write, &row, &mut events);
                WriteOutcome::Created(row)
            }
            RecordWrite::Update { .. } => apply_update(&mut *tx, write, now, &mut events).await?,
            RecordWrite::Delete {
                scope,
                record_type,
                id,
                actor,
            } => match RecordStatements::current(&mut *tx, scope, record_type, *id).await? {
                None => WriteOutcome::NotFound,
                Some(row) => {
                    RecordStatements::delete(&mut *tx, scope, *id).await?;
                    events.push(PendingEvent {
                        tenant_id: scope.tenant_id(),
                        kind: EventKind::RecordDeleted,
                        record_type: record_type.clone(),
                        record_id: *id,
                        actor: actor.clone(),
                        payload: json!({ "version": row.version, "stage": row.stage, "data": row.data.0 }),
                        depth: 0,
                        root: None,
                    });
                    WriteOutcome::Deleted
                }
            },
        };
        outcomes.push(outcome);
    }
    // The outbox, in the order the changes happened (its seq orders them per record).
    Dialect::insert_events(&mut *tx, &events, now).await?;
    tx.commit().await.map_err(BatchError::Commit)?;
    Ok(outcomes)
}

/// The rows the batch's creates insert, in order.
fn created_rows(writes: &[&RecordWrite], now: i64) -> Vec<RecordRow> {
    writes
        .iter()
        .filter_map(|write| match write {
            RecordWrite::Create {
                scope,
                id,
                record_type,
                stage,
                data,
                score,
                created_by,
                ..
            } => Some(RecordRow {
                tenant_id: scope.tenant_id(),
                id: *id,
                record_type: record_type.clone(),
                stage: stage.clone(),
                data: Json(data.clone()),
                version: 1,
                score: score.clone().map(Json),
                created_by: *created_by,
                created_at: now,
                updated_at: now,
            }),
            _ => None,
        })
        .collect()
}

/// The events of a create: `record.created`, the stage it starts in, and what the caller
/// added (`lead.scored`).
fn created_events(write: &RecordWrite, row: &RecordRow, events: &mut Vec<PendingEvent>) {
    let RecordWrite::Create {
        actor,
        events: extra,
        depth,
        root,
        ..
    } = write
    else {
        return;
    };
    let event = |kind, payload| PendingEvent {
        tenant_id: row.tenant_id,
        kind,
        record_type: row.record_type.clone(),
        record_id: row.id,
        actor: actor.clone(),
        payload,
        depth: *depth,
        root: *root,
    };
    events.push(event(
        EventKind::RecordCreated,
        json!({ "version": 1, "stage": row.stage }),
    ));
    if row.stage.is_some() {
        // The stage history starts with the stage a record was created in.
        events.push(event(
            EventKind::StageChanged,
            json!({ "from": null, "to": row.stage, "by": actor, "version": 1 }),
        ));
    }
    for (kind, payload) in extra {
        events.push(event(*kind, payload.clone()));
    }
}

/// An update inside the batch: version-checked against the stored record.
async fn apply_update<C: RecordStatements>(
    tx: &mut C,
    write: &RecordWrite,
    now: i64,
    events: &mut Vec<PendingEvent>,
) -> Result<WriteOutcome, sqlx::Error> {
    let RecordWrite::Update {
        scope,
        record_type,
        id,
        expected_version,
        data,
        stage,
        score,
        events: extra,
        actor,
        depth,
        root,
    } = write
    else {
        unreachable!("called for updates only");
    };
    let mut row = match tx.current(scope, record_type, *id).await? {
        None => return Ok(WriteOutcome::NotFound),
        Some(c) if c.version != *expected_version => {
            return Ok(WriteOutcome::VersionConflict {
                current_version: c.version,
            });
        }
        Some(row) => row,
    };
    let previous_stage = row.stage.clone();
    if let Some(data) = data {
        row.data = Json(data.clone());
    }
    if let Some(stage) = stage {
        row.stage = Some(stage.clone());
    }
    if let Some(score) = score {
        row.score = score.clone().map(Json);
    }
    row.version += 1;
    row.updated_at = now;
    if !tx.replace(&row, *expected_version).await? {
        // Another node changed (or deleted) it between our read and write: report what is
        // stored now.
        return Ok(match tx.stored_version(scope, *id).await? {
            Some(current_version) => WriteOutcome::VersionConflict { current_version },
            None => WriteOutcome::NotFound,
        });
    }
    let event = |kind, payload| PendingEvent {
        tenant_id: scope.tenant_id(),
        kind,
        record_type: record_type.clone(),
        record_id: *id,
        actor: actor.clone(),
        payload,
        depth: *depth,
        root: *root,
    };
    events.push(event(
        EventKind::RecordUpdated,
        json!({ "version": row.version, "previous_version": expected_version }),
    ));
    if previous_stage != row.stage {
        events.push(event(
            EventKind::StageChanged,
            json!({ "from": previous_stage, "to": row.stage, "by": actor, "version": row.version }),
        ));
    }
    for (kind, payload) in extra {
        events.push(event(*kind, payload.clone()));
    }
    Ok(WriteOutcome::Updated(row))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(scope: TenantScope, n: i64) -> RecordWrite {
        RecordWrite::Create {
            scope,
            id: Uuid::now_v7(),
            score: None,
            events: Vec::new(),
            record_type: "lead".into(),
            stage: None,
            data: json!({ "n": n }),
            created_by: None,
            actor: "test".into(),
            depth: 0,
            root: None,
        }
    }

    /// A write that fails inside a batch (here: a tenant that does not exist, refused by the
    /// foreign key) fails alone; its neighbours are retried and stored.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_failing_write_does_not_fail_its_batch() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("w.db").display());
        let store = Store::connect(&url).await.unwrap();
        let tenant = store.create_tenant("acme", "Acme").await.unwrap().unwrap();
        let writer = RecordWriter::start(&store, MAX_BATCH).unwrap();
        let ghost = TenantScope::new(Uuid::now_v7());
        let writes = (0..40).map(|n| {
            let scope = if n == 20 { ghost } else { tenant.scope() };
            writer.submit(create(scope, n))
        });
        let outcomes = futures_util::future::join_all(writes).await;
        for (n, outcome) in outcomes.iter().enumerate() {
            match (n, outcome) {
                (20, Err(StoreError::Database(_))) => {}
                (20, other) => panic!("the ghost tenant's write succeeded: {other:?}"),
                (_, Ok(WriteOutcome::Created(row))) => assert_eq!(row.data.0["n"], n as i64),
                (_, other) => panic!("write {n} failed with its bad neighbour: {other:?}"),
            }
        }
        let stored = store
            .list_records(
                &tenant.scope(),
                "lead",
                &Default::default(),
                100,
                usize::MAX,
            )
            .await
            .unwrap()
            .0;
        assert_eq!(stored.len(), 39);
    }
}
