//! Choosing and preparing the Python environment a run uses (DESIGN.md §3.3,
//! `reference/peer-executor.md` §4.2).
//!
//! - `bundled`: `<DATAHUB_BUNDLED_VENV_PATH>/<plugin>-bundled`, prepared in the image.
//! - `native`: the venv named by `DATAHUB_EXECUTOR_NATIVE_VENV`, else the one of `datahub` on PATH.
//! - `latest`, a PEP 440 version or an allowed wheel URL: a venv built with `uv` under
//!   `DATAHUB_EXECUTOR_VENV_CACHE_DIR`, keyed by plugin, version, extra plugins and requirements, and
//!   reused by later runs on the same host (DataHub rebuilds one per run). `latest` venvs are keyed
//!   by the UTC day as well, so they follow new releases daily. A build holds a file lock on its key,
//!   writes a ready marker last, and a folder without the marker is removed and built again: a
//!   half-built venv is never used. The build is bounded in time and its failure is a distinct
//!   "venv setup failed" error carrying the tail of uv's output.

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::LazyLock;

use nix::fcntl::{Flock, FlockArg};
use regex::Regex;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::config::JobConfig;
use crate::error::VenvError;

const READY_MARKER: &str = ".datahub-executor-ready";
const OUTPUT_TAIL_LINES: usize = 40;

/// The first CLI version that reads the stdin envelope (`reference/peer-executor.md` §4.4 step 7).
pub const ENVELOPE_MIN_VERSION: [u64; 4] = [1, 5, 0, 15];

/// What a run asks of its venv.
#[derive(Debug, Clone)]
pub struct VenvSpec<'a> {
    pub plugin: &'a str,
    pub version: &'a str,
    pub extra_pip_plugins: &'a [String],
    pub extra_pip_requirements: &'a [String],
}

/// A venv ready to run `datahub`.
#[derive(Debug, Clone, PartialEq)]
pub struct Venv {
    pub path: PathBuf,
    /// The installed `acryl-datahub` version, when it can be read from the venv's metadata.
    pub cli_version: Option<String>,
    /// How it was obtained, for the report.
    pub origin: &'static str,
}

impl Venv {
    pub fn datahub(&self) -> PathBuf {
        self.path.join("bin").join("datahub")
    }

    /// Whether this CLI reads the stdin envelope (`__recipe_yaml__`, `__secrets__`).
    pub fn reads_envelope(&self) -> bool {
        self.cli_version.as_deref().map(|v| version_at_least(v, &ENVELOPE_MIN_VERSION)).unwrap_or(false)
    }
}

/// Checks a requested version. Returns the normalised version.
pub fn validate_version(version: &str) -> Result<String, VenvError> {
    static PEP440: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r"^(\d+!)?\d+(\.\d+)*((a|b|rc)\d+)?(\.post\d+)?(\.dev\d+)?$").expect("static regex")
    });
    let v = version.trim();
    match v {
        "" | "latest" => return Ok("latest".to_owned()),
        "bundled" | "native" => return Ok(v.to_owned()),
        _ => {}
    }
    if v.starts_with("http://") || v.starts_with("https://") {
        let host = v.split("://").nth(1).and_then(|r| r.split(['/', '?', ':']).next()).unwrap_or("");
        if host.ends_with(".datahub-wheels.pages.dev") {
            return Ok(v.to_owned());
        }
        return Err(VenvError::Invalid(format!(
            "invalid wheel URL {v:?}: only hosts under .datahub-wheels.pages.dev are allowed"
        )));
    }
    let plain = v.strip_prefix('v').unwrap_or(v);
    if PEP440.is_match(plain) {
        return Ok(plain.to_owned());
    }
    Err(VenvError::Invalid(format!(
        "version {v:?} is not `latest`, `bundled`, `native`, a PEP 440 version or an allowed wheel URL"
    )))
}

/// Prepares the venv for a run. `log` receives progress lines (uv's output included).
pub async fn prepare(
    cfg: &JobConfig,
    spec: &VenvSpec<'_>,
    log: &mut (dyn FnMut(&str) + Send),
) -> Result<Venv, VenvError> {
    let version = validate_version(spec.version)?;
    log(&format!("Setting up venv for plugin '{}' with version '{}'", spec.plugin, version));
    if version != "bundled" && !cfg.dependency_resolution {
        return Err(VenvError::Invalid(format!(
            "version '{version}' is not supported when INGESTION_DEPENDENCY_RESOLUTION_ENABLED=false; use 'bundled'"
        )));
    }
    let venv = match version.as_str() {
        "bundled" => {
            log("Using Bundled startup (pre-built) venv");
            let path = cfg.bundled_venv_path.join(format!("{}-bundled", spec.plugin));
            check_venv(&path, "bundled")?
        }
        "native" => {
            let path = match &cfg.native_venv {
                Some(p) => p.clone(),
                None => native_from_path().ok_or_else(|| {
                    VenvError::Invalid(
                        "version 'native' needs DATAHUB_EXECUTOR_NATIVE_VENV or `datahub` on PATH".into(),
                    )
                })?,
            };
            check_venv(&path, "native")?
        }
        _ => cached(cfg, spec, &version, log).await?,
    };
    log(&format!("✅ Venv ready at: {}", venv.path.display()));
    Ok(venv)
}

fn check_venv(path: &Path, origin: &'static str) -> Result<Venv, VenvError> {
    for exe in ["python", "datahub"] {
        if !path.join("bin").join(exe).exists() {
            return Err(VenvError::Invalid(format!(
                "the {origin} venv {} has no bin/{exe}; build it first (see BUNDLED_VENV_PLUGINS) or use another version",
                path.display()
            )));
        }
    }
    Ok(Venv { path: path.to_owned(), cli_version: installed_cli_version(path), origin })
}

fn native_from_path() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("datahub"))
        .find(|p| p.is_file())
        .and_then(|p| p.parent()?.parent().map(Path::to_path_buf))
}

/// The `acryl-datahub` version installed in a venv, read from its `.dist-info` folder name.
pub fn installed_cli_version(venv: &Path) -> Option<String> {
    let lib = venv.join("lib");
    for py in fs::read_dir(lib).ok()?.filter_map(Result::ok) {
        let site = py.path().join("site-packages");
        let Ok(entries) = fs::read_dir(&site) else { continue };
        for e in entries.filter_map(Result::ok) {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(v) = name.strip_prefix("acryl_datahub-").and_then(|r| r.strip_suffix(".dist-info")) {
                return Some(v.to_owned());
            }
        }
    }
    None
}

/// Compares the numeric release part of a version (`1.5.0.15`, `1.7.0.17rc1`) with `min`.
pub fn version_at_least(version: &str, min: &[u64]) -> bool {
    static RELEASE: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"^(?:\d+!)?(\d+(?:\.\d+)+)").expect("static regex"));
    let Some(c) = RELEASE.captures(version.trim_start_matches('v')) else { return false };
    let parts: Vec<u64> = c[1].split('.').filter_map(|p| p.parse().ok()).collect();
    let len = parts.len().max(min.len());
    for i in 0..len {
        let a = parts.get(i).copied().unwrap_or(0);
        let b = min.get(i).copied().unwrap_or(0);
        if a != b {
            return a > b;
        }
    }
    true
}

/// The requirement for `acryl-datahub` with its extras.
fn requirement(spec: &VenvSpec<'_>, version: &str) -> String {
    let mut extras: Vec<&str> = std::iter::once(spec.plugin)
        .chain(spec.extra_pip_plugins.iter().map(String::as_str))
        .filter(|p| !p.is_empty() && !p.contains('.') && !p.contains('/'))
        .collect();
    extras.dedup();
    let extras = if extras.is_empty() { String::new() } else { format!("[{}]", extras.join(",")) };
    match version {
        "latest" => format!("acryl-datahub{extras}"),
        v if v.starts_with("http") => {
            let url = if v.ends_with(".whl") {
                v.to_owned()
            } else {
                format!("{}/artifacts/wheels/acryl_datahub-0.0.0.dev1-py3-none-any.whl", v.trim_end_matches('/'))
            };
            format!("acryl-datahub{extras} @ {url}")
        }
        v => format!("acryl-datahub{extras}=={v}"),
    }
}

fn cache_key(spec: &VenvSpec<'_>, version: &str, python: Option<&str>) -> String {
    let mut h = Sha256::new();
    let day = chrono::Utc::now().format("%Y-%m-%d").to_string();
    for part in [version, python.unwrap_or(""), if version == "latest" { &day } else { "" }] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    let mut plugins = spec.extra_pip_plugins.to_vec();
    plugins.sort();
    for p in plugins.iter().chain(spec.extra_pip_requirements) {
        h.update(p.as_bytes());
        h.update([0]);
    }
    let digest = h.finalize();
    let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    let safe = |s: &str| -> String {
        s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '_' }).collect()
    };
    let label = if version.starts_with("http") { "wheel".to_owned() } else { safe(version) };
    format!("{}-{}-{hex}", safe(spec.plugin), label)
}

async fn cached(
    cfg: &JobConfig,
    spec: &VenvSpec<'_>,
    version: &str,
    log: &mut (dyn FnMut(&str) + Send),
) -> Result<Venv, VenvError> {
    let setup = |reason: String| VenvError::Setup { reason, output_tail: String::new() };
    fs::create_dir_all(&cfg.venv_cache_dir)
        .map_err(|e| setup(format!("cannot create {}: {e}", cfg.venv_cache_dir.display())))?;
    let key = cache_key(spec, version, cfg.python.as_deref());
    let path = cfg.venv_cache_dir.join(&key);
    let lock_path = cfg.venv_cache_dir.join(format!("{key}.lock"));
    let lock_file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| setup(format!("cannot open {}: {e}", lock_path.display())))?;
    let _lock = tokio::task::spawn_blocking(move || Flock::lock(lock_file, FlockArg::LockExclusive))
        .await
        .map_err(|e| setup(format!("lock task failed: {e}")))?
        .map_err(|(_, e)| setup(format!("cannot lock {}: {e}", lock_path.display())))?;
    if path.join(READY_MARKER).exists() {
        log(&format!("Reusing cached venv {key}"));
        return check_venv(&path, "cached");
    }
    log("Creating dynamic venv - this may take a few minutes...");
    if path.exists() {
        fs::remove_dir_all(&path).map_err(|e| setup(format!("cannot remove half-built {}: {e}", path.display())))?;
    }
    let mut tail: Vec<String> = Vec::new();
    let build = async {
        let mut venv_cmd = Command::new(&cfg.uv);
        venv_cmd.arg("venv").arg("--quiet");
        if let Some(py) = &cfg.python {
            venv_cmd.arg("--python").arg(py);
        }
        venv_cmd.arg(&path);
        run_logged(venv_cmd, &mut tail, log).await?;
        let mut install = Command::new(&cfg.uv);
        install
            .args(["pip", "install", "--python"])
            .arg(path.join("bin").join("python"))
            .arg(requirement(spec, version))
            .args(spec.extra_pip_requirements);
        if version.starts_with("http") {
            install.env("UV_NO_CACHE", "1");
        }
        run_logged(install, &mut tail, log).await
    };
    let outcome = tokio::time::timeout(cfg.venv_setup_timeout, build).await;
    let failure = match outcome {
        Ok(Ok(())) => None,
        Ok(Err(reason)) => Some(reason),
        Err(_) => Some(format!("uv did not finish within {} s", cfg.venv_setup_timeout.as_secs())),
    };
    if let Some(reason) = failure {
        let _ = fs::remove_dir_all(&path);
        let output_tail = tail.iter().rev().take(OUTPUT_TAIL_LINES).rev().cloned().collect::<Vec<_>>().join("\n");
        return Err(VenvError::Setup { reason, output_tail });
    }
    File::create(path.join(READY_MARKER)).map_err(|e| setup(format!("cannot mark {} ready: {e}", path.display())))?;
    check_venv(&path, "cached")
}

/// Runs a uv command, streaming its merged output to `log` and `tail`; kills it when dropped.
async fn run_logged(
    mut cmd: Command,
    tail: &mut Vec<String>,
    log: &mut (dyn FnMut(&str) + Send),
) -> Result<(), String> {
    let shown = format!("{:?}", cmd.as_std());
    log(&format!("+{shown}"));
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true).process_group(0);
    let mut child = cmd.spawn().map_err(|e| format!("cannot start uv ({shown}): {e}"))?;
    let out = child.stdout.take().map(|o| BufReader::new(o).lines());
    let err = child.stderr.take().map(|e| BufReader::new(e).lines());
    if let (Some(mut out), Some(mut err)) = (out, err) {
        let (mut out_done, mut err_done) = (false, false);
        let mut keep = |l: String| {
            log(&l);
            tail.push(l);
        };
        loop {
            tokio::select! {
                l = out.next_line(), if !out_done => match l {
                    Ok(Some(l)) => keep(l),
                    _ => out_done = true,
                },
                l = err.next_line(), if !err_done => match l {
                    Ok(Some(l)) => keep(l),
                    _ => err_done = true,
                },
                else => break,
            }
        }
    }
    let status = child.wait().await.map_err(|e| format!("waiting for uv failed: {e}"))?;
    if status.success() { Ok(()) } else { Err(format!("{shown} exited with {status}")) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_checked() {
        assert_eq!(validate_version("").expect("ok"), "latest");
        assert_eq!(validate_version("v1.7.0.17").expect("ok"), "1.7.0.17");
        assert_eq!(validate_version("1.6.0rc1").expect("ok"), "1.6.0rc1");
        assert!(validate_version("https://x.datahub-wheels.pages.dev/a.whl").is_ok());
        assert!(validate_version("https://evil.example.com/a.whl").is_err());
        assert!(validate_version("1.2; rm -rf /").is_err());
    }

    #[test]
    fn envelope_support_follows_the_cli_version() {
        assert!(version_at_least("1.7.0.17", &ENVELOPE_MIN_VERSION));
        assert!(version_at_least("1.5.0.15", &ENVELOPE_MIN_VERSION));
        assert!(!version_at_least("1.5.0", &ENVELOPE_MIN_VERSION));
        assert!(!version_at_least("0.0.0.dev0", &ENVELOPE_MIN_VERSION));
    }

    #[test]
    fn requirement_and_key() {
        let plugins = vec!["s3".to_string()];
        let spec = VenvSpec {
            plugin: "postgres",
            version: "1.7.0.17",
            extra_pip_plugins: &plugins,
            extra_pip_requirements: &[],
        };
        assert_eq!(requirement(&spec, "1.7.0.17"), "acryl-datahub[postgres,s3]==1.7.0.17");
        let k1 = cache_key(&spec, "1.7.0.17", None);
        assert!(k1.starts_with("postgres-1.7.0.17-"));
        let reqs = vec!["pkg==1".to_string()];
        let spec2 = VenvSpec { extra_pip_requirements: &reqs, ..spec.clone() };
        assert_ne!(k1, cache_key(&spec2, "1.7.0.17", None));
        let custom = VenvSpec { plugin: "my.module.Source", ..spec };
        assert_eq!(requirement(&custom, "latest"), "acryl-datahub[s3]");
    }
}
