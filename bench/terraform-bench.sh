#!/usr/bin/env bash
# Benchmark (not a test): `terraform apply` and no-change `plan` with N imagesync resources
# (default: 50 and 500) copying one two-platform image from one local registry into N
# repositories of another, and the provider's start-to-exit time for a command with no
# resources (`terraform validate`). Prints the wall time of each step and the registry
# requests per resource, by method, from the registries' access logs; a plan should only
# send HEAD requests (2 per resource).
#
# With ORIGINAL_PROVIDER_SRC set to a checkout of the original provider's source
# (github.com/sHesl/terraform-provider-imagesync, tag v0.0.8, which vendors every
# dependency), the same workloads run with it in the same run, interleaved: it is built
# offline (`go build -mod=vendor`) into BENCH_CACHE (default ~/.cache/imagesync-bench),
# never into this repository. It copies only linux/amd64 of the image; imagesync copies
# every platform. Without it the comparison is skipped with a note.
#
# The plan runs PLANS times per size (default 3), the validate STARTS times (default 5).
# With BENCH_RESULTS set (bench/run.sh), the samples are appended to it for `bench-report`.
#
# Usage: terraform-bench.sh [N ...]   Env: TERRAFORM (default: terraform on PATH),
#        PARALLELISM (default 10), PROFILE (debug|release, default debug), PLANS, STARTS,
#        SKIP_BUILD=1 to use an existing provider binary, ORIGINAL_PROVIDER_SRC, GO
#        (default: go on PATH, else /usr/lib/go-1.19/bin/go or /usr/lib/go-1.15/bin/go),
#        BENCH_CACHE, DESTROY=0 to skip the final destroy, PROVIDER (the binary to test),
#        TRACE_DIR (the first plan of each tool and size runs with TF_LOG=trace into it;
#        its wall time then includes the logging).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
SCRIPTS="$ROOT/tests/e2e/scripts"
SIZES=("$@")
[ ${#SIZES[@]} -gt 0 ] || SIZES=(50 500)
PARALLELISM="${PARALLELISM:-10}"
PROFILE="${PROFILE:-debug}"
PLANS="${PLANS:-3}"
STARTS="${STARTS:-5}"
DESTROY="${DESTROY:-1}"
CACHE="${BENCH_CACHE:-$HOME/.cache/imagesync-bench}"
TERRAFORM="${TERRAFORM:-$(command -v terraform || bash "$SCRIPTS/terraform-fetch.sh" 1.0.3)}"
log() { printf '== %s\n' "$*" >&2; }

if [ -z "${SKIP_BUILD:-}" ]; then
  log "building terraform-provider-imagesync ($PROFILE)"
  if [ "$PROFILE" = release ]; then
    (cd "$ROOT" && cargo build -q --release -p terraform-provider-imagesync)
  else
    (cd "$ROOT" && cargo build -q -p terraform-provider-imagesync)
  fi
fi
PROVIDER="${PROVIDER:-${CARGO_TARGET_DIR:-$ROOT/target}/$PROFILE/terraform-provider-imagesync}"

record() { # WORKLOAD TOOL METRIC UNIT VALUE
  [ -n "${BENCH_RESULTS:-}" ] || return 0
  printf 'm\t%s\t%s\t%s\t%s\t%s\n' "$@" >>"$BENCH_RESULTS"
}
note() { # WORKLOAD TEXT
  [ -n "${BENCH_RESULTS:-}" ] || return 0
  printf 'note\t%s\t%s\n' "$1" "$2" >>"$BENCH_RESULTS"
}

# --- the original provider, built from the given checkout into the cache ---
ORIGINAL=""
original_build() {
  local src="$1" go="${GO:-}" rev out
  if [ -z "$go" ]; then
    go="$(command -v go || true)"
    for g in /usr/lib/go-1.19/bin/go /usr/lib/go-1.15/bin/go; do
      [ -n "$go" ] || { [ -x "$g" ] && go="$g"; }
    done
  fi
  [ -n "$go" ] || { log "no Go toolchain (set GO)"; return 1; }
  [ -f "$src/go.mod" ] && [ -d "$src/vendor" ] || {
    log "$src is not a checkout of the original provider with vendor/ (tag v0.0.8)"
    return 1
  }
  # One binary per source tree (content hash of go.mod and the provider package).
  rev="$(cat "$src/go.mod" "$src"/main.go "$src"/imagesync/*.go | sha256sum | cut -c1-12)"
  out="$CACHE/terraform-provider-imagesync-original-$rev"
  if [ ! -x "$out" ]; then
    log "building the original provider from $src into $CACHE"
    mkdir -p "$CACHE"
    (cd "$src" && GOFLAGS=-mod=vendor GOPROXY=off GO111MODULE=on \
      GOCACHE="$CACHE/gocache" GOPATH="$CACHE/gopath" "$go" build -mod=vendor -o "$out.tmp" .)
    mv "$out.tmp" "$out"
  fi
  ORIGINAL="$out"
}
if [ -n "${ORIGINAL_PROVIDER_SRC:-}" ]; then
  original_build "$ORIGINAL_PROVIDER_SRC" || { log "cannot build the original provider"; exit 1; }
else
  log "ORIGINAL_PROVIDER_SRC not set: skipping the comparison with the original provider"
fi
TOOLS=(imagesync)
[ -z "$ORIGINAL" ] || TOOLS+=(original)

WORK_PREFIX=imagesync-tfbench
# shellcheck source=../tests/e2e/scripts/registries.sh
. "$SCRIPTS/registries.sh"

start_registry source true; SRC="$REG"
start_registry imagesync true; DST_imagesync="$REG"
if [ -n "$ORIGINAL" ]; then start_registry original true; DST_original="$REG"; fi
python3 "$SCRIPTS/oci-layout.py" "$WORK/layout" v1 3 >/dev/null
skopeo copy -q --all --dest-tls-verify=false "oci:$WORK/layout:v1" "docker://$SRC/bench/app:v1"

# One filesystem mirror holding both providers, under different addresses.
MIRROR="$WORK/mirror/registry.terraform.io"
mkdir -p "$MIRROR/imagesync/imagesync/0.1.0/linux_amd64"
ln -s "$PROVIDER" "$MIRROR/imagesync/imagesync/0.1.0/linux_amd64/terraform-provider-imagesync_v0.1.0"
if [ -n "$ORIGINAL" ]; then
  mkdir -p "$MIRROR/shesl/imagesync/0.0.8/linux_amd64"
  ln -s "$ORIGINAL" "$MIRROR/shesl/imagesync/0.0.8/linux_amd64/terraform-provider-imagesync_v0.0.8"
fi
printf 'provider_installation {\n  filesystem_mirror {\n    path    = "%s"\n    include = ["imagesync/imagesync", "shesl/imagesync"]\n  }\n}\n' \
  "$WORK/mirror" >"$WORK/terraformrc"
export TF_CLI_CONFIG_FILE="$WORK/terraformrc" CHECKPOINT_DISABLE=1 TF_IN_AUTOMATION=1

config() { # TOOL N -> main.tf on stdout (N = 0: no resources)
  local tool="$1" n="$2" dst
  if [ "$tool" = imagesync ]; then
    dst="$DST_imagesync"
    printf 'terraform {\n  required_providers {\n    imagesync = { source = "imagesync/imagesync" }\n  }\n}\n'
    printf 'provider "imagesync" {\n  insecure_registries = ["%s", "%s"]\n}\n' "$SRC" "$dst"
  else
    # The original has no provider settings; it speaks plain HTTP to 127.0.0.1 itself.
    dst="$DST_original"
    printf 'terraform {\n  required_providers {\n    imagesync = { source = "shesl/imagesync" }\n  }\n}\n'
  fi
  [ "$n" -gt 0 ] || return 0
  cat <<HCL
resource "imagesync" "bench" {
  count       = $n
  source      = "$SRC/bench/app:v1"
  destination = "$dst/bench$n/app\${count.index}:v1"
}
HCL
}
setup() { # TOOL N -> working directory, initialised
  local dir="$WORK/tf-$1-$2"
  mkdir -p "$dir"
  config "$1" "$2" >"$dir/main.tf"
  (cd "$dir" && "$TERRAFORM" init -input=false -no-color >"$dir/init.out" 2>&1) ||
    { cat "$dir/init.out" >&2; exit 1; }
  echo "$dir"
}

lines() { wc -l <"$1"; }
since() { tail -n +"$(($2 + 1))" "$1"; } # log file, line offset
methods() { # lines on stdin -> "HEAD manifest=.. GET blob=.."
  grep -oE '"(GET|HEAD|PUT|POST|PATCH|DELETE) /v2/[^ ]*' |
    awk '{m=substr($1,2); kind=($2 ~ /\/manifests\//) ? "manifest" : (($2 ~ /\/blobs\/uploads/) ? "upload" : (($2 ~ /\/blobs\//) ? "blob" : "other")); c[m" "kind]++}
         END {for (k in c) printf "%s=%d ", k, c[k]; print ""}'
}
count() { grep -cE "\"($1) /v2/" || true; } # METHOD-REGEX, lines on stdin
ANY='GET|HEAD|PUT|POST|PATCH|DELETE'

step() { # TOOL N NAME WORKLOAD(empty: not recorded) terraform args...
  local tool="$1" n="$2" name="$3" w="$4"; shift 4
  local dir="$WORK/tf-$tool-$n" dlog
  dlog="$WORK/$tool.log"
  sleep 0.3
  local s0 d0 t0 t1
  s0="$(lines "$WORK/source.log")"; d0="$(lines "$dlog")"
  t0="$(date +%s.%N)"
  local trace=()
  if [ -n "${TRACE_DIR:-}" ] && [ "$name" = plan1 ]; then
    mkdir -p "$TRACE_DIR"; trace=(TF_LOG=trace "TF_LOG_PATH=$TRACE_DIR/$tool-$n-plan.log")
  fi
  (cd "$dir" && env "${trace[@]}" "$TERRAFORM" "$@" >"$dir/$name.out" 2>&1) || { cat "$dir/$name.out" >&2; exit 1; }
  t1="$(date +%s.%N)"
  sleep 0.5 # the access log is written after each response
  since "$WORK/source.log" "$s0" >"$WORK/s.req"; since "$dlog" "$d0" >"$WORK/d.req"
  local all heads gets wall
  all="$(cat "$WORK/s.req" "$WORK/d.req" | count "$ANY")"
  heads="$(cat "$WORK/s.req" "$WORK/d.req" | count HEAD)"
  gets="$(cat "$WORK/s.req" "$WORK/d.req" | count GET)"
  wall="$(echo "$t1 - $t0" | bc -l)"
  if [ -n "$w" ]; then
    record "$w" "$tool" "wall time" s "$wall"
    record "$w" "$tool" "requests per resource" count "$(echo "$all / $n" | bc -l)"
    record "$w" "$tool" "HEAD per resource" count "$(echo "$heads / $n" | bc -l)"
    record "$w" "$tool" "GET per resource" count "$(echo "$gets / $n" | bc -l)"
  fi
  printf '%-9s %-8s wall %6.2f s   requests/resource: source %5.2f, destination %5.2f\n' \
    "$tool" "$name" "$wall" "$(echo "$(count "$ANY" <"$WORK/s.req") / $n" | bc -l)" \
    "$(echo "$(count "$ANY" <"$WORK/d.req") / $n" | bc -l)"
  printf '          source:      %s\n' "$(methods <"$WORK/s.req")"
  printf '          destination: %s\n' "$(methods <"$WORK/d.req")"
}

# Provider start to exit, from Terraform's own log: "starting plugin" to "plugin exited",
# and "GRPCProvider[.v6]: Close" (Terraform asks it to stop) to "plugin exited", in ms.
plugin_times() { # TF_LOG file -> "START_TO_EXIT CLOSE_TO_EXIT" (first plugin instance)
  python3 - "$1" <<'PY'
import re, sys
from datetime import datetime
ts = lambda l: datetime.strptime(l[:23], "%Y-%m-%dT%H:%M:%S.%f")
start = close = None
for line in open(sys.argv[1], errors="replace"):
    if not re.match(r"\d{4}-\d\d-\d\dT", line):
        continue
    if "provider: starting plugin:" in line and start is None:
        start = ts(line)
    elif re.search(r"GRPCProvider(\.v6)?: Close", line) and close is None:
        close = ts(line)
    elif "provider: plugin exited" in line and start is not None:
        end = ts(line)
        ms = lambda a: (end - a).total_seconds() * 1000
        print("%.1f %.1f" % (ms(start), ms(close or end)))
        break
PY
}
START_W="terraform provider start to exit (no resources)"
starts() { # TOOL
  local tool="$1" dir="$WORK/tf-$1-0" t
  for _ in $(seq "$STARTS"); do
    (cd "$dir" && TF_LOG=trace TF_LOG_PATH="$dir/validate.log" "$TERRAFORM" validate -no-color >/dev/null 2>&1)
    t="$(plugin_times "$dir/validate.log")"; rm -f "$dir/validate.log"
    [ -n "$t" ] || { log "no plugin start/exit in the $tool log"; return 0; }
    record "$START_W" "$tool" "start to exit" ms "${t% *}"
    record "$START_W" "$tool" "exit after Close" ms "${t#* }"
    printf '%-9s validate  provider start to exit %6.1f ms, Close to exit %6.1f ms\n' "$tool" "${t% *}" "${t#* }"
  done
}

echo "terraform-bench: ${SIZES[*]} resources, -parallelism=$PARALLELISM, $("$TERRAFORM" version 2>/dev/null | grep -o 'Terraform v[0-9.]*' | head -n1), provider $PROFILE build, tools: ${TOOLS[*]}"
if [ -z "$ORIGINAL" ]; then
  note "$START_W" "The comparison with the original provider (sHesl/terraform-provider-imagesync v0.0.8) was skipped: ORIGINAL_PROVIDER_SRC was not set."
fi
note "$START_W" "\`terraform validate\` of a configuration with no resources, TF_LOG=trace: from Terraform's \"starting plugin\" to \"plugin exited\" (start to exit) and from \"GRPCProvider: Close\" to \"plugin exited\" (exit after Close), first provider instance, $STARTS samples per tool."
for tool in "${TOOLS[@]}"; do setup "$tool" 0 >/dev/null; done
for tool in "${TOOLS[@]}"; do starts "$tool"; done

for n in "${SIZES[@]}"; do
  plan_w="terraform plan ($n resources)"; apply_w="terraform apply ($n resources)"
  note "$plan_w" "No-change \`terraform plan\` of $n imagesync resources in sync (a 2-platform image copied into $n repositories), -parallelism=$PARALLELISM, provider $PROFILE build; requests counted in the registries' access logs. Theoretical minimum (raw column): 2 requests per resource, a HEAD of the source tag and one of the destination.$([ -z "$ORIGINAL" ] || echo " The original provider v0.0.8 (built from its vendored source) sends GETs of the manifests instead; plans alternate between the two.")"
  note "$apply_w" "The first \`terraform apply\` creating the $n resources (one sample per tool; no minimum given).$([ -z "$ORIGINAL" ] || echo " imagesync copies both platforms of the image, the original provider only linux/amd64.")"
  for tool in "${TOOLS[@]}"; do setup "$tool" "$n" >/dev/null; done
  for tool in "${TOOLS[@]}"; do
    step "$tool" "$n" apply "$apply_w" apply -auto-approve -input=false -no-color -parallelism="$PARALLELISM"
  done
  for i in $(seq "$PLANS"); do
    for tool in "${TOOLS[@]}"; do
      step "$tool" "$n" "plan$i" "$plan_w" plan -input=false -no-color -parallelism="$PARALLELISM"
    done
  done
  record "$plan_w" raw "requests per resource" count 2
  record "$plan_w" raw "HEAD per resource" count 2
  record "$plan_w" raw "GET per resource" count 0
  step imagesync "$n" apply2 "" apply -auto-approve -input=false -no-color -parallelism="$PARALLELISM"
  if [ "$DESTROY" = 1 ]; then
    step imagesync "$n" destroy "" destroy -auto-approve -input=false -no-color -parallelism="$PARALLELISM"
  fi
done
