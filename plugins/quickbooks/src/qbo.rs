//! The QuickBooks Online Accounting API as this plugin uses it: every call through the
//! host's `quickbooks` connection (the host adds the token), `minorversion=75` on each, a
//! `Fault` looked for whatever the status, throttling and server errors told apart from
//! refusals.

use serde_json::Value;
use streamflow_plugin_sdk::connections;
use streamflow_plugin_sdk::text::{clip, url_encode};
use streamflow_plugin_sdk::{Error, HostError, host_message, http, may_pass};

/// The connection's id in the manifest.
pub const CONNECTION: &str = "quickbooks";
/// Sent on every call (Intuit serves 75 when none is sent, and ignores older ones).
pub const MINOR_VERSION: u32 = 75;

/// Why a QuickBooks call gave no answer.
#[derive(Debug, Clone, PartialEq)]
pub enum QboError {
    /// QuickBooks answered with a `Fault` (in a 200 or a 4xx).
    Fault {
        code: String,
        kind: String,
        message: String,
        detail: String,
    },
    /// Throttled (429), a server error (5xx) or no answer in time: worth trying later.
    Transient(String),
    /// Anything else: trying again would fail the same way.
    Failed(String),
}

impl QboError {
    pub fn is_fault(&self, code: &str) -> bool {
        matches!(self, QboError::Fault { code: c, .. } if c == code)
    }
}

impl From<QboError> for Error {
    fn from(e: QboError) -> Error {
        match e {
            QboError::Fault {
                code,
                kind,
                message,
                detail,
            } => {
                let detail = if detail.is_empty() || detail == message {
                    String::new()
                } else {
                    format!(": {detail}")
                };
                Error::Failed(format!(
                    "QuickBooks refused it ({kind} {code}): {message}{detail}"
                ))
            }
            QboError::Transient(m) => Error::RetryLater(m),
            QboError::Failed(m) => Error::Failed(m),
        }
    }
}

/// The connected company.
pub struct Company {
    pub realm: String,
}

/// The tenant's connected company, or why there is none (the admin sees the message in the
/// automation run).
pub fn company() -> Result<Company, Error> {
    let connection = connections::require(
        CONNECTION,
        "QuickBooks",
        "a tenant admin connects it under Integrations",
    )?;
    let realm = connection
        .metadata_json()
        .get("realmId")
        .and_then(|v| match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        })
        .filter(|r| !r.is_empty() && r.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| {
            Error::Failed(
                "the QuickBooks connection has no company (realmId); connect it again".into(),
            )
        })?;
    Ok(Company { realm })
}

impl Company {
    /// `method` on `/v3/company/{realm}/{path}` (the path may carry a query).
    pub fn send(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, QboError> {
        let sep = if path.contains('?') { '&' } else { '?' };
        let url = format!(
            "/v3/company/{}/{path}{sep}minorversion={MINOR_VERSION}",
            self.realm
        );
        let mut request = http::Request::new(method, &url)
            .connection(CONNECTION)
            .header("Accept", "application/json")
            .timeout_ms(20_000);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().map_err(|e| match e {
            e if may_pass(&e) => {
                QboError::Transient(format!("QuickBooks not reached: {}", host_message(&e)))
            }
            HostError::Denied(m) if m.contains("expired") => {
                QboError::Failed(format!("connection expired: {m}"))
            }
            e => QboError::Failed(host_message(&e)),
        })?;
        let parsed: Option<Value> = serde_json::from_slice(&response.body).ok();
        // A Fault may come inside a 200: look for it first.
        if let Some(fault) = parsed.as_ref().and_then(|v| v.get("Fault")) {
            let first = fault
                .get("Error")
                .and_then(|e| e.get(0))
                .cloned()
                .unwrap_or(Value::Null);
            let text = |v: &Value, k: &str| {
                clip(v.get(k).and_then(Value::as_str).unwrap_or_default(), 300)
            };
            let error = QboError::Fault {
                code: text(&first, "code"),
                kind: text(fault, "type"),
                message: text(&first, "Message"),
                detail: text(&first, "Detail"),
            };
            // Throttling and server faults pass; a refusal does not.
            return Err(match (response.status, &error) {
                (429, _) => QboError::Transient("QuickBooks is throttling requests (429)".into()),
                (500..=599, _) => QboError::Transient(format!(
                    "QuickBooks failed ({}): {}",
                    response.status,
                    text(&first, "Message")
                )),
                (_, QboError::Fault { kind, .. }) if kind == "SystemFault" => {
                    QboError::Transient(format!("QuickBooks failed: {}", text(&first, "Message")))
                }
                _ => error,
            });
        }
        match response.status {
            200..=299 => parsed.ok_or_else(|| {
                QboError::Failed("QuickBooks answered with something that is not JSON".into())
            }),
            429 => Err(QboError::Transient(
                "QuickBooks is throttling requests (429)".into(),
            )),
            500..=599 => Err(QboError::Transient(format!(
                "QuickBooks failed ({})",
                response.status
            ))),
            401 | 403 => Err(QboError::Failed(format!(
                "QuickBooks refused the connection ({}); a tenant admin may need to connect it again",
                response.status
            ))),
            status => Err(QboError::Failed(format!("QuickBooks answered {status}"))),
        }
    }

    /// `select * from {entity} where {condition}`: the rows (none when QuickBooks leaves the
    /// entity out of an empty `QueryResponse`).
    pub fn query(&self, entity: &str, condition: &str) -> Result<Vec<Value>, QboError> {
        let statement = format!("select * from {entity} where {condition} maxresults 10");
        let answer = self.send(
            "GET",
            &format!("query?query={}", url_encode(&statement)),
            None,
        )?;
        Ok(answer
            .get("QueryResponse")
            .and_then(|r| r.get(entity))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default())
    }

    pub fn read(&self, entity: &str, id: &str) -> Result<Value, QboError> {
        let answer = self.send(
            "GET",
            &format!("{}/{}", entity.to_lowercase(), url_encode(id)),
            None,
        )?;
        answer
            .get(entity)
            .cloned()
            .ok_or_else(|| QboError::Failed(format!("QuickBooks' answer has no {entity}")))
    }

    /// Creates (or, with `sparse` and an Id and SyncToken in `body`, updates) an entity.
    /// `request_id` makes a repeat return the first answer instead of a second entity.
    pub fn write(
        &self,
        entity: &str,
        body: &Value,
        request_id: Option<&str>,
    ) -> Result<Value, QboError> {
        let path = match request_id {
            Some(id) => format!("{}?requestid={}", entity.to_lowercase(), url_encode(id)),
            None => entity.to_lowercase(),
        };
        let answer = self.send("POST", &path, Some(body))?;
        answer
            .get(entity)
            .cloned()
            .ok_or_else(|| QboError::Failed(format!("QuickBooks' answer has no {entity}")))
    }
}

/// A string literal of the query language: quoted, with `\` and `'` escaped by a backslash.
pub fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('\'');
    for c in text.chars() {
        if c == '\\' || c == '\'' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('\'');
    out
}

/// An entity's id as text.
pub fn id_of(entity: &Value) -> Option<String> {
    match entity.get("Id")? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A SyncToken as a number (QuickBooks increments it on every change).
pub fn sync_token(entity: &Value) -> Option<u64> {
    match entity.get("SyncToken")? {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_u64(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_escape_backslash_and_apostrophe() {
        assert_eq!(quote("King's Groceries"), r"'King\'s Groceries'");
        assert_eq!(quote(r"a\b"), r"'a\\b'");
        assert_eq!(quote(r"\'; drop"), r"'\\\'; drop'");
        assert_eq!(quote(""), "''");
    }

    #[test]
    fn sync_tokens_and_ids_read_as_text_or_numbers() {
        let e = serde_json::json!({"Id": "130", "SyncToken": "4"});
        assert_eq!(id_of(&e).as_deref(), Some("130"));
        assert_eq!(sync_token(&e), Some(4));
        let e = serde_json::json!({"Id": 7, "SyncToken": 0});
        assert_eq!(id_of(&e).as_deref(), Some("7"));
        assert_eq!(sync_token(&e), Some(0));
    }

    #[test]
    fn faults_read_as_the_admin_should_see_them() {
        let e: Error = QboError::Fault {
            code: "6000".into(),
            kind: "ValidationFault".into(),
            message: "A business validation error has occurred".into(),
            detail: "Item is required".into(),
        }
        .into();
        assert_eq!(
            e,
            Error::Failed(
                "QuickBooks refused it (ValidationFault 6000): A business validation error has occurred: Item is required".into()
            )
        );
        let e: Error = QboError::Transient("throttled".into()).into();
        assert_eq!(e, Error::RetryLater("throttled".into()));
    }
}
