#!/usr/bin/env bash
# Build the lk CLI with the Go toolchain: scripts/build-lk.sh VERSION OUTDIR
# lk needs cgo for its audio console (PortAudio, ALSA): a C compiler plus Debian's libasound2-dev and
# portaudio19-dev; module zips carry no git submodules, hence the portaudio_system build tag.
set -euo pipefail
version="$1"; outdir="$2"
module="github.com/livekit/livekit-cli/v2/cmd/lk@$version"
if ! command -v go >/dev/null; then
  echo "error: building lk needs Go (https://go.dev/dl/); or \`brew install livekit-cli\` on macOS" >&2; exit 2
fi
need=()
dpkg -s libasound2-dev >/dev/null 2>&1 || need+=(libasound2-dev)
dpkg -s portaudio19-dev >/dev/null 2>&1 || need+=(portaudio19-dev)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" pkg-config
  else
    echo "error: lk needs ${need[*]}: sudo apt-get install ${need[*]}" >&2; exit 2
  fi
fi
mkdir -p "$outdir"
echo "… building lk $version with go install (cgo)" >&2
if ! CGO_ENABLED=1 GOBIN="$(cd "$(dirname "$outdir")" && pwd)/$(basename "$outdir")" \
    go install -tags portaudio_system "$module"; then
  echo "error: \`go install $module\` failed (above). If the Go module proxy answers 403 'This module version" >&2
  echo "       is not available', it does not serve livekit-cli here: install lk another way (docs/livekit-setup.md)" >&2
  exit 1
fi
