#!/usr/bin/env bash
# Builds kube-apiserver v1.20.2 from Debian's `kubernetes` source package with Go 1.15
# (Go >= 1.18 builds a binary that crashes at run time) and caches it outside the repo.
# Prints the path of the cached binary. A second run is instant.
set -euo pipefail
CACHE="${IMAGESYNC_E2E_CACHE:-$HOME/.cache/imagesync-e2e}"
OUT="$CACHE/kube-apiserver-1.20.2"
if [ -x "$OUT" ]; then echo "$OUT"; exit 0; fi
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
mkdir -p "$CACHE"
if ! [ -x /usr/lib/go-1.15/bin/go ]; then
  echo "adding bookworm deb-src and bullseye (pinned low) for golang-1.15-go" >&2
  $SUDO tee /etc/apt/sources.list.d/imagesync-e2e.sources >/dev/null <<'LIST'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian
Suites: bullseye
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
LIST
  $SUDO tee /etc/apt/preferences.d/imagesync-e2e-bullseye >/dev/null <<'PREF'
Package: *
Pin: release n=bullseye
Pin-Priority: 100
PREF
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq rsync jq etcd-server >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq -t bullseye golang-1.15-go >/dev/null
fi
WORK="$CACHE/kube-src"
mkdir -p "$WORK"
cd "$WORK"
if ! ls kubernetes_*.orig.tar.gz >/dev/null 2>&1; then
  apt-get source --download-only kubernetes >&2
fi
if [ ! -d kubernetes-1.20.2 ]; then tar xzf kubernetes_*.orig.tar.gz; fi
cd kubernetes-1.20.2
export GOPATH=$PWD/.go CGO_ENABLED=0 PATH=/usr/lib/go-1.15/bin:$PATH
mkdir -p .go/src/k8s.io
[ -e .go/src/k8s.io/kubernetes ] || ln -s ../../.. .go/src/k8s.io/kubernetes
echo "building kube-apiserver (about 7 minutes on 2 cores)" >&2
rm -rf _output
make WHAT=cmd/kube-apiserver >&2
cp _output/bin/kube-apiserver "$OUT.tmp" && mv "$OUT.tmp" "$OUT"
echo "$OUT"
