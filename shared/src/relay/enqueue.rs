//! Self-hosted feed: one reference message on the pool's queue per pending request, once.
//!
//! **Exactly once across overlapping runs** (the schedule can start a run before the previous one
//! ended, and Lambda retries a failed one): a [`Ledger`] entry per execution id, taken with an
//! atomic conditional put *before* sending (DynamoDB `attribute_not_exists(executionRequestId) OR
//! expiresAt < :now`), so of several runs that see the same pending request exactly one wins and
//! sends. Then:
//!
//! * send succeeded → the entry becomes `sent` and holds for `resend_after` (1 h);
//! * send failed → the claim is released at once and the next run sends it;
//! * the run crashed between claim and send → the claim expires after `claim_lease` (120 s) and
//!   the next run takes it over.
//!
//! Nothing is lost: a request is only ever skipped while a live claim or a recent `sent` entry
//! exists, and a request still pending after `resend_after` is enqueued again (its first message
//! may have ended in the DLQ); the admission drops such a second message as a duplicate if the
//! first is still waiting. `expiresAt` is the table's TTL attribute too (epoch seconds), so old
//! entries go away by themselves; the condition does not rely on TTL deletion, which is lazy.
//!
//! Alternatives considered: SQS FIFO deduplication (5-minute window only, and it would make the
//! admission's queue FIFO); a ledger without leases (a crashed run would hide its requests
//! forever). The conditional put is the smallest thing that is atomic across runs.

use std::collections::BTreeSet;

use super::ports::{OutgoingMessage, StoredExecution};
use super::{Relay, Summary};
use crate::error::RelayError;
use crate::message::reference_body;

/// SQS takes at most 10 messages per batch call.
const SEND_BATCH: usize = 10;

/// The pending requests the feed enqueues: no result yet and not just swept, oldest first (the
/// scan's order).
pub fn pending<'a>(scanned: &'a [StoredExecution], swept: &BTreeSet<String>) -> Vec<&'a StoredExecution> {
    scanned.iter().filter(|r| r.result.is_none() && !swept.contains(&r.exec_id)).collect()
}

pub(super) async fn enqueue(
    relay: &Relay<'_>,
    scanned: &[StoredExecution],
    swept: &BTreeSet<String>,
    run_id: &str,
    now_ms: i64,
    summary: &mut Summary,
) -> Vec<RelayError> {
    let cfg = relay.config;
    let mut errors = Vec::new();
    let (Some(ledger), Some(outbox)) = (relay.ledger, relay.outbox) else {
        return errors;
    };
    let mut todo = pending(scanned, swept);
    if todo.len() > cfg.limits.max_enqueue {
        let note = format!(
            "enqueue: {} pending requests, {} handled this run; the rest by the next run",
            todo.len(),
            cfg.limits.max_enqueue
        );
        tracing::warn!("{note}");
        summary.capped.push(note);
        todo.truncate(cfg.limits.max_enqueue);
    }
    for chunk in todo.chunks(SEND_BATCH) {
        let mut claimed = Vec::new();
        for r in chunk {
            match ledger.claim(&r.exec_id, run_id, now_ms, cfg.claim_lease).await {
                Ok(true) => claimed.push(r.exec_id.clone()),
                Ok(false) => summary.already_enqueued += 1,
                Err(source) => errors.push(RelayError::Aws { part: "enqueue", source }),
            }
        }
        if claimed.is_empty() {
            continue;
        }
        let messages: Vec<OutgoingMessage> = claimed
            .iter()
            .enumerate()
            .map(|(i, id)| OutgoingMessage { id: format!("m{i}"), body: reference_body(id) })
            .collect();
        let outcome = match outbox.send_batch(&messages).await {
            Ok(o) => o,
            Err(source) => {
                errors.push(RelayError::Aws { part: "enqueue", source });
                for id in &claimed {
                    release(relay, id, run_id).await;
                }
                continue;
            }
        };
        for (m, id) in messages.iter().zip(&claimed) {
            if outcome.ok.contains(&m.id) {
                summary.enqueued += 1;
                tracing::info!(exec_id = %id, "enqueued a reference message");
                match ledger.mark_sent(id, run_id, now_ms, cfg.resend_after).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!(exec_id = %id, "enqueue: the claim expired before it was marked sent; another run may enqueue it again (the admission drops the duplicate)")
                    }
                    Err(e) => {
                        tracing::warn!(exec_id = %id, error = %e, "enqueue: sent, but not marked sent; after the claim's lease another run may enqueue it again (the admission drops the duplicate)")
                    }
                }
            } else {
                errors.push(RelayError::Aws { part: "enqueue", source: outcome.failure(&m.id, id) });
                release(relay, id, run_id).await;
            }
        }
    }
    errors
}

async fn release(relay: &Relay<'_>, exec_id: &str, run_id: &str) {
    if let Some(ledger) = relay.ledger
        && let Err(e) = ledger.release(exec_id, run_id).await
    {
        tracing::warn!(exec_id, error = %e, "enqueue: could not release the claim; it expires after its lease");
    }
}
