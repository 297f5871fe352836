//! The ECS Fargate launcher against a real ECS API: moto's server (`DATAHUB_TEST_MOTO`).
//!
//! Each test starts its own moto server (the ECS state-manager setting is global to a server) and
//! still uses unique cluster and task-definition names. The exact HTTP body of every call is
//! recorded by an SDK interceptor, so the RunTask request (clientToken, overrides, network
//! configuration) is checked as it went over the wire; moto itself ignores `clientToken`.
//! Tests skip with a `SKIPPED` line when `DATAHUB_TEST_MOTO` is unset.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use aws_sdk_ecs::Client;
use aws_sdk_ecs::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_ecs::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_ecs::types as et;
use integration_tests::moto::{Moto, unique_name};
use serde_json::{Value, json};
use shared::launcher::ecs::{EcsConfig, EcsLauncher, client_token, started_by};
use shared::launcher::{JOB_SPEC_ENV, JobSpec, Launcher, TAG_EXECUTION_ID, TAG_POOL, TAG_WEIGHT};

const CONTAINER: &str = "ingest-job";
const SECRET_ARN: &str = "arn:aws:secretsmanager:us-east-1:123456789012:secret:datahub-db-password-AbCdEf";

/// Every request the SDK sent: (`X-Amz-Target` operation, JSON body).
#[derive(Debug, Clone, Default)]
struct Recorder(Arc<Mutex<Vec<(String, Value)>>>);

impl Intercept for Recorder {
    fn name(&self) -> &'static str {
        "Recorder"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let req = context.request();
        let op = req.headers().get("x-amz-target").unwrap_or_default();
        let op = op.rsplit('.').next().unwrap_or_default().to_owned();
        let body = serde_json::from_slice(req.body().bytes().unwrap_or_default()).unwrap_or(Value::Null);
        self.0.lock().map_err(|e| e.to_string())?.push((op, body));
        Ok(())
    }
}

impl Recorder {
    fn bodies(&self, op: &str) -> Vec<Value> {
        self.0.lock().expect("lock").iter().filter(|(o, _)| o == op).map(|(_, b)| b.clone()).collect()
    }
}

/// One moto server with a cluster, a Fargate task definition and the default VPC's network.
struct Setup {
    moto: Moto,
    ecs: Client,
    recorder: Recorder,
    config: EcsConfig,
}

impl Setup {
    async fn new(test: &str) -> Option<Setup> {
        let moto = Moto::start_or_skip(test).await?;
        // Tasks stay RUNNING however often they are described (moto's default moves them one
        // state further on every DescribeTasks call).
        moto.set_ecs_task_transition(Some(100_000)).await.expect("state manager");
        let sdk = moto.sdk_config().await;
        let recorder = Recorder::default();
        let ecs = Client::from_conf(aws_sdk_ecs::config::Builder::from(&sdk).interceptor(recorder.clone()).build());

        let cluster = unique_name("jobs");
        ecs.create_cluster()
            .cluster_name(&cluster)
            .capacity_providers("FARGATE")
            .capacity_providers("FARGATE_SPOT")
            .send()
            .await
            .expect("CreateCluster");
        let family = unique_name("ingest-job");
        let registered = ecs
            .register_task_definition()
            .family(&family)
            .requires_compatibilities(et::Compatibility::Fargate)
            .network_mode(et::NetworkMode::Awsvpc)
            .cpu("1024")
            .memory("2048")
            .container_definitions(
                et::ContainerDefinition::builder()
                    .name(CONTAINER)
                    .image("123456789012.dkr.ecr.us-east-1.amazonaws.com/datahub-ingest-job:latest")
                    .essential(true)
                    // moto needs container-level memory (reference/aws-gcp.md §3.1, quirk 1).
                    .memory(2048)
                    .environment(et::KeyValuePair::builder().name("SOME_JOB_ENV").value("not-a-secret").build())
                    .secrets(et::Secret::builder().name("DB_PASSWORD").value_from(SECRET_ARN).build().expect("secret"))
                    .build(),
            )
            .send()
            .await
            .expect("RegisterTaskDefinition");
        let revision = registered.task_definition().map(|t| t.revision()).expect("a task definition");

        let subnet = moto.default_subnet().await.expect("default subnet");
        let sg = moto.default_security_group().await.expect("default security group");
        let config = EcsConfig {
            cluster,
            task_definition: format!("{family}:{revision}"),
            container: CONTAINER.into(),
            subnets: vec![subnet],
            security_groups: vec![sg],
            assign_public_ip: false,
            capacity_provider: None,
            platform_version: None,
        };
        Some(Setup { moto, ecs, recorder, config })
    }

    fn launcher(&self) -> EcsLauncher {
        EcsLauncher::new(self.ecs.clone(), self.config.clone())
    }

    fn launcher_with(&self, config: EcsConfig) -> EcsLauncher {
        EcsLauncher::new(self.ecs.clone(), config)
    }

    async fn describe(&self, arn: &str) -> et::Task {
        let out = self
            .ecs
            .describe_tasks()
            .cluster(&self.config.cluster)
            .tasks(arn)
            .include(et::TaskField::Tags)
            .send()
            .await
            .expect("DescribeTasks");
        out.tasks().first().cloned().expect("the task is described")
    }
}

fn spec(pool: &str, exec_id: &str, weight: f64) -> JobSpec {
    JobSpec {
        exec_id: exec_id.into(),
        pool: pool.into(),
        task: "RUN_INGEST".into(),
        weight,
        args: Some(BTreeMap::from([
            (
                "recipe".to_string(),
                r#"{"source": {"type": "postgres", "config": {"password": "${DB_PASSWORD}"}}}"#.into(),
            ),
            ("version".to_string(), "1.7.0.17".into()),
        ])),
        secret_plan: BTreeMap::from([("DB_PASSWORD".to_string(), "env".to_string())]),
    }
}

fn tags(task: &et::Task) -> BTreeMap<String, String> {
    task.tags().iter().filter_map(|t| Some((t.key()?.to_owned(), t.value()?.to_owned()))).collect()
}

#[tokio::test]
async fn launch_sends_the_spec_tags_network_and_a_deterministic_client_token() {
    let Some(s) = Setup::new("launch_sends_the_spec_tags_network_and_a_deterministic_client_token").await else {
        return;
    };
    let launcher = s.launcher();
    let job = spec("remote", "exec-aaa-1", 0.25);
    let launched = launcher.launch(&job).await.expect("launched");
    assert!(!launched.already_running);
    assert!(launched.id.starts_with("arn:aws:ecs:"), "{}", launched.id);
    assert!(launched.location.contains(&s.config.cluster), "{}", launched.location);

    // What ECS stored, read back.
    let task = s.describe(&launched.id).await;
    assert_eq!(task.task_definition_arn().map(|a| a.ends_with(&s.config.task_definition)), Some(true));
    assert_eq!(task.started_by(), Some("datahub-executor/remote"));
    assert_eq!(task.launch_type(), Some(&et::LaunchType::Fargate));
    let t = tags(&task);
    assert_eq!(t.get(TAG_POOL).map(String::as_str), Some("remote"), "{t:?}");
    assert_eq!(t.get(TAG_EXECUTION_ID).map(String::as_str), Some("exec-aaa-1"), "{t:?}");
    assert_eq!(t.get(TAG_WEIGHT).map(String::as_str), Some("0.25"), "{t:?}");
    let overrides = task.overrides().expect("overrides");
    let [container] = overrides.container_overrides() else { panic!("one container override: {overrides:?}") };
    assert_eq!(container.name(), Some(CONTAINER));
    assert!(container.command().is_empty(), "no command override");
    let [var] = container.environment() else { panic!("exactly one variable: {container:?}") };
    assert_eq!(var.name(), Some(JOB_SPEC_ENV));
    assert_eq!(JobSpec::from_json(var.value().expect("a value")).expect("a spec"), job);
    // The ENI moto attached is in the configured subnet.
    let eni_subnet = task
        .attachments()
        .iter()
        .flat_map(|a| a.details())
        .find(|d| d.name() == Some("subnetId"))
        .and_then(|d| d.value().map(str::to_owned));
    assert_eq!(eni_subnet.as_deref(), Some(s.config.subnets[0].as_str()));

    // What went over the wire.
    let bodies = s.recorder.bodies("RunTask");
    let [body] = bodies.as_slice() else { panic!("one RunTask: {bodies:?}") };
    assert_eq!(body["clientToken"], json!(client_token("remote", "exec-aaa-1")));
    assert_eq!(body["clientToken"].as_str().map(str::len), Some(64));
    assert_eq!(body["cluster"], json!(s.config.cluster));
    assert_eq!(body["taskDefinition"], json!(s.config.task_definition));
    assert_eq!(body["count"], json!(1));
    assert_eq!(body["launchType"], json!("FARGATE"));
    assert!(body.get("capacityProviderStrategy").is_none(), "{body}");
    assert_eq!(body["startedBy"], json!("datahub-executor/remote"));
    assert_eq!(body["enableECSManagedTags"], json!(true));
    assert_eq!(body["propagateTags"], json!("TASK_DEFINITION"));
    assert_eq!(
        body["networkConfiguration"],
        json!({"awsvpcConfiguration": {
            "subnets": s.config.subnets,
            "securityGroups": s.config.security_groups,
            "assignPublicIp": "DISABLED",
        }})
    );
    assert_eq!(
        body["overrides"],
        json!({"containerOverrides": [{
            "name": CONTAINER,
            "environment": [{"name": JOB_SPEC_ENV, "value": job.to_json()}],
        }]})
    );
    let mut sent_tags: Vec<(String, String)> = body["tags"]
        .as_array()
        .expect("tags")
        .iter()
        .map(|t| (t["key"].as_str().unwrap_or_default().to_owned(), t["value"].as_str().unwrap_or_default().to_owned()))
        .collect();
    sent_tags.sort();
    assert_eq!(
        sent_tags,
        vec![
            (TAG_EXECUTION_ID.to_owned(), "exec-aaa-1".to_owned()),
            (TAG_POOL.to_owned(), "remote".to_owned()),
            (TAG_WEIGHT.to_owned(), "0.25".to_owned()),
        ]
    );
    let text = body.to_string();
    assert!(!text.contains("not-a-secret"), "nothing from the task definition's environment is sent");

    // A redelivery sends the same token (moto ignores it; real ECS returns the same task).
    launcher.launch(&job).await.expect("launched again");
    let bodies = s.recorder.bodies("RunTask");
    assert_eq!(bodies.len(), 2);
    assert_eq!(bodies[0]["clientToken"], bodies[1]["clientToken"]);
    assert_eq!(bodies[0], bodies[1], "the same request, so ECS's idempotency applies");
    drop(s.moto);
}

#[tokio::test]
async fn a_capacity_provider_replaces_the_launch_type() {
    let Some(s) = Setup::new("a_capacity_provider_replaces_the_launch_type").await else { return };
    let launcher = s.launcher_with(EcsConfig {
        capacity_provider: Some("FARGATE_SPOT".into()),
        platform_version: Some("1.4.0".into()),
        assign_public_ip: true,
        ..s.config.clone()
    });
    let launched = launcher.launch(&spec("remote", "exec-spot", 0.5)).await.expect("launched");
    let bodies = s.recorder.bodies("RunTask");
    let body = &bodies[0];
    assert!(body.get("launchType").is_none(), "{body}");
    assert_eq!(body["capacityProviderStrategy"], json!([{"capacityProvider": "FARGATE_SPOT", "weight": 1, "base": 0}]));
    assert_eq!(body["platformVersion"], json!("1.4.0"));
    assert_eq!(body["networkConfiguration"]["awsvpcConfiguration"]["assignPublicIp"], json!("ENABLED"));
    let task = s.describe(&launched.id).await;
    assert_eq!(tags(&task).get(TAG_WEIGHT).map(String::as_str), Some("0.5"));
}

#[tokio::test]
async fn running_lists_the_pools_live_tasks_with_their_weights() {
    let Some(s) = Setup::new("running_lists_the_pools_live_tasks_with_their_weights").await else { return };
    let launcher = s.launcher();
    let a = launcher.launch(&spec("pool-a", "exec-a1", 0.25)).await.expect("a1");
    let b = launcher.launch(&spec("pool-a", "exec-a2", 0.5)).await.expect("a2");
    let other = launcher.launch(&spec("pool-b", "exec-b1", 1.0)).await.expect("b1");

    let mut jobs = launcher.running("pool-a").await.expect("running");
    jobs.sort_by(|x, y| x.exec_id.cmp(&y.exec_id));
    let got: Vec<(&str, &str, f64)> = jobs.iter().map(|j| (j.exec_id.as_str(), j.id.as_str(), j.weight)).collect();
    assert_eq!(got, vec![("exec-a1", a.id.as_str(), 0.25), ("exec-a2", b.id.as_str(), 0.5)]);
    // moto's tasks have no `createdAt` (real ECS tasks always do; the unit tests cover it).
    assert!(jobs.iter().all(|j| j.started_ms.is_none_or(|ms| ms > 1_600_000_000_000)), "{jobs:?}");
    let list = s.recorder.bodies("ListTasks");
    assert!(list.iter().all(|b| b["startedBy"] == json!(started_by("pool-a"))), "{list:?}");

    let others = launcher.running("pool-b").await.expect("running");
    assert_eq!(others.iter().map(|j| j.id.as_str()).collect::<Vec<_>>(), vec![other.id.as_str()]);
    assert!(launcher.running("pool-c").await.expect("running").is_empty());

    // A stopped task no longer counts.
    launcher.stop(&a.id, "capacity exceeded after a concurrent admission").await.expect("stopped");
    let stopped = s.describe(&a.id).await;
    assert_eq!(stopped.last_status(), Some("STOPPED"));
    assert_eq!(stopped.stopped_reason(), Some("capacity exceeded after a concurrent admission"));
    let jobs = launcher.running("pool-a").await.expect("running");
    assert_eq!(jobs.iter().map(|j| j.exec_id.as_str()).collect::<Vec<_>>(), vec!["exec-a2"]);
}

#[tokio::test]
async fn a_task_that_stopped_by_itself_drops_out() {
    let Some(s) = Setup::new("a_task_that_stopped_by_itself_drops_out").await else { return };
    let launcher = s.launcher();
    launcher.launch(&spec("remote", "exec-quick", 0.25)).await.expect("launched");
    assert_eq!(launcher.running("remote").await.expect("running").len(), 1);
    // From now on, tasks finish as soon as they are looked at (the job exited).
    s.moto.set_ecs_task_transition(None).await.expect("state manager");
    assert!(launcher.running("remote").await.expect("running").is_empty());
}

#[tokio::test]
async fn job_env_names_come_from_the_task_definition() {
    let Some(s) = Setup::new("job_env_names_come_from_the_task_definition").await else { return };
    let launcher = s.launcher();
    let want = BTreeSet::from(["DB_PASSWORD".to_string(), "SOME_JOB_ENV".to_string()]);
    assert_eq!(launcher.job_env_names().await.expect("names"), want);
    assert_eq!(launcher.job_env_names().await.expect("cached"), want);
    assert_eq!(s.recorder.bodies("DescribeTaskDefinition").len(), 1, "read once");

    let wrong = s.launcher_with(EcsConfig { container: "not-there".into(), ..s.config.clone() });
    let err = wrong.job_env_names().await.expect_err("no such container");
    eprintln!("wrong container: {err}");
    assert!(!err.is_transient(), "{err}");
    let missing = s.launcher_with(EcsConfig { task_definition: unique_name("no-such-family"), ..s.config.clone() });
    let err = missing.job_env_names().await.expect_err("no such task definition");
    eprintln!("missing task definition: {err}");
    assert!(!err.is_transient(), "{err}");
}

#[tokio::test]
async fn an_unknown_cluster_is_a_permanent_error() {
    let Some(s) = Setup::new("an_unknown_cluster_is_a_permanent_error").await else { return };
    let launcher = s.launcher_with(EcsConfig { cluster: unique_name("no-such-cluster"), ..s.config.clone() });
    let job = spec("remote", "exec-nowhere", 0.25);
    let err = launcher.launch(&job).await.expect_err("no cluster");
    assert!(!err.is_transient(), "{err}");
    let text = err.to_string();
    eprintln!("unknown cluster: {text}");
    assert!(text.contains("ClusterNotFound"), "{text}");
    assert!(!text.contains(&job.to_json()) && !text.contains("${DB_PASSWORD}"), "never the spec: {text}");
}
