//! The relay's AWS adapters: SQS queues (ours, and DataHub Cloud's with the credentials GMS hands
//! out) and the DynamoDB enqueue ledger.
//!
//! Ledger item (table partition key `executionRequestId`, string; TTL attribute `expiresAt`):
//! `executionRequestId`, `state` (`claimed` | `sent`), `owner` (the run that claimed it),
//! `expiresAt` (epoch seconds: the claim's lease, then the `sent` hold), `updatedAtMs`.
//!
//! IAM: `sqs:SendMessage` on our queue (SendMessageBatch is authorised as SendMessage);
//! `dynamodb:PutItem`, `dynamodb:UpdateItem`, `dynamodb:DeleteItem` on the table. DataHub
//! Cloud's queue is read with DataHub's own temporary credentials, not the function's role.

use std::time::{Duration, SystemTime};

use aws_config::SdkConfig;
use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_sqs::config::http::HttpResponse;
use aws_sdk_sqs::error::{ProvideErrorMetadata, SdkError};
use secrecy::ExposeSecret;

use super::ports::{
    BatchOutcome, ExecutorConfig, Ledger, Outbox, OutgoingMessage, ReceivedMessage, SourceQueue, SourceQueues,
};
use crate::error::AwsError;
use crate::secrets::BoxFuture;

/// How long a received DataHub Cloud message stays invisible: long enough to forward it, short
/// enough that a crashed run's messages come back soon.
pub const SOURCE_VISIBILITY_TIMEOUT_S: i32 = 120;
/// Long-poll wait of a receive.
const RECEIVE_WAIT_S: i32 = 1;

fn aws_error<E>(
    service: &'static str,
    operation: &'static str,
    resource: &str,
    err: &SdkError<E, HttpResponse>,
) -> AwsError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let failure = crate::aws_error::describe(err);
    AwsError { service, operation, resource: resource.to_owned(), reason: failure.reason, transient: failure.transient }
}

/// An SQS queue: our pool's (an [`Outbox`]) or DataHub Cloud's (a [`SourceQueue`]).
#[derive(Debug, Clone)]
pub struct SqsQueue {
    client: aws_sdk_sqs::Client,
    url: String,
    visibility_timeout_s: i32,
}

impl SqsQueue {
    pub fn new(client: aws_sdk_sqs::Client, url: impl Into<String>) -> Self {
        SqsQueue { client, url: url.into(), visibility_timeout_s: SOURCE_VISIBILITY_TIMEOUT_S }
    }

    /// How long received messages stay invisible (default [`SOURCE_VISIBILITY_TIMEOUT_S`]).
    pub fn with_visibility_timeout(mut self, seconds: i32) -> Self {
        self.visibility_timeout_s = seconds;
        self
    }

    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Outbox for SqsQueue {
    fn send_batch<'a>(&'a self, messages: &'a [OutgoingMessage]) -> BoxFuture<'a, Result<BatchOutcome, AwsError>> {
        Box::pin(async move {
            let mut req = self.client.send_message_batch().queue_url(&self.url);
            for m in messages {
                let entry = aws_sdk_sqs::types::SendMessageBatchRequestEntry::builder()
                    .id(&m.id)
                    .message_body(&m.body)
                    .build()
                    .map_err(|e| AwsError {
                        service: "SQS",
                        operation: "SendMessageBatch",
                        resource: self.url.clone(),
                        reason: e.to_string(),
                        transient: false,
                    })?;
                req = req.entries(entry);
            }
            let out = req.send().await.map_err(|e| aws_error("SQS", "SendMessageBatch", &self.url, &e))?;
            Ok(BatchOutcome {
                ok: out.successful().iter().map(|s| s.id().to_owned()).collect(),
                failed: out
                    .failed()
                    .iter()
                    .map(|f| (f.id().to_owned(), format!("{}: {}", f.code(), f.message().unwrap_or_default())))
                    .collect(),
            })
        })
    }
}

impl SourceQueue for SqsQueue {
    fn receive(&self, max: i32) -> BoxFuture<'_, Result<Vec<ReceivedMessage>, AwsError>> {
        Box::pin(async move {
            let out = self
                .client
                .receive_message()
                .queue_url(&self.url)
                .max_number_of_messages(max.clamp(1, 10))
                .wait_time_seconds(RECEIVE_WAIT_S)
                .visibility_timeout(self.visibility_timeout_s)
                .send()
                .await
                .map_err(|e| aws_error("SQS", "ReceiveMessage", &self.url, &e))?;
            Ok(out
                .messages()
                .iter()
                .filter_map(|m| {
                    Some(ReceivedMessage {
                        message_id: m.message_id()?.to_owned(),
                        receipt_handle: m.receipt_handle()?.to_owned(),
                        body: m.body().unwrap_or_default().to_owned(),
                    })
                })
                .collect())
        })
    }

    fn delete_batch<'a>(&'a self, messages: &'a [(String, String)]) -> BoxFuture<'a, Result<BatchOutcome, AwsError>> {
        Box::pin(async move {
            let mut outcome = BatchOutcome::default();
            for chunk in messages.chunks(10) {
                let mut req = self.client.delete_message_batch().queue_url(&self.url);
                // Entry ids must be unique and short: the position in the chunk.
                for (i, (_, receipt)) in chunk.iter().enumerate() {
                    let entry = aws_sdk_sqs::types::DeleteMessageBatchRequestEntry::builder()
                        .id(format!("d{i}"))
                        .receipt_handle(receipt)
                        .build()
                        .map_err(|e| AwsError {
                            service: "SQS",
                            operation: "DeleteMessageBatch",
                            resource: self.url.clone(),
                            reason: e.to_string(),
                            transient: false,
                        })?;
                    req = req.entries(entry);
                }
                let out = req.send().await.map_err(|e| aws_error("SQS", "DeleteMessageBatch", &self.url, &e))?;
                for (i, (id, _)) in chunk.iter().enumerate() {
                    let key = format!("d{i}");
                    if out.successful().iter().any(|s| s.id() == key) {
                        outcome.ok.push(id.clone());
                    } else {
                        let reason = out
                            .failed()
                            .iter()
                            .find(|f| f.id() == key)
                            .map(|f| format!("{}: {}", f.code(), f.message().unwrap_or_default()))
                            .unwrap_or_else(|| "no answer".into());
                        outcome.failed.push((id.clone(), reason));
                    }
                }
            }
            Ok(outcome)
        })
    }
}

/// Opens DataHub Cloud's queues: the function's SDK configuration (endpoint, retries) with the
/// region and temporary credentials GMS handed out.
#[derive(Debug, Clone)]
pub struct SqsSources {
    base: SdkConfig,
    visibility_timeout_s: i32,
}

impl SqsSources {
    pub fn new(base: SdkConfig) -> Self {
        SqsSources { base, visibility_timeout_s: SOURCE_VISIBILITY_TIMEOUT_S }
    }

    /// How long received messages stay invisible (default [`SOURCE_VISIBILITY_TIMEOUT_S`]).
    pub fn with_visibility_timeout(mut self, seconds: i32) -> Self {
        self.visibility_timeout_s = seconds;
        self
    }
}

impl SourceQueues for SqsSources {
    fn open(&self, config: &ExecutorConfig) -> Box<dyn SourceQueue> {
        let expiry = config
            .expiration
            .as_deref()
            .and_then(|e| chrono::DateTime::parse_from_rfc3339(e).ok())
            .and_then(|t| u64::try_from(t.timestamp()).ok())
            .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s));
        let credentials = aws_sdk_sqs::config::Credentials::new(
            config.access_key_id.clone(),
            config.secret_key.expose_secret().to_owned(),
            config.session_token.as_ref().map(|t| t.expose_secret().to_owned()),
            expiry,
            "datahub-listExecutorConfigs",
        );
        let conf = aws_sdk_sqs::config::Builder::from(&self.base)
            .region(aws_sdk_sqs::config::Region::new(config.region.clone()))
            .credentials_provider(credentials)
            .build();
        Box::new(
            SqsQueue::new(aws_sdk_sqs::Client::from_conf(conf), config.queue_url.clone())
                .with_visibility_timeout(self.visibility_timeout_s),
        )
    }
}

/// The enqueue ledger in DynamoDB (see the module docs for the item).
#[derive(Debug, Clone)]
pub struct DynamoLedger {
    client: aws_sdk_dynamodb::Client,
    table: String,
}

const KEY: &str = "executionRequestId";

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_owned())
}

fn n(v: i64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn epoch_s(ms: i64, plus: Duration) -> i64 {
    ms.div_euclid(1000) + plus.as_secs() as i64
}

impl DynamoLedger {
    pub fn new(client: aws_sdk_dynamodb::Client, table: impl Into<String>) -> Self {
        DynamoLedger { client, table: table.into() }
    }

    fn resource(&self, exec_id: &str) -> String {
        format!("table {} item {exec_id}", self.table)
    }
}

impl Ledger for DynamoLedger {
    fn claim<'a>(
        &'a self,
        exec_id: &'a str,
        owner: &'a str,
        now_ms: i64,
        lease: Duration,
    ) -> BoxFuture<'a, Result<bool, AwsError>> {
        Box::pin(async move {
            let out = self
                .client
                .put_item()
                .table_name(&self.table)
                .item(KEY, s(exec_id))
                .item("state", s("claimed"))
                .item("owner", s(owner))
                .item("expiresAt", n(epoch_s(now_ms, lease)))
                .item("updatedAtMs", n(now_ms))
                .condition_expression("attribute_not_exists(#k) OR #e < :now")
                .expression_attribute_names("#k", KEY)
                .expression_attribute_names("#e", "expiresAt")
                .expression_attribute_values(":now", n(now_ms.div_euclid(1000)))
                .send()
                .await;
            match out {
                Ok(_) => Ok(true),
                Err(e) if e.as_service_error().is_some_and(|s| s.is_conditional_check_failed_exception()) => Ok(false),
                Err(e) => Err(aws_error("DynamoDB", "PutItem", &self.resource(exec_id), &e)),
            }
        })
    }

    fn mark_sent<'a>(
        &'a self,
        exec_id: &'a str,
        owner: &'a str,
        now_ms: i64,
        keep: Duration,
    ) -> BoxFuture<'a, Result<bool, AwsError>> {
        Box::pin(async move {
            let out = self
                .client
                .update_item()
                .table_name(&self.table)
                .key(KEY, s(exec_id))
                .update_expression("SET #s = :sent, #e = :exp, #u = :now")
                .condition_expression("#o = :owner")
                .expression_attribute_names("#s", "state")
                .expression_attribute_names("#e", "expiresAt")
                .expression_attribute_names("#u", "updatedAtMs")
                .expression_attribute_names("#o", "owner")
                .expression_attribute_values(":sent", s("sent"))
                .expression_attribute_values(":exp", n(epoch_s(now_ms, keep)))
                .expression_attribute_values(":now", n(now_ms))
                .expression_attribute_values(":owner", s(owner))
                .send()
                .await;
            match out {
                Ok(_) => Ok(true),
                Err(e) if e.as_service_error().is_some_and(|s| s.is_conditional_check_failed_exception()) => Ok(false),
                Err(e) => Err(aws_error("DynamoDB", "UpdateItem", &self.resource(exec_id), &e)),
            }
        })
    }

    fn release<'a>(&'a self, exec_id: &'a str, owner: &'a str) -> BoxFuture<'a, Result<(), AwsError>> {
        Box::pin(async move {
            let out = self
                .client
                .delete_item()
                .table_name(&self.table)
                .key(KEY, s(exec_id))
                .condition_expression("#o = :owner AND #s = :claimed")
                .expression_attribute_names("#o", "owner")
                .expression_attribute_names("#s", "state")
                .expression_attribute_values(":owner", s(owner))
                .expression_attribute_values(":claimed", s("claimed"))
                .send()
                .await;
            match out {
                Ok(_) => Ok(()),
                // Not ours any more (or already gone): nothing to release.
                Err(e) if e.as_service_error().is_some_and(|s| s.is_conditional_check_failed_exception()) => Ok(()),
                Err(e) => Err(aws_error("DynamoDB", "DeleteItem", &self.resource(exec_id), &e)),
            }
        })
    }
}
