#!/usr/bin/env bash
# Builds the imagesync-controller OCI image (or the CLI's, with --bin imagesync) offline
# with buildah and pushes it to a destination the caller names. The image is the one the Dockerfile describes (keep the two
# in step): the controller at /usr/local/bin/imagesync-controller as the ENTRYPOINT, user
# and group 65532 (numeric, for runAsNonRoot), port 8080, OCI labels. Instead of a
# distroless base (which cannot be fetched offline) it carries what the binary needs at run
# time, taken from this machine: the shared libraries `ldd` lists, the CA bundle
# /etc/ssl/certs/ca-certificates.crt, and /etc/passwd, /etc/group entries for 65532.
#
#   images/build-controller-image.sh --push docker://REGISTRY/imagesync-controller:0.1.0
#   images/build-controller-image.sh --bin imagesync --push docker://REGISTRY/imagesync:0.1.0
#   images/build-controller-image.sh --binary target/debug/imagesync-controller \
#       --push docker://127.0.0.1:5000/imagesync-controller:0.1.0 --tls-verify=false
#
# Options:
#   --bin NAME          imagesync-controller (the default) or imagesync: the CLI image,
#                       built the same way, with the CLI as its ENTRYPOINT and no port.
#   --binary PATH       the binary to package. Without it the script builds one
#                       with `cargo build --locked --profile image`: the release profile
#                       without its thin LTO (see [profile.image] in Cargo.toml), so a
#                       publishing build skips the link-time optimisation pass. The e2e
#                       tests package the debug binary CI has already built instead: no
#                       second optimised build of the workspace in CI, and the image costs
#                       seconds (about 4 s a build here), not minutes.
#   --push DEST         where to push: any buildah destination, e.g. docker://HOST/REPO:TAG
#                       or oci:/path/dir:TAG. Required.
#   --tls-verify=false  push over plain HTTP / without verifying the registry's certificate
#   --digestfile FILE   write the pushed manifest digest (sha256:...) to FILE
#   --format oci|docker manifest format (default oci)
#
# Reproducible: the same binary (and the same host libraries and CA bundle) gives the same
# image digest on every build. Every file gets the mtime SOURCE_DATE_EPOCH (default: the
# commit time of HEAD, else 0), buildah commits with --timestamp SOURCE_DATE_EPOCH, the
# storage is a fresh vfs store in a temp dir, and no "latest" tag is ever written: tag the
# destination with the version (the chart's image.tag defaults to its appVersion).
# Debug sections are stripped from the copy that goes into the image (not from --binary).
#
# Needs: buildah (Debian 12: 1.28), binutils (strip), ldd. Runs as root (CI) with
# BUILDAH_ISOLATION=chroot; nothing is run inside the image while building it.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
UID_GID=65532

bin=imagesync-controller binary="" dest="" tls_verify=true digestfile="" format=oci
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) bin="$2"; shift 2 ;;
    --binary) binary="$2"; shift 2 ;;
    --push) dest="$2"; shift 2 ;;
    --tls-verify=false) tls_verify=false; shift ;;
    --digestfile) digestfile="$2"; shift 2 ;;
    --format) format="$2"; shift 2 ;;
    -h|--help) sed -n '2,/^set -e/p' "$0" | sed 's/^# \{0,1\}//;$d'; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$bin" in
  imagesync-controller)
    package=imagesync-controller port=8080
    description="imagesync controller: keeps ImageSync destinations in sync with their sources" ;;
  imagesync)
    package=imagesync-cli port=""
    description="imagesync CLI: copies container images between OCI registries byte for byte" ;;
  *) echo "--bin must be imagesync-controller or imagesync" >&2; exit 2 ;;
esac
case "$format" in
  oci) push_format=oci ;;
  docker) push_format=v2s2 ;;
  *) echo "--format must be oci or docker" >&2; exit 2 ;;
esac
[ -n "$dest" ] || { echo "--push DEST is required (see --help)" >&2; exit 2; }
case "$dest" in
  *:latest) echo "refusing to write a 'latest' tag: tag the image with its version" >&2; exit 2 ;;
esac
command -v buildah >/dev/null || { echo "buildah not found: tests/e2e/scripts/install-deps.sh installs it" >&2; exit 1; }

if [ -z "$binary" ]; then
  echo "building $bin (cargo --profile image)" >&2
  (cd "$ROOT" && cargo build --locked --profile image -p "$package" --bin "$bin")
  binary="${CARGO_TARGET_DIR:-$ROOT/target}/image/$bin"
fi
[ -x "$binary" ] || { echo "not an executable: $binary" >&2; exit 1; }
version="$("$binary" --version | awk '{print $2}')"

if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
  SOURCE_DATE_EPOCH="$(git -C "$ROOT" log -1 --format=%ct 2>/dev/null || echo 0)"
fi
export SOURCE_DATE_EPOCH
created="$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)"
revision="$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)"
case "$(uname -m)" in
  x86_64) arch=amd64 ;;
  aarch64) arch=arm64 ;;
  *) arch="$(uname -m)" ;;
esac

work="$(mktemp -d "${TMPDIR:-/tmp}/imagesync-image-XXXXXX")"
ctr=""
b() { buildah --root "$work/storage" --runroot "$work/run" --storage-driver vfs "$@"; }
cleanup() {
  [ -n "$ctr" ] && b rm "$ctr" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
export BUILDAH_ISOLATION=chroot

# --- the root filesystem ------------------------------------------------------------------
rootfs="$work/rootfs"
home="$work/home"
mkdir -p "$rootfs/usr/local/bin" "$rootfs/etc/ssl/certs" "$rootfs/tmp" "$rootfs/home" "$home/nonroot"
chmod 1777 "$rootfs/tmp"
strip --strip-debug -o "$rootfs/usr/local/bin/$bin" "$binary"
chmod 0755 "$rootfs/usr/local/bin/$bin"
# Shared libraries and the ELF interpreter, at the paths ldd shows (symlinks resolved).
# (A static binary has none: ldd then prints "not a dynamic executable".)
{ ldd "$binary" 2>/dev/null || true; } | awk '/=> \// {print $3} /^\t\// {print $1}' | sort -u | while read -r lib; do
  mkdir -p "$rootfs$(dirname "$lib")"
  cp -L "$lib" "$rootfs$lib"
  chmod 0755 "$rootfs$lib"
done
cp -L /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:%s:%s:nonroot:/home/nonroot:/sbin/nologin\n' \
  "$UID_GID" "$UID_GID" >"$rootfs/etc/passwd"
printf 'root:x:0:\nnonroot:x:%s:\n' "$UID_GID" >"$rootfs/etc/group"
printf 'hosts: files dns\n' >"$rootfs/etc/nsswitch.conf"
chmod 0644 "$rootfs/etc/passwd" "$rootfs/etc/group" "$rootfs/etc/nsswitch.conf" \
  "$rootfs/etc/ssl/certs/ca-certificates.crt"
find "$rootfs" "$home" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +

# --- the image ----------------------------------------------------------------------------
ctr="$(b from --format "$format" scratch)"
b copy --chown 0:0 "$ctr" "$rootfs/" / >/dev/null
# The home directory of 65532 belongs to it, as in distroless :nonroot.
b copy --chown "$UID_GID:$UID_GID" "$ctr" "$home/" /home/ >/dev/null
b config \
  --os linux --arch "$arch" \
  --user "$UID_GID:$UID_GID" \
  --workingdir / \
  --created-by 'images/build-controller-image.sh' \
  --env PATH=/usr/local/bin \
  --env HOME=/home/nonroot \
  --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
  ${port:+--port "$port"} \
  --entrypoint "[\"/usr/local/bin/$bin\"]" \
  --label "org.opencontainers.image.title=$bin" \
  --label "org.opencontainers.image.description=$description" \
  --label org.opencontainers.image.source=https://github.com/imagesync/imagesync \
  --label org.opencontainers.image.licenses=Apache-2.0 \
  --label "org.opencontainers.image.version=$version" \
  --label "org.opencontainers.image.revision=$revision" \
  --label "org.opencontainers.image.created=$created" \
  "$ctr"
image="$bin-build:$version"
b commit --quiet --format "$format" --timestamp "$SOURCE_DATE_EPOCH" --identity-label=false \
  --rm "$ctr" "$image" >/dev/null
ctr=""

digest_out="$work/digest"
b push --quiet --format "$push_format" --tls-verify="$tls_verify" --digestfile "$digest_out" \
  "$image" "$dest"
digest="$(cat "$digest_out")"
[ -n "$digestfile" ] && printf '%s\n' "$digest" >"$digestfile"
echo "pushed $dest@$digest (version $version, created $created)" >&2
echo "$digest"
