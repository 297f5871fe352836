#!/usr/bin/env bash
# Installs what the tests and the demo need, only where it is missing:
#   - uv (from PyPI, in its own venv)
#   - the real `datahub` CLI (acryl-datahub from PyPI) in a venv, with the plugins the tests use
#   - PostgreSQL server binaries (Debian's packages), for the end-to-end tests
#   - moto (`moto[server]` from PyPI) in a venv: a local AWS API (ECS, SQS) for the launcher tests
# Everything lands under $DATAHUB_EXECUTOR_TOOLS (default ~/.cache/datahub-executor-rs), outside the clone.
# Prints `export` lines for the variables the tests read; `eval "$(scripts/setup-test-env.sh)"` applies them.
set -euo pipefail

TOOLS="${DATAHUB_EXECUTOR_TOOLS:-$HOME/.cache/datahub-executor-rs}"
CLI_VERSION="${DATAHUB_TEST_CLI_VERSION:-1.7.0.17}"
PLUGINS="${DATAHUB_TEST_CLI_PLUGINS:-postgres,datahub-rest,file}"
mkdir -p "$TOOLS"
log() { echo "setup-test-env: $*" >&2; }

# uv
UV="$TOOLS/uv-venv/bin/uv"
if [ ! -x "$UV" ]; then
  log "installing uv into $TOOLS/uv-venv"
  python3 -m venv "$TOOLS/uv-venv" >&2
  "$TOOLS/uv-venv/bin/pip" install --quiet --disable-pip-version-check 'uv==0.13.9' >&2
fi
export UV_CACHE_DIR="${UV_CACHE_DIR:-$TOOLS/uv-cache}"

# the datahub CLI
VENV="$TOOLS/datahub-$CLI_VERSION"
if [ ! -f "$VENV/.complete" ]; then
  log "installing acryl-datahub[$PLUGINS]==$CLI_VERSION into $VENV (a few minutes the first time)"
  rm -rf "$VENV"
  "$UV" venv --quiet --python "$(command -v python3)" "$VENV" >&2
  VIRTUAL_ENV="$VENV" "$UV" pip install --quiet "acryl-datahub[$PLUGINS]==$CLI_VERSION" >&2
  touch "$VENV/.complete"
fi

# PostgreSQL server binaries
pg_bin=""
for d in /usr/lib/postgresql/*/bin; do
  [ -x "$d/initdb" ] && pg_bin="$d"
done
if [ -z "$pg_bin" ]; then
  log "installing PostgreSQL from Debian's packages"
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
  else
    sudo apt-get update -qq >&2 && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
  fi
  for d in /usr/lib/postgresql/*/bin; do
    [ -x "$d/initdb" ] && pg_bin="$d"
  done
fi

# moto: a local AWS API (ECS, SQS, EC2) for the launcher tests
MOTO_VERSION="${DATAHUB_TEST_MOTO_VERSION:-5.2.5}"
MOTO="$TOOLS/moto-venv"
if [ ! -f "$MOTO/.complete-$MOTO_VERSION" ] || [ ! -x "$MOTO/bin/moto_server" ]; then
  log "installing moto[server]==$MOTO_VERSION into $MOTO (about a minute the first time)"
  rm -rf "$MOTO"
  python3 -m venv "$MOTO" >&2
  "$MOTO/bin/pip" install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION" >&2
  touch "$MOTO/.complete-$MOTO_VERSION"
fi

echo "export DATAHUB_EXECUTOR_UV=$UV"
echo "export UV_CACHE_DIR=$UV_CACHE_DIR"
echo "export DATAHUB_TEST_VENV=$VENV"
echo "export DATAHUB_TEST_CLI_VERSION=$CLI_VERSION"
echo "export DATAHUB_TEST_PG_BIN=$pg_bin"
echo "export DATAHUB_TELEMETRY_ENABLED=false"
echo "export DATAHUB_TEST_MOTO=$MOTO"
