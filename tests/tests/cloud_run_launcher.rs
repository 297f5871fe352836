//! The Cloud Run jobs launcher against an HTTP fake of the Cloud Run v2 API, the GCE metadata
//! server, Google STS and IAM credentials (one axum server on a free loopback port that records
//! every request). The launcher is built from environment-style variables, as the admission
//! function builds it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::to_bytes;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use shared::launcher::cloud_run::CloudRunLauncher;
use shared::launcher::{JOB_SPEC_ENV, JobSpec, LaunchError, Launcher};

const PROJECT: &str = "acme-data";
const REGION: &str = "europe-west1";
const JOB: &str = "datahub-ingest";
const JOB_NAME: &str = "projects/acme-data/locations/europe-west1/jobs/datahub-ingest";
const METADATA_PATH: &str = "/computeMetadata/v1/instance/service-accounts/default/token";
/// A value in the job's own definition: it must never travel in an override.
const JOB_SECRET_VALUE: &str = "gms-token-value-kept-in-the-job";
const AUDIENCE: &str = "//iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/aws/providers/lambda";
const IMPERSONATE_PATH: &str =
    "/v1/projects/-/serviceAccounts/launcher@acme-data.iam.gserviceaccount.com:generateAccessToken";

#[derive(Clone, Debug)]
struct Rec {
    method: String,
    path: String,
    query: String,
    headers: Vec<(String, String)>,
    body: String,
}

impl Rec {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).expect("a JSON body")
    }
}

struct FakeState {
    requests: Vec<Rec>,
    executions: Vec<Value>,
    runs: usize,
    tokens_issued: usize,
    token_expires_in: u64,
    /// (path fragment, status): every matching Cloud Run call fails with that status.
    faults: Vec<(String, u16)>,
    /// The most executions the fake puts on one page, whatever `pageSize` asks.
    page_limit: usize,
}

#[derive(Clone)]
struct Fake {
    addr: SocketAddr,
    state: Arc<Mutex<FakeState>>,
}

impl Fake {
    async fn start() -> Fake {
        let state = Arc::new(Mutex::new(FakeState {
            requests: Vec::new(),
            executions: Vec::new(),
            runs: 0,
            tokens_issued: 0,
            token_expires_in: 3599,
            faults: Vec::new(),
            page_limit: 2,
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let app = Router::new().fallback(handle).with_state(Arc::clone(&state));
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                eprintln!("fake Cloud Run stopped: {e}");
            }
        });
        Fake { addr, state }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn state(&self) -> MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn requests(&self) -> Vec<Rec> {
        self.state().requests.clone()
    }

    fn requests_to(&self, path_fragment: &str) -> Vec<Rec> {
        self.requests().into_iter().filter(|r| r.path.contains(path_fragment)).collect()
    }

    fn metadata_calls(&self) -> usize {
        self.requests_to(METADATA_PATH).len()
    }

    fn cloud_run_calls(&self) -> Vec<Rec> {
        self.requests_to("/v2/")
    }

    fn fail(&self, fragment: &str, status: u16) {
        self.state().faults.push((fragment.to_owned(), status));
    }

    fn heal(&self) {
        self.state().faults.clear();
    }

    /// The usual variables of a launcher that talks to this fake and its metadata server.
    fn env(&self) -> BTreeMap<String, String> {
        [
            ("DATAHUB_EXECUTOR_CLOUD_RUN_PROJECT", PROJECT.to_owned()),
            ("DATAHUB_EXECUTOR_CLOUD_RUN_REGION", REGION.to_owned()),
            ("DATAHUB_EXECUTOR_CLOUD_RUN_JOB", JOB.to_owned()),
            ("DATAHUB_EXECUTOR_CLOUD_RUN_API_BASE", self.url()),
            ("GCE_METADATA_HOST", self.addr.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    fn launcher_with(&self, env: BTreeMap<String, String>) -> CloudRunLauncher {
        CloudRunLauncher::from_lookup(|k| env.get(k).cloned()).expect("launcher from the environment")
    }

    fn launcher(&self) -> CloudRunLauncher {
        self.launcher_with(self.env())
    }
}

fn google_error(status: u16) -> Response {
    let name = match status {
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        429 => "RESOURCE_EXHAUSTED",
        503 => "UNAVAILABLE",
        _ => "UNKNOWN",
    };
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = json!({"error": {"code": status, "message": format!("fake says {name}"), "status": name}});
    (code, axum::Json(body)).into_response()
}

fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').filter_map(|kv| kv.split_once('=')).find(|(k, _)| *k == name).map(|(_, v)| v.to_owned())
}

fn job_resource() -> Value {
    json!({
        "name": JOB_NAME,
        "template": {"taskCount": 1, "template": {"containers": [{
            "name": "ingest",
            "image": "europe-docker.pkg.dev/acme-data/datahub/ingest-job:1",
            "env": [
                {"name": "DATAHUB_GMS_URL", "value": "https://acme.acryl.io/gms"},
                {"name": "DATAHUB_GMS_TOKEN", "value": JOB_SECRET_VALUE},
                {"name": "PG_PASSWORD", "valueSource": {"secretKeyRef": {"secret": "pg-password", "version": "latest"}}}
            ]
        }]}}
    })
}

async fn handle(State(state): State<Arc<Mutex<FakeState>>>, req: Request) -> Response {
    let method = req.method().to_string();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let headers = req
        .headers()
        .iter()
        .map(|(n, v)| (n.as_str().to_ascii_lowercase(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect();
    let body = to_bytes(req.into_body(), usize::MAX)
        .await
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let rec = Rec { method, path, query, headers, body };
    let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
    st.requests.push(rec.clone());

    if rec.path == METADATA_PATH {
        if rec.header("metadata-flavor") != Some("Google") {
            return (StatusCode::FORBIDDEN, "Missing Metadata-Flavor:Google header").into_response();
        }
        st.tokens_issued += 1;
        let body = json!({"access_token": format!("meta-token-{}", st.tokens_issued), "expires_in": st.token_expires_in, "token_type": "Bearer"});
        return axum::Json(body).into_response();
    }
    if rec.path == "/sts/v1/token" && rec.method == "POST" {
        let body = json!({"access_token": "sts-token", "issued_token_type": "urn:ietf:params:oauth:token-type:access_token", "token_type": "Bearer", "expires_in": 3600});
        return axum::Json(body).into_response();
    }
    if rec.path == IMPERSONATE_PATH && rec.method == "POST" {
        if rec.header("authorization") != Some("Bearer sts-token") {
            return google_error(403);
        }
        return axum::Json(json!({"accessToken": "iam-token", "expireTime": "2099-01-01T00:00:00Z"})).into_response();
    }
    if !rec.path.starts_with("/v2/") {
        return google_error(404);
    }
    if !rec.header("authorization").is_some_and(|a| a.starts_with("Bearer ")) {
        return (StatusCode::UNAUTHORIZED, axum::Json(json!({"error": {"code": 401, "status": "UNAUTHENTICATED"}})))
            .into_response();
    }
    if let Some((_, status)) = st.faults.iter().find(|(f, _)| rec.path.contains(f.as_str())) {
        return google_error(*status);
    }
    let name = &rec.path["/v2/".len()..];
    match (rec.method.as_str(), name) {
        ("POST", n) if n == format!("{JOB_NAME}:run") => {
            st.runs += 1;
            let exec = format!("{JOB_NAME}/executions/{JOB}-{:05}", st.runs);
            let body: Value = serde_json::from_str(&rec.body).unwrap_or(Value::Null);
            let mut container = job_resource()["template"]["template"]["containers"][0].clone();
            if let Some(env) = container["env"].as_array_mut() {
                for o in
                    body.pointer("/overrides/containerOverrides/0/env").and_then(Value::as_array).into_iter().flatten()
                {
                    env.push(o.clone());
                }
            }
            let execution = json!({
                "name": exec, "uid": format!("uid-{}", st.runs), "job": JOB,
                "createTime": format!("2026-03-01T10:00:{:02}Z", st.runs), "startTime": format!("2026-03-01T10:00:{:02}.5Z", st.runs),
                "taskCount": 1, "runningCount": 1, "succeededCount": 0, "failedCount": 0, "cancelledCount": 0,
                "template": {"containers": [container], "maxRetries": 0}
            });
            st.executions.push(execution.clone());
            let mut metadata = execution;
            metadata["@type"] = json!("type.googleapis.com/google.cloud.run.v2.Execution");
            axum::Json(json!({"name": format!("projects/{PROJECT}/locations/{REGION}/operations/op-{}", st.runs), "metadata": metadata, "done": false}))
                .into_response()
        }
        ("GET", n) if n == format!("{JOB_NAME}/executions") => {
            let size = query_param(&rec.query, "pageSize")
                .and_then(|s| s.parse::<usize>().ok())
                .unwrap_or(10)
                .min(st.page_limit);
            let start = query_param(&rec.query, "pageToken").and_then(|s| s.parse::<usize>().ok()).unwrap_or(0);
            // Newest first, as Cloud Run lists them.
            let all: Vec<Value> = st.executions.iter().rev().cloned().collect();
            let page: Vec<Value> = all.iter().skip(start).take(size).cloned().collect();
            let next = if start + size < all.len() { (start + size).to_string() } else { String::new() };
            axum::Json(json!({"executions": page, "nextPageToken": next})).into_response()
        }
        ("GET", n) if n == JOB_NAME => axum::Json(job_resource()).into_response(),
        ("POST", n) if n.ends_with(":cancel") => {
            let exec = n.trim_end_matches(":cancel").to_owned();
            match st.executions.iter_mut().find(|e| e["name"] == exec.as_str()) {
                Some(e) => {
                    e["runningCount"] = json!(0);
                    e["cancelledCount"] = json!(1);
                    e["completionTime"] = json!("2026-03-01T11:00:00Z");
                    let done = e.clone();
                    axum::Json(json!({"name": "op-cancel", "metadata": done, "done": false})).into_response()
                }
                None => google_error(404),
            }
        }
        _ => google_error(404),
    }
}

fn spec(exec_id: &str, pool: &str, weight: f64) -> JobSpec {
    JobSpec {
        exec_id: exec_id.to_owned(),
        pool: pool.to_owned(),
        task: "RUN_INGEST".to_owned(),
        weight,
        args: Some(BTreeMap::from([
            (
                "recipe".to_owned(),
                r#"{"source": {"type": "postgres", "config": {"password": "${PG_PASSWORD}"}}}"#.to_owned(),
            ),
            ("version".to_owned(), "1.7.0.17".to_owned()),
        ])),
        secret_plan: BTreeMap::from([("PG_PASSWORD".to_owned(), "env".to_owned())]),
    }
}

#[tokio::test]
async fn run_request_carries_the_spec_in_one_env_override_and_the_metadata_token() {
    let fake = Fake::start().await;
    let launcher = fake.launcher();
    assert_eq!(launcher.name(), "cloud-run");
    assert_eq!(launcher.max_spec_bytes(), 16 * 1024);
    let spec = spec("e-001", "remote", 0.25);

    let launched = launcher.launch(&spec).await.expect("launched");
    assert_eq!(launched.id, format!("{JOB_NAME}/executions/{JOB}-00001"));
    assert!(launched.location.contains(&launched.id) && launched.location.contains(JOB_NAME), "{}", launched.location);
    assert!(!launched.already_running);

    let meta = fake.requests_to(METADATA_PATH);
    assert_eq!(meta.len(), 1);
    assert_eq!(meta[0].method, "GET");
    assert_eq!(meta[0].header("metadata-flavor"), Some("Google"));

    let calls = fake.cloud_run_calls();
    assert_eq!(calls.len(), 1, "one Cloud Run call: {calls:?}");
    let run = &calls[0];
    assert_eq!(run.method, "POST");
    assert_eq!(run.path, format!("/v2/{JOB_NAME}:run"));
    assert_eq!(run.header("authorization"), Some("Bearer meta-token-1"));
    assert_eq!(run.header("content-type"), Some("application/json"));
    let body = run.json();
    assert_eq!(
        body,
        json!({"overrides": {"containerOverrides": [{"env": [{"name": JOB_SPEC_ENV, "value": spec.to_json()}]}], "taskCount": 1}}),
        "no container name, no timeout, exactly one env var"
    );
    let value = body.pointer("/overrides/containerOverrides/0/env/0/value").and_then(Value::as_str).expect("the spec");
    assert_eq!(JobSpec::from_json(value).expect("parses back"), spec);
    assert!(!run.body.contains(JOB_SECRET_VALUE), "no value of the job's env travels in the override");
    assert!(run.body.contains("${PG_PASSWORD}"), "only the reference");

    // With a named container and a task timeout.
    let mut env = fake.env();
    env.insert("DATAHUB_EXECUTOR_CLOUD_RUN_CONTAINER".into(), "ingest".into());
    env.insert("DATAHUB_EXECUTOR_CLOUD_RUN_TASK_TIMEOUT".into(), "7200".into());
    fake.launcher_with(env).launch(&spec).await.expect("launched");
    let body = fake.cloud_run_calls().last().expect("a call").json();
    assert_eq!(body.pointer("/overrides/containerOverrides/0/name"), Some(&json!("ingest")));
    assert_eq!(body.pointer("/overrides/timeout"), Some(&json!("7200s")));
    assert_eq!(body.pointer("/overrides/containerOverrides/0/env").and_then(Value::as_array).map(Vec::len), Some(1));
}

#[tokio::test]
async fn running_counts_the_live_executions_of_the_pool_across_pages() {
    let fake = Fake::start().await;
    let launcher = fake.launcher();
    {
        let mut st = fake.state();
        // Finished earlier: not counted.
        st.executions.push(json!({
            "name": format!("{JOB_NAME}/executions/old"), "taskCount": 1, "succeededCount": 1,
            "completionTime": "2026-02-01T00:00:00Z",
            "template": {"containers": [{"env": [{"name": JOB_SPEC_ENV, "value": spec("old", "remote", 1.0).to_json()}]}]}
        }));
        // Started by hand, without overrides: no pool.
        st.executions.push(json!({
            "name": format!("{JOB_NAME}/executions/manual"), "taskCount": 1, "runningCount": 1,
            "template": {"containers": [{"env": [{"name": "DATAHUB_GMS_URL", "value": "x"}]}]}
        }));
    }
    let a1 = launcher.launch(&spec("a1", "remote", 0.25)).await.expect("a1");
    let a2 = launcher.launch(&spec("a2", "remote", 0.5)).await.expect("a2");
    launcher.launch(&spec("b1", "other-pool", 1.0)).await.expect("b1");

    let before = fake.requests_to("/executions").len();
    let mut running = launcher.running("remote").await.expect("running");
    running.sort_by(|x, y| x.exec_id.cmp(&y.exec_id));
    assert_eq!(running.len(), 2, "{running:?}");
    assert_eq!((running[0].exec_id.as_str(), running[0].weight, running[0].id.as_str()), ("a1", 0.25, a1.id.as_str()));
    assert_eq!((running[1].exec_id.as_str(), running[1].weight, running[1].id.as_str()), ("a2", 0.5, a2.id.as_str()));
    assert_eq!(running[0].started_ms, Some(1_772_359_201_500), "from startTime 2026-03-01T10:00:01.5Z");
    let lists = fake.requests_to("/executions");
    assert_eq!(lists.len() - before, 3, "5 executions, 2 a page: 3 pages");
    let lists = &lists[before..];
    assert_eq!(lists[0].query, "pageSize=100");
    assert_eq!(lists[1].query, "pageSize=100&pageToken=2");
    assert_eq!(lists[2].query, "pageSize=100&pageToken=4");
    assert!(lists.iter().all(|r| r.method == "GET" && r.path == format!("/v2/{JOB_NAME}/executions")));

    let other = launcher.running("other-pool").await.expect("running");
    assert_eq!(other.iter().map(|j| (j.exec_id.as_str(), j.weight)).collect::<Vec<_>>(), [("b1", 1.0)]);
    assert!(launcher.running("nobody").await.expect("running").is_empty());

    // A stopped execution is no longer counted.
    launcher.stop(&a1.id, "capacity race").await.expect("stopped");
    let running = launcher.running("remote").await.expect("running");
    assert_eq!(running.iter().map(|j| j.exec_id.as_str()).collect::<Vec<_>>(), ["a2"]);
}

#[tokio::test]
async fn stop_cancels_the_execution() {
    let fake = Fake::start().await;
    let launcher = fake.launcher();
    let launched = launcher.launch(&spec("e-stop", "remote", 0.25)).await.expect("launched");

    launcher.stop(&launched.id, "lost the capacity race").await.expect("cancelled");
    let cancel = fake.cloud_run_calls().last().cloned().expect("a call");
    assert_eq!(cancel.method, "POST");
    assert_eq!(cancel.path, format!("/v2/{}:cancel", launched.id));
    assert_eq!(cancel.header("authorization"), Some("Bearer meta-token-1"));

    // Gone already: nothing to stop.
    launcher.stop(&format!("{JOB_NAME}/executions/{JOB}-gone"), "r").await.expect("404 counts as stopped");

    // Not an execution of this job: refused without a call.
    let calls = fake.cloud_run_calls().len();
    for foreign in
        ["projects/x/locations/y/jobs/z/executions/e", "../../evil", &format!("{JOB_NAME}/executions/a/b"), ""]
    {
        let err = launcher.stop(foreign, "r").await.expect_err("refused");
        assert!(!err.is_transient(), "{err}");
    }
    assert_eq!(fake.cloud_run_calls().len(), calls);

    fake.fail(":cancel", 403);
    let err = launcher.stop(&launched.id, "r").await.expect_err("denied");
    assert!(matches!(err, LaunchError::Permanent { .. }), "{err}");
}

#[tokio::test]
async fn job_env_names_are_read_from_the_job_once() {
    let fake = Fake::start().await;
    let launcher = fake.launcher();
    let names = launcher.job_env_names().await.expect("names");
    assert_eq!(names.into_iter().collect::<Vec<_>>(), ["DATAHUB_GMS_TOKEN", "DATAHUB_GMS_URL", "PG_PASSWORD"]);
    launcher.job_env_names().await.expect("names again");
    let gets: Vec<Rec> = fake.cloud_run_calls();
    assert_eq!(gets.len(), 1, "cached: {gets:?}");
    assert_eq!((gets[0].method.as_str(), gets[0].path.as_str()), ("GET", format!("/v2/{JOB_NAME}").as_str()));

    // A failure is not cached.
    let fake = Fake::start().await;
    let launcher = fake.launcher();
    fake.fail(JOB, 503);
    assert!(launcher.job_env_names().await.expect_err("unavailable").is_transient());
    fake.heal();
    assert_eq!(launcher.job_env_names().await.expect("names").len(), 3);

    // A named container that the job does not have: no names.
    let mut env = fake.env();
    env.insert("DATAHUB_EXECUTOR_CLOUD_RUN_CONTAINER".into(), "sidecar".into());
    assert!(fake.launcher_with(env).job_env_names().await.expect("names").is_empty());
}

#[tokio::test]
async fn errors_are_permanent_or_transient_and_never_quote_the_spec() {
    let fake = Fake::start().await;
    let launcher = fake.launcher();
    let spec = spec("e-err", "remote", 0.25);

    fake.fail(":run", 403);
    let err = launcher.launch(&spec).await.expect_err("denied");
    assert!(matches!(err, LaunchError::Permanent { launcher: "cloud-run", .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("run job") && text.contains("403") && text.contains("PERMISSION_DENIED"), "{text}");
    assert!(!text.contains("PG_PASSWORD") && !text.contains(JOB_SPEC_ENV), "{text}");

    for status in [503, 429] {
        fake.heal();
        fake.fail(":run", status);
        let err = launcher.launch(&spec).await.expect_err("unavailable");
        assert!(err.is_transient(), "{status}: {err}");
        assert!(err.to_string().contains(&status.to_string()));
    }
    fake.heal();
    fake.fail("/executions", 503);
    assert!(launcher.running("remote").await.expect_err("unavailable").is_transient());
    fake.heal();
    fake.fail("/executions", 404);
    assert!(!launcher.running("remote").await.expect_err("no such job").is_transient());

    // Nothing listens: transient.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr");
    let mut env = fake.env();
    env.insert("DATAHUB_EXECUTOR_CLOUD_RUN_API_BASE".into(), format!("http://{closed}"));
    let err = fake.launcher_with(env.clone()).launch(&spec).await.expect_err("unreachable");
    assert!(err.is_transient(), "{err}");
    // No metadata server either: transient, and the call is named.
    env.insert("GCE_METADATA_HOST".into(), closed.to_string());
    let err = fake.launcher_with(env).launch(&spec).await.expect_err("no token");
    assert!(err.is_transient() && err.to_string().contains("access token"), "{err}");
}

#[tokio::test]
async fn the_token_is_cached_and_refreshed_a_minute_before_expiry() {
    let fake = Fake::start().await;
    let launcher = fake.launcher();
    for i in 0..3 {
        launcher.launch(&spec(&format!("c{i}"), "remote", 0.25)).await.expect("launched");
    }
    launcher.running("remote").await.expect("running");
    assert_eq!(fake.metadata_calls(), 1, "one token for every call");
    assert!(fake.cloud_run_calls().iter().all(|r| r.header("authorization") == Some("Bearer meta-token-1")));

    // A token that lives 61 s is refreshed after 1 s (60 s early).
    let fake = Fake::start().await;
    fake.state().token_expires_in = 61;
    let launcher = fake.launcher();
    launcher.launch(&spec("r1", "remote", 0.25)).await.expect("launched");
    launcher.launch(&spec("r2", "remote", 0.25)).await.expect("launched");
    assert_eq!(fake.metadata_calls(), 1);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    launcher.launch(&spec("r3", "remote", 0.25)).await.expect("launched");
    assert_eq!(fake.metadata_calls(), 2, "refreshed");
    let auths: Vec<String> =
        fake.cloud_run_calls().iter().map(|r| r.header("authorization").unwrap_or_default().to_owned()).collect();
    assert_eq!(auths, ["Bearer meta-token-1", "Bearer meta-token-1", "Bearer meta-token-2"]);
}

#[tokio::test]
async fn a_static_token_needs_no_metadata_server() {
    let fake = Fake::start().await;
    let mut env = fake.env();
    env.insert("DATAHUB_EXECUTOR_GCP_ACCESS_TOKEN".into(), "injected-token".into());
    let launcher = fake.launcher_with(env);
    launcher.launch(&spec("s1", "remote", 0.25)).await.expect("launched");
    assert_eq!(fake.metadata_calls(), 0);
    assert_eq!(fake.cloud_run_calls()[0].header("authorization"), Some("Bearer injected-token"));
    assert!(!format!("{launcher:?}").contains("injected-token"));
}

/// `application/x-www-form-urlencoded` and percent-decoding.
fn form_decode(text: &str) -> BTreeMap<String, String> {
    text.split('&').filter_map(|kv| kv.split_once('=')).map(|(k, v)| (percent_decode(k), percent_decode(v))).collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).expect("ascii");
                out.push(u8::from_str_radix(hex, 16).expect("hex"));
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).expect("utf-8")
}

fn write_external_account(fake: &Fake, impersonate: bool) -> tempfile::NamedTempFile {
    let mut file = json!({
        "type": "external_account",
        "audience": AUDIENCE,
        "subject_token_type": "urn:ietf:params:aws:token-type:aws4_request",
        "token_url": format!("{}/sts/v1/token", fake.url()),
        "credential_source": {
            "environment_id": "aws1",
            "region_url": "http://169.254.169.254/latest/meta-data/placement/availability-zone",
            "url": "http://169.254.169.254/latest/meta-data/iam/security-credentials",
            "regional_cred_verification_url": "https://sts.{region}.amazonaws.com?Action=GetCallerIdentity&Version=2011-06-15"
        }
    });
    if impersonate {
        file["service_account_impersonation_url"] = json!(format!("{}{IMPERSONATE_PATH}", fake.url()));
        file["service_account_impersonation"] = json!({"token_lifetime_seconds": 1800});
    }
    let f = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(f.path(), file.to_string()).expect("write the credentials file");
    f
}

#[tokio::test]
async fn aws_workload_identity_federation_exchanges_a_signed_get_caller_identity() {
    let fake = Fake::start().await;
    let creds = write_external_account(&fake, true);
    let mut env = fake.env();
    env.insert("GOOGLE_APPLICATION_CREDENTIALS".into(), creds.path().display().to_string());
    env.insert("AWS_ACCESS_KEY_ID".into(), "ASIAEXAMPLEKEY".into());
    env.insert("AWS_SECRET_ACCESS_KEY".into(), "aws-secret-never-sent".into());
    env.insert("AWS_SESSION_TOKEN".into(), "aws-session/token+=".into());
    env.insert("AWS_REGION".into(), "eu-central-1".into());
    let launcher = fake.launcher_with(env.clone());
    launcher.launch(&spec("w1", "remote", 0.25)).await.expect("launched");
    launcher.launch(&spec("w2", "remote", 0.25)).await.expect("launched");

    assert_eq!(fake.metadata_calls(), 0, "federation does not ask the metadata server");
    let sts = fake.requests_to("/sts/v1/token");
    assert_eq!(sts.len(), 1, "the federated token is cached");
    assert_eq!(sts[0].method, "POST");
    assert_eq!(sts[0].header("content-type"), Some("application/x-www-form-urlencoded"));
    let form = form_decode(&sts[0].body);
    assert_eq!(form["grant_type"], "urn:ietf:params:oauth:grant-type:token-exchange");
    assert_eq!(form["audience"], AUDIENCE);
    assert_eq!(form["scope"], "https://www.googleapis.com/auth/cloud-platform");
    assert_eq!(form["requested_token_type"], "urn:ietf:params:oauth:token-type:access_token");
    assert_eq!(form["subject_token_type"], "urn:ietf:params:aws:token-type:aws4_request");
    assert!(!sts[0].body.contains("aws-secret-never-sent"));

    // The subject token: a URL-encoded JSON of the signed GetCallerIdentity request.
    let subject: Value = serde_json::from_str(&percent_decode(&form["subject_token"])).expect("subject token JSON");
    assert_eq!(subject["method"], "POST");
    assert_eq!(subject["url"], "https://sts.eu-central-1.amazonaws.com?Action=GetCallerIdentity&Version=2011-06-15");
    let headers: BTreeMap<String, String> = subject["headers"]
        .as_array()
        .expect("a header list")
        .iter()
        .map(|h| (h["key"].as_str().expect("key").to_owned(), h["value"].as_str().expect("value").to_owned()))
        .collect();
    assert_eq!(
        headers.keys().map(String::as_str).collect::<Vec<_>>(),
        ["Authorization", "host", "x-amz-date", "x-amz-security-token", "x-goog-cloud-target-resource"]
    );
    assert_eq!(headers["host"], "sts.eu-central-1.amazonaws.com");
    assert_eq!(headers["x-amz-security-token"], "aws-session/token+=");
    assert_eq!(headers["x-goog-cloud-target-resource"], AUDIENCE);
    let date = &headers["x-amz-date"];
    assert!(date.len() == 16 && date.ends_with('Z') && date.as_bytes()[8] == b'T', "{date}");
    let auth = &headers["Authorization"];
    let prefix = format!(
        "AWS4-HMAC-SHA256 Credential=ASIAEXAMPLEKEY/{}/eu-central-1/sts/aws4_request, \
         SignedHeaders=host;x-amz-date;x-amz-security-token;x-goog-cloud-target-resource, Signature=",
        &date[..8]
    );
    assert!(auth.starts_with(&prefix), "{auth}");
    let signature = &auth[prefix.len()..];
    assert!(signature.len() == 64 && signature.bytes().all(|b| b.is_ascii_hexdigit()), "{signature}");

    // Impersonation with the STS token; Cloud Run gets the service account's token.
    let iam = fake.requests_to(IMPERSONATE_PATH);
    assert_eq!(iam.len(), 1);
    assert_eq!(iam[0].header("authorization"), Some("Bearer sts-token"));
    assert_eq!(
        iam[0].json(),
        json!({"scope": ["https://www.googleapis.com/auth/cloud-platform"], "lifetime": "1800s"})
    );
    let runs = fake.requests_to(":run");
    assert_eq!(runs.len(), 2);
    assert!(runs.iter().all(|r| r.header("authorization") == Some("Bearer iam-token")));

    // Without impersonation the STS token itself is used.
    let fake = Fake::start().await;
    let creds = write_external_account(&fake, false);
    let mut env2 = fake.env();
    for k in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION"] {
        env2.insert(k.into(), env[k].clone());
    }
    env2.insert("GOOGLE_APPLICATION_CREDENTIALS".into(), creds.path().display().to_string());
    fake.launcher_with(env2.clone()).launch(&spec("w3", "remote", 0.25)).await.expect("launched");
    assert!(fake.requests_to(IMPERSONATE_PATH).is_empty());
    assert_eq!(fake.requests_to(":run")[0].header("authorization"), Some("Bearer sts-token"));

    // Missing AWS credentials are a configuration error naming the variable.
    env2.remove("AWS_SECRET_ACCESS_KEY");
    let err = CloudRunLauncher::from_lookup(|k| env2.get(k).cloned()).expect_err("no AWS secret key");
    assert_eq!(err.var, "AWS_SECRET_ACCESS_KEY");
}
