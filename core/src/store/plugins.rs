//! The plugin registry (global), installations, plugin key-value storage and the audit of
//! denied capability calls (tenant-owned, every query scoped by [`TenantScope`]).

use serde_json::Value;
use sqlx::types::Json;
use uuid::Uuid;

use super::{Store, StoreError, StoreResult, TenantScope, now_micros, on_pool};

/// A published plugin version, without its package bytes.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct VersionRow {
    pub plugin_id: String,
    pub version: String,
    pub name: String,
    pub api: String,
    pub manifest: Json<Value>,
    pub sha256: String,
    pub size: i64,
    pub status: String,
    pub review_note: Option<String>,
    pub reviewed_at: Option<i64>,
    pub uploaded_by: Uuid,
    pub uploaded_at: i64,
}

impl VersionRow {
    /// The stored manifest; one that no longer parses is corrupt data (and logged).
    pub fn manifest(&self) -> StoreResult<streamflow_runtime::Manifest> {
        serde_json::from_value(self.manifest.0.clone()).map_err(|e| {
            tracing::error!(plugin = %self.plugin_id, version = %self.version, error = %e,
                "stored manifest does not parse");
            StoreError::Corrupt(format!("manifest of {} {}", self.plugin_id, self.version))
        })
    }
}

const VERSION_COLUMNS: &str = "plugin_id, version, name, api, manifest, sha256, size, status, \
     review_note, reviewed_at, uploaded_by, uploaded_at";

/// What publishing a version came to.
#[derive(Debug)]
pub enum Published {
    Created(Box<VersionRow>),
    /// This id and version exist already; versions are immutable.
    Exists,
    /// Another developer owns the id.
    NotOwner,
    /// The developer published [`UploadQuota::per_hour`] versions in the last hour; the
    /// oldest of them leaves the window in this many seconds.
    RateLimited {
        retry_after_secs: u64,
    },
    /// The developer's stored packages and this one would exceed
    /// [`UploadQuota::max_bytes`]; `used` is what is stored now.
    StorageFull {
        used: i64,
    },
}

/// How much one developer may upload: versions per rolling hour, and bytes of packages
/// stored in all (every version they published, whatever its status).
#[derive(Debug, Clone, Copy)]
pub struct UploadQuota {
    pub per_hour: i64,
    pub max_bytes: i64,
}

impl UploadQuota {
    /// For the first-party plugins bundled with the server.
    pub const UNLIMITED: UploadQuota = UploadQuota {
        per_hour: i64::MAX,
        max_bytes: i64::MAX,
    };
}

/// A developer's uploads: versions published since a time, the oldest of them, and the
/// bytes of all their stored packages.
#[derive(Debug, Clone, Copy, Default)]
pub struct UploadUsage {
    pub recent: i64,
    pub oldest_recent: Option<i64>,
    pub stored_bytes: i64,
}

/// A developer's uploads after `$2` (count and oldest) and the bytes all their versions
/// store: what the upload quotas count.
/// Makes sure an installation's kv usage row exists and locks it (a write: the row lock on
/// PostgreSQL, the write lock on SQLite), returning its bytes and key count, so a kv write
/// checks and changes the usage with no other write in between.
const KV_USAGE_LOCK_SQL: &str = "INSERT INTO plugin_kv_usage (tenant_id, plugin_id, bytes, key_count) \
     VALUES ($1, $2, 0, 0) ON CONFLICT (tenant_id, plugin_id) DO UPDATE SET bytes = plugin_kv_usage.bytes \
     RETURNING bytes, key_count";

const UPLOAD_USAGE_SQL: &str = "SELECT COUNT(*) FILTER (WHERE uploaded_at > $2), \
     MIN(uploaded_at) FILTER (WHERE uploaded_at > $2), \
     CAST(COALESCE(SUM(size), 0) AS BIGINT) FROM plugin_versions WHERE uploaded_by = $1";

impl From<(i64, Option<i64>, i64)> for UploadUsage {
    fn from((recent, oldest_recent, stored_bytes): (i64, Option<i64>, i64)) -> Self {
        Self {
            recent,
            oldest_recent,
            stored_bytes,
        }
    }
}

/// The rolling window of [`UploadQuota::per_hour`], in microseconds.
pub const UPLOAD_WINDOW_MICROS: i64 = 3_600 * 1_000_000;

impl UploadUsage {
    /// Seconds until the oldest upload in the window leaves it (at least 1).
    pub fn retry_after_secs(&self, now: i64) -> u64 {
        let leaves = self.oldest_recent.unwrap_or(now) + UPLOAD_WINDOW_MICROS;
        ((leaves - now).max(0) as u64).div_ceil(1_000_000).max(1)
    }
}

/// Where a version is in review: uploaded (`pending`), then `approved` (tenants may install
/// it) or `rejected`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionStatus {
    Pending,
    Approved,
    Rejected,
}

impl VersionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            VersionStatus::Pending => "pending",
            VersionStatus::Approved => "approved",
            VersionStatus::Rejected => "rejected",
        }
    }

    pub fn parse(text: &str) -> Option<VersionStatus> {
        [
            VersionStatus::Pending,
            VersionStatus::Approved,
            VersionStatus::Rejected,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }
}

impl VersionRow {
    /// The stored status (a version whose status this server does not know counts as
    /// pending: it is offered to nobody).
    pub fn status(&self) -> VersionStatus {
        VersionStatus::parse(&self.status).unwrap_or(VersionStatus::Pending)
    }
}

impl VersionHash {
    /// See [`VersionRow::status`].
    pub fn status(&self) -> VersionStatus {
        VersionStatus::parse(&self.status).unwrap_or(VersionStatus::Pending)
    }
}

/// A version's identity, package hash and status (no package, no manifest).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct VersionHash {
    pub plugin_id: String,
    pub version: String,
    pub sha256: String,
    pub status: String,
}

/// A page of registry versions, in listing order (newest upload first).
#[derive(Debug, Clone, Default)]
pub struct VersionFilter {
    /// Only this developer's versions.
    pub developer: Option<Uuid>,
    /// Only versions with this status.
    pub status: Option<VersionStatus>,
    /// After this `(uploaded_at, plugin_id, version)`.
    pub after: Option<(i64, String, String)>,
}

/// The highest of `approved` that `requirement` accepts.
pub fn pick_version(
    approved: &[VersionRow],
    requirement: &semver::VersionReq,
) -> Option<VersionRow> {
    approved
        .iter()
        .filter_map(|row| semver::Version::parse(&row.version).ok().map(|v| (v, row)))
        .filter(|(v, _)| requirement.matches(v))
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, row)| row.clone())
}

/// A new version to publish.
pub struct NewVersion<'a> {
    pub plugin_id: &'a str,
    pub version: &'a str,
    pub name: &'a str,
    pub api: &'a str,
    pub manifest: &'a Value,
    pub package: &'a [u8],
    pub sha256: &'a str,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct InstallationRow {
    pub tenant_id: Uuid,
    pub plugin_id: String,
    pub requirement: String,
    pub version: String,
    pub grants: Json<Value>,
    pub config: Json<Value>,
    pub secrets: Option<Vec<u8>>,
    pub enabled: bool,
    pub created_at: i64,
    pub updated_at: i64,
    /// The provider's per-installation quotas and schedule intervals
    /// ([`streamflow_runtime::integration::Overrides`]).
    pub overrides: Json<Value>,
}

/// Creating or replacing an installation (keeping its creation time), from a pooled
/// connection or inside a template's transaction: written once, compiled per driver.
pub(super) trait UpsertInstallation: Send {
    fn upsert_installation(
        &mut self,
        scope: &TenantScope,
        row: &InstallationRow,
        now: i64,
    ) -> impl std::future::Future<Output = Result<InstallationRow, sqlx::Error>> + Send;
}

macro_rules! upsert_installation {
    ($connection:ty) => {
        impl UpsertInstallation for $connection {
            async fn upsert_installation(
                &mut self,
                scope: &TenantScope,
                row: &InstallationRow,
                now: i64,
            ) -> Result<InstallationRow, sqlx::Error> {
                sqlx::query_as::<_, InstallationRow>(sqlx::AssertSqlSafe(format!(
                    "INSERT INTO plugin_installations ({INSTALLATION_COLUMNS}) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9, $10) \
                     ON CONFLICT (tenant_id, plugin_id) DO UPDATE SET requirement = excluded.requirement, \
                     version = excluded.version, grants = excluded.grants, config = excluded.config, \
                     secrets = excluded.secrets, enabled = excluded.enabled, updated_at = excluded.updated_at, \
                     overrides = excluded.overrides \
                     RETURNING {INSTALLATION_COLUMNS}"
                )))
                .bind(scope.tenant_id())
                .bind(&row.plugin_id)
                .bind(&row.requirement)
                .bind(&row.version)
                .bind(&row.grants)
                .bind(&row.config)
                .bind(&row.secrets)
                .bind(row.enabled)
                .bind(now)
                .bind(&row.overrides)
                .fetch_one(&mut *self)
                .await
            }
        }
    };
}

upsert_installation!(sqlx::SqliteConnection);
upsert_installation!(sqlx::PgConnection);

const INSTALLATION_COLUMNS: &str = "tenant_id, plugin_id, requirement, version, grants, config, \
     secrets, enabled, created_at, updated_at, overrides";

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AuditRow {
    pub id: Uuid,
    pub plugin_id: String,
    pub version: String,
    pub capability: String,
    pub operation: String,
    /// `denied` (a call without the grant) or `allowed` (an audited call, such as a
    /// secret read).
    pub outcome: String,
    /// The window's first call.
    pub created_at: i64,
    /// Calls the row stands for (denials are counted per minute, not written one by one).
    pub calls: i64,
    /// The window's latest call.
    pub last_at: i64,
}

/// How many audit entries a listing returns at most.
pub const AUDIT_PAGE: i64 = 200;

/// Denied calls are aggregated per this window.
pub const AUDIT_WINDOW_MICROS: i64 = 60_000_000;

/// What [`Store::kv_set`] came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvSet {
    Stored,
    /// A new key past the installation's key limit.
    TooManyKeys,
    /// The write would take the installation past its byte quota (`used` bytes now).
    OverQuota {
        used: i64,
    },
}

impl Store {
    /// Publishes a version: claims the id for `developer` if nobody owns it, refuses it if
    /// someone else does, and never replaces an existing version.
    ///
    /// The developer's quota is checked in the same transaction, after locking the
    /// developer's account row (PostgreSQL; SQLite has one writer anyway), so concurrent
    /// uploads cannot both slip under it.
    pub async fn publish_version(
        &self,
        developer: Uuid,
        new: &NewVersion<'_>,
        quota: UploadQuota,
    ) -> StoreResult<Published> {
        let now = now_micros();
        let result: Result<Published, sqlx::Error> = on_pool!(self.pool(), pool => async {
            let mut tx = pool.begin().await?;
            // A write first: takes SQLite's write lock and the account's row lock on
            // PostgreSQL, so the usage read below sees every upload committed before it.
            sqlx::query("UPDATE developer_accounts SET name = name WHERE id = $1")
                .bind(developer)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "INSERT INTO plugins (id, developer_id, created_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(new.plugin_id)
            .bind(developer)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            let owner: Uuid = sqlx::query_scalar("SELECT developer_id FROM plugins WHERE id = $1")
                .bind(new.plugin_id)
                .fetch_one(&mut *tx)
                .await?;
            if owner != developer {
                return Ok(Published::NotOwner);
            }
            let usage: UploadUsage = sqlx::query_as::<_, (i64, Option<i64>, i64)>(UPLOAD_USAGE_SQL)
            .bind(developer)
            .bind(now - UPLOAD_WINDOW_MICROS)
            .fetch_one(&mut *tx)
            .await?
            .into();
            if usage.recent >= quota.per_hour {
                return Ok(Published::RateLimited { retry_after_secs: usage.retry_after_secs(now) });
            }
            if usage.stored_bytes.saturating_add(new.package.len() as i64) > quota.max_bytes {
                return Ok(Published::StorageFull { used: usage.stored_bytes });
            }
            let inserted = sqlx::query_as::<_, VersionRow>(sqlx::AssertSqlSafe(format!(
                "INSERT INTO plugin_versions (plugin_id, version, name, api, manifest, package, sha256, \
                 size, status, uploaded_by, uploaded_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'pending', $9, $10) \
                 ON CONFLICT (plugin_id, version) DO NOTHING RETURNING {VERSION_COLUMNS}"
            )))
            .bind(new.plugin_id)
            .bind(new.version)
            .bind(new.name)
            .bind(new.api)
            .bind(Json(new.manifest))
            .bind(new.package)
            .bind(new.sha256)
            .bind(new.package.len() as i64)
            .bind(developer)
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(match inserted {
                Some(row) => Published::Created(Box::new(row)),
                None => Published::Exists,
            })
        }.await);
        Ok(result?)
    }

    /// A developer's uploads since `since` and the bytes they store (what the quota
    /// counts; [`Store::publish_version`] checks it again atomically).
    pub async fn upload_usage(&self, developer: Uuid, since: i64) -> StoreResult<UploadUsage> {
        let usage: (i64, Option<i64>, i64) = on_pool!(self.pool(), pool => {
            sqlx::query_as(UPLOAD_USAGE_SQL)
                .bind(developer)
                .bind(since)
                .fetch_one(pool)
                .await?
        });
        Ok(usage.into())
    }

    /// Up to `limit` versions matching `filter`, newest upload first (then by id and
    /// version, so the order is total and a page's last row is a cursor).
    pub async fn list_versions(
        &self,
        filter: &VersionFilter,
        limit: i64,
    ) -> StoreResult<Vec<VersionRow>> {
        let (after_at, after_id, after_version) = match &filter.after {
            Some((at, id, version)) => (Some(*at), Some(id.as_str()), Some(version.as_str())),
            None => (None, None, None),
        };
        let rows = on_pool!(self.pool(), pool => {
            sqlx::query_as::<_, VersionRow>(sqlx::AssertSqlSafe(format!(
                "SELECT {VERSION_COLUMNS} FROM plugin_versions \
                 WHERE ($1 IS NULL OR plugin_id IN (SELECT id FROM plugins WHERE developer_id = $1)) \
                 AND ($2 IS NULL OR status = $2) \
                 AND ($3 IS NULL OR uploaded_at < $3 OR (uploaded_at = $3 AND (plugin_id > $4 \
                      OR (plugin_id = $4 AND version > $5)))) \
                 ORDER BY uploaded_at DESC, plugin_id, version LIMIT $6"
            )))
            .bind(filter.developer)
            .bind(filter.status.map(VersionStatus::as_str))
            .bind(after_at)
            .bind(after_id)
            .bind(after_version)
            .bind(limit)
            .fetch_all(pool)
            .await?
        });
        Ok(rows)
    }

    /// Hashes of the packages some tenant's enabled installation runs (an approved
    /// version), and every version's id, version, hash and status. A registry-wide
    /// question (which compiled code to keep on this node); it reveals no tenant data.
    pub async fn compiled_keep_sets(&self) -> StoreResult<(Vec<String>, Vec<VersionHash>)> {
        let (in_use, versions) = on_pool!(self.pool(), pool => {
            let in_use: Vec<String> = sqlx::query_scalar(
                "SELECT DISTINCT v.sha256 FROM plugin_installations i JOIN plugin_versions v \
                 ON v.plugin_id = i.plugin_id AND v.version = i.version \
                 WHERE i.enabled AND v.status = 'approved'",
            )
            .fetch_all(pool)
            .await?;
            let versions: Vec<VersionHash> = sqlx::query_as(
                "SELECT plugin_id, version, sha256, status FROM plugin_versions",
            )
            .fetch_all(pool)
            .await?;
            (in_use, versions)
        });
        Ok((in_use, versions))
    }

    pub async fn get_version(
        &self,
        plugin_id: &str,
        version: &str,
    ) -> StoreResult<Option<VersionRow>> {
        let row = on_pool!(self.pool(), pool => {
            sqlx::query_as::<_, VersionRow>(sqlx::AssertSqlSafe(format!(
                "SELECT {VERSION_COLUMNS} FROM plugin_versions WHERE plugin_id = $1 AND version = $2"
            )))
            .bind(plugin_id)
            .bind(version)
            .fetch_optional(pool)
            .await?
        });
        Ok(row)
    }

    /// The versions of a plugin that tenants may install.
    pub async fn approved_versions(&self, plugin_id: &str) -> StoreResult<Vec<VersionRow>> {
        let rows = on_pool!(self.pool(), pool => {
            sqlx::query_as::<_, VersionRow>(sqlx::AssertSqlSafe(format!(
                "SELECT {VERSION_COLUMNS} FROM plugin_versions WHERE plugin_id = $1 AND status = 'approved'"
            )))
            .bind(plugin_id)
            .fetch_all(pool)
            .await?
        });
        Ok(rows)
    }

    /// The package file of a version.
    pub async fn version_package(
        &self,
        plugin_id: &str,
        version: &str,
    ) -> StoreResult<Option<Vec<u8>>> {
        let bytes = on_pool!(self.pool(), pool => {
            sqlx::query_scalar::<_, Vec<u8>>(
                "SELECT package FROM plugin_versions WHERE plugin_id = $1 AND version = $2",
            )
            .bind(plugin_id)
            .bind(version)
            .fetch_optional(pool)
            .await?
        });
        Ok(bytes)
    }

    /// Sets a version's review status (`approved` or `rejected`).
    pub async fn review_version(
        &self,
        plugin_id: &str,
        version: &str,
        status: VersionStatus,
        note: Option<&str>,
        reviewer: Uuid,
    ) -> StoreResult<Option<VersionRow>> {
        let row = on_pool!(self.pool(), pool => {
            sqlx::query_as::<_, VersionRow>(sqlx::AssertSqlSafe(format!(
                "UPDATE plugin_versions SET status = $1, review_note = $2, reviewed_by = $3, reviewed_at = $4 \
                 WHERE plugin_id = $5 AND version = $6 RETURNING {VERSION_COLUMNS}"
            )))
            .bind(status.as_str())
            .bind(note)
            .bind(reviewer)
            .bind(now_micros())
            .bind(plugin_id)
            .bind(version)
            .fetch_optional(pool)
            .await?
        });
        Ok(row)
    }

    /// Creates or replaces the tenant's installation of a plugin (keeping its creation
    /// time).
    pub async fn put_installation(
        &self,
        scope: &TenantScope,
        row: &InstallationRow,
    ) -> StoreResult<InstallationRow> {
        let now = now_micros();
        on_pool!(self.pool(), pool => {
            let mut conn = pool.acquire().await?;
            Ok(UpsertInstallation::upsert_installation(&mut *conn, scope, row, now).await?)
        })
    }

    pub async fn get_installation(
        &self,
        scope: &TenantScope,
        plugin_id: &str,
    ) -> StoreResult<Option<InstallationRow>> {
        let row = on_pool!(self.pool(), pool => {
            sqlx::query_as::<_, InstallationRow>(sqlx::AssertSqlSafe(format!(
                "SELECT {INSTALLATION_COLUMNS} FROM plugin_installations WHERE tenant_id = $1 AND plugin_id = $2"
            )))
            .bind(scope.tenant_id())
            .bind(plugin_id)
            .fetch_optional(pool)
            .await?
        });
        Ok(row)
    }

    /// Up to `limit` of the tenant's installations with an id after `after`, by id.
    pub async fn list_installations_page(
        &self,
        scope: &TenantScope,
        after: Option<&str>,
        limit: i64,
    ) -> StoreResult<Vec<InstallationRow>> {
        let rows = on_pool!(self.pool(), pool => {
            sqlx::query_as::<_, InstallationRow>(sqlx::AssertSqlSafe(format!(
                "SELECT {INSTALLATION_COLUMNS} FROM plugin_installations WHERE tenant_id = $1 \
                 AND ($2 IS NULL OR plugin_id > $2) ORDER BY plugin_id LIMIT $3"
            )))
            .bind(scope.tenant_id())
            .bind(after)
            .bind(limit)
            .fetch_all(pool)
            .await?
        });
        Ok(rows)
    }

    pub async fn list_installations(
        &self,
        scope: &TenantScope,
    ) -> StoreResult<Vec<InstallationRow>> {
        let rows = on_pool!(self.pool(), pool => {
            sqlx::query_as::<_, InstallationRow>(sqlx::AssertSqlSafe(format!(
                "SELECT {INSTALLATION_COLUMNS} FROM plugin_installations WHERE tenant_id = $1 ORDER BY plugin_id"
            )))
            .bind(scope.tenant_id())
            .fetch_all(pool)
            .await?
        });
        Ok(rows)
    }

    /// Removes an installation; its kv data stays (a reinstall finds it again).
    pub async fn delete_installation(
        &self,
        scope: &TenantScope,
        plugin_id: &str,
    ) -> StoreResult<bool> {
        let done = on_pool!(self.pool(), pool => {
            sqlx::query("DELETE FROM plugin_installations WHERE tenant_id = $1 AND plugin_id = $2")
                .bind(scope.tenant_id())
                .bind(plugin_id)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(done > 0)
    }

    /// The record id `plugin_id` reserved for `key` among its records of `record_type`.
    pub async fn record_key(
        &self,
        scope: &TenantScope,
        plugin_id: &str,
        record_type: &str,
        key: &str,
    ) -> StoreResult<Option<Uuid>> {
        let id = on_pool!(self.pool(), pool => {
            sqlx::query_scalar::<_, Uuid>(
                "SELECT record_id FROM record_keys
                 WHERE tenant_id = $1 AND plugin_id = $2 AND record_type = $3 AND key = $4",
            )
            .bind(scope.tenant_id())
            .bind(plugin_id)
            .bind(record_type)
            .bind(key)
            .fetch_optional(pool)
            .await?
        });
        Ok(id)
    }

    /// Reserves `candidate` as the record id of `key`, unless the key has one already;
    /// returns the key's id either way (it is `candidate` when this call reserved it). One
    /// statement, so concurrent callers agree.
    pub async fn reserve_record_key(
        &self,
        scope: &TenantScope,
        plugin_id: &str,
        record_type: &str,
        key: &str,
        candidate: Uuid,
    ) -> StoreResult<Uuid> {
        on_pool!(self.pool(), pool => {
            sqlx::query(
                "INSERT INTO record_keys (tenant_id, plugin_id, record_type, key, record_id, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (tenant_id, plugin_id, record_type, key) DO NOTHING",
            )
            .bind(scope.tenant_id())
            .bind(plugin_id)
            .bind(record_type)
            .bind(key)
            .bind(candidate)
            .bind(now_micros())
            .execute(pool)
            .await?;
        });
        self.record_key(scope, plugin_id, record_type, key)
            .await?
            .ok_or_else(|| StoreError::Corrupt("a reserved record key vanished".into()))
    }

    /// Drops a key's reservation of `record_id` (its record could not be written).
    pub async fn release_record_key(
        &self,
        scope: &TenantScope,
        plugin_id: &str,
        record_type: &str,
        key: &str,
        record_id: Uuid,
    ) -> StoreResult<()> {
        on_pool!(self.pool(), pool => {
            sqlx::query(
                "DELETE FROM record_keys
                 WHERE tenant_id = $1 AND plugin_id = $2 AND record_type = $3 AND key = $4 AND record_id = $5",
            )
            .bind(scope.tenant_id())
            .bind(plugin_id)
            .bind(record_type)
            .bind(key)
            .bind(record_id)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    pub async fn kv_get(
        &self,
        scope: &TenantScope,
        plugin_id: &str,
        key: &str,
    ) -> StoreResult<Option<Vec<u8>>> {
        let value = on_pool!(self.pool(), pool => {
            sqlx::query_scalar::<_, Vec<u8>>(
                "SELECT value FROM plugin_kv WHERE tenant_id = $1 AND plugin_id = $2 AND key = $3",
            )
            .bind(scope.tenant_id())
            .bind(plugin_id)
            .bind(key)
            .fetch_optional(pool)
            .await?
        });
        Ok(value)
    }

    /// Stores a value if the installation stays within `max_keys` keys and `max_bytes`
    /// bytes (keys and values) with it. The check and the write are one transaction that
    /// first locks the installation's usage row (on PostgreSQL the upsert takes the row
    /// lock; on SQLite the first statement, a write, takes the database's write lock), so
    /// concurrent writers, on any number of nodes, are serialised and cannot overshoot.
    /// A write that shrinks a value is always allowed.
    pub async fn kv_set(
        &self,
        scope: &TenantScope,
        plugin_id: &str,
        key: &str,
        value: &[u8],
        max_keys: i64,
        max_bytes: i64,
    ) -> StoreResult<KvSet> {
        let size = (key.len() + value.len()) as i64;
        let outcome = on_pool!(self.pool(), pool => {
            let mut tx = pool.begin().await?;
            let (bytes, keys): (i64, i64) = sqlx::query_as(
                KV_USAGE_LOCK_SQL,
            )
            .bind(scope.tenant_id())
            .bind(plugin_id)
            .fetch_one(&mut *tx)
            .await?;
            let old: Option<i64> = sqlx::query_scalar(
                "SELECT CAST(length(value) AS BIGINT) FROM plugin_kv WHERE tenant_id = $1 AND plugin_id = $2 AND key = $3",
            )
            .bind(scope.tenant_id())
            .bind(plugin_id)
            .bind(key)
            .fetch_optional(&mut *tx)
            .await?;
            let old_size = old.map(|v| v + key.len() as i64);
            let new_keys = keys + i64::from(old_size.is_none());
            let new_bytes = bytes - old_size.unwrap_or(0) + size;
            if old_size.is_none() && new_keys > max_keys {
                KvSet::TooManyKeys
            } else if new_bytes > max_bytes && size > old_size.unwrap_or(0) {
                KvSet::OverQuota { used: bytes }
            } else {
                sqlx::query(
                    "INSERT INTO plugin_kv (tenant_id, plugin_id, key, value, updated_at) VALUES ($1, $2, $3, $4, $5) \
                     ON CONFLICT (tenant_id, plugin_id, key) DO UPDATE SET value = excluded.value, \
                     updated_at = excluded.updated_at",
                )
                .bind(scope.tenant_id())
                .bind(plugin_id)
                .bind(key)
                .bind(value)
                .bind(now_micros())
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "UPDATE plugin_kv_usage SET bytes = $3, key_count = $4 WHERE tenant_id = $1 AND plugin_id = $2",
                )
                .bind(scope.tenant_id())
                .bind(plugin_id)
                .bind(new_bytes)
                .bind(new_keys)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                KvSet::Stored
            }
        });
        Ok(outcome)
    }

    pub async fn kv_delete(
        &self,
        scope: &TenantScope,
        plugin_id: &str,
        key: &str,
    ) -> StoreResult<()> {
        on_pool!(self.pool(), pool => {
            let mut tx = pool.begin().await?;
            // Same order as kv_set: the usage row first.
            sqlx::query(
                KV_USAGE_LOCK_SQL,
            )
            .bind(scope.tenant_id())
            .bind(plugin_id)
            .execute(&mut *tx)
            .await?;
            let removed: Option<i64> = sqlx::query_scalar(
                "DELETE FROM plugin_kv WHERE tenant_id = $1 AND plugin_id = $2 AND key = $3 \
                 RETURNING CAST(length(value) AS BIGINT)",
            )
            .bind(scope.tenant_id())
            .bind(plugin_id)
            .bind(key)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(size) = removed {
                sqlx::query(
                    "UPDATE plugin_kv_usage SET bytes = bytes - $3, key_count = key_count - 1 \
                     WHERE tenant_id = $1 AND plugin_id = $2",
                )
                .bind(scope.tenant_id())
                .bind(plugin_id)
                .bind(size + key.len() as i64)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// Counts audited calls in their minute's row (one row per installation version ×
    /// capability × operation × outcome × minute). `outcome` is `denied` or `allowed`.
    /// Returns how many calls the row now stands for: 1 means this is the window's first,
    /// the one worth a log line.
    #[allow(clippy::too_many_arguments)]
    pub async fn audit_call(
        &self,
        scope: &TenantScope,
        plugin_id: &str,
        version: &str,
        capability: &str,
        operation: &str,
        outcome: &str,
        calls: u32,
    ) -> StoreResult<i64> {
        let now = now_micros();
        let window = now - now.rem_euclid(AUDIT_WINDOW_MICROS);
        let calls = on_pool!(self.pool(), pool => {
            sqlx::query_scalar::<_, i64>(
                "INSERT INTO plugin_audit (id, tenant_id, plugin_id, version, capability, operation, created_at, \
                 window_start, calls, last_at, outcome) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $7, $10) \
                 ON CONFLICT (tenant_id, plugin_id, version, capability, operation, outcome, window_start) \
                 DO UPDATE SET calls = plugin_audit.calls + excluded.calls, last_at = excluded.last_at \
                 RETURNING calls",
            )
            .bind(Uuid::now_v7())
            .bind(scope.tenant_id())
            .bind(plugin_id)
            .bind(version)
            .bind(capability)
            .bind(operation)
            .bind(now)
            .bind(window)
            .bind(i64::from(calls))
            .bind(outcome)
            .fetch_one(pool)
            .await?
        });
        Ok(calls)
    }

    /// The newest audited calls of one installation (denied and allowed).
    pub async fn list_audit(
        &self,
        scope: &TenantScope,
        plugin_id: &str,
    ) -> StoreResult<Vec<AuditRow>> {
        let rows = on_pool!(self.pool(), pool => {
            sqlx::query_as::<_, AuditRow>(
                "SELECT id, plugin_id, version, capability, operation, outcome, created_at, calls, \
                 COALESCE(last_at, created_at) AS last_at FROM plugin_audit \
                 WHERE tenant_id = $1 AND plugin_id = $2 ORDER BY created_at DESC, id DESC LIMIT $3",
            )
            .bind(scope.tenant_id())
            .bind(plugin_id)
            .bind(AUDIT_PAGE)
            .fetch_all(pool)
            .await?
        });
        Ok(rows)
    }
}
