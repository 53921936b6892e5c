#!/usr/bin/env bash
# The benchmark report, in one command (not part of the tests):
#
#   bash bench/run.sh
#
# Builds the release binaries, then runs every workload in one run, each script starting
# its own registries (and etcd + kube-apiserver v1.20.2 for the controller):
#   bench/bench.sh             imagesync vs skopeo vs raw curl: cold copy, same-registry
#                              copy, no-op re-copy, 50 images sharing a base layer, 1 GiB layer
#                              and the WAN workloads over a modelled far link (bench/wan.sh),
#                              the cold copy and no-op also over TLS
#   bench/controller-bench.sh  controller steady state with 1,000 objects (spec.referrers on,
#                              the default: 4 HEADs per check; then off: 2 HEADs), and once
#                              with 10,000 (one cycle: peak RSS and CPU per cycle at scale)
#   bench/set-bench.sh         the registry requests of an ImageSyncSet's check (SET_TAGS
#                              tags, default 200): tag-list pages and the children's HEADs
#   bench/terraform-bench.sh   terraform apply and no-change plan with 50 and 500 resources,
#                              provider start to exit; against the original provider
#                              (sHesl/terraform-provider-imagesync v0.0.8) when
#                              ORIGINAL_PROVIDER_SRC names a checkout of its source
#   bench/referrers-bench.sh   registry requests with referrers on and off: cold copy, no-op
#                              re-copy, no-change terraform plan of 10 resources
# Every sample goes to bench/results.tsv; `bench-report` turns it into bench/results.md and
# bench/results.png. Takes about 80 minutes on 2 cores (plus the builds): the WAN workloads
# and the 10,000-object controller run take about 25 each.
#
# Environment: RUNS (repetitions, default 3), OBJECTS (controller, default 1000),
# INTERVAL (controller resync seconds, default 30), OBJECTS_LARGE and INTERVAL_LARGE (the
# large controller run, default 10000 objects and 300 s: the check rate of 1,000 objects
# at 30 s, which the one bench registry serves; at 60 s it saturates and starves the
# first copies; OBJECTS_LARGE=0 skips it), RESOURCES (Terraform sizes, default
# "50 500"), ORIGINAL_PROVIDER_SRC (see bench/terraform-bench.sh),
# BENCH_OUT (folder for results.*, default bench/), and bench.sh's LAYER_MB, BASE_MB,
# IMAGES, BIG_MB, JOBS.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${BENCH_OUT:-$ROOT/bench}"
RUNS="${RUNS:-3}"
OBJECTS="${OBJECTS:-1000}"
INTERVAL="${INTERVAL:-30}"
RESOURCES="${RESOURCES:-50 500}"
OBJECTS_LARGE="${OBJECTS_LARGE:-10000}"
INTERVAL_LARGE="${INTERVAL_LARGE:-300}"
FONT="${BENCH_FONT:-/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf}"
log() { printf '== %s\n' "$*" >&2; }
START="$(date +%s)"

# Debian packages: the registries, skopeo, etcd (install-deps.sh), GNU time for CPU and
# peak RSS, bc, and a TrueType font for the chart.
bash "$ROOT/tests/e2e/scripts/install-deps.sh" >&2
need=()
[ -x /usr/bin/time ] || need+=(time)
command -v bc >/dev/null || need+=(bc)
[ -f "$FONT" ] || need+=(fonts-dejavu-core)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  log "installing: ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

log "building release binaries"
(cd "$ROOT" && cargo build --release -p imagesync-cli -p terraform-provider-imagesync \
  -p imagesync-controller -p imagesync-bench >&2)
log "kube-apiserver (cached build)"
bash "$ROOT/tests/e2e/scripts/build-kube-apiserver.sh" >/dev/null

BENCH_START="$(date +%s)"
mkdir -p "$OUT"
RESULTS="$OUT/results.tsv"
: >"$RESULTS"
fact() { printf 'fact\t%s\t%s\n' "$1" "$2" >>"$RESULTS"; }
load() { cut -d' ' -f1-3 /proc/loadavg; }
commit="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [ -n "$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null | grep -v ' bench/results\.' || true)" ]; then
  commit="$commit (with uncommitted changes)"
fi
fact date "$(date -u '+%Y-%m-%d %H:%M UTC')"
fact commit "$commit"
fact cpus "$(nproc)"
fact "cpu model" "$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)"
fact memory "$(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)"
fact kernel "$(uname -r)"
fact "load average (start)" "$(load)"
fact repetitions "$RUNS"
fact tools "$(rustc --version | cut -d' ' -f1-2), skopeo $(skopeo --version | awk '{print $3}'), docker-registry $(docker-registry --version 2>/dev/null | awk '{print $3}'), $(terraform version 2>/dev/null | head -n1), kube-apiserver v1.20.2, curl $(curl --version | awk 'NR == 1 {print $2}')"
export BENCH_RESULTS="$RESULTS" SKIP_BUILD=1

log "engine workloads (bench.sh, $RUNS rounds)"
RUNS="$RUNS" bash "$ROOT/bench/bench.sh"
fact "load average (after engine workloads)" "$(load)"

log "controller steady state ($OBJECTS objects, $RUNS cycles of ${INTERVAL}s)"
OBJECTS="$OBJECTS" INTERVAL="$INTERVAL" CYCLES="$RUNS" PROFILE=release \
  bash "$ROOT/bench/controller-bench.sh" >&2
log "controller steady state ($OBJECTS objects, spec.referrers false, $RUNS cycles of ${INTERVAL}s)"
OBJECTS="$OBJECTS" INTERVAL="$INTERVAL" CYCLES="$RUNS" NEW_OBJECTS=0 REFERRERS=false \
  PROFILE=release bash "$ROOT/bench/controller-bench.sh" >&2
fact "load average (after controller)" "$(load)"

if [ "$OBJECTS_LARGE" -gt 0 ]; then
  log "controller steady state ($OBJECTS_LARGE objects, 1 cycle of ${INTERVAL_LARGE}s)"
  OBJECTS="$OBJECTS_LARGE" INTERVAL="$INTERVAL_LARGE" CYCLES=1 NEW_OBJECTS=0 PROFILE=release \
    bash "$ROOT/bench/controller-bench.sh" >&2
  fact "load average (after controller, $OBJECTS_LARGE objects)" "$(load)"
fi

log "ImageSyncSet check (${SET_TAGS:-200} tags, $RUNS checks)"
TAGS="${SET_TAGS:-200}" CYCLES="$RUNS" PROFILE=release bash "$ROOT/bench/set-bench.sh" >&2

log "terraform ($RESOURCES resources, $RUNS plans)"
# shellcheck disable=SC2086 # one argument per size
PLANS="$RUNS" PROFILE=release bash "$ROOT/bench/terraform-bench.sh" $RESOURCES >&2
log "referrers (request cost with them on and off)"
RUNS="$RUNS" PROFILE=release bash "$ROOT/bench/referrers-bench.sh" 10 >&2
fact "load average (end)" "$(load)"
minutes() { echo "$(( ($(date +%s) - $1) / 60 )) min $(( ($(date +%s) - $1) % 60 )) s"; }
fact "benchmark duration" "$(minutes "$BENCH_START")"
fact "run duration" "$(minutes "$START") (builds included)"

"$ROOT/target/release/bench-report" --input "$RESULTS" --markdown "$OUT/results.md" \
  --png "$OUT/results.png" --font "$FONT"
log "done: $OUT/results.md, $OUT/results.png"
