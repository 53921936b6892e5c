#!/usr/bin/env bash
# Builds kube-apiserver v1.20.2 from Debian's `kubernetes` source package with Go 1.15
# (Go >= 1.18 builds a binary that crashes at run time) and caches it outside the repo.
# Prints the path of the cached binary. A second run is instant.
#
# `--print-apt-sources` prints the apt source entries it would add, and exits.
set -euo pipefail

# The machine's Debian mirror: the URI of the configured source for this release's own
# suite (not -security or -updates), from deb822 files (sources.list.d/*.sources), else
# one-line entries (sources.list, sources.list.d/*.list). APT_ETC and DEBIAN_CODENAME
# override /etc/apt and /etc/os-release (for checking this function).
debian_mirror() {
  local etc="${APT_ETC:-/etc/apt}" codename="${DEBIAN_CODENAME:-}" f uri
  if [ -z "$codename" ] && [ -r /etc/os-release ]; then
    codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
  fi
  codename="${codename:-bookworm}"
  for f in "$etc"/sources.list.d/*.sources; do
    [ -f "$f" ] && [ "$(basename "$f")" != imagesync-e2e.sources ] || continue
    uri=$(awk -v want="$codename" '
      function done_stanza() {
        if (enabled && uri != "" && has) { print uri; found = 1; exit }
        uri = ""; has = 0; enabled = 1
      }
      BEGIN { enabled = 1 }
      /^[ \t]*#/ { next }
      /^[ \t]*$/ { done_stanza(); next }
      tolower($1) == "uris:" { uri = $2 }
      tolower($1) == "suites:" { for (i = 2; i <= NF; i++) if ($i == want) has = 1 }
      tolower($1) == "enabled:" && tolower($2) == "no" { enabled = 0 }
      END { if (!found) done_stanza() }' "$f")
    if [ -n "$uri" ]; then echo "${uri%/}"; return; fi
  done
  for f in "$etc"/sources.list "$etc"/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    uri=$(awk -v want="$codename" '
      $1 == "deb" || $1 == "deb-src" {
        i = 2
        if ($i ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
        if ($(i + 1) == want) { print $i; exit }
      }' "$f")
    if [ -n "$uri" ]; then echo "${uri%/}"; return; fi
  done
  echo "warning: no Debian source for $codename in $etc; using http://deb.debian.org/debian" >&2
  echo http://deb.debian.org/debian
}

# bookworm's deb-src (the kubernetes source package) and bullseye (golang-1.15-go).
apt_sources() {
  local mirror
  mirror=$(debian_mirror)
  cat <<LIST
Types: deb-src
URIs: $mirror
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $mirror
Suites: bullseye
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
LIST
}

if [ "${1:-}" = --print-apt-sources ]; then apt_sources; exit 0; fi

CACHE="${IMAGESYNC_E2E_CACHE:-$HOME/.cache/imagesync-e2e}"
OUT="$CACHE/kube-apiserver-1.20.2"
if [ -x "$OUT" ]; then echo "$OUT"; exit 0; fi
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
mkdir -p "$CACHE"
if ! [ -x /usr/lib/go-1.15/bin/go ]; then
  echo "adding bookworm deb-src and bullseye (pinned low) for golang-1.15-go" >&2
  apt_sources | $SUDO tee /etc/apt/sources.list.d/imagesync-e2e.sources >/dev/null
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
