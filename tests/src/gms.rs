//! `GmsEmulator`: an in-process stand-in for DataHub's metadata service (GMS).
//!
//! It serves the few endpoints the executor and the real `datahub` CLI (`datahub-rest` sink of
//! acryl-datahub 1.7.0.17) call, records every request (rejected ones too), keeps every proposal
//! and a latest-aspect store, and can be told to fail, to be slow, or to refuse large bodies.
//!
//! The server runs on its own thread with its own Tokio runtime, so it keeps answering even when a
//! test blocks its own runtime (for example on a synchronous child process). It listens on
//! `127.0.0.1` at a free port and stops when the emulator is dropped.
//!
//! Routes (anything else gets 404 with a JSON body and is recorded as [`Route::Unknown`]):
//!
//! | Route | Request |
//! |---|---|
//! | [`Route::Config`] | `GET /config` |
//! | [`Route::IngestProposal`] | `POST /aspects?action=ingestProposal` |
//! | [`Route::IngestProposalBatch`] | `POST /aspects?action=ingestProposalBatch` |
//! | [`Route::IngestMce`] | `POST /entities?action=ingest` |
//! | [`Route::GetAspect`] | `GET /aspects/{urn}` (always 404, as GMS answers for a missing aspect) |
//! | [`Route::GraphQl`] | `POST /api/graphql` (`getSecretValues`, `listSecrets`) |
//! | [`Route::OpenApiBatch`] | `POST /openapi/v2/entity/batch/{entityName}` |
//! | [`Route::OpenApiScroll`] | `GET /openapi/v3/entity/{entityName}` (empty result: no search index) |
//! | [`Route::OpenApiScrollV2`] | `GET /openapi/v2/entity/{entityName}`: the scroll DataHub's sweeper and the relay use, over the aspect store, with the `query` interpreted by [`crate::gms_query`] (`dataHubExecutionRequest` fields `executorId`, `executionResultStatus`, `ingestionSource`, `task`, `requestTimeMs`), `count`, `sort` and `scrollId` paging (search-after semantics: a page starts after the last entity of the previous one) |
//!
//! `/config` carries `remoteExecutorBackend.revision` once [`GmsEmulator::set_remote_executor_backend`]
//! set one; proposals for entity `dataHubRemoteExecutor` are refused with 422 (unknown entity, as an
//! open-source GMS answers) unless the revision is 2 or more, or [`GmsEmulator::accept_remote_executor`]
//! overrides it. GraphQL `listExecutorConfigs` answers what [`GmsEmulator::set_executor_configs`] set.
//! Every stored aspect keeps its `systemMetadata` (from the proposal, `lastObserved` defaulting to the
//! time it arrived), returned by the OpenAPI reads that ask for it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use axum::Router;
use axum::body::to_bytes;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use tokio::sync::{oneshot, watch};

/// The aspect that carries the status of an execution request.
pub const RESULT_ASPECT: &str = "dataHubExecutionRequestResult";
const EXEC_URN_PREFIX: &str = "urn:li:dataHubExecutionRequest:";

/// The fields of `MetadataChangeProposal` (GMS rejects any other top-level field).
const MCP_FIELDS: &[&str] = &[
    "auditHeader",
    "entityType",
    "entityUrn",
    "entityKeyAspect",
    "changeType",
    "aspectName",
    "aspect",
    "systemMetadata",
    "headers",
];
const CHANGE_TYPES: &[&str] = &["UPSERT", "CREATE", "CREATE_ENTITY", "UPDATE", "DELETE", "PATCH", "RESTATE"];
/// Entities whose key is `{"id": "..."}`, so that `urn:li:<entity>:<id>` is their urn.
const ID_KEYED_ENTITIES: &[&str] = &["dataHubExecutionRequest", "dataHubIngestionSource", "dataHubRemoteExecutor"];

/// Which endpoint a request went to. Used by [`GmsEmulator::fail_next`] and
/// [`GmsEmulator::count`]; [`Route::Any`] matches every request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Route {
    /// `GET /config`
    Config,
    /// `POST /aspects?action=ingestProposal` (the single-proposal endpoint only)
    IngestProposal,
    /// `POST /aspects?action=ingestProposalBatch`
    IngestProposalBatch,
    /// `POST /entities?action=ingest` (MetadataChangeEvent snapshots)
    IngestMce,
    /// `GET /aspects/{urn}`
    GetAspect,
    /// `POST /api/graphql`
    GraphQl,
    /// `POST /openapi/v2/entity/batch/{entityName}`
    OpenApiBatch,
    /// `GET /openapi/v3/entity/{entityName}` (a search; always empty, there is no search index)
    OpenApiScroll,
    /// `GET /openapi/v2/entity/{entityName}` (the scroll over the aspect store)
    OpenApiScrollV2,
    /// Anything else (answered with 404)
    Unknown,
    /// Every request
    Any,
}

impl Route {
    fn matches(self, actual: Route) -> bool {
        self == Route::Any || self == actual
    }
}

/// One request as the emulator received it.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub method: String,
    /// The path as sent (still percent-encoded).
    pub path: String,
    /// The query string without `?`, if there was one.
    pub query: Option<String>,
    /// Header names are lower-cased; values are decoded lossily as UTF-8.
    pub headers: Vec<(String, String)>,
    /// The body, decoded lossily as UTF-8.
    pub body: String,
    pub route: Route,
    /// The status the emulator answered with; 0 while the answer is not decided yet.
    pub status: u16,
}

impl RecordedRequest {
    /// The first value of a header (name matched case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON, if it is JSON.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_str(&self.body).ok()
    }
}

#[derive(Debug)]
struct Fault {
    route: Route,
    remaining: usize,
    status: u16,
}

#[derive(Debug)]
struct ExecResult {
    exec_id: String,
    value: Value,
    body: Arc<str>,
}

#[derive(Debug, Default)]
struct Data {
    requests: Vec<RecordedRequest>,
    proposals: Vec<Value>,
    mces: Vec<Value>,
    results: Vec<ExecResult>,
    aspects: HashMap<(String, String), Value>,
    datasets: BTreeSet<String>,
    secrets: BTreeMap<String, String>,
    faults: Vec<Fault>,
    latency: Duration,
    max_body: Option<usize>,
    system_metadata: HashMap<(String, String), Value>,
    remote_executor_revision: Option<i64>,
    accept_remote_executor: Option<bool>,
    executor_configs: Vec<Value>,
}

#[derive(Debug)]
struct Inner {
    token: String,
    data: Mutex<Data>,
    /// Bumped after every stored execution result; waiters subscribe to it.
    results_changed: watch::Sender<u64>,
}

impl Inner {
    fn data(&self) -> MutexGuard<'_, Data> {
        // A panicking test thread must not hide what was recorded from the others.
        self.data.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// An in-process GMS for tests. See the module documentation for the routes.
pub struct GmsEmulator {
    addr: SocketAddr,
    inner: Arc<Inner>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for GmsEmulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GmsEmulator").field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl GmsEmulator {
    /// Starts the emulator on `127.0.0.1:<free port>`; requests must carry
    /// `Authorization: Bearer <token>`. Panics if it cannot bind or start (a test-setup failure).
    pub async fn start(token: &str) -> GmsEmulator {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("GMS emulator: bind 127.0.0.1:0");
        listener.set_nonblocking(true).expect("GMS emulator: set the listener non-blocking");
        let addr = listener.local_addr().expect("GMS emulator: read the bound address");
        let inner = Arc::new(Inner {
            token: token.to_owned(),
            data: Mutex::new(Data::default()),
            results_changed: watch::Sender::new(0),
        });
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (ready_tx, ready_rx) = oneshot::channel::<()>();
        let state = Arc::clone(&inner);
        let thread = std::thread::Builder::new()
            .name(format!("gms-emulator-{}", addr.port()))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("GMS emulator: build its Tokio runtime");
                runtime.block_on(async move {
                    let listener =
                        tokio::net::TcpListener::from_std(listener).expect("GMS emulator: register the listener");
                    let app = Router::new().fallback(handle).with_state(state);
                    // The receiver only goes away if `start` was cancelled; nothing to tell then.
                    let _ = ready_tx.send(());
                    tokio::select! {
                        served = axum::serve(listener, app) => {
                            if let Err(e) = served {
                                eprintln!("GMS emulator on {addr} stopped: {e}");
                            }
                        }
                        _ = stop_rx => {}
                    }
                });
                // Dropping the runtime here cancels every open connection.
            })
            .expect("GMS emulator: spawn its thread");
        ready_rx.await.expect("GMS emulator: the server thread died while starting");
        GmsEmulator { addr, inner, stop: Some(stop_tx), thread: Some(thread) }
    }

    /// `http://127.0.0.1:<port>`, without a trailing slash.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every request received so far, in arrival order, including rejected ones.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.inner.data().requests.clone()
    }

    /// Number of requests received on a route ([`Route::Any`]: all of them), rejected ones included.
    pub fn count(&self, route: Route) -> usize {
        self.inner.data().requests.iter().filter(|r| route.matches(r.route)).count()
    }

    /// Every accepted MetadataChangeProposal object (single and batch endpoints), in arrival order.
    pub fn proposals(&self) -> Vec<Value> {
        self.inner.data().proposals.clone()
    }

    /// Every accepted `POST /entities?action=ingest` body (MetadataChangeEvent), in arrival order.
    pub fn mces(&self) -> Vec<Value> {
        self.inner.data().mces.clone()
    }

    /// The parsed `dataHubExecutionRequestResult` values written for `exec_id`, in arrival order.
    pub fn execution_results(&self, exec_id: &str) -> Vec<Value> {
        self.inner.data().results.iter().filter(|r| r.exec_id == exec_id).map(|r| r.value.clone()).collect()
    }

    /// The raw HTTP bodies that carried the results of [`GmsEmulator::execution_results`].
    pub fn result_bodies(&self, exec_id: &str) -> Vec<String> {
        self.inner.data().results.iter().filter(|r| r.exec_id == exec_id).map(|r| r.body.to_string()).collect()
    }

    /// Waits (on an event, not by polling) until a result with `status` arrives for `exec_id`,
    /// and returns the first such result. On timeout the error lists the statuses seen so far.
    pub async fn wait_for_status(&self, exec_id: &str, status: &str, timeout: Duration) -> Result<Value, String> {
        self.wait_for_result(exec_id, |r| r.get("status").and_then(Value::as_str) == Some(status), timeout)
            .await
            .map_err(|e| format!("no {status} result: {e}"))
    }

    /// Waits (on an event, not by polling) until a result for `exec_id` satisfies `pred`, and
    /// returns the first such result. On timeout the error lists the statuses seen so far.
    pub async fn wait_for_result(
        &self,
        exec_id: &str,
        pred: impl Fn(&Value) -> bool,
        timeout: Duration,
    ) -> Result<Value, String> {
        let mut changed = self.inner.results_changed.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            changed.borrow_and_update();
            let results = self.execution_results(exec_id);
            if let Some(found) = results.iter().find(|r| pred(r)) {
                return Ok(found.clone());
            }
            match tokio::time::timeout_at(deadline, changed.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err("the GMS emulator stopped".to_owned()),
                Err(_) => {
                    let seen: Vec<&str> =
                        results.iter().map(|r| r.get("status").and_then(Value::as_str).unwrap_or("<none>")).collect();
                    return Err(format!(
                        "no matching result for execution {exec_id} within {timeout:?}; statuses seen: {seen:?}"
                    ));
                }
            }
        }
    }

    /// Urns of every `dataset` entity that arrived through any ingestion endpoint.
    pub fn dataset_urns(&self) -> BTreeSet<String> {
        self.inner.data().datasets.clone()
    }

    /// The latest stored value of an aspect, if any.
    pub fn aspect(&self, urn: &str, aspect_name: &str) -> Option<Value> {
        self.inner.data().aspects.get(&(urn.to_owned(), aspect_name.to_owned())).cloned()
    }

    /// Seeds the aspect store (what `POST /openapi/v2/entity/batch/..` answers from).
    pub fn put_aspect(&self, urn: &str, aspect_name: &str, value: Value) {
        self.inner.data().aspects.insert((urn.to_owned(), aspect_name.to_owned()), value);
    }

    /// Seeds an aspect with `systemMetadata.lastObserved` (epoch ms), as if it was last written then.
    pub fn put_aspect_observed(&self, urn: &str, aspect_name: &str, value: Value, last_observed_ms: i64) {
        let mut data = self.inner.data();
        let key = (urn.to_owned(), aspect_name.to_owned());
        data.aspects.insert(key.clone(), value);
        data.system_metadata.insert(key, json!({"lastObserved": last_observed_ms, "runId": "no-run-id-provided"}));
    }

    /// The stored `systemMetadata` of an aspect, if any.
    pub fn system_metadata(&self, urn: &str, aspect_name: &str) -> Option<Value> {
        self.inner.data().system_metadata.get(&(urn.to_owned(), aspect_name.to_owned())).cloned()
    }

    /// `/config`'s `remoteExecutorBackend.revision` (`None`: absent, as on an open-source GMS).
    pub fn set_remote_executor_backend(&self, revision: Option<i64>) {
        self.inner.data().remote_executor_revision = revision;
    }

    /// Whether `dataHubRemoteExecutor` proposals are accepted, whatever `/config` says (`None`:
    /// accepted exactly when the revision is 2 or more).
    pub fn accept_remote_executor(&self, accept: Option<bool>) {
        self.inner.data().accept_remote_executor = accept;
    }

    /// What GraphQL `listExecutorConfigs` returns in `executorConfigs`.
    pub fn set_executor_configs(&self, configs: Vec<Value>) {
        self.inner.data().executor_configs = configs;
    }

    /// Defines a secret that GraphQL `getSecretValues` returns.
    pub fn set_secret(&self, name: &str, value: &str) {
        self.inner.data().secrets.insert(name.to_owned(), value.to_owned());
    }

    /// The next `n` requests on `route` (after authentication) are answered with `status` and a
    /// Rest.li-style JSON error body. They are recorded like any other request.
    pub fn fail_next(&self, route: Route, n: usize, status: u16) {
        self.inner.data().faults.push(Fault { route, remaining: n, status });
    }

    /// Delay before every answer (`Duration::ZERO` turns it off).
    pub fn set_latency(&self, d: Duration) {
        self.inner.data().latency = d;
    }

    /// Bodies larger than this many bytes get 413 (`None` turns the limit off).
    pub fn set_max_body(&self, bytes: Option<usize>) {
        self.inner.data().max_body = bytes;
    }
}

impl Drop for GmsEmulator {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            // The server thread may already be gone; then there is nothing to stop.
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            // A panic of the server thread was already printed; do not panic again in drop.
            let _ = thread.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Request handling

fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?.split('&').filter_map(|kv| kv.split_once('=').or(Some((kv, "")))).find(|(k, _)| *k == name).map(|(_, v)| v)
}

fn classify(method: &Method, path: &str, query: Option<&str>) -> Route {
    let action = query_param(query, "action");
    match (method, path) {
        (&Method::GET, "/config") => Route::Config,
        (&Method::POST, "/aspects") if action == Some("ingestProposal") => Route::IngestProposal,
        (&Method::POST, "/aspects") if action == Some("ingestProposalBatch") => Route::IngestProposalBatch,
        (&Method::POST, "/entities") if action == Some("ingest") => Route::IngestMce,
        (&Method::GET, p) if p.starts_with("/aspects/") => Route::GetAspect,
        (&Method::POST, "/api/graphql") => Route::GraphQl,
        (&Method::POST, p)
            if p.strip_prefix("/openapi/v2/entity/batch/").is_some_and(|e| !e.is_empty() && !e.contains('/')) =>
        {
            Route::OpenApiBatch
        }
        (&Method::GET, p)
            if p.strip_prefix("/openapi/v3/entity/").is_some_and(|e| !e.is_empty() && !e.contains('/')) =>
        {
            Route::OpenApiScroll
        }
        (&Method::GET, p)
            if p.strip_prefix("/openapi/v2/entity/").is_some_and(|e| !e.is_empty() && !e.contains('/')) =>
        {
            Route::OpenApiScrollV2
        }
        _ => Route::Unknown,
    }
}

/// A Rest.li-style error (`status` in the body is what the Python emitter reads).
fn restli_error(status: u16, message: &str) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(
        code,
        json!({
            "exceptionClass": "com.linkedin.restli.server.RestLiServiceException",
            "message": message,
            "status": status,
        }),
    )
}

fn json_response(code: StatusCode, body: Value) -> Response {
    (code, axum::Json(body)).into_response()
}

async fn handle(State(inner): State<Arc<Inner>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_owned();
    let query = parts.uri.query().map(str::to_owned);
    let route = classify(&parts.method, &path, query.as_deref());
    let (body, body_error) = match to_bytes(body, usize::MAX).await {
        Ok(bytes) => (bytes, None),
        Err(e) => (Default::default(), Some(e.to_string())),
    };
    let headers = parts
        .headers
        .iter()
        .map(|(n, v)| (n.as_str().to_ascii_lowercase(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect();
    let body_text: Arc<str> = Arc::from(String::from_utf8_lossy(&body).as_ref());
    let (index, latency, max_body) = {
        let mut data = inner.data();
        data.requests.push(RecordedRequest {
            method: parts.method.to_string(),
            path,
            query,
            headers,
            body: body_text.to_string(),
            route,
            status: 0,
        });
        (data.requests.len() - 1, data.latency, data.max_body)
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }

    let response = if let Some(e) = body_error {
        restli_error(400, &format!("could not read the request body: {e}"))
    } else if max_body.is_some_and(|max| body.len() > max) {
        restli_error(413, &format!("request body of {} bytes is too large", body.len()))
    } else if parts.headers.get("authorization").and_then(|v| v.to_str().ok())
        != Some(&format!("Bearer {}", inner.token))
    {
        restli_error(401, "Unauthorized to perform this action.")
    } else if let Some(status) = take_fault(&inner, route) {
        restli_error(status, &format!("failure injected by the GMS emulator ({status})"))
    } else {
        route_request(&inner, route, &parts.uri, &body_text)
    };

    let mut data = inner.data();
    if let Some(recorded) = data.requests.get_mut(index) {
        recorded.status = response.status().as_u16();
    }
    response
}

fn take_fault(inner: &Inner, route: Route) -> Option<u16> {
    let mut data = inner.data();
    let fault = data.faults.iter_mut().find(|f| f.remaining > 0 && f.route.matches(route))?;
    fault.remaining -= 1;
    let status = fault.status;
    data.faults.retain(|f| f.remaining > 0);
    Some(status)
}

fn route_request(inner: &Inner, route: Route, uri: &axum::http::Uri, body: &Arc<str>) -> Response {
    let path = uri.path();
    match route {
        Route::Config => {
            let mut config = server_config();
            if let Some(revision) = inner.data().remote_executor_revision {
                config["remoteExecutorBackend"] = json!({"revision": revision});
            }
            json_response(StatusCode::OK, config)
        }
        Route::OpenApiScrollV2 => {
            let entity = path.trim_start_matches("/openapi/v2/entity/");
            openapi_scroll(inner, entity, uri)
        }
        Route::IngestProposal => ingest_proposals(inner, body, false),
        Route::IngestProposalBatch => ingest_proposals(inner, body, true),
        Route::IngestMce => ingest_mce(inner, body),
        Route::GetAspect => restli_error(404, "aspect not found"),
        Route::GraphQl => graphql(inner, body),
        Route::OpenApiBatch => {
            let entity = path.trim_start_matches("/openapi/v2/entity/batch/");
            openapi_batch(inner, entity, body)
        }
        // The SQL parser's Looker user mapping searches platform resources this way.
        Route::OpenApiScroll => json_response(StatusCode::OK, json!({"entities": [], "scrollId": null})),
        Route::Unknown | Route::Any => json_response(
            StatusCode::NOT_FOUND,
            json!({"status": 404, "message": format!("the GMS emulator does not serve {path}")}),
        ),
    }
}

/// What a DataHub 1.x OSS GMS answers on `/config`, reduced to what clients read.
///
/// The CLI checks `noCode == "true"` and reads `versions."acryldata/datahub".version` (from 1.0.1
/// on, a core server counts as OpenAPI and trace capable; the `datahub-rest` sink still uses Rest.li
/// because it runs in the INGESTION client mode), `datahub.serverType` and `serverEnv` (`core`: not
/// DataHub Cloud), `telemetry.enabledCli` (false: the CLI suppresses its telemetry),
/// `statefulIngestionCapable`, `patchCapable` and `managedIngestion`. `serverType` is not
/// `quickstart`, so the CLI's upgrade check does not look the commit up on GitHub.
pub fn server_config() -> Value {
    json!({
        "models": {},
        "patchCapable": true,
        "versions": {
            "acryldata/datahub": {"version": "v1.3.0", "commit": "0000000000000000000000000000000000000000"}
        },
        "managedIngestion": {"defaultCliVersion": "1.3.0", "enabled": true},
        "statefulIngestionCapable": true,
        "supportsImpactAnalysis": true,
        "timeZone": "GMT",
        "telemetry": {"enabledCli": false, "enabledIngestion": false},
        "datasetUrnNameCasing": false,
        "retention": "true",
        "datahub": {"serverType": "prod", "serverEnv": "core"},
        "noCode": "true"
    })
}

fn parse_json(body: &str) -> Result<Value, String> {
    serde_json::from_str(body).map_err(|e| format!("body is not JSON: {e}"))
}

/// A proposal checked and decoded, ready to be stored.
struct Checked {
    proposal: Value,
    urn: String,
    entity_type: String,
    change_type: String,
    aspect_name: Option<String>,
    aspect: Option<Value>,
    key: Option<Value>,
}

fn decode_aspect(field: &str, raw: &Value) -> Result<Value, String> {
    let value = raw
        .get("value")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("{field}.value must be a string of serialized JSON"))?;
    match raw.get("contentType").and_then(Value::as_str) {
        Some("application/json") | Some("application/json-patch+json") => {}
        other => return Err(format!("{field}.contentType {other:?} is not supported")),
    }
    serde_json::from_str(value).map_err(|e| format!("{field}.value is not JSON: {e}"))
}

fn check_proposal(proposal: &Value) -> Result<Checked, String> {
    let obj = proposal.as_object().ok_or("a proposal must be a JSON object")?;
    if let Some(unknown) = obj.keys().find(|k| !MCP_FIELDS.contains(&k.as_str())) {
        return Err(format!("unrecognized field found but not allowed: {unknown}"));
    }
    let entity_type = obj.get("entityType").and_then(Value::as_str).ok_or("entityType is required")?.to_owned();
    let change_type = obj.get("changeType").and_then(Value::as_str).ok_or("changeType is required")?.to_owned();
    if !CHANGE_TYPES.contains(&change_type.as_str()) {
        return Err(format!("unknown changeType {change_type}"));
    }
    let key = obj.get("entityKeyAspect").map(|k| decode_aspect("entityKeyAspect", k)).transpose()?;
    let urn = match (obj.get("entityUrn"), &key) {
        (Some(urn), _) => urn.as_str().ok_or("entityUrn must be a string")?.to_owned(),
        (None, Some(key)) => urn_from_key(&entity_type, key)?,
        (None, None) => return Err("either entityUrn or entityKeyAspect is required".to_owned()),
    };
    let aspect_name = match obj.get("aspectName") {
        Some(n) => Some(n.as_str().ok_or("aspectName must be a string")?.to_owned()),
        None => None,
    };
    let aspect = obj.get("aspect").map(|a| decode_aspect("aspect", a)).transpose()?;
    if aspect.is_some() && aspect_name.is_none() {
        return Err("aspectName is required with an aspect".to_owned());
    }
    Ok(Checked { proposal: proposal.clone(), urn, entity_type, change_type, aspect_name, aspect, key })
}

fn urn_from_key(entity_type: &str, key: &Value) -> Result<String, String> {
    let id = key.get("id").and_then(Value::as_str);
    match id {
        Some(id) if ID_KEYED_ENTITIES.contains(&entity_type) => Ok(format!("urn:li:{entity_type}:{id}")),
        _ => Err(format!("the GMS emulator cannot derive an urn for entity type {entity_type} from key {key}")),
    }
}

fn store(inner: &Inner, data: &mut Data, checked: Checked, body: &Arc<str>) {
    let Checked { proposal, urn, entity_type, change_type, aspect_name, aspect, key } = checked;
    let mut system_metadata =
        proposal.get("systemMetadata").cloned().filter(Value::is_object).unwrap_or_else(|| json!({}));
    if system_metadata.get("lastObserved").and_then(Value::as_i64).is_none() {
        system_metadata["lastObserved"] = json!(now_ms());
    }
    data.proposals.push(proposal);
    if entity_type == "dataset" {
        data.datasets.insert(urn.clone());
    }
    if let Some(key) = key {
        data.aspects.insert((urn.clone(), format!("{entity_type}Key")), key);
    }
    let Some(aspect_name) = aspect_name else {
        return;
    };
    match change_type.as_str() {
        "DELETE" => {
            data.aspects.remove(&(urn, aspect_name));
        }
        // A patch is kept as a proposal only; the store holds whole aspects.
        "PATCH" => {}
        _ => {
            let Some(value) = aspect else { return };
            if aspect_name == RESULT_ASPECT
                && let Some(exec_id) = urn.strip_prefix(EXEC_URN_PREFIX)
            {
                data.results.push(ExecResult {
                    exec_id: exec_id.to_owned(),
                    value: value.clone(),
                    body: Arc::clone(body),
                });
                inner.results_changed.send_modify(|n| *n += 1);
            }
            data.system_metadata.insert((urn.clone(), aspect_name.clone()), system_metadata);
            data.aspects.insert((urn, aspect_name), value);
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or_default()
}

fn ingest_proposals(inner: &Inner, body: &Arc<str>, batch: bool) -> Response {
    let doc = match parse_json(body) {
        Ok(doc) => doc,
        Err(e) => return restli_error(400, &e),
    };
    if let Some(flag) = doc.get("async")
        && !flag.is_string()
    {
        return restli_error(400, "parameter 'async' must be the string \"true\" or \"false\"");
    }
    let proposals: Vec<&Value> = if batch {
        match doc.get("proposals").and_then(Value::as_array) {
            Some(list) => list.iter().collect(),
            None => return restli_error(400, "parameter 'proposals' (an array) is required"),
        }
    } else {
        match doc.get("proposal") {
            Some(p) => vec![p],
            None => return restli_error(400, "parameter 'proposal' is required"),
        }
    };
    let mut checked = Vec::with_capacity(proposals.len());
    for (i, proposal) in proposals.into_iter().enumerate() {
        match check_proposal(proposal) {
            Ok(c) => checked.push(c),
            Err(e) => return restli_error(422, &format!("proposal {i}: {e}")),
        }
    }
    let urns: Vec<String> = checked.iter().map(|c| c.urn.clone()).collect();
    let mut data = inner.data();
    let remote_executor_ok =
        data.accept_remote_executor.unwrap_or(data.remote_executor_revision.is_some_and(|r| r >= 2));
    if !remote_executor_ok && checked.iter().any(|c| c.entity_type == "dataHubRemoteExecutor") {
        return restli_error(422, "Unknown entity type dataHubRemoteExecutor: this GMS has no remote executor backend");
    }
    for c in checked {
        store(inner, &mut data, c, body);
    }
    if batch {
        json_response(StatusCode::OK, json!({ "value": urns }))
    } else {
        json_response(StatusCode::OK, json!({ "value": urns.first() }))
    }
}

/// `com.linkedin.dataset.DatasetProperties` → `datasetProperties`.
fn aspect_name_of_class(fqn: &str) -> String {
    let class = fqn.rsplit('.').next().unwrap_or(fqn);
    let mut chars = class.chars();
    match chars.next() {
        Some(first) => first.to_ascii_lowercase().to_string() + chars.as_str(),
        None => String::new(),
    }
}

fn ingest_mce(inner: &Inner, body: &str) -> Response {
    let doc = match parse_json(body) {
        Ok(doc) => doc,
        Err(e) => return restli_error(400, &e),
    };
    let Some((snapshot_class, snapshot)) =
        doc.pointer("/entity/value").and_then(Value::as_object).and_then(|m| m.iter().next())
    else {
        return restli_error(400, "parameter 'entity' with a snapshot is required");
    };
    let Some(urn) = snapshot.get("urn").and_then(Value::as_str) else {
        return restli_error(422, "the snapshot has no urn");
    };
    let mut aspects = Vec::new();
    for aspect in snapshot.get("aspects").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default() {
        if let Some((class, value)) = aspect.as_object().and_then(|m| m.iter().next()) {
            aspects.push((aspect_name_of_class(class), value.clone()));
        }
    }
    let is_dataset = snapshot_class.ends_with(".DatasetSnapshot");
    let urn = urn.to_owned();
    let mut data = inner.data();
    if is_dataset {
        data.datasets.insert(urn.clone());
    }
    for (name, value) in aspects {
        data.aspects.insert((urn.clone(), name), value);
    }
    data.mces.push(doc);
    json_response(StatusCode::OK, json!({}))
}

fn graphql_error(message: &str) -> Response {
    json_response(
        StatusCode::OK,
        json!({
            "errors": [{
                "message": message,
                "locations": [],
                "extensions": {"code": 400, "type": "BAD_REQUEST", "classification": "ValidationError"}
            }],
            "data": null
        }),
    )
}

fn graphql(inner: &Inner, body: &str) -> Response {
    let doc = match parse_json(body) {
        Ok(doc) => doc,
        Err(e) => return restli_error(400, &e),
    };
    let query = doc.get("query").and_then(Value::as_str).unwrap_or_default();
    if query.contains("listSecrets") {
        // Names only, paged as GMS pages them (`start`, `count`, `total`).
        let start = doc.pointer("/variables/input/start").and_then(Value::as_u64).unwrap_or(0) as usize;
        let count = doc.pointer("/variables/input/count").and_then(Value::as_u64).unwrap_or(20) as usize;
        let data = inner.data();
        let page: Vec<Value> = data
            .secrets
            .keys()
            .skip(start)
            .take(count)
            .map(|name| json!({"urn": format!("urn:li:dataHubSecret:{name}"), "name": name}))
            .collect();
        return json_response(
            StatusCode::OK,
            json!({"data": {"listSecrets": {"start": start, "count": page.len(), "total": data.secrets.len(), "secrets": page}}}),
        );
    }
    if query.contains("listExecutorConfigs") {
        let configs = inner.data().executor_configs.clone();
        return json_response(
            StatusCode::OK,
            json!({"data": {"listExecutorConfigs": {"total": configs.len(), "executorConfigs": configs}}}),
        );
    }
    if !query.contains("getSecretValues") {
        return graphql_error(
            "the GMS emulator only supports the getSecretValues, listSecrets and listExecutorConfigs queries",
        );
    }
    let Some(names) = doc.pointer("/variables/input/secrets").and_then(Value::as_array) else {
        return graphql_error("Variable 'input' has an invalid value: secrets is required");
    };
    let data = inner.data();
    let values: Vec<Value> = names
        .iter()
        .filter_map(Value::as_str)
        .filter_map(|name| data.secrets.get(name).map(|value| json!({"name": name, "value": value})))
        .collect();
    json_response(StatusCode::OK, json!({"data": {"getSecretValues": values}}))
}

fn openapi_batch(inner: &Inner, entity: &str, body: &str) -> Response {
    let doc = match parse_json(body) {
        Ok(doc) => doc,
        Err(e) => return restli_error(400, &e),
    };
    let Some(urns) = doc.get("urns").and_then(Value::as_array) else {
        return restli_error(400, "urns (an array) is required");
    };
    let names: Option<Vec<&str>> =
        doc.get("aspectNames").and_then(Value::as_array).map(|a| a.iter().filter_map(Value::as_str).collect());
    let with_system_metadata = doc.get("withSystemMetadata").and_then(Value::as_bool).unwrap_or(false);
    let prefix = format!("urn:li:{entity}:");
    let data = inner.data();
    let mut entities = Vec::new();
    for urn in urns {
        let Some(urn) = urn.as_str() else {
            return restli_error(400, "urns must be strings");
        };
        if !urn.starts_with(&prefix) {
            return restli_error(400, &format!("{urn} is not a {entity} urn"));
        }
        let mut aspects = Map::new();
        let mut stored: Vec<(&String, &Value)> =
            data.aspects.iter().filter(|((u, _), _)| u == urn).map(|((_, name), value)| (name, value)).collect();
        stored.sort_by(|a, b| a.0.cmp(b.0));
        for (name, value) in &stored {
            if names.as_ref().is_none_or(|n| n.contains(&name.as_str())) {
                let mut a = json!({ "value": value });
                if with_system_metadata && let Some(m) = data.system_metadata.get(&(urn.to_owned(), (*name).clone())) {
                    a["systemMetadata"] = m.clone();
                }
                aspects.insert((*name).clone(), a);
            }
        }
        // GMS has the key aspect of every entity that exists.
        let key_name = format!("{entity}Key");
        if !stored.is_empty()
            && !aspects.contains_key(&key_name)
            && ID_KEYED_ENTITIES.contains(&entity)
            && names.as_ref().is_none_or(|n| n.contains(&key_name.as_str()))
        {
            let id = &urn[prefix.len()..];
            aspects.insert(key_name, json!({"value": {"id": id}}));
        }
        if !aspects.is_empty() {
            entities.push(json!({"urn": urn, "aspects": aspects}));
        }
    }
    json_response(StatusCode::OK, json!({ "entities": entities }))
}

/// The keyword fields the search index holds for an entity (what the scroll's query can name).
fn index_fields(data: &Data, entity: &str, urn: &str) -> BTreeMap<String, String> {
    let mut doc = BTreeMap::new();
    let aspect = |name: &str| data.aspects.get(&(urn.to_owned(), name.to_owned()));
    if entity == "dataHubExecutionRequest" {
        if let Some(input) = aspect("dataHubExecutionRequestInput") {
            for (field, pointer) in [
                ("executorId", "/executorId"),
                ("task", "/task"),
                ("ingestionSource", "/source/ingestionSource"),
                ("requestTimeMs", "/requestedAt"),
            ] {
                if let Some(v) = input.pointer(pointer) {
                    doc.insert(field.to_owned(), v.as_str().map_or_else(|| v.to_string(), str::to_owned));
                }
            }
        }
        if let Some(status) = aspect(RESULT_ASPECT).and_then(|r| r.get("status")).and_then(Value::as_str) {
            doc.insert("executionResultStatus".to_owned(), status.to_owned());
        }
    }
    doc.insert("urn".to_owned(), urn.to_owned());
    doc
}

/// `GET /openapi/v2/entity/{entity}`: a scroll over the aspect store (see the module docs).
fn openapi_scroll(inner: &Inner, entity: &str, uri: &axum::http::Uri) -> Response {
    let params = match axum::extract::Query::<Vec<(String, String)>>::try_from_uri(uri) {
        Ok(axum::extract::Query(p)) => p,
        Err(e) => return restli_error(400, &format!("bad query string: {e}")),
    };
    let param = |name: &str| params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let aspect_names: Vec<&str> = params
        .iter()
        .filter(|(k, _)| k == "aspectNames" || k == "aspects")
        .flat_map(|(_, v)| v.split(','))
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect();
    let count = match param("count").map(str::parse::<usize>) {
        None => 10,
        Some(Ok(n)) if n > 0 => n,
        _ => return restli_error(400, "count must be a positive number"),
    };
    let expr = match crate::gms_query::parse(param("query").unwrap_or("*")) {
        Ok(e) => e,
        Err(e) => return restli_error(400, &format!("query: {e}")),
    };
    let sort = param("sort").unwrap_or("urn");
    let descending = param("sortOrder") == Some("DESCENDING");
    let with_system_metadata = param("systemMetadata") == Some("true");
    let after: Option<(String, String)> = match param("scrollId") {
        None | Some("") => None,
        Some(id) => match base64::Engine::decode(&base64::engine::general_purpose::STANDARD, id)
            .ok()
            .and_then(|b| serde_json::from_slice::<(String, String)>(&b).ok())
        {
            Some(cursor) => Some(cursor),
            None => return restli_error(400, "scrollId is not one this GMS handed out"),
        },
    };
    let prefix = format!("urn:li:{entity}:");
    let data = inner.data();
    let urns: BTreeSet<&String> = data.aspects.keys().map(|(u, _)| u).filter(|u| u.starts_with(&prefix)).collect();
    // Sort key: (the sort field, zero-padded when numeric so strings order as numbers; urn).
    let key_of = |doc: &BTreeMap<String, String>| -> String {
        let v = doc.get(sort).cloned().unwrap_or_default();
        match v.parse::<i64>() {
            Ok(n) if n >= 0 => format!("{n:020}"),
            _ => v,
        }
    };
    let mut hits: Vec<(String, String)> = urns
        .into_iter()
        .filter_map(|u| {
            let doc = index_fields(&data, entity, u);
            crate::gms_query::matches(&expr, &doc).then(|| (key_of(&doc), u.clone()))
        })
        .collect();
    hits.sort();
    if descending {
        hits.reverse();
    }
    let start = match &after {
        None => 0,
        Some(cursor) => {
            hits.iter().position(|h| if descending { h < cursor } else { h > cursor }).unwrap_or(hits.len())
        }
    };
    let page: Vec<&(String, String)> = hits.iter().skip(start).take(count).collect();
    let more = start + page.len() < hits.len();
    let mut results = Vec::new();
    for (_, urn) in &page {
        let mut aspects = Map::new();
        for ((u, name), value) in data.aspects.iter() {
            if u != urn || !(aspect_names.is_empty() || aspect_names.contains(&name.as_str())) {
                continue;
            }
            let mut a = json!({ "value": value });
            if with_system_metadata && let Some(m) = data.system_metadata.get(&(u.clone(), name.clone())) {
                a["systemMetadata"] = m.clone();
            }
            aspects.insert(name.clone(), a);
        }
        results.push(json!({"urn": urn, "aspects": aspects}));
    }
    let scroll_id = match (more, page.last()) {
        (true, Some(last)) => {
            let cursor = serde_json::to_vec(last).unwrap_or_default();
            Value::String(base64::Engine::encode(&base64::engine::general_purpose::STANDARD, cursor))
        }
        _ => Value::Null,
    };
    json_response(StatusCode::OK, json!({"scrollId": scroll_id, "results": results}))
}
