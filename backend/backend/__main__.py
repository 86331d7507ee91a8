"""`python -m backend`: serve the webhook receiver and /healthz standalone."""

from __future__ import annotations

import argparse
import resource
import sys
from pathlib import Path

import structlog
from aiohttp import web

from backend.app import create_app
from backend.logging import configure_logging, register_secret
from backend.settings import SettingsError, load_settings

ENV_FILES = [Path("backend/.env"), Path(".env")]
SHUTDOWN_TIMEOUT = 2.0


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m backend", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    configure_logging()
    _raise_descriptor_limit()
    try:
        settings = load_settings(ENV_FILES)
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        return 2
    register_secret(settings.api_secret)  # never in a log line, however an error quotes it
    for warning in settings.warnings:
        structlog.get_logger().warning(warning)
    app, _ = create_app(settings)
    # A short shutdown: a sender stalled mid-body must not hold Ctrl-C / SIGTERM for aiohttp's default 60 s.
    web.run_app(app, host=args.host, port=args.port, print=None, shutdown_timeout=SHUTDOWN_TIMEOUT)
    return 0


def _raise_descriptor_limit() -> None:
    """Up to the hard limit: each stalled sender holds a descriptor until its read times out, and the common
    default soft limit (1024, or 256 in some containers) is far below what the kernel allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


if __name__ == "__main__":
    sys.exit(main())
