#!/usr/bin/env bash
# The main job on a fresh machine: installs uv when missing, builds ingest-job, and runs the demo
# recipe (examples/demo-recipe.yml) through the real `datahub` CLI in a venv that ingest-job builds
# with uv and caches for later runs. No GMS is needed: statuses go to stdout and the result to
# demo-result.json.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/setup-test-env.sh)"
export DATAHUB_EXECUTOR_VENV_CACHE_DIR="${DATAHUB_EXECUTOR_VENV_CACHE_DIR:-$HOME/.cache/datahub-executor-rs/venvs}"
export DATAHUB_EXECUTOR_TMP_DIR="${DATAHUB_EXECUTOR_TMP_DIR:-${TMPDIR:-/tmp}/datahub-executor-demo}"
export DATAHUB_EXECUTOR_PYTHON="${DATAHUB_EXECUTOR_PYTHON:-$(command -v python3)}"
exec cargo run --quiet -p ingest-job -- run --recipe examples/demo-recipe.yml --version "${DATAHUB_TEST_CLI_VERSION}" \
  --result-file demo-result.json
