//! `LambdaApi`: a fake AWS Lambda Runtime API, to run a real Lambda binary (`lambda_runtime`) in
//! tests and benchmarks without Docker (`reference/aws-gcp.md` §5).
//!
//! It listens on `127.0.0.1:<free port>` (give [`LambdaApi::addr_string`] to the binary as
//! `AWS_LAMBDA_RUNTIME_API`) and serves:
//!
//! | Request | Answer |
//! |---|---|
//! | `GET /2018-06-01/runtime/invocation/next` | the next event pushed with [`LambdaApi::invoke`]; with none queued it waits (long poll) until one is pushed |
//! | `POST /2018-06-01/runtime/invocation/{id}/response` | 202; the body is recorded as the invocation's response |
//! | `POST /2018-06-01/runtime/invocation/{id}/error` | 202; the body is recorded as the invocation's error |
//! | `POST /2018-06-01/runtime/init/error` | 202; the body is recorded ([`LambdaApi::init_errors`]) |
//!
//! Every wait is driven by events (no polling). The server runs on its own thread with its own
//! Tokio runtime (so it answers while a test blocks its own runtime) and stops on drop. Use one
//! `LambdaApi` per runtime process: a long poll left open by a killed process could take the next
//! event.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::sync::{Notify, oneshot, watch};

/// The ARN the fake reports as `Lambda-Runtime-Invoked-Function-Arn`.
pub const FUNCTION_ARN: &str = "arn:aws:lambda:us-east-1:123456789012:function:admission";
/// How long an invocation may run, as announced in `Lambda-Runtime-Deadline-Ms`.
const DEADLINE: Duration = Duration::from_secs(60);

/// What the runtime posted for one invocation.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// `POST .../invocation/{id}/response`
    Response(Value),
    /// `POST .../invocation/{id}/error`
    Error(Value),
}

#[derive(Debug, Default)]
struct Data {
    queue: VecDeque<(String, Value)>,
    outcomes: HashMap<String, Outcome>,
    init_errors: Vec<Value>,
    first_next_at: Option<Instant>,
    next_calls: usize,
}

#[derive(Debug)]
struct Inner {
    data: Mutex<Data>,
    /// Signalled when an event is queued (wakes one long poll).
    queued: Notify,
    /// Bumped on every `next` call and every posted outcome; waiters subscribe to it.
    changed: watch::Sender<u64>,
}

impl Inner {
    fn data(&self) -> MutexGuard<'_, Data> {
        self.data.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n += 1);
    }
}

/// A fake Lambda Runtime API. See the module documentation.
pub struct LambdaApi {
    addr: SocketAddr,
    inner: Arc<Inner>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for LambdaApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LambdaApi").field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl LambdaApi {
    /// Starts the fake on `127.0.0.1:<free port>`. The socket is bound before this returns, so a
    /// runtime may connect at once. Panics if it cannot bind (a test-setup failure).
    pub fn start() -> LambdaApi {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("Lambda API: bind 127.0.0.1:0");
        listener.set_nonblocking(true).expect("Lambda API: set the listener non-blocking");
        let addr = listener.local_addr().expect("Lambda API: read the bound address");
        let inner = Arc::new(Inner {
            data: Mutex::new(Data::default()),
            queued: Notify::new(),
            changed: watch::Sender::new(0),
        });
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let state = Arc::clone(&inner);
        let thread = std::thread::Builder::new()
            .name(format!("lambda-api-{}", addr.port()))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("Lambda API: build its Tokio runtime");
                runtime.block_on(async move {
                    let listener =
                        tokio::net::TcpListener::from_std(listener).expect("Lambda API: register the listener");
                    let app = Router::new()
                        .route("/2018-06-01/runtime/invocation/next", get(next))
                        .route("/2018-06-01/runtime/invocation/{id}/response", post(response))
                        .route("/2018-06-01/runtime/invocation/{id}/error", post(error))
                        .route("/2018-06-01/runtime/init/error", post(init_error))
                        .with_state(state);
                    tokio::select! {
                        served = axum::serve(listener, app) => {
                            if let Err(e) = served {
                                eprintln!("Lambda API on {addr} stopped: {e}");
                            }
                        }
                        _ = stop_rx => {}
                    }
                });
                // Dropping the runtime cancels open long polls.
            })
            .expect("Lambda API: spawn its thread");
        LambdaApi { addr, inner, stop: Some(stop_tx), thread: Some(thread) }
    }

    /// `127.0.0.1:PORT`: the value of `AWS_LAMBDA_RUNTIME_API`.
    pub fn addr_string(&self) -> String {
        self.addr.to_string()
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Queues an event for the runtime's next `GET .../invocation/next` and returns its request id.
    pub fn invoke(&self, event: Value) -> String {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default();
        // UUID-shaped, like Lambda's request ids.
        let id = format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            (nanos >> 32) as u32,
            (nanos >> 16) as u16,
            (nanos & 0xfff) as u16,
            std::process::id() & 0xfff,
            n
        );
        self.inner.data().queue.push_back((id.clone(), event));
        self.inner.queued.notify_one();
        id
    }

    /// When the runtime first asked for work (its first `GET .../invocation/next`): "ready".
    pub fn first_next_at(&self) -> Option<Instant> {
        self.inner.data().first_next_at
    }

    /// How many `GET .../invocation/next` calls arrived.
    pub fn next_calls(&self) -> usize {
        self.inner.data().next_calls
    }

    /// Waits (on an event) until the runtime first asks for work, and returns when it did.
    /// On timeout the error includes any init error the runtime posted.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<Instant, String> {
        self.wait_for(timeout, |d| d.first_next_at)
            .await
            .map_err(|init| format!("the runtime did not ask for work within {timeout:?}{init}"))
    }

    /// Waits (on an event) for the runtime's answer to invocation `id`: `Ok` with the response
    /// body, `Err` if the runtime posted an error, nothing came within `timeout`, or the fake stopped.
    pub async fn wait_response(&self, id: &str, timeout: Duration) -> Result<Value, String> {
        match self.wait_for(timeout, |d| d.outcomes.get(id).cloned()).await {
            Ok(Outcome::Response(v)) => Ok(v),
            Ok(Outcome::Error(e)) => Err(format!("invocation {id} failed: {e}")),
            Err(init) => Err(format!("no answer to invocation {id} within {timeout:?}{init}")),
        }
    }

    /// What the runtime posted for invocation `id`, if anything yet.
    pub fn outcome(&self, id: &str) -> Option<Outcome> {
        self.inner.data().outcomes.get(id).cloned()
    }

    /// The bodies posted to `/2018-06-01/runtime/init/error`.
    pub fn init_errors(&self) -> Vec<Value> {
        self.inner.data().init_errors.clone()
    }

    /// Waits until `found` returns something; `Err` carries a note on init errors.
    async fn wait_for<T>(&self, timeout: Duration, found: impl Fn(&Data) -> Option<T>) -> Result<T, String> {
        let mut changed = self.inner.changed.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            changed.borrow_and_update();
            if let Some(t) = found(&self.inner.data()) {
                return Ok(t);
            }
            match tokio::time::timeout_at(deadline, changed.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err("; the fake Lambda API stopped".to_owned()),
                Err(_) => {
                    let init = self.init_errors();
                    return Err(if init.is_empty() { String::new() } else { format!("; init errors: {init:?}") });
                }
            }
        }
    }
}

impl Drop for LambdaApi {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            // The server thread may already be gone; then there is nothing to stop.
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn next(State(inner): State<Arc<Inner>>) -> Response {
    {
        let mut d = inner.data();
        d.next_calls += 1;
        d.first_next_at.get_or_insert_with(Instant::now);
    }
    inner.bump();
    let (id, event) = loop {
        if let Some(item) = inner.data().queue.pop_front() {
            break item;
        }
        // `notify_one` keeps a permit when nobody waits, so an event pushed between the check
        // and this await is not missed.
        inner.queued.notified().await;
    };
    let deadline_ms = SystemTime::now()
        .checked_add(DEADLINE)
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_millis())
        .unwrap_or_default();
    let trace = format!("Root=1-{:08x}-{:024x};Parent={:016x};Sampled=0", deadline_ms / 1000, deadline_ms, deadline_ms);
    let mut resp = (StatusCode::OK, event.to_string()).into_response();
    let h = resp.headers_mut();
    let mut set = |name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(name, v);
        }
    };
    set("lambda-runtime-aws-request-id", id);
    set("lambda-runtime-deadline-ms", deadline_ms.to_string());
    set("lambda-runtime-invoked-function-arn", FUNCTION_ARN.to_owned());
    set("lambda-runtime-trace-id", trace);
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn body_json(body: &Bytes) -> Value {
    serde_json::from_slice(body).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()))
}

fn accepted() -> Response {
    (StatusCode::ACCEPTED, axum::Json(json!({"status": "OK"}))).into_response()
}

async fn response(State(inner): State<Arc<Inner>>, Path(id): Path<String>, body: Bytes) -> Response {
    inner.data().outcomes.insert(id, Outcome::Response(body_json(&body)));
    inner.bump();
    accepted()
}

async fn error(State(inner): State<Arc<Inner>>, Path(id): Path<String>, body: Bytes) -> Response {
    inner.data().outcomes.insert(id, Outcome::Error(body_json(&body)));
    inner.bump();
    accepted()
}

async fn init_error(State(inner): State<Arc<Inner>>, body: Bytes) -> Response {
    inner.data().init_errors.push(body_json(&body));
    inner.bump();
    accepted()
}

/// The SQS event Lambda's event source mapping sends for these records
/// `(message_id, body, receipt_handle, approximate_receive_count)` read from `queue_arn`
/// (`arn:aws:sqs:<region>:<account>:<name>`; the region becomes `awsRegion`).
pub fn sqs_event(records: &[(&str, &str, &str, u32)], queue_arn: &str) -> Value {
    let region = queue_arn.split(':').nth(3).filter(|r| !r.is_empty()).unwrap_or("us-east-1");
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or_default();
    let records: Vec<Value> = records
        .iter()
        .map(|(message_id, body, receipt_handle, receive_count)| {
            json!({
                "messageId": message_id,
                "receiptHandle": receipt_handle,
                "body": body,
                "attributes": {
                    "ApproximateReceiveCount": receive_count.to_string(),
                    "SentTimestamp": (now_ms - 25).to_string(),
                    "SenderId": "AIDAIENQZJOLO23YVJ4VO",
                    "ApproximateFirstReceiveTimestamp": (now_ms - 20).to_string(),
                },
                "messageAttributes": {},
                "md5OfBody": md5_hex(body.as_bytes()),
                "eventSource": "aws:sqs",
                "eventSourceARN": queue_arn,
                "awsRegion": region,
            })
        })
        .collect();
    json!({ "Records": records })
}

/// MD5 (RFC 1321) as lower-case hex, for `md5OfBody`.
fn md5_hex(input: &[u8]) -> String {
    const S: [u32; 64] = [
        7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 5, 9, 14, 20, 5, 9, 14, 20, 5, 9, 14, 20, 5, 9, 14,
        20, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21, 6,
        10, 15, 21,
    ];
    let k: Vec<u32> = (0..64).map(|i| ((i as f64 + 1.0).sin().abs() * 4_294_967_296.0) as u32).collect();
    let mut msg = input.to_vec();
    let bit_len = (input.len() as u64).wrapping_mul(8);
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&bit_len.to_le_bytes());
    let (mut a0, mut b0, mut c0, mut d0) = (0x6745_2301u32, 0xefcd_ab89u32, 0x98ba_dcfeu32, 0x1032_5476u32);
    for chunk in msg.chunks_exact(64) {
        let m: Vec<u32> = chunk.chunks_exact(4).map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]])).collect();
        let (mut a, mut b, mut c, mut d) = (a0, b0, c0, d0);
        for i in 0..64 {
            let (f, g) = match i / 16 {
                0 => ((b & c) | (!b & d), i),
                1 => ((d & b) | (!d & c), (5 * i + 1) % 16),
                2 => (b ^ c ^ d, (3 * i + 5) % 16),
                _ => (c ^ (b | !d), (7 * i) % 16),
            };
            let f = f.wrapping_add(a).wrapping_add(k[i]).wrapping_add(m[g]);
            a = d;
            d = c;
            c = b;
            b = b.wrapping_add(f.rotate_left(S[i]));
        }
        a0 = a0.wrapping_add(a);
        b0 = b0.wrapping_add(b);
        c0 = c0.wrapping_add(c);
        d0 = d0.wrapping_add(d);
    }
    [a0, b0, c0, d0].iter().flat_map(|w| w.to_le_bytes()).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_matches_rfc_1321_vectors() {
        assert_eq!(md5_hex(b""), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(md5_hex(b"abc"), "900150983cd24fb0d6963f7d28e17f72");
        assert_eq!(
            md5_hex(b"12345678901234567890123456789012345678901234567890123456789012345678901234567890"),
            "57edf4a22be3c955ac49da2e2107b67a"
        );
    }

    #[test]
    fn sqs_event_has_the_shape_lambda_sends() {
        let ev = sqs_event(&[("m-1", "hello", "rh-1", 2)], "arn:aws:sqs:eu-west-1:123456789012:q");
        let r = &ev["Records"][0];
        assert_eq!(r["messageId"], "m-1");
        assert_eq!(r["attributes"]["ApproximateReceiveCount"], "2");
        assert_eq!(r["md5OfBody"], "5d41402abc4b2a76b9719d911017c592");
        assert_eq!(r["eventSource"], "aws:sqs");
        assert_eq!(r["eventSourceARN"], "arn:aws:sqs:eu-west-1:123456789012:q");
        assert_eq!(r["awsRegion"], "eu-west-1");
        assert_eq!(r["messageAttributes"], json!({}));
    }

    #[tokio::test]
    async fn a_long_poll_gets_an_event_pushed_later_and_the_response_is_recorded() {
        let api = LambdaApi::start();
        let base = format!("http://{}/2018-06-01/runtime", api.addr_string());
        let http = reqwest::Client::new();
        let poll = tokio::spawn({
            let (http, base) = (http.clone(), base.clone());
            async move { http.get(format!("{base}/invocation/next")).send().await }
        });
        api.wait_ready(Duration::from_secs(10)).await.expect("ready");
        assert!(!poll.is_finished(), "next must wait while nothing is queued");
        let id = api.invoke(json!({"hello": "world"}));
        let resp = poll.await.expect("join").expect("next");
        assert_eq!(resp.headers()["lambda-runtime-aws-request-id"], id.as_str());
        assert!(resp.headers().contains_key("lambda-runtime-deadline-ms"));
        assert!(resp.headers().contains_key("lambda-runtime-trace-id"));
        assert_eq!(resp.headers()["lambda-runtime-invoked-function-arn"], FUNCTION_ARN);
        assert_eq!(resp.json::<Value>().await.expect("json"), json!({"hello": "world"}));
        let posted = http
            .post(format!("{base}/invocation/{id}/response"))
            .body(r#"{"batchItemFailures":[]}"#)
            .send()
            .await
            .expect("post");
        assert_eq!(posted.status(), 202);
        let got = api.wait_response(&id, Duration::from_secs(10)).await;
        assert_eq!(got, Ok(json!({"batchItemFailures": []})));
    }
}
