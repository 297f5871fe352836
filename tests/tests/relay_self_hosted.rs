//! The self-hosted feed against the GMS emulator (its OpenAPI v2 scroll, with the relay's query
//! interpreted) and moto (SQS, DynamoDB): 30 pending requests of two pools, three relay runs at
//! once, and every one of our pool's requests lands on our queue exactly once.

use std::collections::BTreeMap;

use integration_tests::moto::Moto;
use integration_tests::relay_support::{create_ledger, create_queue, drain, identity, now_ms, relay_config, started};
use integration_tests::{GmsEmulator, Route};
use serde_json::{Value, json};
use shared::gms::GmsClient;
use shared::relay::aws::{DynamoLedger, SqsQueue};
use shared::relay::{Relay, Summary};

const TOKEN: &str = "relay-token";

fn seed(gms: &GmsEmulator, exec_id: &str, pool: &str, requested_at: i64) {
    gms.put_aspect(
        &format!("urn:li:dataHubExecutionRequest:{exec_id}"),
        "dataHubExecutionRequestInput",
        json!({
            "task": "RUN_INGEST",
            "args": {"recipe": "{\"source\": {\"type\": \"file\"}}", "version": "1.7.0.17"},
            "executorId": pool,
            "source": {"type": "MANUAL_INGESTION_SOURCE", "ingestionSource": "urn:li:dataHubIngestionSource:s"},
            "requestedAt": requested_at,
        }),
    );
}

fn exec_id_of(body: &str) -> String {
    let v: Value = serde_json::from_str(body).expect("a JSON reference message");
    let urn = v["executionRequestUrn"].as_str().expect("executionRequestUrn");
    urn.trim_start_matches("urn:li:dataHubExecutionRequest:").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_overlapping_runs_enqueue_each_pending_request_of_our_pool_exactly_once() {
    let Some(moto) = Moto::start_or_skip("relay_self_hosted").await else { return };
    let sdk = moto.sdk_config().await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let ddb = aws_sdk_dynamodb::Client::new(&sdk);
    let queue_url = create_queue(&sqs, "pool").await;
    let table = create_ledger(&ddb).await;
    let gms = GmsEmulator::start(TOKEN).await;

    let now = now_ms();
    for i in 0..20 {
        seed(&gms, &format!("ours-{i:02}"), "remote", now - 60_000 + i);
    }
    for i in 0..10 {
        seed(&gms, &format!("theirs-{i:02}"), "other", now - 60_000 + i);
    }
    // Not pending: already RUNNING, finished, or the CLI's own.
    seed(&gms, "ours-running", "remote", now - 50_000);
    gms.put_aspect_observed(
        "urn:li:dataHubExecutionRequest:ours-running",
        "dataHubExecutionRequestResult",
        json!({"status": "RUNNING", "startTimeMs": now - 40_000}),
        now - 1000,
    );
    seed(&gms, "ours-done", "remote", now - 50_000);
    gms.put_aspect(
        "urn:li:dataHubExecutionRequest:ours-done",
        "dataHubExecutionRequestResult",
        json!({"status": "SUCCESS", "startTimeMs": now - 40_000}),
    );
    seed(&gms, "cli-run", "__datahub_cli_", now - 50_000);

    let mut config = relay_config(
        &gms.url(),
        TOKEN,
        &[
            ("DATAHUB_EXECUTOR_RELAY_MODE", "self-hosted"),
            ("DATAHUB_EXECUTOR_QUEUE_URL", &queue_url),
            ("DATAHUB_EXECUTOR_RELAY_LEDGER_TABLE", &table),
            ("DATAHUB_EXECUTOR_SWEEPER_ENABLED", "false"),
        ],
    );
    // Small pages, so every run pages through the scroll while the others write the ledger.
    config.limits.page_size = 4;
    let client = GmsClient::new(&config.gms).expect("GMS client");
    let outbox = SqsQueue::new(sqs.clone(), queue_url.clone());
    let ledger = DynamoLedger::new(ddb.clone(), table.clone());
    let id = identity(&config);
    let relay = || Relay {
        config: &config,
        gms: &client,
        launcher: None,
        outbox: Some(&outbox),
        ledger: Some(&ledger),
        sources: None,
        identity: &id,
        started: started(),
    };
    let (a, b, c) = (relay(), relay(), relay());
    let (sa, sb, sc): (Summary, Summary, Summary) =
        tokio::join!(a.run("run-a", now), b.run("run-b", now), c.run("run-c", now));
    for s in [&sa, &sb, &sc] {
        assert!(s.errors.is_empty() && !s.retry, "{s:?}");
        assert_eq!(s.scanned, 21, "20 pending + 1 RUNNING of our pool: {s:?}");
    }
    assert_eq!(sa.enqueued + sb.enqueued + sc.enqueued, 20, "{sa:?} {sb:?} {sc:?}");
    assert_eq!(sa.already_enqueued + sb.already_enqueued + sc.already_enqueued, 40);

    // Count the queue: each of ours exactly once, nothing else.
    let bodies = drain(&sqs, &queue_url).await;
    let mut per_id: BTreeMap<String, usize> = BTreeMap::new();
    for b in &bodies {
        *per_id.entry(exec_id_of(b)).or_default() += 1;
    }
    assert_eq!(bodies.len(), 20, "{per_id:?}");
    let expected: Vec<String> = (0..20).map(|i| format!("ours-{i:02}")).collect();
    assert_eq!(per_id.keys().cloned().collect::<Vec<_>>(), expected);
    assert!(per_id.values().all(|n| *n == 1));
    // The other pool's requests are untouched: not enqueued, nothing written to GMS.
    assert!(gms.proposals().is_empty(), "the relay wrote nothing: {:?}", gms.proposals());
    // The scroll was paged (more than one page per run) with the pool in the query.
    let scrolls: Vec<_> = gms.requests().into_iter().filter(|r| r.route == Route::OpenApiScrollV2).collect();
    assert!(scrolls.len() >= 3 * 6, "{} scroll calls", scrolls.len());
    assert!(scrolls.iter().all(|r| r.status == 200), "{scrolls:?}");
    assert!(scrolls.iter().any(|r| r.query.as_deref().is_some_and(|q| q.contains("scrollId="))));

    // The ledger says sent; a later run enqueues nothing again.
    let item = ddb
        .get_item()
        .table_name(&table)
        .key("executionRequestId", aws_sdk_dynamodb::types::AttributeValue::S("ours-07".into()))
        .send()
        .await
        .expect("GetItem");
    let state = item.item().and_then(|i| i.get("state")).and_then(|s| s.as_s().ok()).cloned();
    assert_eq!(state.as_deref(), Some("sent"));
    let again = relay().run("run-d", now + 5_000).await;
    assert_eq!((again.enqueued, again.already_enqueued), (0, 20), "{again:?}");
    assert!(drain(&sqs, &queue_url).await.is_empty());

    // Our queue refusing the send loses nothing: the claims are released and the next run sends.
    seed(&gms, "ours-late", "remote", now);
    let broken = SqsQueue::new(sqs.clone(), format!("{}/no-such-queue", moto.url()));
    let failing = Relay { outbox: Some(&broken), ..relay() };
    let s = failing.run("run-e", now + 6_000).await;
    assert!(s.enqueued == 0 && s.errors.iter().any(|e| e.contains("NonExistentQueue")), "{s:?}");
    let s = relay().run("run-f", now + 7_000).await;
    assert_eq!(s.enqueued, 1, "{s:?}");
    assert_eq!(drain(&sqs, &queue_url).await.iter().map(|b| exec_id_of(b)).collect::<Vec<_>>(), vec!["ours-late"]);
}
