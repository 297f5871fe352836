//! Running the real `ingest-job` binary from tests, with an environment the test controls.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use tempfile::TempDir;

/// The `ingest-job` binary of this workspace, brought up to date by `cargo build` once per test
/// process (a stale binary would test old code).
pub fn ingest_job_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("test executable path");
        // target/<profile>/deps/<test> → target/<profile>/ingest-job
        let profile_dir = exe.parent().and_then(Path::parent).expect("target profile dir");
        let bin = profile_dir.join("ingest-job");
        {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut build = std::process::Command::new(cargo);
            build.args(["build", "-p", "ingest-job"]);
            if profile_dir.ends_with("release") {
                build.arg("--release");
            }
            let status = build.status().expect("run cargo build -p ingest-job");
            assert!(status.success(), "cargo build -p ingest-job failed");
        }
        assert!(bin.exists(), "{} is missing after the build", bin.display());
        bin
    })
    .clone()
}

/// The binary `name` of this workspace's package of the same name (`admission`, `ingest-job`),
/// brought up to date by `cargo build -p <name>` (with `--release` when the caller runs from a
/// release target dir) once per test process; it sits next to the caller's target dir.
pub fn workspace_bin(name: &str) -> PathBuf {
    static BUILT: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let profile_dir = exe.parent().and_then(Path::parent).expect("target profile dir");
    let bin = profile_dir.join(name);
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    if !built.iter().any(|b| b == name) {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = std::process::Command::new(cargo);
        build.args(["build", "-p", name, "--bin", name]);
        if profile_dir.ends_with("release") {
            build.arg("--release");
        }
        let status = build.status().unwrap_or_else(|e| panic!("run cargo build -p {name}: {e}"));
        assert!(status.success(), "cargo build -p {name} failed");
        assert!(bin.exists(), "{} is missing after the build", bin.display());
        built.push(name.to_owned());
    }
    bin
}

/// One test's sandbox for `ingest-job`: temp folders, environment and arguments.
pub struct JobSandbox {
    pub root: TempDir,
    pub env: BTreeMap<String, String>,
}

/// What a finished `ingest-job` process left.
#[derive(Debug)]
pub struct JobExit {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl JobSandbox {
    /// A sandbox using the test venv as the `native` venv and fast progress and signal polling.
    pub fn new(venv: &Path) -> Self {
        let root = tempfile::Builder::new().prefix("ingest-job-test-").tempdir().expect("temp dir");
        // The machine's environment (proxies, CA bundles, uv's cache) minus every executor setting.
        let mut env: BTreeMap<String, String> = std::env::vars()
            .filter(|(k, _)| {
                !(k.starts_with("DATAHUB_") || k.starts_with("EXECUTOR_") || k.starts_with("ACRYL_") || k == "RUST_LOG")
            })
            .collect();
        if let Ok(uv) = std::env::var("DATAHUB_EXECUTOR_UV") {
            env.insert("DATAHUB_EXECUTOR_UV".into(), uv);
        }
        let path = |p: &str| root.path().join(p).display().to_string();
        env.insert("DATAHUB_EXECUTOR_NATIVE_VENV".into(), venv.display().to_string());
        env.insert("DATAHUB_EXECUTOR_TMP_DIR".into(), path("ingest"));
        env.insert("DATAHUB_EXECUTOR_VENV_CACHE_DIR".into(), path("venvs"));
        env.insert("DATAHUB_EXECUTOR_FILE_SECRET_BASEDIR".into(), path("secrets"));
        env.insert("DATAHUB_EXECUTOR_PROGRESS_INTERVAL".into(), "0.5".into());
        env.insert("DATAHUB_EXECUTOR_INGESTION_SIGNAL_POLL_INTERVAL".into(), "0.3".into());
        env.insert("DATAHUB_EXECUTOR_TERMINATION_GRACE".into(), "5".into());
        env.insert("DATAHUB_EXECUTOR_RESULT_RETRY_DEADLINE".into(), "60".into());
        env.insert("DATAHUB_TELEMETRY_ENABLED".into(), "false".into());
        env.insert("DATAHUB_EXECUTOR_PYTHON".into(), venv.join("bin/python").display().to_string());
        std::fs::create_dir_all(root.path().join("secrets")).expect("secrets dir");
        JobSandbox { root, env }
    }

    /// Points the job at a GMS.
    pub fn with_gms(mut self, url: &str, token: &str) -> Self {
        self.env.insert("DATAHUB_GMS_URL".into(), url.to_owned());
        self.env.insert("DATAHUB_GMS_TOKEN".into(), token.to_owned());
        self
    }

    pub fn set(&mut self, key: &str, value: &str) {
        self.env.insert(key.to_owned(), value.to_owned());
    }

    /// Writes a secret into the `file` store.
    pub fn file_secret(&self, name: &str, value: &str) {
        std::fs::write(self.root.path().join("secrets").join(name), format!("{value}\n")).expect("write secret");
    }

    /// Writes a file into the sandbox and returns its path.
    pub fn write(&self, name: &str, content: &str) -> PathBuf {
        let p = self.root.path().join(name);
        std::fs::write(&p, content).expect("write file");
        p
    }

    /// The run folder root (`DATAHUB_EXECUTOR_TMP_DIR`).
    pub fn tmp_dir(&self) -> PathBuf {
        self.root.path().join("ingest")
    }

    /// A command for `ingest-job <args>` in this sandbox; stdout/stderr piped.
    pub fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(ingest_job_bin());
        cmd.args(args)
            .env_clear()
            .envs(&self.env)
            .current_dir(self.root.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    /// Runs `ingest-job <args>` to its end (bounded by `limit`).
    pub async fn run(&self, args: &[&str], limit: Duration) -> JobExit {
        let child = self.command(args).spawn().expect("spawn ingest-job");
        let out = tokio::time::timeout(limit, child.wait_with_output())
            .await
            .expect("ingest-job did not finish in time")
            .expect("wait for ingest-job");
        JobExit {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// Every file under `dir` whose bytes contain `needle`.
pub fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            let Ok(meta) = std::fs::symlink_metadata(&p) else { continue };
            if meta.is_dir() {
                stack.push(p);
            } else if meta.is_file()
                && let Ok(bytes) = std::fs::read(&p)
                && bytes.windows(needle.len()).any(|w| w == needle)
            {
                found.push(p);
            }
        }
    }
    found
}

/// Pids of live processes whose environment contains `needle` (e.g. a run's artifact dir).
pub fn processes_with_env(needle: &str) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let zombie = stat.rsplit(')').next().map(|r| r.trim_start().starts_with('Z')).unwrap_or(true);
            !zombie
                && std::fs::read(format!("/proc/{pid}/environ"))
                    .map(|env| env.windows(needle.len()).any(|w| w == needle.as_bytes()))
                    .unwrap_or(false)
        })
        .collect()
}

/// A TCP port that accepts connections and never answers: a database that hangs.
pub struct BlackHole {
    pub port: u16,
    _task: tokio::task::JoinHandle<()>,
}

impl BlackHole {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((sock, _)) = listener.accept().await {
                held.push(sock);
            }
        });
        BlackHole { port, _task: task }
    }
}

/// Seeds an execution request's input in the emulator, as GMS stores it (every arg a string).
pub fn seed_request(
    gms: &crate::GmsEmulator,
    exec_id: &str,
    task: &str,
    recipe: &serde_json::Value,
    version: &str,
    extra_env: &[(&str, &str)],
) -> String {
    let urn = format!("urn:li:dataHubExecutionRequest:{exec_id}");
    let mut args = serde_json::json!({
        "recipe": recipe.to_string(),
        "version": version,
        "debug_mode": "false",
    });
    if !extra_env.is_empty() {
        let env: BTreeMap<&str, &str> = extra_env.iter().copied().collect();
        args["extra_env_vars"] = serde_json::Value::String(serde_json::json!(env).to_string());
    }
    gms.put_aspect(
        &urn,
        "dataHubExecutionRequestInput",
        serde_json::json!({
            "task": task,
            "args": args,
            "executorId": "default",
            "source": {"type": "MANUAL_INGESTION_SOURCE", "ingestionSource": "urn:li:dataHubIngestionSource:test"},
            "requestedAt": 1_796_321_289_000i64,
        }),
    );
    urn
}

/// The statuses of a run's results, in order.
pub fn statuses(results: &[serde_json::Value]) -> Vec<String> {
    results.iter().map(|r| r["status"].as_str().unwrap_or("?").to_owned()).collect()
}
