"""`python -m agent_runtime`: run the no-op worker until Ctrl-C, with settings from `.env`."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from pathlib import Path

import structlog
from dotenv import load_dotenv

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
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(server.run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
