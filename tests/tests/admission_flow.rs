//! The whole local flow in one test: a message on the (moto) SQS queue → the real `admission`
//! binary under a local Lambda Runtime API → the local launcher → `ingest-job job` → the real
//! `datahub ingest` → the GMS emulator shows SUCCESS.

use std::process::Stdio;
use std::time::Duration;

use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use integration_tests::jobrun::{JobSandbox, ingest_job_bin, workspace_bin};
use integration_tests::lambda_api::{LambdaApi, sqs_event};
use integration_tests::moto::{Moto, unique_name};
use integration_tests::{GmsEmulator, test_venv};
use serde_json::json;

const TOKEN: &str = "flow-token";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_message_to_success_through_the_real_binaries() {
    let Some(venv) = test_venv("admission_flow") else { return };
    let Some(moto) = Moto::start_or_skip("admission_flow").await else { return };
    let gms = GmsEmulator::start(TOKEN).await;
    let api = LambdaApi::start();
    let sqs = aws_sdk_sqs::Client::new(&moto.sdk_config().await);
    let queue_url =
        sqs.create_queue().queue_name(unique_name("flow")).send().await.expect("queue").queue_url.expect("url");
    let queue_arn = sqs
        .get_queue_attributes()
        .queue_url(&queue_url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .expect("attrs")
        .attributes()
        .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
        .expect("arn");

    // The request, as DataHub stores it, for this pool.
    let sandbox = JobSandbox::new(&venv).with_gms(&gms.url(), TOKEN);
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/demo-metadata.json");
    let out = sandbox.root.path().join("flow-output.json");
    let recipe = json!({"source": {"type": "file", "config": {"path": data}},
        "sink": {"type": "file", "config": {"filename": out.display().to_string()}}});
    gms.put_aspect(
        "urn:li:dataHubExecutionRequest:flow-1",
        "dataHubExecutionRequestInput",
        json!({"task": "RUN_INGEST", "executorId": "remote",
               "args": {"recipe": recipe.to_string(), "version": "native", "debug_mode": "false"}}),
    );
    sqs.send_message()
        .queue_url(&queue_url)
        .message_body(json!({"executionRequestUrn": "urn:li:dataHubExecutionRequest:flow-1"}).to_string())
        .send()
        .await
        .expect("send");

    // The admission binary, as Lambda runs it; its local jobs inherit the sandbox's environment.
    let mut admission = tokio::process::Command::new(workspace_bin("admission"));
    admission
        .env_clear()
        .envs(&sandbox.env)
        .env("AWS_LAMBDA_RUNTIME_API", api.addr_string())
        .env("AWS_LAMBDA_FUNCTION_NAME", "admission")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
        .env("DATAHUB_EXECUTOR_POOL_ID", "remote")
        .env("DATAHUB_EXECUTOR_LAUNCHER", "local")
        .env("DATAHUB_EXECUTOR_LOCAL_JOB_BIN", ingest_job_bin())
        .env("AWS_ENDPOINT_URL", moto.url())
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .current_dir(sandbox.root.path())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let mut lambda = admission.spawn().expect("start admission");
    api.wait_ready(Duration::from_secs(30)).await.expect("the runtime asks for work");

    // The event source mapping: receive, invoke, delete what did not fail.
    let received = sqs
        .receive_message()
        .queue_url(&queue_url)
        .wait_time_seconds(1)
        .message_system_attribute_names(MessageSystemAttributeName::All)
        .send()
        .await
        .expect("receive");
    let [msg] = received.messages() else { panic!("one message: {received:?}") };
    let (id, receipt, body) =
        (msg.message_id().unwrap_or(""), msg.receipt_handle().unwrap_or(""), msg.body().unwrap_or(""));
    let request_id = api.invoke(sqs_event(&[(id, body, receipt, 1)], &queue_arn));
    let response = api.wait_response(&request_id, Duration::from_secs(60)).await.expect("a response");
    assert_eq!(response, json!({"batchItemFailures": []}));
    sqs.delete_message().queue_url(&queue_url).receipt_handle(receipt).send().await.expect("delete");

    let admitted = gms.wait_for_status("flow-1", "RUNNING", Duration::from_secs(10)).await.expect("RUNNING");
    assert!(
        admitted["report"].as_str().is_some_and(|r| r.contains("Admitted by admission for executor pool remote")),
        "{admitted}"
    );
    let done = gms.wait_for_status("flow-1", "SUCCESS", Duration::from_secs(180)).await.expect("SUCCESS");
    assert!(done["report"].as_str().is_some_and(|r| r.contains("Successfully executed 'datahub ingest'")), "{done}");
    assert!(out.exists(), "the ingestion wrote its output");
    let _ = lambda.kill().await;
}
