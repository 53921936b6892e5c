#!/usr/bin/env bash
# Benchmark (not a test): `terraform apply`, `plan` and `destroy` with N imagesync resources
# (default 100) copying one two-platform image from one local registry into N repositories
# of another. Prints the wall time of each step and the registry requests per resource,
# by method, from the registries' access logs; a plan should only send HEAD requests.
# The plan runs PLANS times (default 3). With BENCH_RESULTS set (bench/run.sh), the plan and
# apply samples are appended to it for `bench-report`.
#
# Usage: terraform-bench.sh [N]     Env: TERRAFORM (default: terraform on PATH),
#        PARALLELISM (default 10), PROFILE (debug|release, default debug), PLANS,
#        SKIP_BUILD=1 to use an existing provider binary.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
SCRIPTS="$ROOT/tests/e2e/scripts"
N="${1:-100}"
PARALLELISM="${PARALLELISM:-10}"
PROFILE="${PROFILE:-debug}"
PLANS="${PLANS:-3}"
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
PROVIDER="$ROOT/target/$PROFILE/terraform-provider-imagesync"

WORK_PREFIX=imagesync-tfbench
# shellcheck source=../tests/e2e/scripts/registries.sh
. "$SCRIPTS/registries.sh"

start_registry source true; SRC="$REG"
start_registry mirror true; DST="$REG"
python3 "$SCRIPTS/oci-layout.py" "$WORK/layout" v1 3 >/dev/null
skopeo copy -q --all --dest-tls-verify=false "oci:$WORK/layout:v1" "docker://$SRC/bench/app:v1"

MIRROR="$WORK/mirror/registry.terraform.io/imagesync/imagesync/0.1.0/linux_amd64"
mkdir -p "$MIRROR"
ln -s "$PROVIDER" "$MIRROR/terraform-provider-imagesync_v0.1.0"
printf 'provider_installation {\n  filesystem_mirror {\n    path    = "%s"\n    include = ["imagesync/imagesync"]\n  }\n}\n' \
  "$WORK/mirror" >"$WORK/terraformrc"
mkdir -p "$WORK/tf"
cat >"$WORK/tf/main.tf" <<HCL
terraform {
  required_providers {
    imagesync = { source = "imagesync/imagesync" }
  }
}
provider "imagesync" {
  insecure_registries = ["$SRC", "$DST"]
}
resource "imagesync" "bench" {
  count       = $N
  source      = "$SRC/bench/app:v1"
  destination = "$DST/bench/app\${count.index}:v1"
}
HCL
export TF_CLI_CONFIG_FILE="$WORK/terraformrc" CHECKPOINT_DISABLE=1 TF_IN_AUTOMATION=1
cd "$WORK/tf"
"$TERRAFORM" init -input=false -no-color >/dev/null 2>&1

requests() { # registry log file -> count of API requests so far
  grep -cE '"(GET|HEAD|PUT|POST|PATCH|DELETE) /v2/' "$1" || true
}
methods_since() { # log file, line offset -> "HEAD=.. GET=.." for lines after offset
  tail -n +"$(($2 + 1))" "$1" | grep -oE '"(GET|HEAD|PUT|POST|PATCH|DELETE) /v2/[^ ]*' |
    awk '{m=substr($1,2); kind=($2 ~ /\/manifests\//) ? "manifest" : (($2 ~ /\/blobs\/uploads/) ? "upload" : (($2 ~ /\/blobs\//) ? "blob" : "other")); c[m" "kind]++}
         END {for (k in c) printf "%s=%d ", k, c[k]; print ""}'
}
lines() { wc -l <"$1"; }

record() { # WORKLOAD TOOL METRIC UNIT VALUE
  [ -n "${BENCH_RESULTS:-}" ] || return 0
  printf 'm\t%s\t%s\t%s\t%s\t%s\n' "$@" >>"$BENCH_RESULTS"
}
note() { # WORKLOAD TEXT
  [ -n "${BENCH_RESULTS:-}" ] || return 0
  printf 'note\t%s\t%s\n' "$1" "$2" >>"$BENCH_RESULTS"
}
PLAN_W="terraform plan ($N resources)"
APPLY_W="terraform apply ($N resources)"
note "$PLAN_W" "\`terraform plan\` of $N imagesync resources in sync (a 2-platform image copied into $N repositories), -parallelism=$PARALLELISM, provider $PROFILE build; requests counted in both registries' access logs. Theoretical minimum (raw column): 2 requests per resource, a HEAD of the source tag and one of the destination."
note "$APPLY_W" "The first \`terraform apply\` creating the $N resources (one sample; no minimum given)."

step() { # NAME, terraform args...
  local name="$1"; shift
  sleep 0.3
  local s0 d0 t0 t1
  s0="$(lines "$WORK/source.log")"; d0="$(lines "$WORK/mirror.log")"
  t0="$(date +%s.%N)"
  "$TERRAFORM" "$@" >"$WORK/$name.out" 2>&1 || { cat "$WORK/$name.out" >&2; exit 1; }
  t1="$(date +%s.%N)"
  sleep 0.5 # the access log is written after each response
  local sreq dreq
  sreq="$(tail -n +"$((s0 + 1))" "$WORK/source.log" | grep -cE '"(GET|HEAD|PUT|POST|PATCH|DELETE) /v2/' || true)"
  dreq="$(tail -n +"$((d0 + 1))" "$WORK/mirror.log" | grep -cE '"(GET|HEAD|PUT|POST|PATCH|DELETE) /v2/' || true)"
  local heads gets w
  heads="$( (tail -n +"$((s0 + 1))" "$WORK/source.log"; tail -n +"$((d0 + 1))" "$WORK/mirror.log") | grep -cE '"HEAD /v2/' || true)"
  gets="$( (tail -n +"$((s0 + 1))" "$WORK/source.log"; tail -n +"$((d0 + 1))" "$WORK/mirror.log") | grep -cE '"GET /v2/' || true)"
  case "$name" in plan*) w="$PLAN_W" ;; apply) w="$APPLY_W" ;; *) w="" ;; esac
  if [ -n "$w" ]; then
    record "$w" imagesync "wall time" s "$(echo "$t1 - $t0" | bc -l)"
    record "$w" imagesync "requests per resource" count "$(echo "($sreq + $dreq) / $N" | bc -l)"
    record "$w" imagesync "HEAD per resource" count "$(echo "$heads / $N" | bc -l)"
    record "$w" imagesync "GET per resource" count "$(echo "$gets / $N" | bc -l)"
    if [ "$w" = "$PLAN_W" ]; then
      record "$w" raw "requests per resource" count 2
      record "$w" raw "HEAD per resource" count 2
      record "$w" raw "GET per resource" count 0
    fi
  fi
  printf '%-8s wall %6.2f s   requests/resource: source %5.2f, mirror %5.2f\n' "$name" \
    "$(echo "$t1 - $t0" | bc -l)" "$(echo "$sreq / $N" | bc -l)" "$(echo "$dreq / $N" | bc -l)"
  printf '         source: %s\n' "$(methods_since "$WORK/source.log" "$s0")"
  printf '         mirror: %s\n' "$(methods_since "$WORK/mirror.log" "$d0")"
}

echo "terraform-bench: $N resources, -parallelism=$PARALLELISM, $("$TERRAFORM" version 2>/dev/null | grep -o 'Terraform v[0-9.]*' | head -n1), provider $PROFILE build"
step apply apply -auto-approve -input=false -no-color -parallelism="$PARALLELISM"
for i in $(seq "$PLANS"); do
  step "plan$i" plan -input=false -no-color -parallelism="$PARALLELISM"
done
step apply2 apply -auto-approve -input=false -no-color -parallelism="$PARALLELISM"
step destroy destroy -auto-approve -input=false -no-color -parallelism="$PARALLELISM"
