#!/usr/bin/env bash
# Benchmark (not a test): `terraform apply`, `plan` and `destroy` with N imagesync resources
# (default 100) copying one two-platform image from one local registry into N repositories
# of another. Prints the wall time of each step and the registry requests per resource,
# by method, from the registries' access logs; a plan should only send HEAD requests.
#
# Usage: terraform-bench.sh [N]     Env: TERRAFORM (default: terraform on PATH),
#        PARALLELISM (default 10), PROFILE (debug|release, default debug).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../../.." && pwd)"
SCRIPTS="$ROOT/tests/e2e/scripts"
N="${1:-100}"
PARALLELISM="${PARALLELISM:-10}"
PROFILE="${PROFILE:-debug}"
TERRAFORM="${TERRAFORM:-$(command -v terraform || bash "$SCRIPTS/terraform-fetch.sh" 1.0.3)}"
log() { printf '== %s\n' "$*" >&2; }

log "building terraform-provider-imagesync ($PROFILE)"
if [ "$PROFILE" = release ]; then
  (cd "$ROOT" && cargo build -q --release -p terraform-provider-imagesync)
else
  (cd "$ROOT" && cargo build -q -p terraform-provider-imagesync)
fi
PROVIDER="$ROOT/target/$PROFILE/terraform-provider-imagesync"

WORK_PREFIX=imagesync-tfbench
# shellcheck source=../scripts/registries.sh
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
  printf '%-8s wall %6.2f s   requests/resource: source %5.2f, mirror %5.2f\n' "$name" \
    "$(echo "$t1 - $t0" | bc -l)" "$(echo "$sreq / $N" | bc -l)" "$(echo "$dreq / $N" | bc -l)"
  printf '         source: %s\n' "$(methods_since "$WORK/source.log" "$s0")"
  printf '         mirror: %s\n' "$(methods_since "$WORK/mirror.log" "$d0")"
}

echo "terraform-bench: $N resources, -parallelism=$PARALLELISM, $("$TERRAFORM" version 2>/dev/null | grep -o 'Terraform v[0-9.]*' | head -n1), provider $PROFILE build"
step apply apply -auto-approve -input=false -no-color -parallelism="$PARALLELISM"
step plan plan -input=false -no-color -parallelism="$PARALLELISM"
step apply2 apply -auto-approve -input=false -no-color -parallelism="$PARALLELISM"
step destroy destroy -auto-approve -input=false -no-color -parallelism="$PARALLELISM"
