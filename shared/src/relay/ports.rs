//! The relay's ports: GMS, the enqueue ledger, our queue and DataHub Cloud's queue. Real adapters:
//! [`crate::gms::GmsClient`] (below) and `relay::aws` (SQS, DynamoDB); fakes: `crate::testing`.

use std::collections::BTreeMap;
use std::time::Duration;

use secrecy::SecretString;
use serde_json::Value;

use crate::error::{AwsError, GmsError};
use crate::gms::{EnvelopedAspect, GmsClient, ScrollRequest};
use crate::request::EXECUTION_REQUEST_URN_PREFIX;
use crate::secrets::BoxFuture;
use crate::status::ExecutionResult;

pub const INPUT_ASPECT: &str = "dataHubExecutionRequestInput";
pub const RESULT_ASPECT: &str = "dataHubExecutionRequestResult";

/// A `dataHubExecutionRequestResult` and when GMS last saw it written.
#[derive(Debug, Clone, PartialEq)]
pub struct ObservedResult {
    pub value: Value,
    /// `systemMetadata.lastObserved` (epoch ms).
    pub last_observed_ms: Option<i64>,
}

impl ObservedResult {
    pub fn status(&self) -> Option<&str> {
        self.value.get("status").and_then(Value::as_str)
    }

    /// When RUNNING was last seen: `lastObserved`, else the result's `startTimeMs`.
    pub fn observed_ms(&self) -> Option<i64> {
        self.last_observed_ms.or_else(|| self.value.get("startTimeMs").and_then(Value::as_i64))
    }

    fn from_enveloped(a: &EnvelopedAspect) -> Self {
        ObservedResult { value: a.value.clone(), last_observed_ms: a.last_observed_ms() }
    }
}

/// An execution request as the scan found it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredExecution {
    pub exec_id: String,
    pub input: Option<Value>,
    pub result: Option<ObservedResult>,
}

impl StoredExecution {
    /// The input's `requestedAt` (epoch ms).
    pub fn requested_at_ms(&self) -> Option<i64> {
        self.input.as_ref()?.get("requestedAt")?.as_i64()
    }
}

/// One scroll page.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestPage {
    pub requests: Vec<StoredExecution>,
    pub scroll_id: Option<String>,
}

/// A pool's queue and credentials, from GraphQL `listExecutorConfigs`.
#[derive(Debug, Clone)]
pub struct ExecutorConfig {
    pub executor_id: String,
    pub queue_url: String,
    pub region: String,
    pub access_key_id: String,
    pub secret_key: SecretString,
    pub session_token: Option<SecretString>,
    /// ISO 8601, as GMS sends it.
    pub expiration: Option<String>,
}

impl ExecutorConfig {
    /// Reads one entry of `executorConfigs`; `None` when a field the relay needs is missing.
    pub fn from_json(v: &Value) -> Option<Self> {
        let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned).filter(|s| !s.is_empty());
        Some(ExecutorConfig {
            executor_id: s("executorId")?,
            queue_url: s("queueUrl")?,
            region: s("region")?,
            access_key_id: s("accessKeyId")?,
            secret_key: s("secretKeyId")?.into(),
            session_token: s("sessionToken").map(Into::into),
            expiration: s("expiration"),
        })
    }
}

/// What the relay reads from and writes to GMS.
pub trait RelayGms: Send + Sync {
    /// `GET /config`.
    fn server_config(&self) -> BoxFuture<'_, Result<Value, GmsError>>;
    /// One page of the scroll of `dataHubExecutionRequest` (input and result, with lastObserved).
    fn scroll_requests<'a>(
        &'a self,
        query: &'a str,
        scroll_id: Option<&'a str>,
        count: usize,
    ) -> BoxFuture<'a, Result<RequestPage, GmsError>>;
    /// The current results of these requests, read directly (not from the index); requests
    /// without a result are absent.
    fn read_results<'a>(
        &'a self,
        exec_ids: &'a [String],
    ) -> BoxFuture<'a, Result<BTreeMap<String, ObservedResult>, GmsError>>;
    /// Writes a result.
    fn write_result<'a>(&'a self, exec_id: &'a str, result: &'a ExecutionResult)
    -> BoxFuture<'a, Result<(), GmsError>>;
    /// `POST /aspects?action=ingestProposal` with a prepared body.
    fn ingest_proposal(&self, body: String) -> BoxFuture<'_, Result<(), GmsError>>;
    /// GraphQL `listExecutorConfigs`: the entries that carry everything the relay needs.
    fn executor_configs(&self) -> BoxFuture<'_, Result<Vec<ExecutorConfig>, GmsError>>;
}

/// One message for our queue; `id` is unique within a batch (`[A-Za-z0-9_-]`, ≤ 80 characters).
#[derive(Debug, Clone, PartialEq)]
pub struct OutgoingMessage {
    pub id: String,
    pub body: String,
}

/// Which entries of a batch call succeeded, and why the others failed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BatchOutcome {
    pub ok: Vec<String>,
    pub failed: Vec<(String, String)>,
}

impl BatchOutcome {
    /// The error for entry `id` that was not accepted (no answer for it counts as a failure),
    /// naming the execution it carried. Worth retrying: the next run sends it again.
    pub fn failure(&self, id: &str, exec_id: &str) -> AwsError {
        let reason = self.failed.iter().find(|(f, _)| f == id).map_or("no answer", |(_, r)| r.as_str());
        AwsError {
            service: "SQS",
            operation: "SendMessageBatch",
            resource: format!("execution {exec_id}"),
            reason: reason.to_owned(),
            transient: true,
        }
    }
}

/// Our pool's queue.
pub trait Outbox: Send + Sync {
    /// Sends up to 10 messages in one call.
    fn send_batch<'a>(&'a self, messages: &'a [OutgoingMessage]) -> BoxFuture<'a, Result<BatchOutcome, AwsError>>;
}

/// A message received from DataHub Cloud's queue.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedMessage {
    pub message_id: String,
    pub receipt_handle: String,
    pub body: String,
}

/// DataHub Cloud's queue of the pool.
pub trait SourceQueue: Send + Sync {
    /// Receives up to `max` (≤ 10) messages; they stay invisible to others for a short while.
    fn receive(&self, max: i32) -> BoxFuture<'_, Result<Vec<ReceivedMessage>, AwsError>>;
    /// Deletes messages by `(message id, receipt handle)`; outcome by message id.
    fn delete_batch<'a>(&'a self, messages: &'a [(String, String)]) -> BoxFuture<'a, Result<BatchOutcome, AwsError>>;
}

/// Opens DataHub Cloud's queue with the credentials of an [`ExecutorConfig`].
pub trait SourceQueues: Send + Sync {
    fn open(&self, config: &ExecutorConfig) -> Box<dyn SourceQueue>;
}

/// Remembers which requests were enqueued, across overlapping runs (self-hosted mode).
pub trait Ledger: Send + Sync {
    /// Claims `exec_id` for `owner` until `now + lease`, atomically: true when this run may send
    /// it; false when it is sent already or another run holds a live claim.
    fn claim<'a>(
        &'a self,
        exec_id: &'a str,
        owner: &'a str,
        now_ms: i64,
        lease: Duration,
    ) -> BoxFuture<'a, Result<bool, AwsError>>;
    /// Records that `owner` sent it; it counts as enqueued until `now + keep`. False when the
    /// claim was no longer `owner`'s.
    fn mark_sent<'a>(
        &'a self,
        exec_id: &'a str,
        owner: &'a str,
        now_ms: i64,
        keep: Duration,
    ) -> BoxFuture<'a, Result<bool, AwsError>>;
    /// Drops `owner`'s claim (the send failed), so the next run sends it.
    fn release<'a>(&'a self, exec_id: &'a str, owner: &'a str) -> BoxFuture<'a, Result<(), AwsError>>;
}

fn urn(exec_id: &str) -> String {
    format!("{EXECUTION_REQUEST_URN_PREFIX}{exec_id}")
}

fn exec_id_of(urn: &str) -> Option<&str> {
    urn.strip_prefix(EXECUTION_REQUEST_URN_PREFIX).filter(|id| !id.is_empty())
}

/// Most urns one batch read asks for.
const READ_CHUNK: usize = 50;

impl RelayGms for GmsClient {
    fn server_config(&self) -> BoxFuture<'_, Result<Value, GmsError>> {
        Box::pin(GmsClient::server_config(self))
    }

    fn scroll_requests<'a>(
        &'a self,
        query: &'a str,
        scroll_id: Option<&'a str>,
        count: usize,
    ) -> BoxFuture<'a, Result<RequestPage, GmsError>> {
        Box::pin(async move {
            let request = ScrollRequest {
                aspects: &[INPUT_ASPECT, RESULT_ASPECT],
                query,
                count,
                sort: Some("requestTimeMs"),
                scroll_id,
            };
            let page = self.scroll("dataHubExecutionRequest", &request).await?;
            let requests = page
                .entities
                .iter()
                .filter_map(|(u, aspects)| {
                    Some(StoredExecution {
                        exec_id: exec_id_of(u)?.to_owned(),
                        input: aspects.get(INPUT_ASPECT).map(|a| a.value.clone()),
                        result: aspects.get(RESULT_ASPECT).map(ObservedResult::from_enveloped),
                    })
                })
                .collect();
            Ok(RequestPage { requests, scroll_id: page.scroll_id })
        })
    }

    fn read_results<'a>(
        &'a self,
        exec_ids: &'a [String],
    ) -> BoxFuture<'a, Result<BTreeMap<String, ObservedResult>, GmsError>> {
        Box::pin(async move {
            let mut out = BTreeMap::new();
            for chunk in exec_ids.chunks(READ_CHUNK) {
                let urns: Vec<String> = chunk.iter().map(|id| urn(id)).collect();
                let found = self.batch_get_enveloped("dataHubExecutionRequest", &urns, &[RESULT_ASPECT]).await?;
                for (u, aspects) in found {
                    if let (Some(id), Some(a)) = (exec_id_of(&u), aspects.get(RESULT_ASPECT)) {
                        out.insert(id.to_owned(), ObservedResult::from_enveloped(a));
                    }
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
        Box::pin(self.write_execution_result(exec_id, result))
    }

    fn ingest_proposal(&self, body: String) -> BoxFuture<'_, Result<(), GmsError>> {
        Box::pin(GmsClient::ingest_proposal(self, body))
    }

    fn executor_configs(&self) -> BoxFuture<'_, Result<Vec<ExecutorConfig>, GmsError>> {
        Box::pin(async move {
            let items = self.list_executor_configs().await?;
            Ok(items.iter().filter_map(ExecutorConfig::from_json).collect())
        })
    }
}
