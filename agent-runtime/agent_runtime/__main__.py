"""`python -m agent_runtime`: run the echo worker until Ctrl-C, with settings from `.env` (the backend's
settings loader: every problem listed at once) and the backend's logging set-up. It takes at most
`AGENT_MAX_JOBS` jobs at once (default agent_runtime.agent.MAX_JOBS, the knee measured here; 0: no limit)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path

import structlog
from livekit.agents import AgentServer

from agent_runtime.agent import MAX_JOBS, WorkerConfig, create_worker
from agent_runtime.ffi_exit import exit_without_finalization
from backend.logging import configure_logging, register_secret
from backend.settings import SettingsError, load_settings

ENV_FILES = [Path("agent-runtime/.env"), Path(".env")]


def main() -> int:
    configure_logging()
    try:
        settings = load_settings(ENV_FILES)
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        return 2
    register_secret(settings.api_secret)
    log = structlog.get_logger("agent_runtime")
    for warning in settings.warnings:
        log.warning(warning)
    # On by default: above the knee measured here the worker refuses jobs (the server says no worker is
    # available) instead of every room it holds degrading (docs/scaling.md).
    max_jobs = os.environ.get("AGENT_MAX_JOBS", str(MAX_JOBS))
    if not max_jobs.isdigit():
        print(f"AGENT_MAX_JOBS={max_jobs!r}: give a whole number of jobs (default {MAX_JOBS}, this machine's knee; "
              "0: no limit)", file=sys.stderr)  # fmt: skip
        return 2
    config = WorkerConfig(
        ws_url=settings.ws_url,
        api_key=settings.api_key,
        api_secret=settings.api_secret,
        agent_name=settings.agent_name,
        max_jobs=int(max_jobs),  # the most jobs at once (docs/scaling.md, make bench-capacity)
    )
    server = create_worker(config)
    # Its job limit (0: none) and its health port (GET /worker: its load and active jobs; ephemeral, so said once
    # known).
    server.on("worker_registered", lambda wid, _info: log.info(
        "registered", id=wid, agent_name=settings.agent_name, max_jobs=config.max_jobs,
        health_port=server.worker_info.http_port))  # fmt: skip
    asyncio.run(_run_until_signal(server))
    return 0


async def _run_until_signal(server: AgentServer) -> None:
    """Ctrl-C / SIGTERM close the worker (its jobs end, it unregisters) instead of being swallowed."""
    loop = asyncio.get_running_loop()
    closing: list[asyncio.Task[None]] = []

    def close_once() -> None:
        if not closing:
            closing.append(loop.create_task(server.aclose()))

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, close_once)
    with contextlib.suppress(asyncio.CancelledError):
        await server.run()
    if closing:
        await closing[0]


if __name__ == "__main__":
    exit_without_finalization(main())
