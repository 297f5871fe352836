//! One run of an execution request, from RUNNING to a terminal status (DESIGN.md §3).
//!
//! The flow: kickoff RUNNING → parse the recipe → resolve its secrets (names only leave this
//! process) → choose the venv → run `datahub ingest` through [`crate::runner`] while progress,
//! KILL polling, memory and time limits run beside it → map the outcome to SUCCESS / FAILURE /
//! CANCELLED / TIMEOUT with DataHub's report → write the final status with retries.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use secrecy::ExposeSecret;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::{JobConfig, parse_seconds};
use crate::error::{GmsError, RecipeError, RequestError};
use crate::gms::GmsClient;
use crate::masking::Masker;
use crate::memory::{human_bytes, parse_memory_limit};
use crate::recipe::{self, prepare_for_cli, references, substitute};
use crate::report::{ExecutionReport, LogTail, ReportParts, char_tail, render_report};
use crate::request::{
    CLI_EXECUTOR_ID, EXECUTION_REQUEST_URN_PREFIX, ExecutionRequest, INGESTION_SOURCE_URN_PREFIX, TaskArgs, TaskKind,
};
use crate::runner::{self, ChildCommand, Limits, StopReason, signal_name};
use crate::secrets::{DatahubStore, EnvStore, FileStore, SecretStore, looks_like_json_document, resolve_in};
use crate::status::{ExecutionResult, Status, StructuredReport, execution_request_proposal, ingest_proposal_body};
use crate::venv::{self, VenvSpec};

/// Exit codes of the job, so the platform can tell outcomes apart.
pub mod exit_code {
    pub const SUCCESS: i32 = 0;
    pub const FAILURE: i32 = 1;
    pub const USAGE: i32 = 2;
    pub const CANCELLED: i32 = 3;
    pub const TIMEOUT: i32 = 4;
    /// The run's status could not be written to GMS.
    pub const STATUS_NOT_WRITTEN: i32 = 5;
}

/// A request to stop the run, shared by the KILL poller and the SIGTERM handler. The first reason wins.
#[derive(Debug, Clone)]
pub struct StopHandle {
    tx: Arc<watch::Sender<Option<StopReason>>>,
}

impl Default for StopHandle {
    fn default() -> Self {
        StopHandle { tx: Arc::new(watch::channel(None).0) }
    }
}

impl StopHandle {
    pub fn stop(&self, reason: StopReason) {
        self.tx.send_if_modified(|cur| {
            if cur.is_none() {
                *cur = Some(reason);
                true
            } else {
                false
            }
        });
    }

    pub fn subscribe(&self) -> watch::Receiver<Option<StopReason>> {
        self.tx.subscribe()
    }

    fn current(&self) -> Option<StopReason> {
        self.tx.borrow().clone()
    }
}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct JobOutcome {
    pub result: ExecutionResult,
    /// Whether the final status reached GMS (always true without GMS).
    pub status_written: bool,
    /// Why the status could not be written, if it could not.
    pub status_error: Option<String>,
    pub exit_code: i32,
    /// Where the recipe's sink wrote, for people running by hand.
    pub sink: Option<String>,
}

/// What the job needs besides the request.
pub struct JobContext {
    pub cfg: JobConfig,
    pub gms: Option<GmsClient>,
    /// Echo the masked output lines to stdout.
    pub echo: bool,
    /// The cloud secret stores (AWS, GCP) in precedence order, after env, file and datahub.
    pub cloud_stores: Vec<Box<dyn SecretStore>>,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Writes statuses to GMS, or to stdout when there is no GMS.
struct Reporter {
    gms: Option<GmsClient>,
    exec_id: String,
    start_ms: i64,
    payload_max: usize,
}

impl Reporter {
    async fn write(&self, result: &ExecutionResult) -> Result<(), GmsError> {
        match &self.gms {
            Some(g) => g.write_execution_result(&self.exec_id, result).await,
            None => {
                println!("ingest-job: {} {}", result.status.as_str(), self.exec_id);
                Ok(())
            }
        }
    }

    /// Writes with exponential backoff (1 s doubling to 60 s) until `deadline`; permanent errors
    /// stop at once.
    async fn write_retried(&self, result: &ExecutionResult, deadline: Duration) -> Result<(), GmsError> {
        let end = Instant::now() + deadline;
        let mut wait = Duration::from_secs(1);
        loop {
            match self.write(result).await {
                Ok(()) => return Ok(()),
                Err(e) if e.is_transient() && Instant::now() + wait < end => {
                    tracing::warn!(exec_id = %self.exec_id, status = result.status.as_str(), error = %e, retry_in = ?wait, "status write failed; retrying");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(60));
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn running(&self, report: Option<String>) -> ExecutionResult {
        ExecutionResult {
            status: Status::Running,
            report,
            structured_report: None,
            start_time_ms: self.start_ms,
            duration_ms: None,
        }
    }
}

/// Shared state between the run and its progress task.
#[derive(Default)]
struct Progress {
    tail: LogTail,
    lines_seen: u64,
}

/// Runs one request to its end. Never panics on bad input: everything becomes a status.
pub async fn execute(ctx: &JobContext, req: &ExecutionRequest, stop: &StopHandle) -> JobOutcome {
    let start_ms = now_ms();
    let started = Instant::now();
    let reporter = Arc::new(Reporter {
        gms: ctx.gms.clone(),
        exec_id: req.exec_id.clone(),
        start_ms,
        payload_max: ctx.cfg.payload_max_length,
    });
    let mut report = ExecutionReport::new(&req.exec_id);
    report.info(format!("Starting execution for task with name={}", req.task.name()));
    let kickoff_deadline = ctx.cfg.result_retry_deadline.min(Duration::from_secs(300));
    if let Err(e) = reporter.write_retried(&reporter.running(None), kickoff_deadline).await {
        let msg = format!("the RUNNING status could not be written to GMS, so the run was not started: {e}");
        tracing::error!(exec_id = %req.exec_id, "{msg}");
        let result = ExecutionResult {
            status: Status::Failure,
            report: Some(msg.clone()),
            structured_report: None,
            start_time_ms: start_ms,
            duration_ms: Some(now_ms() - start_ms),
        };
        return JobOutcome {
            result,
            status_written: false,
            status_error: Some(msg),
            exit_code: exit_code::STATUS_NOT_WRITTEN,
            sink: None,
        };
    }

    let progress = Arc::new(Mutex::new(Progress::default()));
    let (done_tx, done_rx) = watch::channel(false);
    let progress_task =
        tokio::spawn(progress_loop(reporter.clone(), progress.clone(), ctx.cfg.progress_interval, done_rx.clone()));
    let signal_task = ctx
        .gms
        .clone()
        .map(|g| tokio::spawn(poll_kill(g, req.urn(), ctx.cfg.signal_poll_interval, stop.clone(), done_rx.clone())));

    let echo = ctx.echo;
    let mut on_output = |text: &str| {
        if echo {
            let mut out = std::io::stdout().lock();
            // Output that cannot be echoed (a closed stdout) is still kept for the report.
            let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
        }
        if let Ok(mut p) = progress.lock() {
            for line in text.lines() {
                p.tail.push(line);
                p.lines_seen += 1;
            }
        }
    };
    let (status, structured, sink) = run_task(ctx, req, stop, &mut report, &mut on_output).await;

    let _ = done_tx.send(true);
    if tokio::time::timeout(Duration::from_secs(10), progress_task).await.is_err() {
        tracing::warn!(exec_id = %req.exec_id, "progress writer did not stop in time");
    }
    if let Some(t) = signal_task {
        t.abort();
    }

    let logs = progress.lock().map(|p| p.tail.text()).unwrap_or_default();
    let duration_ms = (started.elapsed().as_millis() as i64).max(0);
    let mut max = ctx.cfg.payload_max_length;
    let mut result;
    let attempt_error;
    let end = Instant::now() + ctx.cfg.result_retry_deadline;
    loop {
        let parts = ReportParts {
            task_name: req.task.name(),
            status,
            report: &report,
            structured: structured.as_deref(),
            logs: &logs,
        };
        let (text, sr) = render_report(&parts, max);
        result = ExecutionResult {
            status,
            report: Some(text),
            structured_report: sr.map(|s| StructuredReport { kind: req.task.name().to_owned(), serialized_value: s }),
            start_time_ms: start_ms,
            duration_ms: Some(duration_ms),
        };
        let left = end.saturating_duration_since(Instant::now());
        match reporter.write_retried(&result, left).await {
            Ok(()) => {
                attempt_error = None;
                break;
            }
            Err(e) if e.is_too_large() && max > 10_000 => {
                max /= 2;
                tracing::warn!(exec_id = %req.exec_id, max, "GMS refused the report for its size; retrying smaller");
            }
            Err(e) => {
                attempt_error = Some(e.to_string());
                break;
            }
        }
    }
    let exit = match (&attempt_error, status) {
        (Some(e), _) => {
            tracing::error!(exec_id = %req.exec_id, status = status.as_str(), error = %e, "the final status could not be written to GMS");
            exit_code::STATUS_NOT_WRITTEN
        }
        (None, Status::Success) => exit_code::SUCCESS,
        (None, Status::Cancelled) => exit_code::CANCELLED,
        (None, Status::Timeout) => exit_code::TIMEOUT,
        (None, _) => exit_code::FAILURE,
    };
    JobOutcome { result, status_written: attempt_error.is_none(), status_error: attempt_error, exit_code: exit, sink }
}

/// The part of a run between kickoff and completion. Returns the status, the structured report and
/// a description of the sink.
async fn run_task(
    ctx: &JobContext,
    req: &ExecutionRequest,
    stop: &StopHandle,
    report: &mut ExecutionReport,
    on_output: &mut (dyn FnMut(&str) + Send),
) -> (Status, Option<String>, Option<String>) {
    let cfg = &ctx.cfg;
    let task_verb = match req.task {
        TaskKind::RunIngest => "datahub ingest",
        TaskKind::TestConnection => "datahub test connection",
    };
    let mut recipe_value = match recipe::parse_recipe(&req.args.recipe) {
        Ok(v) => v,
        Err(e) => {
            report.error(format!("Bad recipe: {e}"));
            return (Status::Failure, None, None);
        }
    };
    let mut sink = describe_sink(&recipe_value);
    let plugin = match recipe::source_type(&recipe_value) {
        Ok(p) => p.to_owned(),
        Err(e) => {
            report.error(format!("Bad recipe: {e}"));
            return (Status::Failure, None, sink);
        }
    };
    if let Some(obj) = recipe_value.as_object_mut() {
        obj.insert("run_id".into(), Value::String(req.exec_id.clone()));
    }

    // Secrets: names from the recipe, values from the stores, kept in memory only.
    let refs = match references(&recipe_value) {
        Ok(r) => r,
        Err(e) => {
            report.error(format!("Bad recipe: {e}"));
            return (Status::Failure, None, sink);
        }
    };
    let names: Vec<String> = refs.all().cloned().collect();
    let local = secret_stores(cfg, ctx.gms.as_ref(), &req.args.extra_env_vars);
    let stores: Vec<&dyn SecretStore> =
        local.iter().map(|s| s.as_ref()).chain(ctx.cloud_stores.iter().map(|s| s.as_ref())).collect();
    let values = match resolve_in(&stores, &names).await {
        Ok(v) => v,
        Err(e) => {
            report.error(format!("Secret resolution failed: {e}"));
            return (Status::Failure, None, sink);
        }
    };
    let missing: Vec<String> = refs.required.iter().filter(|n| !values.contains_key(*n)).cloned().collect();
    if !missing.is_empty() {
        let stores_used: Vec<&str> = stores.iter().map(|s| s.name()).collect();
        report.error(format!(
            "{}; looked in the secret stores {}",
            RecipeError::Unresolved(missing),
            stores_used.join(", ")
        ));
        return (Status::Failure, None, sink);
    }
    for (name, value) in &values {
        if looks_like_json_document(value) {
            report.error(format!(
                "Secret variable ${{{name}}} appears to contain a JSON document while string is expected. If you are using AWS Secret Manager, make sure to pass secret as plain text and not as a key/value pair."
            ));
        }
    }
    let token = ctx.cfg.gms.as_ref().and_then(|g| g.token.as_ref()).map(|t| t.expose_secret().to_owned());
    let mut masked: Vec<(&str, &str)> = values.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    if let Some(t) = &token {
        masked.push(("DATAHUB_GMS_TOKEN", t.as_str()));
    }
    let masker = Masker::new(masked);
    if let Ok(resolved) = substitute(&recipe_value, &values) {
        sink = describe_sink(&resolved).map(|s| masker.mask(&s).into_owned());
    }

    // Limits.
    let extra = &req.args.extra_env_vars;
    let memory_text = extra.get("EXECUTOR_TASK_MEMORY_LIMIT").cloned().or_else(|| cfg.memory_limit.clone());
    let memory_limit = match memory_text.as_deref().map(parse_memory_limit) {
        None => None,
        Some(Ok(bytes)) => {
            report.info(format!(
                "Memory limit: {} (EXECUTOR_TASK_MEMORY_LIMIT={})",
                human_bytes(bytes),
                memory_text.as_deref().unwrap_or_default()
            ));
            Some(bytes)
        }
        Some(Err(e)) => {
            report.error(format!("Ignoring EXECUTOR_TASK_MEMORY_LIMIT: {e}; the run has no memory limit of its own"));
            None
        }
    };
    let timeout = match extra.get("EXECUTOR_TASK_TIMEOUT") {
        Some(t) => match parse_seconds(t) {
            Some(d) => d,
            None => {
                report.error(format!(
                    "Ignoring EXECUTOR_TASK_TIMEOUT={t:?}: not a positive number of seconds; using {} s",
                    cfg.task_timeout.as_secs()
                ));
                cfg.task_timeout
            }
        },
        None => cfg.task_timeout,
    };

    // The run's folder: report file and temp files; removed afterwards.
    let exec_dir = cfg.tmp_dir.join(&req.exec_id);
    let artifacts = exec_dir.join("artifacts");
    if let Err(e) = std::fs::create_dir_all(&artifacts) {
        report.error(format!("Cannot create the run folder {}: {e}", exec_dir.display()));
        return (Status::Failure, None, sink);
    }
    let report_file = artifacts.join(match req.task {
        TaskKind::RunIngest => "ingestion_report.json",
        TaskKind::TestConnection => "connection_report.json",
    });

    let outcome = run_in_venv(
        ctx,
        req,
        stop,
        report,
        on_output,
        RunInputs {
            plugin: &plugin,
            recipe: &recipe_value,
            values: &values,
            masker: &masker,
            exec_dir: &exec_dir,
            artifacts: &artifacts,
            report_file: &report_file,
            limits: Limits { timeout, memory_bytes: memory_limit, grace: cfg.termination_grace },
        },
    )
    .await;

    let structured =
        std::fs::read(&report_file).ok().map(|bytes| masker.mask_bytes_lossy(&bytes)).filter(|s| !s.trim().is_empty());
    if let Err(e) = std::fs::remove_dir_all(&exec_dir) {
        tracing::warn!(exec_id = %req.exec_id, error = %e, "could not remove the run folder");
    }

    let status = match outcome {
        RunEnd::Setup(msg) => {
            report.error(msg);
            Status::Failure
        }
        RunEnd::Stopped(reason) | RunEnd::Process(runner::Outcome { stop: Some(reason), .. }) => match reason {
            StopReason::Killed => {
                report.info("Ingestion task was cancelled");
                report.info("Execution cancelled by a KILL signal from DataHub; every process of the run was stopped");
                Status::Cancelled
            }
            StopReason::Terminated => {
                report.info("Ingestion task was cancelled");
                report.info(
                    "The executor received SIGTERM (the platform is stopping it); every process of the run was stopped",
                );
                Status::Cancelled
            }
            StopReason::TimedOut(d) => {
                report.error(format!(
                    "The ingestion did not finish within the timeout of {} s (EXECUTOR_TASK_TIMEOUT / DATAHUB_EXECUTOR_TASK_TIMEOUT) and was stopped",
                    d.as_secs_f64()
                ));
                Status::Timeout
            }
            StopReason::OutOfMemory { used, limit } => {
                report.error(format!(
                    "The ingestion process ran out of memory: its processes used {} of resident memory, over the limit of {} (EXECUTOR_TASK_MEMORY_LIMIT={}), and were killed. Raise the limit or the task's memory.",
                    human_bytes(used),
                    human_bytes(limit),
                    memory_text.as_deref().unwrap_or_default()
                ));
                Status::Failure
            }
        },
        RunEnd::Process(o) => match (o.exit_code, o.signal) {
            (Some(0), _) => {
                report.info(format!("Successfully executed '{task_verb}'"));
                report.info(format!("Finished execution for task with name={}", req.task.name()));
                Status::Success
            }
            (_, Some(sig)) => {
                report.error(format!(
                    "The ingestion process was killed by signal {} likely because it ran out of memory. You can resolve this issue by allocating more memory to the executor's task.",
                    signal_name(sig)
                ));
                Status::Failure
            }
            (code, None) => {
                let code = code.map(|c| c.to_string()).unwrap_or_else(|| "unknown".into());
                report.info(format!("Failed to execute '{task_verb}', exit code {code}"));
                report.error(format!(
                    "'{task_verb}' failed with exit code {code}; the end of its output is in the logs below"
                ));
                Status::Failure
            }
        },
    };
    (status, structured, sink)
}

struct RunInputs<'a> {
    plugin: &'a str,
    recipe: &'a Value,
    values: &'a BTreeMap<String, String>,
    masker: &'a Masker,
    exec_dir: &'a Path,
    artifacts: &'a Path,
    report_file: &'a Path,
    limits: Limits,
}

enum RunEnd {
    /// The run could not start: the message says why.
    Setup(String),
    /// Stopped before the process started.
    Stopped(StopReason),
    Process(runner::Outcome),
}

async fn run_in_venv(
    ctx: &JobContext,
    req: &ExecutionRequest,
    stop: &StopHandle,
    report: &mut ExecutionReport,
    on_output: &mut (dyn FnMut(&str) + Send),
    inp: RunInputs<'_>,
) -> RunEnd {
    let cfg = &ctx.cfg;
    let spec = VenvSpec {
        plugin: inp.plugin,
        version: &req.args.version,
        extra_pip_plugins: &req.args.extra_pip_plugins,
        extra_pip_requirements: &req.args.extra_pip_requirements,
    };
    let mut stop_rx = stop.subscribe();
    let venv = {
        let mut log = |l: &str| on_output(&format!("{}\n", inp.masker.mask(l)));
        tokio::select! {
            v = venv::prepare(cfg, &spec, &mut log) => v,
            _ = stop_rx.wait_for(Option::is_some) => {
                return RunEnd::Stopped(stop.current().unwrap_or(StopReason::Terminated));
            }
        }
    };
    let venv = match venv {
        Ok(v) => v,
        Err(e) => return RunEnd::Setup(inp.masker.mask(&e.to_string()).into_owned()),
    };
    report.info(format!(
        "Using the {} venv {} (acryl-datahub {})",
        venv.origin,
        venv.path.display(),
        venv.cli_version.as_deref().unwrap_or("of unknown version")
    ));

    let stdin = if venv.reads_envelope() {
        match prepare_for_cli(inp.recipe, inp.values) {
            Ok(p) => json!({"__recipe_yaml__": p.recipe.to_string(), "__secrets__": p.variables}).to_string(),
            Err(e) => return RunEnd::Setup(format!("Bad recipe: {e}")),
        }
    } else {
        report.info("This CLI predates the stdin envelope (acryl-datahub < 1.5.0.15): the recipe is sent with its values substituted");
        match recipe::substitute_for_old_cli(inp.recipe, inp.values) {
            Ok(r) => r.to_string(),
            Err(e) => return RunEnd::Setup(format!("Bad recipe: {e}")),
        }
    };
    let report_path = inp.report_file.display().to_string();
    let mut args: Vec<String> = Vec::new();
    if req.args.debug_mode {
        args.push("--debug".into());
    }
    match req.task {
        TaskKind::RunIngest => args.extend(["ingest", "run", "-c", "-", "--report-to", &report_path].map(String::from)),
        TaskKind::TestConnection => args
            .extend(["ingest", "-c", "-", "--test-source-connection", "--report-to", &report_path].map(String::from)),
    }
    let env = child_env(req, &venv.path, inp.exec_dir, inp.artifacts);
    let cmd = ChildCommand { program: venv.datahub(), args, env, stdin: stdin.into_bytes(), cwd: None };
    on_output(&format!("Executing: {} {}\n", cmd.program.display(), cmd.args.join(" ")));
    match runner::run(cmd, &inp.limits, inp.masker, stop.subscribe(), on_output).await {
        Ok(o) => RunEnd::Process(o),
        Err(e) => RunEnd::Setup(format!("Cannot start {}: {e}", venv.datahub().display())),
    }
}

/// The child's environment: ours, the request's non-empty `extra_env_vars`, and the variables
/// DataHub's executor sets (`reference/peer-executor.md` §4.3). Never a secret from a store.
fn child_env(req: &ExecutionRequest, venv: &Path, exec_dir: &Path, artifacts: &Path) -> Vec<(String, String)> {
    let mut env: BTreeMap<String, String> = std::env::vars().collect();
    for (k, v) in &req.args.extra_env_vars {
        if !v.is_empty() {
            env.insert(k.clone(), v.clone());
        }
    }
    env.insert("INGESTION_ARTIFACT_DIR".into(), artifacts.display().to_string());
    env.entry("TMPDIR".into()).or_insert_with(|| exec_dir.display().to_string());
    env.insert("DATAHUB_ENABLE_SECRET_MASKING".into(), "true".into());
    env.insert("DATAHUB_DEBUG".into(), req.args.debug_mode.to_string());
    env.insert("VENV_PATH".into(), venv.display().to_string());
    env.insert("VIRTUAL_ENV".into(), venv.display().to_string());
    let path = env.get("PATH").cloned().unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    env.insert("PATH".into(), format!("{}:{path}", venv.join("bin").display()));
    env.into_iter().collect()
}

/// The stores a run reads besides the cloud ones, in precedence order (later wins):
/// env < file < datahub (< aws-sm < gcp-sm, from [`JobContext::cloud_stores`]).
pub fn secret_stores(
    cfg: &JobConfig,
    gms: Option<&GmsClient>,
    extra_env: &BTreeMap<String, String>,
) -> Vec<Box<dyn SecretStore>> {
    let mut stores: Vec<Box<dyn SecretStore>> = vec![
        Box::new(EnvStore::from_process(extra_env)),
        Box::new(FileStore::new(cfg.file_secret_basedir.clone(), cfg.file_secret_maxlen)),
    ];
    if let Some(g) = gms {
        stores.push(Box::new(DatahubStore::new(g.clone())));
    }
    stores
}

/// Sends RUNNING with the log tail every `interval` until `done`.
async fn progress_loop(
    reporter: Arc<Reporter>,
    progress: Arc<Mutex<Progress>>,
    interval: Duration,
    mut done: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(interval);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = done.wait_for(|d| *d) => return,
        }
        let text = match progress.lock() {
            Ok(p) if p.lines_seen == 0 => "No logs yet".to_owned(),
            Ok(p) => p.tail.text(),
            Err(_) => continue,
        };
        let text = char_tail(&text, reporter.payload_max).to_owned();
        if *done.borrow() {
            return;
        }
        if reporter.gms.is_some()
            && let Err(e) = reporter.write(&reporter.running(Some(text))).await
        {
            tracing::warn!(exec_id = %reporter.exec_id, error = %e, "progress update failed");
        }
    }
}

/// Polls the request's `dataHubExecutionRequestSignal` and stops the run on `KILL`.
async fn poll_kill(gms: GmsClient, urn: String, every: Duration, stop: StopHandle, mut done: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = done.wait_for(|d| *d) => return,
        }
        match gms
            .batch_get("dataHubExecutionRequest", std::slice::from_ref(&urn), &["dataHubExecutionRequestSignal"])
            .await
        {
            Ok(found) => {
                let signal = found
                    .get(&urn)
                    .and_then(|a| a.get("dataHubExecutionRequestSignal"))
                    .and_then(|s| s.get("signal"))
                    .and_then(Value::as_str);
                if signal == Some("KILL") {
                    tracing::info!(urn = %urn, "Got KILL signal");
                    stop.stop(StopReason::Killed);
                    return;
                }
            }
            Err(e) => tracing::warn!(urn = %urn, error = %e, "Failed to fetch signal requests"),
        }
    }
}

/// Where the recipe's sink writes, for people (`file` → path, `datahub-rest` → server).
fn describe_sink(recipe: &Value) -> Option<String> {
    let sink = recipe.get("sink")?;
    let kind = sink.get("type")?.as_str()?;
    let cfg = sink.get("config");
    let detail = match kind {
        "file" => cfg.and_then(|c| c.get("filename")).and_then(Value::as_str).map(str::to_owned),
        "datahub-rest" => cfg.and_then(|c| c.get("server")).and_then(Value::as_str).map(str::to_owned),
        _ => None,
    };
    Some(match detail {
        Some(d) => format!("{kind} sink: {d}"),
        None => format!("{kind} sink"),
    })
}

/// Reads an execution request's input from GMS.
pub async fn fetch_request(gms: &GmsClient, urn_or_id: &str) -> Result<ExecutionRequest, LoadError> {
    let exec_id = crate::request::exec_id_from_urn(urn_or_id)?;
    let urn = format!("{EXECUTION_REQUEST_URN_PREFIX}{exec_id}");
    let found =
        gms.batch_get("dataHubExecutionRequest", std::slice::from_ref(&urn), &["dataHubExecutionRequestInput"]).await?;
    let input = found
        .get(&urn)
        .and_then(|a| a.get("dataHubExecutionRequestInput"))
        .ok_or(GmsError::NotFound { what: "dataHubExecutionRequestInput", urn: urn.clone() })?;
    Ok(ExecutionRequest::from_input_aspect(&exec_id, input)?)
}

/// Reads an ingestion source from GMS and creates an execution request for it (executor
/// `__datahub_cli_`, so no pool picks it up), so the run shows in the source's history.
pub async fn request_for_source(
    gms: &GmsClient,
    source_urn: &str,
    task: TaskKind,
) -> Result<ExecutionRequest, LoadError> {
    if !source_urn.starts_with(INGESTION_SOURCE_URN_PREFIX) {
        return Err(LoadError::Request(RequestError::Bad {
            field: "ingestion source",
            reason: format!("{source_urn:?} is not a urn:li:dataHubIngestionSource URN"),
        }));
    }
    let urns = [source_urn.to_owned()];
    let found = gms.batch_get("dataHubIngestionSource", &urns, &["dataHubIngestionSourceInfo"]).await?;
    let info = found
        .get(source_urn)
        .and_then(|a| a.get("dataHubIngestionSourceInfo"))
        .ok_or(GmsError::NotFound { what: "dataHubIngestionSourceInfo", urn: source_urn.to_owned() })?;
    let config =
        info.get("config").and_then(Value::as_object).ok_or(RequestError::Missing("config of the ingestion source"))?;
    let mut args = serde_json::Map::new();
    let recipe_text =
        config.get("recipe").and_then(Value::as_str).ok_or(RequestError::Missing("recipe of the ingestion source"))?;
    // GMS injects the source's URN as the pipeline name so runs group under the source.
    let recipe = match serde_json::from_str::<Value>(recipe_text) {
        Ok(Value::Object(mut r)) => {
            r.entry("pipeline_name").or_insert_with(|| Value::String(source_urn.to_owned()));
            Value::Object(r).to_string()
        }
        _ => recipe_text.to_owned(),
    };
    args.insert("recipe".into(), Value::String(recipe));
    if let Some(v) = config.get("version").and_then(Value::as_str) {
        args.insert("version".into(), Value::String(v.to_owned()));
    }
    if let Some(d) = config.get("debugMode") {
        args.insert("debug_mode".into(), Value::String(d.as_bool().unwrap_or(false).to_string()));
    }
    if let Some(Value::Object(extra)) = config.get("extraArgs") {
        for (k, v) in extra {
            args.insert(k.clone(), v.clone());
        }
    }
    let task_args = TaskArgs::from_args(&args)?;
    let exec_id = uuid::Uuid::new_v4().to_string();
    let input = json!({
        "task": task.name(),
        "args": task_args.to_args(),
        "executorId": CLI_EXECUTOR_ID,
        "source": {"type": "MANUAL_INGESTION_SOURCE", "ingestionSource": source_urn},
        "requestedAt": now_ms(),
    });
    gms.ingest_proposal(ingest_proposal_body(&execution_request_proposal(
        &exec_id,
        "dataHubExecutionRequestInput",
        &input,
        now_ms(),
    )))
    .await?;
    Ok(ExecutionRequest {
        exec_id,
        task,
        executor_id: Some(CLI_EXECUTOR_ID.into()),
        args: task_args,
        ingestion_source: Some(source_urn.to_owned()),
    })
}

/// Why a request could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Gms(#[from] GmsError),
    #[error(transparent)]
    Request(#[from] RequestError),
}

/// Writes the final result as JSON (the aspect value plus the request's URN).
pub fn write_result_file(path: &PathBuf, urn: &str, result: &ExecutionResult) -> std::io::Result<()> {
    let mut v = result.to_value();
    if let Some(o) = v.as_object_mut() {
        o.insert("executionRequestUrn".into(), Value::String(urn.to_owned()));
    }
    std::fs::write(path, format!("{}\n", serde_json::to_string_pretty(&v).unwrap_or_default()))
}
