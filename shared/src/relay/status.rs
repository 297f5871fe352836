//! Executor status (`reference/datahub-executor.md` §5.1): one `dataHubRemoteExecutorStatus`
//! UPSERT per run, keyed by `dataHubRemoteExecutorKey {id}`, as DataHub's worker sends it
//! (`POST /aspects?action=ingestProposal`, no `entityUrn`).
//!
//! Only when GMS `GET /config` says `remoteExecutorBackend.revision >= 2` (DataHub's own gate);
//! otherwise one INFO line per run says why it was skipped. GMS answering the proposal with a 4xx
//! degrades to one WARN line. A status that could not be written never fails the run: the next
//! run reports again.
//!
//! **Instance id.** DataHub's worker makes a new id on every process start. A Lambda starts many
//! processes, so that would leave one record per cold start; the relay's id is stable per function
//! and pool instead, in the worker's shape: `<sha256(function)[0:8]>-<sha256(pool)[0:8]>.<pool>.<gms
//! host>` (at most 469 characters). DataHub's sweeper keeps the newest record per pool anyway.

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{Relay, Summary};
use crate::error::GmsError;
use crate::pyfmt::json_dumps;
use crate::status::system_metadata;

/// DataHub's minimum backend revision for executor status ("rename of poolName to poolId").
pub const REQUIRED_BACKEND_REVISION: i64 = 2;
const MAX_INSTANCE_ID_CHARS: usize = 469;

/// What the status says about this executor.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    pub instance_id: String,
    pub release_version: String,
    pub address: String,
    pub hostname: String,
}

impl Identity {
    /// The identity of the relay `function` for `pool` reporting to the GMS at `gms_url`.
    pub fn new(function: &str, pool: &str, gms_url: &str, address: Option<String>, hostname: Option<String>) -> Self {
        Identity {
            instance_id: instance_id(function, pool, gms_url),
            release_version: format!("{}/{}", crate::status::CLIENT_ID, crate::status::CLIENT_VERSION),
            address: address.unwrap_or_else(|| "error".to_owned()),
            hostname: hostname.unwrap_or_else(|| "error".to_owned()),
        }
    }
}

fn hex8(text: &str) -> String {
    Sha256::digest(text.as_bytes()).iter().take(4).map(|b| format!("{b:02x}")).collect()
}

/// `<hex8(function)>-<hex8(pool)>.<pool>.<gms host>`, cut to 469 characters.
pub fn instance_id(function: &str, pool: &str, gms_url: &str) -> String {
    let host = gms_url
        .split_once("://")
        .map_or(gms_url, |(_, rest)| rest)
        .split(['/', ':', '?', '#'])
        .next()
        .unwrap_or_default();
    format!("{}-{}.{pool}.{host}", hex8(function), hex8(pool)).chars().take(MAX_INSTANCE_ID_CHARS).collect()
}

/// This host's address towards the GMS (the source address of a UDP socket "connected" to it;
/// no packet is sent), or `None`.
pub async fn local_address(gms_url: &str) -> Option<String> {
    let rest = gms_url.split_once("://").map(|(_, r)| r)?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let target = if authority.contains(':') {
        authority.to_owned()
    } else if gms_url.starts_with("https") {
        format!("{authority}:443")
    } else {
        format!("{authority}:80")
    };
    let addr = tokio::net::lookup_host(target).await.ok()?.next()?;
    let socket = std::net::UdpSocket::bind(if addr.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }).ok()?;
    socket.connect(addr).ok()?;
    Some(socket.local_addr().ok()?.ip().to_string())
}

/// The `dataHubRemoteExecutorStatus` value.
pub fn status_aspect(pool: &str, identity: &Identity, uptime_s: f64, now_ms: i64) -> Value {
    json!({
        "executorPoolId": pool,
        "executorReleaseVersion": identity.release_version,
        "executorAddress": identity.address,
        "executorHostname": identity.hostname,
        "executorUptime": uptime_s,
        "executorExpired": false,
        "executorStopped": false,
        "executorEmbedded": false,
        "executorInternal": false,
        "logDeliveryEnabled": false,
        "reportedAt": now_ms,
    })
}

/// The `ingestProposal` body that reports `aspect` for `instance_id`.
pub fn status_body(instance_id: &str, aspect: &Value, now_ms: i64) -> String {
    let proposal = json!({
        "entityType": "dataHubRemoteExecutor",
        "entityKeyAspect": {"value": json_dumps(&json!({"id": instance_id})), "contentType": "application/json"},
        "changeType": "UPSERT",
        "aspectName": "dataHubRemoteExecutorStatus",
        "aspect": {"value": json_dumps(aspect), "contentType": "application/json"},
        "systemMetadata": system_metadata(now_ms),
    });
    crate::status::ingest_proposal_body(&proposal)
}

/// Why GMS does not take executor status, or `None` when it does.
pub fn unsupported_reason(config: &Value) -> Option<String> {
    let revision = config.pointer("/remoteExecutorBackend/revision");
    let parsed = revision.and_then(|r| r.as_i64().or_else(|| r.as_str().and_then(|s| s.trim().parse().ok())));
    match parsed {
        Some(r) if r >= REQUIRED_BACKEND_REVISION => None,
        Some(r) => Some(format!(
            "GMS /config says remoteExecutorBackend.revision = {r}; executor status needs revision >= {REQUIRED_BACKEND_REVISION}"
        )),
        None => Some(format!(
            "GMS /config has no remoteExecutorBackend.revision (a self-hosted DataHub without the remote executor backend); executor status needs revision >= {REQUIRED_BACKEND_REVISION}"
        )),
    }
}

pub(super) async fn report(relay: &Relay<'_>, now_ms: i64, summary: &mut Summary) {
    if !relay.config.status_enabled {
        summary.status = "disabled".into();
        return;
    }
    let config = match relay.gms.server_config().await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "executor status not reported: GMS /config could not be read");
            summary.status = "failed".into();
            return;
        }
    };
    if let Some(reason) = unsupported_reason(&config) {
        tracing::info!(reason, "executor status not reported: GMS does not support it");
        summary.status = "skipped".into();
        return;
    }
    let uptime = relay.started.elapsed().as_secs_f64();
    let aspect = status_aspect(&relay.config.pool, relay.identity, uptime, now_ms);
    match relay.gms.ingest_proposal(status_body(&relay.identity.instance_id, &aspect, now_ms)).await {
        Ok(()) => {
            tracing::info!(instance_id = %relay.identity.instance_id, "executor status reported");
            summary.status = "emitted".into();
        }
        Err(e @ GmsError::Http { status: 400..=499, .. }) => {
            tracing::warn!(error = %e, "executor status not reported: GMS refused the dataHubRemoteExecutorStatus proposal");
            summary.status = "rejected".into();
        }
        Err(e) => {
            tracing::warn!(error = %e, "executor status not reported; the next run reports again");
            summary.status = "failed".into();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_reads_the_backend_revision() {
        assert!(unsupported_reason(&json!({"remoteExecutorBackend": {"revision": 2}})).is_none());
        assert!(unsupported_reason(&json!({"remoteExecutorBackend": {"revision": "3"}})).is_none());
        let old = unsupported_reason(&json!({"remoteExecutorBackend": {"revision": 1}})).expect("old");
        assert!(old.contains("revision = 1"), "{old}");
        let none = unsupported_reason(&json!({"noCode": "true"})).expect("absent");
        assert!(none.contains("no remoteExecutorBackend"), "{none}");
    }

    #[test]
    fn the_instance_id_is_stable_and_shaped_like_the_workers() {
        let a = instance_id("relay-fn", "remote", "https://acme.acryl.io/gms");
        assert_eq!(a, instance_id("relay-fn", "remote", "https://acme.acryl.io/gms"));
        let (head, rest) = a.split_once('.').expect("dots");
        assert_eq!(rest, "remote.acme.acryl.io");
        let (x, y) = head.split_once('-').expect("dash");
        assert!(x.len() == 8 && y.len() == 8 && head.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
        assert_ne!(a, instance_id("other-fn", "remote", "https://acme.acryl.io/gms"));
        assert!(instance_id("f", &"p".repeat(1000), "http://h").chars().count() == 469);
    }

    #[test]
    fn the_body_is_an_upsert_keyed_by_the_instance() {
        let id = Identity::new("f", "remote", "http://gms:8080", Some("10.0.0.1".into()), None);
        let aspect = status_aspect("remote", &id, 1.5, 1_700_000_000_123);
        let body: Value =
            serde_json::from_str(&status_body(&id.instance_id, &aspect, 1_700_000_000_123)).expect("json");
        let p = &body["proposal"];
        assert_eq!(p["entityType"], "dataHubRemoteExecutor");
        assert_eq!(p["aspectName"], "dataHubRemoteExecutorStatus");
        assert!(p.get("entityUrn").is_none());
        let key: Value = serde_json::from_str(p["entityKeyAspect"]["value"].as_str().expect("key")).expect("key json");
        assert_eq!(key, json!({"id": id.instance_id}));
        let value: Value = serde_json::from_str(p["aspect"]["value"].as_str().expect("aspect")).expect("json");
        assert_eq!(value["reportedAt"], 1_700_000_000_123i64);
        assert_eq!(value["executorHostname"], "error");
        assert_eq!(value["executorAddress"], "10.0.0.1");
    }
}
