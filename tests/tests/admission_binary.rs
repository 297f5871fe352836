//! The real `admission` binary (main(), the `lambda_runtime` glue, the SQS batch response)
//! against a fake Lambda Runtime API and the GMS emulator. The local launcher runs `/bin/true`:
//! nothing real needs to run here.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use integration_tests::jobrun::workspace_bin;
use integration_tests::lambda_api::{LambdaApi, sqs_event};
use integration_tests::{GmsEmulator, Route};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::watch;

const TOKEN: &str = "admission-test-token";
const QUEUE_ARN: &str = "arn:aws:sqs:us-east-1:123456789012:datahub-executor";
const WAIT: Duration = Duration::from_secs(60);

fn seed(gms: &GmsEmulator, exec_id: &str, pool: &str) {
    let recipe = json!({
        "source": {"type": "file", "config": {"path": "/tmp/admission-test-metadata.json"}},
        "sink": {"type": "datahub-rest", "config": {}}
    });
    gms.put_aspect(
        &format!("urn:li:dataHubExecutionRequest:{exec_id}"),
        "dataHubExecutionRequestInput",
        json!({
            "task": "RUN_INGEST",
            "args": {"recipe": recipe.to_string(), "version": "1.7.0.17", "debug_mode": "false"},
            "executorId": pool,
            "source": {"type": "MANUAL_INGESTION_SOURCE", "ingestionSource": "urn:li:dataHubIngestionSource:test"},
            "requestedAt": 1_796_321_289_000i64,
        }),
    );
}

fn reference(exec_id: &str) -> String {
    json!({"executionRequestUrn": format!("urn:li:dataHubExecutionRequest:{exec_id}")}).to_string()
}

/// The binary's JSON log lines, collected as they arrive.
#[derive(Clone)]
struct Logs {
    lines: Arc<Mutex<Vec<String>>>,
    changed: watch::Sender<usize>,
}

impl Logs {
    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The `fields` of every JSON log line whose message is `message`.
    fn events(&self, message: &str) -> Vec<Value> {
        self.lines()
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v.pointer("/fields/message").and_then(Value::as_str) == Some(message))
            .map(|v| v["fields"].clone())
            .collect()
    }

    /// Waits (on each new line) until `count` log events with `message` are there.
    async fn wait_events(&self, message: &str, count: usize) -> Vec<Value> {
        let mut rx = self.changed.subscribe();
        let wait = async {
            loop {
                rx.borrow_and_update();
                let found = self.events(message);
                if found.len() >= count {
                    return found;
                }
                if rx.changed().await.is_err() {
                    return self.events(message);
                }
            }
        };
        tokio::time::timeout(WAIT, wait).await.unwrap_or_else(|_| self.events(message))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admission_binary_answers_an_sqs_batch() {
    let gms = GmsEmulator::start(TOKEN).await;
    seed(&gms, "valid-1", "remote");
    seed(&gms, "other-1", "other");
    seed(&gms, "valid-2", "remote");
    let api = LambdaApi::start();

    let mut child = tokio::process::Command::new(workspace_bin("admission"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("AWS_LAMBDA_RUNTIME_API", api.addr_string())
        .env("AWS_LAMBDA_FUNCTION_NAME", "admission")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
        .env("AWS_LAMBDA_LOG_FORMAT", "JSON")
        .env("DATAHUB_GMS_URL", gms.url())
        .env("DATAHUB_GMS_TOKEN", TOKEN)
        .env("DATAHUB_EXECUTOR_POOL_ID", "remote")
        .env("DATAHUB_EXECUTOR_LAUNCHER", "local")
        .env("DATAHUB_EXECUTOR_LOCAL_JOB_BIN", "/bin/true")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        // Never called: no DLQ is configured and nothing is deferred.
        .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the admission binary");
    let logs = Logs { lines: Arc::default(), changed: watch::Sender::new(0) };
    for stream in [
        Box::new(child.stdout.take().expect("stdout")) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
        Box::new(child.stderr.take().expect("stderr")),
    ] {
        let logs = logs.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stream).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                logs.lines.lock().unwrap_or_else(|p| p.into_inner()).push(line);
                logs.changed.send_modify(|n| *n += 1);
            }
        });
    }
    let context = |what: &str| format!("{what}\n--- admission output ---\n{}", logs.lines().join("\n"));

    api.wait_ready(WAIT).await.unwrap_or_else(|e| panic!("{}", context(&e)));

    // 1. A valid request, garbage, and a request of another pool.
    let valid = reference("valid-1");
    let other = reference("other-1");
    let id = api.invoke(sqs_event(
        &[
            ("m-valid", &valid, "rh-valid", 1),
            ("m-garbage", "not a message", "rh-garbage", 1),
            ("m-other", &other, "rh-other", 1),
        ],
        QUEUE_ARN,
    ));
    let response = api.wait_response(&id, WAIT).await.unwrap_or_else(|e| panic!("{}", context(&e)));
    assert_eq!(response, json!({"batchItemFailures": []}), "garbage is consumed without a DLQ");
    let running = gms.execution_results("valid-1");
    assert_eq!(running.len(), 1, "{running:?}");
    assert_eq!(running[0]["status"], "RUNNING");
    assert!(gms.execution_results("other-1").is_empty(), "another pool's request is left alone");
    let proposals = gms.proposals();
    assert_eq!(proposals.len(), 1, "RUNNING for the valid request only: {proposals:?}");
    let launched = logs.wait_events("launched", 1).await;
    assert_eq!(launched.len(), 1, "{}", context("one launch"));
    assert_eq!(launched[0]["exec_id"], "valid-1");
    let skipped = logs.wait_events("skipped", 1).await;
    assert_eq!(skipped.len(), 1, "{}", context("the other pool's request is skipped"));
    let garbage = logs.wait_events("garbage consumed (no DATAHUB_EXECUTOR_DLQ_URL)", 1).await;
    assert_eq!(garbage.len(), 1, "{}", context("garbage consumed"));
    assert_eq!(garbage[0]["message_id"], "m-garbage");

    // 2. SQS delivers the valid message again: a duplicate, neither launched nor written again.
    let id = api.invoke(sqs_event(&[("m-valid", &valid, "rh-valid-2", 2)], QUEUE_ARN));
    let response = api.wait_response(&id, WAIT).await.unwrap_or_else(|e| panic!("{}", context(&e)));
    assert_eq!(response, json!({"batchItemFailures": []}));
    let duplicates = logs.wait_events("duplicate: not launched again", 1).await;
    assert_eq!(duplicates.len(), 1, "{}", context("a duplicate"));
    assert_eq!(duplicates[0]["exec_id"], "valid-1");
    assert_eq!(logs.events("launched").len(), 1, "{}", context("no second launch"));
    assert_eq!(gms.execution_results("valid-1").len(), 1, "no second RUNNING");

    // 3. GMS fails the read: the record goes back to SQS, by its message id; nothing is launched.
    gms.fail_next(Route::OpenApiBatch, 1, 503);
    let flaky = reference("valid-2");
    let id = api.invoke(sqs_event(&[("m-flaky", &flaky, "rh-flaky", 1)], QUEUE_ARN));
    let response = api.wait_response(&id, WAIT).await.unwrap_or_else(|e| panic!("{}", context(&e)));
    assert_eq!(response, json!({"batchItemFailures": [{"itemIdentifier": "m-flaky"}]}));
    assert!(gms.execution_results("valid-2").is_empty());
    assert_eq!(logs.events("launched").len(), 1, "{}", context("nothing launched on a failed read"));

    // The redelivery is admitted.
    let id = api.invoke(sqs_event(&[("m-flaky", &flaky, "rh-flaky-2", 2)], QUEUE_ARN));
    let response = api.wait_response(&id, WAIT).await.unwrap_or_else(|e| panic!("{}", context(&e)));
    assert_eq!(response, json!({"batchItemFailures": []}));
    assert_eq!(gms.execution_results("valid-2").len(), 1);
    assert!(api.init_errors().is_empty(), "{:?}", api.init_errors());

    child.kill().await.expect("stop the admission binary");
}
