"""Stage 5: the worker was dispatched: the SERVER lists an AGENT participant with our agent name
in the room (not the worker's own say-so)."""

from __future__ import annotations

import asyncio
import time

from livekit import api

from bootstrap.context import RunContext
from bootstrap.result import StageFailure

POLL_INTERVAL = 0.1
AGENT_NAME_ATTRIBUTE = "lk.agent_name"


async def run(ctx: RunContext) -> str:
    while not (agent := await find_agent(ctx, ctx.room_name)):
        await asyncio.sleep(POLL_INTERVAL)
    ctx.agent_identity = agent.identity
    latency = time.monotonic() - ctx.joined_at
    return f"agent {agent.identity} ({ctx.agent_name!r}) in the room {latency:.2f}s after the join"


async def find_agent(ctx: RunContext, room: str) -> api.ParticipantInfo | None:
    """The server's listing of an AGENT participant carrying our agent name in `room`, if any."""
    listing = await ctx.api.room.list_participants(api.ListParticipantsRequest(room=room))
    return next(
        (
            p
            for p in listing.participants
            if p.kind == api.ParticipantInfo.Kind.AGENT and p.attributes.get(AGENT_NAME_ATTRIBUTE) == ctx.agent_name
        ),
        None,
    )


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
