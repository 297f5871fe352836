//! The admission Lambda's adapter: the SQS batch handler and the wiring of its ports from the
//! environment. The admission logic itself is `shared::admission`.

pub mod handler;

use std::time::Duration;

use anyhow::Context;
use shared::admission::AdmissionConfig;
use shared::config::{GmsConfig, parse_seconds, validate_gms_url};
use shared::gms::GmsClient;

/// Builds the handler's state from the process environment (once per cold start).
pub async fn build_from_env() -> anyhow::Result<handler::App> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    let config = AdmissionConfig::from_lookup(env)?;
    let url = env("DATAHUB_GMS_URL").context("DATAHUB_GMS_URL is required")?;
    let gms = GmsClient::new(&GmsConfig {
        url: validate_gms_url("DATAHUB_GMS_URL", &url)?,
        token: env("DATAHUB_GMS_TOKEN").map(Into::into),
    })?;
    let launcher = shared::launcher::from_env().await?;
    let cloud = shared::admission::cloud_name_sources(env).await?;
    let aws = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let queue = handler::Queue::new(aws_sdk_sqs::Client::new(&aws), env("DATAHUB_EXECUTOR_DLQ_URL"));
    let seconds = |var: &str, default: u64| -> anyhow::Result<Duration> {
        match env(var) {
            None => Ok(Duration::from_secs(default)),
            Some(v) => parse_seconds(&v).with_context(|| format!("{var}={v:?} is not a positive number of seconds")),
        }
    };
    Ok(handler::App {
        config,
        gms: Box::new(gms),
        launcher,
        cloud,
        queue: Some(queue),
        backoff_base: seconds("DATAHUB_EXECUTOR_CAPACITY_BACKOFF", 30)?,
        backoff_max: seconds("DATAHUB_EXECUTOR_CAPACITY_BACKOFF_MAX", 900)?,
    })
}
