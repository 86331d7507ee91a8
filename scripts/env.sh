#!/usr/bin/env bash
# Create each missing .env from its example; never overwrite an existing one.
set -euo pipefail
cd "$(dirname "$0")/.."
for example in .env.example backend/.env.example agent-runtime/.env.example frontend/.env.local.example; do
  target="${example%.example}"
  if [ -e "$target" ]; then
    echo "  kept    $target (exists)"
  else
    cp "$example" "$target"
    echo "  created $target from $example"
  fi
done
