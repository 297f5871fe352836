//! The admission Lambda's adapter: the SQS batch handler and the wiring of its ports from the
//! environment. The admission logic itself is `shared::admission`.
//!
//! The GMS token comes from `DATAHUB_GMS_TOKEN` or, as the deployment templates set it, from the
//! Secrets Manager secret named by `DATAHUB_GMS_TOKEN_SECRET_ARN`, read once per cold start.

pub mod handler;

use std::time::Duration;

use anyhow::Context;
use shared::admission::AdmissionConfig;
use shared::cloud_secrets::CloudSecretsConfig;
use shared::config::{GmsConfig, GmsTokenSource, parse_seconds, validate_gms_url};
use shared::gms::GmsClient;
use shared::launcher::LauncherConfig;

/// Everything the function reads from its environment, checked at once. Pure: loading it builds
/// no client, so a test can feed it the deployment template's variables.
#[derive(Debug)]
pub struct Settings {
    pub admission: AdmissionConfig,
    /// `DATAHUB_GMS_URL` (checked).
    pub gms_url: String,
    pub token: GmsTokenSource,
    pub launcher: LauncherConfig,
    pub cloud_secrets: CloudSecretsConfig,
    /// `DATAHUB_EXECUTOR_DLQ_URL`.
    pub dlq_url: Option<String>,
    /// `DATAHUB_EXECUTOR_CAPACITY_BACKOFF` (default 30 s) and `..._MAX` (default 900 s).
    pub backoff_base: Duration,
    pub backoff_max: Duration,
}

impl Settings {
    /// Reads the variables through `lookup` (empty values count as unset).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let env = |k: &str| lookup(k).filter(|v| !v.trim().is_empty());
        let admission = AdmissionConfig::from_lookup(env)?;
        let url = env("DATAHUB_GMS_URL").context("DATAHUB_GMS_URL is required")?;
        let gms_url = validate_gms_url("DATAHUB_GMS_URL", &url)?;
        let token = GmsTokenSource::from_lookup(env)?;
        let launcher = LauncherConfig::from_lookup(env)?;
        let cloud_secrets = CloudSecretsConfig::from_lookup(env)?;
        let seconds = |var: &str, default: u64| -> anyhow::Result<Duration> {
            match env(var) {
                None => Ok(Duration::from_secs(default)),
                Some(v) => {
                    parse_seconds(&v).with_context(|| format!("{var}={v:?} is not a positive number of seconds"))
                }
            }
        };
        Ok(Settings {
            admission,
            gms_url,
            token,
            launcher,
            cloud_secrets,
            dlq_url: env("DATAHUB_EXECUTOR_DLQ_URL"),
            backoff_base: seconds("DATAHUB_EXECUTOR_CAPACITY_BACKOFF", 30)?,
            backoff_max: seconds("DATAHUB_EXECUTOR_CAPACITY_BACKOFF_MAX", 900)?,
        })
    }
}

/// Builds the handler's state from the process environment (once per cold start).
pub async fn build_from_env() -> anyhow::Result<handler::App> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    let settings = Settings::from_lookup(env)?;
    let token = settings.token.resolve_from_env().await?;
    let gms = GmsClient::new(&GmsConfig { url: settings.gms_url.clone(), token })?;
    let launcher = shared::launcher::from_lookup(env).await?;
    let cloud = shared::admission::cloud_name_sources(env).await?;
    let aws = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let queue = handler::Queue::new(aws_sdk_sqs::Client::new(&aws), settings.dlq_url.clone());
    Ok(handler::App {
        config: settings.admission,
        gms: Box::new(gms),
        launcher,
        cloud,
        queue: Some(queue),
        backoff_base: settings.backoff_base,
        backoff_max: settings.backoff_max,
    })
}
