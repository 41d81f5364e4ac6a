//! The one error type every HTTP handler returns, its JSON shape
//! (`{"error": {"code", "message", "details"}}`), and how the kernel's domain errors
//! ([`crate::error`]) become statuses and bodies.
//!
//! Internal failures are logged with their cause and answered with a generic message, so a
//! database error or a secret never reaches a response.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Value, json};

use crate::error::{ApplyError, FieldError, InstallError, RecordError, summarize};
use crate::store::StoreError;

/// An API error: a status, a stable machine-readable code, a message for people and
/// optional structured details.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: Value,
    /// Seconds the client should wait before retrying (429 only).
    pub retry_after: Option<u64>,
}

/// The JSON body of every error response (documented in the OpenAPI description).
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable code, e.g. `validation_failed`, `not_found`, `version_conflict`.
    pub code: String,
    pub message: String,
    #[schema(value_type = Object)]
    pub details: Value,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            details: json!({}),
            retry_after: None,
        }
    }

    pub fn with_details(mut self, details: Value) -> Self {
        self.details = details;
        self
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 401 with one message for every cause, so a caller learns nothing about which part of
    /// a credential was wrong.
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing, invalid or expired credentials for this realm",
        )
    }

    pub fn invalid_credentials() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "invalid_credentials",
            "the email or password is wrong, or the account is not active",
        )
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }

    /// 422 listing every field that failed, each with its JSON pointer.
    pub fn validation(errors: Vec<FieldError>) -> Self {
        let summary = summarize(&errors);
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            summary,
        )
        .with_details(json!({ "errors": errors }))
    }

    pub fn field(path: &str, message: impl Into<String>) -> Self {
        Self::validation(vec![FieldError::new(path, message)])
    }

    pub fn too_many_requests(message: impl Into<String>, retry_after: u64) -> Self {
        let mut e = Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message)
            .with_details(json!({ "retry_after_seconds": retry_after }));
        e.retry_after = Some(retry_after);
        e
    }

    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; the request id in x-request-id identifies it in the server logs",
        )
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Database(e) => {
                tracing::error!(error = %e, "database error");
                ApiError::internal()
            }
            StoreError::Corrupt(what) => {
                tracing::error!(what, "stored data does not parse");
                ApiError::internal()
            }
            StoreError::CommitUnconfirmed => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "commit_unconfirmed",
                "the database did not confirm this write; it may or may not be stored. \
                 Read the data before retrying.",
            ),
            StoreError::Unavailable => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "records cannot be written right now (the server is stopping or cannot reach \
                 its database); retry shortly",
            ),
        }
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(err: anyhow::Error) -> Self {
        tracing::error!(error = %format!("{err:#}"), "internal error");
        ApiError::internal()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            metrics::counter!("streamflow_http_server_errors_total").increment(1);
        }
        let body = json!({
            "error": { "code": self.code, "message": self.message, "details": self.details }
        });
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

impl From<FieldError> for ApiError {
    fn from(err: FieldError) -> Self {
        ApiError::validation(vec![err])
    }
}

impl From<RecordError> for ApiError {
    fn from(err: RecordError) -> Self {
        // The domain's sentence, where the API says the same.
        let message = err.to_string();
        match err {
            RecordError::UnknownType(record_type) => ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_record_type",
                "this tenant has no such record type; GET /api/record-types lists them",
            )
            .with_details(json!({ "type": record_type })),
            RecordError::Invalid(errors) => ApiError::validation(errors),
            RecordError::TooLarge { size, limit } => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "record_too_large", message)
                    .with_details(
                        json!({ "path": "/data", "size_bytes": size, "limit_bytes": limit }),
                    )
            }
            RecordError::StageRefused { stage, refusal } => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "stage_refused", message)
                    .with_details(refusal.details(&stage))
            }
            RecordError::TemplateChanged => ApiError::conflict("template_changed", message),
            RecordError::VersionConflict { current } => ApiError::conflict(
                "version_conflict",
                "the record changed since you read it; read it again and reapply your change",
            )
            .with_details(json!({ "current_version": current })),
            RecordError::NotFound => ApiError::not_found("record"),
            RecordError::KeyTaken => ApiError::conflict("key_taken", message),
            RecordError::IdTaken { record_type } => ApiError::conflict(
                "id_taken",
                format!("the record id is taken by a {record_type}"),
            ),
            RecordError::Store(e) => e.into(),
            RecordError::Internal(what) => {
                tracing::error!(what, "record write failed inside the kernel");
                ApiError::internal()
            }
        }
    }
}

impl From<InstallError> for ApiError {
    fn from(err: InstallError) -> Self {
        match err {
            InstallError::NoApprovedVersion => {
                ApiError::not_found("approved version of this plugin")
            }
            InstallError::Invalid(errors) => ApiError::validation(errors),
            InstallError::ScorerInstalled { installed } => ApiError::conflict(
                "scorer_installed",
                format!("{installed} already scores this tenant's leads; uninstall it first"),
            ),
            InstallError::ConfigDoesNotFit { version, errors } => ApiError {
                message: format!(
                    "version {version}'s configuration schema rejects the current configuration; send a `config` that fits it"
                ),
                ..ApiError::validation(errors)
            },
            InstallError::NotInstalled => ApiError::not_found("installation"),
            InstallError::Store(e) => e.into(),
            InstallError::Internal(what) => {
                tracing::error!(what, "installation failed inside the kernel");
                ApiError::internal()
            }
        }
    }
}

impl From<ApplyError> for ApiError {
    fn from(err: ApplyError) -> Self {
        match err {
            ApplyError::OtherTemplate { current } => ApiError::conflict(
                "template_conflict",
                format!(
                    "this tenant uses the {current} template; a tenant cannot switch templates"
                ),
            ),
            ApplyError::Downgrade { current } => ApiError::conflict(
                "template_downgrade",
                format!("this tenant has {current}; templates only move forward"),
            ),
            ApplyError::Raced => ApiError::conflict(
                "template_conflict",
                "another application of a template to this tenant finished first; read the tenant's template and try again",
            ),
            ApplyError::Problems(problems) => {
                let errors = problems
                    .into_iter()
                    .map(|p| FieldError::new(p.at, p.message))
                    .collect();
                let mut error = ApiError::validation(errors);
                error.code = "template_invalid";
                error.message = format!(
                    "the template cannot be applied to this tenant; nothing was changed. {}",
                    error.message
                );
                error
            }
            ApplyError::Store(e) => e.into(),
            ApplyError::Internal(what) => {
                tracing::error!(what, "template application failed inside the kernel");
                ApiError::internal()
            }
        }
    }
}

impl From<crate::kernel::connections::ConnectionError> for ApiError {
    fn from(err: crate::kernel::connections::ConnectionError) -> Self {
        use crate::kernel::connections::ConnectionError as E;
        match err {
            e @ E::Unknown(_) => ApiError::new(StatusCode::NOT_FOUND, "not_found", e.to_string()),
            E::Invalid(errors) => ApiError::validation(errors),
            E::NotReady(message) => ApiError::conflict("connection_not_ready", message),
            E::Refused(message) => {
                ApiError::new(StatusCode::BAD_GATEWAY, "connection_refused", message)
            }
            E::Store(e) => e.into(),
        }
    }
}

impl From<crate::kernel::schedules::ScheduleError> for ApiError {
    fn from(err: crate::kernel::schedules::ScheduleError) -> Self {
        use crate::kernel::schedules::ScheduleError as E;
        match err {
            E::NotFound => ApiError::not_found("schedule"),
            e @ E::Running => ApiError::conflict("schedule_running", e.to_string()),
            E::Store(e) => e.into(),
        }
    }
}
