# The controller benches' shared set-up (sourced, not run): builds the controller unless
# SKIP_BUILD, then starts etcd, kube-apiserver v1.20.2 (KUBECONFIG exported, the CRDs in
# BENCH_CRDS applied) and one docker-registry with its access log ($W/access.log) at $REG,
# holding a 2-platform image at src/app:$BENCH_TAG. Everything lives in $W and stops on
# exit. Needs ROOT, PROFILE, BENCH_NAME, BENCH_CRDS and BENCH_TAG; sets CONTROLLER, W,
# PIDS, REG, and the helpers port, now and since.
bash "$ROOT/tests/e2e/scripts/install-deps.sh" >&2
APISERVER="$(bash "$ROOT/tests/e2e/scripts/build-kube-apiserver.sh")"
if [ -z "${SKIP_BUILD:-}" ]; then
  if [ "$PROFILE" = release ]; then
    (cd "$ROOT" && cargo build --release -p imagesync-controller >&2)
  else
    (cd "$ROOT" && cargo build -p imagesync-controller >&2)
  fi
fi
CONTROLLER="${CONTROLLER_BIN:-$ROOT/target/$PROFILE/imagesync-controller}"
[ -x "$CONTROLLER" ] || { echo "missing $CONTROLLER" >&2; exit 1; }

W="$(mktemp -d "/tmp/imagesync-$BENCH_NAME.XXXXXX")"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now() { date +%s.%N; }
since() { python3 -c "import sys; print(f'{float(sys.argv[2])-float(sys.argv[1]):.1f} s')" "$1" "$(now)"; }

# --- etcd + kube-apiserver ---------------------------------------------------------------
EP=$(port); PP=$(port); KP=$(port); RP=$(port); MP=$(port)
etcd --data-dir "$W/etcd" --listen-client-urls "http://127.0.0.1:$EP" \
  --advertise-client-urls "http://127.0.0.1:$EP" --listen-peer-urls "http://127.0.0.1:$PP" \
  --initial-advertise-peer-urls "http://127.0.0.1:$PP" --initial-cluster "default=http://127.0.0.1:$PP" \
  --log-level warn --unsafe-no-fsync 2>"$W/etcd.log" &
PIDS+=($!)
openssl genrsa -out "$W/sa.key" 2048 2>/dev/null
openssl rsa -in "$W/sa.key" -pubout -out "$W/sa.pub" 2>/dev/null
TOKEN="$(openssl rand -hex 16)"
echo "$TOKEN,admin,admin,\"system:masters\"" >"$W/tokens.csv"
"$APISERVER" --etcd-servers "http://127.0.0.1:$EP" --secure-port "$KP" \
  --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --cert-dir "$W/certs" \
  --token-auth-file "$W/tokens.csv" --authorization-mode RBAC \
  --service-account-key-file "$W/sa.pub" --service-account-signing-key-file "$W/sa.key" \
  --service-account-issuer https://kubernetes.default.svc \
  --service-cluster-ip-range 10.0.0.0/24 --disable-admission-plugins ServiceAccount \
  --max-requests-inflight 1000 --max-mutating-requests-inflight 500 \
  2>"$W/apiserver.log" &
PIDS+=($!)
cat >"$W/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters: [{name: b, cluster: {server: "https://127.0.0.1:$KP", insecure-skip-tls-verify: true}}]
users: [{name: admin, user: {token: "$TOKEN"}}]
contexts: [{name: b, context: {cluster: b, user: admin, namespace: default}}]
current-context: b
EOF
export KUBECONFIG="$W/kubeconfig"
for _ in $(seq 1 240); do
  kubectl get --raw /readyz >/dev/null 2>&1 && break
  sleep 0.5
done
kubectl get --raw /readyz >/dev/null
until kubectl get namespace default >/dev/null 2>&1; do sleep 0.3; done
for crd in $BENCH_CRDS; do
  kubectl apply -f "$ROOT/crds/$crd.imagesync.dev.yaml" >/dev/null
  kubectl wait --for condition=established --timeout=60s "crd/$crd.imagesync.dev" >/dev/null
done

# --- registry with an access log ----------------------------------------------------------
cat >"$W/registry.yml" <<EOF
version: 0.1
storage: {filesystem: {rootdirectory: $W/registry}, delete: {enabled: true}}
http: {addr: 127.0.0.1:$RP}
log: {level: error, accesslog: {disabled: false}}
EOF
docker-registry serve "$W/registry.yml" >"$W/access.log" 2>"$W/registry.err" &
PIDS+=($!)
until curl -fs "http://127.0.0.1:$RP/v2/" >/dev/null; do sleep 0.2; done
python3 "$ROOT/tests/e2e/scripts/oci-layout.py" "$W/layout" 1 7 >/dev/null
REG="127.0.0.1:$RP"
skopeo copy -q --all --dest-tls-verify=false "oci:$W/layout:1" "docker://$REG/src/app:$BENCH_TAG"
