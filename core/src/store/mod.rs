//! Storage: one [`Store`] over SQLite (the embedded default) or PostgreSQL.
//!
//! Both backends run the same SQL text: numbered `$N` parameters, `RETURNING` and
//! `ON CONFLICT` mean the same on both, ids bind as [`uuid::Uuid`] (BLOB on SQLite, uuid on
//! PostgreSQL), JSON as [`sqlx::types::Json`] and times as microseconds in a BIGINT. The
//! [`on_pool!`] macro expands a query once per backend, so each copy is type-checked against
//! its own driver without a tangle of generic bounds. Where the dialects differ, the code
//! is in [`dialect`], and nowhere else.
//!
//! Every method on tenant-owned data takes a [`TenantScope`] first; only the auth layer can
//! make one, so a handler cannot forget (or forge) the tenant filter.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, SqlitePool};

pub mod accounts;
pub mod cache;
mod dialect;
pub mod events;
pub mod integrations;
pub mod plugins;
pub mod records;
pub mod templates;
pub mod tenants;
pub mod tokens;
pub mod writer;

pub use crate::tenancy::TenantScope;

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

/// A storage failure. Expected outcomes (not found, conflicts) are not errors here: methods
/// return them as values so callers must handle them.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The record writer has stopped, or cannot open a connection to the database.
    #[error("the record writer is unavailable")]
    Unavailable,
    /// The commit failed in a way that leaves its outcome unknown (the connection dropped
    /// during COMMIT, say): the writes may or may not be stored, so they are not retried.
    #[error("the database did not confirm the commit")]
    CommitUnconfirmed,
    /// A stored value the code cannot read (a row written by a newer version, say).
    #[error("stored data does not parse: {0}")]
    Corrupt(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// The connection pool of the database a [`Store`] talks to.
#[derive(Clone, Debug)]
pub enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs `$body` with `$pool` bound to the concrete pool, once per backend.
#[macro_export]
macro_rules! on_pool {
    ($pool_enum:expr, $pool:ident => $body:expr) => {
        match $pool_enum {
            $crate::store::Pool::Sqlite($pool) => $body,
            $crate::store::Pool::Postgres($pool) => $body,
        }
    };
}
pub use on_pool;

/// The storage handle shared by the whole server (cheap to clone).
#[derive(Clone)]
pub struct Store {
    pool: Pool,
    credentials: std::sync::Arc<tenants::CredentialCache>,
}

impl Store {
    /// Connects to `url` (`sqlite://path` / `sqlite:path` or `postgres://...`), creating a
    /// SQLite file if it is missing, and applies pending migrations.
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        use anyhow::Context;
        let pool = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let options = PgConnectOptions::from_str(url)
                .context("STREAMFLOW_DATABASE_URL is not a valid PostgreSQL URL")?;
            let resolve = options.clone();
            let pool = PgPoolOptions::new()
                .max_connections(16)
                .acquire_timeout(Duration::from_secs(10))
                .after_connect(move |_, _| {
                    // Resolved per connection: the database's address may change.
                    let options = resolve.clone();
                    Box::pin(async move {
                        dialect::nodelay_to(&dialect::tcp_peers(&options).await);
                        Ok(())
                    })
                })
                .connect_with(options)
                .await
                .with_context(|| {
                    format!(
                        "cannot connect to PostgreSQL at {}; check that it runs and that the \
                         URL's user, host and database are right",
                        redact_url(url)
                    )
                })?;
            POSTGRES_MIGRATIONS
                .run(&pool)
                .await
                .context("applying PostgreSQL migrations")?;
            Pool::Postgres(pool)
        } else {
            let options = SqliteConnectOptions::from_str(url)
                .with_context(|| format!("{url} is not a valid SQLite URL"))?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .foreign_keys(true)
                .busy_timeout(Duration::from_secs(10))
                .pragma("cache_size", "-32000");
            let pool = SqlitePoolOptions::new()
                .max_connections(8)
                .min_connections(1)
                .acquire_timeout(Duration::from_secs(10))
                .connect_with(options)
                .await
                .with_context(|| format!("cannot open the SQLite database {url}"))?;
            SQLITE_MIGRATIONS
                .run(&pool)
                .await
                .context("applying SQLite migrations")?;
            Pool::Sqlite(pool)
        };
        Ok(Self {
            pool,
            credentials: Default::default(),
        })
    }

    pub(crate) fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Whether this server is the only one on its database (see [`Pool::single_node`]).
    pub fn single_node(&self) -> bool {
        self.pool.single_node()
    }

    /// A cheap round trip, for `/health`.
    pub async fn ping(&self) -> StoreResult<()> {
        on_pool!(&self.pool, pool => {
            sqlx::query("SELECT 1").execute(pool).await?;
        });
        Ok(())
    }

    pub async fn close(&self) {
        on_pool!(&self.pool, pool => pool.close().await)
    }
}

/// Raw access to the database, for tests and benchmarks that check or arrange what the
/// store's methods do not expose (the server itself never goes around the store).
#[doc(hidden)]
pub mod test_support {
    use super::{Pool, Store};

    /// The connection pool behind `store`, for [`crate::on_pool!`].
    pub fn pool(store: &Store) -> &Pool {
        store.pool()
    }
}

/// Hides the password in a database URL before it is shown to anyone.
pub fn redact_url(url: &str) -> String {
    // Query parameters may carry a password too (`?password=`); they are dropped.
    let url = url.split('?').next().unwrap_or(url);
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{}@{}", &url[..scheme_end + 3], user, &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

/// Now, in microseconds since the Unix epoch: the unit of every stored time.
pub fn now_micros() -> i64 {
    let now = time::OffsetDateTime::now_utc();
    (now.unix_timestamp_nanos() / 1_000) as i64
}

/// A stored time as RFC 3339 (UTC, microsecond precision) for API responses.
pub fn format_micros(micros: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(micros as i128 * 1_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Parses an RFC 3339 time from a query string into stored microseconds.
pub fn parse_rfc3339_micros(text: &str) -> Option<i64> {
    let t =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    Some((t.unix_timestamp_nanos() / 1_000) as i64)
}

/// True when the error is a unique-constraint violation (e.g. a slug or email taken).
pub fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.is_unique_violation())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_url_hides_password_only() {
        assert_eq!(
            redact_url("postgres://app:s3cret@db:5432/x"),
            "postgres://app@db:5432/x"
        );
        assert_eq!(
            redact_url("postgres://db/x?password=s3cret"),
            "postgres://db/x"
        );
        assert_eq!(
            redact_url("sqlite://streamflow.db"),
            "sqlite://streamflow.db"
        );
    }

    #[test]
    fn times_round_trip_through_rfc3339() {
        let t = 1_764_000_000_123_456;
        assert_eq!(parse_rfc3339_micros(&format_micros(t)), Some(t));
    }
}
