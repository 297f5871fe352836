//! Executor status against the GMS emulator: the `dataHubRemoteExecutorStatus` proposal for a GMS
//! whose `/config` supports it (field by field), nothing but a log line for one that does not,
//! and a single WARN (never a failed run) for one that answers the proposal with a 4xx.

use integration_tests::relay_support::{identity, now_ms, relay_config};
use integration_tests::{GmsEmulator, Route, test_venv, validate_proposals};
use serde_json::{Value, json};
use shared::gms::GmsClient;
use shared::relay::{Relay, RelayConfig};

const TOKEN: &str = "relay-status-token";

fn config(gms: &GmsEmulator) -> RelayConfig {
    relay_config(
        &gms.url(),
        TOKEN,
        &[("DATAHUB_EXECUTOR_RELAY_MODE", "none"), ("DATAHUB_EXECUTOR_SWEEPER_ENABLED", "false")],
    )
}

#[tokio::test]
async fn status_is_reported_as_datahubs_worker_does_when_gms_supports_it() {
    let gms = GmsEmulator::start(TOKEN).await;
    gms.set_remote_executor_backend(Some(2));
    let config = config(&gms);
    let client = GmsClient::new(&config.gms).expect("client");
    let id = identity(&config);
    let started = std::time::Instant::now() - std::time::Duration::from_secs(42);
    let relay = Relay {
        config: &config,
        gms: &client,
        launcher: None,
        outbox: None,
        ledger: None,
        sources: None,
        identity: &id,
        started,
    };
    let now = now_ms();
    let s = relay.run("r1", now).await;
    assert_eq!(s.status, "emitted", "{s:?}");
    assert!(!s.retry && s.errors.is_empty(), "{s:?}");

    let bodies: Vec<String> =
        gms.requests().into_iter().filter(|r| r.route == Route::IngestProposal).map(|r| r.body).collect();
    let [body] = bodies.as_slice() else { panic!("one proposal: {bodies:?}") };
    let doc: Value = serde_json::from_str(body).expect("JSON");
    assert_eq!(doc["async"], "false");
    let p = &doc["proposal"];
    assert_eq!(p["entityType"], "dataHubRemoteExecutor");
    assert_eq!(p["changeType"], "UPSERT");
    assert_eq!(p["aspectName"], "dataHubRemoteExecutorStatus");
    assert!(p.get("entityUrn").is_none(), "keyed by the key aspect, as the worker sends it");
    assert_eq!(p["entityKeyAspect"]["contentType"], "application/json");
    let key: Value = serde_json::from_str(p["entityKeyAspect"]["value"].as_str().expect("key")).expect("key JSON");
    let instance = key["id"].as_str().expect("id").to_owned();
    assert!(instance.ends_with(".remote.127.0.0.1"), "<hash>-<hash>.<pool>.<gms host>: {instance}");
    assert_eq!(p["aspect"]["contentType"], "application/json");
    let a: Value = serde_json::from_str(p["aspect"]["value"].as_str().expect("aspect")).expect("aspect JSON");
    let fields: Vec<&str> = a.as_object().expect("object").keys().map(String::as_str).collect();
    assert_eq!(
        fields,
        vec![
            "executorPoolId",
            "executorReleaseVersion",
            "executorAddress",
            "executorHostname",
            "executorUptime",
            "executorExpired",
            "executorStopped",
            "executorEmbedded",
            "executorInternal",
            "logDeliveryEnabled",
            "reportedAt"
        ]
    );
    assert_eq!(a["executorPoolId"], "remote");
    assert_eq!(a["executorReleaseVersion"], format!("datahub-executor-rs/{}", shared::status::CLIENT_VERSION));
    assert_eq!(a["executorAddress"], "127.0.0.1");
    assert_eq!(a["executorHostname"], "test-host");
    let uptime = a["executorUptime"].as_f64().expect("a float");
    assert!((42.0..600.0).contains(&uptime), "seconds since the process started: {uptime}");
    for flag in ["executorExpired", "executorStopped", "executorEmbedded", "executorInternal", "logDeliveryEnabled"] {
        assert_eq!(a[flag], json!(false), "{flag}");
    }
    assert_eq!(a["reportedAt"], json!(now), "epoch milliseconds");
    // GMS stored it under urn:li:dataHubRemoteExecutor:<id>.
    let stored = gms.aspect(&format!("urn:li:dataHubRemoteExecutor:{instance}"), "dataHubRemoteExecutorStatus");
    assert_eq!(stored, Some(a.clone()));
    if let Some(venv) = test_venv("status_is_reported") {
        validate_proposals(&venv.join("bin/python"), &bodies).expect("a valid MetadataChangeProposal");
    }

    // The next run reports under the same id (one record per pool, not one per cold start).
    relay.run("r2", now + 60_000).await;
    let urns: std::collections::BTreeSet<String> =
        gms.proposals().iter().filter_map(|p| p["entityKeyAspect"]["value"].as_str().map(str::to_owned)).collect();
    assert_eq!(urns.len(), 1, "{urns:?}");
}

#[tokio::test]
async fn a_gms_without_support_gets_no_proposal_and_a_4xx_degrades_to_a_warning() {
    // /config without remoteExecutorBackend: skipped, nothing sent.
    let gms = GmsEmulator::start(TOKEN).await;
    let config = config(&gms);
    let client = GmsClient::new(&config.gms).expect("client");
    let id = identity(&config);
    let relay = Relay {
        config: &config,
        gms: &client,
        launcher: None,
        outbox: None,
        ledger: None,
        sources: None,
        identity: &id,
        started: std::time::Instant::now(),
    };
    let s = relay.run("r1", now_ms()).await;
    assert_eq!(s.status, "skipped", "{s:?}");
    assert_eq!(gms.count(Route::IngestProposal), 0);
    assert_eq!(gms.count(Route::Config), 1);

    // /config claims support, but GMS refuses the entity (422): one WARN, the run does not fail.
    gms.set_remote_executor_backend(Some(2));
    gms.accept_remote_executor(Some(false));
    let s = relay.run("r2", now_ms()).await;
    assert_eq!(s.status, "rejected", "{s:?}");
    assert!(!s.retry && s.errors.is_empty(), "{s:?}");
    let refused: Vec<u16> =
        gms.requests().iter().filter(|r| r.route == Route::IngestProposal).map(|r| r.status).collect();
    assert_eq!(refused, vec![422]);

    // An older backend revision is skipped too.
    gms.set_remote_executor_backend(Some(1));
    let s = relay.run("r3", now_ms()).await;
    assert_eq!(s.status, "skipped");
    assert_eq!(gms.count(Route::IngestProposal), 1);
}
