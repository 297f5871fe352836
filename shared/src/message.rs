//! The SQS messages the admission accepts (DESIGN.md §1), one record each:
//!
//! - **Reference JSON** `{"executionRequestUrn": "urn:li:dataHubExecutionRequest:<id>"}`: what the
//!   relay and people with `aws sqs send-message` send.
//! - **MetadataChangeLog JSON** of entity `dataHubExecutionRequest`, aspect
//!   `dataHubExecutionRequestInput` (Kafka / Events API shape; `aspect.value` is JSON text).
//! - **DataHub Cloud task**: base64 of a Celery (kombu) JSON envelope. Only `headers.task` and
//!   `headers.id` are read; the body is a pickle and is **never** unpickled
//!   (`reference/datahub-executor.md` §2.2).
//!
//! Anything else is garbage: it can never succeed, so it is not retried.

use base64::Engine;
use serde_json::Value;

use crate::request::{EXECUTION_REQUEST_URN_PREFIX, exec_id_from_urn};

/// Which format a message came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Reference,
    Mcl,
    Celery,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Reference => "reference",
            Format::Mcl => "metadata-change-log",
            Format::Celery => "celery",
        }
    }
}

/// What a message asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// Run this request; its input must be read from GMS.
    Fetch { exec_id: String, format: Format },
    /// Run this request; its `dataHubExecutionRequestInput` came with the message.
    Inline { exec_id: String, input: Value },
    /// Not a run request (another Celery task, a signal, a non-UPSERT change): consume it.
    Ignore { reason: String },
}

/// A message that can never be admitted, with the reason.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("unreadable message: {reason}")]
pub struct Garbage {
    pub reason: String,
    /// The execution id, when one could be read despite the problem (so FAILURE can be reported).
    pub exec_id: Option<String>,
}

fn garbage(reason: impl Into<String>) -> Garbage {
    Garbage { reason: reason.into(), exec_id: None }
}

/// The reference message for `exec_id`: `{"executionRequestUrn": "urn:li:dataHubExecutionRequest:<id>"}`
/// (what the relay enqueues; [`parse`] reads it back as [`Format::Reference`]).
pub fn reference_body(exec_id: &str) -> String {
    serde_json::json!({"executionRequestUrn": format!("{EXECUTION_REQUEST_URN_PREFIX}{exec_id}")}).to_string()
}

/// Reads one SQS message body.
pub fn parse(body: &str) -> Result<Incoming, Garbage> {
    let trimmed = body.trim();
    if trimmed.is_empty() {
        return Err(garbage("the message body is empty"));
    }
    if trimmed.starts_with('{') {
        let v: Value =
            serde_json::from_str(trimmed).map_err(|e| garbage(format!("the body is not valid JSON: {e}")))?;
        return parse_json(&v);
    }
    // kombu's SQS transport base64-encodes the Celery envelope.
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(trimmed)
        .map_err(|_| garbage("the body is neither JSON nor base64 of a Celery envelope"))?;
    let v: Value = serde_json::from_slice(&decoded)
        .map_err(|e| garbage(format!("the base64 body does not hold a JSON Celery envelope: {e}")))?;
    if v.get("headers").is_none() {
        return Err(garbage("the base64 body is JSON but has no Celery `headers`"));
    }
    parse_celery(&v)
}

fn parse_json(v: &Value) -> Result<Incoming, Garbage> {
    if let Some(urn) = v.get("executionRequestUrn") {
        let urn = urn.as_str().ok_or_else(|| garbage("`executionRequestUrn` is not a string"))?;
        if !urn.starts_with(EXECUTION_REQUEST_URN_PREFIX) {
            return Err(garbage(format!("`executionRequestUrn` {urn:?} is not a urn:li:dataHubExecutionRequest URN")));
        }
        let exec_id = exec_id_from_urn(urn).map_err(|e| garbage(e.to_string()))?;
        return Ok(Incoming::Fetch { exec_id, format: Format::Reference });
    }
    if v.get("headers").and_then(|h| h.get("task")).is_some() {
        return parse_celery(v);
    }
    if v.get("entityType").is_some() || v.get("aspectName").is_some() {
        return parse_mcl(v);
    }
    Err(garbage(
        "the JSON is none of the accepted formats (reference {\"executionRequestUrn\": ...}, MetadataChangeLog, Celery envelope)",
    ))
}

fn parse_celery(v: &Value) -> Result<Incoming, Garbage> {
    let headers = v.get("headers").ok_or_else(|| garbage("the Celery envelope has no headers"))?;
    let task = headers
        .get("task")
        .and_then(Value::as_str)
        .ok_or_else(|| garbage("the Celery envelope has no headers.task"))?;
    if !task.ends_with("ingestion_request") {
        return Ok(Incoming::Ignore {
            reason: format!("Celery task {task} is not an ingestion request (out of scope)"),
        });
    }
    let id = headers
        .get("id")
        .and_then(Value::as_str)
        .ok_or_else(|| garbage("the Celery ingestion request has no headers.id"))?;
    let exec_id = exec_id_from_urn(id).map_err(|e| garbage(format!("headers.id: {e}")))?;
    Ok(Incoming::Fetch { exec_id, format: Format::Celery })
}

fn parse_mcl(v: &Value) -> Result<Incoming, Garbage> {
    let entity = v.get("entityType").and_then(Value::as_str).unwrap_or("");
    if entity != "dataHubExecutionRequest" {
        return Ok(Incoming::Ignore {
            reason: format!("MetadataChangeLog for entity {entity:?}, not dataHubExecutionRequest"),
        });
    }
    // The key aspect's id first, then the URN's last part (`reference/peer-executor.md` §1.2).
    let exec_id = v
        .get("entityKeyAspect")
        .and_then(|k| k.get("value"))
        .and_then(json_value)
        .and_then(|k| k.get("id").and_then(Value::as_str).map(str::to_owned))
        .or_else(|| v.get("entityUrn").and_then(Value::as_str).and_then(|u| exec_id_from_urn(u).ok()));
    let change = v.get("changeType").and_then(Value::as_str).unwrap_or("");
    let aspect = v.get("aspectName").and_then(Value::as_str).unwrap_or("");
    match aspect {
        "dataHubExecutionRequestInput" => {}
        "EXECUTOR_SQS_TRUNCATED" => {
            let exec_id = exec_id.ok_or_else(|| garbage("a truncated MetadataChangeLog without entityUrn or key"))?;
            return Ok(Incoming::Fetch { exec_id, format: Format::Mcl });
        }
        other => {
            return Ok(Incoming::Ignore {
                reason: format!("MetadataChangeLog of aspect {other:?} (only dataHubExecutionRequestInput runs)"),
            });
        }
    }
    if change != "UPSERT" {
        return Ok(Incoming::Ignore {
            reason: format!("MetadataChangeLog with changeType {change:?} (only UPSERT runs)"),
        });
    }
    let exec_id =
        exec_id.ok_or_else(|| garbage("the MetadataChangeLog has neither entityKeyAspect.id nor entityUrn"))?;
    let input = v.get("aspect").and_then(|a| a.get("value")).and_then(json_value).ok_or_else(|| Garbage {
        reason: "the MetadataChangeLog's aspect.value is missing or not JSON".into(),
        exec_id: Some(exec_id.clone()),
    })?;
    Ok(Incoming::Inline { exec_id, input })
}

/// An aspect value: JSON text (as GMS writes it) or an object.
fn json_value(v: &Value) -> Option<Value> {
    match v {
        Value::String(s) => serde_json::from_str(s).ok(),
        Value::Object(_) => Some(v.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn celery(task: &str, id: &str) -> String {
        let envelope = json!({
            "body": "gASVxwAAAAAAAAB9lIwEYXJncxSTlC4=",
            "content-encoding": "binary",
            "content-type": "application/x-python-serialize",
            "headers": {"lang": "py", "task": task, "id": id, "root_id": id, "retries": 0},
            "properties": {"correlation_id": id, "body_encoding": "base64", "delivery_info": {"routing_key": "remote.ingestion_request"}}
        });
        base64::engine::general_purpose::STANDARD.encode(envelope.to_string())
    }

    #[test]
    fn reference_messages() {
        assert_eq!(
            parse(r#"{"executionRequestUrn": "urn:li:dataHubExecutionRequest:abc"}"#),
            Ok(Incoming::Fetch { exec_id: "abc".into(), format: Format::Reference })
        );
        assert!(parse(r#"{"executionRequestUrn": "urn:li:dataset:x"}"#).is_err());
    }

    #[test]
    fn reference_bodies_round_trip() {
        assert_eq!(
            parse(&reference_body("r-1")),
            Ok(Incoming::Fetch { exec_id: "r-1".into(), format: Format::Reference })
        );
    }

    #[test]
    fn celery_envelopes_are_read_from_headers_only() {
        let ok = parse(&celery(
            "datahub_executor.worker.celery_sqs.app.ingestion_request",
            "urn:li:dataHubExecutionRequest:c1",
        ));
        assert_eq!(ok, Ok(Incoming::Fetch { exec_id: "c1".into(), format: Format::Celery }));
        let other = parse(&celery("datahub_executor.worker.celery_sqs.app.assertion_request", "urn:li:assertion:1"));
        assert!(matches!(other, Ok(Incoming::Ignore { reason }) if reason.contains("assertion_request")));
    }

    #[test]
    fn mcl_messages() {
        let input = json!({"task": "RUN_INGEST", "args": {"recipe": "{}"}, "executorId": "remote"});
        let mcl = json!({
            "entityType": "dataHubExecutionRequest",
            "entityUrn": "urn:li:dataHubExecutionRequest:from-urn",
            "entityKeyAspect": {"value": "{\"id\": \"m1\"}", "contentType": "application/json"},
            "changeType": "UPSERT",
            "aspectName": "dataHubExecutionRequestInput",
            "aspect": {"value": input.to_string(), "contentType": "application/json"}
        });
        assert_eq!(parse(&mcl.to_string()), Ok(Incoming::Inline { exec_id: "m1".into(), input: input.clone() }));
        let mut signal = mcl.clone();
        signal["aspectName"] = json!("dataHubExecutionRequestSignal");
        assert!(matches!(parse(&signal.to_string()), Ok(Incoming::Ignore { .. })));
        let mut restate = mcl.clone();
        restate["changeType"] = json!("RESTATE");
        assert!(matches!(parse(&restate.to_string()), Ok(Incoming::Ignore { .. })));
        let mut broken = mcl;
        broken["aspect"]["value"] = json!("{not json");
        let g = parse(&broken.to_string()).expect_err("garbage");
        assert_eq!(g.exec_id.as_deref(), Some("m1"), "identifiable garbage can be reported");
    }

    #[test]
    fn garbage_says_why() {
        for body in ["", "hello", "{\"x\": 1}", "{not json", "aGVsbG8="] {
            let g = parse(body).expect_err(body);
            assert!(!g.reason.is_empty());
        }
    }
}
