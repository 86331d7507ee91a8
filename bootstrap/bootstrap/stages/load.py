"""Load mode (--load N): N rooms through the whole path, `--concurrency` at a time. Each room: a token with
an explicit dispatch, a participant joined, the agent seen joining (delivered by the SFU, not the worker's
say-so), its three webhooks verified, then the room deleted. Figures go to ctx.load_figures."""

from __future__ import annotations

import asyncio
import contextlib
import time

from livekit import api, rtc

from backend.tokens import participant_token
from bootstrap.context import RunContext
from bootstrap.load_figures import LoadFigures, summary
from bootstrap.result import StageFailure
from bootstrap.stages.dispatch import find_agent

ROOM_TIMEOUT = 15.0
POLL_INTERVAL = 0.05
WEBHOOKS_PER_ROOM = 3  # room_started, participant_joined (user), participant_joined (agent)


async def run(ctx: RunContext) -> str:
    figures = ctx.load_figures = LoadFigures(ctx.load_rooms, ctx.load_concurrency)
    gate = asyncio.Semaphore(ctx.load_concurrency)
    names = [f"{ctx.room_name}-{i:03d}" for i in range(ctx.load_rooms)]
    started = time.monotonic()
    await asyncio.gather(*(_one_room(ctx, name, gate, figures) for name in names))
    figures.seconds = time.monotonic() - started
    await _count_webhooks_and_leftovers(ctx, names, figures)
    p95 = summary(figures.dispatch_latency)["p95"]
    detail = (
        f"{figures.dispatched}/{figures.rooms} rooms dispatched at {figures.rooms_per_second:.1f} rooms/s, "
        f"webhooks {figures.webhooks_verified}/{figures.webhooks_expected} verified, dispatch p95 "
        f"{p95:.2f}s, {figures.rooms_left} rooms left"
    )
    if not figures.complete:
        raise StageFailure(f"load incomplete: {detail}; first errors: {figures.errors[:3]}", _fix(figures))
    return detail


def _fix(figures: LoadFigures) -> str:
    if figures.dispatched < figures.rooms:
        return "lower --concurrency, or raise the worker's capacity (load_fnc / load_threshold); see `make logs`"
    if figures.webhooks_verified < figures.webhooks_expected:
        return "the server drops webhooks queued > 30 s or > 200 deep: lower --concurrency; see `make logs`"
    return "rooms were left behind: see `make logs` for failed DeleteRoom calls"


async def _one_room(ctx: RunContext, name: str, gate: asyncio.Semaphore, figures: LoadFigures) -> None:
    async with gate:
        room = rtc.Room()
        identity = f"load-user-{name[-3:]}"
        token = participant_token(ctx.settings, identity=identity, room=name, agent_name=ctx.agent_name)
        try:
            async with asyncio.timeout(ROOM_TIMEOUT):
                begun = time.monotonic()
                await room.connect(ctx.settings.ws_url, token, rtc.RoomOptions(auto_subscribe=False))
                joined = time.monotonic()
                figures.joined += 1
                figures.join_latency.append(joined - begun)
                # The server's view, as in the single run's dispatch stage (the SDK's participant_connected
                # event was measured arriving ~2.5 s after the server already listed the agent).
                while not await find_agent(ctx, name):
                    await asyncio.sleep(POLL_INTERVAL)
                figures.dispatched += 1
                figures.dispatch_latency.append(time.monotonic() - joined)
                assert ctx.sink is not None
                await ctx.sink.wait_until(lambda: _verified(ctx, name) >= WEBHOOKS_PER_ROOM)
        except Exception as exc:
            figures.errors.append(f"{name}: {type(exc).__name__}: {exc}"[:200])
        finally:
            await room.disconnect()
            with contextlib.suppress(Exception):
                await ctx.api.room.delete_room(api.DeleteRoomRequest(room=name))


def _verified(ctx: RunContext, room: str) -> int:
    assert ctx.sink is not None
    wanted = {"room_started", "participant_joined"}
    return sum(1 for e in ctx.sink.for_room(room) if e.event in wanted)


async def _count_webhooks_and_leftovers(ctx: RunContext, names: list[str], figures: LoadFigures) -> None:
    assert ctx.sink is not None
    figures.webhooks_expected = WEBHOOKS_PER_ROOM * len(names)
    figures.webhooks_verified = sum(min(_verified(ctx, name), WEBHOOKS_PER_ROOM) for name in names)
    figures.webhooks_received = ctx.sink.received
    rooms = await ctx.api.room.list_rooms(api.ListRoomsRequest(names=names))
    figures.rooms_left = len(rooms.rooms)
