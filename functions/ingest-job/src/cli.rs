//! Command-line surface of `ingest-job`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use shared::config::JobConfig;
use shared::gms::GmsClient;
use shared::job::{self, JobContext, StopHandle};
use shared::launcher::{JOB_SPEC_ENV, JobSpec};
use shared::request::{ExecutionRequest, TaskArgs, TaskKind};
use shared::runner::StopReason;

/// Runs one DataHub ingestion with the real `datahub` CLI and reports it to DataHub (GMS).
#[derive(Debug, Parser)]
#[command(name = "ingest-job", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one recipe, execution request or ingestion source.
    Run(RunArgs),
    /// The container entry point: run the job spec the launcher put in DATAHUB_EXECUTOR_JOB_SPEC.
    Job(JobArgs),
}

#[derive(Debug, Args)]
pub struct JobArgs {
    /// Write the final result to this file as JSON.
    #[arg(long, value_name = "FILE")]
    pub result_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["recipe", "execution_request", "ingestion_source"])))]
pub struct RunArgs {
    /// A recipe file (YAML or JSON) to run by hand.
    #[arg(long, value_name = "FILE")]
    pub recipe: Option<PathBuf>,
    /// Run this execution request, reading its input from GMS (`urn:li:dataHubExecutionRequest:<id>` or the id).
    #[arg(long, value_name = "URN")]
    pub execution_request: Option<String>,
    /// Create an execution request for this ingestion source in GMS and run it.
    #[arg(long, value_name = "URN")]
    pub ingestion_source: Option<String>,
    /// The `acryl-datahub` version: latest, bundled, native, a PEP 440 version or a wheel URL (with --recipe).
    #[arg(long = "version", visible_alias = "cli-version", value_name = "VERSION", default_value = "latest")]
    pub version: String,
    /// An extra environment variable for the run, as the request's extra_env_vars (repeatable).
    #[arg(long = "extra-env", value_name = "K=V")]
    pub extra_env: Vec<String>,
    /// An extra pip requirement (repeatable).
    #[arg(long = "extra-pip", value_name = "REQ")]
    pub extra_pip: Vec<String>,
    /// An extra datahub plugin to install (repeatable).
    #[arg(long = "extra-pip-plugin", value_name = "PLUGIN")]
    pub extra_pip_plugins: Vec<String>,
    /// Test the source's connection instead of ingesting (TEST_CONNECTION).
    #[arg(long)]
    pub test_connection: bool,
    /// Run the CLI with --debug.
    #[arg(long)]
    pub debug: bool,
    /// The execution id to report under (with --recipe; default: a new UUID).
    #[arg(long, value_name = "ID")]
    pub execution_id: Option<String>,
    /// Write the final result (DataHub's ExecutionRequestResult) to this file as JSON.
    #[arg(long, value_name = "FILE")]
    pub result_file: Option<PathBuf>,
}

pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let json = shared::config::json_logs(|k| std::env::var(k).ok());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false);
    if json {
        builder.json().with_ansi(false).init();
    } else {
        builder.with_ansi(false).init();
    }
}

pub async fn run(cli: Cli) -> anyhow::Result<i32> {
    let cfg = JobConfig::from_env().context("configuration")?;
    // Checked at start-up: an invalid secret-store prefix stops here, naming its variable.
    shared::cloud_secrets::CloudSecretsConfig::from_env().context("configuration")?;
    let gms = cfg.gms.as_ref().map(GmsClient::new).transpose().context("GMS client")?;
    let args = match cli.command {
        Command::Run(args) => args,
        Command::Job(job_args) => {
            let text = std::env::var(JOB_SPEC_ENV).with_context(|| format!("{JOB_SPEC_ENV} is not set"))?;
            let spec = JobSpec::from_json(&text).map_err(anyhow::Error::msg)?;
            let request = match spec.request().map_err(anyhow::Error::msg)? {
                Some(r) => r,
                None => {
                    let Some(g) = &gms else { bail!("the job spec has no args and DATAHUB_GMS_URL is not set") };
                    job::fetch_request(g, &spec.exec_id)
                        .await
                        .with_context(|| format!("cannot load {}", spec.exec_id))?
                }
            };
            tracing::info!(exec_id = %request.exec_id, pool = %spec.pool, weight = spec.weight, "job spec loaded");
            return execute(cfg, gms, request, job_args.result_file.as_ref()).await;
        }
    };
    let task = if args.test_connection { TaskKind::TestConnection } else { TaskKind::RunIngest };
    let request = match (&args.recipe, &args.execution_request, &args.ingestion_source) {
        (Some(path), _, _) => {
            let text =
                std::fs::read_to_string(path).with_context(|| format!("cannot read the recipe {}", path.display()))?;
            let mut extra = BTreeMap::new();
            for kv in &args.extra_env {
                let Some((k, v)) = kv.split_once('=') else { bail!("--extra-env {kv:?} must be K=V") };
                extra.insert(k.to_owned(), v.to_owned());
            }
            let mut task_args = TaskArgs::for_recipe(text);
            task_args.version = args.version.clone();
            task_args.extra_env_vars = extra;
            task_args.extra_pip_requirements = args.extra_pip.clone();
            task_args.extra_pip_plugins = args.extra_pip_plugins.clone();
            task_args.debug_mode = args.debug;
            let exec_id = match &args.execution_id {
                Some(id) => shared::request::exec_id_from_urn(id)?,
                None => uuid_v4(),
            };
            ExecutionRequest { exec_id, task, executor_id: None, args: task_args, ingestion_source: None }
        }
        (None, Some(urn), _) => {
            let Some(g) = &gms else { bail!("--execution-request needs DATAHUB_GMS_URL") };
            job::fetch_request(g, urn).await.with_context(|| format!("cannot load {urn}"))?
        }
        (None, None, Some(urn)) => {
            let Some(g) = &gms else { bail!("--ingestion-source needs DATAHUB_GMS_URL") };
            job::request_for_source(g, urn, task).await.with_context(|| format!("cannot start a run of {urn}"))?
        }
        (None, None, None) => bail!("say what to run: --recipe, --execution-request or --ingestion-source"),
    };
    execute(cfg, gms, request, args.result_file.as_ref()).await
}

async fn execute(
    cfg: JobConfig,
    gms: Option<GmsClient>,
    request: ExecutionRequest,
    result_file: Option<&PathBuf>,
) -> anyhow::Result<i32> {
    tracing::info!(exec_id = %request.exec_id, task = request.task.name(), gms = gms.as_ref().map(|g| g.base_url()).unwrap_or("none"), "starting");
    let stop = StopHandle::default();
    spawn_signal_forwarder(stop.clone())?;
    let cloud_stores = shared::cloud_secrets::cloud_stores_from_env().await.context("cloud secret stores")?;
    let ctx = JobContext { cfg, gms, echo: true, cloud_stores };
    let outcome = job::execute(&ctx, &request, &stop).await;
    if let Some(path) = result_file {
        job::write_result_file(path, &request.urn(), &outcome.result)
            .with_context(|| format!("cannot write the result file {}", path.display()))?;
    }
    tracing::info!(peak_rss_kib = peak_rss_kib().unwrap_or(0), exit_code = outcome.exit_code, "finished");
    let secs = outcome.result.duration_ms.unwrap_or(0) as f64 / 1000.0;
    println!("ingest-job: {} {} in {secs:.1} s", outcome.result.status.as_str(), request.urn());
    if let Some(sink) = &outcome.sink {
        println!("ingest-job: output went to the {sink}");
    }
    if let Some(path) = result_file {
        println!("ingest-job: result written to {}", path.display());
    }
    if let Some(e) = &outcome.status_error {
        eprintln!("ingest-job: the status could not be written to GMS: {e}");
    }
    Ok(outcome.exit_code)
}

/// SIGTERM or SIGINT stops the run: the child group gets SIGTERM, then SIGKILL after the grace.
fn spawn_signal_forwarder(stop: StopHandle) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::warn!("received a termination signal: stopping the run");
        stop.stop(StopReason::Terminated);
    });
    Ok(())
}

/// This process's peak resident memory (`VmHWM`), in KiB.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse().ok()
}

fn uuid_v4() -> String {
    shared::request::new_exec_id()
}
