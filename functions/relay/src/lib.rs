//! The relay Lambda's adapter: the schedule handler and the wiring of its ports from the
//! environment. The relay's logic is `shared::relay`; this crate must not hold any.

use std::time::Instant;

use anyhow::Context;
use lambda_runtime::LambdaEvent;
use serde_json::Value;
use shared::gms::GmsClient;
use shared::launcher::Launcher;
use shared::relay::aws::{DynamoLedger, SqsQueue, SqsSources};
use shared::relay::status::Identity;
use shared::relay::{Mode, Relay, RelayConfig};

/// Everything a run needs, built once per cold start.
pub struct App {
    pub config: RelayConfig,
    pub gms: GmsClient,
    pub launcher: Option<Box<dyn Launcher>>,
    pub outbox: Option<SqsQueue>,
    pub ledger: Option<DynamoLedger>,
    pub sources: Option<SqsSources>,
    pub identity: Identity,
    pub started: Instant,
}

/// Builds the ports from the process environment (`AWS_*` for the SDK clients).
pub async fn build_from_env() -> anyhow::Result<App> {
    let started = Instant::now();
    let mut config = RelayConfig::from_env()?;
    config.gms.token = config.token_source.resolve_from_env().await?;
    let gms = GmsClient::new(&config.gms)?;
    let aws = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let launcher = match &config.sweeper {
        Some(_)
            if std::env::var("DATAHUB_EXECUTOR_LAUNCHER")
                .map_or(true, |l| l.trim().eq_ignore_ascii_case("local") || l.trim().is_empty()) =>
        {
            tracing::warn!(
                "the sweeper is off: the local launcher's jobs are visible only to the process that started them (set DATAHUB_EXECUTOR_LAUNCHER to ecs or cloud-run, or DATAHUB_EXECUTOR_SWEEPER_ENABLED=false)"
            );
            config.sweeper = None;
            None
        }
        Some(_) => Some(shared::launcher::from_env().await.context("the sweeper needs the launcher")?),
        None => None,
    };
    let sqs = aws_sdk_sqs::Client::new(&aws);
    let outbox = config.queue_url.as_ref().map(|url| SqsQueue::new(sqs, url.clone()));
    let ledger = match (config.mode, &config.ledger_table) {
        (Mode::SelfHosted, Some(table)) => Some(DynamoLedger::new(aws_sdk_dynamodb::Client::new(&aws), table.clone())),
        _ => None,
    };
    let sources = (config.mode == Mode::DatahubCloud).then(|| SqsSources::new(aws.clone()));
    let address = shared::relay::status::local_address(&config.gms.url).await;
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|h| h.trim().to_owned());
    let identity = Identity::new(&config.function_name, &config.pool, &config.gms.url, address, hostname);
    Ok(App { config, gms, launcher, outbox, ledger, sources, identity, started })
}

/// One scheduled invocation (the EventBridge event's content is not used): runs the relay,
/// logs the summary and returns it; fails only when something must be retried.
pub async fn handle(app: &App, event: LambdaEvent<Value>) -> Result<Value, lambda_runtime::Error> {
    let run_id = match event.context.request_id.as_str() {
        "" => uuid::Uuid::new_v4().to_string(),
        id => id.to_owned(),
    };
    let relay = Relay {
        config: &app.config,
        gms: &app.gms,
        launcher: app.launcher.as_deref(),
        outbox: app.outbox.as_ref().map(|o| o as _),
        ledger: app.ledger.as_ref().map(|l| l as _),
        sources: app.sources.as_ref().map(|s| s as _),
        identity: &app.identity,
        started: app.started,
    };
    let span = tracing::info_span!("relay", run_id = %run_id, pool = %app.config.pool, mode = app.config.mode.as_str());
    let summary = tracing::Instrument::instrument(relay.run(&run_id, chrono_now_ms()), span).await;
    let json = summary.to_json();
    tracing::info!(summary = %json, "relay run finished");
    if summary.retry {
        return Err(format!("the relay run left work to retry: {}", summary.errors.join("; ")).into());
    }
    Ok(json)
}

fn chrono_now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or_default()
}
