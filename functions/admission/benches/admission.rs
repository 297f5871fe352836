//! Benchmark of the admission Lambda, printing each figure beside its goal:
//!
//! - (a) admission cost per message, in process with the fakes of `shared::testing`: 20,000
//!   valid requests (recipes with 5 `${NAME}` references, held by DataHub's secret names or the
//!   job's environment) admitted in SQS batches of 10 on one core (a `current_thread` runtime).
//!   Goals: p99 < 1 ms per message, >= 5,000 messages/s.
//! - (b) network calls per admitted message (calls on the fakes) for recipes with 0, 5 and 50
//!   secret references, per message and per batch (the GMS read is one call per batch). Goal: <= 3
//!   per message whatever the secrets.
//! - (c) cold start of the real release `admission` binary to "ready" (its first
//!   `GET /2018-06-01/runtime/invocation/next` on a fake Runtime API) and its peak RSS
//!   (`VmHWM`) after one invocation. Goals: < 30 ms and < 30 MB.
//!
//! Run: `cargo bench -p admission --bench admission` (`BENCH_MESSAGES` overrides the 20,000,
//! `BENCH_COLD_RUNS` the 10 cold starts).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use integration_tests::GmsEmulator;
use integration_tests::lambda_api::{LambdaApi, sqs_event};
use serde_json::{Value, json};
use shared::admission::{Admission, AdmissionConfig, AdmissionGms, Decision, Record, StoredRequest};
use shared::error::GmsError;
use shared::launcher::{JobSpec, LaunchError, Launched, Launcher, RunningJob};
use shared::secrets::BoxFuture;
use shared::status::ExecutionResult;
use shared::testing::{FakeGms, FakeLauncher};

const POOL: &str = "remote";
const BATCH: usize = 10;
const QUEUE_ARN: &str = "arn:aws:sqs:us-east-1:123456789012:datahub-executor";
const TOKEN: &str = "bench-token";

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).filter(|n| *n > 0).unwrap_or(default)
}

fn mark(ok: bool) -> &'static str {
    if ok { "ok" } else { "MISSED" }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn config() -> AdmissionConfig {
    AdmissionConfig {
        pool: POOL.into(),
        // Ten jobs of weight 0.1: one batch fits; the jobs are finished between batches.
        max_workers: BATCH,
        file_secret_names: Default::default(),
        admitted_by: "admission-bench".into(),
    }
}

/// Secret names: even ones DataHub holds, odd ones the job's environment.
fn secret_names(n: usize) -> (Vec<String>, Vec<String>) {
    let datahub = (0..n).step_by(2).map(|i| format!("DH_SECRET_{i}")).collect();
    let env = (1..n).step_by(2).map(|i| format!("ENV_SECRET_{i}")).collect();
    (datahub, env)
}

/// A postgres recipe with `n` required `${NAME}` references.
fn recipe(n: usize) -> Value {
    let (datahub, env) = secret_names(n);
    let mut options = serde_json::Map::new();
    for (i, name) in datahub.iter().chain(&env).enumerate() {
        options.insert(format!("option_{i}"), json!(format!("${{{name}}}")));
    }
    json!({
        "source": {"type": "postgres", "config": {
            "host_port": "db.internal:5432",
            "database": "analytics",
            "options": options,
            "include_views": true,
            "profiling": {"enabled": false},
        }},
        "pipeline_name": "bench-postgres",
    })
}

fn input(recipe: &Value) -> Value {
    json!({
        "task": "RUN_INGEST",
        "executorId": POOL,
        "args": {"recipe": recipe.to_string(), "version": "1.7.0.17", "debug_mode": "false"},
        "source": {"type": "MANUAL_INGESTION_SOURCE", "ingestionSource": "urn:li:dataHubIngestionSource:bench"},
        "requestedAt": 1_796_321_289_000i64,
    })
}

fn reference_body(exec_id: &str) -> String {
    json!({"executionRequestUrn": format!("urn:li:dataHubExecutionRequest:{exec_id}")}).to_string()
}

/// Fakes holding `count` valid requests whose recipes reference `secrets` names, every name held.
fn fakes(prefix: &str, count: usize, secrets: usize) -> (FakeGms, FakeLauncher, Vec<Record>) {
    let (gms, launcher) = (FakeGms::new(), FakeLauncher::new());
    let (datahub, env) = secret_names(secrets);
    gms.set_secret_names(&datahub.iter().map(String::as_str).collect::<Vec<_>>());
    launcher.set_env_names(&env.iter().map(String::as_str).collect::<Vec<_>>());
    let input = input(&recipe(secrets));
    let records = (0..count)
        .map(|i| {
            let id = format!("{prefix}-{i:06}");
            gms.put(&id, input.clone(), None);
            Record { message_id: format!("m-{id}"), body: reference_body(&id) }
        })
        .collect();
    (gms, launcher, records)
}

/// Admits `records` in batches of `batch`, finishing the launched jobs after each batch; returns
/// the wall time of each batch (the finishing excluded).
async fn admit_all(
    cfg: &AdmissionConfig,
    gms: &dyn AdmissionGms,
    launcher: &dyn Launcher,
    fake: &FakeLauncher,
    records: &[Record],
    batch: usize,
) -> Vec<Duration> {
    let admission = Admission { config: cfg, gms, launcher, cloud: &[] };
    let mut times = Vec::with_capacity(records.len() / batch + 1);
    for chunk in records.chunks(batch) {
        let start = Instant::now();
        let decisions = admission.admit_batch(chunk).await;
        times.push(start.elapsed());
        for d in &decisions {
            match d {
                Decision::Launched { exec_id, .. } => fake.finish(exec_id),
                other => panic!("every request must be launched, got {other:?}"),
            }
        }
    }
    times
}

fn part_a(rt: &tokio::runtime::Runtime, messages: usize) {
    println!("\n(a) admission cost per message, in process with the fakes (one core, current_thread runtime)");
    println!(
        "    {messages} valid requests, recipes with 5 ${{NAME}} references (3 DataHub secret names, 2 job env names), SQS batches of {BATCH}"
    );
    let cfg = config();
    for (label, logging) in [("no log subscriber", false), ("JSON log lines to a sink (as in Lambda)", true)] {
        let (gms, launcher, records) = fakes(if logging { "logged" } else { "plain" }, messages + 500, 5);
        let (warmup, measured) = records.split_at(500);
        let run = || {
            rt.block_on(async {
                admit_all(&cfg, &gms, &launcher, &launcher, warmup, BATCH).await;
                admit_all(&cfg, &gms, &launcher, &launcher, measured, BATCH).await
            })
        };
        let times = if logging {
            let subscriber = tracing_subscriber::fmt()
                .json()
                .without_time()
                .with_target(false)
                .with_max_level(tracing::Level::INFO)
                .with_writer(std::io::sink)
                .finish();
            tracing::subscriber::with_default(subscriber, run)
        } else {
            run()
        };
        let total: Duration = times.iter().sum();
        let mut per_msg: Vec<f64> = times.iter().map(|t| t.as_secs_f64() * 1e6 / BATCH as f64).collect();
        per_msg.sort_by(f64::total_cmp);
        let mut per_batch: Vec<f64> = times.iter().map(|t| t.as_secs_f64() * 1e6).collect();
        per_batch.sort_by(f64::total_cmp);
        let throughput = measured.len() as f64 / total.as_secs_f64();
        let p99 = percentile(&per_msg, 0.99);
        println!("    [{label}]");
        println!(
            "      per message (batch time / {BATCH}): p50 {:.1} µs, p99 {:.1} µs, max {:.1} µs   goal p99 < 1000 µs: {}",
            percentile(&per_msg, 0.5),
            p99,
            per_msg[per_msg.len() - 1],
            mark(p99 < 1000.0)
        );
        println!(
            "      per batch of {BATCH}: p50 {:.1} µs, p99 {:.1} µs",
            percentile(&per_batch, 0.5),
            percentile(&per_batch, 0.99)
        );
        println!(
            "      throughput: {throughput:.0} messages/s on one core ({} messages in {:.3} s)   goal >= 5000/s: {}",
            measured.len(),
            total.as_secs_f64(),
            mark(throughput >= 5000.0)
        );
    }
}

/// Counts calls by method, passing them on to the fakes.
struct Counting<'a, T> {
    inner: &'a T,
    calls: Mutex<BTreeMap<&'static str, usize>>,
}

impl<'a, T> Counting<'a, T> {
    fn new(inner: &'a T) -> Self {
        Counting { inner, calls: Mutex::new(BTreeMap::new()) }
    }

    fn count(&self, what: &'static str) {
        *self.calls.lock().unwrap_or_else(|p| p.into_inner()).entry(what).or_default() += 1;
    }

    fn get(&self, what: &str) -> usize {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).get(what).copied().unwrap_or(0)
    }
}

impl AdmissionGms for Counting<'_, FakeGms> {
    fn read_requests<'a>(
        &'a self,
        exec_ids: &'a [String],
    ) -> BoxFuture<'a, Result<BTreeMap<String, StoredRequest>, GmsError>> {
        self.count("gms.read_requests");
        self.inner.read_requests(exec_ids)
    }

    fn write_result<'a>(
        &'a self,
        exec_id: &'a str,
        result: &'a ExecutionResult,
    ) -> BoxFuture<'a, Result<(), GmsError>> {
        self.count("gms.write_result");
        self.inner.write_result(exec_id, result)
    }

    fn secret_names(&self) -> BoxFuture<'_, Result<std::collections::BTreeSet<String>, GmsError>> {
        self.count("gms.secret_names");
        self.inner.secret_names()
    }
}

impl Launcher for Counting<'_, FakeLauncher> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn max_spec_bytes(&self) -> usize {
        self.inner.max_spec_bytes()
    }

    fn launch<'a>(&'a self, spec: &'a JobSpec) -> BoxFuture<'a, Result<Launched, LaunchError>> {
        self.count("launcher.launch");
        self.inner.launch(spec)
    }

    fn running<'a>(&'a self, pool: &'a str) -> BoxFuture<'a, Result<Vec<RunningJob>, LaunchError>> {
        self.count("launcher.running");
        self.inner.running(pool)
    }

    fn stop<'a>(&'a self, id: &'a str, reason: &'a str) -> BoxFuture<'a, Result<(), LaunchError>> {
        self.count("launcher.stop");
        self.inner.stop(id, reason)
    }

    fn job_env_names(&self) -> BoxFuture<'_, Result<std::collections::BTreeSet<String>, LaunchError>> {
        self.count("launcher.job_env_names");
        self.inner.job_env_names()
    }
}

fn part_b(rt: &tokio::runtime::Runtime) {
    const MESSAGES: usize = 1000;
    println!("\n(b) network calls per admitted message (calls on FakeGms + FakeLauncher; {MESSAGES} messages each)");
    println!(
        "    per message: launch + RUNNING write; per batch: one GMS read of every request of the batch, job list (before, and the re-check after launching), job env names (the ECS and Cloud Run launchers cache these per process; the fake does not), DataHub secret names"
    );
    println!(
        "    {:>7} {:>5} | {:>11} {:>13} | {:>16} | {:>16} | goal <= 3/msg",
        "secrets", "batch", "total calls", "calls/message", "per-message part", "per-batch part"
    );
    let cfg = config();
    for secrets in [0usize, 5, 50] {
        for batch in [BATCH, 1] {
            let (gms, launcher, records) = fakes(&format!("calls-{secrets}-{batch}"), MESSAGES, secrets);
            let (cg, cl) = (Counting::new(&gms), Counting::new(&launcher));
            let admitted = rt.block_on(admit_all(&cfg, &cg, &cl, &launcher, &records, batch)).len() * batch;
            let total = gms.calls() + launcher.calls();
            let per_message = cg.get("gms.write_result") + cl.get("launcher.launch");
            let per_batch = cg.get("gms.read_requests")
                + cl.get("launcher.running")
                + cl.get("launcher.job_env_names")
                + cg.get("gms.secret_names")
                + cl.get("launcher.stop");
            assert_eq!(per_message + per_batch, total, "the wrappers and the fakes' own counters agree");
            let batches = records.len().div_ceil(batch);
            let calls_per_msg = total as f64 / admitted as f64;
            let own = per_message as f64 / admitted as f64;
            println!(
                "    {secrets:>7} {batch:>5} | {total:>11} {calls_per_msg:>13.2} | {own:>12.2} /msg | {:>10.2} /batch | per-message part {}; all calls {}",
                per_batch as f64 / batches as f64,
                mark(own <= 3.0),
                mark(calls_per_msg <= 3.0),
            );
        }
    }
    println!(
        "    (the per-batch calls do not grow with the number of secrets: names are read once per batch and matched in memory)"
    );
}

/// `<target dir>/release/admission`, built by `cargo build --release -p admission`.
fn release_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("bench executable path");
    // target/release/deps/admission-<hash> → target/release
    let profile_dir = exe.parent().and_then(Path::parent).expect("target profile dir");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let started = Instant::now();
    let status = Command::new(cargo)
        .args(["build", "--release", "-p", "admission", "--bin", "admission"])
        .status()
        .expect("run cargo build --release -p admission");
    assert!(status.success(), "cargo build --release -p admission failed");
    let bin = profile_dir.join("admission");
    assert!(bin.is_file(), "{} is missing after the build", bin.display());
    println!(
        "    release binary: {} ({:.1} MB; build step {:.1} s)",
        bin.display(),
        file_mb(&bin),
        started.elapsed().as_secs_f64()
    );
    bin
}

fn file_mb(p: &Path) -> f64 {
    std::fs::metadata(p).map(|m| m.len() as f64 / 1e6).unwrap_or(0.0)
}

fn spawn(bin: &Path, api: &LambdaApi, gms: &GmsEmulator) -> Child {
    Command::new(bin)
        .env_clear()
        .env("AWS_LAMBDA_RUNTIME_API", api.addr_string())
        .env("AWS_LAMBDA_FUNCTION_NAME", "admission")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
        .env("DATAHUB_GMS_URL", gms.url())
        .env("DATAHUB_GMS_TOKEN", TOKEN)
        .env("DATAHUB_EXECUTOR_POOL_ID", POOL)
        .env("DATAHUB_EXECUTOR_LAUNCHER", "local")
        .env("DATAHUB_EXECUTOR_LOCAL_JOB_BIN", "/bin/true")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        // Never called: no DLQ and nothing deferred.
        .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the admission binary")
}

fn stop(mut child: Child) {
    // Only our own child, by its handle.
    let _ = child.kill();
    let _ = child.wait();
}

/// `VmHWM` and `VmRSS` of a live process, in kB.
fn memory_kb(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/<pid>/status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

fn part_c(rt: &tokio::runtime::Runtime, runs: usize) {
    println!("\n(c) cold start of the real admission binary (release) to ready, and its peak memory");
    let bin = release_binary();
    let gms = rt.block_on(GmsEmulator::start(TOKEN));
    let ready_within = Duration::from_secs(30);

    let mut cold = Vec::with_capacity(runs);
    for _ in 0..runs {
        // A fresh Runtime API per process: a killed process's open long poll must not take an event.
        let api = LambdaApi::start();
        let spawned = Instant::now();
        let child = spawn(&bin, &api, &gms);
        let ready = rt.block_on(api.wait_ready(ready_within));
        stop(child);
        let ready = ready.unwrap_or_else(|e| panic!("{e}"));
        cold.push(ready.duration_since(spawned).as_secs_f64() * 1e3);
    }
    let mut sorted = cold.clone();
    sorted.sort_by(f64::total_cmp);
    let (median, max) = (percentile(&sorted, 0.5), sorted[sorted.len() - 1]);
    println!(
        "    spawn → first GET /2018-06-01/runtime/invocation/next over {runs} runs: median {median:.1} ms, max {max:.1} ms   goal < 30 ms: median {}, max {}",
        mark(median < 30.0),
        mark(max < 30.0)
    );
    println!("      runs (ms): {}", cold.iter().map(|c| format!("{c:.1}")).collect::<Vec<_>>().join(", "));

    // One invocation: an SQS event of one reference message, admitted and launched (/bin/true).
    let exec_id = "bench-memory-1";
    gms.put_aspect(
        &format!("urn:li:dataHubExecutionRequest:{exec_id}"),
        "dataHubExecutionRequestInput",
        input(&recipe(0)),
    );
    let api = LambdaApi::start();
    let child = spawn(&bin, &api, &gms);
    let pid = child.id();
    let answered = rt.block_on(async {
        api.wait_ready(ready_within).await?;
        let body = reference_body(exec_id);
        let id = api.invoke(sqs_event(&[("m-bench-1", &body, "rh-bench-1", 1)], QUEUE_ARN));
        api.wait_response(&id, Duration::from_secs(30)).await
    });
    let (hwm, rss) = memory_kb(pid);
    stop(child);
    let response = answered.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(response, json!({"batchItemFailures": []}), "the message was admitted");
    let running = gms.execution_results(exec_id);
    assert!(running.iter().any(|r| r["status"] == "RUNNING"), "RUNNING was written: {running:?}");
    let peak_mb = hwm as f64 / 1024.0;
    println!(
        "    peak RSS (VmHWM) after one invocation (1 message admitted, 1 job launched): {peak_mb:.1} MB (VmRSS {:.1} MB)   goal < 30 MB: {}",
        rss as f64 / 1024.0,
        mark(peak_mb < 30.0)
    );
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is not supported and ignored.
    let messages = env_usize("BENCH_MESSAGES", 20_000);
    let runs = env_usize("BENCH_COLD_RUNS", 10);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("Tokio runtime");
    println!("admission benchmark");
    part_a(&rt, messages);
    part_b(&rt);
    part_c(&rt, runs);
}
