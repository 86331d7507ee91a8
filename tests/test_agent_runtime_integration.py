"""`python -m agent_runtime` on its own: registers with the real server (its job limit on), survives rooms deleted
under its jobs (each job ends, no room comes back, the next job is taken), and Ctrl-C ends it (no leftover)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from livekit import api, rtc

from agent_runtime.agent import MAX_JOBS
from agent_runtime.echo import READY_ATTRIBUTE
from backend.settings import Settings
from backend.tokens import participant_token
from devstack.stack_env import Stack
from tests.conftest import PY, agent_runtime_process

pytestmark = pytest.mark.integration


# Seen here with the thread executor: the SDK killed the whole worker (FFI panic, then SIGTERM) ~25-30 s
# after a room was deleted while its agent was still connecting. Waiting past that is the test.
FFI_PANIC_DELAY = 35.0
# The worker's limit filled, and past it (the rooms past it are refused, no agent listed).
CHURN_ROOMS = MAX_JOBS + 2
# A job whose room was deleted mid-connect ends once the rtc SDK's retried join lands (~15 s after the job
# started, measured; agent_runtime.agent.left_a_replaced_room).
JOBS_END_WITHIN = 30.0


@dataclass
class StandaloneWorker:
    process: subprocess.Popen[str]
    registered: dict[str, Any]  # its registration's log record: id, max_jobs, health_port

    def active_jobs(self) -> int:
        """The jobs it runs, as it reports them (livekit-agents' GET /worker on its health port)."""
        url = f"http://127.0.0.1:{self.registered['health_port']}/worker"
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(json.load(response).get("active_jobs", 0))


@pytest.fixture
def standalone_worker(stack: Stack) -> Iterator[StandaloneWorker]:
    registered: dict[str, Any] = {}
    with agent_runtime_process(stack, registered=registered) as worker:
        yield StandaloneWorker(worker, registered)


def test_standalone_worker_registers_and_stops_on_ctrl_c(standalone_worker: StandaloneWorker) -> None:
    assert standalone_worker.registered["max_jobs"] == MAX_JOBS, "the job limit is on by default"
    standalone_worker.process.send_signal(signal.SIGINT)
    assert standalone_worker.process.wait(timeout=15) == 0


def test_rooms_deleted_under_joining_agents_do_not_kill_the_worker(
    stack: Stack, standalone_worker: StandaloneWorker
) -> None:
    """Rooms deleted while their agents connect (past the worker's job limit): each job ends, no room comes back
    (an agent's retried join would recreate it), and the worker lives on and takes the next job."""
    settings = Settings(livekit_url=stack.livekit_ws_url, api_key=stack.api_key, api_secret=stack.api_secret)
    prefix = f"churn-{os.getpid()}-"
    listed = asyncio.run(_delete_rooms_while_agents_join(settings, stack.agent_name, prefix, CHURN_ROOMS))
    churned = time.monotonic()
    assert listed >= 2, f"only {listed} agents came to the {CHURN_ROOMS} rooms: nothing was deleted under them"
    jobs = _jobs_after(standalone_worker, within=JOBS_END_WITHIN)
    assert jobs == 0, f"{jobs} jobs still running {JOBS_END_WITHIN:.0f} s after their rooms were deleted"
    assert asyncio.run(_rooms_named(settings, prefix)) == [], "a deleted room was recreated by its agent's join"
    time.sleep(max(0.0, FFI_PANIC_DELAY - (time.monotonic() - churned)))
    assert standalone_worker.process.poll() is None, "the worker died after rooms were deleted under its jobs"
    assert asyncio.run(_agent_joins(settings, stack.agent_name)), "the worker is alive but no longer takes jobs"


async def _delete_rooms_while_agents_join(settings: Settings, agent_name: str, prefix: str, rooms: int) -> int:
    """Each room deleted as soon as its agent is listed (typically still connecting its media); how many were."""
    listed = 0
    async with api.LiveKitAPI(settings.http_url, settings.api_key, settings.api_secret) as lk:
        for i in range(rooms):
            name = f"{prefix}{i}"
            room = rtc.Room()
            token = participant_token(settings, identity="u", room=name, agent_name=agent_name)
            await room.connect(settings.ws_url, token, rtc.RoomOptions(auto_subscribe=False))
            listed += await _agent_listed(lk, name, within=5.0)  # not listed: refused, the worker was full
            await room.disconnect()
            await lk.room.delete_room(api.DeleteRoomRequest(room=name))
    return listed


def _jobs_after(worker: StandaloneWorker, within: float) -> int:
    """The worker's job count once it is 0, or when `within` seconds have passed."""
    deadline = time.monotonic() + within
    while (jobs := worker.active_jobs()) and time.monotonic() < deadline:
        time.sleep(0.5)
    return jobs


async def _rooms_named(settings: Settings, prefix: str) -> list[str]:
    async with api.LiveKitAPI(settings.http_url, settings.api_key, settings.api_secret) as lk:
        rooms = await lk.room.list_rooms(api.ListRoomsRequest())
    return [r.name for r in rooms.rooms if r.name.startswith(prefix)]


async def _agent_joins(settings: Settings, agent_name: str) -> bool:
    name = f"after-churn-{os.getpid()}"
    room = rtc.Room()
    token = participant_token(settings, identity="u", room=name, agent_name=agent_name)
    await room.connect(settings.ws_url, token, rtc.RoomOptions(auto_subscribe=False))
    try:
        async with api.LiveKitAPI(settings.http_url, settings.api_key, settings.api_secret) as lk:
            # Ready, not only listed: its job connected, so deleting the room ends it at once (and the worker's
            # Ctrl-C does not wait out a connect).
            return await _agent_listed(lk, name, within=20.0, ready=True)
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


async def _agent_listed(lk: api.LiveKitAPI, room: str, within: float, ready: bool = False) -> bool:
    """The server lists an agent in `room` within `within` seconds (`ready`: one that says it serves its RPCs)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        listed = await lk.room.list_participants(api.ListParticipantsRequest(room=room))
        agents = [p for p in listed.participants if p.kind == api.ParticipantInfo.Kind.AGENT]
        if any(READY_ATTRIBUTE in p.attributes or not ready for p in agents):
            return True
        await asyncio.sleep(0.02)
    return False
