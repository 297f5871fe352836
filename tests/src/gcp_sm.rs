//! A fake of Google's Secret Manager API (`:access` of `versions/latest` and the secrets list),
//! on 127.0.0.1, accepting one static bearer token. Records every request path.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::json;

/// The bearer token the fake accepts.
pub const TOKEN: &str = "gcp-fake-token";

#[derive(Default)]
struct Data {
    secrets: BTreeMap<String, String>,
    paths: Vec<String>,
}

/// The fake; stops with the test's runtime.
pub struct GcpSecretManager {
    addr: SocketAddr,
    project: String,
    data: Arc<Mutex<Data>>,
}

impl GcpSecretManager {
    pub async fn start(project: &str) -> GcpSecretManager {
        let data = Arc::new(Mutex::new(Data::default()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let app = Router::new().fallback(handle).with_state((Arc::clone(&data), project.to_owned()));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        GcpSecretManager { addr, project: project.to_owned(), data }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn put(&self, id: &str, value: &str) {
        self.data.lock().unwrap_or_else(|p| p.into_inner()).secrets.insert(id.to_owned(), value.to_owned());
    }

    /// Every request path received.
    pub fn paths(&self) -> Vec<String> {
        self.data.lock().unwrap_or_else(|p| p.into_inner()).paths.clone()
    }

    /// The variables that point a gcp-sm store at this fake.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("DATAHUB_EXECUTOR_GCP_SM_ENABLED".into(), "true".into()),
            ("DATAHUB_EXECUTOR_GCP_SM_PROJECT_ID".into(), self.project.clone()),
            ("DATAHUB_EXECUTOR_GCP_SM_API_BASE".into(), self.url()),
            ("DATAHUB_EXECUTOR_GCP_ACCESS_TOKEN".into(), TOKEN.into()),
        ]
    }
}

async fn handle(State((data, project)): State<(Arc<Mutex<Data>>, String)>, req: Request) -> Response {
    let path = req.uri().path().to_owned();
    let authorized =
        req.headers().get("authorization").and_then(|v| v.to_str().ok()) == Some(&format!("Bearer {TOKEN}"));
    let mut d = data.lock().unwrap_or_else(|p| p.into_inner());
    d.paths.push(path.clone());
    let error = |code: u16, status: &str| {
        let c = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (c, axum::Json(json!({"error": {"code": code, "message": status, "status": status}}))).into_response()
    };
    if !authorized {
        return error(401, "UNAUTHENTICATED");
    }
    let base = format!("/v1/projects/{project}/secrets");
    if path == base {
        let secrets: Vec<_> =
            d.secrets.keys().map(|id| json!({"name": format!("projects/123/secrets/{id}")})).collect();
        return axum::Json(json!({"secrets": secrets})).into_response();
    }
    let id = path.strip_prefix(&format!("{base}/")).and_then(|r| r.strip_suffix("/versions/latest:access"));
    match id.and_then(|id| d.secrets.get(id)) {
        Some(v) => axum::Json(json!({
            "name": format!("projects/123/secrets/{}/versions/1", id.unwrap_or_default()),
            "payload": {"data": base64::engine::general_purpose::STANDARD.encode(v)}
        }))
        .into_response(),
        None => error(404, "NOT_FOUND"),
    }
}
