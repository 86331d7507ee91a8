"""What the stages share: the server's own view of a room's participants, and one bounded poll.
Stages never import each other; they meet here."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from livekit import api

from agent_runtime.echo import READY_ATTRIBUTE
from bootstrap.context import RunContext

AGENT_NAME_ATTRIBUTE = "lk.agent_name"  # set by the server on an agent participant
T = TypeVar("T")


async def poll_until(probe: Callable[[], Awaitable[T | None]], interval: float) -> T:
    """Call `probe` every `interval` seconds until it returns something other than None (or False) and
    return that. Callers bound the wait: every stage runs under asyncio.timeout."""
    while not (found := await probe()):
        await asyncio.sleep(interval)
    return found


async def participants(ctx: RunContext, room: str, lk: api.LiveKitAPI | None = None) -> list[api.ParticipantInfo]:
    """The server's listing of `room` (through `lk`, default the run's API client)."""
    client = lk or ctx.api
    return list((await client.room.list_participants(api.ListParticipantsRequest(room=room))).participants)


async def find_participant(
    ctx: RunContext, room: str, identity: str, lk: api.LiveKitAPI | None = None
) -> api.ParticipantInfo | None:
    return next((p for p in await participants(ctx, room, lk) if p.identity == identity), None)


async def find_active(
    ctx: RunContext, room: str, identity: str, lk: api.LiveKitAPI | None = None
) -> api.ParticipantInfo | None:
    """`identity` in `room` only once the server lists it ACTIVE (media transport connected)."""
    found = await find_participant(ctx, room, identity, lk)
    return found if found and found.state == api.ParticipantInfo.State.ACTIVE else None


def is_our_agent(ctx: RunContext, participant: api.ParticipantInfo) -> bool:
    return (
        participant.kind == api.ParticipantInfo.Kind.AGENT
        and participant.attributes.get(AGENT_NAME_ATTRIBUTE) == ctx.agent_name
    )


async def find_agent(ctx: RunContext, room: str, lk: api.LiveKitAPI | None = None) -> api.ParticipantInfo | None:
    """The server's listing of an AGENT participant carrying our agent name in `room`, if any."""
    return next((p for p in await participants(ctx, room, lk) if is_our_agent(ctx, p)), None)


async def find_ready_agent(ctx: RunContext, room: str, lk: api.LiveKitAPI | None = None) -> api.ParticipantInfo | None:
    """Our agent in `room` once it says (READY_ATTRIBUTE) that its RPC methods are registered."""
    agent = await find_agent(ctx, room, lk)
    if agent is None or agent.attributes.get(READY_ATTRIBUTE) != "true":
        return None
    return agent if agent.state == api.ParticipantInfo.State.ACTIVE else None
