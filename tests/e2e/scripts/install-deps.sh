#!/usr/bin/env bash
# Installs the real components the end-to-end tests run against (Debian packages only,
# loopback use). Idempotent: skips what is already present.
set -euo pipefail
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
# On a fresh VM, unattended upgrades often hold the dpkg lock at boot: wait for it (up to
# IMAGESYNC_APT_LOCK_TIMEOUT seconds, 600 by default) instead of failing at once.
LOCK_TIMEOUT="${IMAGESYNC_APT_LOCK_TIMEOUT:-600}"
apt_get() {
  echo "apt-get $1 (waits up to ${LOCK_TIMEOUT}s if another apt or dpkg holds the lock)" >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get -o DPkg::Lock::Timeout="$LOCK_TIMEOUT" "$@"
}
need=()
command -v docker-registry >/dev/null || need+=(docker-registry)
command -v skopeo >/dev/null || need+=(skopeo)
command -v openssl >/dev/null || need+=(openssl)
command -v curl >/dev/null || need+=(curl)
command -v protoc >/dev/null || need+=(protobuf-compiler)
command -v etcd >/dev/null || need+=(etcd-server)
command -v jq >/dev/null || need+=(jq)
command -v rsync >/dev/null || need+=(rsync)
# The controller image and the real producers/consumers (tests/e2e/tests/image.rs,
# producers.rs): buildah builds images offline (vfs storage, chroot isolation); containerd
# and runc pull and run them without a system service.
command -v buildah >/dev/null || need+=(buildah)
command -v containerd >/dev/null || need+=(containerd)
command -v runc >/dev/null || need+=(runc)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}" >&2
  apt_get update -qq
  apt_get install -y -qq "${need[@]}" >/dev/null
fi

# --- Helm (chart tests) -------------------------------------------------------------------
# The real Helm v4 library for Python (no helm binary exists on the registries we can reach):
# PyPI helm-python-sdk bundles libhelm_c.so; PyYAML parses the rendered manifests.
# Used by tests/e2e/helm/helmctl.py. Set IMAGESYNC_E2E_PYTHON to use another interpreter.
PY="${IMAGESYNC_E2E_PYTHON:-python3}"
if ! command -v "$PY" >/dev/null; then
  apt_get update -qq
  apt_get install -y -qq python3 python3-pip >/dev/null
fi
if ! "$PY" -c 'import helm_python, yaml; assert helm_python.__version__ == "0.2.2"' 2>/dev/null; then
  echo "installing: helm-python-sdk==0.2.2 PyYAML (pip)" >&2
  "$PY" -m pip install --quiet --disable-pip-version-check "helm-python-sdk==0.2.2" PyYAML \
    || "$PY" -m pip install --quiet --disable-pip-version-check --break-system-packages \
         "helm-python-sdk==0.2.2" PyYAML
fi
