//! The Google Ads API as this plugin uses it: every call through the host's `google-ads`
//! connection (which adds the bearer token, the provider's `developer-token` and its
//! manager account as `login-customer-id`), the business's customer id in each path, GAQL
//! searches of `local_services_lead`, and Google's error body told apart into throttling,
//! failures that may pass, and refusals someone has to fix (named in the message).

use serde_json::{Value, json};
use streamflow_plugin_sdk::connections;
use streamflow_plugin_sdk::text::clip;
use streamflow_plugin_sdk::{Error, HostError, host_message, http, may_pass};

pub const CONNECTION: &str = "google-ads";

/// Every field of `local_services_lead` the plugin reads.
pub const FIELDS: [&str; 13] = [
    "local_services_lead.id",
    "local_services_lead.resource_name",
    "local_services_lead.lead_type",
    "local_services_lead.lead_status",
    "local_services_lead.category_id",
    "local_services_lead.service_id",
    "local_services_lead.contact_details",
    "local_services_lead.creation_date_time",
    "local_services_lead.locale",
    "local_services_lead.lead_charged",
    "local_services_lead.credit_details.credit_state",
    "local_services_lead.note.description",
    "local_services_lead.lead_feedback_submitted",
];

/// Which leads a search asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter<'a> {
    /// Created at or after (`strict`: after) an account-time `YYYY-MM-DD HH:MM:SS`, oldest
    /// first.
    Since { at: &'a str, strict: bool },
    /// Created in the second `at`, with ids above `after_id`, by id: the rest of a second
    /// that held more leads than one page.
    Within { at: &'a str, after_id: &'a str },
    /// One lead.
    Id(&'a str),
}

/// The GAQL of a search. Date-times and ids are checked before they are written into the
/// query (only what the plugin itself parsed, never text as received).
pub fn query(filter: &Filter, limit: u32) -> Result<String, Error> {
    let bad = |what: &str, v: &str| {
        Error::Failed(format!(
            "{what} {:?} cannot go into a query (a bug: the cursor is reset by restart-import)",
            clip(v, 40)
        ))
    };
    let time = |v: &str| {
        crate::clock::parse(v)
            .map(crate::clock::format)
            .ok_or_else(|| bad("the date-time", v))
    };
    let id = |v: &str| {
        (!v.is_empty() && v.len() <= 20 && v.bytes().all(|b| b.is_ascii_digit()))
            .then(|| v.to_string())
            .ok_or_else(|| bad("the lead id", v))
    };
    let (filter, order) = match filter {
        Filter::Since { at, strict } => (
            format!(
                "local_services_lead.creation_date_time {} '{}'",
                if *strict { ">" } else { ">=" },
                time(at)?
            ),
            "local_services_lead.creation_date_time, local_services_lead.id",
        ),
        Filter::Within { at, after_id } => (
            format!(
                "local_services_lead.creation_date_time = '{}' AND local_services_lead.id > {}",
                time(at)?,
                id(after_id)?
            ),
            "local_services_lead.id",
        ),
        Filter::Id(lead) => (
            format!("local_services_lead.id = {}", id(lead)?),
            "local_services_lead.id",
        ),
    };
    Ok(format!(
        "SELECT {} FROM local_services_lead WHERE {filter} ORDER BY {order} LIMIT {}",
        FIELDS.join(", "),
        limit.max(1)
    ))
}

/// The business's Google Ads account, reached through the connection.
pub struct Account {
    /// Ten digits.
    pub customer_id: String,
    /// `v26`.
    pub version: String,
}

/// A customer id as Google wants it in a path: ten digits (`123-456-7890` is accepted
/// as the Google Ads UI shows it).
pub fn customer_id(text: &str) -> Option<String> {
    let digits: String = text.chars().filter(|c| *c != '-' && *c != ' ').collect();
    (digits.len() == 10 && digits.bytes().all(|b| b.is_ascii_digit())).then_some(digits)
}

/// The connected account, or why there is none in words for the tenant.
pub fn account(version: &str) -> Result<Account, Error> {
    let connection = connections::require(
        CONNECTION,
        "Google Ads",
        "a tenant admin enters the business's customer id and connects its Google account under Integrations",
    )?;
    let customer_id = connection
        .metadata_json()
        .get("customer_id")
        .and_then(Value::as_str)
        .and_then(customer_id)
        .ok_or_else(|| {
            Error::Failed(
                "the Google Ads connection has no customer id: a tenant admin enters the business's 10-digit Google Ads customer id and connects again".into(),
            )
        })?;
    Ok(Account {
        customer_id,
        version: version.to_string(),
    })
}

/// Why a call did not succeed.
#[derive(Debug, Clone, PartialEq)]
pub enum AdsError {
    /// 429 / RESOURCE_EXHAUSTED: the run stops here and the next resumes.
    Throttled(String),
    /// 5xx, no answer, a per-call quota: worth trying later.
    Transient(String),
    /// A refusal that will not pass by itself, in words that say who fixes what.
    Failed(String),
}

impl From<AdsError> for Error {
    fn from(e: AdsError) -> Error {
        match e {
            AdsError::Throttled(m) | AdsError::Transient(m) => Error::RetryLater(m),
            AdsError::Failed(m) => Error::Failed(m),
        }
    }
}

impl Account {
    fn send(&self, url: &str, body: &Value) -> Result<Value, AdsError> {
        let response = http::Request::post(url)
            .connection(CONNECTION)
            .header("Accept", "application/json")
            .json(body)
            .timeout_ms(20_000)
            .send()
            .map_err(|e| match e {
                e if may_pass(&e) => {
                    AdsError::Transient(format!("Google Ads not reached: {}", host_message(&e)))
                }
                HostError::Denied(m) if m.contains("expired") => AdsError::Failed(format!(
                    "the Google Ads connection expired: a tenant admin connects Google Ads again ({})",
                    clip(&m, 200)
                )),
                e => AdsError::Failed(host_message(&e)),
            })?;
        if response.is_success() {
            return serde_json::from_slice(&response.body).map_err(|_| {
                AdsError::Transient("Google Ads answered with something that is not JSON".into())
            });
        }
        let failure = Failure::read(response.status, &response.body);
        Err(failure.classify(self))
    }

    /// One page of a GAQL search (`GoogleAdsService.Search`).
    pub fn search(&self, query: &str, page_token: Option<&str>) -> Result<Value, AdsError> {
        let mut body = json!({ "query": query });
        if let Some(token) = page_token {
            body["pageToken"] = json!(token);
        }
        self.send(
            &format!(
                "/{}/customers/{}/googleAds:search",
                self.version, self.customer_id
            ),
            &body,
        )
    }

    /// `LocalServicesLeadService.ProvideLeadFeedback` for the lead `resource_name`
    /// (`customers/{customer_id}/localServicesLeads/{id}`).
    pub fn provide_feedback(&self, resource_name: &str, body: &Value) -> Result<Value, AdsError> {
        self.send(
            &format!("/{}/{resource_name}:provideLeadFeedback", self.version),
            body,
        )
    }
}

/// Google's error body as the plugin reads it: `{"error": {"code", "message", "status",
/// "details": [{"@type": "...GoogleAdsFailure", "errors": [{"errorCode": {...},
/// "message"}], "requestId"}]}}`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Failure {
    pub http: u16,
    /// `PERMISSION_DENIED`, `RESOURCE_EXHAUSTED`, ...
    pub status: Option<String>,
    /// Each GoogleAdsFailure error's code as `kind.VALUE` (`authorizationError.USER_PERMISSION_DENIED`).
    pub codes: Vec<String>,
    /// The first GoogleAdsFailure error's message, else the top-level one.
    pub message: Option<String>,
    pub request_id: Option<String>,
}

impl Failure {
    pub fn read(http: u16, body: &[u8]) -> Failure {
        let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let error = body.get("error").unwrap_or(&Value::Null);
        let mut failure = Failure {
            http,
            status: error
                .get("status")
                .and_then(Value::as_str)
                .map(str::to_string),
            ..Failure::default()
        };
        let details = error
            .get("details")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for detail in &details {
            if failure.request_id.is_none() {
                failure.request_id = detail
                    .get("requestId")
                    .and_then(Value::as_str)
                    .map(str::to_string);
            }
            for e in detail
                .get("errors")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(code) = e.get("errorCode").and_then(Value::as_object) {
                    for (kind, value) in code {
                        if let Some(value) = value.as_str() {
                            failure.codes.push(format!("{kind}.{value}"));
                        }
                    }
                }
                if failure.message.is_none() {
                    failure.message = e
                        .get("message")
                        .and_then(Value::as_str)
                        .filter(|m| !m.trim().is_empty())
                        .map(|m| clip(m.trim(), 200));
                }
            }
        }
        if failure.message.is_none() {
            failure.message = error
                .get("message")
                .and_then(Value::as_str)
                .filter(|m| !m.trim().is_empty())
                .map(|m| clip(m.trim(), 200));
        }
        failure
    }

    /// Whether one of the errors has this code (`USER_PERMISSION_DENIED`), of any kind.
    pub fn has(&self, value: &str) -> bool {
        self.codes
            .iter()
            .any(|c| c.rsplit('.').next() == Some(value))
    }

    /// One line: Google's words, its status and codes, and the request id.
    pub fn summary(&self) -> String {
        let mut out = format!("Google Ads answered {}", self.http);
        if let Some(status) = &self.status {
            out.push_str(&format!(" {status}"));
        }
        if !self.codes.is_empty() {
            let codes: Vec<&str> = self.codes.iter().take(3).map(String::as_str).collect();
            out.push_str(&format!(" ({})", codes.join(", ")));
        }
        if let Some(message) = &self.message {
            out.push_str(&format!(": {message}"));
        }
        if let Some(id) = &self.request_id {
            out.push_str(&format!(" [request {}]", clip(id, 40)));
        }
        out
    }

    /// What the failure means for the run, and who has to do what.
    pub fn classify(&self, account: &Account) -> AdsError {
        let said = self.summary();
        let status = self.status.as_deref().unwrap_or_default();
        if self.http == 429 || status == "RESOURCE_EXHAUSTED" || self.has("RESOURCE_EXHAUSTED") {
            return AdsError::Throttled(format!(
                "Google Ads is throttling requests; the next run resumes ({said})"
            ));
        }
        if self.http >= 500 || matches!(status, "INTERNAL" | "UNAVAILABLE" | "DEADLINE_EXCEEDED") {
            return AdsError::Transient(format!(
                "Google Ads failed; the next run retries ({said})"
            ));
        }
        let fix = if self.has("DEVELOPER_TOKEN_PARAMETER_MISSING") {
            "the provider has not set the developer token: it sets developer_token in the google-ads connection's settings".to_string()
        } else if self.has("DEVELOPER_TOKEN_INVALID") {
            "the provider's developer token is not valid: it sets the token shown in its manager account's API Center as developer_token".to_string()
        } else if self.has("DEVELOPER_TOKEN_NOT_APPROVED") {
            "the provider's developer token is approved for test accounts only: the provider applies for Basic or Standard access in its API Center".to_string()
        } else if self.has("DEVELOPER_TOKEN_PROHIBITED") {
            "the provider's developer token may not be used with its OAuth client's Google Cloud project: the provider uses the project its token is paired with".to_string()
        } else if self.has("LOGIN_CUSTOMER_ID_PARAMETER_MISSING") {
            "the provider has not set its manager account: it sets login_customer_id in the google-ads connection's settings".to_string()
        } else if self.has("USER_PERMISSION_DENIED") {
            format!(
                "Google Ads refused access to customer {} through the provider's manager account: the provider checks that login_customer_id is the manager (MCC) the business's account is linked to; a tenant admin checks the customer id and that the Google user who connected has access through that manager",
                account.customer_id
            )
        } else if self.has("CUSTOMER_NOT_ENABLED") || self.has("CUSTOMER_NOT_FOUND") {
            format!(
                "Google Ads customer {} is not an enabled account: a tenant admin checks the business's customer id",
                account.customer_id
            )
        } else if self.has("INVALID_CUSTOMER_ID") {
            format!(
                "Google Ads does not take customer id {}: a tenant admin checks the business's customer id",
                account.customer_id
            )
        } else if self.http == 401 {
            "Google refused the connection's token even after a refresh: a tenant admin connects Google Ads again".to_string()
        } else if self.http == 403 || status == "PERMISSION_DENIED" {
            "Google Ads refused access: the provider checks its developer token and manager account, a tenant admin the customer id and the Google user that connected".to_string()
        } else if self.http == 404 {
            format!(
                "Google Ads API version {} is not served (versions are retired about a year after release): set api_version in the plugin's config to a current one",
                account.version
            )
        } else {
            return AdsError::Failed(said);
        };
        AdsError::Failed(format!("{fix} ({said})"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account() -> Account {
        Account {
            customer_id: "1234567890".into(),
            version: "v26".into(),
        }
    }

    #[test]
    fn the_query_selects_filters_and_orders() {
        let q = query(
            &Filter::Since {
                at: "2026-12-01 08:00:00",
                strict: false,
            },
            50,
        )
        .unwrap();
        assert!(q.starts_with("SELECT local_services_lead.id, local_services_lead.resource_name,"));
        assert!(q.contains(" FROM local_services_lead WHERE local_services_lead.creation_date_time >= '2026-12-01 08:00:00' ORDER BY local_services_lead.creation_date_time, local_services_lead.id LIMIT 50"), "{q}");
        for field in FIELDS {
            assert!(q.contains(field), "{field}");
        }
        let q = query(
            &Filter::Since {
                at: "2026-12-01 08:00:00",
                strict: true,
            },
            1,
        )
        .unwrap();
        assert!(
            q.contains("creation_date_time > '2026-12-01 08:00:00'"),
            "{q}"
        );
        let q = query(
            &Filter::Within {
                at: "2026-12-01 08:00:00",
                after_id: "9001",
            },
            0,
        )
        .unwrap();
        assert!(q.ends_with("WHERE local_services_lead.creation_date_time = '2026-12-01 08:00:00' AND local_services_lead.id > 9001 ORDER BY local_services_lead.id LIMIT 1"), "{q}");
        let q = query(&Filter::Id("77"), 1).unwrap();
        assert!(
            q.contains("WHERE local_services_lead.id = 77 ORDER BY"),
            "{q}"
        );
    }

    #[test]
    fn nothing_unchecked_goes_into_a_query() {
        for at in [
            "2026-12-01' OR 1=1 --",
            "2026-13-01 00:00:00",
            "yesterday",
            "",
        ] {
            assert!(
                query(&Filter::Since { at, strict: false }, 5).is_err(),
                "{at}"
            );
        }
        assert!(query(&Filter::Id("1 OR 1=1"), 5).is_err());
        assert!(query(&Filter::Id(""), 5).is_err());
    }

    #[test]
    fn customer_ids_are_ten_digits() {
        assert_eq!(customer_id("123-456-7890").as_deref(), Some("1234567890"));
        assert_eq!(customer_id("1234567890").as_deref(), Some("1234567890"));
        assert_eq!(customer_id("123456789"), None);
        assert_eq!(customer_id("12345678901"), None);
        assert_eq!(customer_id("12345a7890"), None);
    }

    #[test]
    fn errors_are_summarized_from_the_first_google_ads_failure() {
        let body = json!({"error": {"code": 403, "message": "The caller does not have permission", "status": "PERMISSION_DENIED",
            "details": [{"@type": "type.googleapis.com/google.ads.googleads.v26.errors.GoogleAdsFailure",
                "errors": [{"errorCode": {"authorizationError": "USER_PERMISSION_DENIED"},
                    "message": "User doesn't have permission to access customer. Note: If you're accessing a client customer, the manager's customer id must be set in the 'login-customer-id' header."},
                    {"errorCode": {"authorizationError": "CUSTOMER_NOT_ENABLED"}, "message": "second"}],
                "requestId": "rq-81c2"}]}});
        let f = Failure::read(403, body.to_string().as_bytes());
        assert_eq!(f.status.as_deref(), Some("PERMISSION_DENIED"));
        assert_eq!(
            f.codes,
            [
                "authorizationError.USER_PERMISSION_DENIED",
                "authorizationError.CUSTOMER_NOT_ENABLED"
            ]
        );
        assert!(
            f.message
                .as_deref()
                .unwrap()
                .starts_with("User doesn't have permission")
        );
        assert_eq!(f.request_id.as_deref(), Some("rq-81c2"));
        let AdsError::Failed(m) = f.classify(&account()) else {
            panic!("a refusal");
        };
        assert!(m.contains("login_customer_id is the manager (MCC)"), "{m}");
        assert!(m.contains("customer 1234567890"), "{m}");
        assert!(m.contains("[request rq-81c2]"), "{m}");

        // Without details, the top-level message.
        let f = Failure::read(
            401,
            br#"{"error": {"code": 401, "message": "Request had invalid authentication credentials.", "status": "UNAUTHENTICATED"}}"#,
        );
        assert_eq!(
            f.summary(),
            "Google Ads answered 401 UNAUTHENTICATED: Request had invalid authentication credentials."
        );
        assert!(
            matches!(f.classify(&account()), AdsError::Failed(m) if m.contains("connects Google Ads again"))
        );
        // Not JSON at all.
        let f = Failure::read(502, b"<html>Bad Gateway</html>");
        assert_eq!(f.summary(), "Google Ads answered 502");
        assert!(matches!(f.classify(&account()), AdsError::Transient(_)));
    }

    #[test]
    fn throttling_and_setup_mistakes_are_told_apart() {
        let body = |status: &str, kind: &str, code: &str| {
            json!({"error": {"code": 400, "message": "x", "status": status, "details": [{"errors": [{"errorCode": {kind: code}, "message": "m"}]}]}})
                .to_string()
        };
        let f = Failure::read(
            429,
            body("RESOURCE_EXHAUSTED", "quotaError", "RESOURCE_EXHAUSTED").as_bytes(),
        );
        assert!(matches!(f.classify(&account()), AdsError::Throttled(_)));
        let f = Failure::read(
            400,
            body(
                "INVALID_ARGUMENT",
                "requestError",
                "DEVELOPER_TOKEN_PARAMETER_MISSING",
            )
            .as_bytes(),
        );
        assert!(
            matches!(f.classify(&account()), AdsError::Failed(m) if m.starts_with("the provider has not set the developer token"))
        );
        let f = Failure::read(
            403,
            body(
                "PERMISSION_DENIED",
                "authorizationError",
                "DEVELOPER_TOKEN_NOT_APPROVED",
            )
            .as_bytes(),
        );
        assert!(
            matches!(f.classify(&account()), AdsError::Failed(m) if m.contains("Basic or Standard access"))
        );
        let f = Failure::read(
            400,
            body("INVALID_ARGUMENT", "queryError", "UNEXPECTED_END_OF_QUERY").as_bytes(),
        );
        assert!(
            matches!(f.classify(&account()), AdsError::Failed(m) if m == "Google Ads answered 400 INVALID_ARGUMENT (queryError.UNEXPECTED_END_OF_QUERY): m")
        );
        let f = Failure::read(404, b"");
        assert!(matches!(f.classify(&account()), AdsError::Failed(m) if m.contains("api_version")));
        let f = Failure::read(
            500,
            body("INTERNAL", "internalError", "INTERNAL_ERROR").as_bytes(),
        );
        assert!(matches!(f.classify(&account()), AdsError::Transient(_)));
    }
}
