//! `Moto`: a local AWS API (`moto_server` from the `moto[server]` PyPI package) for tests of the
//! AWS launcher and queues.
//!
//! Each [`Moto`] is its own server on `127.0.0.1:<free port>`, started from the venv named by
//! `$DATAHUB_TEST_MOTO` (`scripts/setup-test-env.sh` installs it and prints the variable), and
//! killed on drop. Use unique resource names per test anyway ([`unique_name`]): a server may be
//! shared.
//!
//! Moto's ECS quirks the tests accommodate (see `reference/aws-gcp.md` §3.1): a task definition
//! needs container-level memory; awsvpc tasks need a real subnet and security group of moto's
//! default VPC ([`Moto::default_subnet`], [`Moto::default_security_group`]); `clientToken` is
//! ignored; task states advance per `DescribeTasks` call as the state manager says
//! ([`Moto::set_ecs_task_transition`]; the setting is global to the server).

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_config::{BehaviorVersion, Region, SdkConfig};

/// The moto venv (its `bin/moto_server` is started).
pub const MOTO_ENV: &str = "DATAHUB_TEST_MOTO";
/// The region the test clients use.
pub const REGION: &str = "us-east-1";

const READY_DEADLINE: Duration = Duration::from_secs(30);
const READY_INTERVAL: Duration = Duration::from_millis(100);
const START_ATTEMPTS: usize = 3;
/// An `Authorization` header moto accepts for its query (EC2) API: it reads the region and the
/// service from the credential scope and does not check the signature.
const EC2_AUTH: &str =
    "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/ec2/aws4_request, SignedHeaders=host, Signature=x";

/// A running moto server.
#[derive(Debug)]
pub struct Moto {
    child: Child,
    url: String,
    log: PathBuf,
    http: reqwest::Client,
    // Removed on drop, after the server was killed.
    _dir: tempfile::TempDir,
}

/// The moto venv from `$DATAHUB_TEST_MOTO`, or `None` (with a `SKIPPED` line on stderr) when it is
/// unset; panics instead when `DATAHUB_TEST_REQUIRE_VENV=1`.
pub fn moto_venv(test: &str) -> Option<PathBuf> {
    match std::env::var_os(MOTO_ENV).filter(|d| !d.is_empty()) {
        Some(dir) => Some(PathBuf::from(dir)),
        None => {
            if std::env::var_os("DATAHUB_TEST_REQUIRE_VENV").is_some_and(|v| v == "1") {
                panic!("{test}: {MOTO_ENV} is unset but DATAHUB_TEST_REQUIRE_VENV=1 (CI must run every test)");
            }
            eprintln!(
                "SKIPPED {test}: {MOTO_ENV} is unset; run `eval \"$(scripts/setup-test-env.sh)\"` first to run it"
            );
            None
        }
    }
}

/// A name no other test (or test run) uses: `<prefix>-<pid>-<time>-<n>`, within ECS's 255 characters
/// of `[A-Za-z0-9_-]`.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    format!("{prefix}-{}-{nanos:x}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("finding a free port: {e}"))?;
    listener.local_addr().map(|a| a.port()).map_err(|e| format!("finding a free port: {e}"))
}

fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

impl Moto {
    /// Starts moto from `$DATAHUB_TEST_MOTO`, or returns `None` (see [`moto_venv`]). Panics when
    /// moto does not come up.
    pub async fn start_or_skip(test: &str) -> Option<Moto> {
        let venv = moto_venv(test)?;
        match Moto::start(&venv).await {
            Ok(moto) => Some(moto),
            Err(e) => panic!("{test}: {e}"),
        }
    }

    /// Starts `<venv>/bin/moto_server` on a free loopback port and waits (at most 30 s) until
    /// `GET /moto-api/` answers. Tries another port when the server exits early (port taken).
    pub async fn start(venv: &Path) -> Result<Moto, String> {
        Moto::start_with_env(venv, &[]).await
    }

    /// As [`Moto::start`], with extra environment variables for the server (e.g.
    /// `INITIAL_NO_AUTH_ACTION_COUNT`, which makes moto enforce IAM after that many requests).
    pub async fn start_with_env(venv: &Path, env: &[(&str, &str)]) -> Result<Moto, String> {
        let bin = venv.join("bin/moto_server");
        if !bin.is_file() {
            return Err(format!("{} not found (run scripts/setup-test-env.sh)", bin.display()));
        }
        let dir = tempfile::Builder::new()
            .prefix("moto-test-")
            .tempdir()
            .map_err(|e| format!("creating a temporary directory: {e}"))?;
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| format!("building an HTTP client: {e}"))?;
        let mut last = String::new();
        for attempt in 0..START_ATTEMPTS {
            let port = free_port()?;
            let url = format!("http://127.0.0.1:{port}");
            let log = dir.path().join(format!("moto-{attempt}.log"));
            let out = File::create(&log).map_err(|e| format!("creating {}: {e}", log.display()))?;
            let err = out.try_clone().map_err(|e| format!("duplicating a file handle: {e}"))?;
            let mut child = Command::new(&bin)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .envs(env.iter().copied())
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .spawn()
                .map_err(|e| format!("starting {}: {e}", bin.display()))?;
            match wait_ready(&http, &url, &mut child).await {
                Ok(()) => return Ok(Moto { child, url, log, http, _dir: dir }),
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    last = format!("moto on {url}: {e}; its log ends with:\n{}", log_tail(&log));
                }
            }
        }
        Err(last)
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The server's log file (stdout and stderr).
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// An SDK configuration for every AWS client: this server as the endpoint, region
    /// `us-east-1`, static test credentials.
    pub async fn sdk_config(&self) -> SdkConfig {
        aws_config::defaults(BehaviorVersion::latest())
            .endpoint_url(&self.url)
            .region(Region::new(REGION))
            .credentials_provider(aws_sdk_ecs::config::Credentials::new("test", "test", None, None, "static"))
            .load()
            .await
    }

    /// An EC2 query-API call (moto answers XML); `Err` carries the status and body.
    async fn ec2(&self, params: &[(&str, &str)]) -> Result<String, String> {
        let form: Vec<String> = [("Version", "2016-11-15")]
            .iter()
            .chain(params)
            .map(|(k, v)| format!("{}={}", form_encode(k), form_encode(v)))
            .collect();
        let resp = self
            .http
            .post(format!("{}/", self.url))
            .header("Authorization", EC2_AUTH)
            .header("Content-Type", "application/x-www-form-urlencoded; charset=utf-8")
            .body(form.join("&"))
            .send()
            .await
            .map_err(|e| format!("EC2 {params:?}: {e}"))?;
        let status = resp.status();
        let body = resp.text().await.map_err(|e| format!("EC2 {params:?}: {e}"))?;
        if status.is_success() { Ok(body) } else { Err(format!("EC2 {params:?}: HTTP {status}: {body}")) }
    }

    /// The ids of the subnets of moto's default VPC (one per availability zone).
    pub async fn default_subnets(&self) -> Result<Vec<String>, String> {
        let body = self
            .ec2(&[("Action", "DescribeSubnets"), ("Filter.1.Name", "default-for-az"), ("Filter.1.Value.1", "true")])
            .await?;
        let ids = xml_values(&body, "subnetId");
        if ids.is_empty() { Err(format!("DescribeSubnets found no default subnet: {body}")) } else { Ok(ids) }
    }

    /// The first subnet of moto's default VPC.
    pub async fn default_subnet(&self) -> Result<String, String> {
        Ok(self.default_subnets().await?.remove(0))
    }

    /// The `default` security group of moto's default VPC.
    pub async fn default_security_group(&self) -> Result<String, String> {
        let body = self.ec2(&[("Action", "DescribeSecurityGroups"), ("GroupName.1", "default")]).await?;
        xml_values(&body, "groupId")
            .into_iter()
            .next()
            .ok_or_else(|| format!("DescribeSecurityGroups found no default group: {body}"))
    }

    /// How ECS tasks advance through their states, one step per `DescribeTasks` call:
    /// `Some(n)` = manual, `n` calls per step (a large `n` keeps tasks `RUNNING`); `None` =
    /// immediate (a task is `STOPPED` the first time it is described). Global to this server.
    pub async fn set_ecs_task_transition(&self, manual_times: Option<u32>) -> Result<(), String> {
        let transition = match manual_times {
            Some(times) => serde_json::json!({"progression": "manual", "times": times}),
            None => serde_json::json!({"progression": "immediate"}),
        };
        let body = serde_json::json!({"model_name": "ecs::task", "transition": transition});
        let resp = self
            .http
            .post(format!("{}/moto-api/state-manager/set-transition", self.url))
            .json(&body)
            .send()
            .await
            .map_err(|e| format!("setting the ECS task transition: {e}"))?;
        let status = resp.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("setting the ECS task transition: HTTP {status}: {}", resp.text().await.unwrap_or_default()))
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn wait_ready(http: &reqwest::Client, url: &str, child: &mut Child) -> Result<(), String> {
    let deadline = Instant::now() + READY_DEADLINE;
    let probe = format!("{url}/moto-api/");
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("moto_server exited with {status}"));
        }
        let last = match http.get(&probe).timeout(Duration::from_secs(2)).send().await {
            Ok(resp) if resp.status().is_success() => return Ok(()),
            Ok(resp) => format!("HTTP {}", resp.status()),
            Err(e) => e.to_string(),
        };
        if Instant::now() >= deadline {
            return Err(format!("not ready after {READY_DEADLINE:?} (last answer: {last})"));
        }
        tokio::time::sleep(READY_INTERVAL).await;
    }
}

/// `application/x-www-form-urlencoded` encoding of one key or value.
fn form_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The text of every `<tag>…</tag>` in `xml`, in order.
fn xml_values(xml: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut values = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find(&open) {
        let after = &rest[start + open.len()..];
        let Some(end) = after.find(&close) else { break };
        values.push(after[..end].trim().to_owned());
        rest = &after[end + close.len()..];
    }
    values
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xml_values_in_order() {
        let xml = "<a><subnetId>subnet-1</subnetId><x/><subnetId> subnet-2 </subnetId><subnetId>cut";
        assert_eq!(xml_values(xml, "subnetId"), vec!["subnet-1", "subnet-2"]);
        assert!(xml_values(xml, "groupId").is_empty());
    }

    #[test]
    fn form_encoding() {
        assert_eq!(form_encode("Filter.1.Value.1"), "Filter.1.Value.1");
        assert_eq!(form_encode("a b&c"), "a%20b%26c");
    }

    #[test]
    fn unique_names_differ() {
        assert_ne!(unique_name("c"), unique_name("c"));
    }
}
