#!/usr/bin/env bash
# Benchmark (not a test): `imagesync copy` against `skopeo copy --all` and a raw parallel
# `curl` GET|PUT of every blob, in one run, on two local docker-registry instances.
#
#   cold copy   a 2-platform image of random layers (~200 MB) into a fresh repository
#   same-reg    the same image into another repository of the source registry (mounts)
#   no-op       re-copy to a destination that already has the image
#   peak RSS    copying a single 1 GiB layer image (/usr/bin/time -v)
#
# Prints medians of RUNS runs and ratios. Targets (issue 2): cold copy within 1.1x of curl
# and faster than skopeo; no-op under 50 ms; peak RSS not above skopeo's.
#
# Environment: RUNS (default 5), LAYER_MB (default 25: 2 platforms x 4 layers), BIG_MB
# (default 1024), JOBS (default 4), SKIP_BUILD=1 to use an existing release binary.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../../.." && pwd)"
RUNS="${RUNS:-5}"
LAYER_MB="${LAYER_MB:-25}"
BIG_MB="${BIG_MB:-1024}"
JOBS="${JOBS:-4}"
LAYERS_PER_PLATFORM=4

need=()
command -v docker-registry >/dev/null || need+=(docker-registry)
command -v skopeo >/dev/null || need+=(skopeo)
command -v curl >/dev/null || need+=(curl)
command -v jq >/dev/null || need+=(jq)
[ -x /usr/bin/time ] || need+=(time)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

if [ -z "${SKIP_BUILD:-}" ]; then
  (cd "$ROOT" && cargo build --release -p imagesync-cli >&2)
fi
IMAGESYNC="$ROOT/target/release/imagesync"
[ -x "$IMAGESYNC" ] || { echo "missing $IMAGESYNC" >&2; exit 1; }

WORK="$(mktemp -d /tmp/imagesync-bench.XXXXXX)"
stop_registry() { # NAME: kill it and drop its data
  if [ -f "$WORK/$1/pid" ]; then kill "$(cat "$WORK/$1/pid")" 2>/dev/null || true; fi
  rm -rf "$WORK/$1"
}
cleanup() {
  local d
  for d in "$WORK"/*/; do [ -f "$d/pid" ] && stop_registry "$(basename "$d")"; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start_registry() { # NAME -> prints host:port
  local name="$1" port
  port="$(free_port)"
  mkdir -p "$WORK/$name/data"
  cat >"$WORK/$name/config.yml" <<YML
version: 0.1
log: {level: error, accesslog: {disabled: true}}
storage:
  filesystem: {rootdirectory: $WORK/$name/data}
  delete: {enabled: true}
  maintenance: {uploadpurging: {enabled: false}}
http: {addr: 127.0.0.1:$port, secret: bench}
YML
  docker-registry serve "$WORK/$name/config.yml" >"$WORK/$name/log" 2>&1 &
  echo $! >"$WORK/$name/pid"
  for _ in $(seq 100); do
    curl -fs "http://127.0.0.1:$port/v2/" >/dev/null && { echo "127.0.0.1:$port"; return; }
    sleep 0.1
  done
  echo "registry $name did not start" >&2; exit 1
}

A="$(start_registry a)"
echo "source registry: $A" >&2

# --- fixtures (raw HTTP) ---
push_blob() { # REGISTRY REPO FILE -> prints digest
  local reg="$1" repo="$2" file="$3" digest loc
  digest="sha256:$(sha256sum "$file" | cut -d' ' -f1)"
  loc="$(curl -fsS -X POST -D - -o /dev/null -H 'Content-Length: 0' "http://$reg/v2/$repo/blobs/uploads/" |
    tr -d '\r' | awk -F': ' 'tolower($1)=="location"{print $2}')"
  case "$loc" in http*) ;; *) loc="http://$reg$loc" ;; esac
  case "$loc" in *\?*) loc="$loc&digest=$digest" ;; *) loc="$loc?digest=$digest" ;; esac
  curl -fsS -X PUT -H 'Expect:' -H 'Content-Type: application/octet-stream' -T "$file" "$loc" -o /dev/null
  echo "$digest"
}
put_manifest() { # REGISTRY REPO REF MEDIATYPE FILE
  curl -fsS -X PUT -H "Content-Type: $4" --data-binary "@$5" "http://$1/v2/$2/manifests/$3" -o /dev/null
}
push_image() { # REGISTRY REPO REF ARCH NLAYERS LAYER_MB -> prints the manifest file
  local reg="$1" repo="$2" ref="$3" arch="$4" n="$5" mb="$6" layers="" d f i cfg
  for i in $(seq "$n"); do
    f="$WORK/layer-$arch-$i"
    head -c "$((mb * 1024 * 1024))" /dev/urandom >"$f"
    d="$(push_blob "$reg" "$repo" "$f")"
    layers="$layers{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"$d\",\"size\":$(stat -c %s "$f")},"
    rm -f "$f"
  done
  cfg="$WORK/config-$arch.json"
  printf '{"architecture":"%s","os":"linux","rootfs":{"type":"layers","diff_ids":[]},"bench":"%s"}' "$arch" "$RANDOM$RANDOM" >"$cfg"
  d="$(push_blob "$reg" "$repo" "$cfg")"
  f="$WORK/manifest-$arch.json"
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%s},"layers":[%s]}' \
    "$d" "$(stat -c %s "$cfg")" "${layers%,}" >"$f"
  if [ "$ref" = "@digest" ]; then ref="sha256:$(sha256sum "$f" | cut -d' ' -f1)"; fi
  put_manifest "$reg" "$repo" "$ref" application/vnd.oci.image.manifest.v1+json "$f"
  echo "$f"
}

echo "generating a 2-platform image: 2 x $LAYERS_PER_PLATFORM layers x $LAYER_MB MiB" >&2
entries=""
for arch in amd64 arm64; do
  m="$(push_image "$A" bench/app @digest "$arch" "$LAYERS_PER_PLATFORM" "$LAYER_MB")"
  entries="$entries{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"digest\":\"sha256:$(sha256sum "$m" | cut -d' ' -f1)\",\"size\":$(stat -c %s "$m"),\"platform\":{\"os\":\"linux\",\"architecture\":\"$arch\"}},"
done
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[%s]}' "${entries%,}" >"$WORK/index.json"
put_manifest "$A" bench/app 1 application/vnd.oci.image.index.v1+json "$WORK/index.json"
INDEX_DIGEST="sha256:$(sha256sum "$WORK/index.json" | cut -d' ' -f1)"
TOTAL_MB=$((2 * LAYERS_PER_PLATFORM * LAYER_MB))

# Every blob of the image: "digest size" lines.
ACCEPT='application/vnd.oci.image.index.v1+json,application/vnd.oci.image.manifest.v1+json'
blob_list() {
  local child
  for child in $(jq -r '.manifests[].digest' "$WORK/index.json"); do
    curl -fsS -H "Accept: $ACCEPT" "http://$A/v2/bench/app/manifests/$child" |
      jq -r '.config, .layers[] | "\(.digest) \(.size)"'
  done | sort -u
}
blob_list >"$WORK/blobs.txt"

# --- timing helpers ---
now_ms() { date +%s%3N; }
median() { sort -n | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print int((a[NR/2]+a[NR/2+1])/2)}'; }
time_ms() { # CMD... -> prints elapsed ms (fails if the command fails)
  local t0 t1
  t0="$(now_ms)"
  "$@" >/dev/null 2>"$WORK/last.err" || { cat "$WORK/last.err" >&2; return 1; }
  t1="$(now_ms)"
  echo $((t1 - t0))
}

imagesync_copy() { "$IMAGESYNC" copy "$1" "$2" --insecure-registry "$A" --insecure-registry "${1%%/*}" --insecure-registry "${2%%/*}" -j "$JOBS"; }
skopeo_copy() { skopeo copy --all --quiet --src-tls-verify=false --dest-tls-verify=false "docker://$1" "docker://$2"; }

curl_blob() { # DIGEST SIZE DESTREPO: GET from A piped into a monolithic PUT on B
  local digest="$1" size="$2" repo="$3" loc
  loc="$(curl -fsS -X POST -D - -o /dev/null -H 'Content-Length: 0' "http://$B/v2/$repo/blobs/uploads/" |
    tr -d '\r' | awk -F': ' 'tolower($1)=="location"{print $2}')"
  case "$loc" in http*) ;; *) loc="http://$B$loc" ;; esac
  case "$loc" in *\?*) loc="$loc&digest=$digest" ;; *) loc="$loc?digest=$digest" ;; esac
  curl -fsS "http://$A/v2/bench/app/blobs/$digest" |
    curl -fsS -X PUT -H 'Expect:' -H 'Transfer-Encoding:' -H 'Content-Type: application/octet-stream' -H "Content-Length: $size" -T - "$loc" -o /dev/null
}
export -f curl_blob
curl_copy() { # DESTREPO: every blob in parallel, then the manifests (the floor, no checks)
  local repo="$1" child
  A="$A" B="$B" xargs -P "$JOBS" -L 1 bash -c 'curl_blob "$0" "$1" '"$repo" <"$WORK/blobs.txt"
  for child in $(jq -r '.manifests[].digest' "$WORK/index.json"); do
    curl -fsS -H "Accept: $ACCEPT" "http://$A/v2/bench/app/manifests/$child" -o "$WORK/child.json"
    put_manifest "$B" "$repo" "$child" application/vnd.oci.image.manifest.v1+json "$WORK/child.json"
  done
  put_manifest "$B" "$repo" 1 application/vnd.oci.image.index.v1+json "$WORK/index.json"
}

# Each cold copy goes to a fresh destination registry, so no tool can reuse blobs from an
# earlier run (skopeo's blob-info cache would otherwise mount them from another repo).
echo "running $RUNS rounds (tools interleaved per round, fresh destinations)" >&2
: >"$WORK/t.is" ; : >"$WORK/t.sk" ; : >"$WORK/t.curl"
: >"$WORK/t.same.is" ; : >"$WORK/t.same.sk" ; : >"$WORK/t.noop.is" ; : >"$WORK/t.noop.sk"
for i in $(seq "$RUNS"); do
  B="$(start_registry "curl-$i")"; export A B
  time_ms curl_copy bench/app >>"$WORK/t.curl"
  stop_registry "curl-$i"
  B="$(start_registry "is-$i")"
  time_ms imagesync_copy "$A/bench/app:1" "$B/bench/app:1" >>"$WORK/t.is"
  time_ms imagesync_copy "$A/bench/app:1" "$B/bench/app:1" >>"$WORK/t.noop.is"
  got="$("$IMAGESYNC" digest "$B/bench/app:1" --insecure-registry "$B")"
  [ "$got" = "$INDEX_DIGEST" ] || { echo "imagesync copy has digest $got, want $INDEX_DIGEST" >&2; exit 1; }
  stop_registry "is-$i"
  B="$(start_registry "sk-$i")"
  time_ms skopeo_copy "$A/bench/app:1" "$B/bench/app:1" >>"$WORK/t.sk"
  time_ms skopeo_copy "$A/bench/app:1" "$B/bench/app:1" >>"$WORK/t.noop.sk"
  stop_registry "sk-$i"
  time_ms imagesync_copy "$A/bench/app:1" "$A/bench/same-is-$i:1" >>"$WORK/t.same.is"
  time_ms skopeo_copy "$A/bench/app:1" "$A/bench/same-sk-$i:1" >>"$WORK/t.same.sk"
  echo "  round $i done" >&2
done

m_is="$(median <"$WORK/t.is")"; m_sk="$(median <"$WORK/t.sk")"; m_curl="$(median <"$WORK/t.curl")"
m_same_is="$(median <"$WORK/t.same.is")"; m_same_sk="$(median <"$WORK/t.same.sk")"
m_noop_is="$(median <"$WORK/t.noop.is")"; m_noop_sk="$(median <"$WORK/t.noop.sk")"
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) print "n/a"; else printf "%.2fx", a / b }'; }

# --- peak RSS on a 1 GiB layer ---
echo "peak RSS: generating a single-layer image with a $BIG_MB MiB layer" >&2
push_image "$A" bench/big 1 amd64 1 "$BIG_MB" >/dev/null
rss() { # CMD... -> max RSS in KiB
  /usr/bin/time -v "$@" 2>"$WORK/time.txt" >/dev/null || { cat "$WORK/time.txt" >&2; return 1; }
  awk -F': ' '/Maximum resident set size/ {print $2}' "$WORK/time.txt"
}
B="$(start_registry big-is)"
rss_is="$(rss "$IMAGESYNC" copy "$A/bench/big:1" "$B/bench/big:1" --insecure-registry "$A" --insecure-registry "$B" -j "$JOBS")"
stop_registry big-is
B="$(start_registry big-sk)"
rss_sk="$(rss skopeo copy --all --quiet --src-tls-verify=false --dest-tls-verify=false "docker://$A/bench/big:1" "docker://$B/bench/big:1")"
stop_registry big-sk

cat <<REPORT

imagesync bench: ${TOTAL_MB} MiB 2-platform image, $RUNS runs, medians, -j $JOBS
  $(nproc) CPUs, skopeo $(skopeo --version | awk '{print $3}'), $(docker-registry --version 2>/dev/null | awk '{print $NF}' || true)

  cold copy (A -> B)       imagesync ${m_is} ms   skopeo ${m_sk} ms   curl ${m_curl} ms
                           imagesync/curl $(ratio "$m_is" "$m_curl")   imagesync/skopeo $(ratio "$m_is" "$m_sk")
  same-registry (mount)    imagesync ${m_same_is} ms   skopeo ${m_same_sk} ms   imagesync/skopeo $(ratio "$m_same_is" "$m_same_sk")
  no-op re-copy            imagesync ${m_noop_is} ms   skopeo ${m_noop_sk} ms   imagesync/skopeo $(ratio "$m_noop_is" "$m_noop_sk")
  peak RSS, ${BIG_MB} MiB layer  imagesync $((rss_is / 1024)) MiB   skopeo $((rss_sk / 1024)) MiB   imagesync/skopeo $(ratio "$rss_is" "$rss_sk")

  raw samples (ms): imagesync [$(paste -sd' ' "$WORK/t.is")] skopeo [$(paste -sd' ' "$WORK/t.sk")] curl [$(paste -sd' ' "$WORK/t.curl")]
                    no-op imagesync [$(paste -sd' ' "$WORK/t.noop.is")] skopeo [$(paste -sd' ' "$WORK/t.noop.sk")]

  targets: cold <= 1.1x curl and < skopeo; no-op < 50 ms; peak RSS <= skopeo
REPORT
