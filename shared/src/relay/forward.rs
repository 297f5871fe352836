//! DataHub Cloud feed: DataHub's queue of the pool → reference messages on ours.
//!
//! GraphQL `listExecutorConfigs` gives the pool's queue URL, region and temporary credentials
//! (`reference/datahub-executor.md` §2.1; read on every run, so the credentials are always fresh).
//! Messages are received in rounds of 10 with a short visibility timeout, parsed from the Celery
//! headers only (the pickled body is never touched), and:
//!
//! * an `ingestion_request` (or any message naming an execution request) is sent to our queue as
//!   `{"executionRequestUrn": ...}` (`SendMessageBatch`), and deleted from DataHub's queue only
//!   when our queue accepted it (`DeleteMessageBatch` of just those);
//! * another Celery task (`assertion_request`, `monitor_training_request`) is deleted with an INFO
//!   line: this executor does not run them and nothing else reads this queue when the relay does;
//!   leaving them would have them come back on every run forever. The admission does the same;
//! * an unreadable message is deleted with an ERROR line (it can never succeed); nothing is
//!   forwarded for it.
//!
//! A failure in between loses nothing: a message whose send failed is not deleted and comes back
//! after the visibility timeout. A message sent but not deleted (the delete failed, the run died)
//! comes back and is forwarded again; the admission's duplicate check (a RUNNING or final result,
//! or a live job, and the launcher's idempotency token) drops the second reference.

use super::ports::{OutgoingMessage, SourceQueue};
use super::{Relay, Summary};
use crate::error::RelayError;
use crate::message::{self, Incoming, reference_body};

/// SQS receives at most 10 messages a call.
const RECEIVE_BATCH: i32 = 10;

/// What to do with one message of DataHub's queue.
#[derive(Debug, Clone, PartialEq)]
pub enum Route {
    /// Forward a reference to this execution request.
    Forward { exec_id: String },
    /// Delete without forwarding, for this reason.
    Consume { reason: String, garbage: bool },
}

/// Decides from the message body alone.
pub fn route(body: &str) -> Route {
    match message::parse(body) {
        Ok(Incoming::Fetch { exec_id, .. }) | Ok(Incoming::Inline { exec_id, .. }) => Route::Forward { exec_id },
        Ok(Incoming::Ignore { reason }) => Route::Consume { reason, garbage: false },
        Err(g) => Route::Consume { reason: g.reason, garbage: true },
    }
}

pub(super) async fn forward(relay: &Relay<'_>, summary: &mut Summary) -> Vec<RelayError> {
    let cfg = relay.config;
    let mut errors = Vec::new();
    let (Some(outbox), Some(sources)) = (relay.outbox, relay.sources) else {
        return errors;
    };
    let configs = match relay.gms.executor_configs().await {
        Ok(c) => c,
        Err(source) => {
            errors.push(RelayError::Gms { part: "forward", source });
            return errors;
        }
    };
    let Some(config) = configs.iter().find(|c| c.executor_id == cfg.pool) else {
        errors.push(RelayError::NoExecutorConfig { pool: cfg.pool.clone() });
        return errors;
    };
    let source: Box<dyn SourceQueue> = sources.open(config);
    let mut received = 0usize;
    // A message that came back within this run (not deleted, visibility over) is not handled twice.
    let mut seen = std::collections::BTreeSet::new();
    while received < cfg.limits.max_forward {
        let messages = match source.receive(RECEIVE_BATCH).await {
            Ok(m) => m,
            Err(source) => {
                errors.push(RelayError::Aws { part: "forward", source });
                break;
            }
        };
        let messages: Vec<_> = messages.into_iter().filter(|m| seen.insert(m.message_id.clone())).collect();
        if messages.is_empty() {
            break;
        }
        received += messages.len();
        let mut to_send = Vec::new();
        let mut to_delete = Vec::new();
        for (i, m) in messages.iter().enumerate() {
            match route(&m.body) {
                Route::Forward { exec_id } => {
                    to_send.push((OutgoingMessage { id: format!("m{i}"), body: reference_body(&exec_id) }, i, exec_id));
                }
                Route::Consume { reason, garbage } => {
                    if garbage {
                        tracing::error!(message_id = %m.message_id, reason, "DataHub's queue held an unreadable message: deleted, not forwarded");
                    } else {
                        tracing::info!(message_id = %m.message_id, reason, "not an ingestion request: deleted, not forwarded");
                    }
                    summary.consumed += 1;
                    to_delete.push((m.message_id.clone(), m.receipt_handle.clone()));
                }
            }
        }
        let mut stop = false;
        if !to_send.is_empty() {
            let batch: Vec<OutgoingMessage> = to_send.iter().map(|(o, _, _)| o.clone()).collect();
            match outbox.send_batch(&batch).await {
                Ok(outcome) => {
                    for (o, i, exec_id) in &to_send {
                        let m = &messages[*i];
                        if outcome.ok.contains(&o.id) {
                            summary.forwarded += 1;
                            tracing::info!(exec_id = %exec_id, message_id = %m.message_id, "forwarded from DataHub's queue");
                            to_delete.push((m.message_id.clone(), m.receipt_handle.clone()));
                        } else {
                            stop = true;
                            errors.push(RelayError::Aws { part: "forward", source: outcome.failure(&o.id, exec_id) });
                        }
                    }
                }
                Err(source) => {
                    stop = true;
                    errors.push(RelayError::Aws { part: "forward", source });
                }
            }
        }
        if !to_delete.is_empty() {
            match source.delete_batch(&to_delete).await {
                Ok(outcome) => {
                    stop |= !outcome.failed.is_empty();
                    for (id, reason) in &outcome.failed {
                        tracing::warn!(message_id = %id, reason, "could not delete from DataHub's queue; it comes back and is forwarded again (the admission drops the duplicate)");
                    }
                }
                Err(e) => {
                    stop = true;
                    tracing::warn!(error = %e, "could not delete from DataHub's queue; the messages come back and are forwarded again (the admission drops the duplicates)")
                }
            }
        }
        if stop {
            // Our queue is not taking messages, or DataHub's does not delete: stop receiving; the
            // rest waits in DataHub's queue for the next run.
            break;
        }
    }
    if received >= cfg.limits.max_forward {
        let note = format!("forward: stopped after {received} messages; the rest is forwarded by the next run");
        tracing::warn!("{note}");
        summary.capped.push(note);
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use serde_json::json;

    fn celery(task: &str, id: &str) -> String {
        let envelope = json!({"body": "gASV", "headers": {"task": task, "id": id}, "content-type": "application/x-python-serialize"});
        base64::engine::general_purpose::STANDARD.encode(envelope.to_string())
    }

    #[test]
    fn routes_by_the_celery_headers_only() {
        assert_eq!(
            route(&celery(
                "datahub_executor.worker.celery_sqs.app.ingestion_request",
                "urn:li:dataHubExecutionRequest:e1"
            )),
            Route::Forward { exec_id: "e1".into() }
        );
        assert!(matches!(
            route(&celery("datahub_executor.worker.celery_sqs.app.assertion_request", "urn:li:assertion:a")),
            Route::Consume { garbage: false, .. }
        ));
        assert!(matches!(route("garbage"), Route::Consume { garbage: true, .. }));
        assert_eq!(route(&reference_body("e2")), Route::Forward { exec_id: "e2".into() });
    }
}
