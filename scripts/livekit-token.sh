#!/usr/bin/env bash
# Print a LiveKit join token made by the `lk` CLI, valid 24h.
# Usage: scripts/livekit-token.sh [ROOM] [IDENTITY]      (defaults: test-room test-user)
# Reads LIVEKIT_API_KEY / LIVEKIT_API_SECRET from .env, or the file in LIVEKIT_ENV_FILE (the environment wins). Uses `lk` from PATH, or the
# pinned build from `make lk` in .tools/.
set -euo pipefail
cd "$(dirname "$0")/.."
room="${1:-test-room}"
identity="${2:-test-user}"

env_file="${LIVEKIT_ENV_FILE:-.env}"
if [ -f "$env_file" ]; then
  # Only the variables we need, without overriding what the caller already exported.
  while IFS='=' read -r key value; do
    case "$key" in
      LIVEKIT_URL|LIVEKIT_API_KEY|LIVEKIT_API_SECRET) [ -z "${!key:-}" ] && export "$key=$value" ;;
    esac
  done < <(grep -E '^(LIVEKIT_URL|LIVEKIT_API_KEY|LIVEKIT_API_SECRET)=' "$env_file" || true)
fi
missing=()
for var in LIVEKIT_API_KEY LIVEKIT_API_SECRET; do [ -n "${!var:-}" ] || missing+=("$var"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "error: ${missing[*]} not set: add them to $env_file (run \`make env\` to create .env from .env.example)" >&2
  exit 2
fi

version=$(grep -E '^LIVEKIT_CLI_VERSION=' stack.env | cut -d= -f2)
lk=$(command -v lk || true)
[ -n "$lk" ] || { [ -x ".tools/lk-$version/lk" ] && lk=".tools/lk-$version/lk"; }
if [ -z "$lk" ]; then
  echo "error: the lk CLI is not installed: run \`make lk\`, or \`brew install livekit-cli\` (macOS)," >&2
  echo "       or see docs/livekit-setup.md#the-lk-cli" >&2
  exit 2
fi

# lk reads LIVEKIT_API_KEY / LIVEKIT_API_SECRET from its environment: never the secret on a command line (ps).
export LIVEKIT_API_KEY LIVEKIT_API_SECRET
exec "$lk" token create \
  --join --room "$room" --identity "$identity" --valid-for 24h --token-only
