#!/usr/bin/env bash
# The test command: installs what the tests need when it is missing (uv, the datahub CLI,
# PostgreSQL binaries), then runs the format and lint gates and every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/setup-test-env.sh)"
export CARGO_TERM_COLOR=never
# Every end-to-end test must run here: none may skip for a missing venv.
export DATAHUB_TEST_REQUIRE_VENV=1
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The end-to-end tests start real `datahub` processes: two at a time fit this machine's 2 cores.
cargo test --workspace --locked --no-fail-fast -- --test-threads="${TEST_THREADS:-2}"
