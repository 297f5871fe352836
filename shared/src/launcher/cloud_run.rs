//! Cloud Run jobs launcher: one execution request = one execution of a Cloud Run job
//! (DESIGN.md §2.6; REST shapes in `reference/aws-gcp.md` §2.1). Plain `reqwest` against the v2
//! REST API, with the base URL configurable so tests run it against a fake.
//!
//! * **launch**: `POST {api_base}/v2/projects/P/locations/L/jobs/J:run` with
//!   `{"overrides": {"containerOverrides": [{"name": <container>?, "env": [{"name":
//!   "DATAHUB_EXECUTOR_JOB_SPEC", "value": <spec JSON>}]}], "taskCount": 1, "timeout": "<n>s"?}}`.
//!   Env overrides are merged into the job's env, so the job keeps its own variables (and its
//!   secret references); the spec never holds a secret value. The answer is a long-running
//!   `Operation` whose `metadata` is the new Execution: its `metadata.name` is the job's id.
//!   Overrides need `run.jobs.runWithOverrides` (roles/run.developer on the job).
//! * **How executions are recognised** (for `running`): Cloud Run's `RunJob` overrides take no
//!   labels or annotations, and listing executions has no server-side filter. But an Execution's
//!   `template` is the task template *with the run's overrides applied*, so its container env holds
//!   the `DATAHUB_EXECUTOR_JOB_SPEC` we sent. `running(pool)` lists the job's executions
//!   (`GET .../jobs/J/executions?pageSize=100`, every page), keeps the live ones (no
//!   `completionTime`, no `deleteTime`, fewer finished tasks than `taskCount`) and reads exec id,
//!   pool and weight back from that spec; executions without a readable spec (started by hand,
//!   without overrides) belong to no pool and are skipped. So capacity comes from Cloud Run, not
//!   from memory. The execution's `startTime` (else `createTime`) orders racing admissions.
//! * **Idempotency**: Cloud Run has no client token for `RunJob`, so `launch` itself cannot
//!   deduplicate. The admission checks the pool's live jobs (`running`, which carries each
//!   execution's exec id) before it launches, so a redelivered message finds the execution and is
//!   not launched again; `Launched::already_running` is therefore always false here. The window
//!   left is a redelivery racing the first delivery's `:run` before Cloud Run lists the execution.
//! * **stop**: `POST /v2/{execution name}:cancel`; only names under the configured job are accepted,
//!   and an execution that no longer exists (404) counts as stopped.
//! * **job_env_names**: `GET .../jobs/J` → `template.template.containers[*].env[*].name` (plain
//!   values and Secret Manager references alike; only the configured container when one is
//!   named), fetched once and cached.
//! * **Limits**: an env var value may be 32 KiB; the spec is held to [`MAX_SPEC_BYTES`] (16 KiB),
//!   beyond which the admission passes the execution id alone.
//! * **Errors**: 408/429/5xx, connection failures and transient token failures are
//!   [`LaunchError::Transient`]; other 4xx are [`LaunchError::Permanent`]. Messages name the call,
//!   the HTTP status and Google's error status/message, never the spec.
//!
//! Configuration (see [`CloudRunConfig::from_lookup`]): `DATAHUB_EXECUTOR_CLOUD_RUN_PROJECT`,
//! `_REGION`, `_JOB`, optional `_CONTAINER` (set it when the job has more than one container),
//! `_API_BASE` (default `https://run.googleapis.com`) and `_TASK_TIMEOUT` (seconds; the job's own
//! task timeout applies when unset, and Cloud Run's default there is only 10 minutes). The token
//! comes from [`crate::gcp::token_source_from_env`].

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::DateTime;
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use tokio::sync::OnceCell;

use super::{JOB_SPEC_ENV, JobSpec, LaunchError, Launched, Launcher, RunningJob};
use crate::error::ConfigError;
use crate::gcp::{TokenSource, error_chain, error_excerpt, token_source_from_env};
use crate::secrets::BoxFuture;

/// The launcher's name.
pub const LAUNCHER_NAME: &str = "cloud-run";
/// The Cloud Run Admin API.
pub const DEFAULT_API_BASE: &str = "https://run.googleapis.com";
/// The largest spec put into the env override (Cloud Run allows 32 KiB per value).
pub const MAX_SPEC_BYTES: usize = 16 * 1024;
/// Executions asked for per page.
const PAGE_SIZE: usize = 100;
/// A bound on pages read per listing (100,000 executions), against a server that never ends.
const MAX_PAGES: usize = 1000;

pub const PROJECT_ENV: &str = "DATAHUB_EXECUTOR_CLOUD_RUN_PROJECT";
pub const REGION_ENV: &str = "DATAHUB_EXECUTOR_CLOUD_RUN_REGION";
pub const JOB_ENV: &str = "DATAHUB_EXECUTOR_CLOUD_RUN_JOB";
pub const CONTAINER_ENV: &str = "DATAHUB_EXECUTOR_CLOUD_RUN_CONTAINER";
pub const API_BASE_ENV: &str = "DATAHUB_EXECUTOR_CLOUD_RUN_API_BASE";
pub const TASK_TIMEOUT_ENV: &str = "DATAHUB_EXECUTOR_CLOUD_RUN_TASK_TIMEOUT";

/// Which Cloud Run job to run, and where the API is.
#[derive(Debug, Clone, PartialEq)]
pub struct CloudRunConfig {
    /// Project id (or number).
    pub project: String,
    /// Region, e.g. `europe-west1`.
    pub region: String,
    /// The job's name (not the full resource name).
    pub job: String,
    /// The container the env override goes to; `None` for a job with one container.
    pub container: Option<String>,
    /// Base URL without a trailing slash.
    pub api_base: String,
    /// Per-task timeout override; `None` keeps the job's.
    pub task_timeout: Option<Duration>,
}

fn resource_id(var: &'static str, value: &str) -> Result<String, ConfigError> {
    let v = value.trim();
    if v.is_empty() || !v.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')) {
        return Err(ConfigError::new(var, format!("{v:?} is not a Cloud Run resource id (letters, digits, - _ . :)")));
    }
    Ok(v.to_owned())
}

impl CloudRunConfig {
    /// A configuration with the default API base and no container or timeout override.
    pub fn new(project: impl Into<String>, region: impl Into<String>, job: impl Into<String>) -> Self {
        CloudRunConfig {
            project: project.into(),
            region: region.into(),
            job: job.into(),
            container: None,
            api_base: DEFAULT_API_BASE.to_owned(),
            task_timeout: None,
        }
    }

    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads the `DATAHUB_EXECUTOR_CLOUD_RUN_*` variables through `lookup`.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |k: &str| lookup(k).filter(|v| !v.trim().is_empty());
        let required = |var: &'static str| {
            get(var)
                .ok_or_else(|| ConfigError::new(var, "is required for the Cloud Run launcher"))
                .and_then(|v| resource_id(var, &v))
        };
        let project = required(PROJECT_ENV)?;
        let region = required(REGION_ENV)?;
        let job = required(JOB_ENV)?;
        let container = get(CONTAINER_ENV).map(|c| resource_id(CONTAINER_ENV, &c)).transpose()?;
        let api_base = match get(API_BASE_ENV) {
            Some(base) => {
                let base = base.trim().trim_end_matches('/');
                if !(base.starts_with("https://") || base.starts_with("http://")) || base.contains(['?', '#']) {
                    return Err(ConfigError::new(API_BASE_ENV, format!("{base:?} must be an http(s) base URL")));
                }
                base.to_owned()
            }
            None => DEFAULT_API_BASE.to_owned(),
        };
        let task_timeout = match get(TASK_TIMEOUT_ENV) {
            Some(v) => match v.trim().parse::<u64>() {
                Ok(s) if s > 0 => Some(Duration::from_secs(s)),
                _ => {
                    return Err(ConfigError::new(
                        TASK_TIMEOUT_ENV,
                        format!("{v:?} is not a positive number of seconds"),
                    ));
                }
            },
            None => None,
        };
        Ok(CloudRunConfig { project, region, job, container, api_base, task_timeout })
    }

    /// `projects/P/locations/L/jobs/J`.
    pub fn job_name(&self) -> String {
        format!("projects/{}/locations/{}/jobs/{}", self.project, self.region, self.job)
    }
}

/// Runs one Cloud Run job execution per request.
pub struct CloudRunLauncher {
    config: CloudRunConfig,
    http: reqwest::Client,
    tokens: Box<dyn TokenSource>,
    env_names: OnceCell<BTreeSet<String>>,
}

impl std::fmt::Debug for CloudRunLauncher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CloudRunLauncher").field("config", &self.config).finish_non_exhaustive()
    }
}

fn permanent(reason: String) -> LaunchError {
    LaunchError::Permanent { launcher: LAUNCHER_NAME, reason }
}

fn transient(reason: String) -> LaunchError {
    LaunchError::Transient { launcher: LAUNCHER_NAME, reason }
}

fn epoch_ms(v: &Value) -> Option<i64> {
    v.as_str().and_then(|t| DateTime::parse_from_rfc3339(t).ok()).map(|t| t.timestamp_millis())
}

fn count(v: &Value, field: &str) -> i64 {
    v.get(field).and_then(Value::as_i64).unwrap_or(0)
}

/// Whether an Execution resource is still pending or running.
fn is_live(execution: &Value) -> bool {
    let set = |f: &str| execution.get(f).and_then(Value::as_str).is_some_and(|s| !s.is_empty());
    if set("completionTime") || set("deleteTime") {
        return false;
    }
    let finished =
        count(execution, "succeededCount") + count(execution, "failedCount") + count(execution, "cancelledCount");
    finished < count(execution, "taskCount").max(1)
}

/// The job spec an execution was started with, from its template's container env.
fn execution_spec(execution: &Value) -> Option<JobSpec> {
    let containers = execution.pointer("/template/containers")?.as_array()?;
    containers
        .iter()
        .filter_map(|c| c.get("env").and_then(Value::as_array))
        .flatten()
        .find(|e| e.get("name").and_then(Value::as_str) == Some(JOB_SPEC_ENV))
        .and_then(|e| e.get("value").and_then(Value::as_str))
        .and_then(|text| JobSpec::from_json(text).ok())
}

impl CloudRunLauncher {
    /// A launcher for `config` that authenticates with `tokens`.
    pub fn new(config: CloudRunConfig, tokens: Box<dyn TokenSource>) -> Result<Self, ConfigError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .user_agent(concat!("datahub-executor-rs/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ConfigError::new(API_BASE_ENV, format!("cannot build the HTTP client: {e}")))?;
        Ok(CloudRunLauncher { config, http, tokens, env_names: OnceCell::new() })
    }

    /// Configuration and token source from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Configuration and token source through `lookup`.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let config = CloudRunConfig::from_lookup(&lookup)?;
        let tokens = token_source_from_env(&lookup)?;
        Self::new(config, tokens)
    }

    pub fn config(&self) -> &CloudRunConfig {
        &self.config
    }

    /// The `:run` request body for `spec`.
    pub fn run_body(&self, spec: &JobSpec) -> Value {
        let mut container = serde_json::Map::new();
        if let Some(name) = &self.config.container {
            container.insert("name".into(), json!(name));
        }
        container.insert("env".into(), json!([{"name": JOB_SPEC_ENV, "value": spec.to_json()}]));
        let mut overrides = json!({"containerOverrides": [container], "taskCount": 1});
        if let Some(t) = self.config.task_timeout {
            overrides["timeout"] = json!(format!("{}s", t.as_secs()));
        }
        json!({ "overrides": overrides })
    }

    /// One authenticated call. `hide` is text that must not appear in an error (the spec).
    async fn call(
        &self,
        what: &'static str,
        method: reqwest::Method,
        url: &str,
        body: Option<&Value>,
        hide: Option<&str>,
    ) -> Result<Value, LaunchError> {
        self.call_with_status(what, method, url, body, hide).await.map_err(|(_, e)| e)
    }

    /// [`Self::call`], also telling the HTTP status of a failed answer.
    async fn call_with_status(
        &self,
        what: &'static str,
        method: reqwest::Method,
        url: &str,
        body: Option<&Value>,
        hide: Option<&str>,
    ) -> Result<Value, (Option<u16>, LaunchError)> {
        let token = self.tokens.token().await.map_err(|e| {
            let reason = format!("{what}: cannot get a Google access token: {e}");
            (None, if e.is_transient() { transient(reason) } else { permanent(reason) })
        })?;
        let mut req =
            self.http.request(method, url).header("Authorization", format!("Bearer {}", token.expose_secret()));
        if let Some(b) = body {
            req = req.header("Content-Type", "application/json").body(b.to_string());
        }
        let resp = req
            .send()
            .await
            .map_err(|e| (None, transient(format!("{what}: Cloud Run could not be reached: {}", error_chain(&e)))))?;
        let status = resp.status().as_u16();
        let text = resp
            .text()
            .await
            .map_err(|e| (None, transient(format!("{what}: reading the answer failed: {}", error_chain(&e)))))?;
        if !(200..300).contains(&status) {
            let mut message = error_excerpt(&text);
            if let Some(h) = hide.filter(|h| !h.is_empty())
                && (message.contains(h) || message.contains(JOB_SPEC_ENV))
            {
                message = "(message withheld: it quotes the job spec)".to_owned();
            }
            let reason = format!("{what} answered HTTP {status}: {message}");
            let error =
                if status >= 500 || status == 408 || status == 429 { transient(reason) } else { permanent(reason) };
            return Err((Some(status), error));
        }
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).map_err(|e| (None, permanent(format!("{what}: the answer is not JSON: {e}"))))
    }

    async fn list_live(&self) -> Result<Vec<(Value, JobSpec)>, LaunchError> {
        let base = format!("{}/v2/{}/executions?pageSize={PAGE_SIZE}", self.config.api_base, self.config.job_name());
        let mut live = Vec::new();
        let mut page_token: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let url = match &page_token {
                Some(t) => format!("{base}&pageToken={}", crate::gcp::percent_encode(t)),
                None => base.clone(),
            };
            let page = self.call("list executions", reqwest::Method::GET, &url, None, None).await?;
            for execution in page.get("executions").and_then(Value::as_array).into_iter().flatten() {
                if !is_live(execution) {
                    continue;
                }
                match execution_spec(execution) {
                    Some(spec) => live.push((execution.clone(), spec)),
                    None => {
                        let name = execution.get("name").and_then(Value::as_str).unwrap_or_default();
                        tracing::debug!(
                            execution = name,
                            "live Cloud Run execution without a job spec: not counted for any pool"
                        );
                    }
                }
            }
            match page.get("nextPageToken").and_then(Value::as_str).filter(|t| !t.is_empty()) {
                Some(next) if page_token.as_deref() != Some(next) => page_token = Some(next.to_owned()),
                _ => return Ok(live),
            }
        }
        tracing::warn!(pages = MAX_PAGES, "listing Cloud Run executions stopped at the page bound");
        Ok(live)
    }
}

impl Launcher for CloudRunLauncher {
    fn name(&self) -> &'static str {
        LAUNCHER_NAME
    }

    fn max_spec_bytes(&self) -> usize {
        MAX_SPEC_BYTES
    }

    fn launch<'a>(&'a self, spec: &'a JobSpec) -> BoxFuture<'a, Result<Launched, LaunchError>> {
        Box::pin(async move {
            let spec_json = spec.to_json();
            if spec_json.len() > MAX_SPEC_BYTES {
                return Err(permanent(format!(
                    "the job spec of {} takes {} bytes, over the {MAX_SPEC_BYTES}-byte override limit",
                    spec.exec_id,
                    spec_json.len()
                )));
            }
            let job = self.config.job_name();
            let url = format!("{}/v2/{job}:run", self.config.api_base);
            let op =
                self.call("run job", reqwest::Method::POST, &url, Some(&self.run_body(spec)), Some(&spec_json)).await?;
            let id = op
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty())
                .map(str::to_owned)
                .unwrap_or_else(|| {
                    let op_name = op.get("name").and_then(Value::as_str).unwrap_or("unknown operation");
                    tracing::warn!(operation = op_name, "Cloud Run's run answer names no execution");
                    op_name.to_owned()
                });
            tracing::info!(exec_id = %spec.exec_id, execution = %id, "started a Cloud Run job execution");
            Ok(Launched { location: format!("Cloud Run execution {id} of job {job}"), id, already_running: false })
        })
    }

    fn running<'a>(&'a self, pool: &'a str) -> BoxFuture<'a, Result<Vec<RunningJob>, LaunchError>> {
        Box::pin(async move {
            let live = self.list_live().await?;
            Ok(live
                .into_iter()
                .filter(|(_, spec)| spec.pool == pool)
                .map(|(execution, spec)| RunningJob {
                    exec_id: spec.exec_id,
                    weight: spec.weight,
                    id: execution.get("name").and_then(Value::as_str).unwrap_or_default().to_owned(),
                    started_ms: execution
                        .get("startTime")
                        .and_then(epoch_ms)
                        .or_else(|| execution.get("createTime").and_then(epoch_ms)),
                })
                .collect())
        })
    }

    fn stop<'a>(&'a self, id: &'a str, reason: &'a str) -> BoxFuture<'a, Result<(), LaunchError>> {
        Box::pin(async move {
            let prefix = format!("{}/executions/", self.config.job_name());
            let rest = id.strip_prefix(&prefix).unwrap_or("");
            if rest.is_empty() || rest.contains(['/', '?', '#', ':']) {
                return Err(permanent(format!(
                    "cancel execution: {id:?} is not an execution of {}",
                    self.config.job_name()
                )));
            }
            let url = format!("{}/v2/{id}:cancel", self.config.api_base);
            match self.call_with_status("cancel execution", reqwest::Method::POST, &url, Some(&json!({})), None).await {
                Ok(_) => {
                    tracing::info!(execution = id, reason, "cancelled a Cloud Run job execution");
                    Ok(())
                }
                Err((Some(404), _)) => {
                    tracing::info!(execution = id, "the Cloud Run execution to cancel no longer exists");
                    Ok(())
                }
                Err((_, e)) => Err(e),
            }
        })
    }

    fn job_env_names(&self) -> BoxFuture<'_, Result<BTreeSet<String>, LaunchError>> {
        Box::pin(async move {
            let names = self
                .env_names
                .get_or_try_init(|| async {
                    let url = format!("{}/v2/{}", self.config.api_base, self.config.job_name());
                    let job = self.call("get job", reqwest::Method::GET, &url, None, None).await?;
                    let containers = job.pointer("/template/template/containers").and_then(Value::as_array);
                    Ok::<_, LaunchError>(
                        containers
                            .into_iter()
                            .flatten()
                            .filter(|c| match &self.config.container {
                                Some(name) => c.get("name").and_then(Value::as_str) == Some(name.as_str()),
                                None => true,
                            })
                            .filter_map(|c| c.get("env").and_then(Value::as_array))
                            .flatten()
                            .filter_map(|e| e.get("name").and_then(Value::as_str))
                            .filter(|n| *n != JOB_SPEC_ENV)
                            .map(str::to_owned)
                            .collect(),
                    )
                })
                .await?;
            Ok(names.clone())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gcp::StaticToken;
    use std::collections::BTreeMap;

    fn lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: BTreeMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| map.get(k).cloned()
    }

    fn spec() -> JobSpec {
        JobSpec {
            exec_id: "e1".into(),
            pool: "remote".into(),
            task: "RUN_INGEST".into(),
            weight: 0.25,
            args: None,
            secret_plan: BTreeMap::new(),
        }
    }

    #[test]
    fn config_reads_and_names_the_variable() {
        let base = [(PROJECT_ENV, "proj"), (REGION_ENV, "europe-west1"), (JOB_ENV, "ingest")];
        let c = CloudRunConfig::from_lookup(lookup(&base)).expect("config");
        assert_eq!(c, CloudRunConfig::new("proj", "europe-west1", "ingest"));
        assert_eq!(c.job_name(), "projects/proj/locations/europe-west1/jobs/ingest");

        let mut all = base.to_vec();
        all.extend([(CONTAINER_ENV, "job"), (API_BASE_ENV, "http://127.0.0.1:9/"), (TASK_TIMEOUT_ENV, "3600")]);
        let c = CloudRunConfig::from_lookup(lookup(&all)).expect("config");
        assert_eq!(c.container.as_deref(), Some("job"));
        assert_eq!(c.api_base, "http://127.0.0.1:9");
        assert_eq!(c.task_timeout, Some(Duration::from_secs(3600)));

        let err = CloudRunConfig::from_lookup(lookup(&base[..2])).expect_err("no job");
        assert_eq!(err.var, JOB_ENV);
        let err = CloudRunConfig::from_lookup(lookup(&[(PROJECT_ENV, "p/../x"), (REGION_ENV, "r"), (JOB_ENV, "j")]))
            .expect_err("path in the project");
        assert_eq!(err.var, PROJECT_ENV);
        let mut bad = base.to_vec();
        bad.push((API_BASE_ENV, "run.googleapis.com"));
        assert_eq!(CloudRunConfig::from_lookup(lookup(&bad)).expect_err("no scheme").var, API_BASE_ENV);
        let mut bad = base.to_vec();
        bad.push((TASK_TIMEOUT_ENV, "1h"));
        assert_eq!(CloudRunConfig::from_lookup(lookup(&bad)).expect_err("not seconds").var, TASK_TIMEOUT_ENV);
    }

    #[test]
    fn run_body_has_one_env_override() {
        let mut config = CloudRunConfig::new("p", "r", "j");
        let launcher = CloudRunLauncher::new(config.clone(), Box::new(StaticToken::new("t".into()))).expect("launcher");
        let body = launcher.run_body(&spec());
        assert_eq!(
            body,
            json!({"overrides": {"containerOverrides": [{"env": [{"name": JOB_SPEC_ENV, "value": spec().to_json()}]}], "taskCount": 1}})
        );
        config.container = Some("ingest".into());
        config.task_timeout = Some(Duration::from_secs(600));
        let launcher = CloudRunLauncher::new(config, Box::new(StaticToken::new("t".into()))).expect("launcher");
        let body = launcher.run_body(&spec());
        assert_eq!(body["overrides"]["containerOverrides"][0]["name"], "ingest");
        assert_eq!(body["overrides"]["timeout"], "600s");
    }

    #[test]
    fn live_executions_and_their_specs() {
        let env = json!([{"name": "OTHER", "value": "x"}, {"name": JOB_SPEC_ENV, "value": spec().to_json()}]);
        let running =
            json!({"name": "n", "taskCount": 1, "runningCount": 1, "template": {"containers": [{"env": env}]}});
        assert!(is_live(&running));
        assert_eq!(execution_spec(&running), Some(spec()));
        let done = json!({"taskCount": 1, "completionTime": "2026-01-01T00:00:00Z"});
        assert!(!is_live(&done));
        let cancelled = json!({"taskCount": 1, "cancelledCount": 1});
        assert!(!is_live(&cancelled));
        assert!(is_live(&json!({"taskCount": 1})), "pending");
        assert_eq!(execution_spec(&json!({"template": {"containers": [{"env": [{"name": JOB_SPEC_ENV}]}]}})), None);
        assert_eq!(epoch_ms(&json!("2026-01-01T00:00:01.5Z")), Some(1_767_225_601_500));
    }
}
