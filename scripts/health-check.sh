#!/usr/bin/env bash
# One line per service (PostgreSQL, Redis, LiveKit): up/down, address, and why when down.
# Exit 0 only when all three are up. Same checks as the bootstrap's `services` stage.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m bootstrap.health "$@"
