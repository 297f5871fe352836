//! A small client for the GMS endpoints the executor uses: `ingestProposal` (status writes, as
//! DataHub's executor sends them: `reference/peer-executor.md` §2.1), the OpenAPI v2 batch read of
//! entity aspects (request input, signals, ingestion sources: `reference/datahub-executor.md` §2.3,
//! §2.5), the OpenAPI v2 scroll of the search index (the relay's sweeper and self-hosted feed:
//! §6.2), `GET /config`, and GraphQL `getSecretValues` (§3.2 of the peer reference),
//! `listSecrets` and `listExecutorConfigs` (§2.1).

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

    async fn get(&self, what: &'static str, path_and_query: &str) -> Result<String, GmsError> {
        let req = self.http.get(format!("{}{path_and_query}", self.base)).header("Accept", "application/json");
        self.send(what, req).await
    }

    async fn post(&self, what: &'static str, path: &str, body: String) -> Result<String, GmsError> {
        let req = self
            .http
            .post(format!("{}{path}", self.base))
            .header("Content-Type", "application/json")
            .header("X-RestLi-Protocol-Version", "2.0.0")
            .body(body);
        self.send(what, req).await
    }

    /// Sends `req` with the token and returns the body of a 2xx answer.
    async fn send(&self, what: &'static str, mut req: reqwest::RequestBuilder) -> Result<String, GmsError> {
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

    /// Writes the `dataHubExecutionRequestResult` of `exec_id` as DataHub's executors do
    /// (`reference/peer-executor.md` §2.2), stamped now.
    pub async fn write_execution_result(
        &self,
        exec_id: &str,
        result: &crate::status::ExecutionResult,
    ) -> Result<(), GmsError> {
        let now_ms = chrono::Utc::now().timestamp_millis();
        self.ingest_proposal(crate::status::result_body(exec_id, result, now_ms)).await
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

    /// Reads aspects of entities with their `systemMetadata` (`lastObserved`): the OpenAPI v2
    /// batch read with `withSystemMetadata: true`. Entities without any of the aspects are absent.
    pub async fn batch_get_enveloped(
        &self,
        entity: &str,
        urns: &[String],
        aspects: &[&str],
    ) -> Result<BTreeMap<String, BTreeMap<String, EnvelopedAspect>>, GmsError> {
        let what = "entity batch read";
        let body = json!({"urns": urns, "aspectNames": aspects, "withSystemMetadata": true}).to_string();
        let text = self.post(what, &format!("/openapi/v2/entity/batch/{entity}"), body).await?;
        let v: Value = serde_json::from_str(&text).map_err(|e| GmsError::Decode { what, reason: e.to_string() })?;
        Ok(enveloped_entities(what, &v, &["entities"], aspects)?.into_iter().collect())
    }

    /// One page of the OpenAPI v2 scroll `GET /openapi/v2/entity/<entity>` (the search index, as
    /// DataHub's sweeper reads it: `reference/datahub-executor.md` §6.2), with `systemMetadata`.
    /// `query` is Elasticsearch `query_string` syntax; `sort` is a field, ascending. The next
    /// page is asked with the answer's `scrollId`; `None` means the last page was read.
    pub async fn scroll(&self, entity: &str, request: &ScrollRequest<'_>) -> Result<ScrollPage, GmsError> {
        let what = "entity scroll";
        let mut params: Vec<(&str, &str)> = request.aspects.iter().map(|a| ("aspectNames", *a)).collect();
        let count = request.count.to_string();
        params.extend([("count", count.as_str()), ("query", request.query)]);
        if let Some(sort) = request.sort {
            params.extend([("sort", sort), ("sortOrder", "ASCENDING")]);
        }
        params.extend([("systemMetadata", "true"), ("skipCache", "true")]);
        if let Some(id) = request.scroll_id {
            params.push(("scrollId", id));
        }
        let query: Vec<String> = params.iter().map(|(k, v)| format!("{k}={}", url_encode(v))).collect();
        let text = self.get(what, &format!("/openapi/v2/entity/{entity}?{}", query.join("&"))).await?;
        let v: Value = serde_json::from_str(&text).map_err(|e| GmsError::Decode { what, reason: e.to_string() })?;
        let entities = enveloped_entities(what, &v, &["results", "entities"], request.aspects)?;
        let scroll_id = v.get("scrollId").and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_owned);
        Ok(ScrollPage { entities, scroll_id })
    }

    /// `GET /config`: the server's configuration document.
    pub async fn server_config(&self) -> Result<Value, GmsError> {
        let what = "server config";
        let text = self.get(what, "/config").await?;
        serde_json::from_str(&text).map_err(|e| GmsError::Decode { what, reason: e.to_string() })
    }

    /// GraphQL `listExecutorConfigs` (`reference/datahub-executor.md` §2.1): the queue, region and
    /// temporary credentials of every READY pool, as JSON objects.
    pub async fn list_executor_configs(&self) -> Result<Vec<Value>, GmsError> {
        let what = "listExecutorConfigs";
        let query = "query listExecutorConfigs { listExecutorConfigs { total executorConfigs {\n  region executorId queueUrl accessKeyId secretKeyId sessionToken expiration } } }";
        let body = json!({"query": query, "variables": {}}).to_string();
        let text = self.post(what, "/api/graphql", body).await?;
        let v: Value = serde_json::from_str(&text).map_err(|e| GmsError::Decode { what, reason: e.to_string() })?;
        if let Some(errors) = v.get("errors").filter(|e| !e.is_null() && e.as_array().is_none_or(|a| !a.is_empty())) {
            // DataHub answers errors with HTTP 200; an STS failure there is worth retrying.
            return Err(GmsError::Http {
                what,
                status: 503,
                body: format!("GraphQL errors: {}", excerpt(&errors.to_string())),
            });
        }
        match v.pointer("/data/listExecutorConfigs/executorConfigs") {
            Some(Value::Array(items)) => Ok(items.clone()),
            _ => Err(GmsError::Decode { what, reason: "no data.listExecutorConfigs.executorConfigs list".into() }),
        }
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

/// One aspect with its `systemMetadata`, as the OpenAPI v2 reads return it.
#[derive(Debug, Clone, PartialEq)]
pub struct EnvelopedAspect {
    pub value: Value,
    pub system_metadata: Option<Value>,
}

impl EnvelopedAspect {
    /// `systemMetadata.lastObserved` (epoch ms): when GMS last saw this aspect written.
    pub fn last_observed_ms(&self) -> Option<i64> {
        self.system_metadata.as_ref()?.get("lastObserved")?.as_i64()
    }
}

/// An entity's urn and its aspects with their `systemMetadata`.
pub type EnvelopedEntity = (String, BTreeMap<String, EnvelopedAspect>);

/// What [`GmsClient::scroll`] asks for.
#[derive(Debug, Clone)]
pub struct ScrollRequest<'a> {
    pub aspects: &'a [&'a str],
    pub query: &'a str,
    pub count: usize,
    pub sort: Option<&'a str>,
    pub scroll_id: Option<&'a str>,
}

/// One page of a scroll: each entity's urn and aspects, and where the next page starts.
#[derive(Debug, Clone, PartialEq)]
pub struct ScrollPage {
    pub entities: Vec<EnvelopedEntity>,
    pub scroll_id: Option<String>,
}

/// Reads `[{"urn", "aspects": {name: {"value", "systemMetadata"}}}]` (or the aspects beside the
/// urn) from the first of `lists` that the answer holds.
fn enveloped_entities(
    what: &'static str,
    v: &Value,
    lists: &[&str],
    aspects: &[&str],
) -> Result<Vec<EnvelopedEntity>, GmsError> {
    let items = lists
        .iter()
        .find_map(|l| v.get(*l).and_then(Value::as_array))
        .or(v.as_array())
        .ok_or_else(|| GmsError::Decode { what, reason: format!("no `{}` list", lists.join("` or `")) })?;
    let mut out = Vec::with_capacity(items.len());
    for e in items {
        let Some(urn) = e.get("urn").and_then(Value::as_str) else { continue };
        let holder = e.get("aspects").unwrap_or(e);
        let mut found = BTreeMap::new();
        for name in aspects {
            if let Some(a) = holder.get(*name).filter(|a| !a.is_null()) {
                let value = a.get("value").cloned().unwrap_or_else(|| a.clone());
                let system_metadata = a.get("systemMetadata").filter(|m| !m.is_null()).cloned();
                found.insert((*name).to_owned(), EnvelopedAspect { value, system_metadata });
            }
        }
        out.push((urn.to_owned(), found));
    }
    Ok(out)
}

/// Percent-encoding of a query-string value (RFC 3986 unreserved characters stay).
fn url_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
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
