"""Stage 1: PostgreSQL, Redis and LiveKit answer their readiness checks (the same as `make health`).

A refused connection (nothing listens at the address) is a network fault, kind `network`, naming the address: at
once with `refused_at_once` (the canary's: a node that refuses now is this run's failure), else once the stage's
time ran out (the single run waits for a stack that is still starting, whose ports refuse until they listen)."""

from __future__ import annotations

import asyncio
import time
from urllib.parse import urlparse

import structlog

from bootstrap.context import RunContext
from bootstrap.result import Kind, StageFailure
from devstack.health import ServiceHealth, check_all
from devstack.ports import port_owner

POLL_INTERVAL = 0.5
PROGRESS_EVERY = 3.0
log = structlog.get_logger("bootstrap")


def _livekit_address(ctx: RunContext) -> tuple[str, int]:
    """LiveKit is checked where .env points (LIVEKIT_URL); the databases where stack.env puts them."""
    url = urlparse(ctx.settings.http_url)
    return url.hostname or ctx.stack.host, url.port or 80


async def run(ctx: RunContext, *, refused_at_once: bool = False) -> str:
    last_progress = time.monotonic()
    while True:
        results = await check_all(ctx.stack, _livekit_address(ctx))
        down = [r for r in results if not r.up]
        if not down:
            return ", ".join(f"{r.name} {r.address}" for r in results) + " up"
        if refused_at_once and any(r.refused for r in down):
            raise _failure(results, "not healthy")
        if time.monotonic() - last_progress >= PROGRESS_EVERY:
            log.info("waiting for services", down=[f"{r.name}: {r.reason}" for r in down])
            last_progress = time.monotonic()
        await asyncio.sleep(POLL_INTERVAL)


def _owner(address: str) -> str:
    """Who holds a port that does not answer as expected: a stray process, or nobody."""
    host, _, port = address.rpartition(":")
    if host not in ("127.0.0.1", "localhost"):
        return ""
    owner = port_owner(int(port))
    return f" (port held by {owner})" if owner else ""


async def run_now(ctx: RunContext) -> str:
    """`run` with a refused connection failing at once (the canary's services stage)."""
    return await run(ctx, refused_at_once=True)


async def on_timeout(ctx: RunContext) -> StageFailure:
    return _failure(await check_all(ctx.stack, _livekit_address(ctx)), "not healthy before the deadline")


def _failure(results: list[ServiceHealth], what: str) -> StageFailure:
    """What is down and why; kind network when a connection was refused (else the runner's: a timeout)."""
    reasons = "; ".join(f"{r.name} at {r.address}: {r.reason}{_owner(r.address)}" for r in results if not r.up)
    refused = [r for r in results if not r.up and r.refused]
    return StageFailure(
        f"{what}: {reasons or 'all up only after the deadline'}",
        "start the stack with `make up`, then `make status` / `make logs` to see why a service is down"
        + (
            f"; nothing listens at {', '.join(r.address for r in refused)}: check the port in LIVEKIT_URL "
            "(.env) and stack.env"
            if refused
            else ""
        ),
        Kind.NETWORK if refused else None,
    )
