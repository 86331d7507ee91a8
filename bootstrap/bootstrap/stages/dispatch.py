"""Stage 5: the worker was dispatched: the SERVER lists an AGENT participant with our agent name
in the room (not the worker's own say-so)."""

from __future__ import annotations

import asyncio
import time

from bootstrap.context import RunContext
from bootstrap.lookups import find_agent, poll_until
from bootstrap.result import StageFailure

POLL_INTERVAL = 0.1


async def run(ctx: RunContext) -> str:
    agent = await poll_until(lambda: find_agent(ctx, ctx.room_name), POLL_INTERVAL)
    ctx.agent_identity = agent.identity
    latency = time.monotonic() - ctx.joined_at
    return f"agent {agent.identity} ({ctx.agent_name!r}) in the room {latency:.2f}s after the join"


async def on_timeout(ctx: RunContext) -> StageFailure:
    """Why no agent came: no dispatch recorded, or a dispatch that no worker took."""
    try:
        dispatches = await asyncio.wait_for(ctx.api.agent_dispatch.list_dispatch(ctx.room_name), 2.0)
    except Exception as exc:
        return StageFailure(
            f"no agent joined room {ctx.room_name}; listing its dispatches failed too ({type(exc).__name__}: {exc})",
            "check the server is still up (`make status`, `make logs`)",
        )
    worker_alive = ctx.worker_task is not None and not ctx.worker_task.done()
    if not dispatches:
        return StageFailure(
            f"the server recorded no agent dispatch for room {ctx.room_name}",
            "the token's dispatch only applies when the join creates the room: use a fresh room name",
        )
    if not worker_alive:
        return StageFailure(
            f"dispatch of {ctx.agent_name!r} is pending but no worker is running to take it",
            "start the worker (`make worker`) or check why it exited in the log above",
        )
    return StageFailure(
        f"dispatch of {ctx.agent_name!r} is pending and no worker registered under that name took it "
        f"(server log: 'not dispatching agent job since no worker is available')",
        f"register a worker with agent_name={ctx.agent_name!r} (LIVEKIT_AGENT_NAME), or dispatch the name one has",
    )
