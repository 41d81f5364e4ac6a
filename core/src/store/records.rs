//! Record types and record reads. Writes go through [`super::writer::RecordWriter`].

use serde_json::Value;
use sqlx::types::Json;
use uuid::Uuid;

use super::{Store, StoreResult, TenantScope, now_micros, on_pool};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RecordRow {
    pub tenant_id: Uuid,
    pub id: Uuid,
    #[sqlx(rename = "type")]
    pub record_type: String,
    pub stage: Option<String>,
    pub data: Json<Value>,
    pub version: i64,
    pub score: Option<Json<Value>>,
    pub created_by: Option<Uuid>,
    pub created_at: i64,
    pub updated_at: i64,
}

pub(crate) const RECORD_COLUMNS: &str =
    "tenant_id, id, type, stage, data, version, score, created_by, created_at, updated_at";

/// One record by its primary key, `(tenant_id, id)`; callers check its type.
///
/// The type is deliberately not in the predicate: with `type = $n` there too, the
/// `(tenant_id, type, ...)` indexes match as many columns as the primary key, and
/// PostgreSQL's cached generic plan for a freshly filled, not yet analyzed table was seen to
/// pick one of them and walk every record of the type on each lookup (a 12x slowdown).
pub(crate) fn record_by_key_sql() -> String {
    format!("SELECT {RECORD_COLUMNS} FROM records WHERE tenant_id = $1 AND id = $2")
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RecordType {
    pub id: String,
    pub name: String,
    pub schema: Option<Json<Value>>,
    /// Bumped on every change of the schema; validators are cached per version.
    pub version: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

/// Filters of a record listing. All optional; results are in id order (creation order).
#[derive(Debug, Default, Clone)]
pub struct RecordFilter {
    pub stage: Option<String>,
    pub updated_since: Option<i64>,
    /// Keyset cursor: only records after this id.
    pub after: Option<Uuid>,
}

impl Store {
    /// The version of a record type's schema, or `None` if the tenant has no such type.
    pub async fn record_type_version(
        &self,
        scope: &TenantScope,
        id: &str,
    ) -> StoreResult<Option<i64>> {
        on_pool!(self.pool(), pool => Ok(
            sqlx::query_scalar("SELECT version FROM record_types WHERE tenant_id = $1 AND id = $2")
                .bind(scope.tenant_id())
                .bind(id)
                .fetch_optional(pool)
                .await?
        ))
    }

    pub async fn record_type(
        &self,
        scope: &TenantScope,
        id: &str,
    ) -> StoreResult<Option<RecordType>> {
        on_pool!(self.pool(), pool => Ok(
            sqlx::query_as::<_, RecordType>(
                "SELECT id, name, schema, version, created_at, updated_at \
                 FROM record_types WHERE tenant_id = $1 AND id = $2",
            )
            .bind(scope.tenant_id())
            .bind(id)
            .fetch_optional(pool)
            .await?
        ))
    }

    /// A page of the tenant's record types by id: at most `limit`, after the type `after`
    /// when given.
    pub async fn list_record_types(
        &self,
        scope: &TenantScope,
        after: Option<&str>,
        limit: i64,
    ) -> StoreResult<Vec<RecordType>> {
        let sql = format!(
            "SELECT id, name, schema, version, created_at, updated_at \
             FROM record_types WHERE tenant_id = $1 {} ORDER BY id LIMIT $2",
            if after.is_some() { "AND id > $3" } else { "" }
        );
        on_pool!(self.pool(), pool => {
            let mut query = sqlx::query_as::<_, RecordType>(sqlx::AssertSqlSafe(sql))
                .bind(scope.tenant_id())
                .bind(limit);
            if let Some(after) = after {
                query = query.bind(after.to_string());
            }
            Ok(query.fetch_all(pool).await?)
        })
    }

    /// Creates a record type or replaces its name and schema (bumping its version).
    /// Existing records are not re-validated; the new schema applies to later writes.
    pub async fn put_record_type(
        &self,
        scope: &TenantScope,
        id: &str,
        name: &str,
        schema: Option<&Value>,
    ) -> StoreResult<RecordType> {
        let now = now_micros();
        on_pool!(self.pool(), pool => Ok(
            sqlx::query_as::<_, RecordType>(
                "INSERT INTO record_types (tenant_id, id, name, schema, version, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, 1, $5, $5) \
                 ON CONFLICT (tenant_id, id) DO UPDATE SET name = excluded.name, \
                   schema = excluded.schema, version = record_types.version + 1, \
                   updated_at = excluded.updated_at \
                 RETURNING id, name, schema, version, created_at, updated_at",
            )
            .bind(scope.tenant_id())
            .bind(id)
            .bind(name)
            .bind(schema.map(Json))
            .bind(now)
            .fetch_one(pool)
            .await?
        ))
    }

    pub async fn get_record(
        &self,
        scope: &TenantScope,
        record_type: &str,
        id: Uuid,
    ) -> StoreResult<Option<RecordRow>> {
        Ok(self
            .record_by_id(scope, id)
            .await?
            .filter(|r| r.record_type == record_type))
    }

    /// The tenant's record with this id, whatever its type.
    pub async fn record_by_id(
        &self,
        scope: &TenantScope,
        id: Uuid,
    ) -> StoreResult<Option<RecordRow>> {
        Ok(on_pool!(self.pool(), pool => {
            sqlx::query_as::<_, RecordRow>(sqlx::AssertSqlSafe(record_by_key_sql()))
                .bind(scope.tenant_id())
                .bind(id)
                .fetch_optional(pool)
                .await?
        }))
    }

    /// One page of records, in id order, at most `limit` rows and (beyond the first row)
    /// at most `max_bytes` of record JSON. Rows are read one at a time and reading stops at
    /// the budget, so a page of large records never sits in memory whole. The flag says
    /// whether the budget, rather than `limit` or the end of the data, ended the page.
    pub async fn list_records(
        &self,
        scope: &TenantScope,
        record_type: &str,
        filter: &RecordFilter,
        limit: i64,
        max_bytes: usize,
    ) -> StoreResult<(Vec<RecordRow>, bool)> {
        use futures_util::TryStreamExt;
        // Only fixed fragments are joined; every value is a bound parameter.
        let mut sql =
            format!("SELECT {RECORD_COLUMNS} FROM records WHERE tenant_id = $1 AND type = $2");
        let mut n = 2;
        let mut clause = |column: &str, op: &str| {
            n += 1;
            sql.push_str(&format!(" AND {column} {op} ${n}"));
        };
        if filter.stage.is_some() {
            clause("stage", "=");
        }
        if filter.updated_since.is_some() {
            clause("updated_at", ">=");
        }
        if filter.after.is_some() {
            clause("id", ">");
        }
        sql.push_str(&format!(" ORDER BY id LIMIT ${}", n + 1));
        on_pool!(self.pool(), pool => {
            let mut query = sqlx::query_as::<_, RecordRow>(sqlx::AssertSqlSafe(sql))
                .bind(scope.tenant_id())
                .bind(record_type);
            if let Some(stage) = &filter.stage {
                query = query.bind(stage.clone());
            }
            if let Some(since) = filter.updated_since {
                query = query.bind(since);
            }
            if let Some(after) = filter.after {
                query = query.bind(after);
            }
            let mut rows = Vec::new();
            let mut used = 0usize;
            let mut stream = query.bind(limit).fetch(pool);
            while let Some(row) = stream.try_next().await? {
                used = used.saturating_add(row.json_len());
                if used > max_bytes && !rows.is_empty() {
                    return Ok((rows, true));
                }
                rows.push(row);
            }
            Ok((rows, false))
        })
    }
}

impl RecordRow {
    /// About how many bytes this record takes in a JSON response: its data and score as
    /// JSON text, plus the fixed fields.
    pub fn json_len(&self) -> usize {
        const FIXED: usize = 256;
        FIXED
            + self.record_type.len()
            + self.stage.as_ref().map_or(0, String::len)
            + json_len(&self.data.0)
            + self.score.as_ref().map_or(0, |s| json_len(&s.0))
    }
}

/// The length of `value` as compact JSON text, counted without building the text.
pub fn json_len(value: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing a `Value` to a writer that never fails cannot fail.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}
