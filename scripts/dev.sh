#!/usr/bin/env bash
# A Vault dev server with the BioT plugin registered, enabled at biot/ and
# configured, for trying it by hand. Run by "make dev" (after "make build").
#
# BioT is the local sandbox (bin/biot-sandbox, a stand-in, not BioT) unless
# a real BioT is given:
#   BIOT_URL         e.g. https://api.dev.example.biot-med.com
#   BIOT_USERNAME + BIOT_PASSWORD, or BIOT_SERVICE_ID + BIOT_SECRET_KEY
#   BIOT_CA_CERT     optional PEM file to trust instead of the system roots
# Other settings:
#   PLUGIN_VERSION      version the plugin was built with (default v0.1.0)
#   DEV_VAULT_PORT      Vault's port (default 8200; the next port is its cluster port)
#   DEV_SANDBOX_PORT    the sandbox's port (default 8443)
#   SANDBOX_ACCESS_TTL  sandbox access-token lifetime (default 5m)
#   SANDBOX_FLAGS       more biot-sandbox flags, e.g. "-fail-refresh 500 -fail-rate 0.5"
#   VAULT_BIN           a Vault binary to use instead of the pinned build
#
# It stays up until Ctrl-C (or SIGTERM), then stops everything it started.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
state="$root/.cache/dev"
plugin_name="vault-plugin-secrets-biot"
plugin_bin="$root/bin/$plugin_name"
sandbox_bin="$root/bin/biot-sandbox"
plugin_version=${PLUGIN_VERSION:-v0.1.0}
vault_port=${DEV_VAULT_PORT:-8200}
sandbox_port=${DEV_SANDBOX_PORT:-8443}
access_ttl=${SANDBOX_ACCESS_TTL:-5m}

say() { printf 'dev: %s\n' "$*" >&2; }
die() { printf 'dev: error: %s\n' "$*" >&2; exit 1; }

# Settings from the caller's shell that would point the CLI elsewhere.
unset VAULT_ADDR VAULT_TOKEN VAULT_NAMESPACE VAULT_CACERT VAULT_CAPATH VAULT_CLIENT_CERT \
  VAULT_CLIENT_KEY VAULT_TLS_SERVER_NAME VAULT_SKIP_VERIFY VAULT_FORMAT VAULT_CLI_NO_COLOR 2>/dev/null || true

# --- what we need -----------------------------------------------------------
for tool in timeout sed; do
  command -v "$tool" >/dev/null 2>&1 || die "'$tool' is not installed"
done
if command -v sha256sum >/dev/null 2>&1; then
  sha256() { sha256sum "$1" | cut -d' ' -f1; }
elif command -v shasum >/dev/null 2>&1; then
  sha256() { shasum -a 256 "$1" | cut -d' ' -f1; }
else
  die "neither sha256sum nor shasum is installed (needed to register the plugin)"
fi
[ -x "$plugin_bin" ] || die "$plugin_bin is missing: run 'make dev' (it builds first) or 'make build'"

real_biot=false
if [ -n "${BIOT_URL:-}" ]; then
  real_biot=true
  if [ -n "${BIOT_USERNAME:-}" ] && [ -n "${BIOT_PASSWORD:-}" ]; then
    :
  elif [ -n "${BIOT_SERVICE_ID:-}" ] && [ -n "${BIOT_SECRET_KEY:-}" ]; then
    :
  else
    die "BIOT_URL is set: also set BIOT_USERNAME and BIOT_PASSWORD, or BIOT_SERVICE_ID and BIOT_SECRET_KEY"
  fi
  if [ -n "${BIOT_CA_CERT:-}" ] && [ ! -r "$BIOT_CA_CERT" ]; then
    die "BIOT_CA_CERT=$BIOT_CA_CERT is not a readable file"
  fi
else
  [ -x "$sandbox_bin" ] || die "$sandbox_bin is missing: run 'make dev' (it builds first) or 'make build'"
fi

# A port is busy if something accepts connections on it.
port_busy() { timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }
busy=()
for p in "$vault_port" "$((vault_port + 1))"; do
  port_busy "$p" && busy+=("$p (Vault)")
done
if ! $real_biot && port_busy "$sandbox_port"; then
  busy+=("$sandbox_port (sandbox)")
fi
if [ ${#busy[@]} -gt 0 ]; then
  die "port(s) in use on 127.0.0.1: ${busy[*]}. Stop whatever uses them (another 'make dev'?) or pick others with DEV_VAULT_PORT / DEV_SANDBOX_PORT"
fi

say "finding Vault (scripts/vault.sh; the first time it builds Vault, about 10-15 minutes)"
vault=$("$root/scripts/vault.sh") || die "no Vault binary: see the messages above, or set VAULT_BIN to a Vault binary"
[ -x "$vault" ] || die "scripts/vault.sh printed '$vault', which is not an executable"

# --- processes and cleanup ----------------------------------------------------
vault_pid=""
sandbox_pid=""
stopping=false
cleanup() {
  $stopping && return
  stopping=true
  trap - INT TERM HUP
  local pids=()
  [ -n "$vault_pid" ] && pids+=("$vault_pid")
  [ -n "$sandbox_pid" ] && pids+=("$sandbox_pid")
  [ ${#pids[@]} -eq 0 ] && return
  say "stopping (pids ${pids[*]})"
  kill -TERM "${pids[@]}" 2>/dev/null || true
  for _ in $(seq 1 100); do
    local alive=false
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=true; done
    $alive || break
    sleep 0.1
  done
  for pid in "${pids[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then
      say "pid $pid did not stop within 10s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  wait 2>/dev/null || true
  say "stopped"
}
trap cleanup EXIT
trap 'exit 0' INT
trap 'exit 0' TERM HUP

tail_log() { say "last lines of $1:"; tail -n 20 "$1" >&2 || true; }

mkdir -p "$state"
rm -rf "$state/plugins"
mkdir -p "$state/plugins"
cp "$plugin_bin" "$state/plugins/$plugin_name"
plugin_sha=$(sha256 "$state/plugins/$plugin_name")

# --- BioT -----------------------------------------------------------------------
ca_file=""
if $real_biot; then
  biot_url=$BIOT_URL
  ca_file=${BIOT_CA_CERT:-}
  say "using the BioT at $biot_url"
else
  ready="$state/sandbox.json"
  rm -f "$ready"
  # shellcheck disable=SC2086 # SANDBOX_FLAGS is a list of flags
  "$sandbox_bin" -addr "127.0.0.1:$sandbox_port" -ca-file "$state/biot-sandbox-ca.pem" \
    -ready-file "$ready" -access-ttl "$access_ttl" ${SANDBOX_FLAGS:-} >"$state/sandbox.log" 2>&1 &
  sandbox_pid=$!
  for _ in $(seq 1 150); do
    [ -s "$ready" ] && break
    kill -0 "$sandbox_pid" 2>/dev/null || { sandbox_pid=""; tail_log "$state/sandbox.log"; die "the sandbox exited at start"; }
    sleep 0.1
  done
  [ -s "$ready" ] || { tail_log "$state/sandbox.log"; die "the sandbox did not get ready within 15s"; }
  field() { sed -n "s/^ *\"$1\": *\"\([^\"]*\)\".*/\1/p" "$ready"; }
  biot_url=$(field url)
  ca_file=$(field ca_file)
  sandbox_user=$(field username)
  sandbox_password=$(field password)
  if [ -z "$biot_url" ] || [ -z "$sandbox_user" ]; then die "cannot read $ready"; fi
  say "BioT sandbox (a stand-in, not BioT) at $biot_url, log $state/sandbox.log"
fi

# --- Vault ----------------------------------------------------------------------
cat >"$state/vault.hcl" <<EOF
# plugin_directory without -dev-plugin-dir: nothing is registered until we
# register it, as on a real server.
plugin_directory = "$state/plugins"
EOF
export VAULT_ADDR="http://127.0.0.1:$vault_port"
export VAULT_TOKEN=root
"$vault" server -dev -config="$state/vault.hcl" -dev-root-token-id=root \
  -dev-listen-address="127.0.0.1:$vault_port" -dev-no-store-token >"$state/vault.log" 2>&1 &
vault_pid=$!
up=false
for _ in $(seq 1 600); do
  kill -0 "$vault_pid" 2>/dev/null || { vault_pid=""; tail_log "$state/vault.log"; die "Vault exited at start"; }
  if "$vault" status >/dev/null 2>&1; then up=true; break; fi
  sleep 0.1
done
$up || { tail_log "$state/vault.log"; die "Vault did not come up within 60s"; }
say "Vault dev server at $VAULT_ADDR, log $state/vault.log"

run() { printf '$ %s\n' "$*"; "$@"; }
echo
run "$vault" plugin register -sha256="$plugin_sha" -version="$plugin_version" \
  -command="$plugin_name" secret "$plugin_name" ||
  die "registering the plugin failed; if Vault says the versions do not match, set PLUGIN_VERSION to the version bin/$plugin_name was built with"
run "$vault" secrets enable -path=biot -plugin-version="$plugin_version" "$plugin_name" ||
  die "enabling the plugin failed"

# Secrets go through stdin (key=-), not the command line.
config=(url="$biot_url")
[ -n "$ca_file" ] && config+=(ca_cert=@"$ca_file")
if $real_biot && [ -n "${BIOT_SERVICE_ID:-}" ] && [ -z "${BIOT_USERNAME:-}" ]; then
  printf '$ %s write biot/config url=%s service_id=%s secret_key=-%s\n' "$vault" "$biot_url" "$BIOT_SERVICE_ID" "${ca_file:+ ca_cert=@$ca_file}"
  printf '%s' "$BIOT_SECRET_KEY" | "$vault" write biot/config "${config[@]}" service_id="$BIOT_SERVICE_ID" secret_key=- ||
    die "writing biot/config failed (see Vault's message above)"
else
  user=${BIOT_USERNAME:-$sandbox_user}
  password=${BIOT_PASSWORD:-${sandbox_password:-}}
  printf '$ %s write biot/config url=%s username=%s password=-%s\n' "$vault" "$biot_url" "$user" "${ca_file:+ ca_cert=@$ca_file}"
  printf '%s' "$password" | "$vault" write biot/config "${config[@]}" username="$user" password=- ||
    die "writing biot/config failed (see Vault's message above)"
fi
echo
run "$vault" read biot/creds || die "reading biot/creds failed"

cat <<EOF

The BioT secrets engine is up at biot/. In another terminal:

  export VAULT_ADDR=$VAULT_ADDR
  export VAULT_TOKEN=root
  export PATH="$(dirname "$vault"):\$PATH"   # the vault CLI

  vault read biot/creds
  vault read biot/config
  vault path-help biot/creds

Logs: $state/vault.log$( $real_biot || printf '\n      %s' "$state/sandbox.log")
Press Ctrl-C to stop.
EOF

# Stay up until Ctrl-C, or until Vault or the sandbox exits on its own.
while :; do
  if ! kill -0 "$vault_pid" 2>/dev/null; then
    vault_pid=""
    tail_log "$state/vault.log"
    die "Vault exited"
  fi
  if [ -n "$sandbox_pid" ] && ! kill -0 "$sandbox_pid" 2>/dev/null; then
    sandbox_pid=""
    tail_log "$state/sandbox.log"
    die "the sandbox exited"
  fi
  sleep 1 &
  wait $! || true
done
