//! The local launcher: runs `ingest-job job` as a child process of this one, with the spec in its
//! environment. For a single host (the embedded default) and for tests. Jobs are known only to
//! this process: its job list is the children it started that are still alive.

use std::collections::BTreeSet;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::error::ConfigError;
use crate::launcher::{JOB_SPEC_ENV, JobSpec, LaunchError, Launched, Launcher, RunningJob};
use crate::secrets::BoxFuture;

/// Starts jobs as local child processes.
#[derive(Debug)]
pub struct LocalLauncher {
    bin: PathBuf,
    jobs: Mutex<Vec<LocalJob>>,
}

#[derive(Debug)]
struct LocalJob {
    exec_id: String,
    pool: String,
    weight: f64,
    started_ms: i64,
    child: Child,
}

impl LocalLauncher {
    /// `DATAHUB_EXECUTOR_LOCAL_JOB_BIN` (default `ingest-job` from PATH).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        Ok(LocalLauncher::new(Self::bin_from_lookup(lookup)))
    }

    /// The binary named by `DATAHUB_EXECUTOR_LOCAL_JOB_BIN` (default `ingest-job` from PATH).
    pub fn bin_from_lookup(lookup: impl Fn(&str) -> Option<String>) -> PathBuf {
        lookup("DATAHUB_EXECUTOR_LOCAL_JOB_BIN")
            .filter(|v| !v.trim().is_empty())
            .unwrap_or_else(|| "ingest-job".into())
            .into()
    }

    pub fn new(bin: PathBuf) -> Self {
        LocalLauncher { bin, jobs: Mutex::new(Vec::new()) }
    }

    fn jobs(&self) -> std::sync::MutexGuard<'_, Vec<LocalJob>> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for every job this launcher started (tests, and a clean shutdown).
    pub fn wait_all(&self) -> Vec<(String, Option<i32>)> {
        let mut jobs = std::mem::take(&mut *self.jobs());
        jobs.iter_mut().map(|j| (j.exec_id.clone(), j.child.wait().ok().and_then(|s| s.code()))).collect()
    }
}

impl Launcher for LocalLauncher {
    fn name(&self) -> &'static str {
        "local"
    }

    fn max_spec_bytes(&self) -> usize {
        // An environment variable; stay far below the kernel's per-string limit (128 KiB).
        64 * 1024
    }

    fn launch<'a>(&'a self, spec: &'a JobSpec) -> BoxFuture<'a, Result<Launched, LaunchError>> {
        Box::pin(async move {
            let mut jobs = self.jobs();
            jobs.retain_mut(|j| matches!(j.child.try_wait(), Ok(None)));
            if let Some(j) = jobs.iter().find(|j| j.exec_id == spec.exec_id) {
                return Ok(Launched {
                    id: j.child.id().to_string(),
                    location: format!("local process {}", j.child.id()),
                    already_running: true,
                });
            }
            let child = Command::new(&self.bin)
                .arg("job")
                .env(JOB_SPEC_ENV, spec.to_json())
                .stdin(Stdio::null())
                .process_group(0)
                .spawn()
                .map_err(|e| LaunchError::Permanent {
                    launcher: "local",
                    reason: format!("cannot start {} (DATAHUB_EXECUTOR_LOCAL_JOB_BIN): {e}", self.bin.display()),
                })?;
            let pid = child.id();
            jobs.push(LocalJob {
                exec_id: spec.exec_id.clone(),
                pool: spec.pool.clone(),
                weight: spec.weight,
                started_ms: chrono::Utc::now().timestamp_millis(),
                child,
            });
            Ok(Launched { id: pid.to_string(), location: format!("local process {pid}"), already_running: false })
        })
    }

    fn running<'a>(&'a self, pool: &'a str) -> BoxFuture<'a, Result<Vec<RunningJob>, LaunchError>> {
        Box::pin(async move {
            let mut jobs = self.jobs();
            // Reap finished children so they neither count nor linger as zombies.
            jobs.retain_mut(|j| matches!(j.child.try_wait(), Ok(None)));
            Ok(jobs
                .iter()
                .filter(|j| j.pool == pool)
                .map(|j| RunningJob {
                    exec_id: j.exec_id.clone(),
                    weight: j.weight,
                    id: j.child.id().to_string(),
                    started_ms: Some(j.started_ms),
                })
                .collect())
        })
    }

    fn stop<'a>(&'a self, id: &'a str, reason: &'a str) -> BoxFuture<'a, Result<(), LaunchError>> {
        Box::pin(async move {
            let pid: i32 = id
                .parse()
                .map_err(|_| LaunchError::Permanent { launcher: "local", reason: format!("{id:?} is not a pid") })?;
            tracing::info!(pid, reason, "stopping a local job");
            // The job forwards SIGTERM to its own process group and reports CANCELLED.
            let _ = killpg(Pid::from_raw(pid), Signal::SIGTERM);
            Ok(())
        })
    }

    fn job_env_names(&self) -> BoxFuture<'_, Result<BTreeSet<String>, LaunchError>> {
        // A local job inherits this process's environment.
        Box::pin(async move { Ok(std::env::vars().map(|(k, _)| k).collect()) })
    }
}
