//! The `gcp-sm` secret store against an HTTP fake of the Secret Manager v1 REST API and the GCE
//! metadata server (one axum server on a free loopback port that records every request). The
//! store is built from environment-style variables, as the job and the admission build it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::json;
use shared::cloud_secrets::{CloudSecretsConfig, GcpSecretManagerStore, cloud_stores};
use shared::gcp::token_source_from_env;
use shared::secrets::{SecretStore, resolve};

const PROJECT: &str = "acme-data";
const PREFIX: &str = "datahub-";
const METADATA_PATH: &str = "/computeMetadata/v1/instance/service-accounts/default/token";
const SECRETS_PATH: &str = "/v1/projects/acme-data/secrets";

#[derive(Clone, Debug)]
struct Rec {
    path: String,
    query: String,
    authorization: Option<String>,
}

struct FakeState {
    requests: Vec<Rec>,
    /// Secret id → value bytes (base64-encoded when served).
    secrets: BTreeMap<String, Vec<u8>>,
    /// Secret id → HTTP status every access to it gets.
    faults: BTreeMap<String, u16>,
    tokens_issued: usize,
    token_expires_in: u64,
    /// The most secrets on one list page, whatever `pageSize` asks.
    page_limit: usize,
    /// How long an `:access` answer is held back, to observe concurrency.
    access_delay: Duration,
    in_flight: usize,
    max_in_flight: usize,
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
            secrets: BTreeMap::new(),
            faults: BTreeMap::new(),
            tokens_issued: 0,
            token_expires_in: 3599,
            page_limit: 2,
            access_delay: Duration::ZERO,
            in_flight: 0,
            max_in_flight: 0,
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let app = Router::new().fallback(handle).with_state(Arc::clone(&state));
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                eprintln!("fake Secret Manager stopped: {e}");
            }
        });
        Fake { addr, state }
    }

    fn state(&self) -> MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn put(&self, id: &str, value: impl Into<Vec<u8>>) {
        self.state().secrets.insert(id.to_owned(), value.into());
    }

    fn requests_to(&self, fragment: &str) -> Vec<Rec> {
        self.state().requests.iter().filter(|r| r.path.contains(fragment)).cloned().collect()
    }

    fn metadata_calls(&self) -> usize {
        self.requests_to(METADATA_PATH).len()
    }

    /// The variables of an executor whose gcp-sm store talks to this fake and its metadata server.
    fn env(&self) -> BTreeMap<String, String> {
        [
            ("DATAHUB_EXECUTOR_GCP_SM_ENABLED", "true".to_owned()),
            ("DATAHUB_EXECUTOR_GCP_SM_PROJECT_ID", PROJECT.to_owned()),
            ("DATAHUB_EXECUTOR_GCP_SM_API_BASE", format!("http://{}", self.addr)),
            ("GCE_METADATA_HOST", self.addr.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    fn store(&self) -> GcpSecretManagerStore {
        let env = self.env();
        let lookup = |k: &str| env.get(k).cloned();
        let config = CloudSecretsConfig::from_lookup(lookup).expect("config");
        let gcp = config.gcp.expect("gcp-sm enabled");
        GcpSecretManagerStore::new(&gcp, token_source_from_env(lookup).expect("token source")).expect("store")
    }
}

fn google_error(status: u16) -> Response {
    let name = match status {
        401 => "UNAUTHENTICATED",
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
    query.split('&').filter_map(|kv| kv.split_once('=')).find(|(k, _)| *k == name).map(|(_, v)| percent_decode(v))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(b) = s.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn handle(State(state): State<Arc<Mutex<FakeState>>>, req: Request) -> Response {
    let rec = Rec {
        path: req.uri().path().to_owned(),
        query: req.uri().query().unwrap_or("").to_owned(),
        authorization: req.headers().get("authorization").and_then(|v| v.to_str().ok()).map(str::to_owned),
    };
    let lock = || state.lock().unwrap_or_else(|e| e.into_inner());
    lock().requests.push(rec.clone());

    if rec.path == METADATA_PATH {
        if req.headers().get("metadata-flavor").and_then(|v| v.to_str().ok()) != Some("Google") {
            return (StatusCode::FORBIDDEN, "Missing Metadata-Flavor:Google header").into_response();
        }
        let mut st = lock();
        st.tokens_issued += 1;
        let body = json!({"access_token": format!("meta-token-{}", st.tokens_issued), "expires_in": st.token_expires_in, "token_type": "Bearer"});
        return axum::Json(body).into_response();
    }
    if !rec.authorization.as_deref().is_some_and(|a| a.starts_with("Bearer meta-token-")) {
        return google_error(401);
    }
    if rec.path == SECRETS_PATH {
        let st = lock();
        let size = query_param(&rec.query, "pageSize").and_then(|s| s.parse::<usize>().ok()).unwrap_or(25);
        let size = size.min(st.page_limit);
        let start = query_param(&rec.query, "pageToken").and_then(|s| s.parse::<usize>().ok()).unwrap_or(0);
        // `name:x` matches secrets whose name contains x (Google's `:` is a "has" match).
        let needle = query_param(&rec.query, "filter").and_then(|f| f.strip_prefix("name:").map(str::to_owned));
        let all: Vec<&String> =
            st.secrets.keys().filter(|id| needle.as_deref().is_none_or(|n| id.contains(n))).collect();
        let page: Vec<_> = all
            .iter()
            .skip(start)
            .take(size)
            .map(|id| json!({"name": format!("projects/123456/secrets/{id}"), "createTime": "2026-01-01T00:00:00Z"}))
            .collect();
        let mut body = json!({"secrets": page, "totalSize": all.len()});
        if start + size < all.len() {
            body["nextPageToken"] = json!((start + size).to_string());
        }
        return axum::Json(body).into_response();
    }
    let Some(id) = rec
        .path
        .strip_prefix(&format!("{SECRETS_PATH}/"))
        .and_then(|rest| rest.strip_suffix("/versions/latest:access"))
        .map(str::to_owned)
    else {
        return google_error(404);
    };
    let delay = {
        let mut st = lock();
        st.in_flight += 1;
        st.max_in_flight = st.max_in_flight.max(st.in_flight);
        st.access_delay
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let mut st = lock();
    st.in_flight -= 1;
    if let Some(status) = st.faults.get(&id) {
        return google_error(*status);
    }
    match st.secrets.get(&id) {
        Some(value) => {
            let data = base64::engine::general_purpose::STANDARD.encode(value);
            axum::Json(json!({
                "name": format!("projects/123456/secrets/{id}/versions/3"),
                "payload": {"data": data, "dataCrc32c": "12345"}
            }))
            .into_response()
        }
        None => google_error(404),
    }
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn values_come_back_byte_for_byte_and_missing_ones_are_absent() {
    let fake = Fake::start().await;
    let mut long = String::new();
    while long.len() < 64 * 1024 - 16 {
        long.push_str("line é 中 😀 \"q\" 'q' \\ ${X}\n");
    }
    let expected: BTreeMap<String, String> = [
        ("NEWLINES", "first line\nsecond line\r\nthird\n".to_owned()),
        ("QUOTES", r#"both "double" and 'single' quotes"#.to_owned()),
        ("BACKSLASH", r"back\slash \n is not a newline \\ \".to_owned()),
        ("DOLLARS", "$HOME ${X} $${Y} ${Z:-default} $".to_owned()),
        ("UNICODE", "é 中 😀 ünïcödé".to_owned()),
        ("SPACES", "  leading and trailing  ".to_owned()),
        ("LONG", long),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    for (name, value) in &expected {
        fake.put(&format!("{PREFIX}{name}"), value.as_bytes());
    }
    fake.put("NOT_PREFIXED", "wrong");

    // Built like the executor builds it: config and token source from variables, behind the cache.
    let env = fake.env();
    let config = CloudSecretsConfig::from_lookup(|k| env.get(k).cloned()).expect("config");
    let stores = cloud_stores(&config, |k| env.get(k).cloned()).await.expect("stores");
    assert_eq!(stores.iter().map(|s| s.name()).collect::<Vec<_>>(), ["gcp-sm"]);

    let mut wanted: Vec<String> = expected.keys().cloned().collect();
    wanted.extend(names(&["MISSING", "NOT_PREFIXED", "BAD.NAME"]));
    let got = resolve(&stores, &wanted).await.expect("404 is not an error");
    assert_eq!(got.len(), expected.len(), "{:?}", got.keys().collect::<Vec<_>>());
    for (name, value) in &expected {
        assert_eq!(got[name].as_bytes(), value.as_bytes(), "{name} byte for byte");
    }

    let accessed: BTreeSet<String> = fake.requests_to(":access").into_iter().map(|r| r.path).collect();
    assert!(accessed.contains("/v1/projects/acme-data/secrets/datahub-MISSING/versions/latest:access"));
    assert!(accessed.iter().all(|p| p.starts_with("/v1/projects/acme-data/secrets/datahub-")), "{accessed:?}");
    assert!(!accessed.iter().any(|p| p.contains("BAD.NAME")), "an impossible id is never sent");
    assert!(fake.requests_to(":access").iter().all(|r| r.authorization.as_deref() == Some("Bearer meta-token-1")));

    // Served from the cache now: no new request.
    let before = fake.requests_to(":access").len();
    let again = resolve(&stores, &names(&["UNICODE"])).await.expect("cached");
    assert_eq!(again["UNICODE"], expected["UNICODE"]);
    assert_eq!(fake.requests_to(":access").len(), before);
}

#[tokio::test]
async fn denied_and_unavailable_are_errors_naming_the_store_and_the_secret() {
    let fake = Fake::start().await;
    fake.put("datahub-OK", "fine-value");
    fake.put("datahub-DENIED", "denied-value-never-shown");
    fake.state().faults.insert("datahub-DENIED".into(), 403);
    let store = fake.store();

    let e = store.get(&names(&["OK", "DENIED"])).await.expect_err("403");
    assert_eq!((e.store, e.names.clone()), ("gcp-sm", names(&["DENIED"])));
    let text = e.to_string();
    assert!(text.contains("`gcp-sm`") && text.contains("DENIED"), "{text}");
    assert!(text.contains("HTTP 403") && text.contains("PERMISSION_DENIED"), "{text}");
    assert!(!text.contains("transient") && !text.contains("denied-value-never-shown"), "{text}");

    fake.state().faults.insert("datahub-DENIED".into(), 503);
    let e = store.get(&names(&["DENIED"])).await.expect_err("503");
    assert!(e.reason.contains("transient") && e.reason.contains("HTTP 503: UNAVAILABLE"), "{e}");
    fake.state().faults.insert("datahub-DENIED".into(), 429);
    let e = store.get(&names(&["DENIED"])).await.expect_err("429");
    assert!(e.reason.contains("transient") && e.reason.contains("429"), "{e}");

    // A value that is not UTF-8 text is an error naming the secret.
    fake.put("datahub-BINARY", vec![0xff, 0xfe, 0x00]);
    let e = store.get(&names(&["BINARY"])).await.expect_err("binary");
    assert_eq!(e.names, names(&["BINARY"]));

    // An unreachable API is a transient error too.
    let mut env = fake.env();
    env.insert("DATAHUB_EXECUTOR_GCP_SM_API_BASE".into(), "http://127.0.0.1:9".into());
    let config = CloudSecretsConfig::from_lookup(|k| env.get(k).cloned()).expect("config");
    let gcp = config.gcp.expect("gcp");
    let tokens = token_source_from_env(|k| env.get(k).cloned()).expect("tokens");
    let down = GcpSecretManagerStore::new(&gcp, tokens).expect("store");
    let e = down.get(&names(&["OK"])).await.expect_err("unreachable");
    assert!(e.reason.contains("transient") && e.store == "gcp-sm", "{e}");
}

#[tokio::test]
async fn the_token_is_reused_and_fetched_again_when_it_expires() {
    let fake = Fake::start().await;
    fake.put("datahub-A", "a");
    let store = fake.store();
    for _ in 0..3 {
        store.get(&names(&["A"])).await.expect("get");
    }
    assert_eq!(fake.metadata_calls(), 1, "one token for every call");

    // A token that lives 60 s is due for refresh at once (tokens are refreshed 60 s early).
    let fake = Fake::start().await;
    fake.put("datahub-A", "a");
    fake.state().token_expires_in = 60;
    let store = fake.store();
    for _ in 0..3 {
        store.get(&names(&["A"])).await.expect("get");
    }
    assert_eq!(fake.metadata_calls(), 3, "fetched again");
    let auths: Vec<String> =
        fake.requests_to(":access").into_iter().map(|r| r.authorization.unwrap_or_default()).collect();
    assert_eq!(auths, ["Bearer meta-token-1", "Bearer meta-token-2", "Bearer meta-token-3"]);
}

#[tokio::test]
async fn lookups_run_concurrently_at_most_eight_at_a_time() {
    let fake = Fake::start().await;
    let wanted: Vec<String> = (0..20).map(|i| format!("S{i:02}")).collect();
    for n in &wanted {
        fake.put(&format!("{PREFIX}{n}"), format!("value-{n}"));
    }
    fake.state().access_delay = Duration::from_millis(30);
    let got = fake.store().get(&wanted).await.expect("get");
    assert_eq!(got.len(), 20);
    assert_eq!(got["S07"], "value-S07");
    let max = fake.state().max_in_flight;
    assert!((2..=8).contains(&max), "at most 8 at once, and more than one: {max}");
}

#[tokio::test]
async fn names_follow_pages_and_keep_only_the_prefix() {
    let fake = Fake::start().await;
    for n in ["A", "B", "C", "D", "E"] {
        fake.put(&format!("{PREFIX}{n}"), "v");
    }
    fake.put("other-X", "v");
    fake.put("x-datahub-INSIDE", "v");
    let got = fake.store().names().await.expect("names");
    assert_eq!(got, ["A", "B", "C", "D", "E"].into_iter().map(str::to_owned).collect::<BTreeSet<_>>());

    let lists = fake.requests_to(SECRETS_PATH);
    assert!(lists.iter().all(|r| !r.path.contains(":access")), "no value was read");
    assert_eq!(lists.len(), 3, "6 matching secrets, 2 a page");
    for r in &lists {
        assert_eq!(query_param(&r.query, "filter").as_deref(), Some("name:datahub-"), "{}", r.query);
        assert_eq!(query_param(&r.query, "pageSize").as_deref(), Some("250"), "{}", r.query);
    }
    let tokens: Vec<Option<String>> = lists.iter().map(|r| query_param(&r.query, "pageToken")).collect();
    assert_eq!(tokens, [None, Some("2".to_owned()), Some("4".to_owned())]);
}
