//! The cloud secret stores (DESIGN.md §5): AWS Secrets Manager (`aws-sm`) and GCP Secret Manager
//! (`gcp-sm`), each behind a per-instance TTL cache ([`CachedStore`]).
//!
//! # Configuration ([`CloudSecretsConfig::from_lookup`])
//!
//! | variable | meaning |
//! | --- | --- |
//! | `DATAHUB_EXECUTOR_AWS_SM_ENABLED` | `true`/`false` (also `1`/`0`, `yes`/`no`), default `false` |
//! | `DATAHUB_EXECUTOR_AWS_SM_REGION` | required when enabled; when unset, `AWS_REGION` (which Lambda and Fargate set) is used |
//! | `DATAHUB_EXECUTOR_AWS_SM_PREFIX` | default `datahub-`; `^[A-Za-z0-9_-]*$`, set it to the empty string for no prefix |
//! | `DATAHUB_EXECUTOR_GCP_SM_ENABLED` | as for AWS |
//! | `DATAHUB_EXECUTOR_GCP_SM_PROJECT_ID` | required when enabled |
//! | `DATAHUB_EXECUTOR_GCP_SM_PREFIX` | as for AWS |
//! | `DATAHUB_EXECUTOR_GCP_SM_API_BASE` | default `https://secretmanager.googleapis.com` (tests point it at a fake) |
//! | `DATAHUB_EXECUTOR_SECRET_CACHE_TTL` | whole seconds, default 21600 (6 h); `0` turns the cache off |
//!
//! A recipe's `${NAME}` is looked up as the secret `{prefix}{NAME}`. The prefix confines what a
//! recipe can read to the secrets meant for DataHub; it is checked at start-up, as DataHub does.
//! The AWS client reads everything but the region (credentials, `AWS_ENDPOINT_URL...`) from the
//! process environment; the GCP token comes from [`crate::gcp::token_source_from_env`].
//!
//! # Precedence
//!
//! [`crate::secrets::resolve`] asks the stores in order and a later store's value wins:
//! `env` < `file` < `datahub` < `aws-sm` < `gcp-sm` ([`PRECEDENCE`]). [`cloud_stores`] returns the
//! cloud stores in that order, for the caller to append after the other three.
//!
//! # Behaviour
//!
//! * **aws-sm**: `BatchGetSecretValue` with `SecretIdList` in chunks of at most 20 ids (the API's
//!   limit; moto does not enforce it), following `NextToken`. Answers are matched on the secret's
//!   `Name` with the prefix stripped. `SecretString` is read; a `SecretBinary` that is UTF-8 text is
//!   accepted too, other binary data is an error naming the secret. An `Errors` entry with
//!   `ResourceNotFoundException` means "not found" (the name is absent); any other entry
//!   (`AccessDeniedException`, `DecryptionFailure`, ...) or a failed call is an error.
//! * **gcp-sm**: `GET {base}/v1/projects/{p}/secrets/{prefix}{name}/versions/latest:access`, at most
//!   [`GCP_CONCURRENCY`] at a time, `payload.data` decoded as standard base64 and then UTF-8. HTTP 404
//!   is "not found"; every other failure is an error, including 429, 5xx and transport errors
//!   (called "transient" in the reason): a job must not run with a value silently missing.
//! * Unlike DataHub's stores, a failing store is an error naming the store and the secret names,
//!   never an empty value. Errors carry the cloud's error code and message, never a value.
//! * `names()` on both stores lists the secret names (prefix stripped) without reading any value,
//!   for the admission's check that every reference resolves.
//!
//! # Cache ([`CachedStore`])
//!
//! Values are kept in memory only, per store instance: a value read at `t` is served until
//! `t + ttl` and then read again, so a rotated secret is picked up after the TTL without a restart.
//! Decisions (unlike DataHub, whose `TTLCache` also caches misses):
//! * "not found" is **not** cached: a secret created after a miss is found on the next run;
//! * errors are **never** cached;
//! * a name that was found and is later not found is dropped from the cache.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use base64::Engine as _;
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use crate::error::{ConfigError, SecretStoreError};
use crate::gcp::{TokenSource, error_chain, error_excerpt, percent_encode, token_source_from_env};
use crate::secrets::{BoxFuture, SecretStore};

pub const AWS_SM_ENABLED_ENV: &str = "DATAHUB_EXECUTOR_AWS_SM_ENABLED";
pub const AWS_SM_REGION_ENV: &str = "DATAHUB_EXECUTOR_AWS_SM_REGION";
pub const AWS_SM_PREFIX_ENV: &str = "DATAHUB_EXECUTOR_AWS_SM_PREFIX";
/// The region fallback when [`AWS_SM_REGION_ENV`] is unset.
pub const AWS_REGION_ENV: &str = "AWS_REGION";
pub const GCP_SM_ENABLED_ENV: &str = "DATAHUB_EXECUTOR_GCP_SM_ENABLED";
pub const GCP_SM_PROJECT_ID_ENV: &str = "DATAHUB_EXECUTOR_GCP_SM_PROJECT_ID";
pub const GCP_SM_PREFIX_ENV: &str = "DATAHUB_EXECUTOR_GCP_SM_PREFIX";
pub const GCP_SM_API_BASE_ENV: &str = "DATAHUB_EXECUTOR_GCP_SM_API_BASE";
pub const SECRET_CACHE_TTL_ENV: &str = "DATAHUB_EXECUTOR_SECRET_CACHE_TTL";

/// The default secret name prefix of both cloud stores.
pub const DEFAULT_PREFIX: &str = "datahub-";
/// Google's Secret Manager API.
pub const DEFAULT_GCP_API_BASE: &str = "https://secretmanager.googleapis.com";
/// The default lifetime of a cached value (6 hours).
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(21_600);
/// Store names from lowest to highest precedence: a later store's value wins.
pub const PRECEDENCE: [&str; 5] = ["env", "file", "datahub", AWS_STORE, GCP_STORE];
/// The most ids `BatchGetSecretValue` accepts in one call.
pub const AWS_BATCH_SIZE: usize = 20;
/// The most `:access` calls the GCP store runs at once.
pub const GCP_CONCURRENCY: usize = 8;
/// Secrets asked for per GCP list page.
const GCP_LIST_PAGE_SIZE: usize = 250;
/// A bound on pages read per call or listing, against a server whose tokens never end.
const MAX_PAGES: usize = 1000;

/// The AWS Secrets Manager store's name.
pub const AWS_STORE: &str = "aws-sm";
/// The GCP Secret Manager store's name.
pub const GCP_STORE: &str = "gcp-sm";

/// AWS Secrets Manager settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsSmConfig {
    pub region: String,
    pub prefix: String,
}

/// GCP Secret Manager settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcpSmConfig {
    pub project_id: String,
    pub prefix: String,
    /// Base URL without a trailing slash.
    pub api_base: String,
}

/// Which cloud stores are enabled, and how long their values are cached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudSecretsConfig {
    pub aws: Option<AwsSmConfig>,
    pub gcp: Option<GcpSmConfig>,
    pub cache_ttl: Duration,
}

impl Default for CloudSecretsConfig {
    fn default() -> Self {
        CloudSecretsConfig { aws: None, gcp: None, cache_ttl: DEFAULT_CACHE_TTL }
    }
}

fn flag(lookup: &impl Fn(&str) -> Option<String>, var: &'static str) -> Result<bool, ConfigError> {
    let Some(v) = lookup(var) else { return Ok(false) };
    match v.trim().to_ascii_lowercase().as_str() {
        "" | "false" | "0" | "no" => Ok(false),
        "true" | "1" | "yes" => Ok(true),
        _ => Err(ConfigError::new(var, format!("{v:?} is not true or false"))),
    }
}

/// The prefix in `var`: unset = [`DEFAULT_PREFIX`], set (even to "") = that value, checked.
fn prefix(lookup: &impl Fn(&str) -> Option<String>, var: &'static str) -> Result<String, ConfigError> {
    let Some(v) = lookup(var) else { return Ok(DEFAULT_PREFIX.to_owned()) };
    if v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        Ok(v)
    } else {
        Err(ConfigError::new(
            var,
            format!(
                "{v:?} is not allowed: a prefix may hold only the characters A-Z a-z 0-9 _ - \
                 (^[A-Za-z0-9_-]*$), or be empty"
            ),
        ))
    }
}

fn required_id(
    value: Option<String>,
    var: &'static str,
    what: &str,
    allowed: impl Fn(char) -> bool,
) -> Result<String, ConfigError> {
    let v = value.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
    let Some(v) = v else {
        return Err(ConfigError::new(var, format!("is required when the {what} secret store is enabled")));
    };
    if v.chars().all(allowed) { Ok(v) } else { Err(ConfigError::new(var, format!("{v:?} is not a valid {what} id"))) }
}

impl CloudSecretsConfig {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads the variables of the module docs through `lookup`.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let non_empty = |k: &str| lookup(k).filter(|v| !v.trim().is_empty());
        let aws = if flag(&lookup, AWS_SM_ENABLED_ENV)? {
            let region = non_empty(AWS_SM_REGION_ENV).or_else(|| non_empty(AWS_REGION_ENV));
            let region = required_id(region, AWS_SM_REGION_ENV, "AWS region for the aws-sm", |c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'
            })?;
            Some(AwsSmConfig { region, prefix: prefix(&lookup, AWS_SM_PREFIX_ENV)? })
        } else {
            None
        };
        let gcp = if flag(&lookup, GCP_SM_ENABLED_ENV)? {
            let project_id = required_id(
                non_empty(GCP_SM_PROJECT_ID_ENV),
                GCP_SM_PROJECT_ID_ENV,
                "GCP project for the gcp-sm",
                |c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | ':'),
            )?;
            let api_base = match non_empty(GCP_SM_API_BASE_ENV) {
                Some(base) => {
                    let base = base.trim().trim_end_matches('/');
                    if !(base.starts_with("https://") || base.starts_with("http://")) || base.contains(['?', '#', ' '])
                    {
                        return Err(ConfigError::new(
                            GCP_SM_API_BASE_ENV,
                            format!("{base:?} must be an http(s) base URL"),
                        ));
                    }
                    base.to_owned()
                }
                None => DEFAULT_GCP_API_BASE.to_owned(),
            };
            Some(GcpSmConfig { project_id, prefix: prefix(&lookup, GCP_SM_PREFIX_ENV)?, api_base })
        } else {
            None
        };
        let cache_ttl = match non_empty(SECRET_CACHE_TTL_ENV) {
            Some(v) => Duration::from_secs(v.trim().parse::<u64>().map_err(|_| {
                ConfigError::new(SECRET_CACHE_TTL_ENV, format!("{v:?} is not a whole number of seconds"))
            })?),
            None => DEFAULT_CACHE_TTL,
        };
        Ok(CloudSecretsConfig { aws, gcp, cache_ttl })
    }
}

/// Builds the enabled cloud stores, in precedence order (`aws-sm`, then `gcp-sm`), each wrapped in
/// a [`CachedStore`] with the configured TTL. The GCP token source is chosen through `lookup`; the
/// AWS client takes the configured region and everything else from the process environment.
pub async fn cloud_stores(
    config: &CloudSecretsConfig,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Vec<Box<dyn SecretStore>>, ConfigError> {
    let mut stores: Vec<Box<dyn SecretStore>> = Vec::new();
    if let Some(aws) = &config.aws {
        #[cfg(feature = "aws-sm")]
        {
            let store = AwsSecretsManagerStore::from_config(aws).await;
            stores.push(Box::new(CachedStore::new(store, config.cache_ttl)));
        }
        #[cfg(not(feature = "aws-sm"))]
        {
            let _ = aws;
            return Err(ConfigError::new(
                AWS_SM_ENABLED_ENV,
                "this build has no AWS support (the `aws` feature of `shared` is off)",
            ));
        }
    }
    if let Some(gcp) = &config.gcp {
        let tokens = token_source_from_env(&lookup)?;
        let store = GcpSecretManagerStore::new(gcp, tokens)?;
        stores.push(Box::new(CachedStore::new(store, config.cache_ttl)));
    }
    Ok(stores)
}

/// [`CloudSecretsConfig::from_env`] and [`cloud_stores`] over the process environment.
pub async fn cloud_stores_from_env() -> Result<Vec<Box<dyn SecretStore>>, ConfigError> {
    let config = CloudSecretsConfig::from_env()?;
    cloud_stores(&config, |k| std::env::var(k).ok()).await
}

/// The names in `names`, once each, in order, without empty ones.
fn distinct(names: &[String]) -> Vec<String> {
    let mut seen = BTreeSet::new();
    names.iter().filter(|n| !n.is_empty() && seen.insert(n.as_str())).cloned().collect()
}

// ---------------------------------------------------------------------------------------------
// The cache

/// A source of the current time, injected so the cache's TTL can be tested without sleeping.
pub trait Clock: Send + Sync {
    fn now(&self) -> Instant;
}

/// The real monotonic clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that moves only when told to (tests). Clones share the same time.
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<Mutex<Instant>>,
}

impl Default for ManualClock {
    fn default() -> Self {
        ManualClock { now: Arc::new(Mutex::new(Instant::now())) }
    }
}

impl ManualClock {
    pub fn new() -> Self {
        Self::default()
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let mut now = self.now.lock().unwrap_or_else(|e| e.into_inner());
        *now += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        *self.now.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct Cached {
    value: SecretString,
    read_at: Instant,
}

/// A store whose found values are kept in memory for `ttl` (see the module docs: misses and
/// errors are not cached). Its `name()` is the inner store's. `Debug` shows no value.
pub struct CachedStore<S: SecretStore> {
    inner: S,
    ttl: Duration,
    clock: Arc<dyn Clock>,
    cache: Mutex<HashMap<String, Cached>>,
}

impl<S: SecretStore> fmt::Debug for CachedStore<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedStore")
            .field("store", &self.inner.name())
            .field("ttl", &self.ttl)
            .field("cached", &self.lock().len())
            .finish_non_exhaustive()
    }
}

impl<S: SecretStore> CachedStore<S> {
    /// Caches `inner`'s values for `ttl` on the system clock.
    pub fn new(inner: S, ttl: Duration) -> Self {
        Self::with_clock(inner, ttl, Arc::new(SystemClock))
    }

    /// Caches `inner`'s values for `ttl` on `clock`.
    pub fn with_clock(inner: S, ttl: Duration, clock: Arc<dyn Clock>) -> Self {
        CachedStore { inner, ttl, clock, cache: Mutex::new(HashMap::new()) }
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Cached>> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn fresh(&self, entry: &Cached, now: Instant) -> bool {
        now.saturating_duration_since(entry.read_at) < self.ttl
    }
}

impl<S: SecretStore> SecretStore for CachedStore<S> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn get<'a>(&'a self, names: &'a [String]) -> BoxFuture<'a, Result<BTreeMap<String, String>, SecretStoreError>> {
        Box::pin(async move {
            // The read time is taken before the read: a value is never served longer than `ttl`
            // after the store was asked for it.
            let now = self.clock.now();
            let mut out = BTreeMap::new();
            let mut missing = Vec::new();
            {
                let cache = self.lock();
                for name in distinct(names) {
                    match cache.get(&name) {
                        Some(entry) if self.fresh(entry, now) => {
                            out.insert(name, entry.value.expose_secret().to_owned());
                        }
                        _ => missing.push(name),
                    }
                }
            }
            if missing.is_empty() {
                return Ok(out);
            }
            let found = self.inner.get(&missing).await?;
            {
                let mut cache = self.lock();
                cache.retain(|_, entry| self.fresh(entry, now));
                for name in &missing {
                    match found.get(name) {
                        Some(v) if !self.ttl.is_zero() => {
                            cache.insert(name.clone(), Cached { value: SecretString::from(v.clone()), read_at: now });
                        }
                        _ => {
                            cache.remove(name);
                        }
                    }
                }
            }
            out.extend(found.into_iter().filter(|(n, _)| missing.contains(n)));
            Ok(out)
        })
    }
}

// ---------------------------------------------------------------------------------------------
// AWS Secrets Manager

#[cfg(feature = "aws-sm")]
pub use aws::AwsSecretsManagerStore;

#[cfg(feature = "aws-sm")]
mod aws {
    use std::collections::{BTreeMap, BTreeSet};

    use aws_sdk_secretsmanager::Client;
    use aws_sdk_secretsmanager::types::{Filter, FilterNameStringType, SecretValueEntry};

    use super::{AWS_BATCH_SIZE, AWS_STORE, AwsSmConfig, MAX_PAGES, distinct};
    use crate::error::SecretStoreError;
    use crate::secrets::{BoxFuture, SecretStore};

    const NOT_FOUND: &str = "ResourceNotFoundException";
    /// Secrets asked for per `ListSecrets` page (the API's maximum is 100).
    const AWS_LIST_PAGE_SIZE: i32 = 100;

    /// The `aws-sm` store: secret `{prefix}{name}` in AWS Secrets Manager.
    #[derive(Debug, Clone)]
    pub struct AwsSecretsManagerStore {
        client: Client,
        prefix: String,
    }

    fn fail(names: Vec<String>, reason: impl Into<String>) -> SecretStoreError {
        SecretStoreError { store: AWS_STORE, names, reason: reason.into() }
    }

    impl AwsSecretsManagerStore {
        /// A store over `client`; `prefix` is expected to be checked already
        /// ([`super::CloudSecretsConfig`] does).
        pub fn new(client: Client, prefix: impl Into<String>) -> Self {
            AwsSecretsManagerStore { client, prefix: prefix.into() }
        }

        /// A client for `config.region`, with credentials and endpoint from the environment.
        pub async fn from_config(config: &AwsSmConfig) -> Self {
            let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
                .region(aws_config::Region::new(config.region.clone()))
                .load()
                .await;
            Self::new(Client::new(&sdk), config.prefix.clone())
        }

        pub fn prefix(&self) -> &str {
            &self.prefix
        }

        /// The names (prefix stripped) of the secrets under the prefix, from `ListSecrets` with a
        /// `name` filter. No value is read. The filter is a case-insensitive prefix match in AWS,
        /// so names are checked again here, case-sensitively.
        pub async fn names(&self) -> Result<BTreeSet<String>, SecretStoreError> {
            let listing = || vec![format!("{}*", self.prefix)];
            let mut names = BTreeSet::new();
            let mut token: Option<String> = None;
            for _ in 0..MAX_PAGES {
                let mut req = self.client.list_secrets().max_results(AWS_LIST_PAGE_SIZE).set_next_token(token.take());
                if !self.prefix.is_empty() {
                    req = req.filters(Filter::builder().key(FilterNameStringType::Name).values(&self.prefix).build());
                }
                let page = req.send().await.map_err(|e| {
                    fail(listing(), format!("ListSecrets failed: {}", crate::aws_error::describe(&e).reason))
                })?;
                names.extend(
                    page.secret_list()
                        .iter()
                        .filter_map(|s| s.name()?.strip_prefix(self.prefix.as_str()))
                        .filter(|n| !n.is_empty())
                        .map(str::to_owned),
                );
                match page.next_token() {
                    Some(t) if !t.is_empty() => token = Some(t.to_owned()),
                    _ => return Ok(names),
                }
            }
            Err(fail(listing(), format!("ListSecrets did not end after {MAX_PAGES} pages")))
        }

        /// The value of one answer entry, or an error naming the secret (never quoting a value).
        fn value(name: &str, entry: &SecretValueEntry) -> Result<String, SecretStoreError> {
            if let Some(s) = entry.secret_string() {
                return Ok(s.to_owned());
            }
            match entry.secret_binary() {
                Some(b) => String::from_utf8(b.as_ref().to_vec()).map_err(|_| {
                    fail(vec![name.to_owned()], "the secret holds binary data (SecretBinary) that is not UTF-8 text")
                }),
                None => Err(fail(vec![name.to_owned()], "the answer holds neither SecretString nor SecretBinary")),
            }
        }

        /// One chunk of at most [`AWS_BATCH_SIZE`] names, following `NextToken`.
        async fn get_chunk(
            &self,
            chunk: &[String],
            out: &mut BTreeMap<String, String>,
        ) -> Result<(), SecretStoreError> {
            let ids: Vec<String> = chunk.iter().map(|n| format!("{}{n}", self.prefix)).collect();
            let mut token: Option<String> = None;
            for _ in 0..MAX_PAGES {
                let page = self
                    .client
                    .batch_get_secret_value()
                    .set_secret_id_list(Some(ids.clone()))
                    .set_next_token(token.take())
                    .send()
                    .await
                    .map_err(|e| {
                        fail(
                            chunk.to_vec(),
                            format!("BatchGetSecretValue failed: {}", crate::aws_error::describe(&e).reason),
                        )
                    })?;
                for entry in page.secret_values() {
                    let Some(name) = entry.name().and_then(|n| n.strip_prefix(self.prefix.as_str())) else {
                        continue;
                    };
                    if chunk.iter().any(|n| n == name) {
                        out.insert(name.to_owned(), Self::value(name, entry)?);
                    }
                }
                let mut failed = Vec::new();
                let mut reasons = Vec::new();
                for e in page.errors() {
                    let id = e.secret_id().unwrap_or("(no id)");
                    let name = id.strip_prefix(self.prefix.as_str()).unwrap_or(id);
                    let code = e.error_code().unwrap_or("UnknownError");
                    if code == NOT_FOUND {
                        tracing::debug!(store = AWS_STORE, secret = name, "secret not found");
                        continue;
                    }
                    let message = e.message().unwrap_or("no message");
                    failed.push(name.to_owned());
                    reasons.push(format!("{id}: {code}: {message}"));
                }
                if !failed.is_empty() {
                    return Err(fail(failed, format!("BatchGetSecretValue reported {}", reasons.join("; "))));
                }
                match page.next_token() {
                    Some(t) if !t.is_empty() => token = Some(t.to_owned()),
                    _ => return Ok(()),
                }
            }
            Err(fail(chunk.to_vec(), format!("BatchGetSecretValue did not end after {MAX_PAGES} pages")))
        }
    }

    impl SecretStore for AwsSecretsManagerStore {
        fn name(&self) -> &'static str {
            AWS_STORE
        }

        fn get<'a>(&'a self, names: &'a [String]) -> BoxFuture<'a, Result<BTreeMap<String, String>, SecretStoreError>> {
            Box::pin(async move {
                let mut out = BTreeMap::new();
                for chunk in distinct(names).chunks(AWS_BATCH_SIZE) {
                    self.get_chunk(chunk, &mut out).await?;
                }
                Ok(out)
            })
        }
    }
}

// ---------------------------------------------------------------------------------------------
// GCP Secret Manager

/// The `gcp-sm` store: secret `{prefix}{name}` in GCP Secret Manager, over its REST API.
pub struct GcpSecretManagerStore {
    inner: Arc<GcpInner>,
}

struct GcpInner {
    http: reqwest::Client,
    tokens: Box<dyn TokenSource>,
    project_id: String,
    prefix: String,
    api_base: String,
}

impl fmt::Debug for GcpSecretManagerStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GcpSecretManagerStore")
            .field("project_id", &self.inner.project_id)
            .field("prefix", &self.inner.prefix)
            .field("api_base", &self.inner.api_base)
            .finish_non_exhaustive()
    }
}

fn gcp_fail(names: Vec<String>, reason: impl Into<String>) -> SecretStoreError {
    SecretStoreError { store: GCP_STORE, names, reason: reason.into() }
}

/// Whether `status` is worth trying again later.
fn transient_status(status: u16) -> bool {
    status >= 500 || status == 408 || status == 429
}

/// Whether `id` can be a Secret Manager secret id (`[A-Za-z0-9_-]{1,255}`).
fn gcp_secret_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 255 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

impl GcpInner {
    /// An authenticated GET; the body of a 2xx answer, else `(status, reason)`.
    async fn get(&self, what: &str, url: &str) -> Result<(u16, String), String> {
        let token = self.tokens.token().await.map_err(|e| {
            let kind = if e.is_transient() { "transient failure: " } else { "" };
            format!("{kind}cannot get a Google access token: {e}")
        })?;
        let resp = self
            .http
            .get(url)
            .header("Authorization", format!("Bearer {}", token.expose_secret()))
            .send()
            .await
            .map_err(|e| {
                format!("transient failure: {what}: Secret Manager could not be reached: {}", error_chain(&e))
            })?;
        let status = resp.status().as_u16();
        let text = resp
            .text()
            .await
            .map_err(|e| format!("transient failure: {what}: reading the answer failed: {}", error_chain(&e)))?;
        Ok((status, text))
    }

    fn http_reason(what: &str, status: u16, body: &str) -> String {
        let kind = if transient_status(status) { "transient failure: " } else { "" };
        format!("{kind}{what} answered HTTP {status}: {}", error_excerpt(body))
    }

    /// The value of `name`, `None` when the secret (or its latest version) does not exist.
    async fn access(&self, name: String) -> Result<Option<(String, String)>, SecretStoreError> {
        let id = format!("{}{name}", self.prefix);
        if !gcp_secret_id(&id) {
            // No secret can have this id, so it is not there (and it never goes into a URL).
            tracing::debug!(store = GCP_STORE, secret = %name, "not a possible Secret Manager id");
            return Ok(None);
        }
        let url = format!("{}/v1/projects/{}/secrets/{id}/versions/latest:access", self.api_base, self.project_id);
        let fail = |reason: String| gcp_fail(vec![name.clone()], reason);
        let (status, text) = self.get("AccessSecretVersion", &url).await.map_err(fail)?;
        if status == 404 {
            tracing::debug!(store = GCP_STORE, secret = %name, "secret not found");
            return Ok(None);
        }
        if !(200..300).contains(&status) {
            return Err(fail(Self::http_reason("AccessSecretVersion", status, &text)));
        }
        // The answer holds the value: no error below may quote it (serde's syntax errors name a
        // position only, and the decode errors are replaced by fixed texts).
        let answer: Value = serde_json::from_str(&text)
            .map_err(|e| fail(format!("AccessSecretVersion answered with something that is not JSON: {e}")))?;
        let data = answer
            .pointer("/payload/data")
            .and_then(Value::as_str)
            .ok_or_else(|| fail("AccessSecretVersion answered without payload.data".to_owned()))?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(data)
            .map_err(|_| fail("payload.data is not standard base64".to_owned()))?;
        let value = String::from_utf8(bytes).map_err(|_| fail("the secret's value is not UTF-8 text".to_owned()))?;
        Ok(Some((name, value)))
    }
}

impl GcpSecretManagerStore {
    /// A store for `config` that authenticates with `tokens`.
    pub fn new(config: &GcpSmConfig, tokens: Box<dyn TokenSource>) -> Result<Self, ConfigError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30))
            .user_agent(concat!("datahub-executor-rs/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ConfigError::new(GCP_SM_API_BASE_ENV, format!("cannot build the HTTP client: {e}")))?;
        Ok(GcpSecretManagerStore {
            inner: Arc::new(GcpInner {
                http,
                tokens,
                project_id: config.project_id.clone(),
                prefix: config.prefix.clone(),
                api_base: config.api_base.trim_end_matches('/').to_owned(),
            }),
        })
    }

    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// The names (prefix stripped) of the project's secrets under the prefix:
    /// `GET {base}/v1/projects/{p}/secrets?filter=name:{prefix}&pageSize=250`, following
    /// `nextPageToken`. No value is read. Google's `name:` filter matches anywhere in the name, so
    /// the prefix is checked again here.
    pub async fn names(&self) -> Result<BTreeSet<String>, SecretStoreError> {
        let inner = &self.inner;
        let listing = || vec![format!("{}*", inner.prefix)];
        let mut base =
            format!("{}/v1/projects/{}/secrets?pageSize={GCP_LIST_PAGE_SIZE}", inner.api_base, inner.project_id);
        if !inner.prefix.is_empty() {
            base.push_str(&format!("&filter={}", percent_encode(&format!("name:{}", inner.prefix))));
        }
        let mut names = BTreeSet::new();
        let mut token: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let url = match &token {
                Some(t) => format!("{base}&pageToken={}", percent_encode(t)),
                None => base.clone(),
            };
            let (status, text) = inner.get("ListSecrets", &url).await.map_err(|r| gcp_fail(listing(), r))?;
            if !(200..300).contains(&status) {
                return Err(gcp_fail(listing(), GcpInner::http_reason("ListSecrets", status, &text)));
            }
            let page: Value = serde_json::from_str(&text).map_err(|e| {
                gcp_fail(listing(), format!("ListSecrets answered with something that is not JSON: {e}"))
            })?;
            names.extend(
                page.get("secrets")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|s| s.get("name")?.as_str()?.rsplit('/').next()?.strip_prefix(inner.prefix.as_str()))
                    .filter(|n| !n.is_empty())
                    .map(str::to_owned),
            );
            match page.get("nextPageToken").and_then(Value::as_str) {
                Some(t) if !t.is_empty() => token = Some(t.to_owned()),
                _ => return Ok(names),
            }
        }
        Err(gcp_fail(listing(), format!("ListSecrets did not end after {MAX_PAGES} pages")))
    }
}

impl SecretStore for GcpSecretManagerStore {
    fn name(&self) -> &'static str {
        GCP_STORE
    }

    fn get<'a>(&'a self, names: &'a [String]) -> BoxFuture<'a, Result<BTreeMap<String, String>, SecretStoreError>> {
        Box::pin(async move {
            let mut pending = distinct(names).into_iter();
            let mut running = tokio::task::JoinSet::new();
            let mut out = BTreeMap::new();
            loop {
                while running.len() < GCP_CONCURRENCY
                    && let Some(name) = pending.next()
                {
                    let inner = Arc::clone(&self.inner);
                    running.spawn(async move { inner.access(name).await });
                }
                match running.join_next().await {
                    None => return Ok(out),
                    Some(Ok(Ok(Some((name, value))))) => {
                        out.insert(name, value);
                    }
                    Some(Ok(Ok(None))) => {}
                    // Dropping `running` aborts the other lookups.
                    Some(Ok(Err(e))) => return Err(e),
                    Some(Err(e)) => return Err(gcp_fail(names.to_vec(), format!("a lookup task failed: {e}"))),
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(pairs: &[(&str, &str)]) -> Result<CloudSecretsConfig, ConfigError> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        CloudSecretsConfig::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_enable_nothing() {
        let c = cfg(&[]).expect("defaults");
        assert_eq!(c, CloudSecretsConfig { aws: None, gcp: None, cache_ttl: Duration::from_secs(21_600) });
        assert_eq!(cfg(&[(AWS_SM_ENABLED_ENV, "false"), (GCP_SM_ENABLED_ENV, "")]).expect("off"), c);
    }

    #[test]
    fn enabled_stores_take_defaults() {
        let c = cfg(&[
            (AWS_SM_ENABLED_ENV, "true"),
            (AWS_SM_REGION_ENV, "eu-west-1"),
            (GCP_SM_ENABLED_ENV, "TRUE"),
            (GCP_SM_PROJECT_ID_ENV, "acme-data"),
            (SECRET_CACHE_TTL_ENV, "60"),
        ])
        .expect("config");
        assert_eq!(c.aws, Some(AwsSmConfig { region: "eu-west-1".into(), prefix: "datahub-".into() }));
        assert_eq!(
            c.gcp,
            Some(GcpSmConfig {
                project_id: "acme-data".into(),
                prefix: "datahub-".into(),
                api_base: "https://secretmanager.googleapis.com".into()
            })
        );
        assert_eq!(c.cache_ttl, Duration::from_secs(60));

        let c = cfg(&[
            (AWS_SM_ENABLED_ENV, "1"),
            (AWS_REGION_ENV, "us-east-2"),
            (AWS_SM_PREFIX_ENV, ""),
            (GCP_SM_ENABLED_ENV, "yes"),
            (GCP_SM_PROJECT_ID_ENV, "p1"),
            (GCP_SM_PREFIX_ENV, "Team_A-"),
            (GCP_SM_API_BASE_ENV, "http://127.0.0.1:9/"),
            (SECRET_CACHE_TTL_ENV, "0"),
        ])
        .expect("config");
        assert_eq!(
            c.aws,
            Some(AwsSmConfig { region: "us-east-2".into(), prefix: String::new() }),
            "AWS_REGION fallback"
        );
        let gcp = c.gcp.expect("gcp");
        assert_eq!((gcp.prefix.as_str(), gcp.api_base.as_str()), ("Team_A-", "http://127.0.0.1:9"));
        assert_eq!(c.cache_ttl, Duration::ZERO);
    }

    #[test]
    fn bad_prefixes_name_their_variable() {
        for bad in ["datahub/", "a.b", "x y"] {
            let e = cfg(&[(AWS_SM_ENABLED_ENV, "true"), (AWS_SM_REGION_ENV, "us-east-1"), (AWS_SM_PREFIX_ENV, bad)])
                .expect_err("bad aws prefix");
            assert_eq!(e.var, AWS_SM_PREFIX_ENV, "{bad}");
            assert!(e.to_string().contains("A-Z a-z 0-9 _ -"), "{e}");
            let e = cfg(&[(GCP_SM_ENABLED_ENV, "true"), (GCP_SM_PROJECT_ID_ENV, "p"), (GCP_SM_PREFIX_ENV, bad)])
                .expect_err("bad gcp prefix");
            assert_eq!(e.var, GCP_SM_PREFIX_ENV, "{bad}");
            assert!(e.to_string().contains("^[A-Za-z0-9_-]*$"), "{e}");
        }
    }

    #[test]
    fn missing_region_project_and_bad_values_are_named() {
        let e = cfg(&[(AWS_SM_ENABLED_ENV, "true")]).expect_err("no region");
        assert_eq!(e.var, AWS_SM_REGION_ENV);
        let e = cfg(&[(GCP_SM_ENABLED_ENV, "true"), (GCP_SM_PROJECT_ID_ENV, " ")]).expect_err("no project");
        assert_eq!(e.var, GCP_SM_PROJECT_ID_ENV);
        assert_eq!(cfg(&[(AWS_SM_ENABLED_ENV, "maybe")]).expect_err("flag").var, AWS_SM_ENABLED_ENV);
        assert_eq!(cfg(&[(SECRET_CACHE_TTL_ENV, "6h")]).expect_err("ttl").var, SECRET_CACHE_TTL_ENV);
        let e =
            cfg(&[(GCP_SM_ENABLED_ENV, "true"), (GCP_SM_PROJECT_ID_ENV, "p"), (GCP_SM_API_BASE_ENV, "example.com")])
                .expect_err("base");
        assert_eq!(e.var, GCP_SM_API_BASE_ENV);
        // Disabled stores are not checked.
        assert!(cfg(&[(AWS_SM_PREFIX_ENV, "a.b")]).is_ok());
    }

    #[test]
    fn precedence_puts_the_cloud_stores_last() {
        assert_eq!(PRECEDENCE, ["env", "file", "datahub", "aws-sm", "gcp-sm"]);
    }

    /// A store whose values and failures the test sets, counting the names it is asked for.
    #[derive(Default)]
    struct FakeStore {
        values: Mutex<BTreeMap<String, String>>,
        fail: Mutex<bool>,
        asked: Mutex<Vec<Vec<String>>>,
    }

    impl FakeStore {
        fn set(&self, name: &str, value: &str) {
            self.values.lock().expect("lock").insert(name.into(), value.into());
        }
        fn asked(&self) -> Vec<Vec<String>> {
            self.asked.lock().expect("lock").clone()
        }
    }

    impl SecretStore for Arc<FakeStore> {
        fn name(&self) -> &'static str {
            "fake"
        }
        fn get<'a>(&'a self, names: &'a [String]) -> BoxFuture<'a, Result<BTreeMap<String, String>, SecretStoreError>> {
            Box::pin(async move {
                self.asked.lock().expect("lock").push(names.to_vec());
                if *self.fail.lock().expect("lock") {
                    return Err(SecretStoreError { store: "fake", names: names.to_vec(), reason: "down".into() });
                }
                let values = self.values.lock().expect("lock");
                Ok(names.iter().filter_map(|n| values.get(n).map(|v| (n.clone(), v.clone()))).collect())
            })
        }
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[tokio::test]
    async fn cache_serves_until_the_ttl_and_never_caches_misses_or_errors() {
        let fake = Arc::new(FakeStore::default());
        fake.set("A", "old");
        let clock = ManualClock::new();
        let store = CachedStore::with_clock(Arc::clone(&fake), Duration::from_secs(100), Arc::new(clock.clone()));
        assert_eq!(store.name(), "fake");

        let got = store.get(&names(&["A", "B", "A"])).await.expect("get");
        assert_eq!(got, BTreeMap::from([("A".to_string(), "old".to_string())]));
        assert_eq!(fake.asked(), vec![names(&["A", "B"])], "asked once per distinct name");

        // Rotated and created in the store: A is still cached, B (a miss) is asked again.
        fake.set("A", "new");
        fake.set("B", "created");
        clock.advance(Duration::from_secs(99));
        let got = store.get(&names(&["A", "B"])).await.expect("get");
        assert_eq!(got["A"], "old");
        assert_eq!(got["B"], "created");
        assert_eq!(fake.asked().last(), Some(&names(&["B"])));

        // At the TTL A is read again.
        clock.advance(Duration::from_secs(1));
        let got = store.get(&names(&["A"])).await.expect("get");
        assert_eq!(got["A"], "new");
        assert_eq!(fake.asked().len(), 3);

        // Errors are passed on and not cached; once the store heals, values come back.
        clock.advance(Duration::from_secs(100));
        *fake.fail.lock().expect("lock") = true;
        let e = store.get(&names(&["A"])).await.expect_err("store down");
        assert_eq!(e.store, "fake");
        *fake.fail.lock().expect("lock") = false;
        assert_eq!(store.get(&names(&["A"])).await.expect("healed")["A"], "new");
        let debug = format!("{store:?}");
        assert!(!debug.contains("new") && debug.contains("fake"), "{debug}");
    }

    #[tokio::test]
    async fn zero_ttl_reads_every_time() {
        let fake = Arc::new(FakeStore::default());
        fake.set("A", "v");
        let store = CachedStore::new(Arc::clone(&fake), Duration::ZERO);
        for _ in 0..3 {
            assert_eq!(store.get(&names(&["A"])).await.expect("get")["A"], "v");
        }
        assert_eq!(fake.asked().len(), 3);
    }

    #[cfg(feature = "aws-sm")]
    mod aws_mocks {
        use aws_sdk_secretsmanager::Client;
        use aws_sdk_secretsmanager::operation::batch_get_secret_value::{
            BatchGetSecretValueError, BatchGetSecretValueInput, BatchGetSecretValueOutput,
        };
        use aws_sdk_secretsmanager::operation::list_secrets::ListSecretsOutput;
        use aws_sdk_secretsmanager::primitives::Blob;
        use aws_sdk_secretsmanager::types::error::DecryptionFailure;
        use aws_sdk_secretsmanager::types::{ApiErrorType, SecretListEntry, SecretValueEntry};
        use aws_smithy_mocks::{RuleMode, mock, mock_client};

        use super::*;

        const VALUE: &str = "s3cr3t-value-never-shown";

        fn entry(name: &str, value: &str) -> SecretValueEntry {
            SecretValueEntry::builder()
                .name(name)
                .arn(format!("arn:aws:secretsmanager:::secret:{name}"))
                .secret_string(value)
                .build()
        }

        fn no_retries(b: aws_sdk_secretsmanager::config::Builder) -> aws_sdk_secretsmanager::config::Builder {
            b.retry_config(aws_sdk_secretsmanager::config::retry::RetryConfig::disabled())
        }

        #[tokio::test]
        async fn errors_entries_other_than_not_found_fail_naming_store_and_secret() {
            let answer = mock!(Client::batch_get_secret_value).then_output(|| {
                BatchGetSecretValueOutput::builder()
                    .secret_values(entry("datahub-OK", VALUE))
                    .errors(
                        ApiErrorType::builder()
                            .secret_id("datahub-GONE")
                            .error_code("ResourceNotFoundException")
                            .message("Secrets Manager can't find the specified secret.")
                            .build(),
                    )
                    .errors(
                        ApiErrorType::builder()
                            .secret_id("datahub-DENIED")
                            .error_code("AccessDeniedException")
                            .message("User is not authorized to perform secretsmanager:GetSecretValue")
                            .build(),
                    )
                    .build()
            });
            let client = mock_client!(aws_sdk_secretsmanager, RuleMode::Sequential, &[&answer]);
            let store = AwsSecretsManagerStore::new(client, "datahub-");
            let e = store.get(&names(&["OK", "GONE", "DENIED"])).await.expect_err("denied");
            assert_eq!(e.store, "aws-sm");
            assert_eq!(e.names, names(&["DENIED"]));
            let text = e.to_string();
            assert!(text.contains("aws-sm") && text.contains("AccessDeniedException"), "{text}");
            assert!(!text.contains(VALUE), "{text}");
        }

        #[tokio::test]
        async fn only_not_found_entries_are_absent() {
            let answer = mock!(Client::batch_get_secret_value).then_output(|| {
                BatchGetSecretValueOutput::builder()
                    .secret_values(entry("datahub-OK", VALUE))
                    .secret_values(
                        SecretValueEntry::builder().name("datahub-BIN").secret_binary(Blob::new("bin ok é")).build(),
                    )
                    .errors(
                        ApiErrorType::builder()
                            .secret_id("datahub-GONE")
                            .error_code("ResourceNotFoundException")
                            .build(),
                    )
                    .build()
            });
            let client = mock_client!(aws_sdk_secretsmanager, RuleMode::Sequential, &[&answer]);
            let store = AwsSecretsManagerStore::new(client, "datahub-");
            let got = store.get(&names(&["OK", "BIN", "GONE"])).await.expect("get");
            assert_eq!(got.len(), 2);
            assert_eq!((got["OK"].as_str(), got["BIN"].as_str()), (VALUE, "bin ok é"));
        }

        #[tokio::test]
        async fn binary_that_is_not_text_is_an_error_naming_the_secret() {
            let answer = mock!(Client::batch_get_secret_value).then_output(|| {
                BatchGetSecretValueOutput::builder()
                    .secret_values(
                        SecretValueEntry::builder()
                            .name("datahub-KEY")
                            .secret_binary(Blob::new(vec![0xff, 0x00]))
                            .build(),
                    )
                    .build()
            });
            let client = mock_client!(aws_sdk_secretsmanager, RuleMode::Sequential, &[&answer]);
            let e = AwsSecretsManagerStore::new(client, "datahub-").get(&names(&["KEY"])).await.expect_err("binary");
            assert_eq!((e.store, e.names.clone()), ("aws-sm", names(&["KEY"])));
        }

        #[tokio::test]
        async fn whole_call_failures_name_store_and_secrets() {
            let decrypt = mock!(Client::batch_get_secret_value).then_error(|| {
                BatchGetSecretValueError::DecryptionFailure(
                    DecryptionFailure::builder().message("KMS key is disabled").build(),
                )
            });
            let client = mock_client!(aws_sdk_secretsmanager, RuleMode::Sequential, &[&decrypt]);
            let e = AwsSecretsManagerStore::new(client, "datahub-").get(&names(&["A", "B"])).await.expect_err("fails");
            assert_eq!((e.store, e.names.clone()), ("aws-sm", names(&["A", "B"])));
            assert!(e.reason.contains("KMS key is disabled"), "{e}");

            let denied = mock!(Client::batch_get_secret_value)
                .sequence()
                .http_status(
                    400,
                    Some(
                        r#"{"__type":"AccessDeniedException","message":"not authorized to BatchGetSecretValue"}"#
                            .into(),
                    ),
                )
                .repeatedly()
                .build();
            let client = mock_client!(aws_sdk_secretsmanager, RuleMode::Sequential, &[&denied], no_retries);
            let e = AwsSecretsManagerStore::new(client, "datahub-")
                .get(&names(&["PG_PASSWORD"]))
                .await
                .expect_err("denied");
            let text = e.to_string();
            assert!(text.contains("`aws-sm`") && text.contains("PG_PASSWORD"), "{text}");
            assert!(text.contains("AccessDeniedException") && text.contains("not authorized"), "{text}");
        }

        #[tokio::test]
        async fn chunks_of_twenty_and_next_token_are_followed() {
            let first = mock!(Client::batch_get_secret_value)
                .match_requests(|i: &BatchGetSecretValueInput| i.next_token().is_none())
                .then_compute_output(|i: &BatchGetSecretValueInput| {
                    let ids = i.secret_id_list();
                    assert!(ids.len() <= 20, "{} ids", ids.len());
                    // Half of the values now, the rest on a second page.
                    let mut b = BatchGetSecretValueOutput::builder().next_token("page-2");
                    for id in ids.iter().step_by(2) {
                        b = b.secret_values(entry(id, &format!("v-{id}")));
                    }
                    b.build()
                });
            let second = mock!(Client::batch_get_secret_value)
                .match_requests(|i: &BatchGetSecretValueInput| i.next_token() == Some("page-2"))
                .then_compute_output(|i: &BatchGetSecretValueInput| {
                    let mut b = BatchGetSecretValueOutput::builder();
                    for id in i.secret_id_list().iter().skip(1).step_by(2) {
                        b = b.secret_values(entry(id, &format!("v-{id}")));
                    }
                    b.build()
                });
            let client = mock_client!(aws_sdk_secretsmanager, RuleMode::MatchAny, &[&first, &second]);
            let wanted: Vec<String> = (0..45).map(|i| format!("S{i}")).collect();
            let got = AwsSecretsManagerStore::new(client, "p-").get(&wanted).await.expect("get");
            assert_eq!(got.len(), 45);
            assert_eq!(got["S44"], "v-p-S44");
            assert_eq!(first.num_calls(), 3, "45 names = 3 chunks");
            assert_eq!(second.num_calls(), 3, "each chunk followed its token");
        }

        #[tokio::test]
        async fn names_strip_the_prefix_and_ignore_others() {
            let list = mock!(Client::list_secrets).then_output(|| {
                ListSecretsOutput::builder()
                    .secret_list(SecretListEntry::builder().name("datahub-PG_PASSWORD").build())
                    .secret_list(SecretListEntry::builder().name("DataHub-OTHER_CASE").build())
                    .secret_list(SecretListEntry::builder().name("other-X").build())
                    .build()
            });
            let client = mock_client!(aws_sdk_secretsmanager, RuleMode::Sequential, &[&list]);
            let got = AwsSecretsManagerStore::new(client, "datahub-").names().await.expect("names");
            assert_eq!(got, BTreeSet::from(["PG_PASSWORD".to_string()]));
        }
    }
}
