#!/usr/bin/env bash
# Debian's chromium for the bootstrap's --browser stage and its tests (no browser download): installed quietly
# when missing and we are root (apt's output goes to .runtime/install.log, shown only on failure); otherwise a
# clear message and exit 1, so `make test` fails loudly instead of skipping the browser tests.
set -euo pipefail
cd "$(dirname "$0")/.."
if command -v chromium >/dev/null || command -v chromium-browser >/dev/null; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "chromium is not installed and cannot be installed here (needs root + apt-get):" >&2
  echo "  Debian/Ubuntu: sudo apt-get install chromium; macOS: brew install --cask chromium." >&2
  echo '  `python -m bootstrap --browser` and the browser tests need it; everything else works without it.' >&2
  exit 1
fi
log=.runtime/install.log
mkdir -p .runtime
echo "… installing chromium from Debian's packages (about 1 min); log: $log" >&2
install() { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >>"$log" 2>&1; }
if ! install && ! { apt-get update -qq >>"$log" 2>&1 && install; }; then
  echo "error: installing chromium failed; last lines of $log:" >&2
  tail -n 20 "$log" >&2
  exit 1
fi
