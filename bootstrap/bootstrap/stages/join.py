"""Stage 4: a participant joins with the livekit rtc SDK, and the server reports it ACTIVE
(media transport connected), not merely signalled."""

from __future__ import annotations

import time

from livekit import rtc

from bootstrap.context import RunContext
from bootstrap.lookups import find_active, poll_until
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
    await poll_until(lambda: find_active(ctx, ctx.room_name, ctx.identity), POLL_INTERVAL)
    return f"{ctx.identity} ACTIVE in {ctx.room_name}"
