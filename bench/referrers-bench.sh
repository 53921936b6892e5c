#!/usr/bin/env bash
# Benchmark (not a test): what referrers (signatures, attestations, SBOMs; issue 14) cost
# in registry requests, with them on (the default) and off. A 2-platform image in a local
# source registry gets a cosign `.sig` tag, a cosign `.att` tag and an attestation in its
# `sha256-<hex>` fallback index (the ways distribution 2.8 can hold them); then, each
# with referrers on and off:
#   cold copy       `imagesync copy` into a fresh repository of the mirror
#   no-op re-copy   `imagesync copy` again (the image and its referrers are there)
#   terraform plan  `terraform plan` of N resources in sync (default 10)
# Requests are counted in both registries' access logs. With BENCH_RESULTS set
# (bench/run.sh) the samples are appended to it for `bench-report`.
#
# Usage: referrers-bench.sh [N]   Env: RUNS (default 3), TERRAFORM, PROFILE (debug|release,
#        default debug), SKIP_BUILD=1 to use existing binaries.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
SCRIPTS="$ROOT/tests/e2e/scripts"
N="${1:-10}"
RUNS="${RUNS:-3}"
PROFILE="${PROFILE:-debug}"
TERRAFORM="${TERRAFORM:-$(command -v terraform || bash "$SCRIPTS/terraform-fetch.sh" 1.0.3)}"
log() { printf '== %s\n' "$*" >&2; }

if [ -z "${SKIP_BUILD:-}" ]; then
  flag=(); [ "$PROFILE" = release ] && flag=(--release)
  (cd "$ROOT" && cargo build -q "${flag[@]}" -p imagesync-cli -p terraform-provider-imagesync)
fi
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
IMAGESYNC="$TARGET/$PROFILE/imagesync"
PROVIDER="$TARGET/$PROFILE/terraform-provider-imagesync"

WORK_PREFIX=imagesync-refbench
# shellcheck source=../tests/e2e/scripts/registries.sh
. "$SCRIPTS/registries.sh"
start_registry source true; SRC="$REG"
start_registry mirror true; DST="$REG"
python3 "$SCRIPTS/oci-layout.py" "$WORK/layout" v1 3 >/dev/null
skopeo copy -q --all --dest-tls-verify=false "oci:$WORK/layout:v1" "docker://$SRC/bench/app:v1"

# --- referrers at the source, pushed with curl ---
push_blob() { # FILE -> digest
  local d loc
  d="sha256:$(sha256sum "$1" | cut -d' ' -f1)"
  loc="$(curl -fsS -X POST -D - -o /dev/null "http://$SRC/v2/bench/app/blobs/uploads/" | tr -d '\r' | awk 'tolower($1)=="location:" {print $2}')"
  case "$loc" in http*) ;; *) loc="http://$SRC$loc" ;; esac
  curl -fsS -X PUT -H 'Content-Type: application/octet-stream' --data-binary "@$1" "$loc&digest=$d" >/dev/null
  echo "$d"
}
put_manifest() { # REFERENCE MEDIATYPE FILE
  curl -fsS -X PUT -H "Content-Type: $2" --data-binary "@$3" "http://$SRC/v2/bench/app/manifests/$1" >/dev/null
}
size() { wc -c <"$1" | tr -d ' '; }
SUBJECT="$(curl -fsSI -H 'Accept: application/vnd.oci.image.index.v1+json' "http://$SRC/v2/bench/app/manifests/v1" | tr -d '\r' | awk 'tolower($1)=="docker-content-digest:" {print $2}')"
SUBJECT_SIZE="$(curl -fsS -H 'Accept: application/vnd.oci.image.index.v1+json' "http://$SRC/v2/bench/app/manifests/v1" | wc -c | tr -d ' ')"
TAG="${SUBJECT/:/-}"
tag_manifest() { # TAG LAYER-MEDIATYPE PAYLOAD
  printf '%s' "$3" >"$WORK/payload"; local p c
  p="$(push_blob "$WORK/payload")"
  printf '{"architecture":"","os":"","config":{},"rootfs":{"type":"layers","diff_ids":["%s"]}}' "$p" >"$WORK/config"
  c="$(push_blob "$WORK/config")"
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","size":%s,"digest":"%s"},"layers":[{"mediaType":"%s","size":%s,"digest":"%s","annotations":{"dev.cosignproject.cosign/signature":"bench"}}]}' \
    "$(size "$WORK/config")" "$c" "$2" "$(size "$WORK/payload")" "$p" >"$WORK/m"
  put_manifest "$1" application/vnd.oci.image.manifest.v1+json "$WORK/m"
}
tag_manifest "$TAG.sig" application/vnd.dev.cosign.simplesigning.v1+json \
  "{\"critical\":{\"identity\":{\"docker-reference\":\"$SRC/bench/app\"},\"image\":{\"docker-manifest-digest\":\"$SUBJECT\"},\"type\":\"cosign container image signature\"},\"optional\":null}"
tag_manifest "$TAG.att" application/vnd.dsse.envelope.v1+json '{"payloadType":"application/vnd.in-toto+json","payload":"e30=","signatures":[]}'
printf '{}' >"$WORK/empty"; E="$(push_blob "$WORK/empty")"
printf 'provenance' >"$WORK/layer"; L="$(push_blob "$WORK/layer")"
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","artifactType":"application/vnd.in-toto+json","config":{"mediaType":"application/vnd.oci.empty.v1+json","size":2,"digest":"%s"},"layers":[{"mediaType":"application/octet-stream","size":10,"digest":"%s"}],"subject":{"mediaType":"application/vnd.oci.image.index.v1+json","size":%s,"digest":"%s"}}' \
  "$E" "$L" "$SUBJECT_SIZE" "$SUBJECT" >"$WORK/art"
ART="sha256:$(sha256sum "$WORK/art" | cut -d' ' -f1)"
put_manifest "$ART" application/vnd.oci.image.manifest.v1+json "$WORK/art"
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","size":%s,"digest":"%s","artifactType":"application/vnd.in-toto+json"}]}' \
  "$(size "$WORK/art")" "$ART" >"$WORK/fallback"
put_manifest "$TAG" application/vnd.oci.image.index.v1+json "$WORK/fallback"

# --- counting ---
lines() { wc -l <"$1"; }
count_since() { # METHOD-REGEX, source offset, mirror offset
  (tail -n +"$(($2 + 1))" "$WORK/source.log"; tail -n +"$(($3 + 1))" "$WORK/mirror.log") | grep -cE "\"($1) /v2/" || true
}
record() { # WORKLOAD METRIC VALUE
  [ -n "${BENCH_RESULTS:-}" ] || return 0
  printf 'm\t%s\timagesync\t%s\tcount\t%s\n' "$1" "$2" "$3" >>"$BENCH_RESULTS"
}
note() {
  [ -n "${BENCH_RESULTS:-}" ] || return 0
  printf 'note\t%s\t%s\n' "$1" "$2" >>"$BENCH_RESULTS"
}
measure() { # WORKLOAD PER command... : runs it, prints and records requests / PER
  local w="$1" per="$2"; shift 2
  sleep 0.3
  local s0 d0 all heads gets puts
  s0="$(lines "$WORK/source.log")"; d0="$(lines "$WORK/mirror.log")"
  "$@" >"$WORK/out" 2>&1 || { cat "$WORK/out" >&2; exit 1; }
  sleep 0.5 # the access log is written after each response
  all="$(count_since 'GET|HEAD|PUT|POST|PATCH|DELETE' "$s0" "$d0")"
  heads="$(count_since HEAD "$s0" "$d0")"; gets="$(count_since GET "$s0" "$d0")"
  puts="$(count_since 'PUT|POST|PATCH' "$s0" "$d0")"
  printf '%-45s requests %6.2f  HEAD %6.2f  GET %6.2f  writes %6.2f\n' "$w" \
    "$(echo "$all / $per" | bc -l)" "$(echo "$heads / $per" | bc -l)" "$(echo "$gets / $per" | bc -l)" "$(echo "$puts / $per" | bc -l)"
  record "$w" "requests" "$(echo "$all / $per" | bc -l)"
  record "$w" "HEAD" "$(echo "$heads / $per" | bc -l)"
  record "$w" "GET" "$(echo "$gets / $per" | bc -l)"
}

note "referrers on: cold copy" "\`imagesync copy\` of a 2-platform image with a cosign .sig and .att tag and one attestation in its sha256-<hex> fallback index (distribution 2.8, no referrers API) into a fresh repository; requests in both registries' access logs. Referrers off: the same with --no-referrers."
note "referrers on: no-op re-copy" "\`imagesync copy\` again into the same repository. The CLI keeps no record between runs, so with referrers on it reads every referrer attachment of the index and both children at the source (fallback tags, cosign tags, referrers of referrers) and HEADs each at the mirror; nothing is written. The controller and Terraform keep the probe in status or state instead (the plan row)."
note "referrers on: terraform plan ($N resources)" "\`terraform plan\` of $N resources in sync, referrers = true (the default): 2 HEADs per resource plus the referrers probe (2 HEADs: the source's sha256-<hex> fallback tag and its .sig tag, compared with what state recorded). Referrers off: referrers = false."

copy() { "$IMAGESYNC" --insecure-registry "$SRC" --insecure-registry "$DST" --no-progress copy "$@"; }
echo "referrers-bench: source $SRC, mirror $DST, $RUNS runs, plan of $N resources"
for run in $(seq "$RUNS"); do
  measure "referrers off: cold copy" 1 copy --no-referrers "$SRC/bench/app:v1" "$DST/off$run/app:v1"
  measure "referrers on: cold copy" 1 copy "$SRC/bench/app:v1" "$DST/on$run/app:v1"
  measure "referrers off: no-op re-copy" 1 copy --no-referrers "$SRC/bench/app:v1" "$DST/off$run/app:v1"
  measure "referrers on: no-op re-copy" 1 copy "$SRC/bench/app:v1" "$DST/on$run/app:v1"
done

# --- terraform plan ---
MIRROR="$WORK/tfmirror/registry.terraform.io/imagesync/imagesync/0.1.0/linux_amd64"
mkdir -p "$MIRROR"
ln -s "$PROVIDER" "$MIRROR/terraform-provider-imagesync_v0.1.0"
printf 'provider_installation {\n  filesystem_mirror {\n    path    = "%s"\n    include = ["imagesync/imagesync"]\n  }\n}\n' \
  "$WORK/tfmirror" >"$WORK/terraformrc"
export TF_CLI_CONFIG_FILE="$WORK/terraformrc" CHECKPOINT_DISABLE=1 TF_IN_AUTOMATION=1
for mode in true false; do
  mkdir -p "$WORK/tf-$mode"
  cat >"$WORK/tf-$mode/main.tf" <<HCL
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
  destination = "$DST/tf-$mode/app\${count.index}:v1"
  referrers   = $mode
}
HCL
  (cd "$WORK/tf-$mode" && "$TERRAFORM" init -input=false -no-color >/dev/null 2>&1 &&
    "$TERRAFORM" apply -auto-approve -input=false -no-color >"$WORK/apply.out" 2>&1) ||
    { cat "$WORK/apply.out" >&2; exit 1; }
done
plan() { (cd "$WORK/tf-$1" && "$TERRAFORM" plan -detailed-exitcode -input=false -no-color); }
for run in $(seq "$RUNS"); do
  measure "referrers off: terraform plan ($N resources)" "$N" plan false
  measure "referrers on: terraform plan ($N resources)" "$N" plan true
done
