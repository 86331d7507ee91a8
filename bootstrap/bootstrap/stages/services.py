"""Stage 1: PostgreSQL, Redis and LiveKit answer their readiness checks (the same as `make health`)."""

from __future__ import annotations

import asyncio
import time

import structlog

from bootstrap.context import RunContext
from bootstrap.health import check_all
from bootstrap.result import StageFailure

POLL_INTERVAL = 0.5
PROGRESS_EVERY = 3.0
log = structlog.get_logger("bootstrap")


async def run(ctx: RunContext) -> str:
    last_progress = time.monotonic()
    down = []
    try:
        while True:
            results = await check_all(ctx.stack)
            down = [r for r in results if not r.up]
            if not down:
                return ", ".join(f"{r.name} {r.address}" for r in results) + " up"
            if time.monotonic() - last_progress >= PROGRESS_EVERY:
                log.info("waiting for services", down=[f"{r.name}: {r.reason}" for r in down])
                last_progress = time.monotonic()
            await asyncio.sleep(POLL_INTERVAL)
    except TimeoutError:
        reasons = "; ".join(f"{r.name} at {r.address}: {r.reason}" for r in down)
        raise StageFailure(
            f"not healthy before the deadline: {reasons}",
            "start the stack with `make up`, then `make status` / `make logs` to see why a service is down",
        ) from None
