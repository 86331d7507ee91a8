#!/usr/bin/env bash
# Bring the stack up/down with Docker Compose when a Docker engine answers, natively otherwise.
# Usage: scripts/stack.sh up|down|status|logs|cluster-up|cluster-down
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
compose() { docker compose --env-file stack.env "$@"; }

if docker info >/dev/null 2>&1; then
  case "${1:-}" in
    up)
      "$PY" -m bootstrap.native check-config
      compose up --wait --wait-timeout 120 ;;
    down) compose down ;;
    cluster-up) compose --profile cluster up --wait --wait-timeout 120 redis livekit-a livekit-b ;;
    cluster-down) compose --profile cluster stop livekit-a livekit-b ;;
    status) compose ps; "$PY" -m bootstrap.health ;;
    logs) compose logs --tail 40 ;;
    *) echo "usage: $0 up|down|status|logs|cluster-up|cluster-down" >&2; exit 2 ;;
  esac
else
  [ "${1:-}" = up ] && echo "No Docker engine answered (docker info): running the stack natively." >&2
  exec "$PY" -m bootstrap.native "$@"
fi
