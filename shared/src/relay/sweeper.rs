//! The sweeper: ends the pool's requests that can no longer end by themselves.
//!
//! * **Lost**: RUNNING in GMS, no live job of the pool for its execution id in the launcher, and
//!   RUNNING last observed (`systemMetadata.lastObserved` of the result, else `startTimeMs`) at
//!   least the grace ago → FAILURE with a report saying what was found, the previous report kept
//!   after a `---` line as DataHub's sweeper does (`reference/datahub-executor.md` §6.1).
//! * **Waited too long**: no result, requested longer ago than the pending threshold, and no live
//!   job → FAILURE "waited for capacity longer than N s".
//!
//! Order matters: GMS is read first (the scan), then the launcher's live jobs, so a job launched
//! between the two reads is seen live and never swept. Before writing, each candidate's result
//! is read again directly (not from the search index): a SUCCESS (or any status) that landed since
//! the scan, or a RUNNING refreshed within the grace, is never overwritten.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{TimeZone, Utc};

use super::ports::{ObservedResult, StoredExecution};
use super::{Relay, Summary, SweeperConfig};
use crate::error::RelayError;
use crate::launcher::Launcher;
use crate::status::{ExecutionResult, Status};

/// How much of the previous report a swept request keeps (its tail).
pub const PREVIOUS_REPORT_TAIL_CHARS: usize = 100_000;

/// What the sweeper decided for one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Sweep {
    Lost { exec_id: String, observed_ms: i64 },
    WaitedTooLong { exec_id: String, requested_ms: i64 },
}

impl Sweep {
    pub fn exec_id(&self) -> &str {
        match self {
            Sweep::Lost { exec_id, .. } | Sweep::WaitedTooLong { exec_id, .. } => exec_id,
        }
    }
}

/// The candidates among `scanned`, given the live jobs' execution ids.
pub fn candidates(
    scanned: &[StoredExecution],
    live: &BTreeSet<String>,
    cfg: &SweeperConfig,
    now_ms: i64,
) -> Vec<Sweep> {
    let grace = cfg.lost_grace.as_millis() as i64;
    let threshold = cfg.pending_threshold.as_millis() as i64;
    let mut out = Vec::new();
    for r in scanned {
        if live.contains(&r.exec_id) {
            continue;
        }
        match &r.result {
            Some(result) if result.status() == Some("RUNNING") => {
                if let Some(observed_ms) = result.observed_ms().filter(|t| now_ms - t >= grace) {
                    out.push(Sweep::Lost { exec_id: r.exec_id.clone(), observed_ms });
                }
            }
            Some(_) => {}
            None => {
                if let Some(requested_ms) = r.requested_at_ms().filter(|t| now_ms - t > threshold) {
                    out.push(Sweep::WaitedTooLong { exec_id: r.exec_id.clone(), requested_ms });
                }
            }
        }
    }
    out
}

/// Whether the freshly read result still allows the sweep.
pub fn still_applies(sweep: &Sweep, fresh: Option<&ObservedResult>, cfg: &SweeperConfig, now_ms: i64) -> bool {
    match sweep {
        Sweep::Lost { .. } => fresh.is_some_and(|r| {
            r.status() == Some("RUNNING")
                && r.observed_ms().is_some_and(|t| now_ms - t >= cfg.lost_grace.as_millis() as i64)
        }),
        Sweep::WaitedTooLong { .. } => fresh.is_none(),
    }
}

fn utc(ms: i64) -> String {
    Utc.timestamp_millis_opt(ms).single().map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string()).unwrap_or_default()
}

fn tail(text: &str, max: usize) -> &str {
    let n = text.chars().count();
    if n <= max {
        return text;
    }
    match text.char_indices().nth(n - max) {
        Some((i, _)) => &text[i..],
        None => text,
    }
}

/// The FAILURE the sweeper writes for `sweep`.
pub fn failure(
    sweep: &Sweep,
    pool: &str,
    launcher: &str,
    fresh: Option<&ObservedResult>,
    cfg: &SweeperConfig,
    now_ms: i64,
) -> ExecutionResult {
    let ts = Utc.timestamp_millis_opt(now_ms).single().map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string());
    let ts = ts.unwrap_or_default();
    let (message, start) = match sweep {
        Sweep::Lost { exec_id, observed_ms } => (
            format!(
                "Ingestion was marked FAILURE by the relay of executor pool {pool}: no live job of the pool for execution {exec_id} in launcher {launcher}; RUNNING was last observed at {} ({} s before this sweep; the sweeper waits {} s). The job's container was stopped, killed or lost before it reported a final status.",
                utc(*observed_ms),
                (now_ms - observed_ms) / 1000,
                cfg.lost_grace.as_secs()
            ),
            fresh.and_then(|r| r.value.get("startTimeMs")).and_then(serde_json::Value::as_i64).unwrap_or(*observed_ms),
        ),
        Sweep::WaitedTooLong { exec_id, requested_ms } => (
            format!(
                "Ingestion was marked FAILURE by the relay of executor pool {pool}: execution {exec_id} waited for capacity longer than {} s (requested at {}, {} s before this sweep; DATAHUB_EXECUTOR_SWEEPER_PENDING_THRESHOLD).",
                cfg.pending_threshold.as_secs(),
                utc(*requested_ms),
                (now_ms - requested_ms) / 1000
            ),
            now_ms,
        ),
    };
    let previous = fresh.and_then(|r| r.value.get("report")).and_then(serde_json::Value::as_str).unwrap_or("");
    let report = if previous.is_empty() {
        format!("{ts} {message}\n")
    } else {
        format!("{ts} {message}\n\n---\n{}", tail(previous, PREVIOUS_REPORT_TAIL_CHARS))
    };
    ExecutionResult {
        status: Status::Failure,
        report: Some(report),
        structured_report: None,
        start_time_ms: start,
        duration_ms: None,
    }
}

/// Sweeps; returns the ids it ended (the feed must not enqueue them) and what went wrong.
pub(super) async fn sweep(
    relay: &Relay<'_>,
    launcher: &dyn Launcher,
    cfg: &SweeperConfig,
    scanned: &[StoredExecution],
    now_ms: i64,
    summary: &mut Summary,
) -> (BTreeSet<String>, Vec<RelayError>) {
    let mut done = BTreeSet::new();
    let mut errors = Vec::new();
    // Anything to look at at all? (Saves the launcher call on a quiet pool.)
    if candidates(scanned, &BTreeSet::new(), cfg, now_ms).is_empty() {
        return (done, errors);
    }
    // After the GMS read: a job launched in between is live here.
    let live: BTreeSet<String> = match launcher.running(&relay.config.pool).await {
        Ok(jobs) => jobs.into_iter().map(|j| j.exec_id).collect(),
        Err(source) => {
            errors.push(RelayError::Launcher { part: "sweeper", source });
            return (done, errors);
        }
    };
    let found = candidates(scanned, &live, cfg, now_ms);
    if found.is_empty() {
        return (done, errors);
    }
    let ids: Vec<String> = found.iter().map(|s| s.exec_id().to_owned()).collect();
    let fresh: BTreeMap<String, ObservedResult> = match relay.gms.read_results(&ids).await {
        Ok(f) => f,
        Err(source) => {
            errors.push(RelayError::Gms { part: "sweeper", source });
            return (done, errors);
        }
    };
    for sweep in &found {
        let exec_id = sweep.exec_id();
        let current = fresh.get(exec_id);
        if !still_applies(sweep, current, cfg, now_ms) {
            tracing::info!(exec_id, status = ?current.and_then(ObservedResult::status), "sweeper: the request moved on since the scan; left alone");
            continue;
        }
        let result = failure(sweep, &relay.config.pool, launcher.name(), current, cfg, now_ms);
        match relay.gms.write_result(exec_id, &result).await {
            Ok(()) => {
                match sweep {
                    Sweep::Lost { .. } => {
                        summary.swept_lost += 1;
                        tracing::warn!(
                            exec_id,
                            launcher = launcher.name(),
                            "sweeper: RUNNING without a live job: marked FAILURE"
                        );
                    }
                    Sweep::WaitedTooLong { .. } => {
                        summary.swept_pending += 1;
                        tracing::warn!(exec_id, "sweeper: waited for capacity too long: marked FAILURE");
                    }
                }
                done.insert(exec_id.to_owned());
            }
            Err(source) => errors.push(RelayError::Gms { part: "sweeper", source }),
        }
    }
    (done, errors)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::Duration;

    const NOW: i64 = 1_800_000_000_000;

    fn cfg() -> SweeperConfig {
        SweeperConfig { lost_grace: Duration::from_secs(300), pending_threshold: Duration::from_secs(3600) }
    }

    fn running(id: &str, observed_ago_s: i64) -> StoredExecution {
        StoredExecution {
            exec_id: id.into(),
            input: Some(json!({"executorId": "remote", "requestedAt": NOW - 10_000_000})),
            result: Some(ObservedResult {
                value: json!({"status": "RUNNING", "startTimeMs": NOW - 9_000_000, "report": "line 1\nline 2"}),
                last_observed_ms: Some(NOW - observed_ago_s * 1000),
            }),
        }
    }

    fn pending(id: &str, requested_ago_s: i64) -> StoredExecution {
        StoredExecution {
            exec_id: id.into(),
            input: Some(json!({"executorId": "remote", "requestedAt": NOW - requested_ago_s * 1000})),
            result: None,
        }
    }

    #[test]
    fn candidates_respect_the_grace_the_threshold_and_live_jobs() {
        let scanned = vec![
            running("lost", 301),
            running("fresh", 299),
            running("live", 3000),
            pending("old", 3601),
            pending("young", 3599),
        ];
        let live: BTreeSet<String> = ["live".to_string()].into();
        let found = candidates(&scanned, &live, &cfg(), NOW);
        let ids: Vec<&str> = found.iter().map(Sweep::exec_id).collect();
        assert_eq!(ids, vec!["lost", "old"]);
    }

    #[test]
    fn a_result_that_moved_on_is_never_overwritten() {
        let lost = Sweep::Lost { exec_id: "x".into(), observed_ms: NOW - 400_000 };
        let success = ObservedResult { value: json!({"status": "SUCCESS"}), last_observed_ms: Some(NOW) };
        assert!(!still_applies(&lost, Some(&success), &cfg(), NOW));
        let refreshed = ObservedResult { value: json!({"status": "RUNNING"}), last_observed_ms: Some(NOW - 1000) };
        assert!(!still_applies(&lost, Some(&refreshed), &cfg(), NOW));
        let stale = ObservedResult { value: json!({"status": "RUNNING"}), last_observed_ms: Some(NOW - 400_000) };
        assert!(still_applies(&lost, Some(&stale), &cfg(), NOW));
        let waited = Sweep::WaitedTooLong { exec_id: "y".into(), requested_ms: 0 };
        assert!(still_applies(&waited, None, &cfg(), NOW));
        assert!(!still_applies(&waited, Some(&refreshed), &cfg(), NOW));
    }

    #[test]
    fn the_report_says_what_was_found_and_keeps_the_old_report() {
        let r = running("lost", 400);
        let sweep = Sweep::Lost { exec_id: "lost".into(), observed_ms: NOW - 400_000 };
        let f = failure(&sweep, "remote", "ecs", r.result.as_ref(), &cfg(), NOW);
        let report = f.report.expect("report");
        assert_eq!(f.status, Status::Failure);
        assert_eq!(f.start_time_ms, NOW - 9_000_000, "the original start is kept");
        assert!(report.contains("no live job of the pool for execution lost in launcher ecs"), "{report}");
        assert!(report.contains("RUNNING was last observed at") && report.contains("400 s before"), "{report}");
        assert!(report.ends_with("\n\n---\nline 1\nline 2"), "{report}");

        let waited = Sweep::WaitedTooLong { exec_id: "old".into(), requested_ms: NOW - 4_000_000 };
        let report = failure(&waited, "remote", "ecs", None, &cfg(), NOW).report.expect("report");
        assert!(report.contains("waited for capacity longer than 3600 s"), "{report}");
        assert!(!report.contains("---"));
        assert_eq!(tail("abcdef", 3), "def");
    }
}
