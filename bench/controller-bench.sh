#!/usr/bin/env bash
# Benchmark (not a test): imagesync-controller in steady state with N ImageSync objects
# (default 1000) on a real kube-apiserver v1.20.2 + etcd, against one local
# docker-registry. Prints a table:
#
#   converge N        time until all N objects are Ready=True (initial copy, mostly skips)
#   requests/cycle    registry requests during one resync interval once steady:
#                     manifest HEAD (expect 4 per object: source and destination tag, and
#                     the referrers probe's two, spec.referrers being on by default; 2
#                     with REFERRERS=false),
#                     manifest GET (expect 0), other, status writes (expect 0: an unchanged
#                     check writes none, lastCheckTime is refreshed every 10 minutes, so
#                     a long interval or a long run sees those)
#   CPU/cycle         controller CPU seconds (user+sys) during that interval (also per
#                     1,000 checks, counting a check as MIN_HEADS manifest HEADs)
#   peak RSS          controller VmHWM (target under 100 MB)
#   converge 100 new  time until 100 objects created afterwards are Ready=True
#
# The steady-state numbers are measured over CYCLES consecutive intervals (default 3). With
# BENCH_RESULTS set (bench/run.sh), the samples are appended to it for `bench-report`.
#
# Environment: OBJECTS (default 1000), INTERVAL (resyncInterval, default 60s),
# CONCURRENCY (default 16), CYCLES, PROFILE (release|debug, default release; SKIP_BUILD=1
# to use an existing binary, CONTROLLER_BIN to name another one), NEW_OBJECTS (objects
# created once steady, default 100; 0 skips that step), REFERRERS (spec.referrers of the
# objects, default true; false drops the referrers probe's 2 HEADs per check).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OBJECTS="${OBJECTS:-1000}"
INTERVAL="${INTERVAL:-60}"
CONCURRENCY="${CONCURRENCY:-16}"
PROFILE="${PROFILE:-release}"
CYCLES="${CYCLES:-3}"
NEW_OBJECTS="${NEW_OBJECTS:-100}"
REFERRERS="${REFERRERS:-true}"
W_NAME="controller steady state ($OBJECTS objects)"
PROBE_HEADS=2
if [ "$REFERRERS" != true ]; then
  W_NAME="controller steady state ($OBJECTS objects, spec.referrers false)"
  PROBE_HEADS=0
fi
MIN_HEADS=$((2 + PROBE_HEADS))
record() { # TOOL METRIC UNIT VALUE
  [ -n "${BENCH_RESULTS:-}" ] || return 0
  printf 'm\t%s\t%s\t%s\t%s\t%s\n' "$W_NAME" "$@" >>"$BENCH_RESULTS"
}
if [ -n "${BENCH_RESULTS:-}" ]; then
  printf 'note\t%s\t%s\n' "$W_NAME" "imagesync-controller ($PROFILE) with $OBJECTS ImageSync objects (resyncInterval ${INTERVAL}s, concurrency $CONCURRENCY) on kube-apiserver v1.20.2 + etcd, one docker-registry; each sample is one resync interval once steady (the first interval after convergence is skipped), requests from the registry access log, CPU user+sys from /proc, peak RSS is VmHWM. Status writes are the API server's count of ImageSync status PATCHes (apiserver_request_total); an unchanged check writes none, except that each object's lastCheckTime is refreshed once it is 10 minutes old (none in a run shorter than that; at a 300 s interval, every second or third check). spec.referrers: $REFERRERS. Theoretical minimum (raw column): $MIN_HEADS manifest HEADs per object per cycle (source and destination tag, and with spec.referrers the referrers probe: the source's sha256-<hex> fallback tag and .sig tag), no status write, nothing else." >>"$BENCH_RESULTS"
fi

BENCH_NAME=controller-bench BENCH_CRDS=imagesyncs BENCH_TAG=1
# shellcheck source=bench/cluster.sh
. "$ROOT/bench/cluster.sh"

objects() { # FIRST LAST
  for i in $(seq "$1" "$2"); do
    cat <<EOF
---
apiVersion: imagesync.dev/v1alpha1
kind: ImageSync
metadata: {name: b$i, namespace: default}
spec: {source: "$REG/src/app:1", destination: "$REG/mirror/b$i:1", resyncInterval: "${INTERVAL}s", referrers: $REFERRERS}
EOF
  done
}
ready_count() {
  kubectl get isync -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' | grep -c '^True$' || true
}
wait_ready() { # N (listing 10,000 objects costs the API server: look less often then)
  while [ "$(ready_count)" -lt "$1" ]; do sleep $((1 + OBJECTS / 2000)); done
}

echo "creating $OBJECTS ImageSync objects..." >&2
objects 1 "$OBJECTS" >"$W/objects.yaml"
kubectl apply -f "$W/objects.yaml" >/dev/null

"$CONTROLLER" --metrics-addr "127.0.0.1:$MP" --insecure-registry "$REG" \
  --concurrency "$CONCURRENCY" --default-resync-interval "${INTERVAL}s" 2>"$W/controller.log" &
CPID=$!
PIDS+=($CPID)
T0=$(now)
wait_ready "$OBJECTS"
CONVERGE_ALL="$(since "$T0")"

cpu() { awk '{print $14+$15}' "/proc/$CPID/stat"; }
# ImageSync status writes the API server served so far (server-side apply is verb APPLY).
status_writes() {
  { kubectl get --raw /metrics 2>/dev/null || true; } | awk '/^apiserver_request_total[{]/ && /resource="imagesyncs"/ &&
    /subresource="status"/ && /verb="(PATCH|APPLY)"/ {s += $NF} END {print s + 0}'
}
TICKS=$(getconf CLK_TCK)
# Steady state: skip one interval (initial checks spread over it), then measure CYCLES.
sleep "$INTERVAL"
HEADS_ALL=""; GETS_ALL=""; OTHER_ALL=""; CPU_ALL=""; WRITES_ALL=""
for c in $(seq "$CYCLES"); do
  L0=$(wc -l <"$W/access.log"); C0=$(cpu); S0=$(status_writes)
  sleep "$INTERVAL"
  L1=$(wc -l <"$W/access.log"); C1=$(cpu); S1=$(status_writes)
  WINDOW="$(sed -n "$((L0 + 1)),${L1}p" "$W/access.log")"
  HEADS=$(grep -c '"HEAD /v2/[^ ]*/manifests/' <<<"$WINDOW" || true)
  GETS=$(grep -c '"GET /v2/[^ ]*/manifests/' <<<"$WINDOW" || true)
  OTHER=$(grep '"[A-Z]* /v2/' <<<"$WINDOW" | grep -vc '/manifests/' || true)
  CPU_S=$(python3 -c "print(f'{($C1-$C0)/$TICKS:.2f}')")
  WRITES=$((S1 - S0)); WRITES_ALL="$WRITES_ALL $WRITES"
  HEADS_ALL="$HEADS_ALL $HEADS"; GETS_ALL="$GETS_ALL $GETS"; OTHER_ALL="$OTHER_ALL $OTHER"; CPU_ALL="$CPU_ALL ${CPU_S}s"
  record imagesync "manifest HEAD per object per cycle" count "$(python3 -c "print($HEADS / $OBJECTS)")"
  record raw "manifest HEAD per object per cycle" count "$MIN_HEADS"
  record imagesync "manifest GET per cycle" count "$GETS"
  record raw "manifest GET per cycle" count 0
  record imagesync "other requests per cycle" count "$OTHER"
  record raw "other requests per cycle" count 0
  record imagesync "status writes per cycle" count "$WRITES"
  record raw "status writes per cycle" count 0
  record imagesync "CPU (user+sys) per cycle" s "$CPU_S"
  # The same CPU per 1,000 checks (HEADs / MIN_HEADS): a loaded machine lets checks drift
  # across the window edges, so a window may hold somewhat more or fewer than N checks.
  if [ "$HEADS" -gt 0 ]; then
    record imagesync "CPU (user+sys) per 1,000 checks" s \
      "$(python3 -c "print(f'{($C1-$C0)/$TICKS*1000*$MIN_HEADS/$HEADS:.2f}')")"
  fi
  record imagesync "peak RSS" MiB "$(awk '/VmHWM/ {printf "%.1f", $2 / 1024}' "/proc/$CPID/status")"
  echo "cycle $c: $HEADS HEAD, $GETS GET, $OTHER other, $WRITES status writes, CPU ${CPU_S}s" >&2
done

RSS_KB=$(awk '/VmHWM/ {print $2}' "/proc/$CPID/status")
record imagesync "converge all objects (initial)" s "${CONVERGE_ALL% s}"
CONVERGE_NEW="skipped"
if [ "$NEW_OBJECTS" -gt 0 ]; then
  T1=$(now)
  objects "$((OBJECTS + 1))" "$((OBJECTS + NEW_OBJECTS))" | kubectl apply -f - >/dev/null
  wait_ready "$((OBJECTS + NEW_OBJECTS))"
  CONVERGE_NEW="$(since "$T1")"
  RSS_KB=$(awk '/VmHWM/ {print $2}' "/proc/$CPID/status")
  record imagesync "converge $NEW_OBJECTS new objects" s "${CONVERGE_NEW% s}"
fi

printf '\n%-34s %s\n' "metric" "value"
printf '%-34s %s\n' "----------------------------------" "--------------------"
printf '%-34s %s\n' "objects" "$OBJECTS (resyncInterval ${INTERVAL}s, concurrency $CONCURRENCY, $PROFILE)"
printf '%-34s %s\n' "converge $OBJECTS (initial)" "$CONVERGE_ALL"
printf '%-34s %s\n' "manifest HEAD per cycle" "$HEADS_ALL (expect $((MIN_HEADS * OBJECTS)))"
printf '%-34s %s\n' "manifest GET per cycle" "$GETS_ALL (expect 0)"
printf '%-34s %s\n' "other registry requests per cycle" "$OTHER_ALL"
printf '%-34s %s\n' "status writes per cycle" "$WRITES_ALL (expect 0)"
printf '%-34s %s\n' "controller CPU per cycle" "$CPU_ALL"
printf '%-34s %s\n' "controller peak RSS" "$((RSS_KB / 1024)) MB (target < 100 MB)"
printf '%-34s %s\n' "converge $NEW_OBJECTS new objects" "$CONVERGE_NEW"
