//! Configuration of the job, read once from the environment with DataHub's variable names where
//! DataHub has one. [`JobConfig::from_lookup`] is pure so tests pass a map; errors name the variable.

use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;

use crate::error::ConfigError;
use crate::report::DEFAULT_PAYLOAD_MAX_LENGTH;

/// Where and how to reach GMS.
#[derive(Debug, Clone)]
pub struct GmsConfig {
    /// Base URL without a trailing slash, e.g. `https://acme.acryl.io/gms`.
    pub url: String,
    pub token: Option<SecretString>,
}

/// Everything the job reads from its environment.
#[derive(Debug, Clone)]
pub struct JobConfig {
    /// `DATAHUB_GMS_URL` (or `DATAHUB_GMS_PROTOCOL`/`_HOST`/`_PORT`); None runs without GMS.
    pub gms: Option<GmsConfig>,
    /// `DATAHUB_EXECUTOR_FILE_SECRET_BASEDIR`, default `/mnt/secrets`.
    pub file_secret_basedir: PathBuf,
    /// `DATAHUB_EXECUTOR_FILE_SECRET_MAXLEN`, default 1,024,768 characters.
    pub file_secret_maxlen: usize,
    /// `DATAHUB_BUNDLED_VENV_PATH`, default `/opt/datahub/venvs`.
    pub bundled_venv_path: PathBuf,
    /// `DATAHUB_EXECUTOR_VENV_CACHE_DIR`, default `/tmp/datahub/venvs`: venvs reused across runs.
    pub venv_cache_dir: PathBuf,
    /// `DATAHUB_EXECUTOR_NATIVE_VENV`: the venv used for version `native` (default: the venv of the
    /// `datahub` found on PATH).
    pub native_venv: Option<PathBuf>,
    /// `DATAHUB_EXECUTOR_UV`, default `uv` from PATH.
    pub uv: PathBuf,
    /// `DATAHUB_EXECUTOR_PYTHON`: the interpreter new venvs are built on (default: uv's choice).
    pub python: Option<String>,
    /// `DATAHUB_EXECUTOR_VENV_SETUP_TIMEOUT` seconds, default 900.
    pub venv_setup_timeout: Duration,
    /// `INGESTION_DEPENDENCY_RESOLUTION_ENABLED`, default true: false allows only `bundled`.
    pub dependency_resolution: bool,
    /// `DATAHUB_EXECUTOR_TMP_DIR`, default `/tmp/datahub/ingest`: one folder per run, removed after.
    pub tmp_dir: PathBuf,
    /// `ACRYL_EXECUTOR_GMS_PAYLOAD_MAX_LENGTH`, default 15,368,520 characters.
    pub payload_max_length: usize,
    /// `DATAHUB_EXECUTOR_PROGRESS_INTERVAL` seconds, default 5.
    pub progress_interval: Duration,
    /// `DATAHUB_EXECUTOR_INGESTION_SIGNAL_POLL_INTERVAL` seconds, default 2.
    pub signal_poll_interval: Duration,
    /// `DATAHUB_EXECUTOR_TASK_TIMEOUT` seconds, default 86400; a request's `EXECUTOR_TASK_TIMEOUT`
    /// in `extra_env_vars` overrides it.
    pub task_timeout: Duration,
    /// `EXECUTOR_TASK_MEMORY_LIMIT` of the job's own environment; a request's value overrides it.
    pub memory_limit: Option<String>,
    /// `DATAHUB_EXECUTOR_TERMINATION_GRACE` seconds, default 20: time between SIGTERM and SIGKILL.
    pub termination_grace: Duration,
    /// `DATAHUB_EXECUTOR_RESULT_RETRY_DEADLINE` seconds, default 900: how long the final status
    /// write is retried.
    pub result_retry_deadline: Duration,
}

impl JobConfig {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads variables through `lookup`.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |k: &str| lookup(k).filter(|v| !v.trim().is_empty());
        let gms = gms_config(&get)?;
        Ok(JobConfig {
            gms,
            file_secret_basedir: get("DATAHUB_EXECUTOR_FILE_SECRET_BASEDIR")
                .unwrap_or_else(|| "/mnt/secrets".into())
                .into(),
            file_secret_maxlen: number(&get, "DATAHUB_EXECUTOR_FILE_SECRET_MAXLEN", 1_024_768)?,
            bundled_venv_path: get("DATAHUB_BUNDLED_VENV_PATH").unwrap_or_else(|| "/opt/datahub/venvs".into()).into(),
            venv_cache_dir: get("DATAHUB_EXECUTOR_VENV_CACHE_DIR")
                .unwrap_or_else(|| "/tmp/datahub/venvs".into())
                .into(),
            native_venv: get("DATAHUB_EXECUTOR_NATIVE_VENV").map(PathBuf::from),
            uv: get("DATAHUB_EXECUTOR_UV").unwrap_or_else(|| "uv".into()).into(),
            python: get("DATAHUB_EXECUTOR_PYTHON"),
            venv_setup_timeout: seconds(&get, "DATAHUB_EXECUTOR_VENV_SETUP_TIMEOUT", 900.0)?,
            dependency_resolution: get("INGESTION_DEPENDENCY_RESOLUTION_ENABLED")
                .map(|v| v.trim().eq_ignore_ascii_case("true"))
                .unwrap_or(true),
            tmp_dir: get("DATAHUB_EXECUTOR_TMP_DIR").unwrap_or_else(|| "/tmp/datahub/ingest".into()).into(),
            payload_max_length: number(&get, "ACRYL_EXECUTOR_GMS_PAYLOAD_MAX_LENGTH", DEFAULT_PAYLOAD_MAX_LENGTH)?,
            progress_interval: seconds(&get, "DATAHUB_EXECUTOR_PROGRESS_INTERVAL", 5.0)?,
            signal_poll_interval: seconds(&get, "DATAHUB_EXECUTOR_INGESTION_SIGNAL_POLL_INTERVAL", 2.0)?,
            task_timeout: seconds(&get, "DATAHUB_EXECUTOR_TASK_TIMEOUT", 86_400.0)?,
            memory_limit: get("EXECUTOR_TASK_MEMORY_LIMIT"),
            termination_grace: seconds(&get, "DATAHUB_EXECUTOR_TERMINATION_GRACE", 20.0)?,
            result_retry_deadline: seconds(&get, "DATAHUB_EXECUTOR_RESULT_RETRY_DEADLINE", 900.0)?,
        })
    }
}

fn gms_config(get: &impl Fn(&str) -> Option<String>) -> Result<Option<GmsConfig>, ConfigError> {
    let (var, url) = match get("DATAHUB_GMS_URL") {
        Some(u) => ("DATAHUB_GMS_URL", u.trim().to_owned()),
        None => match get("DATAHUB_GMS_HOST") {
            Some(host) => {
                let proto = get("DATAHUB_GMS_PROTOCOL").unwrap_or_else(|| "http".into());
                let port = get("DATAHUB_GMS_PORT").unwrap_or_else(|| "8080".into());
                ("DATAHUB_GMS_HOST", format!("{proto}://{host}:{port}"))
            }
            None => return Ok(None),
        },
    };
    let url = validate_gms_url(var, &url)?;
    let token = get("DATAHUB_GMS_TOKEN").map(|t| SecretString::from(t.trim().to_owned()));
    Ok(Some(GmsConfig { url, token }))
}

/// Checks a GMS base URL: a scheme, a host, and `/gms` for DataHub Cloud hosts. A trailing slash
/// is removed (DataHub's client does the same).
pub fn validate_gms_url(var: &'static str, url: &str) -> Result<String, ConfigError> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| ConfigError::new(var, format!("{url:?} must start with http:// or https://")))?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty() {
        return Err(ConfigError::new(var, format!("{url:?} has no host")));
    }
    let trimmed = url.trim_end_matches('/');
    let host_name = host.split(':').next().unwrap_or(host);
    if host_name.ends_with(".acryl.io") && !trimmed.ends_with("/gms") {
        return Err(ConfigError::new(
            var,
            format!("{url:?} is a DataHub Cloud host: the GMS URL must end with /gms (e.g. https://{host}/gms)"),
        ));
    }
    Ok(trimmed.to_owned())
}

fn number(get: &impl Fn(&str) -> Option<String>, var: &'static str, default: usize) -> Result<usize, ConfigError> {
    match get(var) {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| ConfigError::new(var, format!("{v:?} is not a positive whole number"))),
    }
}

/// A duration in seconds (fractions allowed).
pub fn seconds(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    default: f64,
) -> Result<Duration, ConfigError> {
    let v = match get(var) {
        None => return Ok(Duration::from_secs_f64(default)),
        Some(v) => v,
    };
    parse_seconds(&v).ok_or_else(|| ConfigError::new(var, format!("{v:?} is not a positive number of seconds")))
}

/// Parses a positive number of seconds.
pub fn parse_seconds(v: &str) -> Option<Duration> {
    v.trim().parse::<f64>().ok().filter(|s| s.is_finite() && *s > 0.0 && *s < 1e9).map(Duration::from_secs_f64)
}

/// `DATAHUB_EXECUTOR_LOG_FORMAT`: `json` for JSON log lines (containers); anything else is text.
pub fn json_logs(lookup: impl Fn(&str) -> Option<String>) -> bool {
    lookup("DATAHUB_EXECUTOR_LOG_FORMAT").is_some_and(|v| v.trim().eq_ignore_ascii_case("json"))
}

/// The variable naming a Secrets Manager secret (ARN or name) that holds the GMS token: how the
/// Lambda functions get it, so the token never shows in the function's configuration (a
/// `{{resolve:secretsmanager:..}}` reference in `Environment` would). ECS and Cloud Run inject it
/// into the job as `DATAHUB_GMS_TOKEN` from the secret instead.
pub const GMS_TOKEN_SECRET_ENV: &str = "DATAHUB_GMS_TOKEN_SECRET_ARN";

/// Where the GMS token comes from: `DATAHUB_GMS_TOKEN` itself, or the Secrets Manager secret named
/// by [`GMS_TOKEN_SECRET_ENV`], read once at start-up (a cold start of the function). Setting both
/// is an error, so a stale inline token cannot silently win over the managed secret.
#[derive(Debug, Clone)]
pub enum GmsTokenSource {
    None,
    Inline(SecretString),
    SecretsManager { secret_id: String },
}

impl GmsTokenSource {
    /// Reads `DATAHUB_GMS_TOKEN` and [`GMS_TOKEN_SECRET_ENV`] through `lookup` (empty = unset).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |k: &str| lookup(k).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        match (get("DATAHUB_GMS_TOKEN"), get(GMS_TOKEN_SECRET_ENV)) {
            (Some(_), Some(_)) => Err(ConfigError::new(
                GMS_TOKEN_SECRET_ENV,
                "is set together with DATAHUB_GMS_TOKEN: set only one of them",
            )),
            (Some(t), None) => Ok(GmsTokenSource::Inline(SecretString::from(t))),
            (None, Some(id)) => Ok(GmsTokenSource::SecretsManager { secret_id: id }),
            (None, None) => Ok(GmsTokenSource::None),
        }
    }

    /// The token: the inline one, or the secret's `SecretString` (trimmed) read with `client`.
    /// Errors name [`GMS_TOKEN_SECRET_ENV`] and the secret id, never a value.
    #[cfg(feature = "aws-sm")]
    pub async fn resolve(&self, client: &aws_sdk_secretsmanager::Client) -> Result<Option<SecretString>, ConfigError> {
        let secret_id = match self {
            GmsTokenSource::None => return Ok(None),
            GmsTokenSource::Inline(t) => return Ok(Some(t.clone())),
            GmsTokenSource::SecretsManager { secret_id } => secret_id,
        };
        let out = client.get_secret_value().secret_id(secret_id).send().await.map_err(|e| {
            ConfigError::new(
                GMS_TOKEN_SECRET_ENV,
                format!(
                    "cannot read the GMS token from secret {secret_id:?}: {}",
                    crate::aws_error::describe(&e).reason
                ),
            )
        })?;
        let token = out.secret_string().map(str::trim).filter(|t| !t.is_empty()).ok_or_else(|| {
            ConfigError::new(
                GMS_TOKEN_SECRET_ENV,
                format!("secret {secret_id:?} has no SecretString (the token as text)"),
            )
        })?;
        Ok(Some(SecretString::from(token.to_owned())))
    }

    /// [`Self::resolve`] with a client from the environment (`aws_config::load_defaults`), built
    /// only when a secret has to be read.
    #[cfg(feature = "aws-sm")]
    pub async fn resolve_from_env(&self) -> Result<Option<SecretString>, ConfigError> {
        match self {
            GmsTokenSource::None => Ok(None),
            GmsTokenSource::Inline(t) => Ok(Some(t.clone())),
            GmsTokenSource::SecretsManager { .. } => {
                let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
                self.resolve(&aws_sdk_secretsmanager::Client::new(&sdk)).await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(pairs: &[(&str, &str)]) -> Result<JobConfig, ConfigError> {
        let m: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        JobConfig::from_lookup(|k| m.get(k).cloned())
    }

    #[test]
    fn defaults_without_gms() {
        let c = cfg(&[]).expect("ok");
        assert!(c.gms.is_none());
        assert_eq!(c.file_secret_basedir, PathBuf::from("/mnt/secrets"));
        assert_eq!(c.payload_max_length, 15_368_520);
        assert_eq!(c.signal_poll_interval, Duration::from_secs(2));
    }

    #[test]
    fn gms_url_is_checked_and_errors_name_the_variable() {
        let c = cfg(&[("DATAHUB_GMS_URL", "http://localhost:8080/")]).expect("ok");
        assert_eq!(c.gms.expect("gms").url, "http://localhost:8080");
        let e = cfg(&[("DATAHUB_GMS_URL", "localhost:8080")]).expect_err("scheme");
        assert!(e.to_string().contains("DATAHUB_GMS_URL") && e.to_string().contains("http://"), "{e}");
        let e = cfg(&[("DATAHUB_GMS_URL", "https://acme.acryl.io")]).expect_err("cloud");
        assert!(e.to_string().contains("/gms"), "{e}");
        assert!(cfg(&[("DATAHUB_GMS_URL", "https://acme.acryl.io/gms")]).is_ok());
        let c = cfg(&[("DATAHUB_GMS_HOST", "gms"), ("DATAHUB_GMS_PORT", "9002")]).expect("ok");
        assert_eq!(c.gms.expect("gms").url, "http://gms:9002");
        let e = cfg(&[("DATAHUB_EXECUTOR_TASK_TIMEOUT", "soon")]).expect_err("timeout");
        assert!(e.to_string().contains("DATAHUB_EXECUTOR_TASK_TIMEOUT"), "{e}");
    }

    #[test]
    fn token_source_is_inline_or_a_secret_but_not_both() {
        let src = |pairs: &[(&str, &str)]| {
            let m: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            GmsTokenSource::from_lookup(|k| m.get(k).cloned())
        };
        assert!(matches!(src(&[]), Ok(GmsTokenSource::None)));
        assert!(matches!(src(&[("DATAHUB_GMS_TOKEN", " t ")]), Ok(GmsTokenSource::Inline(_))));
        let arn = "arn:aws:secretsmanager:us-east-1:1:secret:tok";
        assert!(
            matches!(src(&[(GMS_TOKEN_SECRET_ENV, arn)]), Ok(GmsTokenSource::SecretsManager { secret_id }) if secret_id == arn)
        );
        let e = src(&[("DATAHUB_GMS_TOKEN", "t"), (GMS_TOKEN_SECRET_ENV, arn)]).expect_err("both");
        assert_eq!(e.var, GMS_TOKEN_SECRET_ENV);
    }

    #[cfg(feature = "aws-sm")]
    #[tokio::test]
    async fn token_is_read_from_secrets_manager_and_failures_name_the_variable() {
        use aws_sdk_secretsmanager::Client;
        use aws_sdk_secretsmanager::operation::get_secret_value::{GetSecretValueError, GetSecretValueOutput};
        use aws_sdk_secretsmanager::types::error::ResourceNotFoundException;
        use aws_smithy_mocks::{RuleMode, mock, mock_client};
        use secrecy::ExposeSecret;

        const TOKEN: &str = "eyJ-gms-token-never-logged";
        let arn = "arn:aws:secretsmanager:us-east-1:111111111111:secret:datahub-gms-token";
        let src = GmsTokenSource::SecretsManager { secret_id: arn.into() };
        let ok = mock!(Client::get_secret_value)
            .match_requests(move |r| r.secret_id() == Some(arn))
            .then_output(|| GetSecretValueOutput::builder().secret_string(format!("{TOKEN}\n")).build());
        let client = mock_client!(aws_sdk_secretsmanager, RuleMode::Sequential, &[&ok]);
        let token = src.resolve(&client).await.expect("read").expect("some");
        assert_eq!(token.expose_secret(), TOKEN, "read once and trimmed");

        let gone = mock!(Client::get_secret_value).then_error(|| {
            GetSecretValueError::ResourceNotFoundException(
                ResourceNotFoundException::builder()
                    .message("Secrets Manager can't find the specified secret.")
                    .build(),
            )
        });
        let client = mock_client!(aws_sdk_secretsmanager, RuleMode::Sequential, &[&gone]);
        let e = src.resolve(&client).await.expect_err("missing");
        assert_eq!(e.var, GMS_TOKEN_SECRET_ENV);
        assert!(e.to_string().contains(arn) && e.to_string().contains("can't find"), "{e}");

        let empty = mock!(Client::get_secret_value).then_output(|| GetSecretValueOutput::builder().build());
        let client = mock_client!(aws_sdk_secretsmanager, RuleMode::Sequential, &[&empty]);
        assert!(src.resolve(&client).await.expect_err("binary only").to_string().contains("no SecretString"));

        let inline = GmsTokenSource::Inline(SecretString::from(TOKEN.to_owned()));
        let client = mock_client!(aws_sdk_secretsmanager, RuleMode::Sequential, &[]);
        assert_eq!(inline.resolve(&client).await.expect("inline").expect("some").expose_secret(), TOKEN);
    }
}
