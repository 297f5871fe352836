//! The admission handler against a real local SQS and ECS API (moto) and the GMS emulator: a batch
//! of mixed messages ends with one launch per valid request, FAILURE reports for invalid ones, and
//! every message launched, reported, back in the queue or in the DLQ.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use admission::handler::{App, Queue, handle};
use aws_lambda_events::event::sqs::SqsEvent;
use aws_sdk_ecs::types as et;
use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use integration_tests::moto::{Moto, unique_name};
use integration_tests::{GmsEmulator, Route};
use lambda_runtime::{Context, LambdaEvent};
use serde_json::{Value, json};
use shared::admission::AdmissionConfig;
use shared::config::GmsConfig;
use shared::gms::GmsClient;
use shared::launcher::ecs::{EcsConfig, EcsLauncher};
use shared::launcher::{TAG_EXECUTION_ID, TAG_WEIGHT};

const TOKEN: &str = "admission-token";

fn input(pool: &str, recipe: Value, weight: Option<&str>) -> Value {
    let mut args = json!({"recipe": recipe.to_string(), "version": "1.7.0.17", "debug_mode": "false"});
    if let Some(w) = weight {
        args["extra_env_vars"] = json!(json!({"EXECUTOR_TASK_WEIGHT": w}).to_string());
    }
    json!({"task": "RUN_INGEST", "executorId": pool, "args": args, "source": {"type": "MANUAL_INGESTION_SOURCE"}})
}

fn file_recipe(path: &str) -> Value {
    json!({"source": {"type": "file", "config": {"path": path}}})
}

struct World {
    _moto: Moto,
    gms: GmsEmulator,
    sqs: aws_sdk_sqs::Client,
    ecs: aws_sdk_ecs::Client,
    queue_url: String,
    queue_arn: String,
    dlq_url: String,
    cluster: String,
    app: App,
}

async fn world(test: &str, max_workers: usize) -> Option<World> {
    let moto = Moto::start_or_skip(test).await?;
    let conf = moto.sdk_config().await;
    let sqs = aws_sdk_sqs::Client::new(&conf);
    let ecs = aws_sdk_ecs::Client::new(&conf);
    let gms = GmsEmulator::start(TOKEN).await;

    let dlq_url = sqs.create_queue().queue_name(unique_name("dlq")).send().await.expect("dlq").queue_url.expect("url");
    let dlq_arn = queue_arn(&sqs, &dlq_url).await;
    let redrive = json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "5"}).to_string();
    let queue_url = sqs
        .create_queue()
        .queue_name(unique_name("pool"))
        .attributes(QueueAttributeName::VisibilityTimeout, "60")
        .attributes(QueueAttributeName::RedrivePolicy, redrive)
        .send()
        .await
        .expect("queue")
        .queue_url
        .expect("url");
    let queue_arn = queue_arn(&sqs, &queue_url).await;

    let cluster = unique_name("cluster");
    ecs.create_cluster().cluster_name(&cluster).send().await.expect("cluster");
    let family = unique_name("ingest-job");
    ecs.register_task_definition()
        .family(&family)
        .requires_compatibilities(et::Compatibility::Fargate)
        .network_mode(et::NetworkMode::Awsvpc)
        .cpu("1024")
        .memory("2048")
        .container_definitions(
            et::ContainerDefinition::builder()
                .name("ingest-job")
                .image("datahub-ingest-job:latest")
                .memory(2048)
                .secrets(
                    et::Secret::builder()
                        .name("JOB_DB_PASSWORD")
                        .value_from("arn:aws:secretsmanager:us-east-1:123456789012:secret:pw")
                        .build()
                        .expect("secret"),
                )
                .build(),
        )
        .send()
        .await
        .expect("task definition");
    // Tasks stay RUNNING until stopped.
    moto.set_ecs_task_transition(Some(1000)).await.expect("transition");
    let config = EcsConfig {
        cluster: cluster.clone(),
        task_definition: family,
        container: "ingest-job".into(),
        subnets: vec![moto.default_subnet().await.expect("subnet")],
        security_groups: vec![moto.default_security_group().await.expect("sg")],
        assign_public_ip: false,
        capacity_provider: None,
        platform_version: None,
    };
    let gms_client =
        GmsClient::new(&GmsConfig { url: gms.url(), token: Some(TOKEN.to_owned().into()) }).expect("client");
    let app = App {
        config: AdmissionConfig {
            pool: "remote".into(),
            max_workers,
            file_secret_names: BTreeSet::new(),
            admitted_by: "admission-test".into(),
        },
        gms: Box::new(gms_client),
        launcher: Box::new(EcsLauncher::new(ecs.clone(), config)),
        cloud: Vec::new(),
        queue: Some(Queue::new(sqs.clone(), Some(dlq_url.clone()))),
        backoff_base: Duration::from_secs(30),
        backoff_max: Duration::from_secs(900),
    };
    Some(World { _moto: moto, gms, sqs, ecs, queue_url, queue_arn, dlq_url, cluster, app })
}

async fn queue_arn(sqs: &aws_sdk_sqs::Client, url: &str) -> String {
    let attrs = sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .expect("attrs");
    attrs.attributes().and_then(|a| a.get(&QueueAttributeName::QueueArn)).cloned().expect("arn")
}

impl World {
    async fn send(&self, body: &str) -> String {
        self.sqs
            .send_message()
            .queue_url(&self.queue_url)
            .message_body(body)
            .send()
            .await
            .expect("send")
            .message_id
            .expect("id")
    }

    /// Receives up to `n` visible messages and builds the event Lambda would deliver.
    async fn receive(&self, n: usize) -> (SqsEvent, Vec<(String, String)>) {
        let mut records = Vec::new();
        let mut handles = Vec::new();
        while records.len() < n {
            let out = self
                .sqs
                .receive_message()
                .queue_url(&self.queue_url)
                .max_number_of_messages(10)
                .wait_time_seconds(1)
                .message_system_attribute_names(MessageSystemAttributeName::All)
                .send()
                .await
                .expect("receive");
            let msgs = out.messages.unwrap_or_default();
            if msgs.is_empty() {
                break;
            }
            for m in msgs {
                let attrs: BTreeMap<String, String> = m
                    .attributes()
                    .map(|a| a.iter().map(|(k, v)| (k.as_str().to_owned(), v.clone())).collect())
                    .unwrap_or_default();
                let id = m.message_id.clone().unwrap_or_default();
                let receipt = m.receipt_handle.clone().unwrap_or_default();
                handles.push((id.clone(), receipt.clone()));
                records.push(json!({
                    "messageId": id, "receiptHandle": receipt, "body": m.body.clone().unwrap_or_default(),
                    "attributes": attrs, "messageAttributes": {}, "md5OfBody": m.md5_of_body.clone().unwrap_or_default(),
                    "eventSource": "aws:sqs", "eventSourceARN": self.queue_arn, "awsRegion": "us-east-1"
                }));
            }
        }
        (serde_json::from_value(json!({"Records": records})).expect("an SQS event"), handles)
    }

    /// What the event source mapping does after the handler: delete every record not in the failures.
    async fn settle(&self, handles: &[(String, String)], failures: &BTreeSet<String>) {
        for (id, receipt) in handles {
            if !failures.contains(id) {
                self.sqs
                    .delete_message()
                    .queue_url(&self.queue_url)
                    .receipt_handle(receipt)
                    .send()
                    .await
                    .expect("delete");
            }
        }
    }

    /// exec id → weight of every task the cluster has, live or not.
    async fn tasks(&self) -> Vec<(String, f64)> {
        let arns =
            self.ecs.list_tasks().cluster(&self.cluster).send().await.expect("list").task_arns.unwrap_or_default();
        if arns.is_empty() {
            return Vec::new();
        }
        let out = self
            .ecs
            .describe_tasks()
            .cluster(&self.cluster)
            .set_tasks(Some(arns))
            .include(et::TaskField::Tags)
            .send()
            .await
            .expect("describe");
        out.tasks()
            .iter()
            .map(|t| {
                let tag = |k: &str| {
                    t.tags().iter().find(|x| x.key() == Some(k)).and_then(|x| x.value()).unwrap_or("").to_owned()
                };
                (tag(TAG_EXECUTION_ID), tag(TAG_WEIGHT).parse().unwrap_or(0.0))
            })
            .collect()
    }
}

fn failures(resp: &aws_lambda_events::event::sqs::SqsBatchResponse) -> BTreeSet<String> {
    let v = serde_json::to_value(resp).expect("json");
    v["batchItemFailures"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f["itemIdentifier"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_batch_on_moto_launches_each_valid_request_once_and_loses_nothing() {
    let Some(w) = world("mixed_batch_on_moto", 4).await else { return };
    w.gms.set_secret("PG_PASSWORD", "datahub-value");
    let reference =
        |id: &str| json!({"executionRequestUrn": format!("urn:li:dataHubExecutionRequest:{id}")}).to_string();
    let seed = |id: &str, v: Value| {
        w.gms.put_aspect(&format!("urn:li:dataHubExecutionRequest:{id}"), "dataHubExecutionRequestInput", v)
    };
    seed("valid-1", input("remote", file_recipe("${PG_PASSWORD}"), None));
    seed("valid-2", input("remote", file_recipe("${JOB_DB_PASSWORD}"), None));
    seed("other-pool", input("elsewhere", file_recipe("x"), None));
    seed("missing-secret", input("remote", file_recipe("${NO_SUCH_SECRET}"), None));
    seed("heavy-1", input("remote", file_recipe("x"), Some("0.5")));
    seed("heavy-2", input("remote", file_recipe("x"), Some("0.5")));

    let mut sent = BTreeMap::new();
    for (label, body) in [
        ("valid-1", reference("valid-1")),
        ("valid-1 again", reference("valid-1")),
        ("valid-2", reference("valid-2")),
        ("other-pool", reference("other-pool")),
        ("garbage", "this is not a message".to_owned()),
        ("missing-secret", reference("missing-secret")),
        ("heavy-1", reference("heavy-1")),
        ("heavy-2", reference("heavy-2")),
    ] {
        sent.insert(w.send(&body).await, label);
    }
    let (event, handles) = w.receive(sent.len()).await;
    assert_eq!(handles.len(), sent.len(), "every message was received");
    let resp =
        handle(&w.app, LambdaEvent::new(event, Context::default())).await.expect("the handler never fails a batch");
    let failed = failures(&resp);
    w.settle(&handles, &failed).await;

    // Exactly one task per launched request; the capacity (1.0, 4 jobs) holds.
    let tasks = w.tasks().await;
    let mut per_exec: BTreeMap<String, usize> = BTreeMap::new();
    for (id, _) in &tasks {
        *per_exec.entry(id.clone()).or_default() += 1;
    }
    assert!(per_exec.values().all(|n| *n == 1), "one launch per request: {per_exec:?}");
    let total: f64 = tasks.iter().map(|(_, w)| w).sum();
    assert!(tasks.len() <= 4 && total <= 1.0 + 1e-9, "capacity: {tasks:?}");
    for id in ["other-pool", "missing-secret"] {
        assert!(!per_exec.contains_key(id), "{id} must not launch");
    }

    // Every valid request is either launched (with RUNNING in GMS) or back in the queue.
    let failed_labels: BTreeSet<&str> = failed.iter().filter_map(|id| sent.get(id).copied()).collect();
    for id in ["valid-1", "valid-2", "heavy-1", "heavy-2"] {
        let launched = per_exec.contains_key(id);
        let deferred = failed_labels.contains(id);
        assert!(launched ^ deferred, "{id}: launched={launched} deferred={deferred}");
        let statuses: Vec<String> =
            w.gms.execution_results(id).iter().map(|r| r["status"].as_str().unwrap_or("").to_owned()).collect();
        assert_eq!(statuses, if launched { vec!["RUNNING".to_owned()] } else { vec![] }, "{id}");
    }
    // Two heavy requests of 0.5 and two of 0.25 cannot all fit in 1.0: something waits.
    assert!(!failed_labels.is_empty(), "over-capacity requests go back to the queue: {failed_labels:?}");
    assert!(
        failed_labels.iter().all(|l| ["valid-1", "valid-2", "heavy-1", "heavy-2"].contains(l)),
        "{failed_labels:?}"
    );

    // The invalid request is reported FAILURE with its reason; the other pool's is untouched.
    let failure = w.gms.wait_for_status("missing-secret", "FAILURE", Duration::from_secs(5)).await.expect("FAILURE");
    assert!(failure["report"].as_str().is_some_and(|r| r.contains("NO_SUCH_SECRET")), "{failure}");
    assert!(w.gms.execution_results("other-pool").is_empty());

    // Garbage is in the DLQ; deferred messages are invisible (backoff), the rest deleted.
    let dlq = w.sqs.receive_message().queue_url(&w.dlq_url).max_number_of_messages(10).send().await.expect("dlq");
    let bodies: Vec<String> = dlq.messages().iter().filter_map(|m| m.body.clone()).collect();
    assert_eq!(bodies, vec!["this is not a message".to_owned()]);
    let attrs = w
        .sqs
        .get_queue_attributes()
        .queue_url(&w.queue_url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .expect("attrs");
    let count = |k: QueueAttributeName| -> usize {
        attrs.attributes().and_then(|a| a.get(&k)).and_then(|v| v.parse().ok()).unwrap_or(usize::MAX)
    };
    assert_eq!(count(QueueAttributeName::ApproximateNumberOfMessages), 0, "nothing visible right now");
    assert_eq!(
        count(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
        failed.len(),
        "only deferred messages remain"
    );

    // A later delivery of a launched request is a duplicate.
    let again = w.send(&reference("valid-2")).await;
    let (event, handles) = w.receive(1).await;
    let resp = handle(&w.app, LambdaEvent::new(event, Context::default())).await.expect("handler");
    assert!(failures(&resp).is_empty() || !per_exec.contains_key("valid-2"), "{again}");
    w.settle(&handles, &failures(&resp)).await;
    let after: usize = w.tasks().await.iter().filter(|(id, _)| id == "valid-2").count();
    assert_eq!(after, usize::from(per_exec.contains_key("valid-2")), "no second launch of valid-2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gms_outage_returns_records_for_redelivery() {
    let Some(w) = world("gms_outage_on_moto", 4).await else { return };
    w.gms.put_aspect(
        "urn:li:dataHubExecutionRequest:r1",
        "dataHubExecutionRequestInput",
        input("remote", file_recipe("x"), None),
    );
    let id = w.send(&json!({"executionRequestUrn": "urn:li:dataHubExecutionRequest:r1"}).to_string()).await;
    w.gms.fail_next(Route::OpenApiBatch, 1, 503);
    let (event, handles) = w.receive(1).await;
    let resp = handle(&w.app, LambdaEvent::new(event, Context::default())).await.expect("handler");
    assert_eq!(failures(&resp), BTreeSet::from([id]));
    w.settle(&handles, &failures(&resp)).await;
    assert!(w.tasks().await.is_empty());
}
