"""Stage 3: the backend's token module mints a participant token for a fresh room, with an explicit
dispatch of the worker's agent; the token verifies with the same key and carries those grants."""

from __future__ import annotations

from datetime import timedelta

from livekit import api

from backend.tokens import participant_token, shorten_token
from bootstrap.context import RunContext
from bootstrap.result import StageFailure

TOKEN_TTL = timedelta(minutes=10)


async def run(ctx: RunContext, *, ttl: timedelta = TOKEN_TTL) -> str:
    """`ttl`: a deployment elsewhere gets the hour users' tokens live, so a clock a little behind still joins."""
    ctx.token = participant_token(
        ctx.settings, identity=ctx.identity, room=ctx.room_name, ttl=ttl, agent_name=ctx.agent_name
    )
    claims = api.TokenVerifier(ctx.settings.api_key, ctx.settings.api_secret).verify(ctx.token)
    dispatched = [a.agent_name for a in claims.room_config.agents] if claims.room_config else []
    if claims.video is None or claims.video.room != ctx.room_name or dispatched != [ctx.agent_name]:
        raise StageFailure(
            f"the minted token does not carry the expected grants (room={claims.video and claims.video.room!r}, "
            f"agents={dispatched})",
            "check backend/backend/tokens.py: participant_token must grant room_join for the room and add the dispatch",
        )
    return f"{shorten_token(ctx.token)} for {ctx.identity}, dispatch {ctx.agent_name!r}"
