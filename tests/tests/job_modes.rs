//! The ways to say what to run, and the venv choices.

use std::time::Duration;

use integration_tests::jobrun::{JobSandbox, statuses};
use integration_tests::{GmsEmulator, test_venv};
use serde_json::{Value, json};

const TOKEN: &str = "modes-token";
const LIMIT: Duration = Duration::from_secs(600);

fn demo_recipe_path() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/demo-recipe.yml").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recipe_file_without_gms_prints_statuses_and_writes_the_result_file() {
    let Some(venv) = test_venv("recipe_without_gms") else { return };
    let sandbox = JobSandbox::new(&venv);
    // The shipped demo recipe, with its input made absolute; its output is relative to the cwd.
    let demo = std::fs::read_to_string(demo_recipe_path()).expect("demo recipe");
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/demo-metadata.json");
    let recipe = sandbox.write("demo.yml", &demo.replace("examples/demo-metadata.json", data));
    let result_file = sandbox.root.path().join("result.json");
    let args =
        ["run", "--recipe", &recipe.display().to_string(), "--version", "native", "--result-file", "result.json"];
    let exit = sandbox.run(&args, LIMIT).await;
    assert_eq!(exit.code, Some(0), "{}\n{}", exit.stdout, exit.stderr);
    assert!(exit.stdout.contains("ingest-job: RUNNING "), "{}", exit.stdout);
    assert!(exit.stdout.contains("ingest-job: SUCCESS urn:li:dataHubExecutionRequest:"), "{}", exit.stdout);
    assert!(exit.stdout.contains("output went to the file sink: demo-output.json"), "{}", exit.stdout);
    let output = sandbox.root.path().join("demo-output.json");
    let written: Value = serde_json::from_str(&std::fs::read_to_string(&output).expect("sink output")).expect("json");
    assert_eq!(written.as_array().map(Vec::len), Some(106), "every demo record was written");
    let result: Value = serde_json::from_str(&std::fs::read_to_string(&result_file).expect("result")).expect("json");
    assert_eq!(result["status"], "SUCCESS");
    assert!(result["executionRequestUrn"].as_str().is_some_and(|u| u.starts_with("urn:li:dataHubExecutionRequest:")));
    assert!(result["report"].as_str().is_some_and(|r| r.contains("Successfully executed 'datahub ingest'")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingestion_source_run_creates_a_request_and_reports_under_it() {
    let Some(venv) = test_venv("ingestion_source") else { return };
    let gms = GmsEmulator::start(TOKEN).await;
    let sandbox = JobSandbox::new(&venv).with_gms(&gms.url(), TOKEN);
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/demo-metadata.json");
    let out = sandbox.root.path().join("out.json");
    let recipe = json!({"source": {"type": "file", "config": {"path": data}},
        "sink": {"type": "file", "config": {"filename": out.display().to_string()}}});
    let source = "urn:li:dataHubIngestionSource:demo-source";
    gms.put_aspect(
        source,
        "dataHubIngestionSourceInfo",
        json!({"name": "demo", "type": "file", "config": {
            "recipe": recipe.to_string(), "version": "native", "executorId": "default",
            "extraArgs": {"extra_env_vars": "{\"SOME_FLAG\": \"1\"}"}
        }}),
    );
    let exit = sandbox.run(&["run", "--ingestion-source", source], LIMIT).await;
    assert_eq!(exit.code, Some(0), "{}", exit.stderr);
    let inputs: Vec<Value> =
        gms.proposals().into_iter().filter(|p| p["aspectName"] == "dataHubExecutionRequestInput").collect();
    assert_eq!(inputs.len(), 1, "one execution request was created");
    let key: Value = serde_json::from_str(inputs[0]["entityKeyAspect"]["value"].as_str().expect("key")).expect("json");
    let exec_id = key["id"].as_str().expect("id");
    let input: Value = serde_json::from_str(inputs[0]["aspect"]["value"].as_str().expect("value")).expect("json");
    assert_eq!(input["executorId"], "__datahub_cli_", "no pool picks the request up");
    assert_eq!(input["source"]["ingestionSource"], source);
    assert_eq!(input["task"], "RUN_INGEST");
    let seen = statuses(&gms.execution_results(exec_id));
    assert_eq!(seen.first().map(String::as_str), Some("RUNNING"), "{seen:?}");
    assert_eq!(seen.last().map(String::as_str), Some("SUCCESS"), "{seen:?}");
    assert!(out.exists(), "the sink wrote its output");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundled_venv_is_used_and_a_missing_one_is_named() {
    let Some(venv) = test_venv("bundled") else { return };
    let mut sandbox = JobSandbox::new(&venv);
    let bundled = sandbox.root.path().join("bundled");
    std::fs::create_dir_all(&bundled).expect("dir");
    std::os::unix::fs::symlink(&venv, bundled.join("file-bundled")).expect("symlink");
    sandbox.set("DATAHUB_BUNDLED_VENV_PATH", &bundled.display().to_string());
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/demo-metadata.json");
    let recipe = sandbox.write(
        "r.yml",
        &format!("source:\n  type: file\n  config:\n    path: {data}\nsink:\n  type: file\n  config:\n    filename: out.json\n"),
    );
    let exit = sandbox.run(&["run", "--recipe", &recipe.display().to_string(), "--version", "bundled"], LIMIT).await;
    assert_eq!(exit.code, Some(0), "{}\n{}", exit.stdout, exit.stderr);
    assert!(exit.stdout.contains("Using Bundled startup (pre-built) venv"), "{}", exit.stdout);

    let pg = sandbox.write("pg.yml", "source:\n  type: postgres\n  config: {host_port: 'localhost:1'}\n");
    let exit = sandbox.run(&["run", "--recipe", &pg.display().to_string(), "--version", "bundled"], LIMIT).await;
    assert_eq!(exit.code, Some(1));
    assert!(exit.stderr.contains("postgres-bundled has no bin/python"), "{}", exit.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versioned_venv_is_built_once_with_uv_and_reused() {
    let Some(venv) = test_venv("venv_cache") else { return };
    let (Ok(_), Ok(version)) = (std::env::var("DATAHUB_EXECUTOR_UV"), std::env::var("DATAHUB_TEST_CLI_VERSION")) else {
        assert!(std::env::var_os("DATAHUB_TEST_REQUIRE_VENV").is_none(), "uv and the CLI version are set in CI");
        eprintln!("SKIPPED venv_cache: DATAHUB_EXECUTOR_UV / DATAHUB_TEST_CLI_VERSION unset");
        return;
    };
    let sandbox = JobSandbox::new(&venv);
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/demo-metadata.json");
    let recipe = sandbox.write(
        "r.yml",
        &format!("source:\n  type: file\n  config:\n    path: {data}\nsink:\n  type: file\n  config:\n    filename: out.json\n"),
    );
    let args = ["run", "--recipe", &recipe.display().to_string(), "--version", &version];
    let first = sandbox.run(&args, LIMIT).await;
    assert_eq!(first.code, Some(0), "{}\n{}", first.stdout, first.stderr);
    assert!(first.stdout.contains("Creating dynamic venv"), "{}", first.stdout);
    let second = sandbox.run(&args, LIMIT).await;
    assert_eq!(second.code, Some(0), "{}", second.stderr);
    assert!(second.stdout.contains("Reusing cached venv file-"), "{}", second.stdout);
    assert!(!second.stdout.contains("Creating dynamic venv"), "{}", second.stdout);
    let venvs: Vec<_> = std::fs::read_dir(sandbox.root.path().join("venvs"))
        .expect("cache dir")
        .flatten()
        .filter(|e| e.path().is_dir())
        .collect();
    assert_eq!(venvs.len(), 1, "one cached venv");
}

/// Runs a recipe whose file paths come from secrets holding `$`, a backslash, `${X}` and spaces:
/// the run only finds its input and writes its output if every value arrives byte for byte.
async fn byte_for_byte_run(test: &str, version: &str, old_cli: bool) {
    let Some(venv) = test_venv(test) else { return };
    let sandbox = JobSandbox::new(&venv);
    let weird = sandbox.root.path().join("we$ird \\dir ${X} $HOME");
    std::fs::create_dir_all(&weird).expect("dir");
    let data = weird.join("data.json");
    std::fs::copy(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/demo-metadata.json"), &data).expect("copy");
    sandbox.file_secret("DATA_PATH", &data.display().to_string());
    sandbox.file_secret("OUT_DIR", &weird.display().to_string());
    let recipe = sandbox.write(
        "r.json",
        &json!({"source": {"type": "file", "config": {"path": "${DATA_PATH}"}},
                "sink": {"type": "file", "config": {"filename": "${OUT_DIR}/out $1.json"}}})
        .to_string(),
    );
    let exit = sandbox.run(&["run", "--recipe", &recipe.display().to_string(), "--version", version], LIMIT).await;
    assert_eq!(exit.code, Some(0), "{}\n{}", exit.stdout, exit.stderr);
    let written: Value =
        serde_json::from_str(&std::fs::read_to_string(weird.join("out $1.json")).expect("output")).expect("json");
    assert_eq!(written.as_array().map(Vec::len), Some(106));
    assert_eq!(exit.stderr.contains("predates the stdin envelope"), old_cli, "{}", exit.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_values_arrive_byte_for_byte_through_the_envelope() {
    byte_for_byte_run("byte_for_byte_envelope", "native", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_values_arrive_byte_for_byte_in_an_old_cli_recipe() {
    if std::env::var("DATAHUB_EXECUTOR_UV").is_err() {
        assert!(std::env::var_os("DATAHUB_TEST_REQUIRE_VENV").is_none(), "uv is set in CI");
        eprintln!("SKIPPED byte_for_byte_old_cli: DATAHUB_EXECUTOR_UV is unset");
        return;
    }
    // 1.5.0.14 is the last CLI before the stdin envelope.
    byte_for_byte_run("byte_for_byte_old_cli", "1.5.0.14", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_store_precedence_is_env_then_file_then_datahub() {
    let Some(venv) = test_venv("secret_precedence") else { return };
    let gms = GmsEmulator::start(TOKEN).await;
    let mut sandbox = JobSandbox::new(&venv).with_gms(&gms.url(), TOKEN);
    // IN_ALL is in every store, IN_TWO in env and file, ONLY_ENV in env alone.
    sandbox.set("IN_ALL", "env");
    sandbox.set("IN_TWO", "env");
    sandbox.set("ONLY_ENV", "env");
    sandbox.file_secret("IN_ALL", "file");
    sandbox.file_secret("IN_TWO", "file");
    gms.set_secret("IN_ALL", "datahub");
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/demo-metadata.json");
    let recipe = json!({"source": {"type": "file", "config": {"path": data}},
        "sink": {"type": "file", "config": {"filename": "out-${IN_ALL}-${IN_TWO}-${ONLY_ENV}.json"}}});
    let urn = integration_tests::jobrun::seed_request(&gms, "precedence-1", "RUN_INGEST", &recipe, "native", &[]);
    let exit = sandbox.run(&["run", "--execution-request", &urn], LIMIT).await;
    assert_eq!(exit.code, Some(0), "{}", exit.stderr);
    assert!(sandbox.root.path().join("out-datahub-file-env.json").exists(), "later stores win: datahub > file > env");
    let graphql: Vec<_> = gms.requests().into_iter().filter(|r| r.path == "/api/graphql").collect();
    assert_eq!(graphql.len(), 1, "one getSecretValues call for all names");
    assert!(graphql[0].body.contains("IN_ALL") && graphql[0].body.contains("ONLY_ENV"));
}
