//! The image's bundled-venv step (issue 5, must-show 4): `scripts/build-bundled-venvs.sh`, run
//! here without Docker, builds `<root>/file-bundled`, and `ingest-job run --version bundled` with
//! `DATAHUB_BUNDLED_VENV_PATH=<root>` runs a file-source recipe through it to SUCCESS.

use std::time::Duration;

use integration_tests::jobrun::JobSandbox;
use integration_tests::test_venv;

const LIMIT: Duration = Duration::from_secs(900);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bundled_venv_script_builds_a_venv_that_ingest_job_runs_with_version_bundled() {
    let Some(venv) = test_venv("bundled_venv_script") else { return };
    let (Ok(uv), Ok(version)) = (std::env::var("DATAHUB_EXECUTOR_UV"), std::env::var("DATAHUB_TEST_CLI_VERSION"))
    else {
        assert!(std::env::var_os("DATAHUB_TEST_REQUIRE_VENV").is_none(), "uv and the CLI version are set in CI");
        eprintln!("SKIPPED bundled_venv_script: DATAHUB_EXECUTOR_UV / DATAHUB_TEST_CLI_VERSION unset");
        return;
    };
    let mut sandbox = JobSandbox::new(&venv);
    let root = sandbox.root.path().join("opt-datahub-venvs");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/build-bundled-venvs.sh");
    let mut build = tokio::process::Command::new("bash");
    build
        .arg(script)
        .env("DATAHUB_BUNDLED_VENV_PATH", &root)
        .env("BUNDLED_VENV_PLUGINS", "file")
        // A leading `v` is accepted, as in DataHub's build.
        .env("BUNDLED_CLI_VERSION", format!("v{version}"))
        .env("DATAHUB_EXECUTOR_UV", &uv)
        .env("DATAHUB_EXECUTOR_PYTHON", venv.join("bin/python"))
        .kill_on_drop(true);
    // UV_CACHE_DIR comes from the environment (setup-test-env.sh), so this is quick when cached.
    let out = tokio::time::timeout(LIMIT, build.output()).await.expect("script in time").expect("run script");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "build-bundled-venvs.sh failed:\n{log}");
    let bundled = root.join("file-bundled");
    assert!(bundled.join("bin/datahub").is_file() && bundled.join("bin/python").exists(), "{log}");
    assert!(!bundled.is_symlink(), "a real venv, not the test venv");

    sandbox.set("DATAHUB_BUNDLED_VENV_PATH", &root.display().to_string());
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/demo-metadata.json");
    let recipe = sandbox.write(
        "r.yml",
        &format!("source:\n  type: file\n  config:\n    path: {data}\nsink:\n  type: file\n  config:\n    filename: out.json\n"),
    );
    let result = sandbox.root.path().join("result.json");
    let args =
        ["run", "--recipe", &recipe.display().to_string(), "--version", "bundled", "--result-file", "result.json"];
    let exit = sandbox.run(&args, LIMIT).await;
    assert_eq!(exit.code, Some(0), "{}\n{}", exit.stdout, exit.stderr);
    assert!(exit.stdout.contains("Using Bundled startup (pre-built) venv"), "{}", exit.stdout);
    assert!(exit.stdout.contains(&format!("Venv ready at: {}", bundled.display())), "{}", exit.stdout);
    assert!(exit.stdout.contains("ingest-job: SUCCESS urn:li:dataHubExecutionRequest:"), "{}", exit.stdout);
    let result: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&result).expect("result file")).expect("json");
    assert_eq!(result["status"], "SUCCESS");
    assert!(sandbox.root.path().join("out.json").is_file(), "the file sink wrote its output");
}
