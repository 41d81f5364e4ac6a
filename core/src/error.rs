//! The kernel's own errors, spoken by its services whatever called them: an HTTP handler
//! (`api` maps them to statuses and JSON bodies), the dispatcher (which retries what
//! [`RecordError::is_transient`] says may pass) or a plugin (the capability services map
//! them to `host-error`s). Nothing here knows about HTTP.

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

/// One sentence for a list of field errors: the one error's place and message, or how many.
pub fn summarize(errors: &[FieldError]) -> String {
    match errors {
        [one] if one.path.is_empty() => format!("invalid request: {}", one.message),
        [one] => format!("invalid value at {}: {}", one.path, one.message),
        many => format!("{} fields are invalid", many.len()),
    }
}

/// One problem found in a template, located by a path such as `pipelines[1].stages[2]`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Problem {
    pub at: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.at.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.at, self.message)
        }
    }
}

/// Why a record may not enter a stage.
#[derive(Debug, Clone, PartialEq)]
pub enum StageRefusal {
    UnknownStage { allowed: Vec<String> },
    NotAllowed { from: String, allowed: Vec<String> },
    Retired,
    MissingFields(Vec<String>),
}

impl StageRefusal {
    /// The sentence for people, naming the missing fields or the stages one may move to.
    pub fn message(&self, stage: &str) -> String {
        match self {
            StageRefusal::UnknownStage { allowed } => format!(
                "{stage:?} is not a stage of this pipeline; stages: {}",
                allowed.join(", ")
            ),
            StageRefusal::NotAllowed { from, allowed } if allowed.is_empty() => {
                format!("a record in {from:?} cannot move to another stage")
            }
            StageRefusal::NotAllowed { from, allowed } => format!(
                "a record in {from:?} can move to {}, not to {stage:?}",
                allowed.join(", ")
            ),
            StageRefusal::Retired => {
                format!("{stage:?} is retired: records can leave it but not enter it")
            }
            StageRefusal::MissingFields(fields) => {
                format!("a record in {stage:?} needs {}", fields.join(", "))
            }
        }
    }

    /// Each offending field: the missing ones under `/data`, or the stage itself.
    pub fn field_errors(&self, stage: &str) -> Vec<FieldError> {
        match self {
            StageRefusal::MissingFields(fields) => fields
                .iter()
                .map(|f| {
                    FieldError::new(
                        format!("/data/{f}"),
                        format!("is required in stage {stage:?}"),
                    )
                })
                .collect(),
            _ => vec![FieldError::new("/stage", self.message(stage))],
        }
    }

    /// The structured details of the refusal: the stages allowed, the missing fields, the
    /// stage asked for and each field error.
    pub fn details(&self, stage: &str) -> Value {
        let mut details = match self {
            StageRefusal::UnknownStage { allowed } => json!({ "allowed": allowed }),
            StageRefusal::NotAllowed { from, allowed } => {
                json!({ "from": from, "allowed": allowed })
            }
            StageRefusal::Retired => json!({}),
            StageRefusal::MissingFields(fields) => json!({ "missing_fields": fields }),
        };
        details["errors"] = json!(self.field_errors(stage));
        details["stage"] = json!(stage);
        details
    }
}

/// Why a record could not be written (or read for a write).
#[derive(Debug)]
pub enum RecordError {
    /// The tenant has no such record type (or the name cannot be one).
    UnknownType(String),
    /// The data, stage or request does not pass the checks; each field with its path.
    Invalid(Vec<FieldError>),
    /// The data is larger than records may be.
    TooLarge {
        size: usize,
        limit: usize,
    },
    /// The pipeline refuses the record in `stage`.
    StageRefused {
        stage: String,
        refusal: StageRefusal,
    },
    /// The tenant's pipelines changed while the write was checked: send it again.
    TemplateChanged,
    /// The record is at another version than the one the write was made against.
    VersionConflict {
        current: i64,
    },
    NotFound,
    /// An idempotent create found its id taken by a record of another type.
    IdTaken {
        record_type: String,
    },
    /// A keyed create found a record already stored under its key (created by another
    /// call).
    KeyTaken,
    /// The database failed or is unavailable.
    Store(StoreError),
    /// Something the kernel holds is broken (a stored schema that no longer compiles, a
    /// validation that crashed); logged where it happened.
    Internal(&'static str),
}

pub type RecordResult<T> = Result<T, RecordError>;

impl RecordError {
    pub fn field(path: &str, message: impl Into<String>) -> Self {
        RecordError::Invalid(vec![FieldError::new(path, message)])
    }

    /// Whether the same write may succeed later unchanged: the database may come back, the
    /// tenant's template may settle. A refused write will be refused again.
    pub fn is_transient(&self) -> bool {
        match self {
            RecordError::Store(e) => !matches!(e, StoreError::Corrupt(_)),
            RecordError::TemplateChanged | RecordError::Internal(_) => true,
            RecordError::UnknownType(_)
            | RecordError::Invalid(_)
            | RecordError::TooLarge { .. }
            | RecordError::StageRefused { .. }
            | RecordError::VersionConflict { .. }
            | RecordError::NotFound
            | RecordError::IdTaken { .. }
            | RecordError::KeyTaken => false,
        }
    }

    /// The field errors a refused write carries (none for the other kinds).
    pub fn field_errors(&self) -> Vec<FieldError> {
        match self {
            RecordError::Invalid(errors) => errors.clone(),
            RecordError::StageRefused { stage, refusal } => refusal.field_errors(stage),
            RecordError::TooLarge { size, limit } => vec![FieldError::new(
                "/data",
                format!("is {size} bytes as JSON; records may hold at most {limit}"),
            )],
            _ => Vec::new(),
        }
    }

    /// One line for a run log or a plugin: what was wrong and, for a refused write, each
    /// field with its path.
    pub fn describe(&self) -> String {
        match self {
            RecordError::Invalid(errors) => {
                format!("{} {}", summarize(errors), json!(errors))
            }
            RecordError::StageRefused { stage, refusal } => format!(
                "{} {}",
                refusal.message(stage),
                json!(refusal.field_errors(stage))
            ),
            other => other.to_string(),
        }
    }
}

impl std::fmt::Display for RecordError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecordError::UnknownType(t) => write!(f, "this tenant has no record type {t:?}"),
            RecordError::Invalid(errors) => write!(f, "{}", summarize(errors)),
            RecordError::TooLarge { size, limit } => write!(
                f,
                "the record's data is {size} bytes as JSON; records may hold at most {limit}"
            ),
            RecordError::StageRefused { stage, refusal } => {
                write!(f, "{}", refusal.message(stage))
            }
            RecordError::TemplateChanged => write!(
                f,
                "the tenant's pipelines changed while this change was checked; send it again"
            ),
            RecordError::VersionConflict { current } => write!(
                f,
                "the record changed since it was read (it is at version {current}); read it again"
            ),
            RecordError::NotFound => write!(f, "record not found"),
            RecordError::IdTaken { record_type } => write!(
                f,
                "a repeated run of this delivery created a {record_type} here before"
            ),
            RecordError::KeyTaken => write!(f, "a record exists under this key"),
            RecordError::Store(e) => write!(f, "storage: {e}"),
            RecordError::Internal(what) => write!(f, "internal error: {what}"),
        }
    }
}

impl From<StoreError> for RecordError {
    fn from(e: StoreError) -> Self {
        RecordError::Store(e)
    }
}

impl From<Vec<FieldError>> for RecordError {
    fn from(errors: Vec<FieldError>) -> Self {
        RecordError::Invalid(errors)
    }
}

/// Why a plugin installation could not be made or changed.
#[derive(Debug)]
pub enum InstallError {
    /// The request names no approved version of the plugin.
    NoApprovedVersion,
    /// A field of the request (version requirement, grants, configuration) is wrong.
    Invalid(Vec<FieldError>),
    /// Only one scorer per tenant; `installed` scores its leads already.
    ScorerInstalled {
        installed: String,
    },
    /// The configuration that would be kept does not fit the new version's schema.
    ConfigDoesNotFit {
        version: String,
        errors: Vec<FieldError>,
    },
    NotInstalled,
    Store(StoreError),
    /// Sealed secrets that do not open, a stored manifest that does not parse; logged.
    Internal(&'static str),
}

impl From<StoreError> for InstallError {
    fn from(e: StoreError) -> Self {
        InstallError::Store(e)
    }
}

/// Why a template could not be applied to a tenant.
#[derive(Debug)]
pub enum ApplyError {
    /// The tenant uses another template: a tenant cannot switch.
    OtherTemplate {
        current: String,
    },
    /// The tenant has a newer version: templates only move forward.
    Downgrade {
        current: String,
    },
    /// Another application finished first.
    Raced,
    /// The merged template, its plugins or their configs have problems; nothing was changed.
    Problems(Vec<Problem>),
    Store(StoreError),
    Internal(&'static str),
}

impl From<StoreError> for ApplyError {
    fn from(e: StoreError) -> Self {
        ApplyError::Store(e)
    }
}

impl std::fmt::Display for ApplyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApplyError::OtherTemplate { current } => {
                write!(f, "the tenant uses the {current} template")
            }
            ApplyError::Downgrade { current } => write!(f, "the tenant has {current} already"),
            ApplyError::Raced => write!(f, "another application finished first"),
            ApplyError::Problems(problems) => {
                let all: Vec<String> = problems.iter().map(Problem::to_string).collect();
                write!(f, "{}", all.join("; "))
            }
            ApplyError::Store(e) => write!(f, "storage: {e}"),
            ApplyError::Internal(what) => write!(f, "internal error: {what}"),
        }
    }
}
