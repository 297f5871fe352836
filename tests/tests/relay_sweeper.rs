//! The sweeper against the GMS emulator and a real ECS API (moto), with the ECS launcher: a
//! RUNNING request whose task was stopped is marked FAILURE with the reason, a live one is left
//! alone, a RUNNING one still within the grace is left alone, and a request that waited for
//! capacity past the threshold is failed with that reason.

use std::collections::BTreeMap;

use aws_sdk_ecs::types as et;
use integration_tests::GmsEmulator;
use integration_tests::moto::{Moto, unique_name};
use integration_tests::relay_support::{identity, now_ms, relay_config, started};
use integration_tests::{test_venv, validate_proposals};
use serde_json::{Value, json};
use shared::gms::GmsClient;
use shared::launcher::ecs::{EcsConfig, EcsLauncher};
use shared::launcher::{JobSpec, Launcher};
use shared::relay::Relay;

const TOKEN: &str = "relay-sweeper-token";

fn seed(gms: &GmsEmulator, exec_id: &str, requested_at: i64) -> String {
    let urn = format!("urn:li:dataHubExecutionRequest:{exec_id}");
    gms.put_aspect(
        &urn,
        "dataHubExecutionRequestInput",
        json!({"task": "RUN_INGEST", "executorId": "remote", "requestedAt": requested_at,
               "args": {"recipe": "{\"source\": {\"type\": \"file\"}}", "version": "1.7.0.17"},
               "source": {"type": "MANUAL_INGESTION_SOURCE", "ingestionSource": "urn:li:dataHubIngestionSource:s"}}),
    );
    urn
}

fn running(gms: &GmsEmulator, exec_id: &str, started_ms: i64, observed_ms: i64) {
    let urn = seed(gms, exec_id, started_ms - 1000);
    gms.put_aspect_observed(
        &urn,
        "dataHubExecutionRequestResult",
        json!({"status": "RUNNING", "startTimeMs": started_ms, "report": format!("log of {exec_id}\nlast line")}),
        observed_ms,
    );
}

fn spec(exec_id: &str) -> JobSpec {
    JobSpec {
        exec_id: exec_id.into(),
        pool: "remote".into(),
        task: "RUN_INGEST".into(),
        weight: 0.25,
        args: None,
        secret_plan: BTreeMap::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_request_whose_task_stopped_is_failed_and_a_live_one_is_left_alone() {
    let Some(moto) = Moto::start_or_skip("relay_sweeper").await else { return };
    // Tasks stay RUNNING until stopped.
    moto.set_ecs_task_transition(Some(100_000)).await.expect("transition");
    let sdk = moto.sdk_config().await;
    let ecs = aws_sdk_ecs::Client::new(&sdk);
    let cluster = unique_name("jobs");
    ecs.create_cluster().cluster_name(&cluster).send().await.expect("cluster");
    let family = unique_name("ingest-job");
    ecs.register_task_definition()
        .family(&family)
        .requires_compatibilities(et::Compatibility::Fargate)
        .network_mode(et::NetworkMode::Awsvpc)
        .cpu("1024")
        .memory("2048")
        .container_definitions(
            et::ContainerDefinition::builder().name("ingest-job").image("ingest-job:latest").memory(2048).build(),
        )
        .send()
        .await
        .expect("task definition");
    let launcher = EcsLauncher::new(
        ecs.clone(),
        EcsConfig {
            cluster: cluster.clone(),
            task_definition: family,
            container: "ingest-job".into(),
            subnets: vec![moto.default_subnet().await.expect("subnet")],
            security_groups: vec![moto.default_security_group().await.expect("sg")],
            assign_public_ip: false,
            capacity_provider: None,
            platform_version: None,
        },
    );
    launcher.launch(&spec("live-1")).await.expect("launch live-1");
    let dead = launcher.launch(&spec("dead-1")).await.expect("launch dead-1");
    launcher.stop(&dead.id, "the test kills the container").await.expect("stop dead-1");
    let jobs: Vec<String> = launcher.running("remote").await.expect("running").into_iter().map(|j| j.exec_id).collect();
    assert_eq!(jobs, vec!["live-1".to_string()], "moto shows the stopped task as gone");

    let gms = GmsEmulator::start(TOKEN).await;
    let now = now_ms();
    let ten_minutes_ago = now - 600_000;
    running(&gms, "live-1", now - 3_600_000, ten_minutes_ago);
    running(&gms, "dead-1", now - 3_600_000, ten_minutes_ago);
    // Its job is gone too, but RUNNING was written a moment ago (a launch the launcher does not
    // list yet): within the grace, left alone.
    running(&gms, "just-admitted", now - 5_000, now - 5_000);
    // Waited for capacity for three days (the default threshold is two), and one that just came.
    seed(&gms, "stale-1", now - 3 * 86_400_000);
    seed(&gms, "fresh-1", now - 60_000);

    let config = relay_config(
        &gms.url(),
        TOKEN,
        &[("DATAHUB_EXECUTOR_RELAY_MODE", "none"), ("DATAHUB_EXECUTOR_STATUS_ENABLED", "false")],
    );
    let client = GmsClient::new(&config.gms).expect("GMS client");
    let id = identity(&config);
    let relay = Relay {
        config: &config,
        gms: &client,
        launcher: Some(&launcher),
        outbox: None,
        ledger: None,
        sources: None,
        identity: &id,
        started: started(),
    };
    let s = relay.run("sweep-1", now).await;
    assert!(s.errors.is_empty(), "{s:?}");
    assert_eq!((s.swept_lost, s.swept_pending, s.swept), (1, 1, 2), "{s:?}");

    let dead_results = gms.execution_results("dead-1");
    let [failure] = dead_results.as_slice() else { panic!("one result for dead-1: {dead_results:?}") };
    assert_eq!(failure["status"], "FAILURE");
    assert_eq!(failure["startTimeMs"], json!(now - 3_600_000), "the original start is kept");
    let report = failure["report"].as_str().unwrap_or_default();
    assert!(report.contains("no live job of the pool for execution dead-1 in launcher ecs"), "{report}");
    assert!(report.contains("RUNNING was last observed at") && report.contains("600 s before this sweep"), "{report}");
    assert!(report.ends_with("\n\n---\nlog of dead-1\nlast line"), "the previous report is kept: {report}");

    assert!(gms.execution_results("live-1").is_empty(), "the live one is left alone");
    assert!(gms.execution_results("just-admitted").is_empty(), "within the grace");
    assert!(gms.execution_results("fresh-1").is_empty());
    let stale = gms.execution_results("stale-1");
    let [stale] = stale.as_slice() else { panic!("one result for stale-1: {stale:?}") };
    assert_eq!(stale["status"], "FAILURE");
    let report = stale["report"].as_str().unwrap_or_default();
    assert!(report.contains("waited for capacity longer than 172800 s"), "{report}");

    // The writes are what DataHub's schema accepts.
    let bodies: Vec<String> = ["dead-1", "stale-1"].iter().flat_map(|id| gms.result_bodies(id)).collect();
    if let Some(venv) = test_venv("relay_sweeper") {
        validate_proposals(&venv.join("bin/python"), &bodies).expect("valid proposals");
    }

    // A second sweep finds nothing more to do: FAILURE is final, the live one still runs.
    let s = relay.run("sweep-2", now + 1000).await;
    assert_eq!(s.swept, 0, "{s:?}");
    let v: Value =
        gms.aspect("urn:li:dataHubExecutionRequest:live-1", "dataHubExecutionRequestResult").expect("result");
    assert_eq!(v["status"], "RUNNING");
}
