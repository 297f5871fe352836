//! Start-up checks of the real binaries: an invalid secret-store prefix stops `ingest-job` and the
//! `admission` function before anything runs, with an error that names the variable; nothing is
//! launched, read or reported. (Issue "Cloud secret managers", must-show 3.)

use std::process::Stdio;
use std::time::Duration;

use integration_tests::jobrun::{ingest_job_bin, workspace_bin};

const BAD_PREFIXES: [&str; 3] = ["datahub/", "a.b", "x y"];
/// A start-up failure takes milliseconds; this only bounds a hang.
const DEADLINE: Duration = Duration::from_secs(60);

/// The variables that turn a store on, and its prefix variable.
fn stores() -> [(&'static str, [(&'static str, &'static str); 2]); 2] {
    [
        (
            "DATAHUB_EXECUTOR_AWS_SM_PREFIX",
            [("DATAHUB_EXECUTOR_AWS_SM_ENABLED", "true"), ("DATAHUB_EXECUTOR_AWS_SM_REGION", "us-east-1")],
        ),
        (
            "DATAHUB_EXECUTOR_GCP_SM_PREFIX",
            [("DATAHUB_EXECUTOR_GCP_SM_ENABLED", "true"), ("DATAHUB_EXECUTOR_GCP_SM_PROJECT_ID", "p")],
        ),
    ]
}

/// Runs `cmd` to its end and returns (exit code, stderr + stdout).
async fn finish(mut cmd: tokio::process::Command) -> (Option<i32>, String) {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    let out = tokio::time::timeout(DEADLINE, cmd.output())
        .await
        .expect("the process ends by itself at start-up")
        .expect("start the process");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stderr), String::from_utf8_lossy(&out.stdout));
    (out.status.code(), text)
}

#[tokio::test]
async fn ingest_job_refuses_an_invalid_prefix_and_names_the_variable() {
    let dir = tempfile::tempdir().expect("temp dir");
    let recipe = dir.path().join("recipe.yml");
    std::fs::write(&recipe, "source: {type: file, config: {path: /nonexistent}}\nsink: {type: console}\n")
        .expect("write recipe");
    for (prefix_var, enable) in stores() {
        for bad in BAD_PREFIXES {
            let mut cmd = tokio::process::Command::new(ingest_job_bin());
            cmd.env_clear()
                .env("PATH", std::env::var("PATH").unwrap_or_default())
                .env("DATAHUB_EXECUTOR_TMP_DIR", dir.path().join("tmp"))
                .envs(enable)
                .env(prefix_var, bad)
                .arg("run")
                .arg("--recipe")
                .arg(&recipe)
                .args(["--version", "native"]);
            let (code, text) = finish(cmd).await;
            assert_eq!(code, Some(2), "{prefix_var}={bad:?}: a configuration error exits 2\n{text}");
            assert!(text.contains(prefix_var), "{prefix_var}={bad:?}: the error names the variable\n{text}");
            assert!(text.contains("^[A-Za-z0-9_-]*$"), "{prefix_var}={bad:?}: the error says what is allowed\n{text}");
            assert!(!text.contains("RUNNING"), "{prefix_var}={bad:?}: nothing ran\n{text}");
        }
    }
}

#[tokio::test]
async fn admission_refuses_an_invalid_prefix_and_names_the_variable() {
    for (prefix_var, enable) in stores() {
        for bad in BAD_PREFIXES {
            let mut cmd = tokio::process::Command::new(workspace_bin("admission"));
            cmd.env_clear()
                .env("PATH", std::env::var("PATH").unwrap_or_default())
                // Never reached: the configuration fails first. Port 9 refuses connections.
                .env("AWS_LAMBDA_RUNTIME_API", "127.0.0.1:9")
                .env("AWS_LAMBDA_FUNCTION_NAME", "admission")
                .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
                .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
                .env("DATAHUB_GMS_URL", "http://127.0.0.1:9")
                .env("DATAHUB_EXECUTOR_POOL_ID", "remote")
                .env("DATAHUB_EXECUTOR_LAUNCHER", "local")
                .env("DATAHUB_EXECUTOR_LOCAL_JOB_BIN", "/bin/true")
                .env("AWS_REGION", "us-east-1")
                .env("AWS_ACCESS_KEY_ID", "test")
                .env("AWS_SECRET_ACCESS_KEY", "test")
                .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
                .envs(enable)
                .env(prefix_var, bad);
            let (code, text) = finish(cmd).await;
            assert!(code.is_some_and(|c| c != 0), "{prefix_var}={bad:?}: start-up fails\n{text}");
            assert!(text.contains(prefix_var), "{prefix_var}={bad:?}: the error names the variable\n{text}");
            assert!(text.contains("^[A-Za-z0-9_-]*$"), "{prefix_var}={bad:?}: the error says what is allowed\n{text}");
        }
    }
}
