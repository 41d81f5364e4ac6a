//! A tenant's applied template, applied in one transaction with the record types and plugin
//! installations it brings; pipeline figures and stage history.

use std::collections::HashMap;

use serde_json::Value;
use sqlx::types::Json;
use uuid::Uuid;

use super::dialect::Dialect;
use super::plugins::{InstallationRow, UpsertInstallation};
use super::{Store, StoreResult, TenantScope, now_micros, on_pool};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TenantTemplateRow {
    pub template_id: String,
    pub version: String,
    pub spec: Json<Value>,
    pub applied_at: i64,
}

/// Everything one application of a template writes.
pub struct TemplateWrite {
    pub template_id: String,
    pub version: String,
    /// The version this application replaces (none for a first application).
    pub previous_version: Option<String>,
    pub spec: Value,
    /// `(id, name, schema)`, created or replaced (the schema's version bumped).
    pub record_types: Vec<(String, String, Value)>,
    pub installations: Vec<InstallationRow>,
}

/// Records of one stage of a pipeline: how many, and the sum of the value field.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StageFigures {
    pub stage: Option<String>,
    pub count: i64,
    pub value: Option<f64>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StageChange {
    pub payload: Json<Value>,
    pub actor: Option<String>,
    pub created_at: i64,
}

impl Store {
    pub async fn tenant_template(
        &self,
        scope: &TenantScope,
    ) -> StoreResult<Option<TenantTemplateRow>> {
        on_pool!(self.pool(), pool => Ok(
            sqlx::query_as::<_, TenantTemplateRow>(
                "SELECT template_id, version, spec, applied_at FROM tenant_templates WHERE tenant_id = $1",
            )
            .bind(scope.tenant_id())
            .fetch_optional(pool)
            .await?
        ))
    }

    /// Writes a template application as one transaction: all of it or none of it.
    /// `Ok(false)`: the tenant's template is no longer at `write.previous_version` (another
    /// application won the race); nothing was written.
    pub async fn apply_template(
        &self,
        scope: &TenantScope,
        write: &TemplateWrite,
    ) -> StoreResult<bool> {
        let now = now_micros();
        let tenant = scope.tenant_id();
        on_pool!(self.pool(), pool => {
            let mut tx = pool.begin().await?;
            let claimed = match &write.previous_version {
                None => sqlx::query(
                    "INSERT INTO tenant_templates (tenant_id, template_id, version, spec, applied_at) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (tenant_id) DO NOTHING",
                )
                .bind(tenant)
                .bind(&write.template_id)
                .bind(&write.version)
                .bind(Json(&write.spec))
                .bind(now)
                .execute(&mut *tx)
                .await?,
                Some(previous) => sqlx::query(
                    "UPDATE tenant_templates SET version = $2, spec = $3, applied_at = $4 \
                     WHERE tenant_id = $1 AND version = $5",
                )
                .bind(tenant)
                .bind(&write.version)
                .bind(Json(&write.spec))
                .bind(now)
                .bind(previous)
                .execute(&mut *tx)
                .await?,
            };
            if claimed.rows_affected() != 1 {
                tx.rollback().await?;
                return Ok(false);
            }
            for (id, name, schema) in &write.record_types {
                sqlx::query(
                    "INSERT INTO record_types (tenant_id, id, name, schema, version, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, 1, $5, $5) \
                     ON CONFLICT (tenant_id, id) DO UPDATE SET name = excluded.name, \
                       schema = excluded.schema, version = record_types.version + 1, \
                       updated_at = excluded.updated_at",
                )
                .bind(tenant)
                .bind(id)
                .bind(name)
                .bind(Json(schema))
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
            for row in &write.installations {
                UpsertInstallation::upsert_installation(&mut *tx, scope, row, now).await?;
            }
            tx.commit().await?;
        });
        Ok(true)
    }

    /// Every tenant's applied template, by tenant id.
    pub async fn list_tenant_templates(&self) -> StoreResult<HashMap<Uuid, TenantTemplateRow>> {
        let rows: Vec<(Uuid, String, String, Json<Value>, i64)> = on_pool!(self.pool(), pool => {
            sqlx::query_as("SELECT tenant_id, template_id, version, spec, applied_at FROM tenant_templates")
                .fetch_all(pool)
                .await?
        });
        Ok(rows
            .into_iter()
            .map(|(tenant, template_id, version, spec, applied_at)| {
                (
                    tenant,
                    TenantTemplateRow {
                        template_id,
                        version,
                        spec,
                        applied_at,
                    },
                )
            })
            .collect())
    }

    /// Removes a tenant created a moment ago whose template could not be applied: it has
    /// nothing but its built-in record types.
    pub async fn delete_new_tenant(&self, scope: &TenantScope) -> StoreResult<()> {
        on_pool!(self.pool(), pool => {
            let mut tx = pool.begin().await?;
            for sql in [
                "DELETE FROM record_types WHERE tenant_id = $1",
                "DELETE FROM tenants WHERE id = $1",
            ] {
                sqlx::query(sql).bind(scope.tenant_id()).execute(&mut *tx).await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// Count and total value of a record type's records per stage. `value_field` is bound
    /// as a parameter, never spliced into the SQL.
    pub async fn stage_figures(
        &self,
        scope: &TenantScope,
        record_type: &str,
        value_field: Option<&str>,
    ) -> StoreResult<Vec<StageFigures>> {
        let field = value_field.unwrap_or("");
        on_pool!(self.pool(), pool => {
            let mut conn = pool.acquire().await?;
            Ok(Dialect::stage_figures(&mut *conn, scope, record_type, field).await?)
        })
    }

    /// A record's `stage.changed` events, oldest first.
    pub async fn stage_history(
        &self,
        scope: &TenantScope,
        record_id: Uuid,
    ) -> StoreResult<Vec<StageChange>> {
        on_pool!(self.pool(), pool => Ok(
            sqlx::query_as::<_, StageChange>(
                "SELECT payload, actor, created_at FROM events \
                 WHERE tenant_id = $1 AND record_id = $2 AND kind = 'stage.changed' ORDER BY seq",
            )
            .bind(scope.tenant_id())
            .bind(record_id)
            .fetch_all(pool)
            .await?
        ))
    }
}
