//! Secret hygiene over a full run: 50 secrets, 10 from each store (env, file, datahub, aws-sm,
//! gcp-sm), concatenated into one PostgreSQL password. The real `admission` binary admits the
//! request (ECS launcher on moto), the job spec ECS stored runs in the real `ingest-job`, which
//! authenticates to a real PostgreSQL with the password — so every value arrived byte for byte —
//! and no value, nor its escaped or URL-encoded form, appears in any log line, GMS request, launch
//! request, error message or file written by admission or job.

use std::process::Stdio;
use std::time::Duration;

use aws_sdk_ecs::types as et;
use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use integration_tests::gcp_sm::GcpSecretManager;
use integration_tests::jobrun::{JobSandbox, files_containing, workspace_bin};
use integration_tests::lambda_api::{LambdaApi, sqs_event};
use integration_tests::moto::{Moto, unique_name};
use integration_tests::{GmsEmulator, Postgres, test_venv};
use serde_json::json;
use shared::launcher::JOB_SPEC_ENV;

const TOKEN: &str = "hygiene-gms-token";
const STORES: [&str; 5] = ["ENV", "FILE", "DH", "AWS", "GCP"];

/// Every form a leak of `v` could take.
fn renderings(v: &str) -> Vec<String> {
    let json = serde_json::to_string(v).expect("json");
    let pct = |plus: bool| -> String {
        v.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b'-' | b'~' => (b as char).to_string(),
                b' ' if plus => "+".into(),
                _ => format!("%{b:02X}"),
            })
            .collect()
    };
    let py = v.replace('\\', "\\\\").replace('\'', "\\'").replace('\n', "\\n");
    vec![v.to_owned(), json.trim_matches('"').to_owned(), pct(false), pct(true), py]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_secrets_from_every_store_never_leak() {
    let Some(venv) = test_venv("secret_hygiene") else { return };
    let Some(moto) = Moto::start_or_skip("secret_hygiene").await else { return };
    let gms = GmsEmulator::start(TOKEN).await;
    let gcp = GcpSecretManager::start("hygiene-project").await;
    let api = LambdaApi::start();
    let conf = moto.sdk_config().await;
    let (sqs, ecs, sm) =
        (aws_sdk_sqs::Client::new(&conf), aws_sdk_ecs::Client::new(&conf), aws_sdk_secretsmanager::Client::new(&conf));
    let mut sandbox = JobSandbox::new(&venv).with_gms(&gms.url(), TOKEN);

    // The secrets: unique, with the characters that break naive handling.
    let mut secrets = Vec::new();
    for store in STORES {
        for i in 1..=10 {
            let name = format!("{store}_S_{i}");
            let value = format!("{store}{i}-$x\\y'q\"#:z /@é{i}%2F+");
            secrets.push((name, value));
        }
    }
    for (name, value) in &secrets {
        match name.split('_').next().unwrap_or_default() {
            "ENV" => sandbox.set(name, value),
            "FILE" => sandbox.file_secret(name, value),
            "DH" => gms.set_secret(name, value),
            "AWS" => {
                sm.create_secret()
                    .name(format!("datahub-{name}"))
                    .secret_string(value)
                    .send()
                    .await
                    .expect("aws secret");
            }
            _ => gcp.put(&format!("datahub-{name}"), value),
        }
    }
    let password: String = secrets.iter().map(|(_, v)| v.as_str()).collect();
    let reference: String = secrets.iter().map(|(n, _)| format!("${{{n}}}")).collect();
    let pg = Postgres::start().expect("PostgreSQL");
    pg.create_role("hygiene", &password);
    pg.create_database("hygienedb", "hygiene");
    pg.psql("hygienedb", "CREATE TABLE public.t (id int); ALTER TABLE public.t OWNER TO hygiene;").expect("table");

    let recipe = json!({"source": {"type": "postgres", "config": {
        "host_port": pg.host_port(), "database": "hygienedb", "username": "hygiene", "password": reference,
        "profiling": {"enabled": false}}}});
    gms.put_aspect(
        "urn:li:dataHubExecutionRequest:hygiene-1",
        "dataHubExecutionRequestInput",
        json!({"task": "RUN_INGEST", "executorId": "remote",
               "args": {"recipe": recipe.to_string(), "version": "native", "debug_mode": "false"}}),
    );

    // AWS side: queue, cluster, task definition whose secrets are the env-store names.
    let queue_url = sqs.create_queue().queue_name(unique_name("hyg")).send().await.expect("q").queue_url.expect("url");
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
    let cluster = unique_name("hyg");
    ecs.create_cluster().cluster_name(&cluster).send().await.expect("cluster");
    let mut container = et::ContainerDefinition::builder().name("ingest-job").image("ingest-job:test").memory(2048);
    for i in 1..=10 {
        container = container.secrets(
            et::Secret::builder()
                .name(format!("ENV_S_{i}"))
                .value_from(format!("arn:aws:secretsmanager:us-east-1:123456789012:secret:env-{i}"))
                .build()
                .expect("secret"),
        );
    }
    let family = unique_name("ingest-job");
    ecs.register_task_definition()
        .family(&family)
        .requires_compatibilities(et::Compatibility::Fargate)
        .network_mode(et::NetworkMode::Awsvpc)
        .cpu("1024")
        .memory("2048")
        .container_definitions(container.build())
        .send()
        .await
        .expect("task definition");
    moto.set_ecs_task_transition(Some(1000)).await.expect("transition");

    // Both processes get the same store settings; the job also holds the env-store values.
    let file_names: Vec<String> = (1..=10).map(|i| format!("FILE_S_{i}")).collect();
    let mut common: Vec<(String, String)> = vec![
        ("AWS_ENDPOINT_URL".into(), moto.url().to_owned()),
        ("AWS_REGION".into(), "us-east-1".into()),
        ("AWS_ACCESS_KEY_ID".into(), "test".into()),
        ("AWS_SECRET_ACCESS_KEY".into(), "test".into()),
        ("DATAHUB_EXECUTOR_AWS_SM_ENABLED".into(), "true".into()),
        ("DATAHUB_EXECUTOR_AWS_SM_REGION".into(), "us-east-1".into()),
    ];
    common.extend(gcp.env());
    for (k, v) in &common {
        sandbox.set(k, v);
    }
    let logs = sandbox.root.path().join("logs");
    std::fs::create_dir_all(&logs).expect("logs dir");
    let file = |name: &str| std::fs::File::create(logs.join(name)).expect("log file");

    let mut admission = tokio::process::Command::new(workspace_bin("admission"));
    admission
        .env_clear()
        .envs(std::env::vars().filter(|(k, _)| k == "PATH" || k == "HOME"))
        .envs(common.iter().cloned())
        .env("AWS_LAMBDA_RUNTIME_API", api.addr_string())
        .env("AWS_LAMBDA_FUNCTION_NAME", "admission")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
        .env("RUST_LOG", "debug")
        .env("DATAHUB_GMS_URL", gms.url())
        .env("DATAHUB_GMS_TOKEN", TOKEN)
        .env("DATAHUB_EXECUTOR_POOL_ID", "remote")
        .env("DATAHUB_EXECUTOR_LAUNCHER", "ecs")
        .env("DATAHUB_EXECUTOR_ECS_CLUSTER", &cluster)
        .env("DATAHUB_EXECUTOR_ECS_TASK_DEFINITION", &family)
        .env("DATAHUB_EXECUTOR_ECS_SUBNETS", moto.default_subnet().await.expect("subnet"))
        .env("DATAHUB_EXECUTOR_ECS_SECURITY_GROUPS", moto.default_security_group().await.expect("sg"))
        .env("DATAHUB_EXECUTOR_FILE_SECRET_NAMES", file_names.join(","))
        .stdin(Stdio::null())
        .stdout(file("admission.out"))
        .stderr(file("admission.err"))
        .kill_on_drop(true);
    let mut lambda = admission.spawn().expect("admission");
    api.wait_ready(Duration::from_secs(30)).await.expect("ready");

    sqs.send_message()
        .queue_url(&queue_url)
        .message_body(json!({"executionRequestUrn": "urn:li:dataHubExecutionRequest:hygiene-1"}).to_string())
        .send()
        .await
        .expect("send");
    let received = sqs
        .receive_message()
        .queue_url(&queue_url)
        .wait_time_seconds(1)
        .message_system_attribute_names(MessageSystemAttributeName::All)
        .send()
        .await
        .expect("receive");
    let [msg] = received.messages() else { panic!("one message") };
    let id = api.invoke(sqs_event(
        &[(msg.message_id().unwrap_or(""), msg.body().unwrap_or(""), msg.receipt_handle().unwrap_or(""), 1)],
        &queue_arn,
    ));
    let response = api.wait_response(&id, Duration::from_secs(60)).await.expect("response");
    assert_eq!(response, json!({"batchItemFailures": []}));
    let _ = lambda.kill().await;

    // The spec as ECS stored it: the launch request, read back.
    let arns = ecs.list_tasks().cluster(&cluster).send().await.expect("list").task_arns.unwrap_or_default();
    let tasks = ecs.describe_tasks().cluster(&cluster).set_tasks(Some(arns)).send().await.expect("describe");
    let [task] = tasks.tasks() else { panic!("one task: {tasks:?}") };
    let overrides = format!("{:?}", task.overrides());
    let spec = task
        .overrides()
        .and_then(|o| o.container_overrides().first())
        .and_then(|c| c.environment().iter().find(|e| e.name() == Some(JOB_SPEC_ENV)))
        .and_then(|e| e.value())
        .expect("the spec")
        .to_owned();
    let plan: serde_json::Value = serde_json::from_str(&spec).expect("spec json");
    for store in ["env", "file", "datahub", "aws-sm", "gcp-sm"] {
        assert_eq!(
            plan["secret_plan"].as_object().map(|p| p.values().filter(|s| *s == store).count()),
            Some(10),
            "{store}: {plan}"
        );
    }

    // The job, as the container would run it.
    let job = sandbox
        .command(&["job"])
        .env(JOB_SPEC_ENV, &spec)
        .stdout(file("job.out"))
        .stderr(file("job.err"))
        .spawn()
        .expect("job");
    let status =
        tokio::time::timeout(Duration::from_secs(240), job.wait_with_output()).await.expect("in time").expect("job");
    let job_err = std::fs::read_to_string(logs.join("job.err")).unwrap_or_default();
    assert_eq!(status.status.code(), Some(0), "{job_err}");
    let done = gms.wait_for_status("hygiene-1", "SUCCESS", Duration::from_secs(5)).await.expect("SUCCESS");
    assert!(gms.dataset_urns().iter().any(|u| u.contains("hygienedb.public.t")), "the password authenticated");
    assert!(done["report"].as_str().is_some_and(|r| r.contains("Successfully executed 'datahub ingest'")));
    // The scans below look at the right things: names are there, values are not.
    assert!(spec.contains("${ENV_S_1}") && spec.contains("${GCP_S_10}"), "{spec}");
    assert!(!files_containing(&sandbox.root.path().join("secrets"), b"FILE1-").is_empty(), "the file scan sees files");

    // Nowhere: logs (admission and job), GMS requests, the launch request, files written.
    let requests: Vec<String> = gms
        .requests()
        .iter()
        .map(|r| format!("{} {}?{} {:?} {}", r.method, r.path, r.query.clone().unwrap_or_default(), r.headers, r.body))
        .collect();
    let secrets_dir = sandbox.root.path().join("secrets");
    let moto_log = std::fs::read_to_string(moto.log()).unwrap_or_default();
    let mut checked = 0;
    for (name, value) in &secrets {
        for leak in renderings(value) {
            for log in ["admission.out", "admission.err", "job.out", "job.err"] {
                let text = std::fs::read_to_string(logs.join(log)).unwrap_or_default();
                assert!(!text.contains(&leak), "{name} leaks into {log} as {leak:?}");
            }
            assert!(!requests.iter().any(|r| r.contains(&leak)), "{name} leaks into a GMS request as {leak:?}");
            assert!(!overrides.contains(&leak) && !spec.contains(&leak), "{name} leaks into the launch request");
            assert!(!moto_log.contains(&leak), "{name} leaks into the AWS request log");
            let files: Vec<_> = files_containing(sandbox.root.path(), leak.as_bytes())
                .into_iter()
                .filter(|p| !p.starts_with(&secrets_dir))
                .collect();
            assert!(files.is_empty(), "{name} leaks into files {files:?}");
            checked += 1;
        }
    }
    assert_eq!(checked, 250);
    assert!(gcp.paths().iter().any(|p| p.ends_with("versions/latest:access")), "the gcp-sm store was read");
}
