#!/usr/bin/env bash
# Builds the bundled venvs of the ingest-job image: one venv per plugin at
#   ${DATAHUB_BUNDLED_VENV_PATH:-/opt/datahub/venvs}/<plugin>-bundled
# which is what a run with `version: bundled` uses (shared/src/venv.rs: the plugin is the
# recipe's `source.type`, and the venv must have bin/python and bin/datahub).
#
#   BUNDLED_VENV_PLUGINS   comma-separated plugins (default: s3,demo-data,file, as DataHub's image)
#   BUNDLED_CLI_VERSION    the acryl-datahub version (required; a leading `v` is dropped)
#   BUNDLED_VENV_EXTRAS    extras every venv gets besides its plugin (default: datahub-rest, the
#                          sink most recipes use)
#   DATAHUB_EXECUTOR_UV    the uv binary (default: uv on PATH); UV_CACHE_DIR etc. are uv's own
#   DATAHUB_EXECUTOR_PYTHON  the interpreter the venvs are built on (default: python3 on PATH)
#
# Used by functions/ingest-job/Dockerfile and by tests/tests/bundled_venv.rs (no Docker needed).
# A venv whose build fails is removed, so `bundled` never picks up a half-built one.
set -euo pipefail

ROOT="${DATAHUB_BUNDLED_VENV_PATH:-/opt/datahub/venvs}"
PLUGINS="${BUNDLED_VENV_PLUGINS:-s3,demo-data,file}"
VERSION="${BUNDLED_CLI_VERSION:-}"
VERSION="${VERSION#v}"
EXTRAS="${BUNDLED_VENV_EXTRAS-datahub-rest}"
UV="${DATAHUB_EXECUTOR_UV:-uv}"
PYTHON="${DATAHUB_EXECUTOR_PYTHON:-$(command -v python3)}"
log() { echo "build-bundled-venvs: $*" >&2; }

[ -n "$VERSION" ] || { log "BUNDLED_CLI_VERSION is required (e.g. 1.7.0.17)"; exit 2; }
[[ "$VERSION" =~ ^[0-9]+(\.[0-9]+)*((a|b|rc)[0-9]+)?(\.post[0-9]+)?(\.dev[0-9]+)?$ ]] \
  || { log "BUNDLED_CLI_VERSION=$VERSION is not a PEP 440 version"; exit 2; }
command -v "$UV" >/dev/null || { log "uv not found (DATAHUB_EXECUTOR_UV=$UV)"; exit 2; }
mkdir -p "$ROOT"

IFS=',' read -r -a plugins <<< "$PLUGINS"
seen=","
for raw in "${plugins[@]}"; do
  plugin="$(echo "$raw" | tr -d '[:space:]')"
  [ -n "$plugin" ] || continue
  [[ "$plugin" =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]] || { log "bad plugin name: $plugin"; exit 2; }
  [[ "$seen" == *",$plugin,"* ]] && { log "plugin $plugin listed twice"; exit 2; }
  seen="$seen$plugin,"
  extras="$plugin"
  [ -n "$EXTRAS" ] && extras="$plugin,$EXTRAS"
  dest="$ROOT/$plugin-bundled"
  log "acryl-datahub[$extras]==$VERSION -> $dest"
  # Built in place (venv scripts hold absolute paths); removed again if anything fails.
  rm -rf "$dest"
  trap 'rm -rf "$dest"' ERR
  "$UV" venv --quiet --python "$PYTHON" "$dest" >&2
  VIRTUAL_ENV="$dest" "$UV" pip install --quiet "acryl-datahub[$extras]==$VERSION" >&2
  trap - ERR
  for exe in python datahub; do
    [ -x "$dest/bin/$exe" ] || { rm -rf "$dest"; log "$dest has no bin/$exe"; exit 1; }
  done
  got="$("$dest/bin/python" -c 'import importlib.metadata as m; print(m.version("acryl-datahub"))')"
  [ "$got" = "$VERSION" ] || { rm -rf "$dest"; log "$dest has acryl-datahub $got, not $VERSION"; exit 1; }
  log "  ok: $dest (acryl-datahub $got)"
done
