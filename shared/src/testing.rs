//! Hand-written fakes of the ports, for tests here and in other crates (feature `test-util`).
//! They record every call and can be told to fail.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use crate::admission::{AdmissionGms, StoredRequest};
use crate::error::GmsError;
use crate::launcher::{JobSpec, LaunchError, Launched, Launcher, RunningJob};
use crate::secrets::BoxFuture;
use crate::status::ExecutionResult;

/// A launcher that keeps its jobs in memory.
#[derive(Debug, Default)]
pub struct FakeLauncher {
    state: Mutex<LauncherState>,
}

#[derive(Debug, Default)]
struct LauncherState {
    jobs: Vec<RunningJob>,
    launches: Vec<JobSpec>,
    stops: Vec<String>,
    env_names: BTreeSet<String>,
    fail_next_launch: Option<LaunchError>,
    calls: usize,
    clock: i64,
}

impl FakeLauncher {
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, LauncherState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a live job.
    pub fn add_job(&self, exec_id: &str, weight: f64) {
        let mut s = self.state();
        s.clock += 1;
        let started = s.clock;
        s.jobs.push(RunningJob {
            exec_id: exec_id.into(),
            weight,
            id: format!("job-{exec_id}"),
            started_ms: Some(started),
        });
    }

    /// Ends a live job.
    pub fn finish(&self, exec_id: &str) {
        self.state().jobs.retain(|j| j.exec_id != exec_id);
    }

    pub fn set_env_names(&self, names: &[&str]) {
        self.state().env_names = names.iter().map(|s| s.to_string()).collect();
    }

    pub fn fail_next_launch(&self, e: LaunchError) {
        self.state().fail_next_launch = Some(e);
    }

    /// Every spec launched, in order.
    pub fn launches(&self) -> Vec<JobSpec> {
        self.state().launches.clone()
    }

    /// Every job id stopped.
    pub fn stops(&self) -> Vec<String> {
        self.state().stops.clone()
    }

    pub fn jobs(&self) -> Vec<RunningJob> {
        self.state().jobs.clone()
    }

    /// Calls made to the launcher.
    pub fn calls(&self) -> usize {
        self.state().calls
    }
}

impl Launcher for FakeLauncher {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn max_spec_bytes(&self) -> usize {
        8000
    }

    fn launch<'a>(&'a self, spec: &'a JobSpec) -> BoxFuture<'a, Result<Launched, LaunchError>> {
        Box::pin(async move {
            // A network call: let concurrent admissions interleave here.
            tokio::task::yield_now().await;
            let mut s = self.state();
            s.calls += 1;
            if let Some(e) = s.fail_next_launch.take() {
                return Err(e);
            }
            s.launches.push(spec.clone());
            s.clock += 1;
            let started = s.clock;
            let id = format!("job-{}", spec.exec_id);
            s.jobs.push(RunningJob {
                exec_id: spec.exec_id.clone(),
                weight: spec.weight,
                id: id.clone(),
                started_ms: Some(started),
            });
            Ok(Launched { location: format!("fake launcher as {id}"), id, already_running: false })
        })
    }

    fn running<'a>(&'a self, _pool: &'a str) -> BoxFuture<'a, Result<Vec<RunningJob>, LaunchError>> {
        Box::pin(async move {
            tokio::task::yield_now().await;
            let mut s = self.state();
            s.calls += 1;
            Ok(s.jobs.clone())
        })
    }

    fn stop<'a>(&'a self, id: &'a str, _reason: &'a str) -> BoxFuture<'a, Result<(), LaunchError>> {
        Box::pin(async move {
            let mut s = self.state();
            s.calls += 1;
            s.stops.push(id.to_owned());
            s.jobs.retain(|j| j.id != id);
            Ok(())
        })
    }

    fn job_env_names(&self) -> BoxFuture<'_, Result<BTreeSet<String>, LaunchError>> {
        Box::pin(async move {
            let mut s = self.state();
            s.calls += 1;
            Ok(s.env_names.clone())
        })
    }
}

/// A GMS that keeps requests and results in memory.
#[derive(Debug, Default)]
pub struct FakeGms {
    state: Mutex<GmsState>,
}

#[derive(Debug, Default)]
struct GmsState {
    requests: BTreeMap<String, StoredRequest>,
    results: Vec<(String, ExecutionResult)>,
    secret_names: BTreeSet<String>,
    fail_reads: usize,
    calls: usize,
}

impl FakeGms {
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, GmsState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores a request's input (and optionally a result status).
    pub fn put(&self, exec_id: &str, input: serde_json::Value, status: Option<&str>) {
        self.state()
            .requests
            .insert(exec_id.into(), StoredRequest { input: Some(input), result_status: status.map(str::to_owned) });
    }

    pub fn set_secret_names(&self, names: &[&str]) {
        self.state().secret_names = names.iter().map(|s| s.to_string()).collect();
    }

    /// The next `n` reads fail with a 503.
    pub fn fail_reads(&self, n: usize) {
        self.state().fail_reads = n;
    }

    /// Every result written, in order.
    pub fn results(&self) -> Vec<(String, ExecutionResult)> {
        self.state().results.clone()
    }

    pub fn calls(&self) -> usize {
        self.state().calls
    }
}

impl AdmissionGms for FakeGms {
    fn read_request<'a>(&'a self, exec_id: &'a str) -> BoxFuture<'a, Result<StoredRequest, GmsError>> {
        Box::pin(async move {
            let mut s = self.state();
            s.calls += 1;
            if s.fail_reads > 0 {
                s.fail_reads -= 1;
                return Err(GmsError::Http { what: "entity batch read", status: 503, body: "unavailable".into() });
            }
            Ok(s.requests.get(exec_id).cloned().unwrap_or_default())
        })
    }

    fn write_result<'a>(
        &'a self,
        exec_id: &'a str,
        result: &'a ExecutionResult,
    ) -> BoxFuture<'a, Result<(), GmsError>> {
        Box::pin(async move {
            let mut s = self.state();
            s.calls += 1;
            s.results.push((exec_id.to_owned(), result.clone()));
            let status = result.status.as_str().to_owned();
            s.requests.entry(exec_id.to_owned()).or_default().result_status = Some(status);
            Ok(())
        })
    }

    fn secret_names(&self) -> BoxFuture<'_, Result<BTreeSet<String>, GmsError>> {
        Box::pin(async move {
            let mut s = self.state();
            s.calls += 1;
            Ok(s.secret_names.clone())
        })
    }
}
