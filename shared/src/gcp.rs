//! Google access tokens for the calls this executor makes to Google APIs (Cloud Run jobs, and the
//! GCP Secret Manager store).
//!
//! [`token_source_from_env`] picks the source, first match wins:
//!
//! 1. `DATAHUB_EXECUTOR_GCP_ACCESS_TOKEN`: a static token (tests, or deployments that inject one).
//!    It is used as is and never refreshed.
//! 2. `GOOGLE_APPLICATION_CREDENTIALS` naming an `external_account` JSON file whose
//!    `credential_source.environment_id` is `aws1`: workload identity federation from AWS, for the
//!    admission Lambda that runs in AWS and starts Cloud Run jobs. The flow is Google's documented
//!    one (<https://cloud.google.com/iam/docs/workload-identity-federation-with-other-clouds>):
//!    * sign an AWS STS `GetCallerIdentity` request (`POST` to `regional_cred_verification_url`,
//!      `{region}` replaced) with SigV4 and the Lambda's `AWS_ACCESS_KEY_ID`,
//!      `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN` and `AWS_REGION` (or `AWS_DEFAULT_REGION`);
//!      the header `x-goog-cloud-target-resource` (= the file's `audience`) is signed too;
//!    * the subject token is that signed request as JSON,
//!      `{"headers":[{"key":..,"value":..},..],"method":"POST","url":..}` (headers sorted by key),
//!      percent-encoded;
//!    * exchange it at `token_url` (Google STS, `grant_type` token-exchange, `subject_token_type`
//!      `urn:ietf:params:aws:token-type:aws4_request`, `audience` from the file, scope
//!      `cloud-platform`);
//!    * when `service_account_impersonation_url` is set, trade the STS token for a service account's
//!      token there (`generateAccessToken`, lifetime from
//!      `service_account_impersonation.token_lifetime_seconds`, default 3600 s).
//!
//!    Every endpoint comes from the file, so tests point them at fakes. AWS credentials and region
//!    are read from the environment only: reading them from the EC2 metadata server (`url`,
//!    `region_url`, `imdsv2_session_token_url`) is not supported and is reported as such. Other
//!    credential files (`service_account` keys, `authorized_user`, file-, URL- or
//!    executable-sourced external accounts) are refused with an error that says so, rather than
//!    silently falling back to another identity.
//! 3. The metadata server (Cloud Run, GKE, GCE):
//!    `GET http://{GCE_METADATA_HOST or metadata.google.internal}/computeMetadata/v1/instance/service-accounts/default/token`
//!    with `Metadata-Flavor: Google`.
//!
//! Fetched tokens are cached and refreshed 60 s before they expire; concurrent callers wait for one
//! fetch. Tokens are [`SecretString`]s: they are never logged, and no error carries one.

use std::fmt;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use thiserror::Error;
use tokio::sync::Mutex;

use crate::error::ConfigError;
use crate::secrets::BoxFuture;

/// A static access token.
pub const ACCESS_TOKEN_ENV: &str = "DATAHUB_EXECUTOR_GCP_ACCESS_TOKEN";
/// Google's variable naming a credentials file.
pub const CREDENTIALS_FILE_ENV: &str = "GOOGLE_APPLICATION_CREDENTIALS";
/// Google's variable redirecting the metadata server (`host[:port]`).
pub const METADATA_HOST_ENV: &str = "GCE_METADATA_HOST";
/// The metadata server's host when [`METADATA_HOST_ENV`] is unset.
pub const DEFAULT_METADATA_HOST: &str = "metadata.google.internal";
/// The OAuth scope every token is asked for.
pub const CLOUD_PLATFORM_SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
/// A cached token is replaced this long before it expires.
pub const REFRESH_MARGIN: Duration = Duration::from_secs(60);

const METADATA_TOKEN_PATH: &str = "/computeMetadata/v1/instance/service-accounts/default/token";
const AWS_SUBJECT_TOKEN_TYPE: &str = "urn:ietf:params:aws:token-type:aws4_request";
const TOKEN_EXCHANGE_GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
const DEFAULT_CRED_VERIFICATION_URL: &str =
    "https://sts.{region}.amazonaws.com?Action=GetCallerIdentity&Version=2011-06-15";
const DEFAULT_IMPERSONATION_LIFETIME: u64 = 3600;

/// A failure to get a Google access token. Never carries a token or a credential.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum GcpError {
    #[error("{what} answered HTTP {status}: {message}")]
    Http { what: &'static str, status: u16, message: String },
    #[error("{what} could not be reached: {reason}")]
    Transport { what: &'static str, reason: String },
    #[error("{what} sent an answer that cannot be read: {reason}")]
    Decode { what: &'static str, reason: String },
    #[error("cannot build the {what}: {reason}")]
    Invalid { what: &'static str, reason: String },
}

impl GcpError {
    /// Whether trying again later can succeed (5xx, 408, 429, connection errors).
    pub fn is_transient(&self) -> bool {
        match self {
            GcpError::Http { status, .. } => *status >= 500 || *status == 408 || *status == 429,
            GcpError::Transport { .. } => true,
            GcpError::Decode { .. } | GcpError::Invalid { .. } => false,
        }
    }
}

/// Something that hands out Google access tokens (`Authorization: Bearer <token>`).
pub trait TokenSource: Send + Sync {
    /// A token valid for at least a little while (cached sources refresh 60 s before expiry).
    fn token(&self) -> BoxFuture<'_, Result<SecretString, GcpError>>;
}

/// Chooses the token source from variables read through `lookup` (see the module docs):
/// static token > `external_account` (AWS) file > metadata server.
pub fn token_source_from_env(lookup: impl Fn(&str) -> Option<String>) -> Result<Box<dyn TokenSource>, ConfigError> {
    let get = |k: &str| lookup(k).filter(|v| !v.trim().is_empty());
    if let Some(token) = get(ACCESS_TOKEN_ENV) {
        return Ok(Box::new(StaticToken::new(SecretString::from(token.trim().to_owned()))));
    }
    if let Some(path) = get(CREDENTIALS_FILE_ENV) {
        return Ok(Box::new(AwsFederation::from_file(path.trim(), &get)?));
    }
    let host = get(METADATA_HOST_ENV).unwrap_or_else(|| DEFAULT_METADATA_HOST.to_owned());
    Ok(Box::new(MetadataServer::new(&host)?))
}

/// A token that was handed in; never refreshed.
pub struct StaticToken {
    token: SecretString,
}

impl StaticToken {
    pub fn new(token: SecretString) -> Self {
        StaticToken { token }
    }
}

impl fmt::Debug for StaticToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticToken").finish_non_exhaustive()
    }
}

impl TokenSource for StaticToken {
    fn token(&self) -> BoxFuture<'_, Result<SecretString, GcpError>> {
        Box::pin(async move { Ok(self.token.clone()) })
    }
}

/// A token cache: one fetch at a time, reuse until [`REFRESH_MARGIN`] before expiry.
#[derive(Default)]
struct TokenCache {
    slot: Mutex<Option<(SecretString, Instant)>>,
}

impl TokenCache {
    async fn get_or_fetch<F>(&self, fetch: F) -> Result<SecretString, GcpError>
    where
        F: Future<Output = Result<(SecretString, Duration), GcpError>>,
    {
        let mut slot = self.slot.lock().await;
        if let Some((token, refresh_at)) = slot.as_ref()
            && Instant::now() < *refresh_at
        {
            return Ok(token.clone());
        }
        let (token, lifetime) = fetch.await?;
        let refresh_at = Instant::now() + lifetime.saturating_sub(REFRESH_MARGIN);
        *slot = Some((token.clone(), refresh_at));
        Ok(token)
    }
}

fn http_client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(30))
        .user_agent(concat!("datahub-executor-rs/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| e.to_string())
}

/// The text of a reqwest error with its causes.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

/// A short, single-line excerpt of an error body: Google's `error.message` / `error_description`
/// when the body is JSON, else its start.
pub(crate) fn error_excerpt(body: &str) -> String {
    let text = match serde_json::from_str::<Value>(body) {
        Ok(v) => {
            let msg = v.pointer("/error/message").or_else(|| v.get("error_description")).and_then(Value::as_str);
            let status = v.pointer("/error/status").or_else(|| v.get("error")).and_then(Value::as_str);
            match (status, msg) {
                (Some(s), Some(m)) => format!("{s}: {m}"),
                (None, Some(m)) => m.to_owned(),
                (Some(s), None) => s.to_owned(),
                (None, None) => body.to_owned(),
            }
        }
        Err(_) => body.to_owned(),
    };
    let line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.chars().count() > 300 { format!("{}...", line.chars().take(300).collect::<String>()) } else { line }
}

/// Sends `req`, returns the body of a 2xx answer.
async fn send(what: &'static str, req: reqwest::RequestBuilder) -> Result<String, GcpError> {
    let resp = req.send().await.map_err(|e| GcpError::Transport { what, reason: error_chain(&e) })?;
    let status = resp.status().as_u16();
    let text = resp.text().await.map_err(|e| GcpError::Transport { what, reason: error_chain(&e) })?;
    if (200..300).contains(&status) {
        Ok(text)
    } else {
        Err(GcpError::Http { what, status, message: error_excerpt(&text) })
    }
}

/// The metadata server's token of the default service account.
pub struct MetadataServer {
    url: String,
    http: reqwest::Client,
    cache: TokenCache,
}

impl fmt::Debug for MetadataServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetadataServer").field("url", &self.url).finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct OAuthToken {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

impl MetadataServer {
    /// A source asking the metadata server at `host` (`host[:port]`, as in `GCE_METADATA_HOST`).
    pub fn new(host: &str) -> Result<Self, ConfigError> {
        let host = host.trim().trim_start_matches("http://").trim_end_matches('/');
        if host.is_empty() || host.contains(['/', '?', '#', ' ']) {
            return Err(ConfigError::new(METADATA_HOST_ENV, format!("{host:?} is not a host[:port]")));
        }
        let http = http_client().map_err(|e| ConfigError::new(METADATA_HOST_ENV, e))?;
        Ok(MetadataServer { url: format!("http://{host}{METADATA_TOKEN_PATH}"), http, cache: TokenCache::default() })
    }

    /// The token URL this source calls.
    pub fn url(&self) -> &str {
        &self.url
    }

    async fn fetch(&self) -> Result<(SecretString, Duration), GcpError> {
        const WHAT: &str = "the metadata server's token endpoint";
        let text = send(WHAT, self.http.get(&self.url).header("Metadata-Flavor", "Google")).await?;
        let answer: OAuthToken =
            serde_json::from_str(&text).map_err(|e| GcpError::Decode { what: WHAT, reason: e.to_string() })?;
        let lifetime = Duration::from_secs(answer.expires_in.unwrap_or(0));
        Ok((SecretString::from(answer.access_token), lifetime))
    }
}

impl TokenSource for MetadataServer {
    fn token(&self) -> BoxFuture<'_, Result<SecretString, GcpError>> {
        Box::pin(self.cache.get_or_fetch(self.fetch()))
    }
}

/// AWS credentials of the running process (a Lambda's environment).
struct AwsCredentials {
    access_key_id: String,
    secret_access_key: SecretString,
    session_token: Option<SecretString>,
    region: String,
}

#[derive(Deserialize)]
struct CredentialsFile {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    audience: Option<String>,
    #[serde(default)]
    subject_token_type: Option<String>,
    #[serde(default)]
    token_url: Option<String>,
    #[serde(default)]
    service_account_impersonation_url: Option<String>,
    #[serde(default)]
    service_account_impersonation: Option<ImpersonationOptions>,
    #[serde(default)]
    credential_source: Option<CredentialSource>,
}

#[derive(Deserialize)]
struct ImpersonationOptions {
    #[serde(default)]
    token_lifetime_seconds: Option<u64>,
}

#[derive(Deserialize)]
struct CredentialSource {
    #[serde(default)]
    environment_id: Option<String>,
    #[serde(default)]
    regional_cred_verification_url: Option<String>,
}

/// Workload identity federation from AWS (an `external_account` file with an AWS source).
pub struct AwsFederation {
    audience: String,
    subject_token_type: String,
    token_url: String,
    impersonation_url: Option<String>,
    impersonation_lifetime: u64,
    cred_verification_url: String,
    aws: AwsCredentials,
    http: reqwest::Client,
    cache: TokenCache,
}

impl fmt::Debug for AwsFederation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsFederation")
            .field("audience", &self.audience)
            .field("token_url", &self.token_url)
            .field("impersonation_url", &self.impersonation_url)
            .finish_non_exhaustive()
    }
}

fn http_url(var: &'static str, field: &str, url: &str) -> Result<String, ConfigError> {
    if url.starts_with("https://") || url.starts_with("http://") {
        Ok(url.to_owned())
    } else {
        Err(ConfigError::new(var, format!("the file's `{field}` must be an http(s) URL")))
    }
}

impl AwsFederation {
    /// Reads the `external_account` file at `path` and the AWS credentials through `get`.
    fn from_file(path: &str, get: &impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        const VAR: &str = CREDENTIALS_FILE_ENV;
        let text =
            std::fs::read_to_string(path).map_err(|e| ConfigError::new(VAR, format!("cannot read {path}: {e}")))?;
        // The serde error names a line and column, never the file's content (which could be a key).
        let file: CredentialsFile = serde_json::from_str(&text)
            .map_err(|e| ConfigError::new(VAR, format!("{path} is not a Google credentials JSON file: {e}")))?;
        Self::from_parsed(path, file, get)
    }

    fn from_parsed(
        path: &str,
        file: CredentialsFile,
        get: &impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        const VAR: &str = CREDENTIALS_FILE_ENV;
        if file.kind != "external_account" {
            return Err(ConfigError::new(
                VAR,
                format!(
                    "{path} holds credentials of type {:?}, which this executor does not support: use an \
                     `external_account` file with an AWS source, {ACCESS_TOKEN_ENV}, or the metadata server \
                     (unset {VAR})",
                    file.kind
                ),
            ));
        }
        let source = file
            .credential_source
            .unwrap_or(CredentialSource { environment_id: None, regional_cred_verification_url: None });
        let env_id = source.environment_id.unwrap_or_default();
        if !env_id.starts_with("aws") {
            return Err(ConfigError::new(
                VAR,
                format!(
                    "{path} is an external_account without an AWS credential source: only \
                     `credential_source.environment_id` aws1 is supported (file-, URL- and executable-sourced \
                     credentials are not)"
                ),
            ));
        }
        if env_id != "aws1" {
            return Err(ConfigError::new(
                VAR,
                format!("{path}: AWS credential source version {env_id:?} is not supported (only aws1)"),
            ));
        }
        let audience = file
            .audience
            .filter(|a| !a.is_empty())
            .ok_or_else(|| ConfigError::new(VAR, format!("{path} has no `audience`")))?;
        let token_url = file
            .token_url
            .filter(|u| !u.is_empty())
            .ok_or_else(|| ConfigError::new(VAR, format!("{path} has no `token_url`")))?;
        let token_url = http_url(VAR, "token_url", &token_url)?;
        let impersonation_url = match file.service_account_impersonation_url.filter(|u| !u.is_empty()) {
            Some(u) => Some(http_url(VAR, "service_account_impersonation_url", &u)?),
            None => None,
        };
        let cred_verification_url = source
            .regional_cred_verification_url
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| DEFAULT_CRED_VERIFICATION_URL.to_owned());
        let impersonation_lifetime = file
            .service_account_impersonation
            .and_then(|o| o.token_lifetime_seconds)
            .unwrap_or(DEFAULT_IMPERSONATION_LIFETIME);

        let imds = "(reading AWS credentials or the region from the EC2 metadata server is not supported)";
        let access_key_id = get("AWS_ACCESS_KEY_ID").ok_or_else(|| {
            ConfigError::new("AWS_ACCESS_KEY_ID", format!("is unset but {VAR} asks for AWS federation {imds}"))
        })?;
        let secret_access_key = get("AWS_SECRET_ACCESS_KEY").ok_or_else(|| {
            ConfigError::new("AWS_SECRET_ACCESS_KEY", format!("is unset but {VAR} asks for AWS federation {imds}"))
        })?;
        let region = get("AWS_REGION").or_else(|| get("AWS_DEFAULT_REGION")).ok_or_else(|| {
            ConfigError::new("AWS_REGION", format!("is unset but {VAR} asks for AWS federation {imds}"))
        })?;
        let aws = AwsCredentials {
            access_key_id: access_key_id.trim().to_owned(),
            secret_access_key: SecretString::from(secret_access_key.trim().to_owned()),
            session_token: get("AWS_SESSION_TOKEN").map(|t| SecretString::from(t.trim().to_owned())),
            region: region.trim().to_owned(),
        };
        let http = http_client().map_err(|e| ConfigError::new(VAR, e))?;
        Ok(AwsFederation {
            audience,
            subject_token_type: file.subject_token_type.unwrap_or_else(|| AWS_SUBJECT_TOKEN_TYPE.to_owned()),
            token_url,
            impersonation_url,
            impersonation_lifetime,
            cred_verification_url,
            aws,
            http,
            cache: TokenCache::default(),
        })
    }

    async fn fetch(&self) -> Result<(SecretString, Duration), GcpError> {
        let subject = aws_subject_token(&self.cred_verification_url, &self.audience, &self.aws, Utc::now())?;
        let form = form_encode(&[
            ("grant_type", TOKEN_EXCHANGE_GRANT),
            ("audience", &self.audience),
            ("scope", CLOUD_PLATFORM_SCOPE),
            ("requested_token_type", ACCESS_TOKEN_TYPE),
            ("subject_token", subject.expose_secret()),
            ("subject_token_type", &self.subject_token_type),
        ]);
        const STS: &str = "Google STS (token exchange)";
        let req =
            self.http.post(&self.token_url).header("Content-Type", "application/x-www-form-urlencoded").body(form);
        let text = send(STS, req).await?;
        let answer: OAuthToken =
            serde_json::from_str(&text).map_err(|e| GcpError::Decode { what: STS, reason: e.to_string() })?;
        let sts_token = SecretString::from(answer.access_token);
        let Some(url) = &self.impersonation_url else {
            return Ok((sts_token, Duration::from_secs(answer.expires_in.unwrap_or(3600))));
        };

        const IAM: &str = "IAM credentials (service account impersonation)";
        let body = json!({"scope": [CLOUD_PLATFORM_SCOPE], "lifetime": format!("{}s", self.impersonation_lifetime)});
        let req = self
            .http
            .post(url)
            .header("Authorization", format!("Bearer {}", sts_token.expose_secret()))
            .header("Content-Type", "application/json")
            .body(body.to_string());
        let text = send(IAM, req).await?;
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Impersonated {
            access_token: String,
            #[serde(default)]
            expire_time: Option<String>,
        }
        let answer: Impersonated =
            serde_json::from_str(&text).map_err(|e| GcpError::Decode { what: IAM, reason: e.to_string() })?;
        let lifetime = answer
            .expire_time
            .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
            .map(|t| (t.with_timezone(&Utc) - Utc::now()).to_std().unwrap_or(Duration::ZERO))
            .unwrap_or(Duration::from_secs(self.impersonation_lifetime));
        Ok((SecretString::from(answer.access_token), lifetime))
    }
}

impl TokenSource for AwsFederation {
    fn token(&self) -> BoxFuture<'_, Result<SecretString, GcpError>> {
        Box::pin(self.cache.get_or_fetch(self.fetch()))
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters (as SigV4 asks).
pub(crate) fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn form_encode(pairs: &[(&str, &str)]) -> String {
    pairs.iter().map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v))).collect::<Vec<_>>().join("&")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// HMAC-SHA256 (RFC 2104).
fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(msg);
    let inner = inner.finalize();
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner);
    outer.finalize().into()
}

/// What SigV4 signs: one request.
struct SigV4Request<'a> {
    method: &'a str,
    url: &'a reqwest::Url,
    /// Lower-case names, sorted; `host` and `x-amz-date` included.
    headers: &'a std::collections::BTreeMap<String, String>,
    payload: &'a [u8],
    region: &'a str,
    service: &'a str,
}

/// The SigV4 `Authorization` header value for `req`
/// (<https://docs.aws.amazon.com/IAM/latest/UserGuide/create-signed-request.html>).
fn sigv4_authorization(req: &SigV4Request<'_>, access_key_id: &str, secret: &str, amz_date: &str) -> String {
    let date = amz_date.get(..8).unwrap_or(amz_date);
    let path = if req.url.path().is_empty() { "/" } else { req.url.path() };
    let mut query: Vec<(String, String)> =
        req.url.query_pairs().map(|(k, v)| (percent_encode(&k), percent_encode(&v))).collect();
    query.sort();
    let query = query.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&");
    let canonical_headers: String = req
        .headers
        .iter()
        .map(|(k, v)| format!("{k}:{}\n", v.split_whitespace().collect::<Vec<_>>().join(" ")))
        .collect();
    let signed_headers = req.headers.keys().cloned().collect::<Vec<_>>().join(";");
    let canonical_request = format!(
        "{}\n{path}\n{query}\n{canonical_headers}\n{signed_headers}\n{}",
        req.method,
        hex(&Sha256::digest(req.payload))
    );
    let scope = format!("{date}/{}/{}/aws4_request", req.region, req.service);
    let string_to_sign =
        format!("AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}", hex(&Sha256::digest(canonical_request.as_bytes())));
    let k_date = hmac_sha256(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k_region = hmac_sha256(&k_date, req.region.as_bytes());
    let k_service = hmac_sha256(&k_region, req.service.as_bytes());
    let k_signing = hmac_sha256(&k_service, b"aws4_request");
    let signature = hex(&hmac_sha256(&k_signing, string_to_sign.as_bytes()));
    format!(
        "AWS4-HMAC-SHA256 Credential={access_key_id}/{scope}, SignedHeaders={signed_headers}, Signature={signature}"
    )
}

/// The subject token for Google STS: a signed AWS `GetCallerIdentity` request, serialised as
/// Google documents it and percent-encoded.
fn aws_subject_token(
    verification_url: &str,
    target_resource: &str,
    aws: &AwsCredentials,
    now: DateTime<Utc>,
) -> Result<SecretString, GcpError> {
    const WHAT: &str = "signed AWS GetCallerIdentity request";
    let url_text = verification_url.replace("{region}", &aws.region);
    let url = reqwest::Url::parse(&url_text)
        .map_err(|e| GcpError::Invalid { what: WHAT, reason: format!("{url_text}: {e}") })?;
    let host = match (url.host_str(), url.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_owned(),
        (None, _) => return Err(GcpError::Invalid { what: WHAT, reason: format!("{url_text} has no host") }),
    };
    let service = url.host_str().and_then(|h| h.split('.').next()).unwrap_or("sts").to_owned();
    let amz_date = now.format("%Y%m%dT%H%M%SZ").to_string();
    let mut headers = std::collections::BTreeMap::new();
    headers.insert("host".to_owned(), host);
    headers.insert("x-amz-date".to_owned(), amz_date.clone());
    if let Some(t) = &aws.session_token {
        headers.insert("x-amz-security-token".to_owned(), t.expose_secret().to_owned());
    }
    headers.insert("x-goog-cloud-target-resource".to_owned(), target_resource.to_owned());
    let req = SigV4Request {
        method: "POST",
        url: &url,
        headers: &headers,
        payload: b"",
        region: &aws.region,
        service: &service,
    };
    let authorization = sigv4_authorization(&req, &aws.access_key_id, aws.secret_access_key.expose_secret(), &amz_date);

    // Sorted by key, as Google's libraries send them ("Authorization" sorts before lower case).
    let mut list = vec![json!({"key": "Authorization", "value": authorization})];
    list.extend(headers.iter().map(|(k, v)| json!({"key": k, "value": v})));
    let signed = json!({"headers": list, "method": "POST", "url": url_text});
    Ok(SecretString::from(percent_encode(&signed.to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: BTreeMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| map.get(k).cloned()
    }

    fn percent_decode(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' && i + 2 < bytes.len() {
                let h = std::str::from_utf8(&bytes[i + 1..i + 3]).expect("utf8");
                out.push(u8::from_str_radix(h, 16).expect("hex"));
                i += 3;
            } else {
                out.push(bytes[i]);
                i += 1;
            }
        }
        String::from_utf8(out).expect("utf8")
    }

    #[test]
    fn hmac_matches_rfc_4231() {
        assert_eq!(
            hex(&hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(
            hex(&hmac_sha256(&[0xaa; 131], b"Test Using Larger Than Block-Size Key - Hash Key First")),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn sigv4_matches_the_aws_test_suite() {
        // aws-sig-v4-test-suite, get-vanilla and get-vanilla-query-order-key-case.
        let secret = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
        let mut headers = BTreeMap::new();
        headers.insert("host".to_owned(), "example.amazonaws.com".to_owned());
        headers.insert("x-amz-date".to_owned(), "20150830T123600Z".to_owned());
        let url = reqwest::Url::parse("https://example.amazonaws.com/").expect("url");
        let req = SigV4Request {
            method: "GET",
            url: &url,
            headers: &headers,
            payload: b"",
            region: "us-east-1",
            service: "service",
        };
        assert_eq!(
            sigv4_authorization(&req, "AKIDEXAMPLE", secret, "20150830T123600Z"),
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
        let url = reqwest::Url::parse("https://example.amazonaws.com/?Param2=value2&Param1=value1").expect("url");
        let req = SigV4Request { url: &url, ..req };
        assert!(
            sigv4_authorization(&req, "AKIDEXAMPLE", secret, "20150830T123600Z")
                .ends_with("Signature=b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500")
        );
    }

    #[test]
    fn subject_token_is_the_signed_request_as_google_documents_it() {
        let aws = AwsCredentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: SecretString::from("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"),
            session_token: Some(SecretString::from("session/token+=")),
            region: "eu-west-1".into(),
        };
        let now = DateTime::parse_from_rfc3339("2026-01-02T03:04:05Z").expect("time").with_timezone(&Utc);
        let audience = "//iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/p/providers/aws";
        let token = aws_subject_token(DEFAULT_CRED_VERIFICATION_URL, audience, &aws, now).expect("token");
        let encoded = token.expose_secret();
        assert!(encoded.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.~%".contains(&b)), "{encoded}");
        let signed: Value = serde_json::from_str(&percent_decode(encoded)).expect("json");
        assert_eq!(signed["method"], "POST");
        assert_eq!(signed["url"], "https://sts.eu-west-1.amazonaws.com?Action=GetCallerIdentity&Version=2011-06-15");
        let keys: Vec<&str> =
            signed["headers"].as_array().expect("list").iter().map(|h| h["key"].as_str().expect("key")).collect();
        assert_eq!(
            keys,
            ["Authorization", "host", "x-amz-date", "x-amz-security-token", "x-goog-cloud-target-resource"]
        );
        let value = |k: &str| {
            signed["headers"].as_array().expect("list").iter().find(|h| h["key"] == k).expect("header")["value"]
                .as_str()
                .expect("str")
                .to_owned()
        };
        assert_eq!(value("host"), "sts.eu-west-1.amazonaws.com");
        assert_eq!(value("x-amz-date"), "20260102T030405Z");
        assert_eq!(value("x-amz-security-token"), "session/token+=");
        assert_eq!(value("x-goog-cloud-target-resource"), audience);
        let auth = value("Authorization");
        assert!(
            auth.starts_with(
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20260102/eu-west-1/sts/aws4_request, \
                 SignedHeaders=host;x-amz-date;x-amz-security-token;x-goog-cloud-target-resource, Signature="
            ),
            "{auth}"
        );
        assert!(!encoded.contains("wJalrXUtnFEMI"), "the secret key never leaves the process");
    }

    #[test]
    fn the_static_token_wins_then_the_file_then_the_metadata_server() {
        let src = token_source_from_env(lookup(&[(ACCESS_TOKEN_ENV, "tok"), (CREDENTIALS_FILE_ENV, "/nonexistent")]));
        assert!(src.is_ok());
        let err = token_source_from_env(lookup(&[(CREDENTIALS_FILE_ENV, "/nonexistent/creds.json")]))
            .err()
            .expect("unreadable file");
        assert_eq!(err.var, CREDENTIALS_FILE_ENV);
        assert!(token_source_from_env(lookup(&[])).is_ok());
        assert!(token_source_from_env(lookup(&[(METADATA_HOST_ENV, "127.0.0.1:1")])).is_ok());
        assert_eq!(
            MetadataServer::new("127.0.0.1:8080").expect("host").url(),
            "http://127.0.0.1:8080/computeMetadata/v1/instance/service-accounts/default/token"
        );
        assert!(MetadataServer::new("a/b").is_err());
    }

    #[tokio::test]
    async fn static_token_is_handed_back() {
        let src = token_source_from_env(lookup(&[(ACCESS_TOKEN_ENV, " tok-1 ")])).expect("source");
        assert_eq!(src.token().await.expect("token").expose_secret(), "tok-1");
    }

    fn parsed(json: &str) -> CredentialsFile {
        serde_json::from_str(json).expect("file")
    }

    #[test]
    fn unsupported_credential_files_are_named() {
        let aws_env =
            lookup(&[("AWS_ACCESS_KEY_ID", "AKID"), ("AWS_SECRET_ACCESS_KEY", "s"), ("AWS_REGION", "us-east-1")]);
        let err = AwsFederation::from_parsed(
            "f.json",
            parsed(r#"{"type": "service_account", "private_key": "k"}"#),
            &aws_env,
        )
        .expect_err("refused");
        assert!(err.reason.contains("\"service_account\""), "{err}");
        assert!(!err.reason.contains("private_key"));
        let file = r#"{"type": "external_account", "audience": "a", "token_url": "https://sts.googleapis.com/v1/token",
                       "credential_source": {"file": "/var/run/token"}}"#;
        let err = AwsFederation::from_parsed("f.json", parsed(file), &aws_env).expect_err("refused");
        assert!(err.reason.contains("only `credential_source.environment_id` aws1"), "{err}");

        let aws = r#"{"type": "external_account", "audience": "a", "token_url": "https://sts.googleapis.com/v1/token",
                      "credential_source": {"environment_id": "aws1",
                        "regional_cred_verification_url": "https://sts.{region}.amazonaws.com?Action=GetCallerIdentity&Version=2011-06-15"}}"#;
        let fed = AwsFederation::from_parsed("f.json", parsed(aws), &aws_env).expect("aws federation");
        assert!(fed.impersonation_url.is_none());
        assert_eq!(fed.subject_token_type, AWS_SUBJECT_TOKEN_TYPE);
        let err = AwsFederation::from_parsed("f.json", parsed(aws), &lookup(&[("AWS_ACCESS_KEY_ID", "AKID")]))
            .expect_err("no secret key");
        assert_eq!(err.var, "AWS_SECRET_ACCESS_KEY");
        assert!(err.reason.contains("EC2 metadata server is not supported"));
    }

    #[test]
    fn transient_errors() {
        assert!(GcpError::Http { what: "x", status: 503, message: String::new() }.is_transient());
        assert!(GcpError::Http { what: "x", status: 429, message: String::new() }.is_transient());
        assert!(!GcpError::Http { what: "x", status: 403, message: String::new() }.is_transient());
        assert!(GcpError::Transport { what: "x", reason: String::new() }.is_transient());
        assert_eq!(
            error_excerpt(r#"{"error": {"code": 403, "message": "Permission denied", "status": "PERMISSION_DENIED"}}"#),
            "PERMISSION_DENIED: Permission denied"
        );
        assert_eq!(error_excerpt(r#"{"error": "invalid_grant", "error_description": "bad"}"#), "invalid_grant: bad");
    }
}
