"""Rooms a session creates carry their creator (pid, start time, boot id) in their metadata; at a session's
start, rooms whose creator is gone (a killed session) are deleted. A live session's rooms (a sibling xdist
worker, pytester's outer session, a colleague's run) and rooms made by anyone else are never touched."""

from __future__ import annotations

import json
import re
import secrets

from livekit import api

from livekit_harness_pytest.process_identity import Creator

METADATA_KEY = "livekit_harness"
EMPTY_TIMEOUT = 60  # seconds: the server drops an abandoned empty room itself too


def room_name(test_name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", test_name.lower()).strip("-")[:40] or "test"
    return f"lkh-{slug}-{Creator.me().pid}-{secrets.token_hex(3)}"


def metadata() -> str:
    return json.dumps({METADATA_KEY: Creator.me().as_dict()})


def creator_of(room: api.Room) -> Creator | None:
    try:
        data = json.loads(room.metadata) if room.metadata else None
    except json.JSONDecodeError:
        return None
    return Creator.from_dict(data.get(METADATA_KEY)) if isinstance(data, dict) else None


async def create(lk: api.LiveKitAPI, name: str) -> api.Room:
    return await lk.room.create_room(api.CreateRoomRequest(name=name, metadata=metadata(), empty_timeout=EMPTY_TIMEOUT))


async def delete(lk: api.LiveKitAPI, name: str) -> None:
    try:
        await lk.room.delete_room(api.DeleteRoomRequest(room=name))
    except api.TwirpError as exc:
        if exc.code != "not_found":
            raise


async def sweep(lk: api.LiveKitAPI) -> list[str]:
    """Delete the rooms whose creating session is gone; their names."""
    rooms = (await lk.room.list_rooms(api.ListRoomsRequest())).rooms
    stale = [r.name for r in rooms if (creator := creator_of(r)) is not None and creator.gone()]
    for name in stale:
        await delete(lk, name)
    return stale
