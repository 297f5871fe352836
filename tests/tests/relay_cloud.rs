//! The DataHub Cloud feed against moto: Celery envelopes (as kombu puts them on DataHub's queue
//! of the pool) end up as reference messages on our queue and leave DataHub's queue only after
//! our queue took them. A failure in between loses nothing, and what it duplicates the
//! admission's duplicate check drops.

use std::collections::BTreeMap;

use base64::Engine;
use integration_tests::GmsEmulator;
use integration_tests::moto::Moto;
use integration_tests::relay_support::{create_queue, drain, identity, queue_depth, relay_config, started};
use serde_json::{Value, json};
use shared::admission::{Admission, AdmissionConfig, Decision, Record};
use shared::gms::GmsClient;
use shared::relay::aws::{SqsQueue, SqsSources};
use shared::relay::{BatchOutcome, ExecutorConfig, Relay, SourceQueue, SourceQueues};
use shared::secrets::BoxFuture;
use shared::testing::{FakeGms, FakeLauncher};

const TOKEN: &str = "relay-cloud-token";

/// What the coordinator puts on a pool's queue (`reference/datahub-executor.md` §2.2): base64 of
/// the kombu/Celery JSON envelope whose body is a (never read) pickle.
fn celery(task: &str, id: &str) -> String {
    let envelope = json!({
        "body": "gASVxwAAAAAAAAB9lIwEYXJncxSTlC4=",
        "content-encoding": "binary",
        "content-type": "application/x-python-serialize",
        "headers": {
            "lang": "py", "task": task, "id": id, "root_id": id, "parent_id": null, "group": null,
            "retries": 0, "eta": null, "expires": null, "timelimit": [null, null],
            "argsrepr": "[...]", "kwargsrepr": "{}", "origin": "gen1@coordinator", "ignore_result": false
        },
        "properties": {
            "correlation_id": id, "reply_to": "7c1e", "delivery_mode": 2, "priority": 0,
            "body_encoding": "base64", "delivery_tag": "d1",
            "delivery_info": {"exchange": "", "routing_key": "remote.ingestion_request"}
        }
    });
    base64::engine::general_purpose::STANDARD.encode(envelope.to_string())
}

const INGESTION: &str = "datahub_executor.worker.celery_sqs.app.ingestion_request";

fn exec_id_of(body: &str) -> String {
    let v: Value = serde_json::from_str(body).expect("a JSON reference message");
    v["executionRequestUrn"].as_str().expect("urn").trim_start_matches("urn:li:dataHubExecutionRequest:").to_owned()
}

/// DataHub's queue, whose deletes fail (the run died after forwarding, or SQS refused).
struct NoDeletes(SqsSources);

struct NoDeleteQueue(Box<dyn SourceQueue>);

impl SourceQueue for NoDeleteQueue {
    fn receive(&self, max: i32) -> BoxFuture<'_, Result<Vec<shared::relay::ReceivedMessage>, shared::error::AwsError>> {
        self.0.receive(max)
    }

    fn delete_batch<'a>(
        &'a self,
        _messages: &'a [(String, String)],
    ) -> BoxFuture<'a, Result<BatchOutcome, shared::error::AwsError>> {
        Box::pin(async {
            Err(shared::error::AwsError {
                service: "SQS",
                operation: "DeleteMessageBatch",
                resource: "datahub".into(),
                reason: "injected by the test".into(),
                transient: true,
            })
        })
    }
}

impl SourceQueues for NoDeletes {
    fn open(&self, config: &ExecutorConfig) -> Box<dyn SourceQueue> {
        Box::new(NoDeleteQueue(self.0.open(config)))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn celery_envelopes_are_forwarded_as_references_and_deleted_only_after_the_forward() {
    let Some(moto) = Moto::start_or_skip("relay_cloud").await else { return };
    let sdk = moto.sdk_config().await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let datahub_url = create_queue(&sqs, "re-customer-0123456789abcdef").await;
    let ours_url = create_queue(&sqs, "pool").await;
    let gms = GmsEmulator::start(TOKEN).await;
    gms.set_executor_configs(vec![
        json!({"region": "us-east-1", "executorId": "elsewhere", "queueUrl": format!("{}/other", moto.url()),
               "accessKeyId": "ASIAOTHER", "secretKeyId": "x", "sessionToken": "t", "expiration": "2099-01-01T00:00:00Z"}),
        json!({"region": "us-east-1", "executorId": "remote", "queueUrl": datahub_url,
               "accessKeyId": "ASIATEST", "secretKeyId": "secret", "sessionToken": "session", "expiration": "2099-01-01T00:00:00Z"}),
    ]);
    for i in 0..5 {
        sqs.send_message()
            .queue_url(&datahub_url)
            .message_body(celery(INGESTION, &format!("urn:li:dataHubExecutionRequest:cloud-{i}")))
            .send()
            .await
            .expect("send");
    }
    sqs.send_message()
        .queue_url(&datahub_url)
        .message_body(celery("datahub_executor.worker.celery_sqs.app.assertion_request", "urn:li:assertion:a1"))
        .send()
        .await
        .expect("send");

    let config = relay_config(
        &gms.url(),
        TOKEN,
        &[
            ("DATAHUB_EXECUTOR_RELAY_MODE", "datahub-cloud"),
            ("DATAHUB_EXECUTOR_QUEUE_URL", &ours_url),
            ("DATAHUB_EXECUTOR_SWEEPER_ENABLED", "false"),
            ("DATAHUB_EXECUTOR_STATUS_ENABLED", "false"),
        ],
    );
    let client = GmsClient::new(&config.gms).expect("GMS client");
    let id = identity(&config);
    // Received messages come back at once when not deleted, so the test need not wait out a
    // visibility timeout to see what is left.
    let sources = SqsSources::new(sdk.clone()).with_visibility_timeout(0);
    let missing = SqsQueue::new(sqs.clone(), format!("{}/123456789012/no-such-queue", moto.url()));
    let ours = SqsQueue::new(sqs.clone(), ours_url.clone());

    // 1. Our queue does not exist: nothing is forwarded, no ingestion message is deleted.
    let relay = Relay {
        config: &config,
        gms: &client,
        launcher: None,
        outbox: Some(&missing),
        ledger: None,
        sources: Some(&sources),
        identity: &id,
        started: started(),
    };
    let s = relay.run("run-1", 0).await;
    assert_eq!(s.forwarded, 0, "{s:?}");
    assert!(s.errors.iter().any(|e| e.contains("NonExistentQueue")), "{s:?}");
    let (visible, in_flight) = queue_depth(&sqs, &datahub_url).await;
    assert_eq!(visible + in_flight, 5, "the 5 ingestion requests are all still on DataHub's queue");
    assert_eq!(s.consumed, 1, "the assertion task is consumed, not forwarded: {s:?}");
    assert_eq!(queue_depth(&sqs, &ours_url).await, (0, 0));

    // 2. Forwarded, but the delete fails: they stay on DataHub's queue and are forwarded again
    //    by the next run; the admission launches each once all the same.
    let failing = NoDeletes(SqsSources::new(sdk.clone()).with_visibility_timeout(0));
    let relay2 = Relay { outbox: Some(&ours), sources: Some(&failing), ..relay };
    let s = relay2.run("run-2", 0).await;
    assert_eq!(s.forwarded, 5, "{s:?}");
    let (visible, in_flight) = queue_depth(&sqs, &datahub_url).await;
    assert_eq!(visible + in_flight, 5, "not deleted");

    // 3. A normal run forwards them again and deletes them.
    let relay3 = Relay { outbox: Some(&ours), sources: Some(&sources), ..relay };
    let s = relay3.run("run-3", 0).await;
    assert_eq!((s.forwarded, s.consumed), (5, 0), "{s:?}");
    assert!(s.errors.is_empty(), "{s:?}");
    assert_eq!(queue_depth(&sqs, &datahub_url).await, (0, 0), "DataHub's queue is empty");

    // Our queue: reference messages only, each request twice (runs 2 and 3).
    let bodies = drain(&sqs, &ours_url).await;
    let mut per_id: BTreeMap<String, usize> = BTreeMap::new();
    for b in &bodies {
        *per_id.entry(exec_id_of(b)).or_default() += 1;
    }
    let expected: BTreeMap<String, usize> = (0..5).map(|i| (format!("cloud-{i}"), 2)).collect();
    assert_eq!(per_id, expected);
    assert!(bodies.iter().all(|b| !b.contains("assertion") && !b.contains("gASV")), "never forward the pickle");

    // The admission's duplicate check drops the second copy of each.
    let admission_gms = FakeGms::new();
    for i in 0..5 {
        admission_gms.put(
            &format!("cloud-{i}"),
            json!({"task": "RUN_INGEST", "executorId": "remote", "args": {"recipe": "{\"source\": {\"type\": \"file\"}}", "version": "1.7.0.17"}}),
            None,
        );
    }
    let launcher = FakeLauncher::new();
    let admission_config = AdmissionConfig {
        pool: "remote".into(),
        max_workers: 10,
        file_secret_names: Default::default(),
        admitted_by: "test".into(),
    };
    let admission = Admission { config: &admission_config, gms: &admission_gms, launcher: &launcher, cloud: &[] };
    let records: Vec<Record> =
        bodies.iter().enumerate().map(|(i, b)| Record { message_id: format!("m{i}"), body: b.clone() }).collect();
    let decisions = admission.admit_batch(&records).await;
    let launched = decisions.iter().filter(|d| matches!(d, Decision::Launched { .. })).count();
    let duplicates = decisions.iter().filter(|d| matches!(d, Decision::Duplicate { .. })).count();
    assert_eq!((launched, duplicates), (5, 5), "{decisions:?}");
    assert_eq!(launcher.launches().len(), 5);

    // The source queue was read with the credentials GMS handed out (listExecutorConfigs).
    assert!(gms.requests().iter().any(|r| r.body.contains("listExecutorConfigs")));
}
