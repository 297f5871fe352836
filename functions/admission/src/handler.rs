//! The SQS batch adapter: each record becomes one admission decision inside a span with its
//! message id; the response lists only the records SQS must deliver again. A bad record never
//! fails the batch.

use std::collections::HashMap;
use std::time::Duration;

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use lambda_runtime::LambdaEvent;
use shared::admission::{Admission, AdmissionConfig, AdmissionGms, Decision, Record, SecretNames, backoff};
use shared::launcher::Launcher;
use tokio::sync::Mutex;

/// Where deferred records wait and garbage goes.
pub struct Queue {
    pub sqs: aws_sdk_sqs::Client,
    /// `DATAHUB_EXECUTOR_DLQ_URL`: garbage without an execution id is moved here (else consumed
    /// with an ERROR log line saying why).
    pub dlq_url: Option<String>,
    /// Queue URLs by event source ARN.
    urls: Mutex<HashMap<String, String>>,
}

impl Queue {
    pub fn new(sqs: aws_sdk_sqs::Client, dlq_url: Option<String>) -> Self {
        Queue { sqs, dlq_url, urls: Mutex::new(HashMap::new()) }
    }

    async fn url_of(&self, arn: &str) -> Option<String> {
        if let Some(u) = self.urls.lock().await.get(arn) {
            return Some(u.clone());
        }
        // arn:aws:sqs:<region>:<account>:<name>
        let mut parts = arn.rsplitn(3, ':');
        let name = parts.next()?;
        let account = parts.next()?;
        let url = self
            .sqs
            .get_queue_url()
            .queue_name(name)
            .queue_owner_aws_account_id(account)
            .send()
            .await
            .ok()?
            .queue_url?;
        self.urls.lock().await.insert(arn.to_owned(), url.clone());
        Some(url)
    }

    async fn defer(&self, msg: &SqsMessage, delay: Duration) {
        let (Some(arn), Some(receipt)) = (&msg.event_source_arn, &msg.receipt_handle) else { return };
        let Some(url) = self.url_of(arn).await else {
            tracing::warn!(arn, "cannot find the queue URL to set a backoff; the queue's visibility timeout applies");
            return;
        };
        let secs = delay.as_secs().min(43_200) as i32;
        if let Err(e) = self
            .sqs
            .change_message_visibility()
            .queue_url(url)
            .receipt_handle(receipt)
            .visibility_timeout(secs)
            .send()
            .await
        {
            tracing::warn!(error = %aws_sdk_sqs::error::DisplayErrorContext(&e), "could not set the backoff; the queue's visibility timeout applies");
        }
    }

    async fn dead_letter(&self, msg: &SqsMessage, reason: &str) -> bool {
        let Some(dlq) = &self.dlq_url else { return false };
        let attr =
            aws_sdk_sqs::types::MessageAttributeValue::builder().data_type("String").string_value(reason).build();
        let mut send = self.sqs.send_message().queue_url(dlq).message_body(msg.body.clone().unwrap_or_default());
        if let Ok(a) = attr {
            send = send.message_attributes("datahub-executor-reason", a);
        }
        match send.send().await {
            Ok(_) => true,
            Err(e) => {
                tracing::error!(error = %aws_sdk_sqs::error::DisplayErrorContext(&e), "could not move garbage to the DLQ; it will be redelivered");
                false
            }
        }
    }
}

/// Everything the handler needs, built once per cold start.
pub struct App {
    pub config: AdmissionConfig,
    pub gms: Box<dyn AdmissionGms>,
    pub launcher: Box<dyn Launcher>,
    /// The cloud secret stores whose names the secret plan checks.
    pub cloud: Vec<Box<dyn SecretNames>>,
    pub queue: Option<Queue>,
    /// `DATAHUB_EXECUTOR_CAPACITY_BACKOFF` (default 30 s) and `..._MAX` (default 900 s).
    pub backoff_base: Duration,
    pub backoff_max: Duration,
}

/// Handles one SQS batch.
pub async fn handle(app: &App, event: LambdaEvent<SqsEvent>) -> Result<SqsBatchResponse, lambda_runtime::Error> {
    let messages = event.payload.records;
    let records: Vec<Record> = messages
        .iter()
        .map(|m| Record {
            message_id: m.message_id.clone().unwrap_or_default(),
            body: m.body.clone().unwrap_or_default(),
        })
        .collect();
    let admission =
        Admission { config: &app.config, gms: app.gms.as_ref(), launcher: app.launcher.as_ref(), cloud: &app.cloud };
    let decisions = admission.admit_batch(&records).await;
    let mut response = SqsBatchResponse::default();
    for (msg, decision) in messages.iter().zip(&decisions) {
        let id = msg.message_id.clone().unwrap_or_default();
        match decision {
            Decision::Deferred { .. } => {
                if let Some(q) = &app.queue {
                    let count = msg.attributes.get("ApproximateReceiveCount").and_then(|c| c.parse().ok()).unwrap_or(1);
                    q.defer(msg, backoff(count, app.backoff_base, app.backoff_max)).await;
                }
                response.add_failure(id);
            }
            Decision::Retry { .. } => response.add_failure(id),
            Decision::Rejected { exec_id: None, reason } => {
                let moved = match &app.queue {
                    Some(q) => q.dead_letter(msg, reason).await,
                    None => false,
                };
                if moved {
                    tracing::error!(message_id = %id, reason, "garbage moved to the DLQ");
                } else if app.queue.as_ref().is_some_and(|q| q.dlq_url.is_some()) {
                    response.add_failure(id);
                } else {
                    tracing::error!(message_id = %id, reason, "garbage consumed (no DATAHUB_EXECUTOR_DLQ_URL)");
                }
            }
            _ => {}
        }
    }
    Ok(response)
}
