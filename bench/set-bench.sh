#!/usr/bin/env bash
# Benchmark (not a test): the registry request cost of an ImageSyncSet's check, on a real
# kube-apiserver v1.20.2 + etcd and one local docker-registry (with its access log).
# One set over a source repository with TAGS tags (default 200, one image tagged TAGS
# times), all matching; each child re-checks at the same interval. Prints a table:
#
#   converge TAGS     time until the set is Synced with TAGS Ready children
#   tag-list / check  GET .../tags/list requests per interval (expect ceil(TAGS/1000))
#   HEAD / check      manifest HEADs per interval (expect 2 per child: source, destination)
#   GET / check       manifest GETs per interval (expect 0)
#   other / check     any other registry request (expect 0)
#   CPU / check       controller CPU seconds (user+sys) per interval
#
# The steady-state numbers are measured over CYCLES consecutive intervals (default 3),
# after skipping one. With BENCH_RESULTS set (bench/run.sh), the samples are appended to
# it for `bench-report`.
#
# Environment: TAGS (default 200), INTERVAL (the set's and the children's resyncInterval,
# default 30 s), CYCLES, PROFILE (release|debug, default release; SKIP_BUILD=1 to use an
# existing binary, CONTROLLER_BIN to name another one), CONCURRENCY (default 16).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
TAGS="${TAGS:-200}"
INTERVAL="${INTERVAL:-30}"
CYCLES="${CYCLES:-3}"
PROFILE="${PROFILE:-release}"
CONCURRENCY="${CONCURRENCY:-16}"
W_NAME="ImageSyncSet check ($TAGS tags)"
record() { # TOOL METRIC UNIT VALUE
  [ -n "${BENCH_RESULTS:-}" ] || return 0
  printf 'm\t%s\t%s\t%s\t%s\t%s\n' "$W_NAME" "$@" >>"$BENCH_RESULTS"
}
PAGES=$(( (TAGS + 999) / 1000 ))
if [ -n "${BENCH_RESULTS:-}" ]; then
  printf 'note\t%s\t%s\n' "$W_NAME" "imagesync-controller ($PROFILE), one ImageSyncSet over a repository with $TAGS tags, all matching (one child each), set and children resyncInterval ${INTERVAL}s, referrers off, on kube-apiserver v1.20.2 + etcd and one docker-registry; each sample is one interval once steady, requests from the registry access log. Theoretical minimum (raw column): $PAGES tag-list page(s) per check and 2 manifest HEADs per child (source and destination), nothing else." >>"$BENCH_RESULTS"
fi

BENCH_NAME=set-bench BENCH_CRDS="imagesyncs imagesyncsets" BENCH_TAG=base
# shellcheck source=bench/cluster.sh
. "$ROOT/bench/cluster.sh"
ACCEPT="application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json"
ACCEPT="$ACCEPT, application/vnd.docker.distribution.manifest.list.v2+json"
ACCEPT="$ACCEPT, application/vnd.docker.distribution.manifest.v2+json"
curl -fs -D "$W/headers" -H "Accept: $ACCEPT" "http://$REG/v2/src/app/manifests/base" -o "$W/manifest.json"
TYPE="$(awk -F': ' 'tolower($1) == "content-type" {print $2}' "$W/headers" | tr -d '\r')"
echo "tagging one image $TAGS times..." >&2
for i in $(seq 1 "$TAGS"); do
  curl -fs -X PUT -H "Content-Type: $TYPE" --data-binary "@$W/manifest.json" \
    "http://$REG/v2/src/app/manifests/1.$i.0" >/dev/null
done

"$CONTROLLER" --metrics-addr "127.0.0.1:$MP" --insecure-registry "$REG" \
  --concurrency "$CONCURRENCY" --default-resync-interval "${INTERVAL}s" 2>"$W/controller.log" &
CPID=$!
PIDS+=($CPID)
T0=$(now)
kubectl apply -f - >/dev/null <<EOF
apiVersion: imagesync.dev/v1alpha1
kind: ImageSyncSet
metadata: {name: bench, namespace: default}
spec:
  source: "$REG/src/app"
  destination: "$REG/mirror/app"
  include: "1\\\\..*"
  resyncInterval: "${INTERVAL}s"
  template: {resyncInterval: "${INTERVAL}s", referrers: false}
EOF
until [ "$(kubectl get isyncset bench -o jsonpath='{.status.ready}')" = "$TAGS" ] &&
  [ "$(kubectl get isyncset bench -o jsonpath='{.status.conditions[?(@.type=="Ready")].reason}')" = Synced ]; do
  if ! kill -0 "$CPID" || [ "$(python3 -c "print(int(float('$(now)') - float('$T0')))")" -gt "${CONVERGE_TIMEOUT:-900}" ]; then
    kubectl get isyncset bench -o yaml >&2
    tail -20 "$W/controller.log" >&2
    exit 1
  fi
  sleep 1
done
CONVERGE="$(since "$T0")"

cpu() { awk '{print $14+$15}' "/proc/$CPID/stat"; }
TICKS=$(getconf CLK_TCK)
sleep "$INTERVAL"
LISTS_ALL=""; HEADS_ALL=""; GETS_ALL=""; OTHER_ALL=""; CPU_ALL=""
for c in $(seq "$CYCLES"); do
  L0=$(wc -l <"$W/access.log"); C0=$(cpu)
  sleep "$INTERVAL"
  L1=$(wc -l <"$W/access.log"); C1=$(cpu)
  WINDOW="$(sed -n "$((L0 + 1)),${L1}p" "$W/access.log")"
  LISTS=$(grep -c '"GET /v2/[^ ]*/tags/list' <<<"$WINDOW" || true)
  HEADS=$(grep -c '"HEAD /v2/[^ ]*/manifests/' <<<"$WINDOW" || true)
  GETS=$(grep -c '"GET /v2/[^ ]*/manifests/' <<<"$WINDOW" || true)
  OTHER=$(grep '"[A-Z]* /v2/' <<<"$WINDOW" | grep -v '/manifests/' | grep -vc '/tags/list' || true)
  CPU_S=$(python3 -c "print(f'{($C1-$C0)/$TICKS:.2f}')")
  LISTS_ALL="$LISTS_ALL $LISTS"; HEADS_ALL="$HEADS_ALL $HEADS"; GETS_ALL="$GETS_ALL $GETS"
  OTHER_ALL="$OTHER_ALL $OTHER"; CPU_ALL="$CPU_ALL ${CPU_S}s"
  record imagesync "tag-list requests per check" count "$LISTS"
  record raw "tag-list requests per check" count "$PAGES"
  record imagesync "manifest HEAD per child per check" count "$(python3 -c "print($HEADS / $TAGS)")"
  record raw "manifest HEAD per child per check" count 2
  record imagesync "manifest GET per check" count "$GETS"
  record raw "manifest GET per check" count 0
  record imagesync "other requests per check" count "$OTHER"
  record raw "other requests per check" count 0
  record imagesync "CPU (user+sys) per check" s "$CPU_S"
  echo "cycle $c: $LISTS tag-list, $HEADS HEAD, $GETS GET, $OTHER other, CPU ${CPU_S}s" >&2
done
record imagesync "converge all children (initial)" s "${CONVERGE% s}"

printf '\n%-34s %s\n' "metric" "value"
printf '%-34s %s\n' "----------------------------------" "--------------------"
printf '%-34s %s\n' "set" "$TAGS matching tags (resyncInterval ${INTERVAL}s, referrers off, $PROFILE)"
printf '%-34s %s\n' "converge $TAGS children" "$CONVERGE"
printf '%-34s %s\n' "tag-list requests per check" "$LISTS_ALL (expect $PAGES)"
printf '%-34s %s\n' "manifest HEAD per check" "$HEADS_ALL (expect $((2 * TAGS)))"
printf '%-34s %s\n' "manifest GET per check" "$GETS_ALL (expect 0)"
printf '%-34s %s\n' "other registry requests per check" "$OTHER_ALL"
printf '%-34s %s\n' "controller CPU per check" "$CPU_ALL"
