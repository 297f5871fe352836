//! The relay's run over fakes: each part's decisions, and that a failing part leaves the others.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::json;

use super::*;
use crate::message;
use crate::testing::{FakeLauncher, FakeLedger, FakeQueue, FakeRelayGms, FakeSources};

const NOW: i64 = 1_800_000_000_000;

fn config(mode: Mode) -> RelayConfig {
    let mut m = std::collections::HashMap::from([
        ("DATAHUB_GMS_URL", "http://gms:8080"),
        ("DATAHUB_EXECUTOR_POOL_ID", "remote"),
        ("DATAHUB_EXECUTOR_QUEUE_URL", "http://sqs/ours"),
        ("DATAHUB_EXECUTOR_RELAY_LEDGER_TABLE", "ledger"),
        ("DATAHUB_EXECUTOR_SWEEPER_PENDING_THRESHOLD", "3600"),
    ]);
    m.insert("DATAHUB_EXECUTOR_RELAY_MODE", mode.as_str());
    let mut c = RelayConfig::from_lookup(|k| m.get(k).map(|v| v.to_string())).expect("config");
    c.limits.page_size = 7;
    c
}

fn pending(id: &str, pool: &str) -> StoredExecution {
    StoredExecution {
        exec_id: id.into(),
        input: Some(json!({"executorId": pool, "task": "RUN_INGEST", "requestedAt": NOW - 60_000})),
        result: None,
    }
}

struct World {
    gms: FakeRelayGms,
    launcher: FakeLauncher,
    ledger: FakeLedger,
    queue: FakeQueue,
    sources: FakeSources,
    identity: status::Identity,
}

impl World {
    fn new() -> Self {
        World {
            gms: FakeRelayGms::new(),
            launcher: FakeLauncher::new(),
            ledger: FakeLedger::new(),
            queue: FakeQueue::new(),
            sources: FakeSources::new(),
            identity: status::Identity::new("relay", "remote", "http://gms:8080", None, None),
        }
    }

    fn relay<'a>(&'a self, config: &'a RelayConfig) -> Relay<'a> {
        Relay {
            config,
            gms: &self.gms,
            launcher: Some(&self.launcher),
            outbox: Some(&self.queue),
            ledger: Some(&self.ledger),
            sources: Some(&self.sources),
            identity: &self.identity,
            started: Instant::now(),
        }
    }
}

#[tokio::test]
async fn three_overlapping_runs_enqueue_each_pending_request_once() {
    let w = World::new();
    for i in 0..20 {
        w.gms.add(pending(&format!("ours-{i}"), "remote"));
    }
    for i in 0..10 {
        w.gms.add(pending(&format!("theirs-{i}"), "other"));
    }
    w.gms.add(pending("cli", "__datahub_cli_"));
    let mut cfg = config(Mode::SelfHosted);
    if let Some(s) = cfg.sweeper.as_mut() {
        s.pending_threshold = Duration::from_secs(86_400);
    }
    let (a, b, c) = (w.relay(&cfg), w.relay(&cfg), w.relay(&cfg));
    let (sa, sb, sc) = tokio::join!(a.run("run-a", NOW), b.run("run-b", NOW + 1), c.run("run-c", NOW + 2));
    let mut sent = w.queue.sent();
    sent.sort();
    sent.dedup();
    assert_eq!(w.queue.sent().len(), 20, "each once: {:?}", w.queue.sent());
    assert_eq!(sent.len(), 20);
    assert!(sent.iter().all(|b| b.contains("ours-")), "{sent:?}");
    assert_eq!(sa.enqueued + sb.enqueued + sc.enqueued, 20);
    assert_eq!(sa.already_enqueued + sb.already_enqueued + sc.already_enqueued, 40);
    assert!(!sa.retry && !sb.retry && !sc.retry, "{sa:?}");
    assert_eq!(w.ledger.entry("ours-3").map(|e| e.0), Some("sent".to_string()));

    // Later runs within the hold enqueue nothing; after it, still-pending requests go again.
    let s = w.relay(&cfg).run("run-d", NOW + 60_000).await;
    assert_eq!((s.enqueued, s.already_enqueued), (0, 20));
    let s = w.relay(&cfg).run("run-e", NOW + cfg.resend_after.as_millis() as i64 + 2000).await;
    assert_eq!(s.enqueued, 20, "no request is lost: {s:?}");
}

#[tokio::test]
async fn a_failed_send_releases_the_claim_and_a_crashed_claim_expires() {
    let w = World::new();
    w.gms.add(pending("p1", "remote"));
    let cfg = config(Mode::SelfHosted);
    w.queue.fail_sends(1);
    let s = w.relay(&cfg).run("run-a", NOW).await;
    assert_eq!(s.enqueued, 0);
    assert!(s.retry && !s.errors.is_empty(), "{s:?}");
    assert_eq!(w.ledger.entry("p1"), None, "released");
    let s = w.relay(&cfg).run("run-b", NOW + 1000).await;
    assert_eq!(s.enqueued, 1, "the next run sends it: {s:?}");

    // A run that claimed and died: its claim holds for the lease, then the next run takes over.
    let w = World::new();
    w.gms.add(pending("p2", "remote"));
    assert!(w.ledger.claim("p2", "crashed", NOW, cfg.claim_lease).await.expect("claim"));
    let s = w.relay(&cfg).run("run-c", NOW + 1000).await;
    assert_eq!((s.enqueued, s.already_enqueued), (0, 1));
    let s = w.relay(&cfg).run("run-d", NOW + cfg.claim_lease.as_millis() as i64 + 1000).await;
    assert_eq!(s.enqueued, 1);
    assert_eq!(w.queue.sent().len(), 1);
}

fn celery(task: &str, id: &str) -> String {
    let envelope = json!({"body": "gASV", "content-type": "application/x-python-serialize",
        "headers": {"lang": "py", "task": task, "id": id}});
    base64::engine::general_purpose::STANDARD.encode(envelope.to_string())
}

fn cloud_config() -> ExecutorConfig {
    ExecutorConfig {
        executor_id: "remote".into(),
        queue_url: "http://sqs/datahub".into(),
        region: "us-west-2".into(),
        access_key_id: "ASIA".into(),
        secret_key: "s".to_string().into(),
        session_token: None,
        expiration: None,
    }
}

#[tokio::test]
async fn cloud_messages_are_deleted_only_after_the_forward() {
    let w = World::new();
    w.gms.set_executor_configs(vec![ExecutorConfig { executor_id: "other".into(), ..cloud_config() }, cloud_config()]);
    let source = Arc::clone(&w.sources.queue);
    for i in 0..3 {
        source.put(&format!("m{i}"), &celery("app.ingestion_request", &format!("urn:li:dataHubExecutionRequest:c{i}")));
    }
    source.put("assert", &celery("app.assertion_request", "urn:li:assertion:x"));
    let cfg = config(Mode::DatahubCloud);
    w.queue.fail_sends(1);
    let s = w.relay(&cfg).run("r1", NOW).await;
    assert!(s.retry && s.forwarded == 0, "{s:?}");
    assert!(w.queue.sent().is_empty());
    assert_eq!(source.deleted(), vec!["assert".to_string()], "only the non-ingestion task is consumed");
    assert_eq!(source.remaining(), 3, "nothing lost");
    assert_eq!(w.sources.opened(), vec!["http://sqs/datahub".to_string()]);

    source.expire_visibility();
    let s = w.relay(&cfg).run("r2", NOW + 1).await;
    assert_eq!((s.forwarded, s.consumed), (3, 0), "{s:?}");
    assert_eq!(source.remaining(), 0);
    let sent = w.queue.sent();
    assert_eq!(sent, vec![message::reference_body("c0"), message::reference_body("c1"), message::reference_body("c2")]);

    // No config for the pool: a retryable error, nothing received.
    w.gms.set_executor_configs(vec![]);
    let s = w.relay(&cfg).run("r3", NOW + 2).await;
    assert!(s.retry && s.errors.iter().any(|e| e.contains("no READY executor config")), "{s:?}");
}

#[tokio::test]
async fn the_sweeper_ends_lost_and_stale_requests_and_leaves_live_and_finished_ones() {
    let w = World::new();
    let running = |id: &str, ago_ms: i64| StoredExecution {
        exec_id: id.into(),
        input: Some(json!({"executorId": "remote", "requestedAt": NOW - 9_000_000})),
        result: Some(ObservedResult {
            value: json!({"status": "RUNNING", "startTimeMs": NOW - 8_000_000, "report": "old log"}),
            last_observed_ms: Some(NOW - ago_ms),
        }),
    };
    w.gms.add(running("lost", 600_000));
    w.gms.add(running("live", 600_000));
    w.gms.add(running("young", 10_000));
    w.gms.add(running("finished-meanwhile", 600_000));
    w.gms.add(StoredExecution {
        exec_id: "stale".into(),
        input: Some(json!({"executorId": "remote", "requestedAt": NOW - 4_000_000})),
        result: None,
    });
    w.gms.change_after_scan(
        "finished-meanwhile",
        ObservedResult { value: json!({"status": "SUCCESS"}), last_observed_ms: Some(NOW) },
    );
    w.launcher.add_job("live", 0.25);
    let cfg = config(Mode::None);
    let s = w.relay(&cfg).run("r", NOW).await;
    assert_eq!((s.swept_lost, s.swept_pending, s.swept), (1, 1, 2), "{s:?}");
    let written: Vec<String> = w.gms.written().iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(written, vec!["lost".to_string(), "stale".to_string()]);
    assert!(w.gms.written().iter().all(|(_, r)| r.status == crate::status::Status::Failure));

    // Self-hosted: the swept pending request is not enqueued as well.
    let w2 = World::new();
    w2.gms.add(StoredExecution {
        exec_id: "stale".into(),
        input: Some(json!({"executorId": "remote", "requestedAt": NOW - 4_000_000})),
        result: None,
    });
    let cfg = config(Mode::SelfHosted);
    let s = w2.relay(&cfg).run("r", NOW).await;
    assert_eq!((s.swept_pending, s.enqueued), (1, 0), "{s:?}");
}

#[tokio::test]
async fn status_is_gated_and_a_failing_part_leaves_the_others() {
    let w = World::new();
    w.gms.add(pending("p", "remote"));
    let cfg = config(Mode::SelfHosted);
    let s = w.relay(&cfg).run("r", NOW).await;
    assert_eq!(s.status, "skipped");
    assert!(w.gms.proposals().is_empty());

    w.gms.set_config(json!({"remoteExecutorBackend": {"revision": 2}}));
    w.gms.fail_scroll(true);
    let s = w.relay(&cfg).run("r2", NOW + 1).await;
    assert_eq!(s.status, "emitted");
    assert_eq!(w.gms.proposals().len(), 1);
    assert!(s.retry, "the scan failed: {s:?}");

    w.gms.fail_scroll(false);
    w.gms.fail_proposals(Some(422));
    let s = w.relay(&cfg).run("r3", NOW + 2).await;
    assert_eq!(s.status, "rejected");
    assert!(!s.retry, "a 4xx on the status never fails the run: {s:?}");
}
