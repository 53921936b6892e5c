#!/usr/bin/env bash
# Benchmark (not a test): `imagesync copy` against `skopeo copy --all` and the raw limit
# (parallel `curl` GET|PUT of the same blobs), in one run, on local docker-registry
# instances. Tools are interleaved in every repetition.
#
#   cold copy        a 2-platform image of random layers (~200 MiB) into a fresh registry
#   same-registry    the same image into another repository of the source registry (mounts)
#   no-op re-copy    re-copy to a destination that already has the image
#   50 images        50 images sharing a 100 MiB base layer (plus 1 MiB of their own) into
#                    50 repositories of a fresh registry, one copy after the other; bytes
#                    uploaded counted by a TCP proxy in front of the destination
#   1 GiB layer      a single-layer image with a 1 GiB layer (peak RSS)
#   WAN              the cold copy, no-op, shared-base images and a big layer again over a
#                    modelled far, slow link (bench/wan.sh; WAN=0 skips them)
#
# Every command runs under GNU time: wall time, CPU (user+sys) and peak RSS. Samples are
# appended to $BENCH_RESULTS (tab-separated, read by `bench-report`, see bench/run.sh);
# without it they go to a scratch file and the medians are printed.
#
# Environment: RUNS (default 3), LAYER_MB (default 25: 2 platforms x 4 layers), BASE_MB
# (default 100), IMAGES (default 50), BIG_MB (default 1024), JOBS (default 4),
# SKIP_BUILD=1 to use an existing release binary, IMAGESYNC_BIN another imagesync binary.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
RUNS="${RUNS:-3}"
LAYER_MB="${LAYER_MB:-25}"
BASE_MB="${BASE_MB:-100}"
IMAGES="${IMAGES:-50}"
OWN_KB="${OWN_KB:-1024}"
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
  (cd "$ROOT" && cargo build --release -p imagesync-cli -p imagesync-bench >&2)
fi
IMAGESYNC="${IMAGESYNC_BIN:-$ROOT/target/release/imagesync}"
[ -x "$IMAGESYNC" ] || { echo "missing $IMAGESYNC" >&2; exit 1; }

WORK="$(mktemp -d /tmp/imagesync-bench.XXXXXX)"
RESULTS="${BENCH_RESULTS:-$WORK/results.tsv}"
stop_registry() { # NAME: kill it and drop its data
  if [ -f "$WORK/$1/pid" ]; then
    kill "$(cat "$WORK/$1/pid")" 2>/dev/null || true
    wait "$(cat "$WORK/$1/pid")" 2>/dev/null || true
  fi
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

start_registry() { # NAME [tls] -> prints host:port (tls: HTTPS with $TLS/chain.pem, wan.sh)
  local name="$1" port tls="" probe=(curl -fs "http://127.0.0.1")
  port="$(free_port)"
  mkdir -p "$WORK/$name/data"
  if [ "${2:-}" = tls ]; then
    tls=", tls: {certificate: $TLS/chain.pem, key: $TLS/key.pem}"
    probe=(curl -fs --cacert "$TLS/ca.pem" "https://127.0.0.1")
  fi
  cat >"$WORK/$name/config.yml" <<YML
version: 0.1
log: {level: error, accesslog: {disabled: true}}
storage:
  filesystem: {rootdirectory: $WORK/$name/data}
  delete: {enabled: true}
  maintenance: {uploadpurging: {enabled: false}}
http: {addr: 127.0.0.1:$port, secret: bench$tls}
YML
  docker-registry serve "$WORK/$name/config.yml" >"$WORK/$name/log" 2>&1 &
  echo $! >"$WORK/$name/pid"
  for _ in $(seq 100); do
    "${probe[@]}:$port/v2/" >/dev/null && { echo "127.0.0.1:$port"; return; }
    sleep 0.1
  done
  echo "registry $name did not start" >&2; exit 1
}

# A byte-counting TCP proxy in front of a registry (bench/countproxy.py).
start_proxy() { # NAME UPSTREAM -> prints host:port
  local name="$1" port
  port="$(free_port)"
  mkdir -p "$WORK/$name"
  python3 "$ROOT/bench/countproxy.py" "$port" "$2" "$WORK/$name/bytes" "$WORK/$name/pid" \
    >"$WORK/$name/log" 2>&1 &
  for _ in $(seq 100); do
    [ -f "$WORK/$name/pid" ] && curl -fs "http://127.0.0.1:$port/v2/" >/dev/null && { echo "127.0.0.1:$port"; return; }
    sleep 0.1
  done
  echo "proxy $name did not start" >&2; cat "$WORK/$name/log" >&2; exit 1
}
stop_proxy() { # NAME -> prints the bytes clients sent through it
  local pid
  pid="$(cat "$WORK/$1/pid")"
  kill -TERM "$pid"
  for _ in $(seq 100); do [ -f "$WORK/$1/bytes" ] && break; sleep 0.1; done
  cat "$WORK/$1/bytes"
  rm -rf "${WORK:?}/$1"
}

record() { # WORKLOAD TOOL METRIC UNIT VALUE
  printf 'm\t%s\t%s\t%s\t%s\t%s\n' "$@" >>"$RESULTS"
}
note() { # WORKLOAD TEXT
  printf 'note\t%s\t%s\n' "$1" "$2" >>"$RESULTS"
}

# timed CMD...: runs CMD once under GNU time (output dropped); sets WALL (seconds) and
# leaves "user sys peak-KiB" in $WORK/time.out. Fails with the command's stderr.
timed() {
  local t0 t1
  t0="$(date +%s%N)"
  # Through bash so that the exported shell functions below can be measured too.
  /usr/bin/time -f '%U %S %M' -o "$WORK/time.out" bash -c '"$@"' bash "$@" >/dev/null 2>"$WORK/last.err" || {
    echo "failed: $*" >&2; cat "$WORK/last.err" "$WORK/time.out" >&2; return 1; }
  t1="$(date +%s%N)"
  WALL="$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.4f", (b - a) / 1e9 }')"
}

# measure WORKLOAD TOOL CMD...: runs CMD once (timed); records wall time, CPU (user+sys,
# children included) and peak RSS (largest single process).
measure() {
  local w="$1" t="$2" u s k
  shift 2
  timed "$@" || return 1
  read -r u s k <"$WORK/time.out"
  record "$w" "$t" "wall time" s "$WALL"
  record "$w" "$t" "CPU (user+sys)" s "$(awk -v u="$u" -v s="$s" 'BEGIN { printf "%.2f", u + s }')"
  record "$w" "$t" "peak RSS" MiB "$(awk -v k="$k" 'BEGIN { printf "%.1f", k / 1024 }')"
}

A="$(start_registry a)"
echo "source registry: $A" >&2

# --- fixtures (raw HTTP) ---
# Layers are real gzip streams (stored blocks of random bytes, quick to make): with bytes
# that do not match the gzip media type skopeo rewrites the manifests, changing digests.
random_gzip() { # FILE KIB
  python3 - "$1" "$2" <<'PY'
import os, sys, zlib
out, left = open(sys.argv[1], "wb"), int(sys.argv[2]) * 1024
z = zlib.compressobj(0, zlib.DEFLATED, 31)
while left > 0:
    n = min(left, 1 << 20)
    out.write(z.compress(os.urandom(n)))
    left -= n
out.write(z.flush())
PY
}
upload_url() { # REGISTRY REPO DIGEST -> prints the monolithic-PUT URL of a new upload
  local loc
  loc="$(curl -fsS -X POST -D - -o /dev/null -H 'Content-Length: 0' "http://$1/v2/$2/blobs/uploads/" |
    tr -d '\r' | awk -F': ' 'tolower($1)=="location"{print $2}')"
  case "$loc" in http*) ;; *) loc="http://$1$loc" ;; esac
  case "$loc" in *\?*) echo "$loc&digest=$3" ;; *) echo "$loc?digest=$3" ;; esac
}
push_blob() { # REGISTRY REPO FILE -> prints digest
  local digest
  digest="sha256:$(sha256sum "$3" | cut -d' ' -f1)"
  curl -fsS -X PUT -H 'Expect:' -H 'Content-Type: application/octet-stream' -T "$3" \
    "$(upload_url "$1" "$2" "$digest")" -o /dev/null
  echo "$digest"
}
mount_blob() { # REGISTRY REPO DIGEST FROM: cross-repository mount (201) or fail
  local code
  code="$(curl -sS -o /dev/null -w '%{http_code}' -X POST -H 'Content-Length: 0' \
    "http://$1/v2/$2/blobs/uploads/?mount=$3&from=$4")"
  [ "$code" = 201 ] || { echo "mount of $3 into $2 gave $code" >&2; return 1; }
}
put_manifest() { # REGISTRY REPO REF MEDIATYPE FILE
  curl -fsS -X PUT -H "Content-Type: $4" --data-binary "@$5" "http://$1/v2/$2/manifests/$3" -o /dev/null
}
layer_json() { # DIGEST SIZE
  printf '{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"%s","size":%s}' "$1" "$2"
}
write_manifest() { # OUT CONFIGFILE CONFIGDIGEST LAYERJSON...
  local out="$1" cfg="$2" cd="$3" layers
  shift 3
  layers="$(IFS=,; echo "$*")"
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%s},"layers":[%s]}' \
    "$cd" "$(stat -c %s "$cfg")" "$layers" >"$out"
}
push_image() { # REGISTRY REPO REF ARCH NLAYERS LAYER_MB -> prints the manifest file
  local reg="$1" repo="$2" ref="$3" arch="$4" n="$5" mb="$6" layers=() d f i cfg
  for i in $(seq "$n"); do
    f="$WORK/layer-$arch-$i"
    random_gzip "$f" "$((mb * 1024))"
    d="$(push_blob "$reg" "$repo" "$f")"
    layers+=("$(layer_json "$d" "$(stat -c %s "$f")")")
    rm -f "$f"
  done
  cfg="$WORK/config-${repo//\//-}-$arch.json"
  printf '{"architecture":"%s","os":"linux","rootfs":{"type":"layers","diff_ids":[]},"bench":"%s"}' "$arch" "$RANDOM$RANDOM" >"$cfg"
  d="$(push_blob "$reg" "$repo" "$cfg")"
  f="$WORK/manifest-$arch.json"
  write_manifest "$f" "$cfg" "$d" "${layers[@]}"
  if [ "$ref" = "@digest" ]; then ref="sha256:$(sha256sum "$f" | cut -d' ' -f1)"; fi
  put_manifest "$reg" "$repo" "$ref" application/vnd.oci.image.manifest.v1+json "$f"
  echo "$f"
}

echo "generating a 2-platform image: 2 x $LAYERS_PER_PLATFORM layers x $LAYER_MB MiB" >&2
entries=""
for arch in amd64 arm64; do
  m="$(push_image "$A" bench/app @digest "$arch" "$LAYERS_PER_PLATFORM" "$LAYER_MB")"
  entries="$entries{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"digest\":\"sha256:$(sha256sum "$m" | cut -d' ' -f1)\",\"size\":$(stat -c %s "$m"),\"platform\":{\"os\":\"linux\",\"architecture\":\"$arch\"}},"
  cp "$m" "$WORK/child-$arch.json"
done
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[%s]}' "${entries%,}" >"$WORK/index.json"
put_manifest "$A" bench/app 1 application/vnd.oci.image.index.v1+json "$WORK/index.json"
INDEX_DIGEST="sha256:$(sha256sum "$WORK/index.json" | cut -d' ' -f1)"
TOTAL_MB=$((2 * LAYERS_PER_PLATFORM * LAYER_MB))

# Every blob of the image: "digest size" lines.
ACCEPT='application/vnd.oci.image.index.v1+json,application/vnd.oci.image.manifest.v1+json'
for arch in amd64 arm64; do
  jq -r '.config, .layers[] | "\(.digest) \(.size)"' "$WORK/child-$arch.json"
done | sort -u >"$WORK/blobs.txt"

echo "generating $IMAGES images sharing a $BASE_MB MiB base layer (+ $OWN_KB KiB each)" >&2
random_gzip "$WORK/base" "$((BASE_MB * 1024))"
BASE_DIGEST="$(push_blob "$A" bench/base "$WORK/base")"
BASE_SIZE="$(stat -c %s "$WORK/base")"
rm -f "$WORK/base"
mkdir -p "$WORK/many"
for i in $(seq "$IMAGES"); do
  mount_blob "$A" "bench/img$i" "$BASE_DIGEST" bench/base
  random_gzip "$WORK/many/own" "$OWN_KB"
  own="$(push_blob "$A" "bench/img$i" "$WORK/many/own")"
  own_size="$(stat -c %s "$WORK/many/own")"
  printf '{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},"image":%s}' "$i" >"$WORK/many/config$i.json"
  cfg="$(push_blob "$A" "bench/img$i" "$WORK/many/config$i.json")"
  write_manifest "$WORK/many/manifest$i.json" "$WORK/many/config$i.json" "$cfg" \
    "$(layer_json "$BASE_DIGEST" "$BASE_SIZE")" "$(layer_json "$own" "$own_size")"
  put_manifest "$A" "bench/img$i" 1 application/vnd.oci.image.manifest.v1+json "$WORK/many/manifest$i.json"
  # "digest size" of the image's own blobs, for the raw copy.
  printf '%s %s\n%s %s\n' "$own" "$own_size" "$cfg" "$(stat -c %s "$WORK/many/config$i.json")" >"$WORK/many/blobs$i.txt"
done
rm -f "$WORK/many/own"
UNIQUE_BYTES="$BASE_SIZE"
for i in $(seq "$IMAGES"); do
  UNIQUE_BYTES=$((UNIQUE_BYTES + $(awk '{s += $2} END {print s}' "$WORK/many/blobs$i.txt") + $(stat -c %s "$WORK/many/manifest$i.json")))
done

echo "generating a single-layer image with a $BIG_MB MiB layer" >&2
push_image "$A" bench/big 1 amd64 1 "$BIG_MB" >/dev/null
cp "$WORK/manifest-amd64.json" "$WORK/big-manifest.json"
jq -r '.config, .layers[] | "\(.digest) \(.size)"' "$WORK/big-manifest.json" >"$WORK/big-blobs.txt"

# --- the tools ---
# The blob-location file is the run's own: what earlier runs left in the user's cache (for
# registries long gone) neither helps nor slows this one.
imagesync_copy() { "$IMAGESYNC" copy "$1" "$2" --no-progress --insecure-registry "${1%%/*}" --insecure-registry "${2%%/*}" -j "$JOBS" --blob-cache "$WORK/blobs.json"; }
imagesync_copy_image_only() { "$IMAGESYNC" copy "$1" "$2" --no-referrers --no-progress --insecure-registry "${1%%/*}" --insecure-registry "${2%%/*}" -j "$JOBS" --blob-cache "$WORK/blobs.json"; }
skopeo_copy() { skopeo copy --all --quiet --src-tls-verify=false --dest-tls-verify=false "docker://$1" "docker://$2"; }
export IMAGESYNC JOBS WORK ACCEPT
export -f imagesync_copy imagesync_copy_image_only skopeo_copy upload_url put_manifest mount_blob

# The raw limit: what a copy must at least do, with no checks.
curl_blob() { # SRCREG SRCREPO DIGEST SIZE DSTREG DSTREPO: GET piped into a monolithic PUT
  curl -fsS "http://$1/v2/$2/blobs/$3" |
    curl -fsS -X PUT -H 'Expect:' -H 'Transfer-Encoding:' -H 'Content-Type: application/octet-stream' \
      -H "Content-Length: $4" -T - "$(upload_url "$5" "$6" "$3")" -o /dev/null
}
curl_copy() { # SRCREG SRCREPO DSTREG DSTREPO: the 2-platform image, blobs in parallel
  local a="$1" ar="$2" b="$3" br="$4" arch
  xargs -P "$JOBS" -L 1 bash -c 'curl_blob "$0" "$1" "$2" "$3" "$4" "$5"' "$a" "$ar" < <(
    awk -v b="$b" -v r="$br" '{print $1, $2, b, r}' "$WORK/blobs.txt")
  for arch in amd64 arm64; do
    put_manifest "$b" "$br" "sha256:$(sha256sum "$WORK/child-$arch.json" | cut -d' ' -f1)" \
      application/vnd.oci.image.manifest.v1+json "$WORK/child-$arch.json"
  done
  put_manifest "$b" "$br" 1 application/vnd.oci.image.index.v1+json "$WORK/index.json"
}
curl_mount_copy() { # REG SRCREPO DSTREPO: same registry, every blob mounted in parallel
  local a="$1" arch
  awk '{print $1}' "$WORK/blobs.txt" | xargs -P "$JOBS" -I{} bash -c 'mount_blob "$0" "$1" {} "$2"' "$a" "$3" "$2"
  for arch in amd64 arm64; do
    put_manifest "$a" "$3" "sha256:$(sha256sum "$WORK/child-$arch.json" | cut -d' ' -f1)" \
      application/vnd.oci.image.manifest.v1+json "$WORK/child-$arch.json"
  done
  put_manifest "$a" "$3" 1 application/vnd.oci.image.index.v1+json "$WORK/index.json"
}
curl_noop() { # SRC DST (registry/repo:tag): the two HEADs a no-op needs
  local s="$1" d="$2"
  curl -fsS -I -H "Accept: $ACCEPT" "http://${s%%/*}/v2/$(echo "${s#*/}" | sed 's/:/\/manifests\//')" -o /dev/null
  curl -fsS -I -H "Accept: $ACCEPT" "http://${d%%/*}/v2/$(echo "${d#*/}" | sed 's/:/\/manifests\//')" -o /dev/null
}
curl_one_image() { # SRCREG DSTREG I: image I's own blobs and its manifest; the base is mounted
  local a="$1" b="$2" i="$3"
  if [ "$i" != 1 ]; then mount_blob "$b" "mirror/img$i" "$BASE_DIGEST" mirror/img1; fi
  while read -r d s; do curl_blob "$a" "bench/img$i" "$d" "$s" "$b" "mirror/img$i"; done <"$WORK/many/blobs$i.txt"
  put_manifest "$b" "mirror/img$i" 1 application/vnd.oci.image.manifest.v1+json "$WORK/many/manifest$i.json"
}
curl_many() { # SRCREG DSTREG: the base once, then every image in parallel
  curl_blob "$1" bench/img1 "$BASE_DIGEST" "$BASE_SIZE" "$2" mirror/img1
  seq "$IMAGES" | xargs -P "$JOBS" -I{} bash -c 'curl_one_image "$0" "$1" {}' "$1" "$2"
}
tool_many() { # TOOLFUNC SRCREG DSTREG: the images one after the other
  local i
  for i in $(seq "$IMAGES"); do "$1" "$2/bench/img$i:1" "$3/mirror/img$i:1"; done
}
curl_big() { # SRCREG DSTREG
  xargs -P "$JOBS" -L 1 bash -c 'curl_blob "$0" bench/big "$1" "$2" "$3" bench/big' "$1" < <(
    awk -v b="$2" '{print $1, $2, b}' "$WORK/big-blobs.txt")
  put_manifest "$2" bench/big 1 application/vnd.oci.image.manifest.v1+json "$WORK/big-manifest.json"
}
export BASE_DIGEST BASE_SIZE IMAGES
export -f curl_blob curl_copy curl_mount_copy curl_noop curl_one_image curl_many tool_many curl_big

check_digest() { # REF WANT WHO [CA_FILE: the registry serves TLS]
  local got trust=(--insecure-registry "${1%%/*}")
  [ -n "${4:-}" ] && trust=(--ca-file "$4")
  got="$("$IMAGESYNC" digest "$1" "${trust[@]}")"
  [ "$got" = "$2" ] || { echo "$3: $1 has digest $got, want $2" >&2; exit 1; }
}

COLD="cold copy"; SAME="same-registry copy"; NOOP="no-op re-copy"
MANY="$IMAGES images, shared base"; BIG="${BIG_MB} MiB layer"
note "$COLD" "A 2-platform index, 2 x $LAYERS_PER_PLATFORM random layers of $LAYER_MB MiB ($TOTAL_MB MiB), into a fresh registry per tool and repetition. Raw limit: every blob GET piped into a monolithic PUT, $JOBS in parallel, then the manifests."
note "$SAME" "The same image into a new repository of the source registry. Raw limit: a cross-repository mount POST per blob, $JOBS in parallel, then the manifests."
note "$NOOP" "Re-copy to the destination of the cold copy, which already has the image. Raw limit: one HEAD of the source tag and one of the destination tag."
note "$MANY" "$IMAGES single-platform images in $IMAGES repositories sharing one $BASE_MB MiB base layer, each with a $OWN_KB KiB layer and a config of its own, copied one after the other into $IMAGES repositories of a fresh registry. *uploaded* is what the client sent to the destination (a byte-counting proxy in front of it, headers included). Unique bytes (blobs and manifests): $(awk -v b="$UNIQUE_BYTES" 'BEGIN { printf "%.1f", b / 1048576 }') MiB. Raw limit: upload the base once, mount it everywhere else, upload the rest, $JOBS images in parallel; its uploaded bytes are the unique bytes plus HTTP headers."
note "$BIG" "One image with a single $BIG_MB MiB layer into a fresh registry. Peak RSS is the largest single process (for the raw limit: one curl)."

echo "running $RUNS rounds (tools interleaved per round, fresh destinations)" >&2
for i in $(seq "$RUNS"); do
  # Each cold copy goes to a fresh destination registry, so no tool can reuse blobs from an
  # earlier run (skopeo's blob-info cache would otherwise mount them from another repo).
  B="$(start_registry "raw-$i")"
  measure "$COLD" raw curl_copy "$A" bench/app "$B" bench/app
  measure "$NOOP" raw curl_noop "$A/bench/app:1" "$B/bench/app:1"
  check_digest "$B/bench/app:1" "$INDEX_DIGEST" raw
  stop_registry "raw-$i"
  B="$(start_registry "is-$i")"
  measure "$COLD" imagesync imagesync_copy "$A/bench/app:1" "$B/bench/app:1"
  measure "$NOOP" imagesync imagesync_copy "$A/bench/app:1" "$B/bench/app:1"
  check_digest "$B/bench/app:1" "$INDEX_DIGEST" imagesync
  stop_registry "is-$i"
  B="$(start_registry "sk-$i")"
  measure "$COLD" skopeo skopeo_copy "$A/bench/app:1" "$B/bench/app:1"
  measure "$NOOP" skopeo skopeo_copy "$A/bench/app:1" "$B/bench/app:1"
  check_digest "$B/bench/app:1" "$INDEX_DIGEST" skopeo
  stop_registry "sk-$i"

  measure "$SAME" raw curl_mount_copy "$A" bench/app "bench/same-raw-$i"
  measure "$SAME" imagesync imagesync_copy "$A/bench/app:1" "$A/bench/same-is-$i:1"
  measure "$SAME" skopeo skopeo_copy "$A/bench/app:1" "$A/bench/same-sk-$i:1"
  for t in raw is sk; do check_digest "$A/bench/same-$t-$i:1" "$INDEX_DIGEST" "same-registry $t"; done

  for t in raw imagesync skopeo; do
    B="$(start_registry "many-$t-$i")"
    P="$(start_proxy "proxy-$t-$i" "$B")"
    case "$t" in
      raw) measure "$MANY" raw curl_many "$A" "$P" ;;
      imagesync) measure "$MANY" imagesync tool_many imagesync_copy "$A" "$P" ;;
      skopeo) measure "$MANY" skopeo tool_many skopeo_copy "$A" "$P" ;;
    esac
    bytes="$(stop_proxy "proxy-$t-$i")"
    record "$MANY" "$t" uploaded MiB "$(awk -v b="$bytes" 'BEGIN { printf "%.1f", b / 1048576 }')"
    check_digest "$B/mirror/img$IMAGES:1" "sha256:$(sha256sum "$WORK/many/manifest$IMAGES.json" | cut -d' ' -f1)" "$IMAGES images $t"
    stop_registry "many-$t-$i"
  done

  for t in raw imagesync skopeo; do
    B="$(start_registry "big-$t-$i")"
    case "$t" in
      raw) measure "$BIG" raw curl_big "$A" "$B" ;;
      imagesync) measure "$BIG" imagesync imagesync_copy "$A/bench/big:1" "$B/bench/big:1" ;;
      skopeo) measure "$BIG" skopeo skopeo_copy "$A/bench/big:1" "$B/bench/big:1" ;;
    esac
    stop_registry "big-$t-$i"
  done
  echo "  round $i of $RUNS done" >&2
done

if [ "${WAN:-1}" != 0 ]; then
  # shellcheck source=bench/wan.sh
  . "$ROOT/bench/wan.sh"
fi

if [ -z "${BENCH_RESULTS:-}" ]; then
  echo
  echo "medians of $RUNS runs ($(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)):"
  awk -F'\t' '$1 == "m" { k = $2 " | " $4 " | " $3; v[k] = v[k] " " $6; u[k] = $5; if (!(k in seen)) { seen[k] = 1; order[++n] = k } }
    END { for (i = 1; i <= n; i++) { k = order[i]; c = split(substr(v[k], 2), a, " ");
      for (x = 1; x <= c; x++) for (y = x + 1; y <= c; y++) if (a[y] + 0 < a[x] + 0) { t = a[x]; a[x] = a[y]; a[y] = t }
      m = (c % 2) ? a[(c + 1) / 2] : (a[c / 2] + a[c / 2 + 1]) / 2; printf "  %-60s %10.3f %s\n", k, m, u[k] } }' "$RESULTS"
fi
