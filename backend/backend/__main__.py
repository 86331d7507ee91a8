"""`python -m backend`: serve the webhook receiver and /healthz standalone."""

from __future__ import annotations

import argparse
import asyncio
import resource
import signal
import sys
from pathlib import Path

import structlog

from backend.app import create_app
from backend.logging import configure_logging, register_secret
from backend.serving import ACCEPT_BATCH, MAX_CONNECTIONS, Listener
from backend.settings import SettingsError, load_settings

ENV_FILES = [Path("backend/.env"), Path(".env")]
SPARE_DESCRIPTORS = 32  # beyond the connections: the listener, logs, the interpreter's own files


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m backend", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    configure_logging()
    descriptors = _raise_descriptor_limit()
    try:
        settings = load_settings(ENV_FILES)
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        return 2
    register_secret(settings.api_secret)  # never in a log line, however an error quotes it
    for warning in settings.warnings:
        structlog.get_logger().warning(warning)
    app, _ = create_app(settings)
    # Fewer connections than descriptors: past the cap a sender gets 503 at once, never a full descriptor table.
    cap = max(1, min(MAX_CONNECTIONS, descriptors - SPARE_DESCRIPTORS - ACCEPT_BATCH))
    asyncio.run(_serve(Listener(app, args.host, args.port, max_connections=cap, access_log=True)))
    return 0


async def _serve(listener: Listener) -> None:
    """Until SIGINT or SIGTERM; then a short shutdown (SHUTDOWN_TIMEOUT): a sender stalled mid-body must not
    hold the stop for aiohttp's default 60 s."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await listener.start()
    try:
        await stop.wait()
    finally:
        await listener.stop()


def _raise_descriptor_limit() -> int:
    """Up to the hard limit: each stalled sender holds a descriptor until its read times out, and the common
    default soft limit (1024, or 256 in some containers) is far below what the kernel allows. The new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


if __name__ == "__main__":
    sys.exit(main())
