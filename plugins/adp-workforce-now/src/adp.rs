//! ADP Workforce Now's API as this plugin uses it: every call through the host's `adp`
//! connection (which holds the employer's client credentials and the provider's client
//! certificate, presented on every TLS handshake, and adds the bearer token), JSON in and
//! out, and ADP's answers sorted into what the run does next: go on, stop and come back
//! (429, 503 maintenance with `Retry-After`), or fail with ADP's own words (`confirmMessage`).

use serde_json::Value;
use streamflow_plugin_sdk::connections;
use streamflow_plugin_sdk::text::clip;
use streamflow_plugin_sdk::{Error, HostError, host_message, http, may_pass};

pub const CONNECTION: &str = "adp";

#[derive(Debug, Clone, PartialEq)]
pub enum AdpError {
    /// 429, or 503 for maintenance: nothing was done; `Retry-After` seconds when given.
    Busy {
        status: u16,
        after: Option<u64>,
    },
    /// The service could not be reached, or failed (5xx): worth trying later.
    Transient(String),
    /// No answer came (a timeout, an answer too large to read) after the request went out:
    /// ADP may have acted on it.
    Unknown(String),
    /// The host did not send the request (the connection is not ready, a quota is used):
    /// `retry` when trying later may work.
    NotSent {
        message: String,
        retry: bool,
    },
    NotFound,
    /// A refusal, with ADP's message.
    Refused {
        status: u16,
        message: String,
    },
}

impl AdpError {
    /// Whether ADP certainly did not act on the request (so sending it again is safe).
    pub fn not_done(&self) -> bool {
        match self {
            AdpError::Busy { .. }
            | AdpError::NotFound
            | AdpError::Refused { .. }
            | AdpError::NotSent { .. } => true,
            AdpError::Transient(_) | AdpError::Unknown(_) => false,
        }
    }
}

impl std::fmt::Display for AdpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AdpError::Busy { status, after } => write!(
                f,
                "ADP asked to come back later ({status}{})",
                after
                    .map(|s| format!(", retry after {s} s"))
                    .unwrap_or_default()
            ),
            AdpError::Transient(m) | AdpError::Unknown(m) => f.write_str(m),
            AdpError::NotSent { message, .. } => f.write_str(message),
            AdpError::NotFound => f.write_str("ADP has no such resource"),
            AdpError::Refused { message, .. } => f.write_str(message),
        }
    }
}

impl From<AdpError> for Error {
    fn from(e: AdpError) -> Error {
        match e {
            AdpError::Busy { .. }
            | AdpError::Transient(_)
            | AdpError::Unknown(_)
            | AdpError::NotSent { retry: true, .. } => Error::RetryLater(e.to_string()),
            AdpError::NotSent { message, .. } => Error::Failed(message),
            AdpError::NotFound | AdpError::Refused { .. } => Error::Failed(e.to_string()),
        }
    }
}

/// Fails unless the business's ADP connection is usable, saying what to do.
pub fn ready() -> Result<(), Error> {
    connections::require(
        CONNECTION,
        "ADP Workforce Now",
        "a tenant admin enters the client id and secret ADP issued for this employer under Integrations",
    )
    .map(|_| ())
}

/// What a successful call answered.
pub struct Answer {
    pub status: u16,
    pub body: Value,
    pub headers: Vec<(String, String)>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One call to ADP. Writes (`events/...`) carry `roleCode: practitioner`.
pub fn send(method: &str, path: &str, body: Option<&Value>) -> Result<Answer, AdpError> {
    let mut request = http::Request::new(method, path)
        .connection(CONNECTION)
        .header("Accept", "application/json")
        .timeout_ms(25_000);
    if path.starts_with("/events/") {
        request = request.header("roleCode", "practitioner");
    }
    if let Some(body) = body {
        request = request.json(body);
    }
    let response = request.send().map_err(|e| match e {
        HostError::Timeout(m) => AdpError::Unknown(format!("ADP did not answer in time: {m}")),
        // Over a quota the request was never sent; an answer over the size cap came back
        // from a request ADP may have acted on.
        HostError::Limit(m) if m.starts_with("quota") => AdpError::NotSent {
            message: format!("not sent: {m}"),
            retry: true,
        },
        HostError::Limit(m) => AdpError::Unknown(format!("ADP's answer could not be read: {m}")),
        e if may_pass(&e) => AdpError::Transient(format!("ADP not reached: {}", host_message(&e))),
        e => AdpError::NotSent {
            message: format!("not sent to ADP: {}", host_message(&e)),
            retry: false,
        },
    })?;
    let parsed: Value = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
    let after = || {
        response
            .header("retry-after")
            .and_then(|v| v.trim().parse().ok())
    };
    match response.status {
        200..=299 => Ok(Answer {
            status: response.status,
            body: parsed,
            headers: response.headers.clone(),
        }),
        // 429, and 503 with Retry-After (ADP's maintenance), are answers that nothing was
        // done; a bare 503 may come from a gateway after ADP acted.
        429 => Err(AdpError::Busy {
            status: 429,
            after: after(),
        }),
        503 if after().is_some() => Err(AdpError::Busy {
            status: 503,
            after: after(),
        }),
        404 => Err(AdpError::NotFound),
        500..=599 => Err(AdpError::Transient(format!(
            "ADP failed ({}){}",
            response.status,
            messages(&parsed)
                .map(|m| format!(": {m}"))
                .unwrap_or_default()
        ))),
        status => Err(AdpError::Refused {
            status,
            message: format!(
                "ADP refused the request ({status}): {}",
                messages(&parsed).unwrap_or_else(|| "no reason given".into())
            ),
        }),
    }
}

/// The messages of an ADP error body, in either of the shapes ADP answers with: the
/// `confirmMessage` envelope (`resourceMessages[].processMessages[].userMessage.messageTxt`)
/// or the payroll APIs' `resourceMessageInfoList[].processMessageInfoList[].messageText`.
pub fn messages(body: &Value) -> Option<String> {
    let mut found = Vec::new();
    let confirm = body.get("confirmMessage").unwrap_or(body);
    for resource in confirm
        .get("resourceMessages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        for process in resource
            .get("processMessages")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let text = process
                .pointer("/userMessage/messageTxt")
                .or_else(|| process.pointer("/developerMessage/messageTxt"))
                .and_then(Value::as_str);
            if let Some(text) = text {
                found.push(text.trim().to_string());
            }
        }
    }
    for resource in body
        .get("resourceMessageInfoList")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        for process in resource
            .get("processMessageInfoList")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(text) = process.get("messageText").and_then(Value::as_str) {
                found.push(text.trim().to_string());
            }
        }
    }
    found.retain(|m| !m.is_empty());
    found.dedup();
    (!found.is_empty()).then(|| clip(&found.join("; "), 500).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn both_error_shapes_read() {
        let confirm = json!({"confirmMessage": {"requestStatusCode": {"codeValue": "failed"}, "resourceMessages": [{"processMessages": [
            {"messageTypeCode": {"codeValue": "error"}, "userMessage": {"messageTxt": "associateOID is invalid."}},
            {"userMessage": {"messageTxt": "payrollFileNumber 9 is not on file."}}]}]}});
        assert_eq!(
            messages(&confirm).as_deref(),
            Some("associateOID is invalid.; payrollFileNumber 9 is not on file.")
        );
        let payroll = json!({"wfnRestfulResponseType": "HTTP_BAD_REQUEST", "resourceMessageInfoList": [{"processMessageInfoList": [
            {"messageTypeCode": "error", "messageText": "eventContext/payrollProcessingJobID is invalid."}]}]});
        assert_eq!(
            messages(&payroll).as_deref(),
            Some("eventContext/payrollProcessingJobID is invalid.")
        );
        assert_eq!(messages(&json!({"workers": []})), None);
    }

    #[test]
    fn only_a_refusal_or_a_busy_answer_proves_nothing_was_done() {
        assert!(
            AdpError::Busy {
                status: 503,
                after: Some(30)
            }
            .not_done()
        );
        assert!(
            AdpError::Refused {
                status: 400,
                message: "x".into()
            }
            .not_done()
        );
        assert!(!AdpError::Unknown("timeout".into()).not_done());
        assert!(!AdpError::Transient("502".into()).not_done());
        assert!(
            AdpError::NotSent {
                message: "quota".into(),
                retry: true
            }
            .not_done()
        );
    }
}
