//! ECS Fargate launcher (DESIGN.md §2.3, §2.5, §2.6): one execution request becomes one ECS task.
//!
//! * **Launch**: `RunTask` of the configured task definition on the configured cluster, with launch
//!   type `FARGATE` (or the configured capacity provider, e.g. `FARGATE_SPOT`), the awsvpc network
//!   configuration, and a container override that carries exactly one environment variable,
//!   [`JOB_SPEC_ENV`], holding the [`JobSpec`] as JSON. Nothing else goes into the override: no secret
//!   value (overrides are visible to anyone who may describe the task) and no command.
//! * **Idempotency**: the `clientToken` is a SHA-256 of the pool and the execution id, so a redelivered
//!   SQS message cannot start a second task within ECS's 24 h idempotency window: the same token with
//!   the same parameters returns the original task, and the same token with other parameters (say, a
//!   recomputed weight) fails with `ConflictException`, which names the existing task; that is
//!   reported as [`Launched::already_running`].
//! * **Capacity**: every task carries the tags [`TAG_POOL`], [`TAG_EXECUTION_ID`] and [`TAG_WEIGHT`] and
//!   `startedBy = datahub-executor/<pool>` ([`started_by`]). [`Launcher::running`] lists the tasks
//!   with that `startedBy` and reads the weights back from the tags, so the pool's load never depends
//!   on the admission's memory. A task whose weight tag is missing or unusable counts as a full pool
//!   (1.0): over-counting delays an admission, under-counting would overload the pool. A task that
//!   is stopping (desired status not `RUNNING`, or last status `DEACTIVATING`, `STOPPING`,
//!   `DEPROVISIONING`, `STOPPED`, `DELETED`) no longer counts: its job has been told to finish.
//! * **Job environment**: [`Launcher::job_env_names`] reads the configured container's `environment`
//!   and `secrets` names from `DescribeTaskDefinition` once and caches them (values are never read).
//!   Names that only an `environmentFiles` entry provides cannot be known this way.
//!
//! Errors: throttling, 5xx, `ServerException`, time-outs and connection failures are
//! [`LaunchError::Transient`]; access denied, bad parameters, unknown cluster or platform version and
//! other 4xx answers are [`LaunchError::Permanent`]. A `200` answer can still carry placement
//! `failures`: `RESOURCE:*`, `AGENT` and capacity shortages are transient, a `MISSING`/`INACTIVE` task
//! definition (or `ATTRIBUTE`/`LOCATION`) is permanent. Messages never contain the spec.
//!
//! IAM for the admission function: `ecs:RunTask` (on the task definition), `ecs:TagResource` (tags on
//! create), `ecs:ListTasks`, `ecs:DescribeTasks`, `ecs:StopTask`, `ecs:DescribeTaskDefinition`, and
//! `iam:PassRole` for the task definition's task and execution roles.

use std::collections::BTreeSet;

use aws_sdk_ecs::Client;
use aws_sdk_ecs::config::http::HttpResponse;
use aws_sdk_ecs::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ecs::operation::run_task::{RunTaskError, RunTaskOutput};
use aws_sdk_ecs::types as et;
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;

use super::{
    JOB_SPEC_ENV, JobSpec, LaunchError, Launched, Launcher, RunningJob, TAG_EXECUTION_ID, TAG_POOL, TAG_WEIGHT,
};
use crate::error::ConfigError;
use crate::secrets::BoxFuture;

/// The ECS cluster that runs the jobs (name or ARN). Required.
pub const ENV_CLUSTER: &str = "DATAHUB_EXECUTOR_ECS_CLUSTER";
/// The job's task definition (`family`, `family:revision` or ARN). Required.
pub const ENV_TASK_DEFINITION: &str = "DATAHUB_EXECUTOR_ECS_TASK_DEFINITION";
/// The container of the task definition that runs `ingest-job`. Default [`DEFAULT_CONTAINER`].
pub const ENV_CONTAINER: &str = "DATAHUB_EXECUTOR_ECS_CONTAINER";
/// Comma-separated subnet ids for the task's ENI. Required.
pub const ENV_SUBNETS: &str = "DATAHUB_EXECUTOR_ECS_SUBNETS";
/// Comma-separated security group ids for the task's ENI. Required.
pub const ENV_SECURITY_GROUPS: &str = "DATAHUB_EXECUTOR_ECS_SECURITY_GROUPS";
/// `true`/`false` (or `ENABLED`/`DISABLED`): give the task a public IP. Default `false`.
pub const ENV_ASSIGN_PUBLIC_IP: &str = "DATAHUB_EXECUTOR_ECS_ASSIGN_PUBLIC_IP";
/// A capacity provider (e.g. `FARGATE_SPOT`) to use instead of launch type `FARGATE`. Optional.
pub const ENV_CAPACITY_PROVIDER: &str = "DATAHUB_EXECUTOR_ECS_CAPACITY_PROVIDER";
/// The Fargate platform version (e.g. `LATEST`, `1.4.0`). Optional: ECS's default otherwise.
pub const ENV_PLATFORM_VERSION: &str = "DATAHUB_EXECUTOR_ECS_PLATFORM_VERSION";
/// The container name used when [`ENV_CONTAINER`] is unset.
pub const DEFAULT_CONTAINER: &str = "ingest-job";

/// ECS's limit on the whole `overrides` structure, JSON punctuation included.
pub const MAX_OVERRIDE_CHARS: usize = 8192;
/// What [`Launcher::max_spec_bytes`] answers: the spec's own JSON, leaving room for the rest of the
/// override and for the escaping of the spec inside it. [`EcsLauncher::launch`] checks the exact size
/// of the override anyway and falls back to a spec without args when it would not fit.
pub const MAX_SPEC_BYTES: usize = 7000;
/// ECS's limit on a `StopTask` reason.
pub const MAX_STOP_REASON_CHARS: usize = 255;
/// ECS's limit on `startedBy`.
pub const MAX_STARTED_BY_CHARS: usize = 128;
/// ECS's limit on a tag value.
const MAX_TAG_VALUE_CHARS: usize = 256;
/// `DescribeTasks` takes at most this many tasks a call.
const DESCRIBE_CHUNK: usize = 100;
/// Error reasons are cut to this many characters (a 5xx can carry a whole HTML page).
const MAX_REASON_CHARS: usize = 1000;
/// The weight of a live task whose weight tag is missing or unusable: a full pool.
pub const UNKNOWN_WEIGHT: f64 = 1.0;

const LAUNCHER: &str = "ecs";

/// Where and how jobs are started: read from `DATAHUB_EXECUTOR_ECS_*`.
#[derive(Debug, Clone, PartialEq)]
pub struct EcsConfig {
    pub cluster: String,
    pub task_definition: String,
    pub container: String,
    pub subnets: Vec<String>,
    pub security_groups: Vec<String>,
    pub assign_public_ip: bool,
    /// Capacity provider for the task (e.g. `FARGATE_SPOT`); `None` means launch type `FARGATE`.
    pub capacity_provider: Option<String>,
    pub platform_version: Option<String>,
}

impl EcsConfig {
    /// Reads the configuration through `lookup` (e.g. `|k| std::env::var(k).ok()`). Empty values
    /// count as unset. Errors name the variable.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<EcsConfig, ConfigError> {
        let get = |var: &str| lookup(var).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        let required = |var: &'static str| get(var).ok_or_else(|| ConfigError::new(var, "is required"));
        let list = |var: &'static str, prefix: &str| -> Result<Vec<String>, ConfigError> {
            let items: Vec<String> = get(var)
                .unwrap_or_default()
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
            if items.is_empty() {
                return Err(ConfigError::new(
                    var,
                    format!("must list at least one id (comma-separated `{prefix}...`)"),
                ));
            }
            if let Some(bad) = items.iter().find(|s| !s.starts_with(prefix)) {
                return Err(ConfigError::new(var, format!("{bad:?} is not an id of the form `{prefix}...`")));
            }
            Ok(items)
        };
        let assign_public_ip = match get(ENV_ASSIGN_PUBLIC_IP) {
            None => false,
            Some(v) => match v.to_ascii_lowercase().as_str() {
                "true" | "enabled" => true,
                "false" | "disabled" => false,
                _ => {
                    return Err(ConfigError::new(
                        ENV_ASSIGN_PUBLIC_IP,
                        format!("{v:?} is not one of true, false, ENABLED, DISABLED"),
                    ));
                }
            },
        };
        Ok(EcsConfig {
            cluster: required(ENV_CLUSTER)?,
            task_definition: required(ENV_TASK_DEFINITION)?,
            container: get(ENV_CONTAINER).unwrap_or_else(|| DEFAULT_CONTAINER.to_owned()),
            subnets: list(ENV_SUBNETS, "subnet-")?,
            security_groups: list(ENV_SECURITY_GROUPS, "sg-")?,
            assign_public_ip,
            capacity_provider: get(ENV_CAPACITY_PROVIDER),
            platform_version: get(ENV_PLATFORM_VERSION),
        })
    }
}

/// The `startedBy` of the pool's tasks: `datahub-executor/<pool>`, with every character outside
/// `[A-Za-z0-9-/_]` replaced by `_` and cut to 128 characters (ECS's rules). Two pools whose ids
/// differ only in such characters share it; [`Launcher::running`] also checks the pool tag.
pub fn started_by(pool: &str) -> String {
    format!("datahub-executor/{pool}")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '/' | '_') { c } else { '_' })
        .take(MAX_STARTED_BY_CHARS)
        .collect()
}

/// The `clientToken` of the launch of `exec_id` in `pool`: hex SHA-256 of both (64 ASCII characters,
/// ECS's maximum), so every delivery of the same request carries the same token.
pub fn client_token(pool: &str, exec_id: &str) -> String {
    let mut hash = Sha256::new();
    hash.update(pool.as_bytes());
    hash.update([0u8]);
    hash.update(exec_id.as_bytes());
    hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// A tag value as ECS accepts it: letters, digits, spaces and `_ . : / = + - @`, at most 256
/// characters; anything else becomes `_`.
pub fn tag_value(value: &str) -> String {
    value
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || matches!(c, ' ' | '_' | '.' | ':' | '/' | '=' | '+' | '-' | '@') {
                c
            } else {
                '_'
            }
        })
        .take(MAX_TAG_VALUE_CHARS)
        .collect()
}

fn truncate_chars(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => text[..end].to_owned(),
        None => text.to_owned(),
    }
}

fn transient(reason: impl Into<String>) -> LaunchError {
    LaunchError::Transient { launcher: LAUNCHER, reason: truncate_chars(&reason.into(), MAX_REASON_CHARS) }
}

fn permanent(reason: impl Into<String>) -> LaunchError {
    LaunchError::Permanent { launcher: LAUNCHER, reason: truncate_chars(&reason.into(), MAX_REASON_CHARS) }
}

/// Maps an SDK error of `op` to a [`LaunchError`].
fn sdk_error<E>(op: &str, err: &SdkError<E, HttpResponse>) -> LaunchError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let failure = crate::aws_error::describe(err);
    let reason = format!("{op} failed: {}", failure.reason);
    if failure.transient { transient(reason) } else { permanent(reason) }
}

/// Whether a `failures[].reason` of a `200` RunTask answer is worth retrying.
/// See "API failure reasons" in the ECS developer guide.
fn is_transient_failure(reason: &str) -> bool {
    let upper = reason.to_ascii_uppercase();
    if ["MISSING", "INACTIVE", "ATTRIBUTE", "LOCATION"].iter().any(|p| upper.starts_with(p)) {
        return false;
    }
    // RESOURCE:CPU / RESOURCE:MEMORY / RESOURCE:ENI / RESOURCE:GPU, AGENT, "Capacity is unavailable
    // at this time", and reasons this code does not know yet: another try may place it.
    true
}

/// Starts ingestion jobs as ECS Fargate tasks.
#[derive(Debug)]
pub struct EcsLauncher {
    client: Client,
    config: EcsConfig,
    env_names: OnceCell<BTreeSet<String>>,
}

impl EcsLauncher {
    pub fn new(client: Client, config: EcsConfig) -> Self {
        EcsLauncher { client, config, env_names: OnceCell::new() }
    }

    /// A launcher with a client from the environment (`aws_config::load_defaults`) and the
    /// configuration from `DATAHUB_EXECUTOR_ECS_*`.
    pub async fn from_env() -> Result<Self, ConfigError> {
        let config = EcsConfig::from_lookup(|var| std::env::var(var).ok())?;
        Ok(Self::from_config(config).await)
    }

    /// A launcher for `config` with a client from the AWS SDK's environment.
    pub async fn from_config(config: EcsConfig) -> Self {
        let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
        EcsLauncher::new(Client::new(&sdk), config)
    }

    pub fn config(&self) -> &EcsConfig {
        &self.config
    }

    /// The `overrides` of the task for `spec_json`: one container override with one variable.
    fn overrides(&self, spec_json: &str) -> et::TaskOverride {
        et::TaskOverride::builder()
            .container_overrides(
                et::ContainerOverride::builder()
                    .name(&self.config.container)
                    .environment(et::KeyValuePair::builder().name(JOB_SPEC_ENV).value(spec_json).build())
                    .build(),
            )
            .build()
    }

    /// The size of the override as ECS counts it (the JSON of the structure, escaping included).
    fn override_chars(&self, spec_json: &str) -> usize {
        serde_json::json!({
            "containerOverrides": [{
                "name": self.config.container,
                "environment": [{"name": JOB_SPEC_ENV, "value": spec_json}],
            }]
        })
        .to_string()
        .chars()
        .count()
    }

    /// The spec's JSON, without args if the override would otherwise exceed ECS's limit.
    fn spec_json(&self, spec: &JobSpec) -> Result<String, LaunchError> {
        let json = spec.to_json();
        if self.override_chars(&json) <= MAX_OVERRIDE_CHARS {
            return Ok(json);
        }
        let id_only = JobSpec { args: None, ..spec.clone() }.to_json();
        let size = self.override_chars(&id_only);
        if size <= MAX_OVERRIDE_CHARS {
            tracing::info!(exec_id = %spec.exec_id, "the job spec does not fit the ECS override: the job reads the request from GMS");
            return Ok(id_only);
        }
        Err(permanent(format!(
            "the job spec of {} needs {size} characters in the ECS override even without args, more than \
             ECS's {MAX_OVERRIDE_CHARS} (too many secret names?)",
            spec.exec_id
        )))
    }

    async fn do_launch(&self, spec: &JobSpec) -> Result<Launched, LaunchError> {
        let cfg = &self.config;
        let spec_json = self.spec_json(spec)?;
        let token = client_token(&spec.pool, &spec.exec_id);
        let vpc = et::AwsVpcConfiguration::builder()
            .set_subnets(Some(cfg.subnets.clone()))
            .set_security_groups(Some(cfg.security_groups.clone()))
            .assign_public_ip(if cfg.assign_public_ip {
                et::AssignPublicIp::Enabled
            } else {
                et::AssignPublicIp::Disabled
            })
            .build()
            .map_err(|e| permanent(format!("bad network configuration: {e}")))?;
        let tag = |key: &str, value: &str| et::Tag::builder().key(key).value(tag_value(value)).build();
        let mut req = self
            .client
            .run_task()
            .cluster(&cfg.cluster)
            .task_definition(&cfg.task_definition)
            .count(1)
            .network_configuration(et::NetworkConfiguration::builder().awsvpc_configuration(vpc).build())
            .overrides(self.overrides(&spec_json))
            .started_by(started_by(&spec.pool))
            .client_token(&token)
            .tags(tag(TAG_POOL, &spec.pool))
            .tags(tag(TAG_EXECUTION_ID, &spec.exec_id))
            .tags(tag(TAG_WEIGHT, &spec.weight.to_string()))
            .enable_ecs_managed_tags(true)
            .propagate_tags(et::PropagateTags::TaskDefinition);
        req = match &cfg.capacity_provider {
            Some(provider) => req.capacity_provider_strategy(
                et::CapacityProviderStrategyItem::builder()
                    .capacity_provider(provider)
                    .weight(1)
                    .build()
                    .map_err(|e| permanent(format!("bad capacity provider strategy: {e}")))?,
            ),
            None => req.launch_type(et::LaunchType::Fargate),
        };
        if let Some(version) = &cfg.platform_version {
            req = req.platform_version(version);
        }
        match req.send().await {
            Ok(out) => self.launched(spec, &out),
            Err(err) => {
                if let Some(RunTaskError::ConflictException(conflict)) = err.as_service_error() {
                    // The token was used before with other parameters: that launch's task is the job.
                    let id = conflict.resource_ids().first().cloned().unwrap_or_else(|| format!("clientToken {token}"));
                    tracing::info!(exec_id = %spec.exec_id, task = %id, "RunTask: the request was launched before");
                    return Ok(Launched {
                        location: format!("ECS task {id} on cluster {}", cfg.cluster),
                        id,
                        already_running: true,
                    });
                }
                Err(sdk_error("RunTask", &err))
            }
        }
    }

    fn launched(&self, spec: &JobSpec, out: &RunTaskOutput) -> Result<Launched, LaunchError> {
        if let Some(arn) = out.tasks().iter().find_map(|t| t.task_arn()) {
            return Ok(Launched {
                id: arn.to_owned(),
                location: format!("ECS task {arn} on cluster {}", self.config.cluster),
                already_running: false,
            });
        }
        let Some(first) = out.failures().first() else {
            return Err(transient(format!("RunTask for {} answered with neither a task nor a failure", spec.exec_id)));
        };
        let described: Vec<String> = out
            .failures()
            .iter()
            .map(|f| {
                let mut s = f.reason().unwrap_or("unknown reason").to_owned();
                if let Some(arn) = f.arn() {
                    s = format!("{arn}: {s}");
                }
                if let Some(detail) = f.detail() {
                    s = format!("{s} ({detail})");
                }
                s
            })
            .collect();
        let reason = format!(
            "RunTask of {} on cluster {} could not place the task: {}",
            self.config.task_definition,
            self.config.cluster,
            described.join("; ")
        );
        if is_transient_failure(first.reason().unwrap_or_default()) {
            Err(transient(reason))
        } else {
            Err(permanent(reason))
        }
    }

    async fn do_running(&self, pool: &str) -> Result<Vec<RunningJob>, LaunchError> {
        let cfg = &self.config;
        // ECS allows `startedBy` only as the sole filter; the default desired-status filter is
        // RUNNING, which is the one wanted (pending tasks have desired status RUNNING too).
        let mut pages =
            self.client.list_tasks().cluster(&cfg.cluster).started_by(started_by(pool)).into_paginator().send();
        let mut arns = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| sdk_error("ListTasks", &e))?;
            arns.extend(page.task_arns().iter().cloned());
        }
        let pool_tag = tag_value(pool);
        let mut jobs = Vec::new();
        for chunk in arns.chunks(DESCRIBE_CHUNK) {
            let out = self
                .client
                .describe_tasks()
                .cluster(&cfg.cluster)
                .set_tasks(Some(chunk.to_vec()))
                .include(et::TaskField::Tags)
                .send()
                .await
                .map_err(|e| sdk_error("DescribeTasks", &e))?;
            // `failures` (MISSING) are tasks that went away since the listing: not live.
            jobs.extend(out.tasks().iter().filter_map(|task| live_job(task, &pool_tag)));
        }
        Ok(jobs)
    }

    async fn do_stop(&self, id: &str, reason: &str) -> Result<(), LaunchError> {
        self.client
            .stop_task()
            .cluster(&self.config.cluster)
            .task(id)
            .reason(truncate_chars(reason, MAX_STOP_REASON_CHARS))
            .send()
            .await
            .map_err(|e| sdk_error("StopTask", &e))?;
        Ok(())
    }

    async fn read_env_names(&self) -> Result<BTreeSet<String>, LaunchError> {
        let cfg = &self.config;
        let out = self
            .client
            .describe_task_definition()
            .task_definition(&cfg.task_definition)
            .send()
            .await
            .map_err(|e| sdk_error("DescribeTaskDefinition", &e))?;
        let def = out.task_definition().ok_or_else(|| {
            transient(format!("DescribeTaskDefinition of {} returned no task definition", cfg.task_definition))
        })?;
        let container =
            def.container_definitions().iter().find(|c| c.name() == Some(cfg.container.as_str())).ok_or_else(|| {
                permanent(format!(
                    "task definition {} has no container named {:?} (set {ENV_CONTAINER})",
                    cfg.task_definition, cfg.container
                ))
            })?;
        let mut names: BTreeSet<String> =
            container.environment().iter().filter_map(|kv| kv.name()).map(str::to_owned).collect();
        names.extend(container.secrets().iter().map(|s| s.name().to_owned()));
        Ok(names)
    }
}

/// The job of `task` if it is a live task of the pool whose tag value is `pool_tag`.
fn live_job(task: &et::Task, pool_tag: &str) -> Option<RunningJob> {
    const GONE: [&str; 5] = ["DEACTIVATING", "STOPPING", "DEPROVISIONING", "STOPPED", "DELETED"];
    if task.last_status().is_some_and(|s| GONE.contains(&s.to_ascii_uppercase().as_str())) {
        return None;
    }
    if task.desired_status().is_some_and(|s| !s.eq_ignore_ascii_case("RUNNING")) {
        return None;
    }
    let tag = |key: &str| task.tags().iter().find(|t| t.key() == Some(key)).and_then(|t| t.value());
    if tag(TAG_POOL) != Some(pool_tag) {
        return None;
    }
    let id = task.task_arn().unwrap_or_default().to_owned();
    let weight = match tag(TAG_WEIGHT).map(|w| w.trim().parse::<f64>()) {
        Some(Ok(w)) if w.is_finite() && w > 0.0 && w <= 1.0 => w,
        other => {
            tracing::warn!(task = %id, weight = ?other, "ECS task without a usable weight tag: counting it as a full pool");
            UNKNOWN_WEIGHT
        }
    };
    Some(RunningJob {
        exec_id: tag(TAG_EXECUTION_ID).unwrap_or_default().to_owned(),
        weight,
        id,
        started_ms: task.created_at().and_then(|t| t.to_millis().ok()),
    })
}

impl Launcher for EcsLauncher {
    fn name(&self) -> &'static str {
        LAUNCHER
    }

    fn max_spec_bytes(&self) -> usize {
        MAX_SPEC_BYTES
    }

    fn launch<'a>(&'a self, spec: &'a JobSpec) -> BoxFuture<'a, Result<Launched, LaunchError>> {
        Box::pin(self.do_launch(spec))
    }

    fn running<'a>(&'a self, pool: &'a str) -> BoxFuture<'a, Result<Vec<RunningJob>, LaunchError>> {
        Box::pin(self.do_running(pool))
    }

    fn stop<'a>(&'a self, id: &'a str, reason: &'a str) -> BoxFuture<'a, Result<(), LaunchError>> {
        Box::pin(self.do_stop(id, reason))
    }

    fn job_env_names(&self) -> BoxFuture<'_, Result<BTreeSet<String>, LaunchError>> {
        Box::pin(async move { self.env_names.get_or_try_init(|| self.read_env_names()).await.cloned() })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};
    use std::sync::{Arc, Mutex};

    use aws_sdk_ecs::operation::describe_task_definition::DescribeTaskDefinitionOutput;
    use aws_sdk_ecs::operation::describe_tasks::DescribeTasksOutput;
    use aws_sdk_ecs::operation::list_tasks::{ListTasksInput, ListTasksOutput};
    use aws_sdk_ecs::operation::run_task::RunTaskInput;
    use aws_sdk_ecs::types::error::{ClusterNotFoundException, ConflictException};
    use aws_smithy_mocks::{RuleMode, mock, mock_client};

    use super::*;

    fn config() -> EcsConfig {
        EcsConfig {
            cluster: "jobs".into(),
            task_definition: "ingest-job:3".into(),
            container: "ingest-job".into(),
            subnets: vec!["subnet-a".into(), "subnet-b".into()],
            security_groups: vec!["sg-1".into()],
            assign_public_ip: false,
            capacity_provider: None,
            platform_version: None,
        }
    }

    fn spec(exec_id: &str, weight: f64) -> JobSpec {
        JobSpec {
            exec_id: exec_id.into(),
            pool: "remote".into(),
            task: "RUN_INGEST".into(),
            weight,
            args: Some(BTreeMap::from([("recipe".to_string(), r#"{"source": {"type": "file"}}"#.to_string())])),
            secret_plan: BTreeMap::from([("PG".to_string(), "env".to_string())]),
        }
    }

    fn task_output(arn: &str) -> RunTaskOutput {
        RunTaskOutput::builder().tasks(et::Task::builder().task_arn(arn).build()).build()
    }

    fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| map.get(k).cloned()
    }

    const BASE: [(&str, &str); 4] = [
        (ENV_CLUSTER, "jobs"),
        (ENV_TASK_DEFINITION, "ingest-job"),
        (ENV_SUBNETS, "subnet-a, subnet-b,"),
        (ENV_SECURITY_GROUPS, "sg-1"),
    ];

    #[test]
    fn config_reads_the_variables_with_defaults() {
        let cfg = EcsConfig::from_lookup(lookup(&BASE)).expect("valid");
        assert_eq!(cfg.cluster, "jobs");
        assert_eq!(cfg.container, DEFAULT_CONTAINER);
        assert_eq!(cfg.subnets, vec!["subnet-a", "subnet-b"]);
        assert_eq!(cfg.security_groups, vec!["sg-1"]);
        assert!(!cfg.assign_public_ip);
        assert_eq!(cfg.capacity_provider, None);
        assert_eq!(cfg.platform_version, None);

        let mut vars = BASE.to_vec();
        vars.extend([
            (ENV_ASSIGN_PUBLIC_IP, "ENABLED"),
            (ENV_CAPACITY_PROVIDER, "FARGATE_SPOT"),
            (ENV_PLATFORM_VERSION, "1.4.0"),
            (ENV_CONTAINER, "job"),
        ]);
        let cfg = EcsConfig::from_lookup(lookup(&vars)).expect("valid");
        assert!(cfg.assign_public_ip);
        assert_eq!(cfg.capacity_provider.as_deref(), Some("FARGATE_SPOT"));
        assert_eq!(cfg.platform_version.as_deref(), Some("1.4.0"));
        assert_eq!(cfg.container, "job");
    }

    #[test]
    fn config_errors_name_the_variable() {
        for (var, value) in [
            (ENV_CLUSTER, " "),
            (ENV_SUBNETS, ", ,"),
            (ENV_SUBNETS, "sg-1"),
            (ENV_SECURITY_GROUPS, ""),
            (ENV_ASSIGN_PUBLIC_IP, "maybe"),
        ] {
            let vars: Vec<(&str, &str)> =
                BASE.iter().copied().filter(|(k, _)| *k != var).chain([(var, value)]).collect();
            let err = EcsConfig::from_lookup(lookup(&vars)).expect_err(var);
            assert_eq!(err.var, var, "{err}");
        }
        let vars: Vec<(&str, &str)> = BASE.iter().copied().filter(|(k, _)| *k != ENV_TASK_DEFINITION).collect();
        assert_eq!(EcsConfig::from_lookup(lookup(&vars)).expect_err("missing").var, ENV_TASK_DEFINITION);
    }

    #[test]
    fn started_by_token_and_tags_follow_ecs_rules() {
        assert_eq!(started_by("remote"), "datahub-executor/remote");
        let odd = started_by(&format!("pool.with spaces:{}", "x".repeat(300)));
        assert!(odd.len() <= MAX_STARTED_BY_CHARS);
        assert!(odd.chars().all(|c| c.is_ascii_alphanumeric() || "-/_".contains(c)), "{odd}");

        let token = client_token("remote", "e1");
        assert_eq!(token, client_token("remote", "e1"), "deterministic");
        assert_ne!(token, client_token("remote", "e2"));
        assert_ne!(token, client_token("other", "e1"));
        assert_eq!(token.len(), 64);
        assert!(token.bytes().all(|b| (33..=126).contains(&b)));

        assert_eq!(tag_value("urn:li:x/y-1.2 @a+b=c"), "urn:li:x/y-1.2 @a+b=c");
        assert_eq!(tag_value("a,b;c"), "a_b_c");
        assert_eq!(tag_value(&"y".repeat(400)).len(), 256);
    }

    #[tokio::test]
    async fn launch_sends_one_env_var_and_a_conflict_means_already_running() {
        let seen: Arc<Mutex<Vec<RunTaskInput>>> = Arc::default();
        let record = seen.clone();
        let ok = mock!(Client::run_task)
            .match_requests(|r| r.client_token() == Some(client_token("remote", "e1").as_str()))
            .then_compute_output(move |input| {
                record.lock().expect("lock").push(input.clone());
                task_output("arn:aws:ecs:us-east-1:1:task/jobs/t1")
            });
        let conflict = mock!(Client::run_task).then_error(|| {
            RunTaskError::ConflictException(
                ConflictException::builder()
                    .message("The client token was used with other parameters")
                    .resource_ids("arn:aws:ecs:us-east-1:1:task/jobs/t1")
                    .build(),
            )
        });
        let client = mock_client!(aws_sdk_ecs, RuleMode::Sequential, &[&ok, &conflict]);
        let launcher = EcsLauncher::new(client, config());

        let first = launcher.launch(&spec("e1", 0.25)).await.expect("launched");
        assert_eq!(first.id, "arn:aws:ecs:us-east-1:1:task/jobs/t1");
        assert!(!first.already_running);
        assert!(first.location.contains("cluster jobs"), "{}", first.location);

        // A redelivery whose parameters changed (another weight): ECS answers ConflictException.
        let second = launcher.launch(&spec("e1", 0.5)).await.expect("conflict is not an error");
        assert_eq!(second.id, "arn:aws:ecs:us-east-1:1:task/jobs/t1");
        assert!(second.already_running);

        let seen = seen.lock().expect("lock");
        let req = seen.first().expect("one RunTask recorded");
        assert_eq!(req.cluster(), Some("jobs"));
        assert_eq!(req.task_definition(), Some("ingest-job:3"));
        assert_eq!(req.count(), Some(1));
        assert_eq!(req.launch_type(), Some(&et::LaunchType::Fargate));
        assert!(req.capacity_provider_strategy().is_empty());
        assert_eq!(req.started_by(), Some("datahub-executor/remote"));
        assert_eq!(req.enable_ecs_managed_tags(), Some(true));
        assert_eq!(req.propagate_tags(), Some(&et::PropagateTags::TaskDefinition));
        let vpc = req.network_configuration().and_then(|n| n.awsvpc_configuration()).expect("awsvpc");
        assert_eq!(vpc.subnets(), ["subnet-a", "subnet-b"]);
        assert_eq!(vpc.security_groups(), ["sg-1"]);
        assert_eq!(vpc.assign_public_ip(), Some(&et::AssignPublicIp::Disabled));
        let tags: BTreeMap<&str, &str> = req.tags().iter().filter_map(|t| Some((t.key()?, t.value()?))).collect();
        assert_eq!(tags, BTreeMap::from([(TAG_POOL, "remote"), (TAG_EXECUTION_ID, "e1"), (TAG_WEIGHT, "0.25")]));
        let overrides = req.overrides().expect("overrides");
        assert!(overrides.cpu().is_none() && overrides.memory().is_none() && overrides.task_role_arn().is_none());
        let [container] = overrides.container_overrides() else { panic!("one container override") };
        assert_eq!(container.name(), Some("ingest-job"));
        assert!(container.command().is_empty(), "no command override");
        let [var] = container.environment() else { panic!("exactly one variable") };
        assert_eq!(var.name(), Some(JOB_SPEC_ENV));
        assert_eq!(JobSpec::from_json(var.value().expect("value")).expect("a spec"), spec("e1", 0.25));
    }

    #[tokio::test]
    async fn capacity_provider_replaces_the_launch_type() {
        let seen: Arc<Mutex<Vec<RunTaskInput>>> = Arc::default();
        let record = seen.clone();
        let ok = mock!(Client::run_task).then_compute_output(move |input| {
            record.lock().expect("lock").push(input.clone());
            task_output("arn:t")
        });
        let client = mock_client!(aws_sdk_ecs, RuleMode::Sequential, &[&ok]);
        let cfg = EcsConfig {
            capacity_provider: Some("FARGATE_SPOT".into()),
            platform_version: Some("1.4.0".into()),
            assign_public_ip: true,
            ..config()
        };
        EcsLauncher::new(client, cfg).launch(&spec("e2", 1.0)).await.expect("launched");
        let seen = seen.lock().expect("lock");
        let req = seen.first().expect("recorded");
        assert_eq!(req.launch_type(), None);
        let [item] = req.capacity_provider_strategy() else { panic!("one strategy item") };
        assert_eq!(item.capacity_provider(), "FARGATE_SPOT");
        assert_eq!(req.platform_version(), Some("1.4.0"));
        let vpc = req.network_configuration().and_then(|n| n.awsvpc_configuration()).expect("awsvpc");
        assert_eq!(vpc.assign_public_ip(), Some(&et::AssignPublicIp::Enabled));
    }

    #[tokio::test]
    async fn a_spec_too_big_for_the_override_goes_without_args() {
        let seen: Arc<Mutex<Vec<RunTaskInput>>> = Arc::default();
        let record = seen.clone();
        let ok = mock!(Client::run_task).then_compute_output(move |input| {
            record.lock().expect("lock").push(input.clone());
            task_output("arn:t")
        });
        let client = mock_client!(aws_sdk_ecs, RuleMode::Sequential, &[&ok]);
        let launcher = EcsLauncher::new(client, config());
        // Under the raw-bytes limit, but quotes double when escaped into the override.
        let recipe = "\"".repeat(3200);
        let mut big = spec("e3", 0.25);
        big.args = Some(BTreeMap::from([("recipe".to_string(), recipe)]));
        assert!(big.to_json().len() <= MAX_SPEC_BYTES, "JobSpec::for_request would keep the args");
        launcher.launch(&big).await.expect("launched");
        let seen = seen.lock().expect("lock");
        let overrides = seen.first().and_then(|r| r.overrides()).expect("overrides");
        let value = overrides.container_overrides()[0].environment()[0].value().expect("value");
        let sent = JobSpec::from_json(value).expect("a spec");
        assert_eq!(sent.args, None);
        assert_eq!(sent.exec_id, "e3");
        assert_eq!(sent.secret_plan, big.secret_plan);
    }

    #[tokio::test]
    async fn placement_failures_in_a_200_answer() {
        let memory = mock!(Client::run_task).then_output(|| {
            RunTaskOutput::builder()
                .failures(et::Failure::builder().arn("arn:ci").reason("RESOURCE:MEMORY").build())
                .build()
        });
        let missing = mock!(Client::run_task).then_output(|| {
            RunTaskOutput::builder().failures(et::Failure::builder().arn("arn:td").reason("MISSING").build()).build()
        });
        let empty = mock!(Client::run_task).then_output(|| RunTaskOutput::builder().build());
        let client = mock_client!(aws_sdk_ecs, RuleMode::Sequential, &[&memory, &missing, &empty]);
        let launcher = EcsLauncher::new(client, config());

        let err = launcher.launch(&spec("e1", 0.25)).await.expect_err("no capacity");
        assert!(err.is_transient(), "{err}");
        assert!(err.to_string().contains("RESOURCE:MEMORY"), "{err}");
        assert!(!err.to_string().contains(JOB_SPEC_ENV) && !err.to_string().contains("recipe"), "{err}");

        let err = launcher.launch(&spec("e1", 0.25)).await.expect_err("missing task definition");
        assert!(!err.is_transient(), "{err}");
        assert!(err.to_string().contains("MISSING"), "{err}");

        let err = launcher.launch(&spec("e1", 0.25)).await.expect_err("empty answer");
        assert!(err.is_transient(), "{err}");
    }

    #[tokio::test]
    async fn service_errors_are_classified() {
        let not_found = mock!(Client::run_task).then_error(|| {
            RunTaskError::ClusterNotFoundException(
                ClusterNotFoundException::builder().message("Cluster not found.").build(),
            )
        });
        let client = mock_client!(aws_sdk_ecs, RuleMode::Sequential, &[&not_found]);
        let err = EcsLauncher::new(client, config()).launch(&spec("e1", 0.25)).await.expect_err("fails");
        assert!(!err.is_transient(), "{err}");
        assert!(err.to_string().contains("Cluster not found"), "{err}");

        // The SDK's own retries are off here: only the classification of the last answer matters.
        let no_retries =
            |b: aws_sdk_ecs::config::Builder| b.retry_config(aws_sdk_ecs::config::retry::RetryConfig::disabled());
        let server = mock!(Client::run_task)
            .sequence()
            .http_status(500, Some(r#"{"__type":"ServerException","message":"boom"}"#.into()))
            .repeatedly()
            .build();
        let client = mock_client!(aws_sdk_ecs, RuleMode::Sequential, &[&server], no_retries);
        let err = EcsLauncher::new(client, config()).launch(&spec("e1", 0.25)).await.expect_err("fails");
        assert!(err.is_transient(), "{err}");

        let throttled = mock!(Client::run_task)
            .sequence()
            .http_status(400, Some(r#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#.into()))
            .repeatedly()
            .build();
        let client = mock_client!(aws_sdk_ecs, RuleMode::Sequential, &[&throttled], no_retries);
        let err = EcsLauncher::new(client, config()).launch(&spec("e1", 0.25)).await.expect_err("fails");
        assert!(err.is_transient(), "{err}");

        let denied = mock!(Client::run_task)
            .sequence()
            .http_status(400, Some(r#"{"__type":"AccessDeniedException","message":"not allowed"}"#.into()))
            .repeatedly()
            .build();
        let client = mock_client!(aws_sdk_ecs, RuleMode::Sequential, &[&denied], no_retries);
        let err = EcsLauncher::new(client, config()).launch(&spec("e1", 0.25)).await.expect_err("fails");
        assert!(!err.is_transient(), "{err}");
    }

    fn task(arn: &str, last: &str, tags: &[(&str, &str)]) -> et::Task {
        let mut b = et::Task::builder()
            .task_arn(arn)
            .last_status(last)
            .desired_status("RUNNING")
            .created_at(aws_sdk_ecs::primitives::DateTime::from_millis(1_700_000_000_000));
        for (k, v) in tags {
            b = b.tags(et::Tag::builder().key(*k).value(*v).build());
        }
        b.build()
    }

    #[tokio::test]
    async fn running_pages_describes_and_reads_the_tags() {
        let list = mock!(Client::list_tasks).then_compute_output(|input: &ListTasksInput| {
            assert_eq!(input.started_by(), Some("datahub-executor/remote"));
            assert_eq!(input.cluster(), Some("jobs"));
            if input.next_token().is_none() {
                ListTasksOutput::builder().task_arns("t1").task_arns("t2").task_arns("t3").next_token("p2").build()
            } else {
                ListTasksOutput::builder().task_arns("t4").task_arns("t5").task_arns("t6").build()
            }
        });
        let describe = mock!(Client::describe_tasks)
            .match_requests(|r| r.tasks().len() == 6 && r.include() == [et::TaskField::Tags])
            .then_output(|| {
                DescribeTasksOutput::builder()
                    .tasks(task(
                        "t1",
                        "RUNNING",
                        &[(TAG_POOL, "remote"), (TAG_EXECUTION_ID, "e1"), (TAG_WEIGHT, "0.25")],
                    ))
                    .tasks(task("t2", "PROVISIONING", &[(TAG_POOL, "remote"), (TAG_EXECUTION_ID, "e2")]))
                    .tasks(task(
                        "t3",
                        "STOPPING",
                        &[(TAG_POOL, "remote"), (TAG_EXECUTION_ID, "e3"), (TAG_WEIGHT, "0.5")],
                    ))
                    .tasks(task("t4", "RUNNING", &[(TAG_POOL, "remote.other"), (TAG_WEIGHT, "0.5")]))
                    .tasks(task("t5", "PENDING", &[(TAG_POOL, "remote"), (TAG_EXECUTION_ID, "e5"), (TAG_WEIGHT, "7")]))
                    .failures(et::Failure::builder().arn("t6").reason("MISSING").build())
                    .build()
            });
        let client = mock_client!(aws_sdk_ecs, RuleMode::MatchAny, &[&list, &describe]);
        let jobs = EcsLauncher::new(client, config()).running("remote").await.expect("listed");
        let got: Vec<(&str, &str, f64)> = jobs.iter().map(|j| (j.id.as_str(), j.exec_id.as_str(), j.weight)).collect();
        assert_eq!(got, vec![("t1", "e1", 0.25), ("t2", "e2", UNKNOWN_WEIGHT), ("t5", "e5", UNKNOWN_WEIGHT)]);
        assert_eq!(jobs[0].started_ms, Some(1_700_000_000_000));
        assert_eq!(list.num_calls(), 2, "two pages");
        assert_eq!(describe.num_calls(), 1, "one chunk");
    }

    #[tokio::test]
    async fn job_env_names_are_read_once() {
        let describe = mock!(Client::describe_task_definition)
            .match_requests(|r| r.task_definition() == Some("ingest-job:3"))
            .then_output(|| {
                DescribeTaskDefinitionOutput::builder()
                    .task_definition(
                        et::TaskDefinition::builder()
                            .container_definitions(
                                et::ContainerDefinition::builder()
                                    .name("sidecar")
                                    .environment(et::KeyValuePair::builder().name("NOT_OURS").value("x").build())
                                    .build(),
                            )
                            .container_definitions(
                                et::ContainerDefinition::builder()
                                    .name("ingest-job")
                                    .environment(et::KeyValuePair::builder().name("SOME_JOB_ENV").value("x").build())
                                    .secrets(
                                        et::Secret::builder()
                                            .name("DB_PASSWORD")
                                            .value_from("arn:aws:secretsmanager:us-east-1:1:secret:db")
                                            .build()
                                            .expect("secret"),
                                    )
                                    .build(),
                            )
                            .build(),
                    )
                    .build()
            });
        let client = mock_client!(aws_sdk_ecs, RuleMode::MatchAny, &[&describe]);
        let launcher = EcsLauncher::new(client, config());
        let want = BTreeSet::from(["DB_PASSWORD".to_string(), "SOME_JOB_ENV".to_string()]);
        assert_eq!(launcher.job_env_names().await.expect("names"), want);
        assert_eq!(launcher.job_env_names().await.expect("cached"), want);
        assert_eq!(describe.num_calls(), 1);

        let other = EcsLauncher::new(
            mock_client!(aws_sdk_ecs, RuleMode::MatchAny, &[&describe]),
            EcsConfig { container: "missing".into(), ..config() },
        );
        let err = other.job_env_names().await.expect_err("no such container");
        assert!(!err.is_transient() && err.to_string().contains("DATAHUB_EXECUTOR_ECS_CONTAINER"), "{err}");
    }

    #[tokio::test]
    async fn stop_sends_a_bounded_reason() {
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let record = seen.clone();
        let stop = mock!(Client::stop_task).then_compute_output(move |input| {
            record.lock().expect("lock").push(input.reason().unwrap_or_default().to_owned());
            aws_sdk_ecs::operation::stop_task::StopTaskOutput::builder().build()
        });
        let client = mock_client!(aws_sdk_ecs, RuleMode::Sequential, &[&stop]);
        EcsLauncher::new(client, config()).stop("arn:t", &"é".repeat(400)).await.expect("stopped");
        assert_eq!(seen.lock().expect("lock")[0].chars().count(), MAX_STOP_REASON_CHARS);
    }
}
