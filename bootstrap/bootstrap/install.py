"""Install what the native stack needs: Debian packages for Redis/PostgreSQL and a livekit-server
built with the Go toolchain at the pinned tag. Each step is skipped when its result is already there."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path

from bootstrap.stack import TOOLS_DIR, Stack

APT_PACKAGES = {"redis-server": "redis-server", "postgresql": "postgres"}


class InstallError(RuntimeError):
    """A prerequisite is missing and cannot be installed here; the message says how to get it."""


def postgres_bin_dir() -> Path | None:
    """Debian installs PostgreSQL's server binaries off PATH, under /usr/lib/postgresql/<major>/bin."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("postgres")
    return Path(on_path).parent if on_path else None


def missing_packages() -> list[str]:
    missing = [] if shutil.which("redis-server") else ["redis-server"]
    if postgres_bin_dir() is None:
        missing.append("postgresql")
    return missing


def ensure_packages() -> None:
    missing = missing_packages()
    if not missing:
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise InstallError(
            f"missing {' '.join(missing)}: install them (Debian/Ubuntu: `sudo apt-get install {' '.join(missing)}`;"
            f" macOS: `brew install redis postgresql@15`), or use Docker (`make up` picks it when an engine answers)"
        )
    _progress(f"installing {' '.join(missing)} from Debian's packages")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    cmd = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing]
    subprocess.run(cmd, check=True, env=env)


def livekit_server_binary(stack: Stack) -> Path:
    """Where the pinned build lives; a new tag gets a new folder, so a stale binary is never reused."""
    return TOOLS_DIR / f"livekit-server-{stack.livekit_version}" / "server"


def ensure_livekit_server(stack: Stack) -> Path:
    binary = livekit_server_binary(stack)
    if binary.exists():
        return binary
    if not shutil.which("go"):
        raise InstallError(
            "livekit-server needs the Go toolchain to build (https://go.dev/dl/), "
            "or on macOS `brew install livekit`, or Docker"
        )
    module = f"github.com/livekit/livekit-server/cmd/server@{stack.livekit_version}"
    _progress(f"building livekit-server {stack.livekit_version} with `go install {module}` (first time: ~2 min)")
    env = {**os.environ, "CGO_ENABLED": "0", "GOBIN": str(binary.parent)}
    result = subprocess.run(["go", "install", module], env=env)
    if result.returncode != 0 or not binary.exists():
        raise InstallError(f"`go install {module}` failed (exit {result.returncode}); see the output above")
    return binary


def _progress(message: str) -> None:
    print(f"… {message}", file=sys.stderr, flush=True)
