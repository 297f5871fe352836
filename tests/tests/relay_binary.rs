//! The real `relay` binary (main(), the `lambda_runtime` glue, the JSON summary it answers)
//! against a fake Lambda Runtime API, the GMS emulator and moto (SQS, DynamoDB): a scheduled
//! event enqueues the pending requests; a GMS outage fails the invocation so it is retried; the
//! next run finds nothing new to enqueue.

use std::process::Stdio;
use std::time::Duration;

use integration_tests::jobrun::workspace_bin;
use integration_tests::lambda_api::LambdaApi;
use integration_tests::moto::Moto;
use integration_tests::relay_support::{create_ledger, create_queue, drain, now_ms};
use integration_tests::{GmsEmulator, Route};
use serde_json::json;

const TOKEN: &str = "relay-binary-token";
const WAIT: Duration = Duration::from_secs(60);

fn scheduled_event() -> serde_json::Value {
    json!({"version": "0", "id": "e1", "detail-type": "Scheduled Event", "source": "aws.events",
           "account": "123456789012", "time": "2026-12-01T00:00:00Z", "region": "us-east-1",
           "resources": ["arn:aws:events:us-east-1:123456789012:rule/relay"], "detail": {}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_binary_answers_scheduled_events_with_a_summary() {
    let Some(moto) = Moto::start_or_skip("relay_binary").await else { return };
    let sdk = moto.sdk_config().await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let queue_url = create_queue(&sqs, "pool").await;
    let table = create_ledger(&aws_sdk_dynamodb::Client::new(&sdk)).await;
    let gms = GmsEmulator::start(TOKEN).await;
    gms.set_remote_executor_backend(Some(2));
    for i in 0..3 {
        gms.put_aspect(
            &format!("urn:li:dataHubExecutionRequest:bin-{i}"),
            "dataHubExecutionRequestInput",
            json!({"task": "RUN_INGEST", "executorId": "remote", "requestedAt": now_ms() - 1000,
                   "args": {"recipe": "{}", "version": "1.7.0.17"}}),
        );
    }
    let api = LambdaApi::start();
    let mut child = tokio::process::Command::new(workspace_bin("relay"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("AWS_LAMBDA_RUNTIME_API", api.addr_string())
        .env("AWS_LAMBDA_FUNCTION_NAME", "relay")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
        .env("AWS_LAMBDA_LOG_FORMAT", "JSON")
        .env("DATAHUB_GMS_URL", gms.url())
        .env("DATAHUB_GMS_TOKEN", TOKEN)
        .env("DATAHUB_EXECUTOR_POOL_ID", "remote")
        .env("DATAHUB_EXECUTOR_RELAY_MODE", "self-hosted")
        .env("DATAHUB_EXECUTOR_QUEUE_URL", &queue_url)
        .env("DATAHUB_EXECUTOR_RELAY_LEDGER_TABLE", &table)
        // With the local launcher the sweeper turns itself off (it cannot see other processes' jobs).
        .env("DATAHUB_EXECUTOR_LAUNCHER", "local")
        .env("AWS_ENDPOINT_URL", moto.url())
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start the relay binary");
    api.wait_ready(WAIT).await.expect("the relay asks for work");

    let id = api.invoke(scheduled_event());
    let summary = api.wait_response(&id, WAIT).await.expect("a summary");
    assert_eq!(summary["mode"], "self-hosted", "{summary}");
    assert_eq!(summary["enqueued"], 3, "{summary}");
    assert_eq!(summary["already_enqueued"], 0, "{summary}");
    assert_eq!(summary["status"], "emitted", "{summary}");
    assert_eq!(summary["swept"], 0, "{summary}");
    assert_eq!(summary["retry"], false, "{summary}");

    // GMS down for the scan: the invocation fails, so it is retried and shows in the metrics.
    gms.fail_next(Route::OpenApiScrollV2, 1, 503);
    let id = api.invoke(scheduled_event());
    let err = api.wait_response(&id, WAIT).await.expect_err("the invocation fails");
    assert!(err.contains("retry") && err.contains("503"), "{err}");

    let id = api.invoke(scheduled_event());
    let summary = api.wait_response(&id, WAIT).await.expect("a summary");
    assert_eq!((summary["enqueued"].clone(), summary["already_enqueued"].clone()), (json!(0), json!(3)), "{summary}");
    let mut ids: Vec<String> = drain(&sqs, &queue_url).await;
    ids.sort();
    assert_eq!(ids, (0..3).map(|i| shared::message::reference_body(&format!("bin-{i}"))).collect::<Vec<_>>());
    assert!(api.init_errors().is_empty(), "{:?}", api.init_errors());
    child.kill().await.expect("stop the relay binary");
}
