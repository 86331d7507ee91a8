#!/usr/bin/env bash
# Debian's chromium for the bootstrap's --browser stage (no browser download): installed when missing
# and we are root; otherwise a clear message, and the browser stage stays opt-in.
set -euo pipefail
if command -v chromium >/dev/null || command -v chromium-browser >/dev/null; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "… installing chromium from Debian's packages" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium \
    || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; }
else
  echo "chromium is not installed and cannot be installed here (needs root + apt-get):" >&2
  echo "  Debian/Ubuntu: sudo apt-get install chromium; macOS: brew install --cask chromium." >&2
  echo '  Until then `python -m bootstrap --browser` fails its browser stage; everything else works without it.' >&2
fi
