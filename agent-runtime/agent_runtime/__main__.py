"""`python -m agent_runtime`: run the no-op worker until Ctrl-C, with settings from `.env`."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path

import structlog
from dotenv import load_dotenv
from livekit.agents import AgentServer

from agent_runtime.worker import DEFAULT_AGENT_NAME, WorkerOptions, create_worker

ENV_FILES = [Path("agent-runtime/.env"), Path(".env")]
REQUIRED = ("LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET")


def main() -> int:
    for env_file in ENV_FILES:
        load_dotenv(env_file)
    missing = [name for name in REQUIRED if not os.environ.get(name)]
    if missing:
        files = " or ".join(str(p) for p in ENV_FILES)
        print(f"missing {', '.join(missing)}: set them in {files} (see .env.example)", file=sys.stderr)
        return 2
    options = WorkerOptions(
        ws_url=os.environ["LIVEKIT_URL"],
        api_key=os.environ["LIVEKIT_API_KEY"],
        api_secret=os.environ["LIVEKIT_API_SECRET"],
        agent_name=os.environ.get("LIVEKIT_AGENT_NAME", DEFAULT_AGENT_NAME),
    )
    server = create_worker(options)
    server.on("worker_registered", lambda wid, _info: structlog.get_logger().info("registered", id=wid))
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
    code = main()
    # Skip interpreter finalization: the livekit FFI's threads can abort the process during it.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
