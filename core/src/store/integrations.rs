//! Storage of what plugins of contract 0.2.0 reach the outside world with: outbound usage,
//! connections (the provider's app settings and each tenant's credentials and tokens, all
//! sealed by the caller), OAuth2 authorization state, webhook addresses and receipts, and
//! schedules. Every tenant-owned query is scoped by the tenant.

use serde_json::Value;
use sqlx::types::Json;
use uuid::Uuid;

use super::{Store, StoreResult, TenantScope, now_micros, on_pool};

/// A connection's app-level settings, as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ConnectionAppRow {
    pub plugin_id: String,
    pub connection: String,
    pub settings: Option<Vec<u8>>,
    pub urls: Json<Value>,
    pub updated_at: i64,
}

/// A tenant's connection, as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ConnectionRow {
    pub tenant_id: Uuid,
    pub plugin_id: String,
    pub connection: String,
    pub status: String,
    pub metadata: Json<Value>,
    pub credentials: Option<Vec<u8>>,
    pub tokens: Option<Vec<u8>>,
    pub expires_at: Option<i64>,
    pub last_error: Option<String>,
    /// Set while a node refreshes the token.
    pub refresh_lease_until: Option<i64>,
    pub generation: i64,
    pub updated_at: i64,
}

/// An OAuth2 authorization in flight, taken once.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OauthStateRow {
    pub tenant_id: Uuid,
    pub user_id: Uuid,
    pub plugin_id: String,
    pub connection: String,
    pub verifier: Vec<u8>,
}

/// A schedule of an installation.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ScheduleRow {
    pub tenant_id: Uuid,
    pub plugin_id: String,
    pub schedule_id: String,
    pub every_seconds: i64,
    pub next_run_at: i64,
    pub last_run_at: Option<i64>,
    pub last_error: Option<String>,
}

/// One inbound webhook call, recorded whatever became of it.
#[derive(Debug, Clone)]
pub struct NewReceipt<'a> {
    pub tenant_id: Option<Uuid>,
    pub plugin_id: &'a str,
    pub address: &'a str,
    pub delivery_id: Option<&'a str>,
    pub verified: bool,
    pub status: u16,
    pub duration_ms: i64,
    pub outcome: &'a str,
    pub body_bytes: i64,
    pub body_sha256: &'a str,
}

#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct ReceiptRow {
    pub id: Uuid,
    pub tenant_id: Option<Uuid>,
    pub plugin_id: String,
    pub address: String,
    pub delivery_id: Option<String>,
    pub received_at: i64,
    pub verified: bool,
    pub status: i32,
    pub duration_ms: i64,
    pub outcome: String,
    pub body_bytes: i64,
    pub body_sha256: String,
}

/// Microseconds in a day, for usage rows.
const DAY_MICROS: i64 = 86_400_000_000;

impl Store {
    /// The scope of an active tenant, for work the kernel does on a tenant's behalf without
    /// a request (a schedule, a webhook routed by its body, an OAuth2 callback whose state
    /// names the tenant).
    pub async fn active_tenant_scope(&self, tenant_id: Uuid) -> StoreResult<Option<TenantScope>> {
        let status: Option<String> = on_pool!(self.pool(), pool => {
            sqlx::query_scalar("SELECT status FROM tenants WHERE id = $1")
                .bind(tenant_id)
                .fetch_optional(pool)
                .await?
        });
        Ok((status.as_deref() == Some("active")).then(|| TenantScope::new(tenant_id)))
    }

    /// Adds one outbound request to its tenant × plugin × host × day usage row.
    pub async fn record_http_usage(
        &self,
        scope: &TenantScope,
        plugin_id: &str,
        host: &str,
        bytes: i64,
        error: bool,
        latency_ms: i64,
    ) -> StoreResult<()> {
        let now = now_micros();
        let day = time::OffsetDateTime::from_unix_timestamp(now.div_euclid(DAY_MICROS) * 86_400)
            .map(|d| d.date().to_string())
            .unwrap_or_default();
        on_pool!(self.pool(), pool => {
            sqlx::query(
                "INSERT INTO plugin_http_usage (tenant_id, plugin_id, host, day, calls, bytes, errors, latency_ms) \
                 VALUES ($1, $2, $3, $4, 1, $5, $6, $7) \
                 ON CONFLICT (tenant_id, plugin_id, host, day) DO UPDATE SET \
                 calls = plugin_http_usage.calls + 1, bytes = plugin_http_usage.bytes + excluded.bytes, \
                 errors = plugin_http_usage.errors + excluded.errors, \
                 latency_ms = plugin_http_usage.latency_ms + excluded.latency_ms",
            )
            .bind(scope.tenant_id())
            .bind(plugin_id)
            .bind(host)
            .bind(day)
            .bind(bytes)
            .bind(error as i64)
            .bind(latency_ms)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// The tenant's outbound usage rows: `(plugin, host, day, calls, bytes, errors, latency_ms)`.
    pub async fn http_usage(
        &self,
        scope: &TenantScope,
    ) -> StoreResult<Vec<(String, String, String, i64, i64, i64, i64)>> {
        Ok(on_pool!(self.pool(), pool => {
            sqlx::query_as(
                "SELECT plugin_id, host, day, calls, bytes, errors, latency_ms FROM plugin_http_usage \
                 WHERE tenant_id = $1 ORDER BY day DESC, plugin_id, host LIMIT 1000",
            )
            .bind(scope.tenant_id())
            .fetch_all(pool)
            .await?
        }))
    }

    pub async fn connection_app(
        &self,
        plugin_id: &str,
        connection: &str,
    ) -> StoreResult<Option<ConnectionAppRow>> {
        Ok(on_pool!(self.pool(), pool => {
            sqlx::query_as(
                "SELECT plugin_id, connection, settings, urls, updated_at FROM connection_apps \
                 WHERE plugin_id = $1 AND connection = $2",
            )
            .bind(plugin_id)
            .bind(connection)
            .fetch_optional(pool)
            .await?
        }))
    }

    pub async fn put_connection_app(
        &self,
        plugin_id: &str,
        connection: &str,
        settings: Option<&[u8]>,
        urls: &Value,
    ) -> StoreResult<()> {
        on_pool!(self.pool(), pool => {
            sqlx::query(
                "INSERT INTO connection_apps (plugin_id, connection, settings, urls, updated_at) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (plugin_id, connection) DO UPDATE SET \
                 settings = excluded.settings, urls = excluded.urls, updated_at = excluded.updated_at",
            )
            .bind(plugin_id)
            .bind(connection)
            .bind(settings)
            .bind(Json(urls))
            .bind(now_micros())
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    pub async fn connection(
        &self,
        scope: &TenantScope,
        plugin_id: &str,
        connection: &str,
    ) -> StoreResult<Option<ConnectionRow>> {
        Ok(on_pool!(self.pool(), pool => {
            sqlx::query_as(
                "SELECT tenant_id, plugin_id, connection, status, metadata, credentials, tokens, \
                 expires_at, last_error, refresh_lease_until, generation, updated_at FROM connections \
                 WHERE tenant_id = $1 AND plugin_id = $2 AND connection = $3",
            )
            .bind(scope.tenant_id())
            .bind(plugin_id)
            .bind(connection)
            .fetch_optional(pool)
            .await?
        }))
    }

    pub async fn connections(&self, scope: &TenantScope) -> StoreResult<Vec<ConnectionRow>> {
        Ok(on_pool!(self.pool(), pool => {
            sqlx::query_as(
                "SELECT tenant_id, plugin_id, connection, status, metadata, credentials, tokens, \
                 expires_at, last_error, refresh_lease_until, generation, updated_at FROM connections \
                 WHERE tenant_id = $1 ORDER BY plugin_id, connection",
            )
            .bind(scope.tenant_id())
            .fetch_all(pool)
            .await?
        }))
    }

    /// Creates or replaces a connection's state as a whole (tenant credentials set, an
    /// authorization completed): the generation moves on.
    #[allow(clippy::too_many_arguments)]
    pub async fn put_connection(
        &self,
        scope: &TenantScope,
        plugin_id: &str,
        connection: &str,
        status: &str,
        metadata: &Value,
        credentials: Option<&[u8]>,
        tokens: Option<&[u8]>,
        expires_at: Option<i64>,
    ) -> StoreResult<()> {
        on_pool!(self.pool(), pool => {
            sqlx::query(
                "INSERT INTO connections (tenant_id, plugin_id, connection, status, metadata, credentials, \
                 tokens, expires_at, last_error, generation, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL, 1, $9) \
                 ON CONFLICT (tenant_id, plugin_id, connection) DO UPDATE SET status = excluded.status, \
                 metadata = excluded.metadata, credentials = excluded.credentials, tokens = excluded.tokens, \
                 expires_at = excluded.expires_at, last_error = NULL, \
                 generation = connections.generation + 1, updated_at = excluded.updated_at",
            )
            .bind(scope.tenant_id())
            .bind(plugin_id)
            .bind(connection)
            .bind(status)
            .bind(Json(metadata))
            .bind(credentials)
            .bind(tokens)
            .bind(expires_at)
            .bind(now_micros())
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Saves refreshed tokens only over the generation they were refreshed from: `false`
    /// when another node saved first (its tokens, the newer ones, stay).
    pub async fn save_tokens(
        &self,
        scope: &TenantScope,
        plugin_id: &str,
        connection: &str,
        from_generation: i64,
        tokens: &[u8],
        expires_at: Option<i64>,
    ) -> StoreResult<bool> {
        let updated = on_pool!(self.pool(), pool => {
            sqlx::query(
                "UPDATE connections SET tokens = $1, expires_at = $2, status = 'connected', last_error = NULL, \
                 generation = generation + 1, updated_at = $3, refresh_lease_until = NULL \
                 WHERE tenant_id = $4 AND plugin_id = $5 AND connection = $6 AND generation = $7",
            )
            .bind(tokens)
            .bind(expires_at)
            .bind(now_micros())
            .bind(scope.tenant_id())
            .bind(plugin_id)
            .bind(connection)
            .bind(from_generation)
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(updated == 1)
    }

    /// Takes the lease to refresh a connection's token from `generation`: `false` when
    /// another node holds it, or has already saved a newer generation.
    pub async fn claim_refresh(
        &self,
        scope: &TenantScope,
        plugin_id: &str,
        connection: &str,
        generation: i64,
        lease_micros: i64,
    ) -> StoreResult<bool> {
        let now = now_micros();
        let updated = on_pool!(self.pool(), pool => {
            sqlx::query(
                "UPDATE connections SET refresh_lease_until = $1 \
                 WHERE tenant_id = $2 AND plugin_id = $3 AND connection = $4 AND generation = $5 \
                 AND (refresh_lease_until IS NULL OR refresh_lease_until < $6)",
            )
            .bind(now + lease_micros)
            .bind(scope.tenant_id())
            .bind(plugin_id)
            .bind(connection)
            .bind(generation)
            .bind(now)
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(updated == 1)
    }

    /// Marks a connection `expired` or `error` with the reason, unless another node has
    /// saved newer tokens since `from_generation`.
    pub async fn mark_connection(
        &self,
        scope: &TenantScope,
        plugin_id: &str,
        connection: &str,
        from_generation: i64,
        status: &str,
        reason: &str,
    ) -> StoreResult<bool> {
        let updated = on_pool!(self.pool(), pool => {
            sqlx::query(
                "UPDATE connections SET status = $1, last_error = $2, updated_at = $3, refresh_lease_until = NULL \
                 WHERE tenant_id = $4 AND plugin_id = $5 AND connection = $6 AND generation = $7",
            )
            .bind(status)
            .bind(reason)
            .bind(now_micros())
            .bind(scope.tenant_id())
            .bind(plugin_id)
            .bind(connection)
            .bind(from_generation)
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(updated == 1)
    }

    pub async fn delete_connection(
        &self,
        scope: &TenantScope,
        plugin_id: &str,
        connection: &str,
    ) -> StoreResult<bool> {
        let deleted = on_pool!(self.pool(), pool => {
            sqlx::query("DELETE FROM connections WHERE tenant_id = $1 AND plugin_id = $2 AND connection = $3")
                .bind(scope.tenant_id())
                .bind(plugin_id)
                .bind(connection)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(deleted > 0)
    }

    /// The value of metadata `key` of each tenant's connected `connection` of a plugin, as
    /// text (how app-wide webhooks are routed).
    pub async fn routing_metadata(
        &self,
        plugin_id: &str,
        connection: &str,
        key: &str,
    ) -> StoreResult<Vec<(Uuid, String)>> {
        // Metadata is small; the value is read here so both backends compare it the same
        // way.
        let rows: Vec<(Uuid, Json<Value>)> = on_pool!(self.pool(), pool => {
            sqlx::query_as(
                "SELECT tenant_id, metadata FROM connections WHERE plugin_id = $1 AND connection = $2 \
                 AND status <> 'not_connected'",
            )
            .bind(plugin_id)
            .bind(connection)
            .fetch_all(pool)
            .await?
        });
        Ok(rows
            .into_iter()
            .filter_map(|(tenant, m)| {
                let value = match m.0.get(key)? {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    _ => return None,
                };
                Some((tenant, value))
            })
            .collect())
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn insert_oauth_state(
        &self,
        scope: &TenantScope,
        state_hash: &str,
        user_id: Uuid,
        plugin_id: &str,
        connection: &str,
        verifier: &[u8],
        expires_at: i64,
    ) -> StoreResult<()> {
        on_pool!(self.pool(), pool => {
            sqlx::query("DELETE FROM oauth_states WHERE expires_at < $1")
                .bind(now_micros() - 3_600_000_000)
                .execute(pool)
                .await?;
            sqlx::query(
                "INSERT INTO oauth_states (state_hash, tenant_id, user_id, plugin_id, connection, verifier, expires_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(state_hash)
            .bind(scope.tenant_id())
            .bind(user_id)
            .bind(plugin_id)
            .bind(connection)
            .bind(verifier)
            .bind(expires_at)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Takes an authorization state once: `None` when unknown, used or expired.
    pub async fn take_oauth_state(&self, state_hash: &str) -> StoreResult<Option<OauthStateRow>> {
        let now = now_micros();
        Ok(on_pool!(self.pool(), pool => {
            sqlx::query_as(
                "UPDATE oauth_states SET used_at = $1 WHERE state_hash = $2 AND used_at IS NULL \
                 AND expires_at > $1 RETURNING tenant_id, user_id, plugin_id, connection, verifier",
            )
            .bind(now)
            .bind(state_hash)
            .fetch_optional(pool)
            .await?
        }))
    }

    /// The installation's webhook address token, made on first use.
    pub async fn webhook_token(&self, scope: &TenantScope, plugin_id: &str) -> StoreResult<String> {
        let fresh = crate::crypto::random_token(24);
        let token: String = on_pool!(self.pool(), pool => {
            sqlx::query(
                "INSERT INTO webhook_addresses (token, tenant_id, plugin_id, created_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (tenant_id, plugin_id) DO NOTHING",
            )
            .bind(&fresh)
            .bind(scope.tenant_id())
            .bind(plugin_id)
            .bind(now_micros())
            .execute(pool)
            .await?;
            sqlx::query_scalar("SELECT token FROM webhook_addresses WHERE tenant_id = $1 AND plugin_id = $2")
                .bind(scope.tenant_id())
                .bind(plugin_id)
                .fetch_one(pool)
                .await?
        });
        Ok(token)
    }

    /// The tenant and plugin of a per-installation webhook address.
    pub async fn webhook_address(&self, token: &str) -> StoreResult<Option<(Uuid, String)>> {
        Ok(on_pool!(self.pool(), pool => {
            sqlx::query_as("SELECT tenant_id, plugin_id FROM webhook_addresses WHERE token = $1")
                .bind(token)
                .fetch_optional(pool)
                .await?
        }))
    }

    /// Records a delivery id as handed to the plugin: `false` when it was already.
    pub async fn first_delivery(
        &self,
        plugin_id: &str,
        tenant_key: &str,
        delivery_id: &str,
    ) -> StoreResult<bool> {
        let inserted = on_pool!(self.pool(), pool => {
            sqlx::query(
                "INSERT INTO webhook_deliveries (plugin_id, tenant_key, delivery_id, seen_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(plugin_id)
            .bind(tenant_key)
            .bind(delivery_id)
            .bind(now_micros())
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(inserted == 1)
    }

    /// Forgets a delivery id whose call failed, so the sender's retry is delivered.
    pub async fn forget_delivery(
        &self,
        plugin_id: &str,
        tenant_key: &str,
        delivery_id: &str,
    ) -> StoreResult<()> {
        on_pool!(self.pool(), pool => {
            sqlx::query("DELETE FROM webhook_deliveries WHERE plugin_id = $1 AND tenant_key = $2 AND delivery_id = $3")
                .bind(plugin_id)
                .bind(tenant_key)
                .bind(delivery_id)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    pub async fn insert_receipt(&self, r: &NewReceipt<'_>) -> StoreResult<()> {
        on_pool!(self.pool(), pool => {
            sqlx::query(
                "INSERT INTO webhook_receipts (id, tenant_id, plugin_id, address, delivery_id, received_at, verified, \
                 status, duration_ms, outcome, body_bytes, body_sha256) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
            )
            .bind(Uuid::now_v7())
            .bind(r.tenant_id)
            .bind(r.plugin_id)
            .bind(r.address)
            .bind(r.delivery_id)
            .bind(now_micros())
            .bind(r.verified)
            .bind(r.status as i32)
            .bind(r.duration_ms)
            .bind(r.outcome)
            .bind(r.body_bytes)
            .bind(r.body_sha256)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Receipts of one plugin, newest first: the tenant's own (`Some`), or all (the provider).
    pub async fn receipts(
        &self,
        tenant: Option<&TenantScope>,
        plugin_id: &str,
        limit: i64,
    ) -> StoreResult<Vec<ReceiptRow>> {
        let columns = "id, tenant_id, plugin_id, address, delivery_id, received_at, verified, status, \
                       duration_ms, outcome, body_bytes, body_sha256";
        Ok(match tenant {
            Some(scope) => on_pool!(self.pool(), pool => {
                sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "SELECT {columns} FROM webhook_receipts WHERE tenant_id = $1 AND plugin_id = $2 \
                     ORDER BY received_at DESC LIMIT $3"
                )))
                .bind(scope.tenant_id())
                .bind(plugin_id)
                .bind(limit)
                .fetch_all(pool)
                .await?
            }),
            None => on_pool!(self.pool(), pool => {
                sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "SELECT {columns} FROM webhook_receipts WHERE plugin_id = $1 ORDER BY received_at DESC LIMIT $2"
                )))
                .bind(plugin_id)
                .bind(limit)
                .fetch_all(pool)
                .await?
            }),
        })
    }

    /// Makes the installation's schedules match its manifest: new ones start at a spread
    /// offset within their interval, removed ones go, changed intervals keep their last run.
    pub async fn sync_schedules(
        &self,
        scope: &TenantScope,
        plugin_id: &str,
        schedules: &[(String, i64)],
    ) -> StoreResult<()> {
        let now = now_micros();
        on_pool!(self.pool(), pool => {
            let existing: Vec<(String,)> = sqlx::query_as(
                "SELECT schedule_id FROM plugin_schedules WHERE tenant_id = $1 AND plugin_id = $2",
            )
            .bind(scope.tenant_id())
            .bind(plugin_id)
            .fetch_all(pool)
            .await?;
            for (id,) in &existing {
                if !schedules.iter().any(|(s, _)| s == id) {
                    sqlx::query("DELETE FROM plugin_schedules WHERE tenant_id = $1 AND plugin_id = $2 AND schedule_id = $3")
                        .bind(scope.tenant_id())
                        .bind(plugin_id)
                        .bind(id)
                        .execute(pool)
                        .await?;
                }
            }
            for (id, every) in schedules {
                let first = now + spread(scope.tenant_id(), plugin_id, id, *every);
                sqlx::query(
                    "INSERT INTO plugin_schedules (tenant_id, plugin_id, schedule_id, every_seconds, next_run_at) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (tenant_id, plugin_id, schedule_id) DO UPDATE SET \
                     every_seconds = excluded.every_seconds, \
                     next_run_at = CASE WHEN plugin_schedules.every_seconds = excluded.every_seconds \
                     THEN plugin_schedules.next_run_at ELSE excluded.next_run_at END",
                )
                .bind(scope.tenant_id())
                .bind(plugin_id)
                .bind(id)
                .bind(*every)
                .bind(first)
                .execute(pool)
                .await?;
            }
        });
        Ok(())
    }

    pub async fn remove_schedules(&self, scope: &TenantScope, plugin_id: &str) -> StoreResult<()> {
        on_pool!(self.pool(), pool => {
            sqlx::query("DELETE FROM plugin_schedules WHERE tenant_id = $1 AND plugin_id = $2")
                .bind(scope.tenant_id())
                .bind(plugin_id)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    pub async fn schedules(
        &self,
        scope: &TenantScope,
        plugin_id: &str,
    ) -> StoreResult<Vec<ScheduleRow>> {
        Ok(on_pool!(self.pool(), pool => {
            sqlx::query_as(
                "SELECT tenant_id, plugin_id, schedule_id, every_seconds, next_run_at, last_run_at, last_error \
                 FROM plugin_schedules WHERE tenant_id = $1 AND plugin_id = $2 ORDER BY schedule_id",
            )
            .bind(scope.tenant_id())
            .bind(plugin_id)
            .fetch_all(pool)
            .await?
        }))
    }

    /// Claims up to `limit` due schedules for `lease_micros`: each claimed row's next run
    /// moves to the first point of its grid after now (no catch-up burst after downtime,
    /// [`next_after`]) and is leased, so no other node claims it. One statement that writes
    /// first: on SQLite a transaction that read first could not wait for the write lock.
    /// The due rows are chosen once (a materialized CTE: PostgreSQL may not re-run the
    /// `SKIP LOCKED` choice per row and claim more than `limit`); a row whose interval is
    /// under a minute (never written by this code) is never claimed. Returns the claimed
    /// rows with their new next run.
    pub async fn claim_due_schedules(
        &self,
        limit: i64,
        lease_micros: i64,
    ) -> StoreResult<Vec<ScheduleRow>> {
        let now = now_micros();
        let skip_locked = self.pool().skip_locked();
        Ok(on_pool!(self.pool(), pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "WITH due AS MATERIALIZED (\
                   SELECT tenant_id, plugin_id, schedule_id FROM plugin_schedules \
                   WHERE next_run_at <= $2 AND (lease_until IS NULL OR lease_until < $2) \
                   AND every_seconds >= 60 \
                   ORDER BY next_run_at LIMIT $3 {skip_locked}) \
                 UPDATE plugin_schedules SET lease_until = $1, \
                 next_run_at = next_run_at + (($2 - next_run_at) / (every_seconds * 1000000) + 1) * (every_seconds * 1000000) \
                 WHERE (tenant_id, plugin_id, schedule_id) IN (SELECT tenant_id, plugin_id, schedule_id FROM due) \
                 RETURNING tenant_id, plugin_id, schedule_id, every_seconds, next_run_at, last_run_at, last_error"
            )))
            .bind(now + lease_micros)
            .bind(now)
            .bind(limit)
            .fetch_all(pool)
            .await?
        }))
    }

    /// Claims one schedule to run now (an operator's "run now"): it counts as this
    /// interval's run. `None` when it does not exist or is running.
    pub async fn claim_schedule_now(
        &self,
        scope: &TenantScope,
        plugin_id: &str,
        schedule_id: &str,
        lease_micros: i64,
    ) -> StoreResult<Option<ScheduleRow>> {
        let now = now_micros();
        Ok(on_pool!(self.pool(), pool => {
            sqlx::query_as(
                "UPDATE plugin_schedules SET lease_until = $1, next_run_at = $2 + every_seconds * 1000000 \
                 WHERE tenant_id = $3 AND plugin_id = $4 AND schedule_id = $5 \
                 AND (lease_until IS NULL OR lease_until < $2) \
                 RETURNING tenant_id, plugin_id, schedule_id, every_seconds, next_run_at, last_run_at, last_error",
            )
            .bind(now + lease_micros)
            .bind(now)
            .bind(scope.tenant_id())
            .bind(plugin_id)
            .bind(schedule_id)
            .fetch_optional(pool)
            .await?
        }))
    }

    /// Deletes webhook receipts received before `receipts_before` and delivery ids seen
    /// before `deliveries_before` (a replay older than that is delivered again). Returns
    /// how many rows went.
    pub async fn prune_webhook_history(
        &self,
        receipts_before: i64,
        deliveries_before: i64,
    ) -> StoreResult<u64> {
        // In batches: one long DELETE would hold SQLite's write lock throughout.
        let mut total = 0;
        loop {
            let deleted = on_pool!(self.pool(), pool => {
                let receipts = sqlx::query(
                    "DELETE FROM webhook_receipts WHERE id IN \
                     (SELECT id FROM webhook_receipts WHERE received_at < $1 LIMIT 2000)",
                )
                .bind(receipts_before)
                .execute(pool)
                .await?
                .rows_affected();
                let deliveries = sqlx::query(
                    "DELETE FROM webhook_deliveries WHERE (plugin_id, tenant_key, delivery_id) IN \
                     (SELECT plugin_id, tenant_key, delivery_id FROM webhook_deliveries WHERE seen_at < $1 LIMIT 2000)",
                )
                .bind(deliveries_before)
                .execute(pool)
                .await?
                .rows_affected();
                receipts + deliveries
            });
            total += deleted;
            if deleted == 0 {
                return Ok(total);
            }
        }
    }

    /// Brings a schedule's next run forward to `at` (never later than it already was).
    /// Returns whether the installation has that schedule.
    pub async fn schedule_soon(
        &self,
        scope: &TenantScope,
        plugin_id: &str,
        schedule_id: &str,
        at: i64,
    ) -> StoreResult<bool> {
        let done = on_pool!(self.pool(), pool => {
            sqlx::query(
                "UPDATE plugin_schedules SET next_run_at = CASE WHEN next_run_at > $1 THEN $1 ELSE next_run_at END \
                 WHERE tenant_id = $2 AND plugin_id = $3 AND schedule_id = $4",
            )
            .bind(at)
            .bind(scope.tenant_id())
            .bind(plugin_id)
            .bind(schedule_id)
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(done > 0)
    }

    /// Releases a schedule's lease without a run (its installation was disabled or its
    /// tenant suspended when it came due).
    pub async fn release_schedule(
        &self,
        tenant_id: Uuid,
        plugin_id: &str,
        schedule_id: &str,
    ) -> StoreResult<()> {
        on_pool!(self.pool(), pool => {
            sqlx::query(
                "UPDATE plugin_schedules SET lease_until = NULL \
                 WHERE tenant_id = $1 AND plugin_id = $2 AND schedule_id = $3",
            )
            .bind(tenant_id)
            .bind(plugin_id)
            .bind(schedule_id)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Records a schedule's run and releases its lease.
    pub async fn finish_schedule(
        &self,
        tenant_id: Uuid,
        plugin_id: &str,
        schedule_id: &str,
        ran_at: i64,
        error: Option<&str>,
    ) -> StoreResult<()> {
        on_pool!(self.pool(), pool => {
            sqlx::query(
                "UPDATE plugin_schedules SET last_run_at = $1, last_error = $2, lease_until = NULL \
                 WHERE tenant_id = $3 AND plugin_id = $4 AND schedule_id = $5",
            )
            .bind(ran_at)
            .bind(error)
            .bind(tenant_id)
            .bind(plugin_id)
            .bind(schedule_id)
            .execute(pool)
            .await?;
        });
        Ok(())
    }
}

/// The first run's offset within the interval, the same for an installation's schedule on
/// every node: runs of many installations spread over the interval instead of bunching.
pub fn spread(tenant: Uuid, plugin_id: &str, schedule_id: &str, every_seconds: i64) -> i64 {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("{tenant}/{plugin_id}/{schedule_id}").as_bytes());
    let n = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"));
    (n % (every_seconds.max(1) as u64 * 1_000_000)) as i64
}

/// The next run after `now` on the schedule's grid (`due` plus whole intervals; the SQL of
/// [`Store::claim_due_schedules`] computes the same): a node
/// that was down skips the runs it missed instead of making them all at once.
pub fn next_after(due: i64, every_seconds: i64, now: i64) -> i64 {
    let every = every_seconds.max(60) * 1_000_000;
    if due > now {
        return due;
    }
    due + ((now - due) / every + 1) * every
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missed_runs_are_skipped_not_replayed() {
        let m = 60_000_000;
        assert_eq!(next_after(0, 60, 0), m);
        assert_eq!(next_after(0, 60, 10 * m + 5), 11 * m);
        assert_eq!(next_after(5 * m, 60, m), 5 * m);
    }

    #[test]
    fn first_runs_spread_over_the_interval() {
        let offsets: Vec<i64> = (0..1000)
            .map(|_| spread(Uuid::new_v4(), "p", "s", 60))
            .collect();
        assert!(offsets.iter().all(|o| (0..60_000_000).contains(o)));
        let first_half = offsets.iter().filter(|o| **o < 30_000_000).count();
        assert!((350..650).contains(&first_half), "{first_half}");
    }
}
