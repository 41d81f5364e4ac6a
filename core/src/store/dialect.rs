//! Every difference between the two backends, in one place. The rest of the store runs the
//! same SQL text on both (through [`super::on_pool!`]); what cannot be the same is here:
//!
//! - **Bulk inserts.** SQLite takes a multi-row VALUES list (statements are cheap to prepare
//!   in-process); PostgreSQL takes arrays through UNNEST, since a VALUES list of each new
//!   size is parsed and planned again (measured at tens of milliseconds for a hundred rows)
//!   while the array statement is prepared once.
//! - **Locking.** PostgreSQL claimers skip each other's rows (`FOR UPDATE SKIP LOCKED`);
//!   SQLite has one writer at a time, and its write transactions take the lock at `BEGIN
//!   IMMEDIATE`, since a deferred one that reads first cannot wait for a lock another
//!   connection took meanwhile (it fails with SQLITE_BUSY at once).
//! - **JSON.** A number inside a record's data is read with `json_extract` on SQLite and
//!   `->>` on PostgreSQL.
//! - **Nodes.** A SQLite file has one server; PostgreSQL may have several.
//! - **TCP.** sqlx 0.9.0 opens PostgreSQL's TCP sockets without `TCP_NODELAY`
//!   (transact-rs/sqlx#4335; the fix, #4336, is not in a release), so a request written in
//!   two pieces waits 40 ms for the server's delayed ACK. sqlx offers no hook to reach its
//!   socket, so [`nodelay_to`] sets the option on the process's sockets connected to the
//!   database, right after each connection is made (Linux; elsewhere it does nothing).

use std::future::Future;

use sqlx::types::Json;
use sqlx::{PgConnection, SqliteConnection};
use uuid::Uuid;

use super::Pool;
use super::events::Delivery;
use super::records::RecordRow;
use super::templates::StageFigures;
use super::writer::{PendingEvent, score_value};
use crate::tenancy::TenantScope;

/// Rows per multi-row statement on SQLite: 11 parameters a row stays far below its 32,766
/// bind parameters (PostgreSQL's arrays have no such bound).
pub(crate) const ROWS_PER_STATEMENT: usize = 500;

/// What differs between SQLite and PostgreSQL, per connection type.
pub(crate) trait Dialect: Send {
    /// How a write transaction begins.
    const BEGIN_WRITE: &'static str;

    /// Inserts records (any number).
    fn insert_records(
        &mut self,
        rows: &[RecordRow],
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;

    /// Inserts outbox events (any number), in order: their `seq` follows the slice.
    fn insert_events(
        &mut self,
        events: &[PendingEvent],
        now: i64,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;

    /// Inserts deliveries (any number); one already recorded for its event and target is
    /// left as it is.
    fn insert_deliveries(
        &mut self,
        deliveries: &[Delivery],
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;

    /// Marks the events `seqs` that `node` still holds as dispatched.
    fn mark_dispatched(
        &mut self,
        node: &str,
        seqs: &[i64],
        now: i64,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;

    /// Records of a type per stage: how many, and the sum of the numeric `field` of their
    /// data (never spliced into the SQL).
    fn stage_figures(
        &mut self,
        scope: &TenantScope,
        record_type: &str,
        field: &str,
    ) -> impl Future<Output = Result<Vec<StageFigures>, sqlx::Error>> + Send;
}

impl Pool {
    /// What a claiming query appends so that concurrent claimers skip each other's rows.
    pub(crate) fn skip_locked(&self) -> &'static str {
        match self {
            Pool::Postgres(_) => "FOR UPDATE SKIP LOCKED",
            Pool::Sqlite(_) => "",
        }
    }

    /// Whether one server owns the database: a SQLite file is opened by one node, so any
    /// claim on its events is that node's own (from before a crash).
    pub fn single_node(&self) -> bool {
        matches!(self, Pool::Sqlite(_))
    }
}

impl Dialect for SqliteConnection {
    const BEGIN_WRITE: &'static str = "BEGIN IMMEDIATE";

    async fn insert_records(&mut self, rows: &[RecordRow]) -> Result<(), sqlx::Error> {
        for chunk in rows.chunks(ROWS_PER_STATEMENT) {
            let mut insert = sqlx::QueryBuilder::new(
                "INSERT INTO records (tenant_id, id, type, stage, data, version, score, score_value, created_by, created_at, updated_at) ",
            );
            insert.push_values(chunk, |mut b, row| {
                b.push_bind(row.tenant_id)
                    .push_bind(row.id)
                    .push_bind(&row.record_type)
                    .push_bind(&row.stage)
                    .push_bind(&row.data)
                    .push_bind(row.version)
                    .push_bind(&row.score)
                    .push_bind(score_value(&row.score))
                    .push_bind(row.created_by)
                    .push_bind(row.created_at)
                    .push_bind(row.updated_at);
            });
            insert.build().execute(&mut *self).await?;
        }
        Ok(())
    }

    async fn insert_events(
        &mut self,
        events: &[PendingEvent],
        now: i64,
    ) -> Result<(), sqlx::Error> {
        for chunk in events.chunks(ROWS_PER_STATEMENT) {
            let mut insert = sqlx::QueryBuilder::new(
                "INSERT INTO events (id, tenant_id, kind, record_type, record_id, actor, payload, created_at, depth, root_id) ",
            );
            insert.push_values(chunk, |mut b, e| {
                b.push_bind(Uuid::now_v7())
                    .push_bind(e.tenant_id)
                    .push_bind(e.kind.as_str())
                    .push_bind(&e.record_type)
                    .push_bind(e.record_id)
                    .push_bind(&e.actor)
                    .push_bind(Json(&e.payload))
                    .push_bind(now)
                    .push_bind(e.depth)
                    .push_bind(e.root);
            });
            insert.build().execute(&mut *self).await?;
        }
        Ok(())
    }

    async fn insert_deliveries(&mut self, deliveries: &[Delivery]) -> Result<(), sqlx::Error> {
        for chunk in deliveries.chunks(ROWS_PER_STATEMENT) {
            let mut insert = sqlx::QueryBuilder::new(
                "INSERT INTO event_deliveries (event_id, target, tenant_id, status, attempts, output, error, event_at, finished_at, node) ",
            );
            insert.push_values(chunk, |mut b, d| {
                b.push_bind(d.event_id)
                    .push_bind(&d.target)
                    .push_bind(d.tenant_id)
                    .push_bind(d.status.as_str())
                    .push_bind(d.attempts)
                    .push_bind(&d.output)
                    .push_bind(&d.error)
                    .push_bind(d.event_at)
                    .push_bind(d.finished_at)
                    .push_bind(&d.node);
            });
            insert.push(" ON CONFLICT (event_id, target) DO NOTHING");
            insert.build().execute(&mut *self).await?;
        }
        Ok(())
    }

    async fn mark_dispatched(
        &mut self,
        node: &str,
        seqs: &[i64],
        now: i64,
    ) -> Result<(), sqlx::Error> {
        for chunk in seqs.chunks(ROWS_PER_STATEMENT) {
            let mut update = sqlx::QueryBuilder::new("UPDATE events SET dispatched_at = ");
            update.push_bind(now);
            update.push(", claimed_until = NULL, attempts = attempts + 1 WHERE claimed_by = ");
            update.push_bind(node);
            update.push(" AND seq IN (");
            let mut list = update.separated(", ");
            for seq in chunk {
                list.push_bind(*seq);
            }
            update.push(")");
            update.build().execute(&mut *self).await?;
        }
        Ok(())
    }

    async fn stage_figures(
        &mut self,
        scope: &TenantScope,
        record_type: &str,
        field: &str,
    ) -> Result<Vec<StageFigures>, sqlx::Error> {
        sqlx::query_as::<_, StageFigures>(
            "SELECT stage, COUNT(*) AS count, \
             SUM(CASE WHEN json_type(data, $3) IN ('integer', 'real') \
                 THEN CAST(json_extract(data, $3) AS REAL) END) AS value \
             FROM records WHERE tenant_id = $1 AND type = $2 GROUP BY stage",
        )
        .bind(scope.tenant_id())
        .bind(record_type)
        .bind(format!("$.\"{}\"", field.replace('"', "")))
        .fetch_all(&mut *self)
        .await
    }
}

impl Dialect for PgConnection {
    const BEGIN_WRITE: &'static str = "BEGIN";

    async fn insert_records(&mut self, rows: &[RecordRow]) -> Result<(), sqlx::Error> {
        if rows.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO records (tenant_id, id, type, stage, data, version, score, score_value, created_by, \
             created_at, updated_at) \
             SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::jsonb[], $6::int8[], \
               $7::jsonb[], $8::int8[], $9::uuid[], $10::int8[], $11::int8[])",
        )
        .bind(rows.iter().map(|r| r.tenant_id).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.id).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.record_type.clone()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.stage.clone()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.data.clone()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.version).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.score.clone()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| score_value(&r.score)).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.created_by).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.created_at).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.updated_at).collect::<Vec<_>>())
        .execute(&mut *self)
        .await?;
        Ok(())
    }

    async fn insert_events(
        &mut self,
        events: &[PendingEvent],
        now: i64,
    ) -> Result<(), sqlx::Error> {
        if events.is_empty() {
            return Ok(());
        }
        // In array order, so `seq` follows the order the changes happened.
        sqlx::query(
            "INSERT INTO events (id, tenant_id, kind, record_type, record_id, actor, payload, created_at, depth, root_id) \
             SELECT id, tenant_id, kind, record_type, record_id, actor, payload, $8, depth, root_id \
             FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::uuid[], $6::text[], $7::jsonb[], \
               $9::int8[], $10::uuid[]) WITH ORDINALITY \
               AS e(id, tenant_id, kind, record_type, record_id, actor, payload, depth, root_id, n) ORDER BY n",
        )
        .bind(events.iter().map(|_| Uuid::now_v7()).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.tenant_id).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.record_type.clone()).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.record_id).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.actor.clone()).collect::<Vec<_>>())
        .bind(events.iter().map(|e| Json(e.payload.clone())).collect::<Vec<_>>())
        .bind(now)
        .bind(events.iter().map(|e| e.depth).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.root).collect::<Vec<_>>())
        .execute(&mut *self)
        .await?;
        Ok(())
    }

    async fn insert_deliveries(&mut self, deliveries: &[Delivery]) -> Result<(), sqlx::Error> {
        if deliveries.is_empty() {
            return Ok(());
        }
        let column = |f: fn(&Delivery) -> Option<String>| -> Vec<Option<String>> {
            deliveries.iter().map(f).collect()
        };
        sqlx::query(
            "INSERT INTO event_deliveries (event_id, target, tenant_id, status, attempts, output, error, \
             event_at, finished_at, node) \
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::uuid[], $4::text[], $5::int8[], \
               $6::text[], $7::text[], $8::int8[], $9::int8[], $10::text[]) \
             ON CONFLICT (event_id, target) DO NOTHING",
        )
        .bind(deliveries.iter().map(|d| d.event_id).collect::<Vec<_>>())
        .bind(deliveries.iter().map(|d| d.target.clone()).collect::<Vec<_>>())
        .bind(deliveries.iter().map(|d| d.tenant_id).collect::<Vec<_>>())
        .bind(deliveries.iter().map(|d| d.status.as_str()).collect::<Vec<_>>())
        .bind(deliveries.iter().map(|d| d.attempts).collect::<Vec<_>>())
        .bind(column(|d| d.output.clone()))
        .bind(column(|d| d.error.clone()))
        .bind(deliveries.iter().map(|d| d.event_at).collect::<Vec<_>>())
        .bind(deliveries.iter().map(|d| d.finished_at).collect::<Vec<_>>())
        .bind(deliveries.iter().map(|d| d.node.clone()).collect::<Vec<_>>())
        .execute(&mut *self)
        .await?;
        Ok(())
    }

    async fn mark_dispatched(
        &mut self,
        node: &str,
        seqs: &[i64],
        now: i64,
    ) -> Result<(), sqlx::Error> {
        if seqs.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "UPDATE events SET dispatched_at = $1, claimed_until = NULL, attempts = attempts + 1 \
             WHERE claimed_by = $2 AND seq = ANY($3)",
        )
        .bind(now)
        .bind(node)
        .bind(seqs)
        .execute(&mut *self)
        .await?;
        Ok(())
    }

    async fn stage_figures(
        &mut self,
        scope: &TenantScope,
        record_type: &str,
        field: &str,
    ) -> Result<Vec<StageFigures>, sqlx::Error> {
        sqlx::query_as::<_, StageFigures>(
            "SELECT stage, COUNT(*) AS count, \
             SUM(CASE WHEN jsonb_typeof(data -> $3) = 'number' \
                 THEN (data ->> $3)::float8 END) AS value \
             FROM records WHERE tenant_id = $1 AND type = $2 GROUP BY stage",
        )
        .bind(scope.tenant_id())
        .bind(record_type)
        .bind(field)
        .fetch_all(&mut *self)
        .await
    }
}

/// The addresses a PostgreSQL connection with `options` reaches over TCP (none for a Unix
/// socket, or a host that does not resolve: the connection itself will say why).
pub(crate) async fn tcp_peers(
    options: &sqlx::postgres::PgConnectOptions,
) -> Vec<std::net::SocketAddr> {
    let host = options.get_host();
    if host.starts_with('/') {
        return Vec::new();
    }
    match tokio::net::lookup_host((host, options.get_port())).await {
        Ok(addrs) => addrs.collect(),
        Err(_) => Vec::new(),
    }
}

/// Turns Nagle's algorithm off on every TCP socket of this process connected to one of
/// `peers` (the database): sqlx 0.9.0 leaves it on and offers no way to reach its socket.
/// Setting it twice is harmless; a socket closed meanwhile is skipped.
pub(crate) fn nodelay_to(peers: &[std::net::SocketAddr]) {
    if peers.is_empty() {
        return;
    }
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::BorrowedFd;
        let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
            return;
        };
        for entry in entries.flatten() {
            let is_socket = std::fs::read_link(entry.path())
                .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"));
            let Some(fd) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<i32>().ok())
            else {
                continue;
            };
            if !is_socket {
                continue;
            }
            // SAFETY: the descriptor is open (it is listed), and only borrowed for two
            // calls; one closed meanwhile makes them fail, which is ignored.
            let fd = unsafe { BorrowedFd::borrow_raw(fd) };
            let socket = socket2::SockRef::from(&fd);
            let to_database = socket
                .peer_addr()
                .ok()
                .and_then(|a| a.as_socket())
                .is_some_and(|a| peers.contains(&a));
            if to_database {
                let _ = socket.set_tcp_nodelay(true);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_os = "linux")]
    #[test]
    fn nagle_is_turned_off_on_sockets_to_the_database_only() {
        let database = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let to_database = std::net::TcpStream::connect(database.local_addr().unwrap()).unwrap();
        let elsewhere = std::net::TcpStream::connect(other.local_addr().unwrap()).unwrap();
        assert!(!to_database.nodelay().unwrap() && !elsewhere.nodelay().unwrap());
        super::nodelay_to(&[database.local_addr().unwrap()]);
        assert!(to_database.nodelay().unwrap(), "the database's socket");
        assert!(!elsewhere.nodelay().unwrap(), "no other socket");
    }
}
