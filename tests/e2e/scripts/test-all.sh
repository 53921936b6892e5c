#!/usr/bin/env bash
# The single "run every test" command (README, .ci/run). On a fresh Debian 12 machine with
# a Rust toolchain it installs what the tests need, builds the workspace binaries the
# end-to-end tests run, and runs every crate's tests plus the end-to-end binary.
#
# Environment:
#   IMAGESYNC_E2E_CACHE   cache for slow builds (default ~/.cache/imagesync-e2e)
#   TEST_ARGS             extra test-harness arguments, e.g. a name filter like `engine::`
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../../.." && pwd)"
SCRIPTS="$ROOT/tests/e2e/scripts"
cd "$ROOT"
log() { printf '== %s\n' "$*" >&2; }

if ! command -v cargo >/dev/null 2>&1; then
  [ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
fi
command -v cargo >/dev/null 2>&1 || { echo "cargo not found: install a Rust toolchain (rustup) first" >&2; exit 1; }

log "installing Debian packages the tests use (skipped when present)"
bash "$SCRIPTS/install-deps.sh"

log "kube-apiserver v1.20.2 (built once, cached)"
IMAGESYNC_KUBE_APISERVER="$(bash "$SCRIPTS/build-kube-apiserver.sh")"
export IMAGESYNC_KUBE_APISERVER

# Optional preparation scripts of the other areas (Terraform binaries, Helm library):
# run them here so a failure shows up before a long test run.
if [ -f "$SCRIPTS/terraform-fetch.sh" ]; then
  for v in 1.0.3 0.13.4; do
    log "terraform $v (cached)"
    bash "$SCRIPTS/terraform-fetch.sh" "$v" >/dev/null
  done
fi
for prep in "$SCRIPTS"/prepare-*.sh; do
  [ -f "$prep" ] || continue
  log "$(basename "$prep")"
  bash "$prep"
done

log "building workspace binaries"
cargo build --workspace --bins

log "running every test"
if cargo nextest --version >/dev/null 2>&1; then
  # shellcheck disable=SC2086
  cargo nextest run --workspace --no-fail-fast ${TEST_ARGS:-}
  # nextest does not run doctests.
  cargo test --workspace --doc
else
  # shellcheck disable=SC2086
  cargo test --workspace --no-fail-fast -- ${TEST_ARGS:-}
fi
log "all tests passed"
