//! A small client for the GMS endpoints the executor uses: `ingestProposal` (status writes, as
//! DataHub's executor sends them: `reference/peer-executor.md` §2.1), the OpenAPI v2 batch read of
//! entity aspects (request input, signals, ingestion sources: `reference/datahub-executor.md` §2.3,
//! §2.5) and GraphQL `getSecretValues` (§3.2 of the peer reference).

use std::collections::BTreeMap;
use std::time::Duration;

use secrecy::ExposeSecret;
use serde_json::{Value, json};

use crate::config::GmsConfig;
use crate::error::GmsError;

/// The aspects of one entity, by aspect name.
pub type Aspects = BTreeMap<String, Value>;

/// A GMS client. Cheap to clone.
#[derive(Clone)]
pub struct GmsClient {
    base: String,
    auth: Option<String>,
    http: reqwest::Client,
}

impl std::fmt::Debug for GmsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GmsClient").field("base", &self.base).finish_non_exhaustive()
    }
}

impl GmsClient {
    /// A client for `config`; calls time out after 30 s as DataHub's do.
    pub fn new(config: &GmsConfig) -> Result<Self, GmsError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(30))
            .timeout(Duration::from_secs(60))
            .user_agent(concat!("datahub-executor-rs/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| GmsError::Transport { what: "client setup", reason: e.to_string() })?;
        let auth = config.token.as_ref().map(|t| format!("Bearer {}", t.expose_secret()));
        Ok(GmsClient { base: config.url.clone(), auth, http })
    }

    /// The base URL.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    async fn post(&self, what: &'static str, path: &str, body: String) -> Result<String, GmsError> {
        let mut req = self
            .http
            .post(format!("{}{path}", self.base))
            .header("Content-Type", "application/json")
            .header("X-RestLi-Protocol-Version", "2.0.0")
            .body(body);
        if let Some(a) = &self.auth {
            req = req.header("Authorization", a);
        }
        let resp = req.send().await.map_err(|e| GmsError::Transport { what, reason: error_chain(&e) })?;
        let status = resp.status().as_u16();
        let text = resp.text().await.map_err(|e| GmsError::Transport { what, reason: error_chain(&e) })?;
        if (200..300).contains(&status) { Ok(text) } else { Err(GmsError::Http { what, status, body: excerpt(&text) }) }
    }

    /// `POST /aspects?action=ingestProposal` with a prepared body.
    pub async fn ingest_proposal(&self, body: String) -> Result<(), GmsError> {
        self.post("ingestProposal", "/aspects?action=ingestProposal", body).await.map(|_| ())
    }

    /// Reads aspects of entities: `POST /openapi/v2/entity/batch/<entity>`. Entities without any of
    /// the aspects are absent from the answer.
    pub async fn batch_get(
        &self,
        entity: &str,
        urns: &[String],
        aspects: &[&str],
    ) -> Result<BTreeMap<String, Aspects>, GmsError> {
        let body = json!({"urns": urns, "aspectNames": aspects, "withSystemMetadata": false}).to_string();
        let text = self.post("entity batch read", &format!("/openapi/v2/entity/batch/{entity}"), body).await?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| GmsError::Decode { what: "entity batch read", reason: e.to_string() })?;
        let entities = match v.get("entities") {
            Some(Value::Array(a)) => a.clone(),
            _ => match v {
                Value::Array(a) => a,
                _ => return Err(GmsError::Decode { what: "entity batch read", reason: "no `entities` list".into() }),
            },
        };
        let mut out = BTreeMap::new();
        for e in entities {
            let Some(urn) = e.get("urn").and_then(Value::as_str) else { continue };
            let mut found = Aspects::new();
            // OpenAPI v2 answers either `{"aspects": {name: {"value": v}}}` or `{name: {"value": v}}`.
            let holder = e.get("aspects").unwrap_or(&e);
            for name in aspects {
                if let Some(a) = holder.get(*name) {
                    let value = a.get("value").cloned().unwrap_or_else(|| a.clone());
                    found.insert((*name).to_owned(), value);
                }
            }
            out.insert(urn.to_owned(), found);
        }
        Ok(out)
    }

    /// GraphQL `getSecretValues`: the values DataHub holds for these names (absent names are missing).
    pub async fn get_secret_values(&self, names: &[String]) -> Result<BTreeMap<String, String>, GmsError> {
        let query = "query getSecretValues($input: GetSecretValuesInput!) {\n  getSecretValues(input: $input) {\n    name\n    value\n  }\n}";
        let body = json!({"query": query, "variables": {"input": {"secrets": names}}}).to_string();
        let text = self.post("getSecretValues", "/api/graphql", body).await?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| GmsError::Decode { what: "getSecretValues", reason: e.to_string() })?;
        if let Some(errors) = v.get("errors").filter(|e| !e.is_null()) {
            return Err(GmsError::Decode {
                what: "getSecretValues",
                reason: format!("GraphQL errors: {}", excerpt(&errors.to_string())),
            });
        }
        let mut out = BTreeMap::new();
        if let Some(Value::Array(items)) = v.pointer("/data/getSecretValues") {
            for item in items {
                if let (Some(n), Some(val)) =
                    (item.get("name").and_then(Value::as_str), item.get("value").and_then(Value::as_str))
                {
                    out.insert(n.to_owned(), val.to_owned());
                }
            }
        }
        Ok(out)
    }
}

impl GmsClient {
    /// GraphQL `listSecrets`: the names of every secret DataHub holds (names only, no values).
    pub async fn list_secret_names(&self) -> Result<std::collections::BTreeSet<String>, GmsError> {
        const PAGE: u64 = 500;
        let query = "query listSecrets($input: ListSecretsInput!) {\n  listSecrets(input: $input) {\n    start\n    count\n    total\n    secrets {\n      name\n    }\n  }\n}";
        let mut names = std::collections::BTreeSet::new();
        let mut start = 0u64;
        loop {
            let body = json!({"query": query, "variables": {"input": {"start": start, "count": PAGE}}}).to_string();
            let text = self.post("listSecrets", "/api/graphql", body).await?;
            let v: Value = serde_json::from_str(&text)
                .map_err(|e| GmsError::Decode { what: "listSecrets", reason: e.to_string() })?;
            if let Some(errors) = v.get("errors").filter(|e| !e.is_null()) {
                return Err(GmsError::Decode {
                    what: "listSecrets",
                    reason: format!("GraphQL errors: {}", excerpt(&errors.to_string())),
                });
            }
            let page = v
                .pointer("/data/listSecrets")
                .ok_or(GmsError::Decode { what: "listSecrets", reason: "no data.listSecrets".into() })?;
            let secrets = page.get("secrets").and_then(Value::as_array).cloned().unwrap_or_default();
            names.extend(secrets.iter().filter_map(|s| s.get("name").and_then(Value::as_str).map(str::to_owned)));
            let total = page.get("total").and_then(Value::as_u64).unwrap_or(0);
            start += PAGE;
            if secrets.is_empty() || start >= total {
                return Ok(names);
            }
        }
    }
}

fn excerpt(text: &str) -> String {
    let t: String = text.chars().take(500).collect();
    if t.len() < text.len() { format!("{t}…") } else { t }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
