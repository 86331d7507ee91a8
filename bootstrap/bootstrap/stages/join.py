"""Stage 4: a participant joins with the livekit rtc SDK, and the server reports it ACTIVE
(media transport connected), not merely signalled."""

from __future__ import annotations

import asyncio
import time

from livekit import api, rtc

from bootstrap.context import RunContext
from bootstrap.result import StageFailure

POLL_INTERVAL = 0.1


async def run(ctx: RunContext) -> str:
    ctx.room = rtc.Room()
    await ctx.room.connect(ctx.settings.ws_url, ctx.token, rtc.RoomOptions(auto_subscribe=False))
    ctx.rooms_joined.add(ctx.room.name)
    if ctx.room.name != ctx.room_name:
        raise StageFailure(
            f"the token joined room {ctx.room.name!r}, not this run's room {ctx.room_name!r}",
            "mint the token for the room being joined: participant_token(..., room=<that room>)",
        )
    ctx.joined_at = time.monotonic()
    while True:
        participant = await _find(ctx)
        if participant and participant.state == api.ParticipantInfo.State.ACTIVE:
            break
        await asyncio.sleep(POLL_INTERVAL)
    return f"{ctx.identity} ACTIVE in {ctx.room_name}"


async def _find(ctx: RunContext) -> api.ParticipantInfo | None:
    listing = await ctx.api.room.list_participants(api.ListParticipantsRequest(room=ctx.room_name))
    return next((p for p in listing.participants if p.identity == ctx.identity), None)
