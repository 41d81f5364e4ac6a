//! The ServiceTitan API v2 as this plugin uses it: every call through the host's
//! `servicetitan` connection (which adds the bearer token and the app key), the tenant id
//! in each path, 429 told apart from server errors and from refusals
//! (`ApiErrorResponse`).

use serde_json::Value;
use streamflow_plugin_sdk::connections;
use streamflow_plugin_sdk::text::clip;
use streamflow_plugin_sdk::{Error, HostError, host_message, http, may_pass};

pub const CONNECTION: &str = "servicetitan";

#[derive(Debug, Clone, PartialEq)]
pub enum StError {
    /// 429: the run stops here; `Retry-After` seconds when given.
    Throttled(Option<u64>),
    /// 5xx or no answer: worth trying later.
    Transient(String),
    /// A 404.
    NotFound,
    /// Anything else, with ServiceTitan's own words.
    Failed(String),
}

impl From<StError> for Error {
    fn from(e: StError) -> Error {
        match e {
            StError::Throttled(after) => Error::RetryLater(format!(
                "ServiceTitan is throttling requests (429{})",
                after
                    .map(|s| format!(", retry after {s} s"))
                    .unwrap_or_default()
            )),
            StError::Transient(m) => Error::RetryLater(m),
            StError::NotFound => Error::Failed("ServiceTitan has no such record".into()),
            StError::Failed(m) => Error::Failed(m),
        }
    }
}

/// The business's ServiceTitan tenant.
pub struct Tenant {
    pub id: String,
}

pub fn tenant() -> Result<Tenant, Error> {
    let connection = connections::require(
        CONNECTION,
        "ServiceTitan",
        "a tenant admin enters its client id, secret and tenant id under Integrations",
    )?;
    let id = connection
        .metadata_json()
        .get("tenant_id")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
        .map(str::to_string)
        .ok_or_else(|| {
            Error::Failed("the ServiceTitan connection has no tenant id; enter it again".into())
        })?;
    Ok(Tenant { id })
}

impl Tenant {
    /// `/{module}/v2/tenant/{tenant}/{path}`.
    pub fn path(&self, module: &str, path: &str) -> String {
        format!("/{module}/v2/tenant/{}/{path}", self.id)
    }

    pub fn send(&self, method: &str, url: &str, body: Option<&Value>) -> Result<Value, StError> {
        let mut request = http::Request::new(method, url)
            .connection(CONNECTION)
            .header("Accept", "application/json")
            .timeout_ms(20_000);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().map_err(|e| match e {
            e if may_pass(&e) => {
                StError::Transient(format!("ServiceTitan not reached: {}", host_message(&e)))
            }
            HostError::Denied(m) if m.contains("expired") => {
                StError::Failed(format!("connection expired: {m}"))
            }
            e => StError::Failed(host_message(&e)),
        })?;
        let parsed: Option<Value> = serde_json::from_slice(&response.body).ok();
        match response.status {
            200..=299 => Ok(parsed.unwrap_or(Value::Null)),
            429 => Err(StError::Throttled(
                response
                    .header("retry-after")
                    .and_then(|v| v.trim().parse().ok()),
            )),
            404 => Err(StError::NotFound),
            500..=599 => Err(StError::Transient(format!(
                "ServiceTitan failed ({})",
                response.status
            ))),
            status => Err(StError::Failed(describe(status, parsed.as_ref()))),
        }
    }
}

/// An `ApiErrorResponse` (`title`, `errors` by field) as one sentence.
pub fn describe(status: u16, body: Option<&Value>) -> String {
    let Some(body) = body else {
        return format!("ServiceTitan answered {status}");
    };
    let title = body
        .get("title")
        .and_then(Value::as_str)
        .unwrap_or("refused the request");
    let mut fields = Vec::new();
    if let Some(errors) = body.get("errors").and_then(Value::as_object) {
        for (field, messages) in errors.iter().take(5) {
            let text = messages
                .as_array()
                .and_then(|m| m.first())
                .and_then(Value::as_str)
                .unwrap_or_default();
            fields.push(format!("{field}: {}", clip(text, 200)));
        }
    }
    let fields = if fields.is_empty() {
        String::new()
    } else {
        format!(" ({})", fields.join("; "))
    };
    format!(
        "ServiceTitan answered {status}: {}{fields}",
        clip(title, 200)
    )
}

/// An id as text (ServiceTitan's ids are int64).
pub fn id_text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn api_errors_read_with_their_fields() {
        let body = json!({"type": "https://tools.ietf.org/html/rfc7231#section-6.5.1", "title": "One or more validation errors occurred.",
            "status": 400, "traceId": "00-1", "errors": {"Name": ["The Name field is required."]}, "data": {}});
        assert_eq!(
            describe(400, Some(&body)),
            "ServiceTitan answered 400: One or more validation errors occurred. (Name: The Name field is required.)"
        );
        assert_eq!(describe(403, None), "ServiceTitan answered 403");
    }

    #[test]
    fn ids_are_numbers_or_text() {
        assert_eq!(id_text(Some(&json!(1001))).as_deref(), Some("1001"));
        assert_eq!(id_text(Some(&json!("77"))).as_deref(), Some("77"));
        assert_eq!(id_text(Some(&json!(""))), None);
        assert_eq!(id_text(None), None);
    }
}
