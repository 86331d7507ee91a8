"""`python -m agent_runtime` on its own: registers with the real server, survives rooms deleted under its
jobs, and Ctrl-C ends it (no leftover)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest
from livekit import api, rtc

from backend.settings import Settings
from backend.tokens import participant_token
from devstack.stack_env import Stack
from tests.conftest import PY, agent_runtime_process

pytestmark = pytest.mark.integration


# Seen here with the thread executor: the SDK killed the whole worker (FFI panic, then SIGTERM) ~25-30 s
# after a room was deleted while its agent was still connecting. Waiting past that is the test.
FFI_PANIC_DELAY = 35.0


@pytest.fixture
def standalone_worker(stack: Stack) -> Iterator[subprocess.Popen[str]]:
    with agent_runtime_process(stack) as worker:
        yield worker


def test_standalone_worker_registers_and_stops_on_ctrl_c(standalone_worker: subprocess.Popen[str]) -> None:
    standalone_worker.send_signal(signal.SIGINT)
    assert standalone_worker.wait(timeout=15) == 0


def test_rooms_deleted_under_joining_agents_do_not_kill_the_worker(
    stack: Stack, standalone_worker: subprocess.Popen[str]
) -> None:
    settings = Settings(livekit_url=stack.livekit_ws_url, api_key=stack.api_key, api_secret=stack.api_secret)
    asyncio.run(_delete_rooms_while_agents_join(settings, stack.agent_name, rooms=40))
    time.sleep(FFI_PANIC_DELAY)
    assert standalone_worker.poll() is None, "the worker died after rooms were deleted under its jobs"
    assert asyncio.run(_agent_joins(settings, stack.agent_name)), "the worker is alive but no longer takes jobs"


async def _delete_rooms_while_agents_join(settings: Settings, agent_name: str, rooms: int) -> None:
    async with api.LiveKitAPI(settings.http_url, settings.api_key, settings.api_secret) as lk:
        for i in range(rooms):
            name = f"churn-{os.getpid()}-{i}"
            room = rtc.Room()
            token = participant_token(settings, identity="u", room=name, agent_name=agent_name)
            await room.connect(settings.ws_url, token, rtc.RoomOptions(auto_subscribe=False))
            await _agent_listed(lk, name, within=5.0)  # listed, but typically still connecting its media
            await room.disconnect()
            await lk.room.delete_room(api.DeleteRoomRequest(room=name))


async def _agent_joins(settings: Settings, agent_name: str) -> bool:
    name = f"after-churn-{os.getpid()}"
    room = rtc.Room()
    token = participant_token(settings, identity="u", room=name, agent_name=agent_name)
    await room.connect(settings.ws_url, token, rtc.RoomOptions(auto_subscribe=False))
    try:
        async with api.LiveKitAPI(settings.http_url, settings.api_key, settings.api_secret) as lk:
            return await _agent_listed(lk, name, within=20.0)
    finally:
        await room.disconnect()
        async with api.LiveKitAPI(settings.http_url, settings.api_key, settings.api_secret) as lk:
            await lk.room.delete_room(api.DeleteRoomRequest(room=name))


def test_missing_settings_are_named() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIVEKIT_")}
    result = subprocess.run([PY, "-m", "agent_runtime"], cwd="/", env=env, capture_output=True, text=True)
    assert result.returncode == 2
    assert "invalid LiveKit settings (set them in agent-runtime/.env, .env)" in result.stderr
    for name in ("LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET"):
        assert f"{name} is not set" in result.stderr


async def _agent_listed(lk: api.LiveKitAPI, room: str, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        listed = await lk.room.list_participants(api.ListParticipantsRequest(room=room))
        if any(p.kind == api.ParticipantInfo.Kind.AGENT for p in listed.participants):
            return True
        await asyncio.sleep(0.02)
    return False
