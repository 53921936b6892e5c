# Sourced by the demo and bench scripts: plain-HTTP docker-registry instances on loopback,
# stopped (and their data removed) when the calling script exits.
#   WORK      scratch folder (created here), removed on exit
#   PIDS      processes to stop on exit (callers may add their own)
#   start_registry NAME [ACCESSLOG]  sets REG=127.0.0.1:PORT (call it directly, not in
#                                    $(...): the pid must reach PIDS)
WORK="$(mktemp -d -t "${WORK_PREFIX:-imagesync}-XXXXXX")"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start_registry() {
  local name="$1" accesslog="${2:-false}" port
  port="$(free_port)"
  mkdir -p "$WORK/$name"
  cat >"$WORK/$name.yml" <<YAML
version: 0.1
log:
  level: warn
  accesslog: {disabled: $([ "$accesslog" = true ] && echo false || echo true)}
storage:
  filesystem: {rootdirectory: $WORK/$name}
  delete: {enabled: true}
http:
  addr: 127.0.0.1:$port
YAML
  docker-registry serve "$WORK/$name.yml" >"$WORK/$name.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 1 100); do
    if curl -fsS "http://127.0.0.1:$port/v2/" >/dev/null 2>&1; then
      REG="127.0.0.1:$port"
      return 0
    fi
    sleep 0.1
  done
  echo "registry $name did not start:" >&2
  cat "$WORK/$name.log" >&2
  return 1
}
