//! The outbox as a work queue: claiming events in order per record, recording what each
//! delivery did, and settling events as dispatched or due for a retry.
//!
//! A claim is a lease (`claimed_until`), not an open transaction: plugin calls take
//! milliseconds to seconds and must not hold database locks. On PostgreSQL the claiming
//! statement skips rows another node is claiming at that moment (`FOR UPDATE SKIP LOCKED`),
//! and a node that dies leaves leases that expire. An event is claimable only when no
//! earlier event of the same record is still pending, so a record's events are handled in
//! order even across nodes.

use serde_json::Value;
use sqlx::types::Json;
use uuid::Uuid;

use super::dialect::{Dialect, ROWS_PER_STATEMENT};
use super::{Store, StoreResult, TenantScope, now_micros, on_pool};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct QueuedEvent {
    pub seq: i64,
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub kind: String,
    pub record_type: Option<String>,
    pub record_id: Option<Uuid>,
    pub actor: Option<String>,
    pub payload: Json<Value>,
    pub created_at: i64,
    pub depth: i64,
    pub attempts: i64,
    /// The event its automation chain started from; `None`: it started one.
    pub root_id: Option<Uuid>,
}

impl QueuedEvent {
    /// The root of this event's chain: whose budget its work spends.
    pub fn root(&self) -> Uuid {
        self.root_id.unwrap_or(self.id)
    }
}

/// How a target's run for an event ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryStatus {
    Done,
    Failed,
    /// Not run: the chain it belonged to was cut.
    Skipped,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Done => "done",
            DeliveryStatus::Failed => "failed",
            DeliveryStatus::Skipped => "skipped",
        }
    }
}

/// The outcome of one target of one event.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub event_id: Uuid,
    pub target: String,
    pub tenant_id: Uuid,
    pub status: DeliveryStatus,
    pub attempts: i64,
    pub output: Option<String>,
    pub error: Option<String>,
    pub event_at: i64,
    pub finished_at: i64,
    /// The node whose dispatcher ran it.
    pub node: String,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DeliveryRow {
    pub event_id: Uuid,
    pub target: String,
    pub status: String,
    pub attempts: i64,
    pub output: Option<String>,
    pub error: Option<String>,
    pub event_at: i64,
    pub finished_at: i64,
    pub node: String,
}

/// An event written outside a record change.
#[derive(Clone, Copy)]
pub struct NewEvent<'a> {
    pub id: Uuid,
    pub kind: &'a str,
    /// `(record type, record id)` when it concerns a record.
    pub record: Option<(&'a str, Uuid)>,
    pub actor: &'a str,
    pub payload: &'a Value,
    pub depth: i64,
    /// The event the chain started from (`None`: this event starts one).
    pub root: Option<Uuid>,
}

/// What becomes of a claimed event.
#[derive(Debug, Clone)]
pub enum Settle {
    /// Dispatched (`error` when some target failed for good).
    Done { seq: i64, error: Option<String> },
    /// Try again at `at`.
    Retry { seq: i64, at: i64, error: String },
    /// Not now, and not a failure (the tenant is suspended): look again at `at`.
    Park { seq: i64, at: i64, reason: String },
}

const EVENT_COLUMNS: &str = "seq, id, tenant_id, kind, record_type, record_id, actor, payload, \
     created_at, depth, attempts, root_id";

/// Settles one event that did not simply finish: the same SQL on both backends, expanded
/// once per driver inside [`on_pool!`].
macro_rules! settle_one {
    ($tx:expr, $node:expr, $now:expr, $settle:expr) => {
        match $settle {
            Settle::Done { error: None, .. } => {}
            Settle::Done { seq, error: Some(error) } => {
                sqlx::query(
                    "UPDATE events SET dispatched_at = $1, failed_at = $1, claimed_until = NULL, \
                     attempts = attempts + 1, last_error = $2 WHERE seq = $3 AND claimed_by = $4",
                )
                .bind($now)
                .bind(error)
                .bind(seq)
                .bind($node)
                .execute($tx)
                .await?;
            }
            Settle::Retry { seq, at, error } => {
                sqlx::query(
                    "UPDATE events SET next_attempt_at = $1, claimed_until = NULL, \
                     attempts = attempts + 1, last_error = $2 WHERE seq = $3 AND claimed_by = $4",
                )
                .bind(at)
                .bind(error)
                .bind(seq)
                .bind($node)
                .execute($tx)
                .await?;
            }
            Settle::Park { seq, at, reason } => {
                sqlx::query(
                    "UPDATE events SET next_attempt_at = $1, claimed_until = NULL, last_error = $2 \
                     WHERE seq = $3 AND claimed_by = $4",
                )
                .bind(at)
                .bind(reason)
                .bind(seq)
                .bind($node)
                .execute($tx)
                .await?;
            }
        }
    };
}

impl Store {
    /// Frees every lease. Only for a single-node (SQLite) server starting up: the leases
    /// are its own, from before a crash.
    pub async fn release_claims(&self) -> StoreResult<u64> {
        on_pool!(self.pool(), pool => Ok(
            sqlx::query("UPDATE events SET claimed_until = NULL WHERE dispatched_at IS NULL AND claimed_until IS NOT NULL")
                .execute(pool)
                .await?
                .rows_affected()
        ))
    }

    /// Claims up to `limit` events for `node` until `lease_until`: the oldest pending event
    /// of each record (and events of no record), due now, not claimed by anyone else. The
    /// candidates are chosen once (a materialised CTE), and on PostgreSQL locked rows are
    /// skipped, so concurrent claimers never take the same event.
    pub async fn claim_events(
        &self,
        node: &str,
        lease_until: i64,
        limit: i64,
    ) -> StoreResult<Vec<QueuedEvent>> {
        let now = now_micros();
        let lock = self.pool().skip_locked();
        let sql = format!(
            "WITH candidates AS MATERIALIZED ( \
               SELECT e.seq FROM events e \
               WHERE e.dispatched_at IS NULL AND e.next_attempt_at <= $2 \
                 AND (e.claimed_until IS NULL OR e.claimed_until < $2) \
                 AND (e.record_id IS NULL OR NOT EXISTS ( \
                   SELECT 1 FROM events p WHERE p.dispatched_at IS NULL AND p.tenant_id = e.tenant_id \
                     AND p.record_id = e.record_id AND p.seq < e.seq)) \
               ORDER BY e.seq LIMIT $3 {lock}) \
             UPDATE events SET claimed_until = $1, claimed_by = $4 \
             WHERE seq IN (SELECT seq FROM candidates) \
             RETURNING {EVENT_COLUMNS}"
        );
        let mut rows = on_pool!(self.pool(), pool => {
            sqlx::query_as::<_, QueuedEvent>(sqlx::AssertSqlSafe(sql))
                .bind(lease_until)
                                .bind(now)
                .bind(limit)
                .bind(node)
                .fetch_all(pool)
                .await?
        });
        rows.sort_by_key(|e| e.seq);
        Ok(rows)
    }

    /// Extends `node`'s leases on `seqs` while it is still working on them.
    pub async fn renew_claims(
        &self,
        node: &str,
        seqs: &[i64],
        lease_until: i64,
    ) -> StoreResult<()> {
        for chunk in seqs.chunks(ROWS_PER_STATEMENT) {
            on_pool!(self.pool(), pool => {
                let mut update = sqlx::QueryBuilder::new("UPDATE events SET claimed_until = ");
                update.push_bind(lease_until);
                update.push(" WHERE claimed_by = ");
                update.push_bind(node);
                update.push(" AND dispatched_at IS NULL AND seq IN (");
                let mut list = update.separated(", ");
                for seq in chunk {
                    list.push_bind(*seq);
                }
                update.push(")");
                update.build().execute(pool).await?;
            });
        }
        Ok(())
    }

    /// Targets of an event that already finished (on an earlier attempt).
    pub async fn finished_targets(&self, event_id: Uuid) -> StoreResult<Vec<String>> {
        on_pool!(self.pool(), pool => Ok(
            sqlx::query_scalar("SELECT target FROM event_deliveries WHERE event_id = $1")
                .bind(event_id)
                .fetch_all(pool)
                .await?
        ))
    }

    /// Records deliveries and settles events, in one transaction. Only events `node` still
    /// holds are settled: one whose lease ran out belongs to whoever claimed it next.
    pub async fn settle_events(
        &self,
        node: &str,
        deliveries: &[Delivery],
        settles: &[Settle],
    ) -> StoreResult<()> {
        let now = now_micros();
        let done: Vec<i64> = settles
            .iter()
            .filter_map(|s| match s {
                Settle::Done { seq, error: None } => Some(*seq),
                _ => None,
            })
            .collect();
        on_pool!(self.pool(), pool => {
            let mut tx = pool.begin().await?;
            Dialect::insert_deliveries(&mut *tx, deliveries).await?;
            Dialect::mark_dispatched(&mut *tx, node, &done, now).await?;
            for settle in settles {
                settle_one!(&mut *tx, node, now, settle);
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// Appends an event (a plugin's own, or the dispatcher's). With an `id` derived from an
    /// idempotency key, a repeated insert is a no-op.
    pub async fn insert_event(&self, scope: &TenantScope, event: &NewEvent<'_>) -> StoreResult<()> {
        let NewEvent {
            id,
            kind,
            record,
            actor,
            payload,
            depth,
            root,
        } = *event;
        on_pool!(self.pool(), pool => {
            sqlx::query(
                "INSERT INTO events (id, tenant_id, kind, record_type, record_id, actor, payload, created_at, depth, root_id) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (id) DO NOTHING",
            )
            .bind(id)
            .bind(scope.tenant_id())
            .bind(kind)
            .bind(record.map(|r| r.0))
            .bind(record.map(|r| r.1))
            .bind(actor)
            .bind(Json(payload))
            .bind(now_micros())
            .bind(depth)
            .bind(root)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Spends `runs` of the budget of the chain started by `root`, if at most `budget` is
    /// spent with them; `false` (and nothing spent) when the chain has used it up. One
    /// statement, so concurrent dispatchers on any node cannot overspend.
    pub async fn spend_budget(
        &self,
        scope: &TenantScope,
        root: Uuid,
        runs: i64,
        budget: i64,
    ) -> StoreResult<bool> {
        if runs > budget {
            return Ok(false);
        }
        let spent = on_pool!(self.pool(), pool => {
            sqlx::query_scalar::<_, i64>(
                "INSERT INTO event_budgets (tenant_id, root_id, spent, updated_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (tenant_id, root_id) DO UPDATE SET spent = event_budgets.spent + excluded.spent, \
                 updated_at = excluded.updated_at WHERE event_budgets.spent + excluded.spent <= $5 \
                 RETURNING spent",
            )
            .bind(scope.tenant_id())
            .bind(root)
            .bind(runs)
            .bind(now_micros())
            .bind(budget)
            .fetch_optional(pool)
            .await?
        });
        Ok(spent.is_some())
    }

    /// The tenant's latest deliveries (automation runs and plugin deliveries), newest first.
    pub async fn list_deliveries(
        &self,
        scope: &TenantScope,
        limit: i64,
    ) -> StoreResult<Vec<DeliveryRow>> {
        on_pool!(self.pool(), pool => Ok(
            sqlx::query_as::<_, DeliveryRow>(
                "SELECT event_id, target, status, attempts, output, error, event_at, finished_at, node \
                 FROM event_deliveries WHERE tenant_id = $1 ORDER BY finished_at DESC LIMIT $2",
            )
            .bind(scope.tenant_id())
            .bind(limit)
            .fetch_all(pool)
            .await?
        ))
    }

    /// Events not yet dispatched (all tenants): the dispatcher's backlog.
    pub async fn pending_events(&self) -> StoreResult<i64> {
        on_pool!(self.pool(), pool => Ok(
            sqlx::query_scalar("SELECT COUNT(*) FROM events WHERE dispatched_at IS NULL")
                .fetch_one(pool)
                .await?
        ))
    }
}
