//! Launchers: where one execution request becomes one job (DESIGN.md §2.6).
//!
//! A [`Launcher`] starts a job from a [`JobSpec`], lists the pool's live jobs (with the weight each
//! was admitted with, read back from the launcher's own tags/labels, so capacity never depends on
//! memory), and tells which environment variable names a job will have (so the admission does not
//! report a secret missing that the job's environment holds). Implementations: ECS Fargate
//! (`ecs`), Cloud Run jobs (`cloud_run`) and a local child process (`local`).
//!
//! A spec never holds a secret value: only names and the store expected to hold each.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::request::{ExecutionRequest, TaskArgs, TaskKind};
use crate::secrets::BoxFuture;

pub mod cloud_run;
#[cfg(feature = "aws")]
pub mod ecs;
pub mod local;

/// The environment variable that carries the spec into the job container.
pub const JOB_SPEC_ENV: &str = "DATAHUB_EXECUTOR_JOB_SPEC";
/// Tag / label names written on every job.
pub const TAG_POOL: &str = "datahub-executor-pool";
pub const TAG_EXECUTION_ID: &str = "datahub-execution-id";
pub const TAG_WEIGHT: &str = "datahub-executor-weight";

/// What the job needs to run one request. Serialised as JSON into [`JOB_SPEC_ENV`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    /// The execution request's id (the last part of its URN).
    pub exec_id: String,
    /// The executor pool that admitted it.
    pub pool: String,
    /// `RUN_INGEST` or `TEST_CONNECTION`.
    pub task: String,
    /// The capacity share it was admitted with, in (0, 1].
    pub weight: f64,
    /// The request's args (recipe with `${NAME}` references, never values). `None` when the args
    /// would not fit the launcher's override limit or hold `extra_env_vars`: the job then reads the
    /// request from GMS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<BTreeMap<String, String>>,
    /// For each referenced secret name, the store expected to hold it (`env`, `file`, `datahub`, ...).
    #[serde(default)]
    pub secret_plan: BTreeMap<String, String>,
}

impl JobSpec {
    /// The spec as JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses a spec.
    pub fn from_json(text: &str) -> Result<Self, String> {
        serde_json::from_str(text).map_err(|e| format!("{JOB_SPEC_ENV} is not a job spec: {e}"))
    }

    /// A spec for `req`, with its args when they carry no `extra_env_vars` and the spec stays
    /// within `max_bytes`; otherwise without args (the job fetches the request from GMS).
    pub fn for_request(
        req: &ExecutionRequest,
        pool: &str,
        weight: f64,
        plan: BTreeMap<String, String>,
        max_bytes: usize,
    ) -> Self {
        let mut spec = JobSpec {
            exec_id: req.exec_id.clone(),
            pool: pool.to_owned(),
            task: req.task.name().to_owned(),
            weight,
            args: None,
            secret_plan: plan,
        };
        if req.args.extra_env_vars.is_empty() {
            let args =
                req.args.to_args().into_iter().filter_map(|(k, v)| v.as_str().map(|s| (k, s.to_owned()))).collect();
            spec.args = Some(args);
            if spec.to_json().len() > max_bytes {
                spec.args = None;
            }
        }
        spec
    }

    /// The request this spec describes, when it carries its args.
    pub fn request(&self) -> Result<Option<ExecutionRequest>, String> {
        let Some(args) = &self.args else { return Ok(None) };
        let task =
            TaskKind::parse(&self.task).ok_or_else(|| format!("unknown task {:?} in the job spec", self.task))?;
        let map: serde_json::Map<String, serde_json::Value> =
            args.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect();
        let args = TaskArgs::from_args(&map).map_err(|e| e.to_string())?;
        Ok(Some(ExecutionRequest {
            exec_id: self.exec_id.clone(),
            task,
            executor_id: Some(self.pool.clone()),
            args,
            ingestion_source: None,
        }))
    }
}

/// A live job of the pool, as the launcher sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct RunningJob {
    pub exec_id: String,
    pub weight: f64,
    /// The launcher's id of the job (task ARN, execution name, pid).
    pub id: String,
    /// When it started (epoch ms), if known: orders jobs when two admissions raced.
    pub started_ms: Option<i64>,
}

/// A job that was started.
#[derive(Debug, Clone, PartialEq)]
pub struct Launched {
    /// The launcher's id of the job.
    pub id: String,
    /// Where it runs, for the report (e.g. `ECS task arn:... on cluster x`).
    pub location: String,
    /// True when the launcher answered with a job that already existed (idempotent retry).
    pub already_running: bool,
}

/// A launcher call that failed.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum LaunchError {
    /// Worth retrying later (throttling, 5xx, no capacity in the cluster right now).
    #[error("{launcher}: {reason} (will retry)")]
    Transient { launcher: &'static str, reason: String },
    /// Will fail the same way again (bad configuration, access denied, bad parameters).
    #[error("{launcher}: {reason}")]
    Permanent { launcher: &'static str, reason: String },
}

impl LaunchError {
    pub fn is_transient(&self) -> bool {
        matches!(self, LaunchError::Transient { .. })
    }
}

/// Starts and lists jobs.
pub trait Launcher: Send + Sync {
    /// `ecs`, `cloud-run` or `local`.
    fn name(&self) -> &'static str;

    /// The most bytes a spec may take in a launch override.
    fn max_spec_bytes(&self) -> usize;

    /// Starts a job for `spec`. Idempotent per execution id where the platform allows it (ECS
    /// `clientToken`), so a second delivery does not start a second job.
    fn launch<'a>(&'a self, spec: &'a JobSpec) -> BoxFuture<'a, Result<Launched, LaunchError>>;

    /// The pool's live (pending or running) jobs.
    fn running<'a>(&'a self, pool: &'a str) -> BoxFuture<'a, Result<Vec<RunningJob>, LaunchError>>;

    /// Stops a job (used when two admissions raced past the capacity).
    fn stop<'a>(&'a self, id: &'a str, reason: &'a str) -> BoxFuture<'a, Result<(), LaunchError>>;

    /// The environment variable names every job gets from its definition (ECS task definition
    /// `environment`/`secrets`, Cloud Run job env), for the secret plan.
    fn job_env_names(&self) -> BoxFuture<'_, Result<BTreeSet<String>, LaunchError>>;
}

/// What `DATAHUB_EXECUTOR_LAUNCHER` selects (`ecs`, `cloud-run` or `local`; default `local`) with
/// that launcher's configuration. Pure: no client is built, so tests (and the deployment
/// templates' variable check) can load it from a map.
#[derive(Debug, Clone, PartialEq)]
pub enum LauncherConfig {
    #[cfg(feature = "aws")]
    Ecs(ecs::EcsConfig),
    CloudRun(cloud_run::CloudRunConfig),
    /// The binary the local launcher runs (`DATAHUB_EXECUTOR_LOCAL_JOB_BIN`).
    Local(std::path::PathBuf),
}

impl LauncherConfig {
    /// Reads `DATAHUB_EXECUTOR_LAUNCHER` and the chosen launcher's variables through `lookup`.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, crate::error::ConfigError> {
        let name = lookup("DATAHUB_EXECUTOR_LAUNCHER").map(|v| v.trim().to_ascii_lowercase()).unwrap_or_default();
        match name.as_str() {
            #[cfg(feature = "aws")]
            "ecs" => Ok(LauncherConfig::Ecs(ecs::EcsConfig::from_lookup(&lookup)?)),
            "cloud-run" | "cloudrun" => Ok(LauncherConfig::CloudRun(cloud_run::CloudRunConfig::from_lookup(&lookup)?)),
            "local" | "" => Ok(LauncherConfig::Local(local::LocalLauncher::bin_from_lookup(&lookup))),
            other => Err(crate::error::ConfigError::new(
                "DATAHUB_EXECUTOR_LAUNCHER",
                format!("{other:?} is not a launcher: use ecs, cloud-run or local"),
            )),
        }
    }
}

/// The launcher configured through `lookup` ([`LauncherConfig::from_lookup`]); the Cloud Run
/// launcher's Google token source is chosen through `lookup` too, the ECS client from the AWS
/// SDK's own environment.
pub async fn from_lookup(
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Box<dyn Launcher>, crate::error::ConfigError> {
    match LauncherConfig::from_lookup(&lookup)? {
        #[cfg(feature = "aws")]
        LauncherConfig::Ecs(config) => Ok(Box::new(ecs::EcsLauncher::from_config(config).await)),
        LauncherConfig::CloudRun(config) => {
            let tokens = crate::gcp::token_source_from_env(&lookup)?;
            Ok(Box::new(cloud_run::CloudRunLauncher::new(config, tokens)?))
        }
        LauncherConfig::Local(bin) => Ok(Box::new(local::LocalLauncher::new(bin))),
    }
}

/// [`from_lookup`] over the process environment.
pub async fn from_env() -> Result<Box<dyn Launcher>, crate::error::ConfigError> {
    from_lookup(|k| std::env::var(k).ok()).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::TaskArgs;

    fn request(extra: bool) -> ExecutionRequest {
        let mut args = TaskArgs::for_recipe(r#"{"source": {"type": "postgres", "config": {"password": "${PG}"}}}"#);
        args.version = "1.7.0.17".into();
        if extra {
            args.extra_env_vars.insert("AWS_SECRET_ACCESS_KEY".into(), "not-in-any-override".into());
        }
        ExecutionRequest {
            exec_id: "e1".into(),
            task: TaskKind::RunIngest,
            executor_id: Some("remote".into()),
            args,
            ingestion_source: None,
        }
    }

    #[test]
    fn spec_round_trips_and_falls_back_to_the_id_alone() {
        let plan: BTreeMap<String, String> = [("PG".to_string(), "datahub".to_string())].into();
        let spec = JobSpec::for_request(&request(false), "remote", 0.25, plan.clone(), 8192);
        let back = JobSpec::from_json(&spec.to_json()).expect("parses");
        assert_eq!(back, spec);
        let req = back.request().expect("ok").expect("has args");
        assert_eq!(req.args.version, "1.7.0.17");
        assert!(req.args.recipe.contains("${PG}"));

        let small = JobSpec::for_request(&request(false), "remote", 0.25, plan.clone(), 100);
        assert!(small.args.is_none(), "too big for the limit: id only");
        let with_env = JobSpec::for_request(&request(true), "remote", 0.25, plan, 8192);
        assert!(with_env.args.is_none());
        assert!(!with_env.to_json().contains("not-in-any-override"));
    }
}
