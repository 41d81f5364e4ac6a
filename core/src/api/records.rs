//! Record routes: `/api/records/{type}[/{id}]`.
//!
//! Every lookup is scoped to the caller's tenant, and a record of another tenant is simply
//! not found (404), exactly like one that never existed.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::error::{ApiError, ApiResult, ErrorBody};
use super::extract::ClientPrincipal;
use super::validate::{PageQuery, bad_parameter};
use super::{AppState, JsonBody};
use crate::error::RecordError;
use crate::kernel::{NewId, NewRecord, RecordChange, WriteContext};
use crate::records::{RecordView, check_stage, encode_cursor, valid_type_id};
use crate::store::parse_rfc3339_micros;
use crate::store::records::RecordFilter;
use crate::tenancy::Permission;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_record, list_records))
        .routes(routes!(get_record, update_record, delete_record))
        .routes(routes!(record_history))
        .routes(routes!(list_pipelines))
        .routes(routes!(list_automation_runs))
}

#[derive(Serialize, utoipa::ToSchema)]
struct StageChangeView {
    /// Null for the stage a record was created in.
    from: Option<String>,
    to: Option<String>,
    /// Who moved it: `user:<id>`, `api_key:<id>`, `plugin:<id>` or `automation:<id>`.
    by: Option<String>,
    at: String,
    /// The record's version after the move.
    version: Option<i64>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct HistoryPage {
    items: Vec<StageChangeView>,
}

/// A record's stage changes, oldest first.
#[utoipa::path(get, path = "/records/{type}/{id}/history", tag = "records", security(("client_token" = [])),
    params(("type" = String, Path), ("id" = String, Path)),
    responses((status = 200, body = HistoryPage), (status = 404, body = ErrorBody)))]
async fn record_history(
    State(state): State<AppState>,
    principal: ClientPrincipal,
    Path((record_type, id)): Path<(String, String)>,
) -> ApiResult<Json<HistoryPage>> {
    principal.require(Permission::RecordsRead)?;
    let id = parse_id(&record_type, &id)?;
    state
        .store
        .get_record(&principal.scope, &record_type, id)
        .await?
        .ok_or_else(|| ApiError::not_found("record"))?;
    let changes = state.store.stage_history(&principal.scope, id).await?;
    let text = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).map(str::to_string);
    Ok(Json(HistoryPage {
        items: changes
            .into_iter()
            .map(|c| StageChangeView {
                from: text(&c.payload.0, "from"),
                to: text(&c.payload.0, "to"),
                by: c.actor,
                at: crate::store::format_micros(c.created_at),
                version: c.payload.0.get("version").and_then(Value::as_i64),
            })
            .collect(),
    }))
}

#[derive(Serialize, utoipa::ToSchema)]
struct StageView {
    id: String,
    name: String,
    /// Fields a record must have to enter this stage.
    required_fields: Vec<String>,
    /// Records in this stage now.
    count: i64,
    /// Sum of the pipeline's value field over those records (0 without a value field).
    value: f64,
    /// A stage a newer template version dropped: records may leave it, none may enter.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    retired: bool,
}

#[derive(Serialize, utoipa::ToSchema)]
struct TransitionView {
    from: String,
    to: String,
}

#[derive(Serialize, utoipa::ToSchema)]
struct PipelineView {
    record_type: String,
    value_field: Option<String>,
    stages: Vec<StageView>,
    transitions: Vec<TransitionView>,
    /// Records whose stage is not one of the pipeline's (set before the template was applied).
    other: i64,
}

#[derive(Serialize, utoipa::ToSchema)]
struct PipelinePage {
    items: Vec<PipelineView>,
}

/// The tenant's pipelines, stages in order, with the count and value of records per stage.
#[utoipa::path(get, path = "/pipelines", tag = "records", security(("client_token" = [])),
    responses((status = 200, body = PipelinePage)))]
async fn list_pipelines(
    State(state): State<AppState>,
    principal: ClientPrincipal,
) -> ApiResult<Json<PipelinePage>> {
    principal.require(Permission::RecordsRead)?;
    let Some(spec) = state.workflows.spec(&state.store, &principal.scope).await? else {
        return Ok(Json(PipelinePage { items: Vec::new() }));
    };
    let mut items = Vec::with_capacity(spec.pipelines.len());
    for pipeline in &spec.pipelines {
        let figures = state
            .store
            .stage_figures(
                &principal.scope,
                &pipeline.record_type,
                pipeline.value_field.as_deref(),
            )
            .await?;
        let of = |stage: &str| figures.iter().find(|f| f.stage.as_deref() == Some(stage));
        let other = figures
            .iter()
            .filter(|f| {
                f.stage
                    .as_deref()
                    .is_none_or(|s| pipeline.stage(s).is_none())
            })
            .map(|f| f.count)
            .sum();
        items.push(PipelineView {
            record_type: pipeline.record_type.clone(),
            value_field: pipeline.value_field.clone(),
            stages: pipeline
                .stages
                .iter()
                .map(|s| StageView {
                    id: s.id.clone(),
                    name: s.name.clone(),
                    required_fields: s.required.clone(),
                    count: of(&s.id).map_or(0, |f| f.count),
                    value: of(&s.id).and_then(|f| f.value).unwrap_or(0.0),
                    retired: s.retired,
                })
                .collect(),
            transitions: pipeline
                .transitions()
                .into_iter()
                .map(|(from, to)| TransitionView {
                    from: from.to_string(),
                    to: to.to_string(),
                })
                .collect(),
            other,
        });
    }
    Ok(Json(PipelinePage { items }))
}

#[derive(Serialize, utoipa::ToSchema)]
struct AutomationRunView {
    event_id: Uuid,
    /// `automation:<id>` or `plugin:<id>` (an `on-event` delivery).
    target: String,
    /// `done`, `failed` or `skipped` (an automation chain cut short).
    status: String,
    attempts: i64,
    /// What the action returned (JSON text), when it returned something.
    output: Option<String>,
    error: Option<String>,
    event_at: String,
    finished_at: String,
    /// The server node that ran it.
    node: String,
}

#[derive(Serialize, utoipa::ToSchema)]
struct AutomationRunPage {
    items: Vec<AutomationRunView>,
}

/// The tenant's latest automation runs and plugin event deliveries, newest first (at most
/// 200).
#[utoipa::path(get, path = "/automation-runs", tag = "records", security(("client_token" = [])),
    responses((status = 200, body = AutomationRunPage)))]
async fn list_automation_runs(
    State(state): State<AppState>,
    principal: ClientPrincipal,
) -> ApiResult<Json<AutomationRunPage>> {
    principal.require(Permission::RecordsRead)?;
    let rows = state.store.list_deliveries(&principal.scope, 200).await?;
    Ok(Json(AutomationRunPage {
        items: rows
            .into_iter()
            .map(|r| AutomationRunView {
                event_id: r.event_id,
                target: r.target,
                status: r.status,
                attempts: r.attempts,
                output: r.output,
                error: r.error,
                event_at: crate::store::format_micros(r.event_at),
                finished_at: crate::store::format_micros(r.finished_at),
                node: r.node,
            })
            .collect(),
    }))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateRecord {
    /// The record's fields: a JSON object, validated against the type's schema.
    #[schema(value_type = Object)]
    data: Value,
    /// The stage to start in; the pipeline's first stage if absent.
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = r"^[^\u0000]*\S[^\u0000]*$"
    )]
    stage: Option<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct UpdateRecord {
    /// Replaces the record's data as a whole (send every field).
    #[schema(value_type = Option<Object>)]
    data: Option<Value>,
    /// Move the record to this stage (one the pipeline allows from the current one).
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = r"^[^\u0000]*\S[^\u0000]*$"
    )]
    stage: Option<String>,
    /// The version you read; a stale version gets 409 and changes nothing.
    #[serde(deserialize_with = "super::validate::whole_number")]
    #[schema(minimum = 1)]
    version: i64,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Only records in this stage.
    #[param(max_length = 100)]
    stage: Option<String>,
    /// Only records changed at or after this RFC 3339 time.
    #[param(format = DateTime)]
    updated_since: Option<String>,
    /// Page size, 1-200 (default 50).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 200)]
    limit: Option<String>,
    /// `next_cursor` of the previous page.
    #[param(pattern = "^[A-Za-z0-9_-]*$")]
    cursor: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct RecordPage {
    items: Vec<RecordView>,
    /// Pass as `cursor` for the next page; null on the last page. A page may hold fewer
    /// than `limit` records and still have a next page: pages also end at a size limit.
    next_cursor: Option<String>,
}

/// The record id of a path, if the path can name a record at all.
fn parse_id(record_type: &str, id: &str) -> ApiResult<Uuid> {
    if !valid_type_id(record_type) {
        return Err(RecordError::UnknownType(record_type.to_string()).into());
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
    let ctx = WriteContext::direct(principal.scope, principal.actor(), principal.user_id());
    let new = NewRecord {
        id: NewId::Fresh,
        record_type,
        stage: body.stage,
        data: body.data,
    };
    let row = state.records().create(&ctx, new).await?;
    Ok((StatusCode::CREATED, Json(row.into())))
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
    let bad = bad_parameter;
    let page = PageQuery {
        limit: query.limit,
        cursor: query.cursor,
    };
    let limit = page.limit()?;
    let updated_since = match query.updated_since.as_deref() {
        None => None,
        Some(text) => Some(parse_rfc3339_micros(text).ok_or_else(|| {
            bad(
                "updated_since",
                "must be an RFC 3339 time such as 2026-01-31T09:00:00Z",
            )
        })?),
    };
    let after = page.after_id()?;
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
        return Err(RecordError::UnknownType(record_type).into());
    }
    let filter = RecordFilter {
        stage: query.stage,
        updated_since,
        after,
    };
    // One extra row tells whether there is a next page. The page also ends early once it
    // holds `list_response_bytes` of records; the cursor then continues after the last one.
    let (mut rows, cut_by_size) = state
        .store
        .list_records(
            &principal.scope,
            &record_type,
            &filter,
            limit + 1,
            state.config.list_response_bytes,
        )
        .await?;
    let next_cursor = if cut_by_size || rows.len() as i64 > limit {
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
    principal.require_record_update(&record_type)?;
    let id = parse_id(&record_type, &id)?;
    let ctx = WriteContext::direct(principal.scope, principal.actor(), None);
    let change = RecordChange {
        data: body.data,
        stage: body.stage,
        expected_version: Some(body.version),
        keep: Vec::new(),
    };
    let row = state
        .records()
        .update(&ctx, &record_type, id, change)
        .await?;
    Ok(Json(row.into()))
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
    let ctx = WriteContext::direct(principal.scope, principal.actor(), None);
    state.records().delete(&ctx, &record_type, id).await?;
    Ok(StatusCode::NO_CONTENT)
}
