//! Helpers for the relay's tests: its configuration from a map, and the SQS queues and DynamoDB
//! ledger table it works with, on moto.

use std::collections::HashMap;
use std::time::Instant;

use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType, TimeToLiveSpecification,
};
use aws_sdk_sqs::types::QueueAttributeName;
use shared::relay::RelayConfig;
use shared::relay::status::Identity;

/// A relay configuration for `gms_url` (token `token`, pool `remote`) with `pairs` on top.
pub fn relay_config(gms_url: &str, token: &str, pairs: &[(&str, &str)]) -> RelayConfig {
    let mut m: HashMap<String, String> = [
        ("DATAHUB_GMS_URL", gms_url),
        ("DATAHUB_GMS_TOKEN", token),
        ("DATAHUB_EXECUTOR_POOL_ID", "remote"),
        ("AWS_LAMBDA_FUNCTION_NAME", "relay-test"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for (k, v) in pairs {
        m.insert(k.to_string(), v.to_string());
    }
    RelayConfig::from_lookup(|k| m.get(k).cloned()).expect("a valid relay configuration")
}

/// The identity a test relay reports.
pub fn identity(config: &RelayConfig) -> Identity {
    Identity::new(
        &config.function_name,
        &config.pool,
        &config.gms.url,
        Some("127.0.0.1".into()),
        Some("test-host".into()),
    )
}

/// When the test's relay "process" started.
pub fn started() -> Instant {
    Instant::now()
}

/// Creates a standard queue named `<prefix>-<unique>` and returns its URL.
pub async fn create_queue(sqs: &aws_sdk_sqs::Client, prefix: &str) -> String {
    sqs.create_queue()
        .queue_name(crate::moto::unique_name(prefix))
        .attributes(QueueAttributeName::VisibilityTimeout, "60")
        .send()
        .await
        .expect("CreateQueue")
        .queue_url
        .expect("a queue URL")
}

/// `(visible, in flight)` messages of a queue.
pub async fn queue_depth(sqs: &aws_sdk_sqs::Client, url: &str) -> (usize, usize) {
    let attrs = sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .expect("GetQueueAttributes");
    let count = |k: QueueAttributeName| -> usize {
        attrs.attributes().and_then(|a| a.get(&k)).and_then(|v| v.parse().ok()).unwrap_or(usize::MAX)
    };
    (
        count(QueueAttributeName::ApproximateNumberOfMessages),
        count(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
    )
}

/// Receives (and deletes) every visible message; returns the bodies in receive order.
pub async fn drain(sqs: &aws_sdk_sqs::Client, url: &str) -> Vec<String> {
    let mut bodies = Vec::new();
    loop {
        let out = sqs
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .visibility_timeout(60)
            .send()
            .await
            .expect("ReceiveMessage");
        let msgs = out.messages.unwrap_or_default();
        if msgs.is_empty() {
            return bodies;
        }
        for m in msgs {
            bodies.push(m.body.clone().unwrap_or_default());
            if let Some(r) = m.receipt_handle() {
                sqs.delete_message().queue_url(url).receipt_handle(r).send().await.expect("DeleteMessage");
            }
        }
    }
}

/// Creates the ledger table as the deployment does (partition key `executionRequestId`, string;
/// TTL on `expiresAt`) and returns its name.
pub async fn create_ledger(ddb: &aws_sdk_dynamodb::Client) -> String {
    let name = crate::moto::unique_name("relay-ledger");
    ddb.create_table()
        .table_name(&name)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("executionRequestId")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .expect("attribute"),
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("executionRequestId")
                .key_type(KeyType::Hash)
                .build()
                .expect("key"),
        )
        .billing_mode(BillingMode::PayPerRequest)
        .send()
        .await
        .expect("CreateTable");
    ddb.update_time_to_live()
        .table_name(&name)
        .time_to_live_specification(
            TimeToLiveSpecification::builder().attribute_name("expiresAt").enabled(true).build().expect("ttl"),
        )
        .send()
        .await
        .expect("UpdateTimeToLive");
    name
}

/// The wall clock in epoch ms.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or_default()
}
