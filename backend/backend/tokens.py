"""Participant access tokens, minted with livekit-api's AccessToken."""

from __future__ import annotations

from datetime import timedelta

from livekit import api

from backend.settings import Settings

DEFAULT_TTL = timedelta(hours=1)


def participant_token(
    settings: Settings,
    *,
    identity: str,
    room: str,
    ttl: timedelta = DEFAULT_TTL,
    agent_name: str | None = None,
    name: str | None = None,
) -> str:
    """A JWT that lets `identity` join `room` (and only it) for `ttl`.

    With `agent_name`, the token carries an explicit dispatch of that agent in its room configuration;
    the server honours it only when this join creates the room, so pass a fresh room name.
    """
    token = (
        api.AccessToken(settings.api_key, settings.api_secret)
        .with_identity(identity)
        .with_name(name or identity)
        .with_ttl(ttl)
        .with_grants(api.VideoGrants(room_join=True, room=room))
    )
    if agent_name:
        dispatch = api.RoomAgentDispatch(agent_name=agent_name)
        token = token.with_room_config(api.RoomConfiguration(agents=[dispatch]))
    return token.to_jwt()


def shorten_token(token: str) -> str:
    """A token shortened for logs: enough to tell two apart, useless to an attacker."""
    return f"{token[:10]}…({len(token)} chars)"
