//! Runs that must end for the right reason, each with a report that says why.

use std::time::Duration;

use integration_tests::jobrun::{BlackHole, JobSandbox, processes_with_env, seed_request, statuses};
use integration_tests::{GmsEmulator, Route, test_venv};
use serde_json::{Value, json};

const TOKEN: &str = "failure-token-1a2b3c";
const LIMIT: Duration = Duration::from_secs(240);

fn demo_recipe() -> Value {
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/demo-metadata.json");
    json!({"source": {"type": "file", "config": {"path": data}}, "sink": {"type": "file", "config": {"filename": "out.json"}}})
}

fn hanging_postgres(port: u16) -> Value {
    json!({"source": {"type": "postgres", "config": {
        "host_port": format!("127.0.0.1:{port}"), "database": "db", "username": "u", "password": "${HANG_PASSWORD}"
    }}})
}

async fn setup(test: &str) -> Option<(GmsEmulator, JobSandbox)> {
    let venv = test_venv(test)?;
    let gms = GmsEmulator::start(TOKEN).await;
    let sandbox = JobSandbox::new(&venv).with_gms(&gms.url(), TOKEN);
    Some((gms, sandbox))
}

fn final_report(gms: &GmsEmulator, exec_id: &str) -> (String, String) {
    let results = gms.execution_results(exec_id);
    let last = results.last().cloned().unwrap_or(Value::Null);
    (last["status"].as_str().unwrap_or("none").to_owned(), last["report"].as_str().unwrap_or("").to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_source_type_fails_with_the_cli_error() {
    let Some((gms, sandbox)) = setup("unknown_source_type").await else { return };
    let recipe = json!({"source": {"type": "no-such-source", "config": {}}});
    let urn = seed_request(&gms, "unknown-src", "RUN_INGEST", &recipe, "native", &[]);
    let exit = sandbox.run(&["run", "--execution-request", &urn], LIMIT).await;
    assert_eq!(exit.code, Some(1), "{}", exit.stderr);
    let (status, report) = final_report(&gms, "unknown-src");
    assert_eq!(status, "FAILURE");
    assert!(report.contains("no-such-source"), "{report}");
    assert!(report.contains("failed with exit code 1"), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_recipe_fails_before_anything_runs() {
    let Some((gms, sandbox)) = setup("malformed_recipe").await else { return };
    let urn = "urn:li:dataHubExecutionRequest:bad-recipe";
    gms.put_aspect(
        urn,
        "dataHubExecutionRequestInput",
        json!({"task": "RUN_INGEST", "executorId": "default", "args": {"recipe": "source: [unclosed", "version": "native"}}),
    );
    let exit = sandbox.run(&["run", "--execution-request", urn], LIMIT).await;
    assert_eq!(exit.code, Some(1));
    let (status, report) = final_report(&gms, "bad-recipe");
    assert_eq!(status, "FAILURE");
    assert!(report.contains("Bad recipe: the recipe is not valid YAML or JSON"), "{report}");
    assert!(!report.contains("Executing:"), "no process was started: {report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unresolvable_secret_is_named() {
    let Some((gms, sandbox)) = setup("unresolvable_secret").await else { return };
    let mut recipe = demo_recipe();
    recipe["source"]["config"]["path"] = json!("${MISSING_DB_PASSWORD}");
    let urn = seed_request(&gms, "missing-secret", "RUN_INGEST", &recipe, "native", &[]);
    let exit = sandbox.run(&["run", "--execution-request", &urn], LIMIT).await;
    assert_eq!(exit.code, Some(1));
    let (status, report) = final_report(&gms, "missing-secret");
    assert_eq!(status, "FAILURE");
    assert!(report.contains("MISSING_DB_PASSWORD") && report.contains("no store holds"), "{report}");
    assert!(report.contains("env, file, datahub"), "the stores looked in are listed: {report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn venv_that_cannot_be_built_is_a_venv_setup_failure() {
    let Some((gms, sandbox)) = setup("venv_setup_failure").await else { return };
    if std::env::var("DATAHUB_EXECUTOR_UV").is_err() {
        eprintln!("SKIPPED venv_setup_failure: DATAHUB_EXECUTOR_UV is unset");
        return;
    }
    let urn = "urn:li:dataHubExecutionRequest:bad-venv";
    gms.put_aspect(
        urn,
        "dataHubExecutionRequestInput",
        json!({"task": "RUN_INGEST", "args": {
            "recipe": demo_recipe().to_string(),
            "version": "1.7.0.17",
            "extra_pip_requirements": "[\"datahub-executor-rs-no-such-package==0.0.1\"]"
        }}),
    );
    let exit = sandbox.run(&["run", "--execution-request", urn], LIMIT).await;
    assert_eq!(exit.code, Some(1), "{}", exit.stderr);
    let (status, report) = final_report(&gms, "bad-venv");
    assert_eq!(status, "FAILURE");
    assert!(report.contains("venv setup failed"), "{report}");
    assert!(report.contains("datahub-executor-rs-no-such-package"), "uv's output tail is in the report: {report}");
    assert!(
        report.contains("not found in the package registry") || report.contains("No solution found"),
        "uv failed on the requirement, not on something else: {report}"
    );
    let leftovers: Vec<_> = std::fs::read_dir(sandbox.root.path().join("venvs"))
        .map(|d| d.flatten().filter(|e| e.path().is_dir()).map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(leftovers.is_empty(), "a half-built venv is never left for reuse: {leftovers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_limit_exceeded_is_an_out_of_memory_failure() {
    let Some((gms, sandbox)) = setup("memory_limit").await else { return };
    let urn =
        seed_request(&gms, "oom-1", "RUN_INGEST", &demo_recipe(), "native", &[("EXECUTOR_TASK_MEMORY_LIMIT", "40Mi")]);
    let exit = sandbox.run(&["run", "--execution-request", &urn], LIMIT).await;
    assert_eq!(exit.code, Some(1), "{}", exit.stderr);
    let (status, report) = final_report(&gms, "oom-1");
    assert_eq!(status, "FAILURE");
    assert!(report.contains("ran out of memory"), "{report}");
    assert!(report.contains("40.0 MiB (EXECUTOR_TASK_MEMORY_LIMIT=40Mi), and were killed"), "{report}");
    assert!(report.contains("Memory limit: 40.0 MiB"), "the effective limit is stated: {report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_ends_in_timeout_status() {
    let Some((gms, sandbox)) = setup("timeout").await else { return };
    let hole = BlackHole::start().await;
    let urn = seed_request(
        &gms,
        "timeout-1",
        "RUN_INGEST",
        &hanging_postgres(hole.port),
        "native",
        &[("EXECUTOR_TASK_TIMEOUT", "6"), ("HANG_PASSWORD", "hang-pass")],
    );
    let exit = sandbox.run(&["run", "--execution-request", &urn], LIMIT).await;
    assert_eq!(exit.code, Some(4), "{}", exit.stderr);
    let (status, report) = final_report(&gms, "timeout-1");
    assert_eq!(status, "TIMEOUT");
    assert!(report.contains("did not finish within the timeout of 6 s"), "{report}");
    let artifacts = format!("{}/timeout-1/artifacts", sandbox.tmp_dir().display());
    assert_eq!(processes_with_env(&artifacts), Vec::<i32>::new(), "no process of the run is left");
}

/// Starts a run against a database that never answers and waits until `datahub` is running.
async fn hanging_run(
    gms: &GmsEmulator,
    sandbox: &JobSandbox,
    exec_id: &str,
    hole: &BlackHole,
) -> tokio::process::Child {
    let urn = seed_request(
        gms,
        exec_id,
        "RUN_INGEST",
        &hanging_postgres(hole.port),
        "native",
        &[("HANG_PASSWORD", "hang-pass")],
    );
    let child = sandbox.command(&["run", "--execution-request", &urn]).spawn().expect("spawn");
    gms.wait_for_result(
        exec_id,
        |r| r["status"] == "RUNNING" && r["report"].as_str().is_some_and(|t| t.contains("Executing:")),
        Duration::from_secs(60),
    )
    .await
    .expect("the datahub process started");
    child
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_signal_cancels_and_leaves_no_process() {
    let Some((gms, sandbox)) = setup("kill_signal").await else { return };
    let hole = BlackHole::start().await;
    let child = hanging_run(&gms, &sandbox, "kill-1", &hole).await;
    let artifacts = format!("{}/kill-1/artifacts", sandbox.tmp_dir().display());
    assert!(!processes_with_env(&artifacts).is_empty(), "the run's processes are visible while it runs");
    gms.put_aspect(
        "urn:li:dataHubExecutionRequest:kill-1",
        "dataHubExecutionRequestSignal",
        json!({"signal": "KILL", "createdAt": {"time": 1, "actor": "urn:li:corpuser:admin"}}),
    );
    let out = tokio::time::timeout(LIMIT, child.wait_with_output()).await.expect("exits").expect("wait");
    assert_eq!(out.status.code(), Some(3));
    let (status, report) = final_report(&gms, "kill-1");
    assert_eq!(status, "CANCELLED");
    assert!(report.contains("Execution was cancelled by request."), "{report}");
    assert!(report.contains("KILL signal"), "{report}");
    assert_eq!(processes_with_env(&artifacts), Vec::<i32>::new(), "no process of the run is left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_to_the_job_cancels_and_leaves_no_process() {
    let Some((gms, sandbox)) = setup("sigterm").await else { return };
    let hole = BlackHole::start().await;
    let child = hanging_run(&gms, &sandbox, "term-1", &hole).await;
    let pid = child.id().expect("pid") as i32;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let out = tokio::time::timeout(LIMIT, child.wait_with_output()).await.expect("exits").expect("wait");
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    let (status, report) = final_report(&gms, "term-1");
    assert_eq!(status, "CANCELLED");
    assert!(report.contains("SIGTERM"), "{report}");
    let artifacts = format!("{}/term-1/artifacts", sandbox.tmp_dir().display());
    assert_eq!(processes_with_env(&artifacts), Vec::<i32>::new(), "no process of the run is left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gms_errors_for_a_while_do_not_lose_the_status() {
    let Some((gms, sandbox)) = setup("gms_5xx").await else { return };
    let urn = seed_request(&gms, "flaky-1", "RUN_INGEST", &demo_recipe(), "native", &[]);
    // The kickoff and whatever follows it first meet three 503s.
    gms.fail_next(Route::IngestProposal, 3, 503);
    let exit = sandbox.run(&["run", "--execution-request", &urn], LIMIT).await;
    assert_eq!(exit.code, Some(0), "{}", exit.stderr);
    let failed = gms.requests().iter().filter(|r| r.route == Route::IngestProposal && r.status == 503).count();
    assert_eq!(failed, 3);
    let seen = statuses(&gms.execution_results("flaky-1"));
    assert_eq!(seen.first().map(String::as_str), Some("RUNNING"), "{seen:?}");
    assert_eq!(seen.last().map(String::as_str), Some("SUCCESS"), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gms_down_for_good_exits_non_zero_with_the_reason() {
    let Some((gms, mut sandbox)) = setup("gms_down").await else { return };
    sandbox.set("DATAHUB_EXECUTOR_RESULT_RETRY_DEADLINE", "3");
    let urn = seed_request(&gms, "down-1", "RUN_INGEST", &demo_recipe(), "native", &[]);
    gms.fail_next(Route::IngestProposal, 1000, 503);
    let exit = sandbox.run(&["run", "--execution-request", &urn], LIMIT).await;
    assert_eq!(exit.code, Some(5), "{}", exit.stderr);
    assert!(exit.stderr.contains("could not be written to GMS"), "{}", exit.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_over_the_payload_limit_lands_with_its_tail() {
    let Some((gms, mut sandbox)) = setup("payload_limit").await else { return };
    sandbox.set("ACRYL_EXECUTOR_GMS_PAYLOAD_MAX_LENGTH", "20000");
    let urn = "urn:li:dataHubExecutionRequest:big-1";
    gms.put_aspect(
        urn,
        "dataHubExecutionRequestInput",
        json!({"task": "RUN_INGEST", "args": {"recipe": demo_recipe().to_string(), "version": "native", "debug_mode": "true"}}),
    );
    let exit = sandbox.run(&["run", "--execution-request", urn], LIMIT).await;
    assert_eq!(exit.code, Some(0), "{}", exit.stderr);
    let done = gms.wait_for_status("big-1", "SUCCESS", Duration::from_secs(5)).await.expect("SUCCESS");
    let report = done["report"].as_str().expect("report");
    assert!(report.chars().count() <= 20_000, "{}", report.chars().count());
    assert!(report.contains("exceeded limit of 20000 chars"), "{report}");
    assert!(report.contains("Finished execution for task with name=RUN_INGEST"), "the summary is kept");
    assert!(report.contains("Pipeline finished"), "the tail of the logs is kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gms_413_shrinks_the_report_until_it_lands() {
    let Some((gms, sandbox)) = setup("payload_413").await else { return };
    gms.set_max_body(Some(15_000));
    let urn = "urn:li:dataHubExecutionRequest:big-2";
    gms.put_aspect(
        urn,
        "dataHubExecutionRequestInput",
        json!({"task": "RUN_INGEST", "args": {"recipe": demo_recipe().to_string(), "version": "native", "debug_mode": "true"}}),
    );
    let exit = sandbox.run(&["run", "--execution-request", urn], LIMIT).await;
    assert_eq!(exit.code, Some(0), "{}", exit.stderr);
    let done = gms.wait_for_status("big-2", "SUCCESS", Duration::from_secs(5)).await.expect("SUCCESS");
    assert!(gms.requests().iter().any(|r| r.status == 413), "GMS refused the first attempt");
    let report = done["report"].as_str().expect("report");
    assert!(report.contains("Pipeline finished"), "the tail is kept: {report}");
    assert!(report.contains("Successfully executed 'datahub ingest'"), "{report}");
}
