"""Load mode (--load N): N rooms through the whole path, `--concurrency` at a time. Each room: a token with
an explicit dispatch, a participant joined, the agent seen joining (delivered by the SFU, not the worker's
say-so), a few RPC round trips and audio markers echoed by the agent, its three webhooks verified, then the
room deleted. Figures go to the mode's state (LoadState.figures).

Before the rooms, load mode waits out livekit-server's agent-name refresh (see settle_server_agent_cache)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

import structlog
from livekit import api, rtc

from backend.logging import redact
from backend.tokens import participant_token
from bootstrap.audio_probe import AudioPathError, AudioProbe
from bootstrap.context import RunContext
from bootstrap.data_probe import DataFigures, ping
from bootstrap.lookups import find_agent, find_ready_agent, poll_until
from bootstrap.modes.load.load_figures import DeliveryFigures, LoadFigures, RoomTriggers
from bootstrap.result import StageFailure
from bootstrap.stats import summary

log = structlog.get_logger("bootstrap")

ROOM_TIMEOUT = 15.0
POLL_INTERVAL = 0.05
PROGRESS_EVERY = 10  # rooms between progress lines
LOAD_PINGS = 3  # RPC round trips per room
LOAD_MARKERS = 3  # audio markers timed per room after the first echo
FIRST_ECHO_LIMIT = 5.0
WEBHOOKS_PER_ROOM = 3  # room_started, participant_joined (user), participant_joined (agent)

# livekit-server (pkg/agent/client.go) caches which agent names have workers. A worker registering under a
# new name (ours, a moment ago) clears that cache, and the next dispatch starts a refresh that always lasts
# CheckEnabledTimeout, 5 s. Until it ends, every dispatch check - two per room: the room's job and its
# participant's - holds one of the server's 50 agent-client workers, so once ~25 rooms have started inside
# those 5 s, every further dispatch queues until the refresh ends. Measured here without this wait: a burst of
# ~10 dispatches at 1.1-1.9 s around the 25th room (p95 1.1-1.8 s); with it, p95 0.28-0.68 s.
SERVER_AGENT_CHECK_SECONDS = 5.0
# The server publishes a registration after acknowledging it to the worker: let that land before the refresh.
REGISTRATION_PUBLISH_GRACE = 0.25
WARMUP_SECONDS = REGISTRATION_PUBLISH_GRACE + SERVER_AGENT_CHECK_SECONDS + REGISTRATION_PUBLISH_GRACE


@dataclass
class LoadState:
    """--load N: N rooms through the whole path, `concurrency` at a time."""

    rooms: int
    concurrency: int
    figures: LoadFigures | None = None  # set by the load stage, read by the report


async def run(ctx: RunContext, state: LoadState) -> str:
    figures = state.figures = LoadFigures(state.rooms, state.concurrency)
    gate = asyncio.Semaphore(state.concurrency)
    names = _room_names(ctx, state)
    figures.warmup_seconds = await settle_server_agent_cache(ctx)
    figures.started_at = time.monotonic()
    await asyncio.gather(*(_one_room(ctx, name, gate, figures) for name in names))
    figures.seconds = time.monotonic() - figures.started_at
    _count_webhooks(ctx, names, figures)
    rooms = await ctx.api.room.list_rooms(api.ListRoomsRequest(names=names))
    figures.rooms_left = len(rooms.rooms)
    p95 = summary(figures.dispatch_latency)["p95"]
    audio_p95 = summary(figures.audio_round_trip)["p95"]
    webhooks = f"webhooks {figures.webhooks_verified}/{figures.webhooks_expected} verified"
    detail = (
        f"{figures.dispatched}/{figures.rooms} rooms dispatched at {figures.rooms_per_second:.1f} rooms/s, "
        f"{webhooks if ctx.webhook_port else 'webhooks not received here'}, dispatch p95 "
        f"{p95:.2f}s, media and data checked in {figures.media_checked}/{figures.rooms} (audio round trip p95 "
        f"{audio_p95 * 1000:.0f} ms), {figures.rooms_left} rooms left"
    )
    if not figures.complete:
        raise StageFailure(f"load incomplete: {detail}; first errors: {figures.errors[:3]}", _fix(figures))
    return detail


async def on_timeout(ctx: RunContext, state: LoadState) -> StageFailure:
    """How far the load got when --timeout ran out, and the --timeout this pace needs."""
    figures = state.figures
    if figures is None or not figures.started_at:
        return StageFailure(
            "--timeout ran out while waiting out livekit-server's agent-name refresh, before any room",
            f"raise --timeout (load mode first waits {WARMUP_SECONDS:.1f} s)",
        )
    figures.seconds = time.monotonic() - figures.started_at
    _count_webhooks(ctx, _room_names(ctx, state), figures)
    pace = figures.finished / figures.seconds if figures.finished else 0.0
    need = f"about {figures.warmup_seconds + figures.rooms / pace + 10:.0f} s" if pace else "more"
    return StageFailure(
        f"--timeout ran out with {figures.finished}/{figures.rooms} rooms done ({figures.dispatched} dispatched, "
        f"{len(figures.errors)} errors) at {pace:.1f} rooms/s",
        f"raise --timeout: {figures.rooms} rooms at this pace need {need}; or run fewer rooms",
    )


def _room_names(ctx: RunContext, state: LoadState) -> list[str]:
    return [f"{ctx.room_name}-{i:03d}" for i in range(state.rooms)]


async def settle_server_agent_cache(ctx: RunContext) -> float:
    """Start the server's agent-name refresh with a room whose dispatch names no worker (so no job runs),
    and wait until the refresh has ended; return the seconds this took."""
    started = time.monotonic()
    log.info("waiting out livekit-server's agent-name refresh before the load", seconds=WARMUP_SECONDS)
    await asyncio.sleep(REGISTRATION_PUBLISH_GRACE)
    room = f"{ctx.room_name}-warmup"
    ctx.rooms_joined.add(room)  # until deleted below, cleanup deletes it, whatever the outcome
    nobody = api.RoomAgentDispatch(agent_name=f"{ctx.agent_name}-warmup-no-worker")
    await ctx.api.room.create_room(api.CreateRoomRequest(name=room, agents=[nobody]))
    await asyncio.sleep(SERVER_AGENT_CHECK_SECONDS + REGISTRATION_PUBLISH_GRACE)
    await ctx.api.room.delete_room(api.DeleteRoomRequest(room=room))
    ctx.rooms_joined.discard(room)
    return time.monotonic() - started


def _fix(figures: LoadFigures) -> str:
    if figures.dispatched < figures.rooms:
        return "lower --concurrency, or raise the worker's capacity (load_fnc / load_threshold); see `make logs`"
    if figures.media_checked < figures.rooms:
        return "the echo agent's audio or RPC failed in some rooms (first errors above): lower --concurrency"
    if figures.webhooks_verified < figures.webhooks_expected:
        return "the server drops webhooks queued > 30 s or > 200 deep: lower --concurrency; see `make logs`"
    return "rooms were left behind: see `make logs` for failed DeleteRoom calls"


async def _one_room(ctx: RunContext, name: str, gate: asyncio.Semaphore, figures: LoadFigures) -> None:
    async with gate:
        room = rtc.Room()
        identity = f"load-user-{name[-3:]}"
        token = participant_token(ctx.settings, identity=identity, room=name, agent_name=ctx.agent_name)
        # Until it is deleted after a clean finish, cleanup deletes it too: a connect cut short (timeout,
        # Ctrl-C) may still create the room after the delete below.
        ctx.rooms_joined.add(name)
        finished_cleanly = False
        try:
            async with asyncio.timeout(ROOM_TIMEOUT):
                begun = time.monotonic()
                await room.connect(ctx.settings.ws_url, token, rtc.RoomOptions(auto_subscribe=False))
                joined = time.monotonic()
                figures.triggers[name] = RoomTriggers(begun, identity)
                figures.joined += 1
                figures.join_latency.append(joined - begun)
                # The server's view, as in the single run's dispatch stage (the SDK hears of an agent that
                # publishes nothing only in the server's 3-second batch of participant updates).
                agent = await poll_until(lambda: find_agent(ctx, name), POLL_INTERVAL)
                figures.dispatched += 1
                figures.dispatch_latency.append(time.monotonic() - joined)
                await poll_until(lambda: find_ready_agent(ctx, name), POLL_INTERVAL)
                await _check_data_plane(room, agent.identity, figures)
                if ctx.webhook_port:  # 0: no receiver (a deployment elsewhere posting its webhooks elsewhere)
                    await ctx.sink.wait_until(lambda: _verified(ctx, name) >= WEBHOOKS_PER_ROOM)
            finished_cleanly = True
        except Exception as exc:
            figures.errors.append(redact(f"{name}: {type(exc).__name__}: {exc}")[:200])  # they reach the report
        finally:
            await room.disconnect()
            with contextlib.suppress(Exception):
                await ctx.api.room.delete_room(api.DeleteRoomRequest(room=name))
                if finished_cleanly:
                    ctx.rooms_joined.discard(name)
            figures.finished += 1
            if figures.finished % PROGRESS_EVERY == 0 or figures.finished == figures.rooms:
                log.info("load progress", rooms_done=figures.finished, rooms=figures.rooms,
                         dispatched=figures.dispatched, errors=len(figures.errors))  # fmt: skip


async def _check_data_plane(room: rtc.Room, agent: str, figures: LoadFigures) -> None:
    """The single run's data and media checks, short: a few RPCs and audio markers per room."""
    data = DataFigures()
    await ping(room, agent, LOAD_PINGS, data)
    probe = AudioProbe(room, agent, LOAD_MARKERS, FIRST_ECHO_LIMIT)
    try:
        audio = await probe.run()
    finally:
        await probe.close()
    if audio.first is None or audio.lost_after_setup:
        lost = "no echo at all" if audio.first is None else f"markers {audio.lost_after_setup} lost after set-up"
        raise AudioPathError(f"audio from {agent}: {lost}")
    figures.rpc_round_trip += data.rpc_round_trips
    figures.audio_round_trip += audio.round_trips
    figures.media_checked += 1


def _verified(ctx: RunContext, room: str) -> int:
    wanted = {"room_started", "participant_joined"}
    return sum(1 for e in ctx.sink.for_room(room) if e.event in wanted)


def _count_webhooks(ctx: RunContext, names: list[str], figures: LoadFigures) -> None:
    figures.webhooks_expected = WEBHOOKS_PER_ROOM * len(names) if ctx.webhook_port else 0
    figures.webhooks_verified = sum(min(_verified(ctx, name), WEBHOOKS_PER_ROOM) for name in names)
    figures.webhooks_received = ctx.sink.received
    figures.delivery = DeliveryFigures()
    for name, triggers in figures.triggers.items():
        figures.delivery.add_room(ctx.sink.for_room(name), ctx.sink.arrived_at, triggers)
    figures.delivery.add_duplicates(ctx.sink.duplicates_by_room, names)
