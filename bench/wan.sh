# The WAN workloads of bench/bench.sh (sourced by it, after the loopback rounds; not run on
# its own). Every tool copies through `bench-link` (bench/src/link.rs), a user-space model
# of a far, slow link on loopback: a delay per direction (half the RTT each way, one RTT for
# each new connection's handshake) and a rate cap per connection and direction.
#
#   cold copy     the 2-platform image, source and destination both behind the link (the
#                 client sits between two far registries, as a CI runner does)
#   no-op         the re-copy to that destination (and again with --no-referrers: skopeo
#                 copies no referrers, and without the probe the floor is 2 round trips)
#   N images      the first WAN_IMAGES of the shared-base images, both ends far
#   big layer     a WAN_BIG_MB single-layer image from a far source into a near registry
#                 (the mirror's own region): one stream cannot beat the per-connection cap
#   TLS           the cold copy and the no-op again at the first link of WAN_LINKS, every
#                 registry serving HTTPS with a throw-away CA made here (real registries
#                 speak TLS, and offer HTTP/2 through ALPN; WAN_TLS=0 skips them)
#
# The raw column is a computed lower bound: the bytes over the bandwidth the engine's JOBS
# parallel connections allow (a single blob uploaded in one PUT gets one connection), plus
# the round trips no client can avoid. Each workload's note says which.
#
# Environment: WAN_LINKS (default "40:100 150:20", RTT ms : Mbit/s per connection),
# WAN_RUNS (default 1), WAN_NOOP_RUNS (default 5: each no-op is measured that many times
# per round, it takes a tenth of a second), WAN_IMAGES (default 50), WAN_BIG_MB (default
# 1024), WAN_TLS, WAN=0 skips.
#
# Each no-op is also run straight against the same registries, without the link, right after
# each run over it: the difference over the RTT is the round trips the call waited for
# ("round trips beyond loopback"), whatever the process start and the registries cost.

BENCH_LINK="$ROOT/target/release/bench-link"
WAN_LINKS="${WAN_LINKS:-40:100 150:20}"
WAN_RUNS="${WAN_RUNS:-1}"
WAN_NOOP_RUNS="${WAN_NOOP_RUNS:-5}"
WAN_IMAGES="${WAN_IMAGES:-50}"
WAN_BIG_MB="${WAN_BIG_MB:-1024}"
[ -x "$BENCH_LINK" ] || { echo "missing $BENCH_LINK (cargo build --release -p imagesync-bench)" >&2; exit 1; }

start_link() { # NAME UPSTREAM RTT_MS MBIT -> prints host:port
  local name="$1"
  mkdir -p "$WORK/$name"
  "$BENCH_LINK" --upstream "$2" --rtt-ms "$3" --mbit "$4" --addr-file "$WORK/$name/addr" \
    >"$WORK/$name/log" 2>&1 &
  echo $! >"$WORK/$name/pid"
  for _ in $(seq 100); do
    [ -s "$WORK/$name/addr" ] && { cat "$WORK/$name/addr"; return; }
    sleep 0.05
  done
  echo "link $name did not start" >&2; cat "$WORK/$name/log" >&2; exit 1
}

# bound SECONDS_OF_BYTES RTTS RTT_MS -> the lower bound in seconds
bound() { awk -v b="$1" -v n="$2" -v r="$3" 'BEGIN { printf "%.4f", b + n * r / 1000 }'; }
# over BYTES MBIT CONNECTIONS -> seconds to move BYTES over CONNECTIONS capped connections
over() { awk -v b="$1" -v m="$2" -v c="$3" 'BEGIN { printf "%.6f", b * 8 / (m * 1e6 * c) }'; }
raw_wall() { record "$1" raw "wall time" s "$2"; }

ROUNDS_M="round trips beyond loopback"
# noop_rounds WORKLOAD TOOL RTT_MS CMD FAR_SRC FAR_DST NEAR_SRC NEAR_DST: WAN_NOOP_RUNS
# times, the no-op over the link (measure: wall, CPU, peak) and then straight to the
# registries; records each pair's difference in round trips.
noop_rounds() {
  local w="$1" t="$2" rtt="$3" cmd="$4" i far near
  for i in $(seq "$WAN_NOOP_RUNS"); do
    measure "$w" "$t" "$cmd" "$5" "$6"
    far="$WALL"
    timed "$cmd" "$7" "$8"
    near="$WALL"
    record "$w" "$t" "$ROUNDS_M" count "$(awk -v f="$far" -v n="$near" -v r="$rtt" 'BEGIN { printf "%.2f", (f - n) * 1000 / r }')"
  done
}

echo "generating a single-layer image with a $WAN_BIG_MB MiB layer (WAN)" >&2
push_image "$A" bench/wanbig 1 amd64 1 "$WAN_BIG_MB" >/dev/null
WAN_BIG_DIGEST="sha256:$(sha256sum "$WORK/manifest-amd64.json" | cut -d' ' -f1)"
WAN_BIG_BYTES="$(jq '[.layers[].size, .config.size] | add' "$WORK/manifest-amd64.json")"
COLD_BYTES="$(awk '{s += $2} END {print s}' "$WORK/blobs.txt")"
# own_seconds MBIT -> the seconds the images' own blobs need at least, one image after the
# other: per image its largest blob over one connection (a blob is one PUT) or all of them
# over JOBS, whichever is longer.
own_seconds() {
  local i total=0
  for i in $(seq "$WAN_IMAGES"); do
    total="$(awk -v m="$1" -v c="$JOBS" -v t="$total" '{ s += $2; if ($2 > x) x = $2 }
      END { a = x * 8 / (m * 1e6); b = s * 8 / (m * 1e6 * c); printf "%.6f", t + (a > b ? a : b) }' \
      "$WORK/many/blobs$i.txt")"
  done
  echo "$total"
}

for link in $WAN_LINKS; do
  rtt="${link%%:*}"; mbit="${link##*:}"
  tag="WAN ${rtt} ms, ${mbit} Mbit/s"
  W_COLD="$tag: cold copy"; W_NOOP="$tag: no-op re-copy"; W_NOOP_IMAGE="$tag: no-op re-copy, image only"
  W_MANY="$tag: $WAN_IMAGES images, shared base"; W_BIG="$tag: ${WAN_BIG_MB} MiB layer"
  note "$W_COLD" "The cold copy's image ($TOTAL_MB MiB) with source and destination behind the link. Bound: the blob bytes over $JOBS capped connections, plus 7 round trips (handshake, index GET, child manifest GET, upload POST, upload PUT, child manifest PUT, index PUT; distribution 2.8 has no single-POST upload: it answers 202 and keeps nothing)."
  note "$W_NOOP" "The re-copy to that destination, referrers on (imagesync's default), $WAN_NOOP_RUNS runs a round. Bound: 3 round trips (the handshake, the two HEADs in parallel, then the referrers probe's two HEADs of the digest the first answered). Round trips beyond loopback: each run's wall time less that of the same call straight to the two registries right after, over the RTT."
  note "$W_NOOP_IMAGE" "The same re-copy with imagesync copy --no-referrers (skopeo copies no referrers either way), $WAN_NOOP_RUNS runs a round. Bound: 2 round trips (the handshake, then the two HEADs in parallel); round trips beyond loopback as above."
  note "$W_MANY" "The first $WAN_IMAGES images of the shared-base workload, one copy after the other, both ends behind the link. Bound: the base layer over one capped connection (one PUT), then per image its largest blob over one connection (the images go one after the other, a blob in one PUT), plus 5 round trips per image (handshake, manifest GET, upload POST, upload PUT, manifest PUT)."
  note "$W_BIG" "One $WAN_BIG_MB MiB layer from a source behind the link into a registry next to the client. Bound: the layer over $JOBS capped connections (ranged reads), plus 3 round trips (handshake, manifest GET, blob GET)."
  raw_wall "$W_COLD" "$(bound "$(over "$COLD_BYTES" "$mbit" "$JOBS")" 7 "$rtt")"
  raw_wall "$W_NOOP" "$(bound 0 3 "$rtt")"
  raw_wall "$W_NOOP_IMAGE" "$(bound 0 2 "$rtt")"
  record "$W_NOOP" raw "$ROUNDS_M" count 3
  record "$W_NOOP_IMAGE" raw "$ROUNDS_M" count 2
  raw_wall "$W_MANY" "$(bound "$(awk -v a="$(over "$BASE_SIZE" "$mbit" 1)" -v b="$(own_seconds "$mbit")" 'BEGIN { print a + b }')" "$((5 * WAN_IMAGES))" "$rtt")"
  raw_wall "$W_BIG" "$(bound "$(over "$WAN_BIG_BYTES" "$mbit" "$JOBS")" 3 "$rtt")"

  for r in $(seq "$WAN_RUNS"); do
    LA="$(start_link "wan-src-$rtt-$r" "$A" "$rtt" "$mbit")"
    for t in imagesync skopeo; do
      case "$t" in imagesync) copy=imagesync_copy ;; skopeo) copy=skopeo_copy ;; esac
      B="$(start_registry "wan-$t-$rtt-$r")"
      LB="$(start_link "wan-dst-$t-$rtt-$r" "$B" "$rtt" "$mbit")"
      measure "$W_COLD" "$t" "$copy" "$LA/bench/app:1" "$LB/bench/app:1"
      noop_rounds "$W_NOOP" "$t" "$rtt" "$copy" "$LA/bench/app:1" "$LB/bench/app:1" "$A/bench/app:1" "$B/bench/app:1"
      case "$t" in imagesync) plain=imagesync_copy_image_only ;; skopeo) plain=skopeo_copy ;; esac
      noop_rounds "$W_NOOP_IMAGE" "$t" "$rtt" "$plain" "$LA/bench/app:1" "$LB/bench/app:1" "$A/bench/app:1" "$B/bench/app:1"
      check_digest "$B/bench/app:1" "$INDEX_DIGEST" "WAN $t"
      IMAGES="$WAN_IMAGES" measure "$W_MANY" "$t" tool_many "$copy" "$LA" "$LB"
      check_digest "$B/mirror/img$WAN_IMAGES:1" "sha256:$(sha256sum "$WORK/many/manifest$WAN_IMAGES.json" | cut -d' ' -f1)" "WAN images $t"
      measure "$W_BIG" "$t" "$copy" "$LA/bench/wanbig:1" "$B/bench/wanbig:1"
      check_digest "$B/bench/wanbig:1" "$WAN_BIG_DIGEST" "WAN big $t"
      stop_registry "wan-dst-$t-$rtt-$r"
      stop_registry "wan-$t-$rtt-$r"
    done
    stop_registry "wan-src-$rtt-$r"
    echo "  WAN $rtt ms / $mbit Mbit/s round $r of $WAN_RUNS done" >&2
  done
done

if [ "${WAN_TLS:-1}" != 0 ]; then
  link="${WAN_LINKS%% *}"; rtt="${link%%:*}"; mbit="${link##*:}"
  tag="WAN ${rtt} ms, ${mbit} Mbit/s, TLS"
  W_COLD="$tag: cold copy"; W_NOOP="$tag: no-op re-copy"
  export TLS="$WORK/tls"
  mkdir -p "$TLS/certs.d"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=imagesync bench CA" -keyout "$TLS/ca.key" -out "$TLS/ca.pem" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=127.0.0.1 \
    -keyout "$TLS/key.pem" -out "$TLS/server.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >"$TLS/ext.cnf"
  openssl x509 -req -in "$TLS/server.csr" -CA "$TLS/ca.pem" -CAkey "$TLS/ca.key" \
    -CAcreateserial -days 2 -extfile "$TLS/ext.cnf" -out "$TLS/leaf.pem" 2>/dev/null
  cat "$TLS/leaf.pem" "$TLS/ca.pem" >"$TLS/chain.pem"
  cp "$TLS/ca.pem" "$TLS/certs.d/ca.crt" # skopeo's --*-cert-dir: *.crt are CAs
  imagesync_tls_copy() { "$IMAGESYNC" copy "$1" "$2" --no-progress --ca-file "$TLS/ca.pem" -j "$JOBS" --blob-cache "$WORK/blobs.json"; }
  skopeo_tls_copy() { skopeo copy --all --quiet --src-cert-dir "$TLS/certs.d" --dest-cert-dir "$TLS/certs.d" "docker://$1" "docker://$2"; }
  export -f imagesync_tls_copy skopeo_tls_copy
  note "$W_COLD" "The cold copy over HTTPS: every registry serves TLS (TLS 1.3, and HTTP/2 to a client that offers it). Bound: the blob bytes over $JOBS capped connections, plus 8 round trips (the TCP and TLS handshakes, then as without TLS)."
  note "$W_NOOP" "The no-op re-copy over HTTPS, referrers on, $WAN_NOOP_RUNS runs a round. Bound: 4 round trips (the TCP and TLS handshakes, the two HEADs, the referrers probe); round trips beyond loopback as without TLS."
  raw_wall "$W_COLD" "$(bound "$(over "$COLD_BYTES" "$mbit" "$JOBS")" 8 "$rtt")"
  raw_wall "$W_NOOP" "$(bound 0 4 "$rtt")"
  record "$W_NOOP" raw "$ROUNDS_M" count 4
  ST="$(start_registry wan-tls-src tls)"
  "$IMAGESYNC" copy "$A/bench/app:1" "$ST/bench/app:1" --insecure-registry "$A" \
    --ca-file "$TLS/ca.pem" --no-progress >/dev/null 2>"$WORK/last.err" ||
    { echo "seeding the TLS source failed" >&2; cat "$WORK/last.err" >&2; exit 1; }
  for r in $(seq "$WAN_RUNS"); do
    LA="$(start_link "wan-tls-src-$r" "$ST" "$rtt" "$mbit")"
    for t in imagesync skopeo; do
      B="$(start_registry "wan-tls-$t-$r" tls)"
      LB="$(start_link "wan-tls-dst-$t-$r" "$B" "$rtt" "$mbit")"
      measure "$W_COLD" "$t" "${t}_tls_copy" "$LA/bench/app:1" "$LB/bench/app:1"
      noop_rounds "$W_NOOP" "$t" "$rtt" "${t}_tls_copy" "$LA/bench/app:1" "$LB/bench/app:1" "$ST/bench/app:1" "$B/bench/app:1"
      check_digest "$B/bench/app:1" "$INDEX_DIGEST" "WAN TLS $t" "$TLS/ca.pem"
      stop_registry "wan-tls-dst-$t-$r"
      stop_registry "wan-tls-$t-$r"
    done
    stop_registry "wan-tls-src-$r"
    echo "  WAN TLS $rtt ms / $mbit Mbit/s round $r of $WAN_RUNS done" >&2
  done
  stop_registry wan-tls-src
fi
