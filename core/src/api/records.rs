//! Record routes: `/api/records/{type}[/{id}]`.
//!
//! Every lookup is scoped to the caller's tenant, and a record of another tenant is simply
//! not found (404), exactly like one that never existed.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use streamflow_runtime::PluginRecord;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::{AppState, JsonBody};
use crate::auth::extract::ClientPrincipal;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::plugins::ScoreOutcome;
use crate::records::{
    MAX_DATA_DEPTH, RecordView, check_json, check_stage, decode_cursor, encode_cursor,
    unknown_type, valid_type_id,
};
use crate::store::parse_rfc3339_micros;
use crate::store::records::RecordFilter;
use crate::store::writer::{RecordWrite, WriteOutcome};
use crate::tenancy::Permission;

/// Page size when `limit` is absent, and the largest allowed.
const DEFAULT_LIMIT: i64 = 50;
const MAX_LIMIT: i64 = 200;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_record, list_records))
        .routes(routes!(get_record, update_record, delete_record))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateRecord {
    /// The record's fields: a JSON object, validated against the type's schema.
    #[schema(value_type = Object)]
    data: Value,
    stage: Option<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct UpdateRecord {
    /// Replaces the record's data as a whole (send every field).
    #[schema(value_type = Option<Object>)]
    data: Option<Value>,
    stage: Option<String>,
    /// The version you read; a stale version gets 409 and changes nothing.
    version: i64,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Only records in this stage.
    stage: Option<String>,
    /// Only records changed at or after this RFC 3339 time.
    updated_since: Option<String>,
    /// Page size, 1-200 (default 50).
    limit: Option<String>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct RecordPage {
    items: Vec<RecordView>,
    /// Pass as `cursor` for the next page; null on the last page.
    next_cursor: Option<String>,
}

fn check_data(data: &Value) -> ApiResult<()> {
    if !data.is_object() {
        return Err(ApiError::field("/data", "must be a JSON object"));
    }
    check_json(data, "/data", MAX_DATA_DEPTH)
}

/// The record id of a path, if the path can name a record at all.
fn parse_id(record_type: &str, id: &str) -> ApiResult<Uuid> {
    if !valid_type_id(record_type) {
        return Err(unknown_type(record_type));
    }
    Uuid::parse_str(id).map_err(|_| ApiError::not_found("record"))
}

/// Create a record.
#[utoipa::path(post, path = "/records/{type}", tag = "records", security(("client_token" = [])),
    params(("type" = String, Path, description = "record type, e.g. lead")), request_body = CreateRecord,
    responses((status = 201, body = RecordView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 413, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn create_record(
    State(state): State<AppState>,
    principal: ClientPrincipal,
    Path(record_type): Path<String>,
    JsonBody(body): JsonBody<CreateRecord>,
) -> ApiResult<(StatusCode, Json<RecordView>)> {
    principal.require(Permission::RecordsCreate)?;
    check_data(&body.data)?;
    if let Some(stage) = &body.stage {
        check_stage(stage, "/stage")?;
    }
    state
        .schemas
        .validate(&state.store, &principal.scope, &record_type, &body.data)
        .await?;
    let id = Uuid::now_v7();
    let now = crate::store::now_micros();
    let scored = score_if_lead(&state, &principal, &record_type, || PluginRecord {
        id: id.to_string(),
        record_type: record_type.clone(),
        stage: body.stage.clone(),
        version: 1,
        data: body.data.to_string(),
        created_at: now,
        updated_at: now,
    })
    .await?;
    let (score, events) = match scored {
        Some(outcome) => (outcome.score, vec![outcome.event]),
        None => (None, Vec::new()),
    };
    let outcome = state
        .writer
        .submit(RecordWrite::Create {
            scope: principal.scope,
            id,
            record_type,
            stage: body.stage,
            data: body.data,
            score,
            events,
            created_by: principal.user_id(),
            actor: principal.actor(),
        })
        .await?;
    match outcome {
        WriteOutcome::Created(row) => Ok((StatusCode::CREATED, Json(row.into()))),
        other => Err(unexpected(other)),
    }
}

/// List records, in creation order, a page at a time.
#[utoipa::path(get, path = "/records/{type}", tag = "records", security(("client_token" = [])),
    params(("type" = String, Path), ListQuery),
    responses((status = 200, body = RecordPage), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn list_records(
    State(state): State<AppState>,
    principal: ClientPrincipal,
    Path(record_type): Path<String>,
    Query(query): Query<ListQuery>,
) -> ApiResult<Json<RecordPage>> {
    principal.require(Permission::RecordsRead)?;
    // `?stage=&limit=` from a form means "no filter", not "the empty stage".
    let present = |v: Option<String>| v.filter(|s| !s.is_empty());
    let query = ListQuery {
        stage: present(query.stage),
        updated_since: present(query.updated_since),
        limit: present(query.limit),
        cursor: present(query.cursor),
    };
    let bad = |parameter: &str, message: &str| {
        ApiError::bad_request("invalid_parameter", format!("{parameter}: {message}"))
            .with_details(json!({ "parameter": parameter }))
    };
    let limit = match query.limit.as_deref() {
        None => DEFAULT_LIMIT,
        Some(text) => text
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| bad("limit", "must be a whole number from 1 to 200"))?,
    };
    let updated_since = match query.updated_since.as_deref() {
        None => None,
        Some(text) => Some(parse_rfc3339_micros(text).ok_or_else(|| {
            bad(
                "updated_since",
                "must be an RFC 3339 time such as 2026-01-31T09:00:00Z",
            )
        })?),
    };
    let after = query.cursor.as_deref().map(decode_cursor).transpose()?;
    if let Some(stage) = &query.stage {
        check_stage(stage, "stage").map_err(|e| bad("stage", &e.message))?;
    }
    if !valid_type_id(&record_type)
        || state
            .store
            .record_type_version(&principal.scope, &record_type)
            .await?
            .is_none()
    {
        return Err(unknown_type(&record_type));
    }
    let filter = RecordFilter {
        stage: query.stage,
        updated_since,
        after,
    };
    // One extra row tells whether there is a next page.
    let mut rows = state
        .store
        .list_records(&principal.scope, &record_type, &filter, limit + 1)
        .await?;
    let next_cursor = if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        rows.last().map(|r| encode_cursor(r.id))
    } else {
        None
    };
    Ok(Json(RecordPage {
        items: rows.into_iter().map(Into::into).collect(),
        next_cursor,
    }))
}

/// One record.
#[utoipa::path(get, path = "/records/{type}/{id}", tag = "records", security(("client_token" = [])),
    params(("type" = String, Path), ("id" = String, Path)),
    responses((status = 200, body = RecordView), (status = 404, body = ErrorBody)))]
async fn get_record(
    State(state): State<AppState>,
    principal: ClientPrincipal,
    Path((record_type, id)): Path<(String, String)>,
) -> ApiResult<Json<RecordView>> {
    principal.require(Permission::RecordsRead)?;
    let id = parse_id(&record_type, &id)?;
    let row = state
        .store
        .get_record(&principal.scope, &record_type, id)
        .await?
        .ok_or_else(|| ApiError::not_found("record"))?;
    Ok(Json(row.into()))
}

/// Change a record's data and/or stage, if `version` is still current.
#[utoipa::path(patch, path = "/records/{type}/{id}", tag = "records", security(("client_token" = [])),
    params(("type" = String, Path), ("id" = String, Path)), request_body = UpdateRecord,
    responses((status = 200, body = RecordView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn update_record(
    State(state): State<AppState>,
    principal: ClientPrincipal,
    Path((record_type, id)): Path<(String, String)>,
    JsonBody(body): JsonBody<UpdateRecord>,
) -> ApiResult<Json<RecordView>> {
    principal.require(Permission::RecordsUpdate)?;
    let id = parse_id(&record_type, &id)?;
    if let Some(data) = &body.data {
        check_data(data)?;
        state
            .schemas
            .validate(&state.store, &principal.scope, &record_type, data)
            .await?;
    }
    if let Some(stage) = &body.stage {
        check_stage(stage, "/stage")?;
    }
    if body.data.is_none() && body.stage.is_none() {
        return Err(ApiError::field("", "send `data`, `stage` or both"));
    }
    // A scored lead is scored again on every change, from the record as it will be.
    let mut score = None;
    let mut events = Vec::new();
    if record_type == "lead" && state.plugins.scorer(&principal.scope).await?.is_some() {
        let current = state
            .store
            .get_record(&principal.scope, &record_type, id)
            .await?
            .ok_or_else(|| ApiError::not_found("record"))?;
        if current.version != body.version {
            return Err(unexpected(WriteOutcome::VersionConflict {
                current_version: current.version,
            }));
        }
        let scored = score_if_lead(&state, &principal, &record_type, || PluginRecord {
            id: id.to_string(),
            record_type: record_type.clone(),
            stage: body.stage.clone().or(current.stage.clone()),
            version: current.version as u64 + 1,
            data: body.data.as_ref().unwrap_or(&current.data.0).to_string(),
            created_at: current.created_at,
            updated_at: crate::store::now_micros(),
        })
        .await?;
        if let Some(outcome) = scored {
            score = Some(outcome.score);
            events.push(outcome.event);
        }
    }
    let outcome = state
        .writer
        .submit(RecordWrite::Update {
            scope: principal.scope,
            record_type,
            id,
            expected_version: body.version,
            data: body.data,
            stage: body.stage,
            score,
            events,
            actor: principal.actor(),
        })
        .await?;
    match outcome {
        WriteOutcome::Updated(row) => Ok(Json(row.into())),
        other => Err(unexpected(other)),
    }
}

/// Delete a record.
#[utoipa::path(delete, path = "/records/{type}/{id}", tag = "records", security(("client_token" = [])),
    params(("type" = String, Path), ("id" = String, Path)),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn delete_record(
    State(state): State<AppState>,
    principal: ClientPrincipal,
    Path((record_type, id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    principal.require(Permission::RecordsDelete)?;
    let id = parse_id(&record_type, &id)?;
    let outcome = state
        .writer
        .submit(RecordWrite::Delete {
            scope: principal.scope,
            record_type,
            id,
            actor: principal.actor(),
        })
        .await?;
    match outcome {
        WriteOutcome::Deleted => Ok(StatusCode::NO_CONTENT),
        other => Err(unexpected(other)),
    }
}

/// Scores a lead with the tenant's scorer plugin, if it has one. The lead is saved whatever
/// the scorer does: a failure gives a null score and a `plugin.failed` event.
async fn score_if_lead(
    state: &AppState,
    principal: &ClientPrincipal,
    record_type: &str,
    lead: impl FnOnce() -> PluginRecord,
) -> ApiResult<Option<ScoreOutcome>> {
    if record_type != "lead" {
        return Ok(None);
    }
    Ok(state.plugins.score_lead(&principal.scope, lead()).await?)
}

/// Maps the outcomes a route did not succeed with to their errors.
fn unexpected(outcome: WriteOutcome) -> ApiError {
    match outcome {
        WriteOutcome::NotFound => ApiError::not_found("record"),
        WriteOutcome::VersionConflict { current_version } => ApiError::conflict(
            "version_conflict",
            "the record changed since you read it; read it again and reapply your change",
        )
        .with_details(json!({ "current_version": current_version })),
        WriteOutcome::Created(_) | WriteOutcome::Updated(_) | WriteOutcome::Deleted => {
            tracing::error!("record writer answered with the outcome of another kind of write");
            ApiError::internal()
        }
    }
}
