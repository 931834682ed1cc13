#!/usr/bin/env bash
# Prints the path of a usable Vault server binary.
#   1. $VAULT_BIN, if set (it must be executable);
#   2. else the cached build under .cache/vault/<version>/vault;
#   3. else builds the version pinned by tools/vault/go.mod into that cache
#      (slow: about 10-15 minutes on 2 cores, once) and prints its path.
# Progress goes to stderr; only the path goes to stdout.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

if [ -n "${VAULT_BIN:-}" ]; then
  if [ ! -x "$VAULT_BIN" ]; then
    echo "vault.sh: VAULT_BIN=$VAULT_BIN is not an executable file" >&2
    exit 1
  fi
  echo "$VAULT_BIN"
  exit 0
fi

version=$(awk '$1 == "require" && $2 == "github.com/hashicorp/vault" {print $3}' "$root/tools/vault/go.mod")
if [ -z "$version" ]; then
  echo "vault.sh: cannot read the pinned Vault version from tools/vault/go.mod" >&2
  exit 1
fi
dir="$root/.cache/vault/$version"
bin="$dir/vault"

if [ -x "$bin" ]; then
  echo "$bin"
  exit 0
fi

if ! command -v go >/dev/null 2>&1; then
  echo "vault.sh: no 'go' on PATH; install Go 1.26+ or set VAULT_BIN to a Vault binary" >&2
  exit 1
fi

mkdir -p "$dir"
# One build at a time, even when several tests or scripts ask at once.
exec 9>"$dir/.lock"
flock 9
if [ -x "$bin" ]; then
  echo "$bin"
  exit 0
fi
echo "vault.sh: building Vault $version from the Go module proxy into $dir" >&2
echo "vault.sh: this takes about 10-15 minutes on 2 cores, once; later runs reuse it" >&2
start=$(date +%s)
(cd "$root/tools/vault" && go build -trimpath -o "$bin.tmp" github.com/hashicorp/vault) >&2
mv "$bin.tmp" "$bin"
echo "vault.sh: built Vault $version in $(( $(date +%s) - start ))s" >&2
echo "$bin"
