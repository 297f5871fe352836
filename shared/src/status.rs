//! DataHub's execution status, in DataHub's own wire format (`reference/peer-executor.md` §2.2–§2.3,
//! §2.7): an `ingestProposal` UPSERT of the `dataHubExecutionRequestResult` aspect, keyed by the
//! `dataHubExecutionRequestKey` aspect, serialised as Python's `json.dumps` does.

use serde_json::{Value, json};

use crate::pyfmt::json_dumps;

/// The `client*` properties this executor writes into `systemMetadata.properties`. DataHub's
/// executor writes `acryl-datahub` and its version; we name ourselves so GMS logs tell who wrote.
pub const CLIENT_ID: &str = "datahub-executor-rs";
pub const CLIENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Status values of `ExecutionRequestResult.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Running,
    Success,
    Failure,
    Cancelled,
    Timeout,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Running => "RUNNING",
            Status::Success => "SUCCESS",
            Status::Failure => "FAILURE",
            Status::Cancelled => "CANCELLED",
            Status::Timeout => "TIMEOUT",
        }
    }

    pub fn is_terminal(self) -> bool {
        self != Status::Running
    }
}

/// `ExecutionRequestResult.structuredReport`.
#[derive(Debug, Clone, PartialEq)]
pub struct StructuredReport {
    /// The task name (`RUN_INGEST`, `TEST_CONNECTION`), as DataHub writes it.
    pub kind: String,
    /// The report file's masked content, verbatim.
    pub serialized_value: String,
}

/// One `dataHubExecutionRequestResult` value.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecutionResult {
    pub status: Status,
    pub report: Option<String>,
    pub structured_report: Option<StructuredReport>,
    pub start_time_ms: i64,
    pub duration_ms: Option<i64>,
}

impl ExecutionResult {
    /// The aspect value as DataHub orders its fields.
    pub fn to_value(&self) -> Value {
        let mut m = serde_json::Map::new();
        m.insert("status".into(), json!(self.status.as_str()));
        if let Some(r) = &self.report {
            m.insert("report".into(), json!(r));
        }
        if let Some(sr) = &self.structured_report {
            m.insert(
                "structuredReport".into(),
                json!({"type": sr.kind, "serializedValue": sr.serialized_value, "contentType": "application/json"}),
            );
        }
        m.insert("startTimeMs".into(), json!(self.start_time_ms));
        if let Some(d) = self.duration_ms {
            m.insert("durationMs".into(), json!(d));
        }
        Value::Object(m)
    }
}

/// The `systemMetadata` DataHub's executor attaches to its writes.
pub fn system_metadata(last_observed_ms: i64) -> Value {
    json!({
        "lastObserved": last_observed_ms,
        "runId": "no-run-id-provided",
        "lastRunId": "no-run-id-provided",
        "properties": {"appSource": "reportingExecutor", "clientId": CLIENT_ID, "clientVersion": CLIENT_VERSION}
    })
}

/// An UPSERT proposal of one aspect of an execution request, keyed by its key aspect (no
/// `entityUrn`, as DataHub's executor sends it).
pub fn execution_request_proposal(exec_id: &str, aspect_name: &str, aspect_value: &Value, now_ms: i64) -> Value {
    json!({
        "entityType": "dataHubExecutionRequest",
        "entityKeyAspect": {"value": json_dumps(&json!({"id": exec_id})), "contentType": "application/json"},
        "changeType": "UPSERT",
        "aspectName": aspect_name,
        "aspect": {"value": json_dumps(aspect_value), "contentType": "application/json"},
        "systemMetadata": system_metadata(now_ms),
    })
}

/// The HTTP body of `POST /aspects?action=ingestProposal` for a proposal.
pub fn ingest_proposal_body(proposal: &Value) -> String {
    json_dumps(&json!({"proposal": proposal, "async": "false"}))
}

/// The body that writes a result.
pub fn result_body(exec_id: &str, result: &ExecutionResult, now_ms: i64) -> String {
    ingest_proposal_body(&execution_request_proposal(
        exec_id,
        "dataHubExecutionRequestResult",
        &result.to_value(),
        now_ms,
    ))
}
