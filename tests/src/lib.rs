//! Test support for the workspace's integration and end-to-end tests.
//!
//! * [`gms::GmsEmulator`]: an in-process DataHub GMS (records requests, stores proposals, serves
//!   `/config`, GraphQL `getSecretValues` and the OpenAPI v2 batch read, injects faults).
//! * [`postgres::Postgres`]: a throw-away PostgreSQL server (a real ingestion source).
//! * [`validate_proposals`]: checks proposal bodies against DataHub's own schema classes with the
//!   Python of the test venv.
//!
//! This crate owns no production code and must not be a dependency of one.

pub mod gcp_sm;
pub mod gms;
pub mod gms_query;
pub mod jobrun;
pub mod lambda_api;
pub mod moto;
pub mod postgres;
pub mod relay_support;

pub use gms::{GmsEmulator, RecordedRequest, Route};
pub use postgres::Postgres;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Overrides where the `shared/` folder (design notes, tools) is.
pub const SHARED_DIR_ENV: &str = "DATAHUB_SHARED_DIR";
/// The venv with the real `datahub` CLI (set by `scripts/setup-test-env.sh`).
pub const TEST_VENV_ENV: &str = "DATAHUB_TEST_VENV";

/// The `shared/` folder that sits beside the repository: `$DATAHUB_SHARED_DIR`, else
/// `<this crate>/../../shared`.
pub fn shared_dir() -> PathBuf {
    match std::env::var_os(SHARED_DIR_ENV).filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared"),
    }
}

/// The venv of the real `datahub` CLI, or `None` (with a note on stderr saying why the caller
/// skips) when `$DATAHUB_TEST_VENV` is unset.
pub fn test_venv(test: &str) -> Option<PathBuf> {
    match std::env::var_os(TEST_VENV_ENV).filter(|d| !d.is_empty()) {
        Some(dir) => Some(PathBuf::from(dir)),
        None => {
            if std::env::var_os("DATAHUB_TEST_REQUIRE_VENV").is_some_and(|v| v == "1") {
                panic!("{test}: {TEST_VENV_ENV} is unset but DATAHUB_TEST_REQUIRE_VENV=1 (CI must run every test)");
            }
            eprintln!(
                "SKIPPED {test}: {TEST_VENV_ENV} is unset; run \
                 `eval \"$(scripts/setup-test-env.sh)\"` first to run it"
            );
            None
        }
    }
}

/// Checks request bodies (`{"proposal":..}`, `{"proposals":[..]}` or bare proposals) with
/// `shared/tools/validate_proposals.py`, run by `python` (the test venv's interpreter).
/// `Err` carries the script's findings.
pub fn validate_proposals(python: &Path, bodies: &[String]) -> Result<(), String> {
    let script = shared_dir().join("tools/validate_proposals.py");
    if !script.is_file() {
        return Err(format!("{} not found (set {SHARED_DIR_ENV} to the shared/ folder)", script.display()));
    }
    let mut file = tempfile::Builder::new()
        .prefix("proposals-")
        .suffix(".jsonl")
        .tempfile()
        .map_err(|e| format!("creating a temporary file: {e}"))?;
    for (i, body) in bodies.iter().enumerate() {
        // One document per line: re-serialise compactly so a pretty-printed body stays on one line.
        let doc: serde_json::Value = serde_json::from_str(body).map_err(|e| format!("body {i} is not JSON: {e}"))?;
        writeln!(file, "{doc}").map_err(|e| format!("writing {}: {e}", file.path().display()))?;
    }
    file.flush().map_err(|e| format!("writing {}: {e}", file.path().display()))?;
    let out = Command::new(python)
        .arg(&script)
        .arg(file.path())
        .output()
        .map_err(|e| format!("running {}: {e}", python.display()))?;
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.success() { Ok(()) } else { Err(format!("{} ({}):\n{report}", script.display(), out.status)) }
}
