//! Benchmark: the same 200-dataset file recipe run three ways — bare `datahub ingest`, through
//! `ingest-job`, and through DataHub's own Python executor (`datahub.executor` of the same
//! acryl-datahub) — printing each executor's overhead over the bare run and its own peak memory.
//! Goals: ingest-job's overhead under 5 % of the bare run and under 20 MB resident.
//!
//! Run: `eval "$(scripts/setup-test-env.sh)" && cargo bench -p integration-tests --bench executor_overhead`
//! (`BENCH_RUNS` sets the runs of each way, default 3; the median is printed).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use integration_tests::GmsEmulator;
use integration_tests::jobrun::{JobSandbox, ingest_job_bin, seed_request};
use serde_json::Value;

const TOKEN: &str = "bench-token";

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// 200 datasets: the demo's 20, ten times over under other names.
fn write_metadata(dir: &Path) -> PathBuf {
    let demo = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/demo-metadata.json");
    let items: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(demo).expect("demo metadata")).expect("json");
    let mut out = Vec::new();
    for k in 0..10 {
        for item in &items {
            let text = item.to_string().replace(",PROD)", &format!("_{k},PROD)"));
            out.push(serde_json::from_str::<Value>(&text).expect("json"));
        }
    }
    let path = dir.join("bench-metadata.json");
    std::fs::write(&path, serde_json::to_string(&out).expect("json")).expect("write");
    path
}

async fn timed(mut cmd: tokio::process::Command) -> (f64, std::process::Output) {
    let start = Instant::now();
    let out = tokio::time::timeout(Duration::from_secs(600), cmd.output()).await.expect("in time").expect("runs");
    let secs = start.elapsed().as_secs_f64();
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (secs, out)
}

#[tokio::main]
async fn main() {
    let Ok(venv) = std::env::var("DATAHUB_TEST_VENV").map(PathBuf::from) else {
        println!("executor_overhead: skipped, DATAHUB_TEST_VENV is unset (eval \"$(scripts/setup-test-env.sh)\")");
        return;
    };
    let runs: usize = std::env::var("BENCH_RUNS").ok().and_then(|r| r.parse().ok()).unwrap_or(3).max(1);
    let gms = GmsEmulator::start(TOKEN).await;
    let sandbox = JobSandbox::new(&venv).with_gms(&gms.url(), TOKEN);
    let data = write_metadata(sandbox.root.path());
    let recipe = serde_json::json!({
        "source": {"type": "file", "config": {"path": data.display().to_string()}},
        "sink": {"type": "file", "config": {"filename": sandbox.root.path().join("out.json").display().to_string()}}
    });
    let recipe_file = sandbox.write("bench-recipe.json", &recipe.to_string());
    let harness = concat!(env!("CARGO_MANIFEST_DIR"), "/python/run_datahub_executor.py");
    let bin = ingest_job_bin();
    // ingest-job at its defaults, as deployed.
    let mut env = sandbox.env.clone();
    env.remove("DATAHUB_EXECUTOR_PROGRESS_INTERVAL");
    env.remove("DATAHUB_EXECUTOR_INGESTION_SIGNAL_POLL_INTERVAL");

    let (mut bare, mut ours, mut python, mut outside) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut our_rss, mut py_rss) = (0u64, 0u64);
    for run in 0..runs {
        let mut cmd = tokio::process::Command::new(venv.join("bin/datahub"));
        cmd.args(["ingest", "run", "-c"]).arg(&recipe_file).envs(&env).stdin(Stdio::null());
        bare.push(timed(cmd).await.0);

        let exec_id = format!("bench-ours-{run}");
        let urn = seed_request(&gms, &exec_id, "RUN_INGEST", &recipe, "native", &[]);
        let mut cmd = tokio::process::Command::new(&bin);
        cmd.args(["run", "--execution-request", &urn]).env_clear().envs(&env).stdin(Stdio::null());
        let (secs, out) = timed(cmd).await;
        ours.push(secs);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let field = |name: &str| {
            stderr
                .split(&format!(" {name}="))
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("ingest-job logs {name}: {stderr}"))
        };
        our_rss = our_rss.max(field("peak_rss_kib"));
        outside.push(secs - field("child_ms") as f64 / 1000.0);
        assert!(gms.wait_for_status(&exec_id, "SUCCESS", Duration::from_secs(5)).await.is_ok());

        let mut cmd = tokio::process::Command::new(venv.join("bin/python"));
        cmd.arg(harness)
            .args(["--gms-url", &gms.url(), "--token", TOKEN, "--recipe-file"])
            .arg(&recipe_file)
            .args(["--exec-id", &format!("bench-py-{run}")])
            .envs(&env)
            .stdin(Stdio::null());
        let (secs, out) = timed(cmd).await;
        python.push(secs);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let kb = stdout
            .split("maxrss_kb=")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
            .expect("the harness prints its peak memory");
        py_rss = py_rss.max(kb);
    }
    let (b, o, p, own) = (median(bare), median(ours), median(python), median(outside));
    let pct = |x: f64| (x - b) / b * 100.0;
    println!("executor overhead, 200-dataset file recipe, median of {runs} runs each (whole processes, wall time):");
    println!("  bare `datahub ingest`:        {b:6.2} s");
    println!(
        "  ingest-job:                   {o:6.2} s  overhead {:+5.1} % (goal < 5 %)  ingest-job peak RSS {:.1} MiB (goal < 20 MB)",
        pct(o),
        our_rss as f64 / 1024.0
    );
    println!(
        "  ingest-job's own time (its wall time minus the datahub process's): {:.0} ms = {:.1} % of the bare run",
        own * 1000.0,
        own / b * 100.0
    );
    println!(
        "  DataHub executor (Python):    {p:6.2} s  overhead {:+5.1} %  executor peak RSS {:.1} MiB",
        pct(p),
        py_rss as f64 / 1024.0
    );
}
