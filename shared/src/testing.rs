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
    fn read_requests<'a>(
        &'a self,
        exec_ids: &'a [String],
    ) -> BoxFuture<'a, Result<BTreeMap<String, StoredRequest>, GmsError>> {
        Box::pin(async move {
            let mut s = self.state();
            s.calls += 1;
            if s.fail_reads > 0 {
                s.fail_reads -= 1;
                return Err(GmsError::Http { what: "entity batch read", status: 503, body: "unavailable".into() });
            }
            Ok(exec_ids.iter().filter_map(|id| s.requests.get(id).map(|r| (id.clone(), r.clone()))).collect())
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

// ---------------------------------------------------------------------------------------------
// The relay's ports.

use crate::error::AwsError;
use crate::relay::{
    BatchOutcome, ExecutorConfig, Ledger, ObservedResult, Outbox, OutgoingMessage, ReceivedMessage, RelayGms,
    RequestPage, SourceQueue, SourceQueues, StoredExecution,
};

fn fake_aws_error(operation: &'static str) -> AwsError {
    AwsError { service: "fake", operation, resource: "fake".into(), reason: "injected".into(), transient: true }
}

/// A GMS for the relay: requests in memory, scrolled in pages of `count` (the query is not
/// interpreted; the relay filters in code anyway), results written recorded.
#[derive(Debug, Default)]
pub struct FakeRelayGms {
    state: Mutex<RelayGmsState>,
}

#[derive(Debug, Default)]
struct RelayGmsState {
    requests: Vec<StoredExecution>,
    config: serde_json::Value,
    written: Vec<(String, ExecutionResult)>,
    proposals: Vec<String>,
    executor_configs: Vec<ExecutorConfig>,
    /// Results that appear between the scan and the direct read.
    changed_after_scan: BTreeMap<String, ObservedResult>,
    fail_scroll: bool,
    fail_proposal: Option<u16>,
}

impl FakeRelayGms {
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, RelayGmsState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn add(&self, r: StoredExecution) {
        self.state().requests.push(r);
    }

    pub fn set_config(&self, config: serde_json::Value) {
        self.state().config = config;
    }

    /// The direct read answers `result` for `exec_id`, whatever the scan said.
    pub fn change_after_scan(&self, exec_id: &str, result: ObservedResult) {
        self.state().changed_after_scan.insert(exec_id.into(), result);
    }

    pub fn set_executor_configs(&self, configs: Vec<ExecutorConfig>) {
        self.state().executor_configs = configs;
    }

    pub fn fail_scroll(&self, fail: bool) {
        self.state().fail_scroll = fail;
    }

    pub fn fail_proposals(&self, status: Option<u16>) {
        self.state().fail_proposal = status;
    }

    pub fn written(&self) -> Vec<(String, ExecutionResult)> {
        self.state().written.clone()
    }

    pub fn proposals(&self) -> Vec<String> {
        self.state().proposals.clone()
    }
}

impl RelayGms for FakeRelayGms {
    fn server_config(&self) -> BoxFuture<'_, Result<serde_json::Value, GmsError>> {
        Box::pin(async move { Ok(self.state().config.clone()) })
    }

    fn scroll_requests<'a>(
        &'a self,
        _query: &'a str,
        scroll_id: Option<&'a str>,
        count: usize,
    ) -> BoxFuture<'a, Result<RequestPage, GmsError>> {
        Box::pin(async move {
            tokio::task::yield_now().await;
            let s = self.state();
            if s.fail_scroll {
                return Err(GmsError::Http { what: "entity scroll", status: 503, body: "injected".into() });
            }
            let start: usize = scroll_id.and_then(|i| i.parse().ok()).unwrap_or(0);
            let end = (start + count.max(1)).min(s.requests.len());
            let requests = s.requests.get(start..end).map(<[_]>::to_vec).unwrap_or_default();
            let scroll_id = (end < s.requests.len()).then(|| end.to_string());
            Ok(RequestPage { requests, scroll_id })
        })
    }

    fn read_results<'a>(
        &'a self,
        exec_ids: &'a [String],
    ) -> BoxFuture<'a, Result<BTreeMap<String, ObservedResult>, GmsError>> {
        Box::pin(async move {
            let s = self.state();
            let mut out = BTreeMap::new();
            for id in exec_ids {
                if let Some(r) = s.changed_after_scan.get(id) {
                    out.insert(id.clone(), r.clone());
                } else if let Some(r) = s.requests.iter().find(|r| &r.exec_id == id).and_then(|r| r.result.clone()) {
                    out.insert(id.clone(), r);
                }
            }
            Ok(out)
        })
    }

    fn write_result<'a>(
        &'a self,
        exec_id: &'a str,
        result: &'a ExecutionResult,
    ) -> BoxFuture<'a, Result<(), GmsError>> {
        Box::pin(async move {
            self.state().written.push((exec_id.to_owned(), result.clone()));
            Ok(())
        })
    }

    fn ingest_proposal(&self, body: String) -> BoxFuture<'_, Result<(), GmsError>> {
        Box::pin(async move {
            let mut s = self.state();
            if let Some(status) = s.fail_proposal {
                return Err(GmsError::Http { what: "ingestProposal", status, body: "injected".into() });
            }
            s.proposals.push(body);
            Ok(())
        })
    }

    fn executor_configs(&self) -> BoxFuture<'_, Result<Vec<ExecutorConfig>, GmsError>> {
        Box::pin(async move { Ok(self.state().executor_configs.clone()) })
    }
}

/// An in-memory ledger with DynamoDB's conditional semantics (claim wins only when absent or
/// expired; mark and release only by the owner).
#[derive(Debug, Default)]
pub struct FakeLedger {
    /// exec id → (state, owner, expires at epoch ms)
    items: Mutex<BTreeMap<String, (String, String, i64)>>,
}

impl FakeLedger {
    pub fn new() -> Self {
        Self::default()
    }

    fn items(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, (String, String, i64)>> {
        self.items.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `(state, owner)` of an entry.
    pub fn entry(&self, exec_id: &str) -> Option<(String, String)> {
        self.items().get(exec_id).map(|(s, o, _)| (s.clone(), o.clone()))
    }
}

impl Ledger for FakeLedger {
    fn claim<'a>(
        &'a self,
        exec_id: &'a str,
        owner: &'a str,
        now_ms: i64,
        lease: std::time::Duration,
    ) -> BoxFuture<'a, Result<bool, AwsError>> {
        Box::pin(async move {
            tokio::task::yield_now().await;
            let mut items = self.items();
            if items.get(exec_id).is_some_and(|(_, _, exp)| *exp >= now_ms) {
                return Ok(false);
            }
            items.insert(exec_id.into(), ("claimed".into(), owner.into(), now_ms + lease.as_millis() as i64));
            Ok(true)
        })
    }

    fn mark_sent<'a>(
        &'a self,
        exec_id: &'a str,
        owner: &'a str,
        now_ms: i64,
        keep: std::time::Duration,
    ) -> BoxFuture<'a, Result<bool, AwsError>> {
        Box::pin(async move {
            let mut items = self.items();
            match items.get_mut(exec_id) {
                Some(item) if item.1 == owner => {
                    *item = ("sent".into(), owner.into(), now_ms + keep.as_millis() as i64);
                    Ok(true)
                }
                _ => Ok(false),
            }
        })
    }

    fn release<'a>(&'a self, exec_id: &'a str, owner: &'a str) -> BoxFuture<'a, Result<(), AwsError>> {
        Box::pin(async move {
            let mut items = self.items();
            if items.get(exec_id).is_some_and(|(s, o, _)| s == "claimed" && o == owner) {
                items.remove(exec_id);
            }
            Ok(())
        })
    }
}

/// A queue in memory: an [`Outbox`] and a [`SourceQueue`]. Received messages stay until deleted.
#[derive(Debug, Default)]
pub struct FakeQueue {
    state: Mutex<QueueState>,
}

#[derive(Debug, Default)]
struct QueueState {
    sent: Vec<String>,
    waiting: Vec<ReceivedMessage>,
    in_flight: Vec<ReceivedMessage>,
    deleted: Vec<String>,
    fail_sends: usize,
    fail_deletes: bool,
}

impl FakeQueue {
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bodies sent, in order.
    pub fn sent(&self) -> Vec<String> {
        self.state().sent.clone()
    }

    /// Puts a message to be received.
    pub fn put(&self, id: &str, body: &str) {
        self.state().waiting.push(ReceivedMessage {
            message_id: id.into(),
            receipt_handle: format!("rh-{id}"),
            body: body.into(),
        });
    }

    /// The next `n` send calls fail as a whole.
    pub fn fail_sends(&self, n: usize) {
        self.state().fail_sends = n;
    }

    pub fn fail_deletes(&self, fail: bool) {
        self.state().fail_deletes = fail;
    }

    pub fn deleted(&self) -> Vec<String> {
        self.state().deleted.clone()
    }

    /// Received but not deleted messages come back (the visibility timeout passed).
    pub fn expire_visibility(&self) {
        let mut s = self.state();
        let back: Vec<ReceivedMessage> = s.in_flight.drain(..).collect();
        s.waiting.extend(back);
    }

    /// Messages not deleted (waiting or in flight).
    pub fn remaining(&self) -> usize {
        let s = self.state();
        s.waiting.len() + s.in_flight.len()
    }
}

impl Outbox for FakeQueue {
    fn send_batch<'a>(&'a self, messages: &'a [OutgoingMessage]) -> BoxFuture<'a, Result<BatchOutcome, AwsError>> {
        Box::pin(async move {
            tokio::task::yield_now().await;
            let mut s = self.state();
            if s.fail_sends > 0 {
                s.fail_sends -= 1;
                return Err(fake_aws_error("SendMessageBatch"));
            }
            s.sent.extend(messages.iter().map(|m| m.body.clone()));
            Ok(BatchOutcome { ok: messages.iter().map(|m| m.id.clone()).collect(), failed: Vec::new() })
        })
    }
}

impl SourceQueue for FakeQueue {
    fn receive(&self, max: i32) -> BoxFuture<'_, Result<Vec<ReceivedMessage>, AwsError>> {
        Box::pin(async move {
            let mut s = self.state();
            let n = (max.max(0) as usize).min(s.waiting.len());
            let got: Vec<ReceivedMessage> = s.waiting.drain(..n).collect();
            s.in_flight.extend(got.iter().cloned());
            Ok(got)
        })
    }

    fn delete_batch<'a>(&'a self, messages: &'a [(String, String)]) -> BoxFuture<'a, Result<BatchOutcome, AwsError>> {
        Box::pin(async move {
            let mut s = self.state();
            if s.fail_deletes {
                return Err(fake_aws_error("DeleteMessageBatch"));
            }
            let mut outcome = BatchOutcome::default();
            for (id, receipt) in messages {
                s.in_flight.retain(|m| &m.receipt_handle != receipt);
                s.deleted.push(id.clone());
                outcome.ok.push(id.clone());
            }
            Ok(outcome)
        })
    }
}

/// Hands out one shared [`FakeQueue`] as DataHub Cloud's queue, recording the configs it was
/// opened with.
#[derive(Debug, Default)]
pub struct FakeSources {
    pub queue: std::sync::Arc<FakeQueue>,
    opened: Mutex<Vec<String>>,
}

impl FakeSources {
    pub fn new() -> Self {
        Self::default()
    }

    /// Queue URLs opened, in order.
    pub fn opened(&self) -> Vec<String> {
        self.opened.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

struct SharedQueue(std::sync::Arc<FakeQueue>);

impl SourceQueue for SharedQueue {
    fn receive(&self, max: i32) -> BoxFuture<'_, Result<Vec<ReceivedMessage>, AwsError>> {
        self.0.receive(max)
    }

    fn delete_batch<'a>(&'a self, messages: &'a [(String, String)]) -> BoxFuture<'a, Result<BatchOutcome, AwsError>> {
        self.0.delete_batch(messages)
    }
}

impl SourceQueues for FakeSources {
    fn open(&self, config: &ExecutorConfig) -> Box<dyn SourceQueue> {
        self.opened.lock().unwrap_or_else(|p| p.into_inner()).push(config.queue_url.clone());
        Box::new(SharedQueue(std::sync::Arc::clone(&self.queue)))
    }
}
