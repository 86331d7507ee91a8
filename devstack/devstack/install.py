"""Install what the native stack needs: Debian packages for Redis/PostgreSQL and a livekit-server built with
the Go toolchain at the pinned tag. Each step is skipped when its result is already there. Installers run
quietly into a log under .runtime/; their output is shown only when they fail (the last lines of that log)."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import sys
import time
from pathlib import Path

from devstack.safe_files import ensure_dir, open_private_log, read_private
from devstack.stack_env import RUNTIME_DIR, TOOLS_DIR, Stack

INSTALL_LOG = RUNTIME_DIR / "install.log"
PROGRESS_EVERY = 20.0  # seconds between "still building" lines, so a long build is never silent
FAILURE_TAIL = 20  # log lines shown when an installer fails


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


# What `make paths` needs besides: the client hosts' namespaces and links (ip) and firewalls (nft), the TLS
# front (nginx with its stream module) and the browser's per-profile certificate store (certutil).
PATHS_TOOLS = {"ip": "iproute2", "nft": "nftables", "nginx": "nginx", "certutil": "libnss3-tools"}
NGINX_STREAM_MODULE = Path("/usr/lib/nginx/modules/ngx_stream_module.so")


def missing_paths_packages() -> list[str]:
    missing = [package for tool, package in PATHS_TOOLS.items() if not shutil.which(tool)]
    return missing + ([] if NGINX_STREAM_MODULE.exists() else ["libnginx-mod-stream"])


# The canary's alert rules are checked and unit-tested with promtool, and its integration test runs a real
# Prometheus: Debian's `prometheus` package ships both (2.42 on bookworm).
CANARY_TOOLS = {"promtool": "prometheus", "prometheus": "prometheus"}


# The remote lab's clock faults (make remote-lab-up): libfaketime shifts one process's clock through LD_PRELOAD (the
# harness's: livekit-server is a static Go binary it cannot shift), and backdates the lab's certificates as openssl
# signs them.
REMOTE_LAB_TOOLS = {"faketime": "faketime"}
LIBFAKETIME_GLOB = "/usr/lib/*/faketime/libfaketime.so.1"


def missing_remote_lab_packages() -> list[str]:
    return [package for tool, package in REMOTE_LAB_TOOLS.items() if not shutil.which(tool)]


def missing_canary_packages() -> list[str]:
    return sorted({package for tool, package in CANARY_TOOLS.items() if not shutil.which(tool)})


def ensure_packages(*, paths: bool = False) -> None:
    """The native stack's Debian packages (and with `paths`, what the tests need: the paths check's, the canary's)."""
    missing = missing_packages() + (
        missing_paths_packages() + missing_canary_packages() + missing_remote_lab_packages() if paths else []
    )
    if not missing:
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise InstallError(
            f"missing {' '.join(missing)}: install them (Debian/Ubuntu: `sudo apt-get install {' '.join(missing)}`;"
            f" macOS: `brew install redis postgresql@15`), or use Docker (`make up` picks it when an engine answers)"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    _run_logged(["apt-get", "update", "-qq"], "refreshing Debian's package lists", env)
    install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing]
    _run_logged(install, f"installing {' '.join(missing)} from Debian's packages (about 30 s)", env)


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
    env = {**os.environ, "CGO_ENABLED": "0", "GOBIN": str(binary.parent)}
    what = f"building livekit-server {stack.livekit_version} with `go install {module}` (once; about 2 min)"
    _run_logged(["go", "install", module], what, env)
    if not binary.exists():
        raise InstallError(f"`go install {module}` succeeded but left no {binary}; see {INSTALL_LOG}")
    return binary


def _run_logged(command: list[str], what: str, env: dict[str, str]) -> None:
    """Run `command` with its output appended to INSTALL_LOG; say what it is, say it is still going every
    PROGRESS_EVERY seconds, and on failure raise with the log's last lines."""
    _progress(f"{what}; log: {INSTALL_LOG}")
    ensure_dir(RUNTIME_DIR, mode=0o755, uid=os.geteuid(), gid=os.getegid())
    started = time.monotonic()
    log = open_private_log(INSTALL_LOG)
    try:
        os.write(log, f"\n$ {' '.join(command)}\n".encode())
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env)
        while (code := _wait(process, PROGRESS_EVERY)) is None:
            _progress(f"still {what.split(' (')[0]} ({time.monotonic() - started:.0f} s)")
    finally:
        os.close(log)
    if code != 0:
        tail = "\n".join((read_private(INSTALL_LOG) or "").splitlines()[-FAILURE_TAIL:])
        raise InstallError(f"`{' '.join(command)}` failed (exit {code}); last lines of {INSTALL_LOG}:\n{tail}")
    _progress(f"done in {time.monotonic() - started:.0f} s")


def _wait(process: subprocess.Popen[bytes], seconds: float) -> int | None:
    try:
        return process.wait(seconds)
    except subprocess.TimeoutExpired:
        return None


def _progress(message: str) -> None:
    print(f"… {message}", file=sys.stderr, flush=True)


def ensure_service_user(name: str) -> str:
    """A system account (no login, no home) for a service that must not run as root; created when missing.
    Returns the name. Only called as root: an ordinary user runs every service as themself."""
    try:
        pwd.getpwnam(name)
    except KeyError:
        command = [
            "useradd",
            "--system",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
        ]
        result = subprocess.run([*command, name], capture_output=True, text=True)
        if result.returncode != 0:
            raise InstallError(f"could not create the system user {name!r}: {result.stderr.strip()}") from None
        _progress(f"created the system user {name!r} (no login) to run a service without root")
    return name
