//! Admission: turns one SQS record into one launched job, or a reason not to (DESIGN.md §2).
//!
//! Per record: parse ([`crate::message`]) → read the request and its result from GMS (one call
//! for the whole batch) →
//! pool check → duplicate check (a RUNNING or terminal result in GMS, or a live job of the
//! launcher) → validation (recipe, version, every required `${NAME}` in some store — names only)
//! → weight → capacity → launch → RUNNING. Network calls per admitted message: the launch and the
//! RUNNING write; the GMS read of the batch's requests, the launcher's job list, the job's
//! environment names and DataHub's secret names are read once per batch (the real launchers
//! cache the environment names per process).
//!
//! **Two admissions at once** (an SQS event source mapping scales out): after a batch launched
//! anything, the pool's jobs are listed again and ordered by start time then execution id; a job
//! this invocation launched that no longer fits is stopped at once and its message goes back to
//! the queue. On ECS and Cloud Run the stop lands while the container is still provisioning, so
//! the loser never runs; RUNNING is written only for launches that survive this check.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::Value;
use tracing::Instrument;

use crate::error::{ConfigError, GmsError};
use crate::launcher::{JobSpec, Launched, Launcher, RunningJob};
use crate::message::{self, Incoming};
use crate::recipe;
use crate::request::ExecutionRequest;
use crate::secrets::BoxFuture;
use crate::status::{ExecutionResult, Status};
use crate::venv::validate_version;

/// Tolerance when summing weights (10 × 0.1 must fit in 1.0).
const WEIGHT_EPSILON: f64 = 1e-9;

/// The admission's configuration.
#[derive(Debug, Clone)]
pub struct AdmissionConfig {
    /// `DATAHUB_EXECUTOR_POOL_ID`: the only pool this deployment runs.
    pub pool: String,
    /// `DATAHUB_EXECUTOR_INGESTION_MAX_WORKERS` (default 4): jobs at once, and the default weight 1/N.
    pub max_workers: usize,
    /// `DATAHUB_EXECUTOR_FILE_SECRET_NAMES`: names the job's `file` store holds (comma-separated).
    pub file_secret_names: BTreeSet<String>,
    /// Who admits, for reports (the function name).
    pub admitted_by: String,
}

impl AdmissionConfig {
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |k: &str| lookup(k).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        let pool = get("DATAHUB_EXECUTOR_POOL_ID").or_else(|| get("DATAHUB_EXECUTOR_WORKER_ID")).ok_or_else(|| {
            ConfigError::new("DATAHUB_EXECUTOR_POOL_ID", "is required: the executor pool this deployment serves")
        })?;
        let max_workers = match get("DATAHUB_EXECUTOR_INGESTION_MAX_WORKERS") {
            None => 4,
            Some(v) => v.parse::<usize>().ok().filter(|n| (1..=1000).contains(n)).ok_or_else(|| {
                ConfigError::new(
                    "DATAHUB_EXECUTOR_INGESTION_MAX_WORKERS",
                    format!("{v:?} is not a whole number in 1..=1000"),
                )
            })?,
        };
        let file_secret_names = get("DATAHUB_EXECUTOR_FILE_SECRET_NAMES")
            .map(|v| v.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect())
            .unwrap_or_default();
        let admitted_by = get("AWS_LAMBDA_FUNCTION_NAME").unwrap_or_else(|| "admission".to_owned());
        Ok(AdmissionConfig { pool, max_workers, file_secret_names, admitted_by })
    }

    /// The weight of a request without a valid `EXECUTOR_TASK_WEIGHT`.
    pub fn default_weight(&self) -> f64 {
        1.0 / self.max_workers as f64
    }
}

/// A request as GMS holds it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StoredRequest {
    pub input: Option<Value>,
    /// The status of its `dataHubExecutionRequestResult`, if any.
    pub result_status: Option<String>,
}

/// What the admission needs from GMS.
pub trait AdmissionGms: Send + Sync {
    /// The inputs and result statuses of a batch's requests, in one call. A request GMS does
    /// not know is absent (or has no input) in the answer.
    fn read_requests<'a>(
        &'a self,
        exec_ids: &'a [String],
    ) -> BoxFuture<'a, Result<BTreeMap<String, StoredRequest>, GmsError>>;
    /// Writes a result (RUNNING on launch, FAILURE on rejection).
    fn write_result<'a>(&'a self, exec_id: &'a str, result: &'a ExecutionResult)
    -> BoxFuture<'a, Result<(), GmsError>>;
    /// The names of the secrets DataHub holds (names only).
    fn secret_names(&self) -> BoxFuture<'_, Result<BTreeSet<String>, GmsError>>;
}

/// A store whose secret names can be listed without reading values (the cloud stores).
pub trait SecretNames: Send + Sync {
    /// The store's name (`aws-sm`, `gcp-sm`).
    fn store(&self) -> &'static str;
    /// The names it holds.
    fn names(&self) -> BoxFuture<'_, Result<BTreeSet<String>, crate::error::SecretStoreError>>;
}

#[cfg(feature = "aws-sm")]
impl SecretNames for crate::cloud_secrets::AwsSecretsManagerStore {
    fn store(&self) -> &'static str {
        crate::cloud_secrets::AWS_STORE
    }

    fn names(&self) -> BoxFuture<'_, Result<BTreeSet<String>, crate::error::SecretStoreError>> {
        Box::pin(crate::cloud_secrets::AwsSecretsManagerStore::names(self))
    }
}

impl SecretNames for crate::cloud_secrets::GcpSecretManagerStore {
    fn store(&self) -> &'static str {
        crate::cloud_secrets::GCP_STORE
    }

    fn names(&self) -> BoxFuture<'_, Result<BTreeSet<String>, crate::error::SecretStoreError>> {
        Box::pin(crate::cloud_secrets::GcpSecretManagerStore::names(self))
    }
}

/// The cloud stores of the configuration, as name sources (in precedence order).
pub async fn cloud_name_sources(
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Vec<Box<dyn SecretNames>>, ConfigError> {
    let config = crate::cloud_secrets::CloudSecretsConfig::from_lookup(&lookup)?;
    let mut sources: Vec<Box<dyn SecretNames>> = Vec::new();
    if let Some(aws) = &config.aws {
        #[cfg(feature = "aws-sm")]
        sources.push(Box::new(crate::cloud_secrets::AwsSecretsManagerStore::from_config(aws).await));
        #[cfg(not(feature = "aws-sm"))]
        {
            let _ = aws;
            return Err(ConfigError::new("DATAHUB_EXECUTOR_AWS_SM_ENABLED", "this build has no AWS support"));
        }
    }
    if let Some(gcp) = &config.gcp {
        let tokens = crate::gcp::token_source_from_env(&lookup)?;
        sources.push(Box::new(crate::cloud_secrets::GcpSecretManagerStore::new(gcp, tokens)?));
    }
    Ok(sources)
}

/// What became of one record.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// A job was started (or already ran for this id at the launcher: idempotent retry).
    Launched { exec_id: String, weight: f64, location: String },
    /// Already running or finished: not launched again.
    Duplicate { exec_id: String, reason: String },
    /// Not a run request of this pool: consumed with a log line.
    Skipped { reason: String },
    /// Can never run: FAILURE was reported when the request is identifiable; consumed.
    Rejected { exec_id: Option<String>, reason: String },
    /// Does not fit the pool's capacity now: back to the queue after `retry_after`.
    Deferred { exec_id: String, reason: String },
    /// A transient failure (GMS, launcher): SQS redelivers it.
    Retry { reason: String },
}

impl Decision {
    /// Whether SQS must see this record again (it goes into `batchItemFailures`).
    pub fn redeliver(&self) -> bool {
        matches!(self, Decision::Deferred { .. } | Decision::Retry { .. })
    }
}

/// One SQS record to admit.
#[derive(Debug, Clone)]
pub struct Record {
    pub message_id: String,
    pub body: String,
}

/// The state of one batch: the pool's jobs as known now, and names read once.
struct Batch {
    jobs: Option<Vec<RunningJob>>,
    env_names: Option<BTreeSet<String>>,
    datahub_names: Option<BTreeSet<String>>,
    /// Names of each cloud store, in precedence order.
    cloud_names: Option<Vec<(&'static str, BTreeSet<String>)>>,
}

/// The admission use-case over its ports.
pub struct Admission<'a> {
    pub config: &'a AdmissionConfig,
    pub gms: &'a dyn AdmissionGms,
    pub launcher: &'a dyn Launcher,
    /// The cloud secret stores' names (AWS, GCP), in precedence order; may be empty.
    pub cloud: &'a [Box<dyn SecretNames>],
}

/// A launch waiting for the capacity re-check before its RUNNING is written.
struct Pending {
    index: usize,
    exec_id: String,
    weight: f64,
    launched: Launched,
    notes: Vec<String>,
}

impl Admission<'_> {
    /// Admits a batch; returns one decision per record, in order.
    pub async fn admit_batch(&self, records: &[Record]) -> Vec<Decision> {
        let mut batch = Batch { jobs: None, env_names: None, datahub_names: None, cloud_names: None };
        let mut decisions = Vec::with_capacity(records.len());
        let mut pending = Vec::new();
        // Parse every record first, so the batch's requests are read from GMS in one call.
        let mut parsed = Vec::with_capacity(records.len());
        for record in records {
            let span = tracing::info_span!("parse", message_id = %record.message_id);
            parsed.push(self.parse_record(record).instrument(span).await);
        }
        let mut ids: Vec<String> = parsed.iter().filter_map(|p| p.as_ref().ok().map(|(id, _)| id.clone())).collect();
        ids.sort();
        ids.dedup();
        let stored = if ids.is_empty() { Ok(BTreeMap::new()) } else { self.gms.read_requests(&ids).await };
        for (index, (record, parsed)) in records.iter().zip(parsed).enumerate() {
            let span = tracing::info_span!("admit", message_id = %record.message_id, exec_id = tracing::field::Empty);
            let _enter = span.enter();
            let outcome = match parsed {
                Ok((exec_id, inline)) => {
                    tracing::Span::current().record("exec_id", exec_id.as_str());
                    let read = match &stored {
                        Ok(found) => Ok(found.get(&exec_id).cloned().unwrap_or_default()),
                        Err(e) => Err(e),
                    };
                    self.admit_one(exec_id, inline, read, &mut batch).await
                }
                Err(decision) => Ok(AdmitOne::Decided(decision)),
            };
            let decision = match outcome {
                Ok(AdmitOne::Decided(d)) => d,
                Ok(AdmitOne::Launched(p)) => {
                    let d = Decision::Launched {
                        exec_id: p.exec_id.clone(),
                        weight: p.weight,
                        location: p.launched.location.clone(),
                    };
                    pending.push(Pending { index, ..p });
                    d
                }
                Err(d) => d,
            };
            log_decision(&record.message_id, &decision);
            decisions.push(decision);
        }
        if !pending.is_empty() {
            self.recheck_capacity(&mut pending, &mut decisions).await;
        }
        for p in &pending {
            let mut report = format!(
                "Admitted by {} for executor pool {}; launched on {}{}; weight {}.",
                self.config.admitted_by,
                self.config.pool,
                p.launched.location,
                if p.launched.already_running { " (the launcher already had this job)" } else { "" },
                p.weight
            );
            for n in &p.notes {
                report.push_str("\nWARNING: ");
                report.push_str(n);
            }
            let result = ExecutionResult {
                status: Status::Running,
                report: Some(report),
                structured_report: None,
                start_time_ms: chrono::Utc::now().timestamp_millis(),
                duration_ms: None,
            };
            if let Err(e) = self.gms.write_result(&p.exec_id, &result).await {
                // The job writes RUNNING itself when it starts; the launch stands.
                tracing::warn!(exec_id = %p.exec_id, error = %e, "could not write RUNNING after the launch");
            }
        }
        decisions
    }

    /// The record's execution id and inline input (a MetadataChangeLog carries it), or what
    /// became of a record that names no request to run.
    async fn parse_record(&self, record: &Record) -> Result<(String, Option<Value>), Decision> {
        let incoming = match message::parse(&record.body) {
            Ok(i) => i,
            Err(g) => {
                let reason = format!("message {}: {}", record.message_id, g.reason);
                if let Some(id) = &g.exec_id {
                    self.report_failure(
                        id,
                        &format!("The execution request's message could not be read: {}", g.reason),
                    )
                    .await?;
                }
                return Err(Decision::Rejected { exec_id: g.exec_id, reason });
            }
        };
        match incoming {
            Incoming::Ignore { reason } => Err(Decision::Skipped { reason }),
            Incoming::Fetch { exec_id, .. } => Ok((exec_id, None)),
            Incoming::Inline { exec_id, input } => Ok((exec_id, Some(input))),
        }
    }

    async fn admit_one(
        &self,
        exec_id: String,
        inline: Option<Value>,
        stored: Result<StoredRequest, &GmsError>,
        batch: &mut Batch,
    ) -> Result<AdmitOne, Decision> {
        let cfg = self.config;
        let stored = stored.map_err(|e| retry_or_reject(e, &exec_id))?;
        let Some(input) = inline.or(stored.input) else {
            // GMS may not show a just-created request yet; a request that never appears ends in the DLQ.
            return Err(Decision::Retry {
                reason: format!("GMS has no dataHubExecutionRequestInput for {exec_id} (yet)"),
            });
        };
        let request = match ExecutionRequest::from_input_aspect(&exec_id, &input) {
            Ok(r) => r,
            Err(e) => {
                let executor = input.get("executorId").and_then(Value::as_str).unwrap_or("default");
                if executor != cfg.pool {
                    return Ok(AdmitOne::Decided(Decision::Skipped {
                        reason: format!("request {exec_id} is for pool {executor:?}"),
                    }));
                }
                return self.reject(&exec_id, &format!("The execution request cannot be run: {e}")).await;
            }
        };
        let executor = request.executor_id.as_deref().unwrap_or("default");
        if executor != cfg.pool {
            return Ok(AdmitOne::Decided(Decision::Skipped {
                reason: format!("request {exec_id} is for executor pool {executor:?}, this is {:?}", cfg.pool),
            }));
        }
        if let Some(status) = stored.result_status.filter(|s| s != "PENDING") {
            return Ok(AdmitOne::Decided(Decision::Duplicate {
                exec_id,
                reason: format!("GMS already has status {status} for it"),
            }));
        }
        let jobs = self.jobs(batch).await?;
        if jobs.iter().any(|j| j.exec_id == exec_id) {
            return Ok(AdmitOne::Decided(Decision::Duplicate {
                exec_id,
                reason: "a job for it is already live".into(),
            }));
        }

        // Validation: everything wrong is reported at once, by name.
        let mut problems = Vec::new();
        let mut plan = BTreeMap::new();
        match recipe::parse_recipe(&request.args.recipe) {
            Err(e) => problems.push(format!("bad recipe: {e}")),
            Ok(r) => match recipe::references(&r) {
                Err(e) => problems.push(e.to_string()),
                Ok(refs) => {
                    let (p, missing) = self.secret_plan(&refs, &request, batch).await?;
                    plan = p;
                    if !missing.is_empty() {
                        problems.push(format!(
                            "the recipe references secrets that no store holds: {} (looked in: the job's environment, the file store names in DATAHUB_EXECUTOR_FILE_SECRET_NAMES, DataHub secrets{})",
                            missing.join(", "),
                            self.cloud.iter().map(|c| format!(", {}", c.store())).collect::<String>()
                        ));
                    }
                }
            },
        }
        if let Err(e) = validate_version(&request.args.version) {
            problems.push(e.to_string());
        }
        if !problems.is_empty() {
            return self
                .reject(&exec_id, &format!("The execution request was not launched: {}", problems.join("; ")))
                .await;
        }

        let (weight, mut notes) = weight_of(&request, cfg);
        let jobs = self.jobs(batch).await?;
        let used: f64 = jobs.iter().map(|j| j.weight).sum();
        if jobs.len() >= cfg.max_workers || used + weight > 1.0 + WEIGHT_EPSILON {
            return Ok(AdmitOne::Decided(Decision::Deferred {
                exec_id,
                reason: format!(
                    "the pool is at capacity ({} jobs, weight {used:.3} in use; this request needs {weight}; at most {} jobs and 1.0)",
                    jobs.len(),
                    cfg.max_workers
                ),
            }));
        }
        let spec = JobSpec::for_request(&request, &cfg.pool, weight, plan, self.launcher.max_spec_bytes());
        if spec.args.is_none() {
            notes.push("the request's args were not put in the launch override (too large, or extra_env_vars): the job reads them from GMS".into());
        }
        let launched = match self.launcher.launch(&spec).await {
            Ok(l) => l,
            Err(e) if e.is_transient() => return Err(Decision::Retry { reason: format!("launch of {exec_id}: {e}") }),
            Err(e) => return self.reject(&exec_id, &format!("The launcher refused the job: {e}")).await,
        };
        if let Some(jobs) = batch.jobs.as_mut() {
            jobs.push(RunningJob { exec_id: exec_id.clone(), weight, id: launched.id.clone(), started_ms: None });
        }
        Ok(AdmitOne::Launched(Pending { index: 0, exec_id, weight, launched, notes }))
    }

    async fn jobs<'b>(&self, batch: &'b mut Batch) -> Result<&'b Vec<RunningJob>, Decision> {
        if batch.jobs.is_none() {
            let jobs = self
                .launcher
                .running(&self.config.pool)
                .await
                .map_err(|e| Decision::Retry { reason: format!("listing the pool's jobs: {e}") })?;
            batch.jobs = Some(jobs);
        }
        Ok(batch.jobs.get_or_insert_with(Vec::new))
    }

    /// Which store holds each referenced name (later stores win, as in the job: env < file <
    /// datahub), and the required names no store holds.
    async fn secret_plan(
        &self,
        refs: &recipe::References,
        request: &ExecutionRequest,
        batch: &mut Batch,
    ) -> Result<(BTreeMap<String, String>, Vec<String>), Decision> {
        let mut plan = BTreeMap::new();
        let mut missing = Vec::new();
        if refs.required.is_empty() && refs.optional.is_empty() {
            return Ok((plan, missing));
        }
        if batch.env_names.is_none() {
            let names = self
                .launcher
                .job_env_names()
                .await
                .map_err(|e| Decision::Retry { reason: format!("reading the job's environment names: {e}") })?;
            batch.env_names = Some(names);
        }
        if batch.datahub_names.is_none() {
            let names = self
                .gms
                .secret_names()
                .await
                .map_err(|e| Decision::Retry { reason: format!("listing DataHub's secret names: {e}") })?;
            batch.datahub_names = Some(names);
        }
        if batch.cloud_names.is_none() {
            let mut all = Vec::new();
            for source in self.cloud {
                let names = source
                    .names()
                    .await
                    .map_err(|e| Decision::Retry { reason: format!("listing secret names: {e}") })?;
                all.push((source.store(), names));
            }
            batch.cloud_names = Some(all);
        }
        let env = batch.env_names.as_ref();
        let datahub = batch.datahub_names.as_ref();
        let cloud = batch.cloud_names.as_deref().unwrap_or_default();
        for name in refs.all() {
            // Later stores win, as in the job: env < file < datahub < aws-sm < gcp-sm.
            let store = if let Some((store, _)) = cloud.iter().rev().find(|(_, names)| names.contains(name)) {
                Some(*store)
            } else if datahub.is_some_and(|d| d.contains(name)) {
                Some("datahub")
            } else if self.config.file_secret_names.contains(name) {
                Some("file")
            } else if env.is_some_and(|e| e.contains(name)) || request.args.extra_env_vars.contains_key(name) {
                Some("env")
            } else {
                None
            };
            match store {
                Some(s) => {
                    plan.insert(name.clone(), s.to_owned());
                }
                None if refs.required.contains(name) => missing.push(name.clone()),
                None => {}
            }
        }
        Ok((plan, missing))
    }

    async fn recheck_capacity(&self, pending: &mut Vec<Pending>, decisions: &mut [Decision]) {
        let mut jobs = match self.launcher.running(&self.config.pool).await {
            Ok(j) => j,
            Err(e) => {
                tracing::warn!(error = %e, "could not re-check the pool's capacity after launching; keeping the launches");
                return;
            }
        };
        for p in pending.iter() {
            if !jobs.iter().any(|j| j.exec_id == p.exec_id) {
                jobs.push(RunningJob {
                    exec_id: p.exec_id.clone(),
                    weight: p.weight,
                    id: p.launched.id.clone(),
                    started_ms: None,
                });
            }
        }
        jobs.sort_by(|a, b| {
            (a.started_ms.unwrap_or(i64::MAX), &a.exec_id).cmp(&(b.started_ms.unwrap_or(i64::MAX), &b.exec_id))
        });
        let (mut count, mut used) = (0usize, 0.0f64);
        let mut losers = BTreeSet::new();
        for j in &jobs {
            if count < self.config.max_workers && used + j.weight <= 1.0 + WEIGHT_EPSILON {
                count += 1;
                used += j.weight;
            } else {
                losers.insert(j.exec_id.clone());
            }
        }
        let mut kept = Vec::new();
        for p in pending.drain(..) {
            if !losers.contains(&p.exec_id) {
                kept.push(p);
                continue;
            }
            let reason = "another admission filled the pool at the same time; this launch was stopped and the request goes back to the queue";
            if let Err(e) = self.launcher.stop(&p.launched.id, reason).await {
                tracing::error!(exec_id = %p.exec_id, error = %e, "could not stop a launch that lost the capacity race");
                kept.push(p);
                continue;
            }
            tracing::warn!(exec_id = %p.exec_id, "{reason}");
            decisions[p.index] = Decision::Deferred { exec_id: p.exec_id.clone(), reason: reason.to_owned() };
        }
        *pending = kept;
    }

    async fn reject(&self, exec_id: &str, reason: &str) -> Result<AdmitOne, Decision> {
        self.report_failure(exec_id, reason).await?;
        Ok(AdmitOne::Decided(Decision::Rejected { exec_id: Some(exec_id.to_owned()), reason: reason.to_owned() }))
    }

    async fn report_failure(&self, exec_id: &str, reason: &str) -> Result<(), Decision> {
        let now = chrono::Utc::now().timestamp_millis();
        let result = ExecutionResult {
            status: Status::Failure,
            report: Some(format!(
                "~~~~ Execution Summary - RUN_INGEST ~~~~\nExecution finished with errors.\n{reason}\n"
            )),
            structured_report: None,
            start_time_ms: now,
            duration_ms: Some(0),
        };
        self.gms
            .write_result(exec_id, &result)
            .await
            .map_err(|e| Decision::Retry { reason: format!("could not report FAILURE for {exec_id} ({reason}): {e}") })
    }
}

enum AdmitOne {
    Decided(Decision),
    Launched(Pending),
}

fn retry_or_reject(e: &GmsError, exec_id: &str) -> Decision {
    Decision::Retry { reason: format!("reading {exec_id} from GMS: {e}") }
}

/// The request's weight: `EXECUTOR_TASK_WEIGHT` from `extra_env_vars` when it is a number in
/// (0, 1], else the default with a note saying why.
pub fn weight_of(request: &ExecutionRequest, cfg: &AdmissionConfig) -> (f64, Vec<String>) {
    let default = cfg.default_weight();
    let Some(raw) = request.args.extra_env_vars.get("EXECUTOR_TASK_WEIGHT") else { return (default, Vec::new()) };
    match raw.trim().parse::<f64>() {
        Ok(w) if w.is_finite() && w > 0.0 && w <= 1.0 => (w, Vec::new()),
        Ok(_) => (
            default,
            vec![format!("EXECUTOR_TASK_WEIGHT={raw:?} is outside (0, 1]; using the default weight {default}")],
        ),
        Err(_) => {
            (default, vec![format!("EXECUTOR_TASK_WEIGHT={raw:?} is not a number; using the default weight {default}")])
        }
    }
}

fn log_decision(message_id: &str, d: &Decision) {
    match d {
        Decision::Launched { exec_id, weight, location } => {
            tracing::info!(message_id, exec_id, weight, location, "launched")
        }
        Decision::Duplicate { exec_id, reason } => {
            tracing::info!(message_id, exec_id, reason, "duplicate: not launched again")
        }
        Decision::Skipped { reason } => tracing::info!(message_id, reason, "skipped"),
        Decision::Rejected { exec_id, reason } => {
            tracing::error!(message_id, exec_id = exec_id.as_deref(), reason, "rejected")
        }
        Decision::Deferred { exec_id, reason } => tracing::info!(message_id, exec_id, reason, "deferred"),
        Decision::Retry { reason } => tracing::warn!(message_id, reason, "will be retried"),
    }
}

/// The visibility timeout before a deferred message comes back: doubles with each receive,
/// from `base` up to `max`.
pub fn backoff(receive_count: u32, base: Duration, max: Duration) -> Duration {
    let factor = 2u32.saturating_pow(receive_count.saturating_sub(1).min(16));
    (base * factor).min(max)
}

impl AdmissionGms for crate::gms::GmsClient {
    fn read_requests<'a>(
        &'a self,
        exec_ids: &'a [String],
    ) -> BoxFuture<'a, Result<BTreeMap<String, StoredRequest>, GmsError>> {
        Box::pin(async move {
            let prefix = crate::request::EXECUTION_REQUEST_URN_PREFIX;
            let urns: Vec<String> = exec_ids.iter().map(|id| format!("{prefix}{id}")).collect();
            let found = self
                .batch_get(
                    "dataHubExecutionRequest",
                    &urns,
                    &["dataHubExecutionRequestInput", "dataHubExecutionRequestResult"],
                )
                .await?;
            Ok(exec_ids
                .iter()
                .zip(&urns)
                .map(|(id, urn)| {
                    let aspects = found.get(urn);
                    let stored = StoredRequest {
                        input: aspects.and_then(|a| a.get("dataHubExecutionRequestInput")).cloned(),
                        result_status: aspects
                            .and_then(|a| a.get("dataHubExecutionRequestResult"))
                            .and_then(|r| r.get("status"))
                            .and_then(Value::as_str)
                            .map(str::to_owned),
                    };
                    (id.clone(), stored)
                })
                .collect())
        })
    }

    fn write_result<'a>(
        &'a self,
        exec_id: &'a str,
        result: &'a ExecutionResult,
    ) -> BoxFuture<'a, Result<(), GmsError>> {
        Box::pin(self.write_execution_result(exec_id, result))
    }

    fn secret_names(&self) -> BoxFuture<'_, Result<BTreeSet<String>, GmsError>> {
        Box::pin(async move { self.list_secret_names().await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::launcher::LaunchError;
    use crate::testing::{FakeGms, FakeLauncher};
    use serde_json::json;

    fn config() -> AdmissionConfig {
        AdmissionConfig {
            pool: "remote".into(),
            max_workers: 4,
            file_secret_names: ["FILE_ONLY".to_string()].into(),
            admitted_by: "admission-test".into(),
        }
    }

    fn input(pool: &str, recipe: serde_json::Value, extra_env: Option<serde_json::Value>) -> serde_json::Value {
        let mut args = json!({"recipe": recipe.to_string(), "version": "1.7.0.17"});
        if let Some(e) = extra_env {
            args["extra_env_vars"] = json!(e.to_string());
        }
        json!({"task": "RUN_INGEST", "executorId": pool, "args": args})
    }

    fn recipe(password: &str) -> serde_json::Value {
        json!({"source": {"type": "postgres", "config": {"password": password, "host": "${DB_HOST:-localhost}"}}})
    }

    fn reference(id: &str) -> Record {
        Record {
            message_id: format!("m-{id}"),
            body: json!({"executionRequestUrn": format!("urn:li:dataHubExecutionRequest:{id}")}).to_string(),
        }
    }

    #[tokio::test]
    async fn a_mixed_batch_launches_each_valid_request_once() {
        let (gms, launcher, cfg) = (FakeGms::new(), FakeLauncher::new(), config());
        launcher.set_env_names(&["JOB_ENV_SECRET"]);
        gms.set_secret_names(&["PG_PASSWORD"]);
        gms.put("ok-1", input("remote", recipe("${PG_PASSWORD}"), None), None);
        gms.put("ok-2", input("remote", recipe("${JOB_ENV_SECRET}${FILE_ONLY}"), None), None);
        gms.put("other-pool", input("elsewhere", recipe("x"), None), None);
        gms.put("missing-secret", input("remote", recipe("${NOPE_1}-${NOPE_2}"), None), None);
        gms.put("done", input("remote", recipe("x"), None), Some("SUCCESS"));
        let records = vec![
            reference("ok-1"),
            reference("ok-1"),
            reference("ok-2"),
            reference("other-pool"),
            Record { message_id: "m-garbage".into(), body: "not a message".into() },
            reference("missing-secret"),
            reference("done"),
        ];
        let admission = Admission { config: &cfg, gms: &gms, launcher: &launcher, cloud: &[] };
        let d = admission.admit_batch(&records).await;
        assert!(matches!(&d[0], Decision::Launched { exec_id, .. } if exec_id == "ok-1"), "{d:?}");
        assert!(matches!(&d[1], Decision::Duplicate { exec_id, .. } if exec_id == "ok-1"), "{d:?}");
        assert!(matches!(&d[2], Decision::Launched { exec_id, .. } if exec_id == "ok-2"), "{d:?}");
        assert!(matches!(&d[3], Decision::Skipped { .. }), "{d:?}");
        assert!(matches!(&d[4], Decision::Rejected { exec_id: None, .. }), "{d:?}");
        assert!(
            matches!(&d[5], Decision::Rejected { exec_id: Some(id), reason } if id == "missing-secret" && reason.contains("NOPE_1, NOPE_2")),
            "{d:?}"
        );
        assert!(matches!(&d[6], Decision::Duplicate { .. }), "{d:?}");
        assert!(d.iter().all(|x| !x.redeliver()));

        let launches = launcher.launches();
        assert_eq!(launches.len(), 2);
        assert_eq!(launches[0].secret_plan, [("PG_PASSWORD".to_string(), "datahub".to_string())].into());
        assert_eq!(launches[1].secret_plan["JOB_ENV_SECRET"], "env");
        assert_eq!(launches[1].secret_plan["FILE_ONLY"], "file");
        let results = gms.results();
        let statuses: Vec<(&str, &str)> = results.iter().map(|(id, r)| (id.as_str(), r.status.as_str())).collect();
        assert_eq!(statuses, vec![("missing-secret", "FAILURE"), ("ok-1", "RUNNING"), ("ok-2", "RUNNING")]);
        let failure = results[0].1.report.clone().unwrap_or_default();
        assert!(failure.contains("NOPE_1, NOPE_2") && !failure.contains("DB_HOST"), "{failure}");
    }

    #[tokio::test]
    async fn capacity_waits_and_weights_fall_back_with_a_note() {
        let (gms, launcher, cfg) = (FakeGms::new(), FakeLauncher::new(), config());
        for i in 0..4 {
            launcher.add_job(&format!("running-{i}"), 0.25);
        }
        gms.put("fifth", input("remote", recipe("x"), None), None);
        let admission = Admission { config: &cfg, gms: &gms, launcher: &launcher, cloud: &[] };
        let d = admission.admit_batch(&[reference("fifth")]).await;
        assert!(matches!(&d[0], Decision::Deferred { .. }) && d[0].redeliver(), "{d:?}");
        launcher.finish("running-0");
        let d = admission.admit_batch(&[reference("fifth")]).await;
        assert!(matches!(&d[0], Decision::Launched { .. }), "{d:?}");

        // A weight of 1.0 runs alone.
        let (gms, launcher) = (FakeGms::new(), FakeLauncher::new());
        let admission = Admission { config: &cfg, gms: &gms, launcher: &launcher, cloud: &[] };
        gms.put("heavy", input("remote", recipe("x"), Some(json!({"EXECUTOR_TASK_WEIGHT": "1.0"}))), None);
        gms.put("light", input("remote", recipe("x"), None), None);
        let d = admission.admit_batch(&[reference("heavy"), reference("light")]).await;
        assert!(matches!(&d[0], Decision::Launched { weight, .. } if *weight == 1.0), "{d:?}");
        assert!(matches!(&d[1], Decision::Deferred { .. }), "{d:?}");

        for bad in ["0", "-1", "NaN", "abc", "2.5"] {
            let (gms, launcher) = (FakeGms::new(), FakeLauncher::new());
            let admission = Admission { config: &cfg, gms: &gms, launcher: &launcher, cloud: &[] };
            gms.put("w", input("remote", recipe("x"), Some(json!({"EXECUTOR_TASK_WEIGHT": bad}))), None);
            let d = admission.admit_batch(&[reference("w")]).await;
            assert!(matches!(&d[0], Decision::Launched { weight, .. } if *weight == 0.25), "{bad}: {d:?}");
            let report = gms.results()[0].1.report.clone().unwrap_or_default();
            assert!(
                report.contains(&format!("EXECUTOR_TASK_WEIGHT=\"{bad}\"")) && report.contains("default weight 0.25"),
                "{report}"
            );
        }
    }

    #[tokio::test]
    async fn transient_failures_are_redelivered_and_nothing_is_launched() {
        let (gms, launcher, cfg) = (FakeGms::new(), FakeLauncher::new(), config());
        gms.put("a", input("remote", recipe("x"), None), None);
        let admission = Admission { config: &cfg, gms: &gms, launcher: &launcher, cloud: &[] };
        gms.fail_reads(1);
        let d = admission.admit_batch(&[reference("a")]).await;
        assert!(matches!(&d[0], Decision::Retry { .. }), "{d:?}");
        launcher.fail_next_launch(LaunchError::Transient { launcher: "fake", reason: "throttled".into() });
        let d = admission.admit_batch(&[reference("a")]).await;
        assert!(matches!(&d[0], Decision::Retry { .. }), "{d:?}");
        let d = admission.admit_batch(&[reference("unknown")]).await;
        assert!(matches!(&d[0], Decision::Retry { .. }), "a request GMS does not show yet is retried: {d:?}");
        assert!(launcher.launches().is_empty());
        assert!(gms.results().is_empty());
    }

    #[tokio::test]
    async fn two_admissions_at_once_never_exceed_the_capacity() {
        let (gms, launcher, cfg) = (FakeGms::new(), FakeLauncher::new(), config());
        for i in 0..3 {
            launcher.add_job(&format!("running-{i}"), 0.25);
        }
        gms.put("x", input("remote", recipe("x"), None), None);
        gms.put("y", input("remote", recipe("x"), None), None);
        let a = Admission { config: &cfg, gms: &gms, launcher: &launcher, cloud: &[] };
        let b = Admission { config: &cfg, gms: &gms, launcher: &launcher, cloud: &[] };
        // Both see three jobs and room for one more; both launch; the re-check stops one.
        let rx = [reference("x")];
        let ry = [reference("y")];
        let (dx, dy) = tokio::join!(a.admit_batch(&rx), b.admit_batch(&ry));
        let launched: Vec<_> = dx.iter().chain(&dy).filter(|d| matches!(d, Decision::Launched { .. })).collect();
        let deferred: Vec<_> = dx.iter().chain(&dy).filter(|d| matches!(d, Decision::Deferred { .. })).collect();
        assert_eq!((launched.len(), deferred.len()), (1, 1), "{dx:?} {dy:?}");
        assert_eq!(launcher.jobs().len(), 4, "the capacity holds");
        assert_eq!(launcher.stops().len(), 1);
        let running: Vec<String> = gms.results().iter().map(|(id, _)| id.clone()).collect();
        assert_eq!(running.len(), 1, "RUNNING only for the launch that stayed: {running:?}");
    }

    #[test]
    fn backoff_doubles_up_to_the_max() {
        let (b, m) = (Duration::from_secs(30), Duration::from_secs(900));
        assert_eq!(backoff(1, b, m), Duration::from_secs(30));
        assert_eq!(backoff(3, b, m), Duration::from_secs(120));
        assert_eq!(backoff(50, b, m), Duration::from_secs(900));
    }
}
