//! The one error type every HTTP handler returns, and its JSON shape:
//! `{"error": {"code", "message", "details"}}`.
//!
//! Internal failures are logged with their cause and answered with a generic message, so a
//! database error or a secret never reaches a response.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Value, json};

use crate::store::StoreError;

/// One field that failed validation: where (a JSON pointer into the request body) and why.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct FieldError {
    /// JSON pointer to the offending value, e.g. `/data/budget` (empty for the whole body).
    pub path: String,
    /// What is wrong with it.
    pub message: String,
}

impl FieldError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

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
        let summary = match errors.as_slice() {
            [one] if one.path.is_empty() => format!("invalid request: {}", one.message),
            [one] => format!("invalid value at {}: {}", one.path, one.message),
            many => format!("{} fields are invalid", many.len()),
        };
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
