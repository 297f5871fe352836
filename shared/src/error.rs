//! Error types of the library. Each names what is wrong and carries the ids needed to act on it;
//! none carries a secret value.

use thiserror::Error;

/// A request whose fields cannot be used.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum RequestError {
    #[error("the execution request has no {0}")]
    Missing(&'static str),
    #[error("the execution request's {field} {reason}")]
    Bad { field: &'static str, reason: String },
    #[error("unknown task {0:?}: this executor runs RUN_INGEST and TEST_CONNECTION")]
    UnknownTask(String),
}

impl RequestError {
    pub(crate) fn bad(field: &'static str, reason: impl Into<String>) -> Self {
        RequestError::Bad { field, reason: reason.into() }
    }
}

/// A recipe that cannot be run.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum RecipeError {
    #[error("the recipe is not valid YAML or JSON: {0}")]
    Parse(String),
    #[error("the recipe must be a map with a `source` section")]
    NotAMap,
    #[error("the recipe has no `source.type`")]
    MissingSourceType,
    #[error("bad variable reference in the recipe at {path}: {reason}")]
    BadReference { path: String, reason: String },
    #[error("the recipe references secrets that no store holds: {}", .0.join(", "))]
    Unresolved(Vec<String>),
}

/// A secret store that failed. Names the store and the secret names, never a value.
#[derive(Debug, Error, Clone, PartialEq)]
#[error("secret store `{store}` failed while reading {}: {reason}", .names.join(", "))]
pub struct SecretStoreError {
    pub store: &'static str,
    pub names: Vec<String>,
    pub reason: String,
}

/// A configuration variable with a value that cannot be used.
#[derive(Debug, Error, Clone, PartialEq)]
#[error("invalid configuration {var}: {reason}")]
pub struct ConfigError {
    pub var: &'static str,
    pub reason: String,
}

impl ConfigError {
    pub(crate) fn new(var: &'static str, reason: impl Into<String>) -> Self {
        ConfigError { var, reason: reason.into() }
    }
}

/// A failed call to GMS.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum GmsError {
    #[error("GMS answered HTTP {status} to {what}: {body}")]
    Http { what: &'static str, status: u16, body: String },
    #[error("GMS could not be reached for {what}: {reason}")]
    Transport { what: &'static str, reason: String },
    #[error("GMS sent an answer to {what} that cannot be read: {reason}")]
    Decode { what: &'static str, reason: String },
    #[error("GMS has no {what} for {urn}")]
    NotFound { what: &'static str, urn: String },
}

impl GmsError {
    /// Whether retrying the same call later can succeed (5xx, 408, 429, connection errors).
    pub fn is_transient(&self) -> bool {
        match self {
            GmsError::Http { status, .. } => *status >= 500 || *status == 408 || *status == 429,
            GmsError::Transport { .. } => true,
            GmsError::Decode { .. } | GmsError::NotFound { .. } => false,
        }
    }

    /// Whether GMS refused the payload for its size.
    pub fn is_too_large(&self) -> bool {
        matches!(self, GmsError::Http { status: 413, .. })
    }
}

/// A venv that could not be prepared.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum VenvError {
    #[error("venv setup failed: {reason}\n{output_tail}")]
    Setup { reason: String, output_tail: String },
    #[error("venv setup failed: {0}")]
    Invalid(String),
}

/// A failed call to an AWS service (SQS, DynamoDB) made by the relay. Names the resource (queue
/// URL, table, execution id), never a message body.
#[derive(Debug, Error, Clone, PartialEq)]
#[error("{service} {operation} on {resource} failed: {reason}")]
pub struct AwsError {
    pub service: &'static str,
    pub operation: &'static str,
    pub resource: String,
    pub reason: String,
    /// Throttling, 5xx, time-outs, connection errors: worth retrying on the next run.
    pub transient: bool,
}

/// Something one part of a relay run could not do. The run goes on with its other parts.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum RelayError {
    #[error("{part}: {source}")]
    Gms { part: &'static str, source: GmsError },
    #[error("{part}: {source}")]
    Aws { part: &'static str, source: AwsError },
    #[error("{part}: {source}")]
    Launcher { part: &'static str, source: crate::launcher::LaunchError },
    #[error("datahub-cloud: GMS listExecutorConfigs has no READY executor config for pool {pool:?}")]
    NoExecutorConfig { pool: String },
}

impl RelayError {
    /// Whether the work left undone can succeed on a retry (the invocation then fails, so the
    /// schedule's retry and the function's error metric show it).
    pub fn is_transient(&self) -> bool {
        match self {
            RelayError::Gms { source, .. } => source.is_transient(),
            RelayError::Aws { source, .. } => source.transient,
            RelayError::Launcher { source, .. } => source.is_transient(),
            // DataHub's worker retries this too: the pool may still be provisioning.
            RelayError::NoExecutorConfig { .. } => true,
        }
    }
}
