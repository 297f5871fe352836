//! The relay (DESIGN.md §4): a scheduled run that feeds the pool's queue from DataHub, reports the
//! pool's executor status, and sweeps runs whose job is gone. `functions/relay` only wires it.
//!
//! One run, in this order (a transient failure of one part never stops the others):
//!
//! 1. **Executor status** ([`status`]): `dataHubRemoteExecutorStatus` of the pool, when GMS
//!    `/config` says `remoteExecutorBackend.revision >= 2`; otherwise one INFO line says why not.
//! 2. **Scan**: one OpenAPI v2 scroll of `dataHubExecutionRequest` for the pool's open requests
//!    (no result yet, or RUNNING; [`query::open_requests`]), filtered again in code to
//!    `executorId` = the pool (the index is never trusted alone) and never `__datahub_cli_`.
//!    Bounded: at most [`Limits::max_pages`] pages of [`Limits::page_size`].
//! 3. **Sweeper** ([`sweeper`]): RUNNING without a live job of the launcher → FAILURE saying what
//!    was found; pending longer than the threshold → FAILURE "waited for capacity".
//! 4. **Feed**, by [`Mode`]: `self-hosted` enqueues one reference message per pending request not
//!    already enqueued ([`enqueue`], with the DynamoDB ledger), `datahub-cloud` forwards DataHub
//!    Cloud's queue to ours ([`forward`]), `none` feeds nothing (the admission reads DataHub's
//!    queue directly).
//!
//! The run ends with a [`Summary`]; it asks for a retry (`retry`) only when a part left work
//! undone that a later attempt can do (GMS 5xx, throttling, a queue that did not accept).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

use crate::config::{GmsConfig, GmsTokenSource, parse_seconds, validate_gms_url};
use crate::error::{ConfigError, RelayError};
use crate::launcher::Launcher;

pub mod enqueue;
pub mod forward;
pub mod ports;
pub mod query;
pub mod status;
pub mod sweeper;

#[cfg(feature = "aws")]
pub mod aws;
#[cfg(test)]
mod run_tests;

pub use ports::{
    BatchOutcome, ExecutorConfig, Ledger, ObservedResult, Outbox, OutgoingMessage, ReceivedMessage, RelayGms,
    RequestPage, SourceQueue, SourceQueues, StoredExecution,
};

/// Requests of this executor id are the CLI's own (`ingest-job run --ingestion-source`): no pool
/// runs or sweeps them, as in DataHub's sweeper.
pub const CLI_EXECUTOR_ID: &str = "__datahub_cli_";

/// How the pool's queue is fed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Scroll GMS for pending requests and enqueue references (self-hosted DataHub).
    SelfHosted,
    /// Forward DataHub Cloud's queue for the pool (credentials from `listExecutorConfigs`).
    DatahubCloud,
    /// Status and sweeper only: the admission is attached to DataHub's queue directly.
    None,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::SelfHosted => "self-hosted",
            Mode::DatahubCloud => "datahub-cloud",
            Mode::None => "none",
        }
    }
}

/// Bounds on one run's work, so a backlog is worked off over several runs and a run always ends
/// well within the function's timeout.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Entities per scroll page.
    pub page_size: usize,
    /// Scroll pages per run.
    pub max_pages: usize,
    /// Reference messages enqueued per run (self-hosted).
    pub max_enqueue: usize,
    /// Messages received from DataHub Cloud's queue per run.
    pub max_forward: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { page_size: 100, max_pages: 50, max_enqueue: 500, max_forward: 500 }
    }
}

/// The sweeper's thresholds.
#[derive(Debug, Clone, PartialEq)]
pub struct SweeperConfig {
    /// `DATAHUB_EXECUTOR_SWEEPER_LOST_GRACE` (default 300 s): a RUNNING request without a live job
    /// is swept only once its RUNNING was last observed at least this long ago (launchers list a
    /// just-started job late).
    pub lost_grace: Duration,
    /// `DATAHUB_EXECUTOR_SWEEPER_PENDING_THRESHOLD` (default 172800 s, DataHub's): a request with
    /// no result that was requested longer ago than this is failed.
    pub pending_threshold: Duration,
}

/// The relay's configuration (`from_lookup` is pure; errors name the variable).
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// `DATAHUB_GMS_URL`, `DATAHUB_GMS_TOKEN`.
    pub gms: GmsConfig,
    /// `DATAHUB_GMS_TOKEN` or `DATAHUB_GMS_TOKEN_SECRET_ARN` (the deployment's way: the token stays
    /// in Secrets Manager and is read once per cold start).
    pub token_source: GmsTokenSource,
    /// `DATAHUB_EXECUTOR_POOL_ID` (or `DATAHUB_EXECUTOR_WORKER_ID`).
    pub pool: String,
    /// `DATAHUB_EXECUTOR_RELAY_MODE` (default `self-hosted`).
    pub mode: Mode,
    /// `DATAHUB_EXECUTOR_QUEUE_URL`: our pool's queue (required unless the mode is `none`).
    pub queue_url: Option<String>,
    /// `DATAHUB_EXECUTOR_RELAY_LEDGER_TABLE` (required in `self-hosted` mode).
    pub ledger_table: Option<String>,
    /// `DATAHUB_EXECUTOR_SWEEPER_ENABLED` (default true) and its thresholds; `None` when off.
    pub sweeper: Option<SweeperConfig>,
    /// `DATAHUB_EXECUTOR_STATUS_ENABLED` (default true).
    pub status_enabled: bool,
    /// `AWS_LAMBDA_FUNCTION_NAME` (default `relay`): part of the executor instance id.
    pub function_name: String,
    /// How long a ledger claim holds before another run may take it over (a crashed run).
    pub claim_lease: Duration,
    /// How long a sent reference counts as enqueued. A request still pending after this is
    /// enqueued again (its first message may have gone to the DLQ), so no request is lost; the
    /// admission's duplicate check drops the extra message if the first one is still waiting.
    pub resend_after: Duration,
    pub limits: Limits,
}

impl RelayConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |k: &str| lookup(k).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        let url = get("DATAHUB_GMS_URL")
            .ok_or_else(|| ConfigError::new("DATAHUB_GMS_URL", "is required: the relay reads and writes GMS"))?;
        let token_source = GmsTokenSource::from_lookup(get)?;
        let gms = GmsConfig {
            url: validate_gms_url("DATAHUB_GMS_URL", &url)?,
            // A token in Secrets Manager is read by the wiring at start-up (`token_source`).
            token: match &token_source {
                GmsTokenSource::Inline(t) => Some(t.clone()),
                GmsTokenSource::None | GmsTokenSource::SecretsManager { .. } => None,
            },
        };
        let pool = get("DATAHUB_EXECUTOR_POOL_ID").or_else(|| get("DATAHUB_EXECUTOR_WORKER_ID")).ok_or_else(|| {
            ConfigError::new("DATAHUB_EXECUTOR_POOL_ID", "is required: the executor pool this deployment serves")
        })?;
        let mode = match get("DATAHUB_EXECUTOR_RELAY_MODE").map(|m| m.to_ascii_lowercase()).as_deref() {
            None | Some("self-hosted") | Some("selfhosted") | Some("self_hosted") => Mode::SelfHosted,
            Some("datahub-cloud") | Some("cloud") | Some("datahub_cloud") => Mode::DatahubCloud,
            Some("none") => Mode::None,
            Some(other) => {
                return Err(ConfigError::new(
                    "DATAHUB_EXECUTOR_RELAY_MODE",
                    format!("{other:?} is not a mode: use self-hosted, datahub-cloud or none"),
                ));
            }
        };
        let queue_url = get("DATAHUB_EXECUTOR_QUEUE_URL");
        if queue_url.is_none() && mode != Mode::None {
            return Err(ConfigError::new(
                "DATAHUB_EXECUTOR_QUEUE_URL",
                format!("is required in relay mode {}: the pool's queue the references go to", mode.as_str()),
            ));
        }
        let ledger_table = get("DATAHUB_EXECUTOR_RELAY_LEDGER_TABLE");
        if ledger_table.is_none() && mode == Mode::SelfHosted {
            return Err(ConfigError::new(
                "DATAHUB_EXECUTOR_RELAY_LEDGER_TABLE",
                "is required in relay mode self-hosted: the DynamoDB table that keeps each request enqueued once",
            ));
        }
        let seconds = |var: &'static str, default: u64| -> Result<Duration, ConfigError> {
            match get(var) {
                None => Ok(Duration::from_secs(default)),
                Some(v) => parse_seconds(&v)
                    .ok_or_else(|| ConfigError::new(var, format!("{v:?} is not a positive number of seconds"))),
            }
        };
        let sweeper = if flag(&get, "DATAHUB_EXECUTOR_SWEEPER_ENABLED", true)? {
            Some(SweeperConfig {
                lost_grace: seconds("DATAHUB_EXECUTOR_SWEEPER_LOST_GRACE", 300)?,
                pending_threshold: seconds("DATAHUB_EXECUTOR_SWEEPER_PENDING_THRESHOLD", 172_800)?,
            })
        } else {
            None
        };
        Ok(RelayConfig {
            gms,
            token_source,
            pool,
            mode,
            queue_url,
            ledger_table,
            sweeper,
            status_enabled: flag(&get, "DATAHUB_EXECUTOR_STATUS_ENABLED", true)?,
            function_name: get("AWS_LAMBDA_FUNCTION_NAME").unwrap_or_else(|| "relay".to_owned()),
            claim_lease: Duration::from_secs(120),
            resend_after: Duration::from_secs(3600),
            limits: Limits::default(),
        })
    }
}

fn flag(get: &impl Fn(&str) -> Option<String>, var: &'static str, default: bool) -> Result<bool, ConfigError> {
    match get(var).map(|v| v.to_ascii_lowercase()).as_deref() {
        None => Ok(default),
        Some("true" | "1" | "yes" | "on") => Ok(true),
        Some("false" | "0" | "no" | "off") => Ok(false),
        Some(other) => Err(ConfigError::new(var, format!("{other:?} is not true or false"))),
    }
}

/// What one run did. Serialised as the Lambda's answer and logged.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Summary {
    pub mode: String,
    pub pool: String,
    /// Open requests of the pool the scan found (after the pool filter).
    pub scanned: usize,
    /// Reference messages this run put on the pool's queue (self-hosted).
    pub enqueued: usize,
    /// Pending requests another run had already enqueued (the ledger said so).
    pub already_enqueued: usize,
    /// DataHub Cloud messages forwarded as references and deleted from DataHub's queue.
    pub forwarded: usize,
    /// DataHub Cloud messages consumed without forwarding (other Celery tasks, unreadable).
    pub consumed: usize,
    /// Requests the sweeper ended (lost + pending).
    pub swept: usize,
    pub swept_lost: usize,
    pub swept_pending: usize,
    /// `emitted`, `skipped` (GMS does not support it), `rejected` (GMS answered 4xx), `failed`,
    /// or `disabled`.
    pub status: String,
    /// Parts that stopped at a per-run bound (the rest is left for the next run).
    pub capped: Vec<String>,
    /// What went wrong, one line each.
    pub errors: Vec<String>,
    /// Whether the invocation should fail so that the work is retried.
    pub retry: bool,
}

impl Summary {
    fn error(&mut self, e: &RelayError) {
        if e.is_transient() {
            self.retry = true;
            tracing::warn!(error = %e, "relay part failed; it is retried");
        } else {
            tracing::error!(error = %e, "relay part failed");
        }
        self.errors.push(e.to_string());
    }

    /// The summary as JSON.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// The relay use-case over its ports.
pub struct Relay<'a> {
    pub config: &'a RelayConfig,
    pub gms: &'a dyn RelayGms,
    /// The launcher whose live jobs the sweeper checks (None: no sweeper).
    pub launcher: Option<&'a dyn Launcher>,
    /// Our pool's queue (None in mode `none`).
    pub outbox: Option<&'a dyn Outbox>,
    /// The self-hosted enqueue ledger.
    pub ledger: Option<&'a dyn Ledger>,
    /// Opens DataHub Cloud's queue with the credentials from `listExecutorConfigs`.
    pub sources: Option<&'a dyn SourceQueues>,
    /// What the status reports about this executor.
    pub identity: &'a status::Identity,
    /// When this process started (the status's uptime).
    pub started: Instant,
}

impl Relay<'_> {
    /// One run; `run_id` names this run's ledger claims, `now_ms` is the wall clock.
    pub async fn run(&self, run_id: &str, now_ms: i64) -> Summary {
        let cfg = self.config;
        let mut summary = Summary { mode: cfg.mode.as_str().to_owned(), pool: cfg.pool.clone(), ..Summary::default() };

        status::report(self, now_ms, &mut summary).await;

        let needs_scan = cfg.mode == Mode::SelfHosted || (cfg.sweeper.is_some() && self.launcher.is_some());
        let scanned = if needs_scan {
            match self.scan(&mut summary).await {
                Ok(s) => Some(s),
                Err(e) => {
                    summary.error(&e);
                    None
                }
            }
        } else {
            None
        };
        let mut swept = BTreeSet::new();
        if let (Some(requests), Some(sweep), Some(launcher)) = (&scanned, &cfg.sweeper, self.launcher) {
            let (done, errors) = sweeper::sweep(self, launcher, sweep, requests, now_ms, &mut summary).await;
            swept = done;
            for e in &errors {
                summary.error(e);
            }
        }
        match cfg.mode {
            Mode::SelfHosted => {
                if let Some(requests) = &scanned {
                    for e in enqueue::enqueue(self, requests, &swept, run_id, now_ms, &mut summary).await {
                        summary.error(&e);
                    }
                }
            }
            Mode::DatahubCloud => {
                for e in forward::forward(self, &mut summary).await {
                    summary.error(&e);
                }
            }
            Mode::None => {}
        }
        summary.swept = summary.swept_lost + summary.swept_pending;
        summary
    }

    /// The pool's open requests (no result, or RUNNING), oldest first, within the page bound.
    async fn scan(&self, summary: &mut Summary) -> Result<Vec<StoredExecution>, RelayError> {
        let cfg = self.config;
        let query = query::open_requests(&cfg.pool);
        let mut out = Vec::new();
        let mut scroll_id: Option<String> = None;
        let mut seen = BTreeSet::new();
        for page_no in 0..cfg.limits.max_pages {
            let page = self
                .gms
                .scroll_requests(&query, scroll_id.as_deref(), cfg.limits.page_size)
                .await
                .map_err(|source| RelayError::Gms { part: "scan", source })?;
            let empty = page.requests.is_empty();
            for r in page.requests {
                if executor_of(r.input.as_ref()) != Some(cfg.pool.as_str()) || !seen.insert(r.exec_id.clone()) {
                    continue;
                }
                let open = match r.result.as_ref().and_then(ObservedResult::status) {
                    None => r.result.is_none(),
                    Some(s) => s == "RUNNING",
                };
                if open {
                    out.push(r);
                }
            }
            scroll_id = page.scroll_id;
            if empty || scroll_id.is_none() {
                summary.scanned = out.len();
                return Ok(out);
            }
            if page_no + 1 == cfg.limits.max_pages {
                let note = format!(
                    "scan: stopped after {} pages of {}; the rest is read by the next run",
                    cfg.limits.max_pages, cfg.limits.page_size
                );
                tracing::warn!("{note}");
                summary.capped.push(note);
            }
        }
        summary.scanned = out.len();
        Ok(out)
    }
}

/// The request's pool: its input's `executorId` (`default` when absent, as the admission reads
/// it); `None` for the CLI's own requests and for entities without an input.
pub fn executor_of(input: Option<&Value>) -> Option<&str> {
    let input = input?;
    let id = input.get("executorId").and_then(Value::as_str).unwrap_or("default");
    (id != CLI_EXECUTOR_ID).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(pairs: &[(&str, &str)]) -> Result<RelayConfig, ConfigError> {
        let mut m: HashMap<String, String> = [
            ("DATAHUB_GMS_URL", "http://gms:8080/"),
            ("DATAHUB_EXECUTOR_POOL_ID", "remote"),
            ("DATAHUB_EXECUTOR_QUEUE_URL", "https://sqs.us-east-1.amazonaws.com/1/pool"),
            ("DATAHUB_EXECUTOR_RELAY_LEDGER_TABLE", "ledger"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        for (k, v) in pairs {
            m.insert(k.to_string(), v.to_string());
        }
        RelayConfig::from_lookup(|k| m.get(k).cloned())
    }

    #[test]
    fn config_defaults_and_errors_name_the_variable() {
        let c = cfg(&[]).expect("ok");
        assert_eq!(c.mode, Mode::SelfHosted);
        assert_eq!(c.gms.url, "http://gms:8080");
        let s = c.sweeper.expect("on by default");
        assert_eq!(s.lost_grace, Duration::from_secs(300));
        assert_eq!(s.pending_threshold, Duration::from_secs(172_800));
        assert!(c.status_enabled);

        let c = cfg(&[("DATAHUB_EXECUTOR_POOL_ID", ""), ("DATAHUB_EXECUTOR_WORKER_ID", "w")]).expect("worker id");
        assert_eq!(c.pool, "w");
        let c = cfg(&[
            ("DATAHUB_EXECUTOR_RELAY_MODE", "none"),
            ("DATAHUB_EXECUTOR_QUEUE_URL", ""),
            ("DATAHUB_EXECUTOR_SWEEPER_ENABLED", "false"),
            ("DATAHUB_EXECUTOR_STATUS_ENABLED", "0"),
        ])
        .expect("none needs no queue");
        assert!(c.sweeper.is_none() && !c.status_enabled && c.queue_url.is_none());

        for (var, value, needle) in [
            ("DATAHUB_EXECUTOR_RELAY_MODE", "sideways", "DATAHUB_EXECUTOR_RELAY_MODE"),
            ("DATAHUB_EXECUTOR_QUEUE_URL", "", "DATAHUB_EXECUTOR_QUEUE_URL"),
            ("DATAHUB_EXECUTOR_RELAY_LEDGER_TABLE", "", "DATAHUB_EXECUTOR_RELAY_LEDGER_TABLE"),
            ("DATAHUB_EXECUTOR_SWEEPER_LOST_GRACE", "soon", "DATAHUB_EXECUTOR_SWEEPER_LOST_GRACE"),
            ("DATAHUB_EXECUTOR_SWEEPER_ENABLED", "maybe", "DATAHUB_EXECUTOR_SWEEPER_ENABLED"),
            ("DATAHUB_GMS_URL", "gms:8080", "DATAHUB_GMS_URL"),
            ("DATAHUB_EXECUTOR_POOL_ID", "", "DATAHUB_EXECUTOR_POOL_ID"),
        ] {
            let e = cfg(&[(var, value)]).expect_err(var);
            assert!(e.to_string().contains(needle), "{e}");
        }
        let c = cfg(&[("DATAHUB_EXECUTOR_RELAY_MODE", "datahub-cloud"), ("DATAHUB_EXECUTOR_RELAY_LEDGER_TABLE", "")])
            .expect("cloud needs no ledger");
        assert_eq!(c.mode, Mode::DatahubCloud);
    }

    #[test]
    fn the_token_is_inline_or_read_later_from_its_secret() {
        use secrecy::ExposeSecret;
        let c = cfg(&[("DATAHUB_GMS_TOKEN", "t0k")]).expect("inline");
        assert_eq!(c.gms.token.as_ref().map(|t| t.expose_secret().to_owned()).as_deref(), Some("t0k"));
        let arn = "arn:aws:secretsmanager:us-east-1:1:secret:datahub-token";
        let c = cfg(&[("DATAHUB_GMS_TOKEN_SECRET_ARN", arn)]).expect("secret");
        assert!(c.gms.token.is_none(), "read at start-up by the wiring, not here");
        assert!(matches!(&c.token_source, GmsTokenSource::SecretsManager { secret_id } if secret_id == arn));
        let e = cfg(&[("DATAHUB_GMS_TOKEN", "t"), ("DATAHUB_GMS_TOKEN_SECRET_ARN", arn)]).expect_err("both");
        assert_eq!(e.var, "DATAHUB_GMS_TOKEN_SECRET_ARN");
    }

    #[test]
    fn pool_of_a_request() {
        use serde_json::json;
        assert_eq!(executor_of(Some(&json!({"executorId": "remote"}))), Some("remote"));
        assert_eq!(executor_of(Some(&json!({}))), Some("default"));
        assert_eq!(executor_of(Some(&json!({"executorId": "__datahub_cli_"}))), None);
        assert_eq!(executor_of(None), None);
    }
}
