"""Drills (--cluster --drill NAME): a part of the cluster goes away on purpose; what recovers, and how fast.

node-loss     the node hosting a live room (a; the worker is on b) goes away, killed (SIGKILL: its sockets reset)
              and then cut off (nftables drops everything on its host: no reset, as when a host vanishes).
              Figures for each: when GET / stopped answering 200, what the participant's SDK said and when
              (reconnecting, disconnected), and whether rejoining the same room through the surviving node gets
              a working room (agent dispatched again, data plane passing) and how long after the fault; then
              when the audio is clean again (`clean_s`): no audio marker lost and its quality under the WARN
              thresholds (bootstrap.audio_quality) over CLEAN_AUDIO_S of audio in a row (consecutive clean
              checks: one of the participant that stayed, whose audio flows that long; about three fresh joins'),
              checked by the participant that stayed (else a fresh join) every SAMPLE_EVERY s for CLEAN_WINDOW s
              after the room first worked; `clean_s` is when the first of those clean checks began.
redis-outage  the cluster's Redis stopped for 5 s, then for 40 s. Figures for each: every node's GET / over time
              (200 / 406 / …), how long after Redis returned the nodes were ready and registered again, whether
              the worker re-registered, and how long until a new room worked end to end.

Verdict: PASS when the fault was observed, every figure was measured and the cluster was restored at the end
(restarted if it did not recover by itself). "Recovered: no" is a figure, never a failure of the drill. A
drill that could not inject its fault, or left the cluster broken, FAILS.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from livekit import api

from agent_runtime.echo import FRAME_MS
from backend.tokens import participant_token
from bootstrap import audio_quality
from bootstrap.audio_probe import PERIOD_FRAMES
from bootstrap.context import RunContext
from bootstrap.lookups import find_ready_agent, poll_until
from bootstrap.modes.cluster.cluster_probe import (
    WORKER_LOG,
    RoomCheck,
    check_room,
    node_api,
    node_status,
    redis_answers,
    redis_command,
    registered,
    room_works,
)
from bootstrap.remote_participant import SdkClient
from bootstrap.result import StageFailure, Status
from devstack import native_cluster
from devstack.nodes import Node, client_host, nodes

PLACEMENT_TRIES = 12  # rooms created until one lands on the victim (placement is random: 1 in 2 each)
WATCH = 30.0  # how long the participant's SDK is watched after the fault
RECOVERY_WINDOW = 40.0  # how long rejoining / new rooms are tried after the fault (or after Redis returned)
CLEAN_WINDOW = 30.0  # how long after the room first worked its audio is checked until clean
# Clean again means clean over this much audio in a row, not one exchange's ~0.8 s: a re-syncing pipeline can pass
# one short check between lossy ones. 2 s is a sentence or two of a user's; the stayed participant's check runs
# its audio this long, so one clean check of it covers the window (the drill ~1.3 s longer per fault).
CLEAN_AUDIO_S = 2.0
RESTORE_WAIT = 30.0
SAMPLE_EVERY = 0.5
OUTAGES = (5.0, 40.0)
FIX = "see .runtime/livekit-*/*.log and .runtime/cluster-worker/worker.log; `make cluster-down && make cluster-up`"


def _always_restore(ctx: RunContext) -> None:
    """However the drill ends (Ctrl-C mid-fault included), the cluster is whole again before the run exits."""

    async def restore() -> None:
        await asyncio.to_thread(native_cluster.repair, ctx.stack)

    ctx.closers.append(restore)


@dataclass
class DrillFigures:
    """A drill's figures, per fault it injected (node-loss: "killed", "cut off"; redis-outage: "5s", "40s")."""

    name: str
    faults: dict[str, dict[str, Any]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, **self.faults}


async def run_node_loss(ctx: RunContext, drill: DrillFigures) -> str:
    _always_restore(ctx)
    victim, survivor = nodes(ctx.stack)  # the worker registered through b: it survives a's loss
    summary = []
    for way in ("killed", "cut off"):
        figures = drill.faults[way] = await _lose_node(ctx, victim, survivor, way)
        recovered = f"recovered in {figures['recovered_s']:.1f} s" if figures["recovered"] else "recovered: no"
        if figures.get("clean_s") is not None:
            recovered += f", audio clean at {figures['clean_s']:.1f} s"
        elif figures["recovered"]:
            recovered += f", audio not clean within {CLEAN_WINDOW:.0f} s"
        heard = _what_the_participant_was_told(figures["participant"])
        summary.append(f"{way}: GET / {figures['fault_observed']} after {figures['fault_observed_s']:.1f} s, "
                       f"{heard}, {recovered} through node {survivor.name}")  # fmt: skip
    return "; ".join(summary)


async def _lose_node(ctx: RunContext, victim: Node, survivor: Node, way: str) -> dict[str, Any]:
    room = await _room_on(ctx, victim, survivor, f"{ctx.room_name}-{way.replace(' ', '')}")
    watcher, agent, before = await _participant_in(ctx, room, survivor)
    try:
        await watcher.start_watch(WATCH)
        fault_at = time.monotonic()
        await asyncio.to_thread(_inject, ctx, victim, way, True)
        observed, observed_s = await _until_not_ready(victim, fault_at)
        participant = await watcher.end_watch(WATCH)
        stale = frozenset({agent})
        recovery = None
        if participant.get("reconnected_s") is not None:  # its SDK found the room again by itself: does it work?
            recovery = await _reconnected_works(ctx, watcher, survivor, room, fault_at, agent)
        if recovery is None:
            recovery = await _rejoin(ctx, survivor, room, fault_at, stale)
        if recovery["recovered"]:
            stayed = watcher if recovery.get("how", "").startswith("the participant's SDK") else None
            recovery |= await _until_clean(ctx, survivor, room, fault_at, stayed)
    finally:
        await watcher.close()
    restored_s = await _restore_node(ctx, victim, way)
    return {"fault": way, "before": before, "fault_observed": observed, "fault_observed_s": observed_s,
            "participant": participant, **recovery, "restored_s": restored_s}  # fmt: skip


def _what_the_participant_was_told(told: dict[str, Any]) -> str:
    names = ("reconnecting_s", "reconnected_s", "disconnected_s")
    events = [f"{name.removesuffix('_s')} after {told[name]:.1f} s" for name in names if told.get(name) is not None]
    return "participant " + (", ".join(events) if events else f"told nothing within {WATCH:.0f} s")


def _inject(ctx: RunContext, victim: Node, way: str, on: bool) -> None:
    if way == "killed":
        if on:
            native_cluster.kill(ctx.stack, victim.service)
        else:
            native_cluster.start(ctx.stack, victim.service)
    else:
        native_cluster.cut_off(victim.host, on)


async def _room_on(ctx: RunContext, host: Node, via: Node, prefix: str) -> str:
    """A room placed on `host` (created through `via` until the node selector picks it)."""
    async with node_api(ctx, via) as lk:
        for attempt in range(PLACEMENT_TRIES):
            name = f"{prefix}-{attempt}"
            await lk.room.create_room(api.CreateRoomRequest(name=name))
            ctx.rooms_joined.add(name)
            if (await redis_command(ctx, "HGET", "room_node_map", name)).decode() == host.node_id():
                await lk.agent_dispatch.create_dispatch(
                    api.CreateAgentDispatchRequest(agent_name=ctx.agent_name, room=name)
                )
                return name
            await lk.room.delete_room(api.DeleteRoomRequest(room=name))
    raise StageFailure(f"no room landed on node {host.name} in {PLACEMENT_TRIES} tries: the fault cannot be "
                       "aimed at the room's host", "check both nodes are registered (the nodes stage)")  # fmt: skip


async def _participant_in(ctx: RunContext, room: str, entry: Node) -> tuple[SdkClient, str, dict[str, Any]]:
    """The participant whose SDK will be watched, joined through `entry`, its data working with the agent
    before the fault (reliable packets in order, RPCs); the agent's identity; the data plane's figures."""
    client = await SdkClient.start(client_host(ctx.stack).exec_argv, entry.ws_url)
    ctx.closers.append(client.close)
    # Its token dispatches the agent, as the app's tokens do: that applies whenever a join creates the room,
    # which is what a reconnect does once the room's node is gone.
    token = participant_token(ctx.settings, identity="drill-user", room=room, agent_name=ctx.agent_name)
    joined = await client.join(token, 6.0)
    if not joined["joined"]:
        raise StageFailure(f"before the fault, the participant could not join {room}: {joined['error']}", FIX)
    async with node_api(ctx, entry) as lk:
        async with asyncio.timeout(10.0):
            agent = await poll_until(lambda: find_ready_agent(ctx, room, lk), 0.1)
    exchanged = await client.exchange(agent.identity)
    data = exchanged["data"] or {}
    if not data.get("reliable_in_order") or data.get("rpc_calls") != 20:
        raise StageFailure(f"before the fault, data did not cross the cluster: {exchanged['failure']}", FIX)
    return client, agent.identity, _brief(exchanged) | {"failure": exchanged["failure"]}


async def _until_not_ready(node: Node, since: float) -> tuple[str, float]:
    """The first GET / answer other than 200 after the fault, and when; ("200", …) if none in 10 s."""
    deadline = since + 10.0
    while (status := await node_status(node)) == "200" and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    return status, round(time.monotonic() - since, 2)


async def _reconnected_works(
    ctx: RunContext, watcher: SdkClient, survivor: Node, room: str, since: float, agent_before: str
) -> dict[str, Any] | None:
    """The participant that reconnected by itself (its SDK rejoined the room, recreated on the surviving node):
    an agent in it, either the same job reconnected by its own SDK or one dispatched again (the participant's
    token carries the dispatch, which applies when a join recreates the room), and the data plane with it.
    None if no agent came."""
    async with node_api(ctx, survivor) as lk:
        try:
            async with asyncio.timeout(10.0):
                agent = await poll_until(lambda: find_ready_agent(ctx, room, lk), 0.1)
        except TimeoutError:
            return None
    same = agent.identity == agent_before
    how = {"how": "the participant's SDK reconnected, the room recreated on the surviving node",
           "agent": "the same job, reconnected by its SDK" if same else "dispatched again"}  # fmt: skip
    exchanged = await watcher.exchange(agent.identity)
    if not room_works(exchanged):
        return {"recovered": False, "recovered_s": None, **how, "rejoin_error": exchanged["failure"]}
    return {"recovered": True, "recovered_s": round(time.monotonic() - since, 2), **how, "rejoin": _brief(exchanged)}


async def _rejoin(ctx: RunContext, survivor: Node, room: str, since: float, stale: frozenset[str]) -> dict[str, Any]:
    """Rejoin the lost room through the surviving node until it works end to end with an agent dispatched
    again (not the one from before, which may still be listed), or the window ends."""
    attempts, last, recovered_s = await _until_a_room_works(
        lambda attempt: check_room(ctx, survivor, room, f"rejoin-{attempt}", stale), since
    )
    if recovered_s is not None:
        return {"recovered": True, "recovered_s": recovered_s, "how": "a new join", "rejoin_attempts": attempts,
                "rejoin": _brief(last.figures)}  # fmt: skip
    return {"recovered": False, "recovered_s": None, "rejoin_attempts": attempts, "rejoin_error": last.error}


def audio_seconds(figures: dict[str, Any]) -> float:
    """How much audio a check timed: its markers from the first echoed on (set-up excluded), one every 60 ms."""
    audio = figures.get("audio") or {}
    markers = int(audio.get("markers_sent") or 0) - int(audio.get("setup_lost") or 0)
    return max(0, markers) * PERIOD_FRAMES * FRAME_MS / 1000


@dataclass
class CleanStreak:
    """Consecutive clean checks, until their audio covers CLEAN_AUDIO_S: when the first of them began."""

    need_s: float = CLEAN_AUDIO_S
    began: float | None = None
    audio_s: float = 0.0

    def add(self, started: float, clean: bool, audio_s: float) -> bool:
        """One check (started at `started`, clean or not, `audio_s` of audio): whether the window is now covered.
        A check that is not clean starts the count again."""
        if not clean:
            self.began, self.audio_s = None, 0.0
            return False
        self.began = started if self.began is None else self.began
        self.audio_s += audio_s
        return self.audio_s >= self.need_s


def audio_clean(figures: dict[str, Any]) -> bool:
    """A room check whose audio is clean: every marker after set-up came back, and its quality (both ways) is
    under the WARN thresholds."""
    audio = figures.get("audio") or {}
    if audio.get("first_echo_s") is None or audio.get("lost_after_setup"):
        return False
    return audio_quality.judge(audio.get("quality") or {})[0] is Status.PASS


async def _until_clean(
    ctx: RunContext, survivor: Node, room: str, since: float, stayed: SdkClient | None
) -> dict[str, Any]:
    """Once the room works again: its audio checked until clean, or CLEAN_WINDOW is over: the participant that
    stayed (its SDK reconnected) exchanging with the agent again, what its user hears; else a participant joining
    afresh through the surviving node. Clean once consecutive clean checks covered CLEAN_AUDIO_S of audio: when
    the first of them began (seconds after the fault), how many checks, the last one's figures."""
    agent = await _agent_in(ctx, survivor, room) if stayed is not None else None

    async def check(attempt: int) -> tuple[bool, dict[str, Any]]:
        if stayed is not None and agent is not None:
            exchanged = await stayed.exchange(agent, CLEAN_AUDIO_S)
            return room_works(exchanged), exchanged
        fresh = await check_room(ctx, survivor, room, f"clean-{attempt}", frozenset())
        return fresh.works, fresh.figures

    deadline, attempts, streak = time.monotonic() + CLEAN_WINDOW, 0, CleanStreak()
    clean_s: float | None = None
    while True:
        attempts += 1
        started = time.monotonic()
        works, figures = await check(attempts)
        if streak.add(started, works and audio_clean(figures), audio_seconds(figures)):
            clean_s = round((streak.began or started) - since, 2)
            break
        if time.monotonic() + SAMPLE_EVERY >= deadline:
            break
        if streak.began is None:  # within a clean streak the next check follows at once: the audio in a row
            await asyncio.sleep(SAMPLE_EVERY)
    checked_by = "the participant that stayed" if stayed is not None and agent is not None else "a fresh join"
    return {"clean_s": clean_s, "clean_attempts": attempts, "clean_checked_by": checked_by,
            "clean_audio_s": round(streak.audio_s, 2), "clean_check": _brief(figures)}  # fmt: skip


async def _agent_in(ctx: RunContext, survivor: Node, room: str) -> str | None:
    async with node_api(ctx, survivor) as lk:
        try:
            async with asyncio.timeout(10.0):
                return (await poll_until(lambda: find_ready_agent(ctx, room, lk), 0.1)).identity
        except TimeoutError:
            return None


async def _until_a_room_works(
    attempt: Callable[[int], Awaitable[RoomCheck]], since: float
) -> tuple[int, RoomCheck, float | None]:
    """`attempt(n)` for n = 1, 2, … until its room works or RECOVERY_WINDOW after `since` is over: how many
    attempts, the last one, and when (seconds after `since`) a room worked, or None."""
    attempts = 0
    while True:
        attempts += 1
        last = await attempt(attempts)
        if last.works:
            return attempts, last, round(time.monotonic() - since, 2)
        if time.monotonic() - since + SAMPLE_EVERY >= RECOVERY_WINDOW:
            return attempts, last, None
        await asyncio.sleep(SAMPLE_EVERY)


def _brief(figures: dict[str, Any]) -> dict[str, Any]:
    audio, data = figures.get("audio") or {}, figures.get("data") or {}
    return {
        "dispatch_s": figures.get("dispatch_s"),
        "audio_round_trip_s": audio.get("round_trip_s"),
        "rpc_round_trip_s": data.get("rpc_round_trip_s"),
        "reliable_in_order": data.get("reliable_in_order"),
        "audio_lost_after_setup": audio.get("lost_after_setup"),
        "audio_quality": audio_quality.describe(audio.get("quality") or {}),
        "failure": figures.get("failure"),
    }


async def _restore_node(ctx: RunContext, node: Node, way: str) -> float:
    started = time.monotonic()
    try:
        await asyncio.to_thread(_inject, ctx, node, way, False)
    except Exception as exc:
        raise StageFailure(f"the drill could not bring node {node.name} back: {exc}", FIX) from None
    await _until_whole(ctx, f"node {node.name} after it was {way}")
    return round(time.monotonic() - started, 2)


async def _until_whole(ctx: RunContext, what: str) -> None:
    """Both nodes ready and registered, or a FAIL: the drill must leave the cluster as it found it."""
    deadline = time.monotonic() + RESTORE_WAIT
    while time.monotonic() < deadline:
        statuses = [await node_status(n) for n in nodes(ctx.stack)]
        if statuses == ["200", "200"] and all([await registered(ctx, n) for n in nodes(ctx.stack)]):
            return
        await asyncio.sleep(SAMPLE_EVERY)
    raise StageFailure(f"the cluster was not whole again within {RESTORE_WAIT:.0f} s ({what})", FIX)


async def run_redis_outage(ctx: RunContext, drill: DrillFigures) -> str:
    _always_restore(ctx)
    summary = []
    for seconds in OUTAGES:
        figures = drill.faults[f"{seconds:.0f}s"] = await _redis_outage(ctx, seconds)
        recovered = f"new rooms work {figures['recovered_s']:.1f} s after" if figures["recovered"] else "recovered: no"
        seen = sorted({s for row in figures["timeline"] for s in row["status"].values()})
        worker = "the worker re-registered" if figures["worker_reregistered"] else "the worker stayed registered"
        summary.append(f"{seconds:.0f} s outage: GET / {'/'.join(seen)}; nodes ready "
                       f"{figures['nodes_ready_s']} s after Redis returned; {recovered}; {worker}"
                       + ("; restarted the nodes" if figures["restarted_nodes"] else ""))  # fmt: skip
    return "; ".join(summary)


async def _redis_outage(ctx: RunContext, seconds: float) -> dict[str, Any]:
    cluster_nodes = nodes(ctx.stack)
    worker_lines = _worker_registrations()
    started = time.monotonic()
    await asyncio.to_thread(native_cluster.stop, ctx.stack, "cluster-redis")
    if await redis_answers(ctx):
        raise StageFailure("Redis still answered after it was stopped: the fault was not injected", FIX)
    timeline = await _sample(cluster_nodes, started, started + seconds)
    try:
        await asyncio.to_thread(native_cluster.start, ctx.stack, "cluster-redis")
    except Exception as exc:
        raise StageFailure(f"the drill could not start Redis again: {exc}", FIX) from None
    back = time.monotonic()
    ready_s = await _until_ready_again(ctx, cluster_nodes, back, timeline, started)
    recovery = await _new_rooms_work(ctx, back, seconds)
    not_ready = {n.name: next((row["t_s"] for row in timeline if row["status"][n.name] != "200"), None)
                 for n in cluster_nodes}  # fmt: skip
    figures = {"outage_s": seconds, "timeline": timeline, "not_ready_after_s": not_ready, "nodes_ready_s": ready_s,
               **recovery, "worker_reregistered": _worker_registrations() > worker_lines,
               "restarted_nodes": False}  # fmt: skip
    if ready_s is None or not recovery["recovered"]:
        figures["restarted_nodes"] = True  # it did not recover by itself: restore it for whatever runs next
        for node in cluster_nodes:
            await asyncio.to_thread(native_cluster.stop, ctx.stack, node.service)
            await asyncio.to_thread(native_cluster.start, ctx.stack, node.service)
    await _until_whole(ctx, f"after the {seconds:.0f} s Redis outage")
    return figures


async def _sample(cluster_nodes: list[Node], since: float, until: float) -> list[dict[str, Any]]:
    """Each node's GET / every SAMPLE_EVERY seconds; only the rows where something changed are kept."""
    timeline: list[dict[str, Any]] = []
    while time.monotonic() < until:
        await _sample_once(cluster_nodes, since, timeline)
        await asyncio.sleep(SAMPLE_EVERY)
    return timeline


async def _sample_once(cluster_nodes: list[Node], since: float, timeline: list[dict[str, Any]]) -> dict[str, str]:
    statuses = await asyncio.gather(*(node_status(n) for n in cluster_nodes))
    status = {n.name: s for n, s in zip(cluster_nodes, statuses, strict=True)}
    if not timeline or timeline[-1]["status"] != status:
        timeline.append({"t_s": round(time.monotonic() - since, 1), "status": status})
    return status


async def _until_ready_again(
    ctx: RunContext, cluster_nodes: list[Node], back: float, timeline: list[dict[str, Any]], since: float
) -> float | None:
    """Seconds after Redis returned until every node answers 200 and is registered again; None if not within
    RECOVERY_WINDOW."""
    while time.monotonic() - back < RECOVERY_WINDOW:
        status = await _sample_once(cluster_nodes, since, timeline)
        if set(status.values()) == {"200"} and all([await registered(ctx, n) for n in cluster_nodes]):
            return round(time.monotonic() - back, 2)
        await asyncio.sleep(SAMPLE_EVERY)
    return None


async def _new_rooms_work(ctx: RunContext, back: float, seconds: float) -> dict[str, Any]:
    entry = nodes(ctx.stack)[0]
    attempts, last, recovered_s = await _until_a_room_works(
        lambda attempt: check_room(ctx, entry, f"{ctx.room_name}-redis{seconds:.0f}-{attempt}", "after-redis"), back
    )
    if recovered_s is not None:
        return {"recovered": True, "recovered_s": recovered_s, "room_attempts": attempts, "room": _brief(last.figures)}
    return {"recovered": False, "recovered_s": None, "room_attempts": attempts, "room_error": last.error}


def _worker_registrations() -> int:
    """How many times the worker registered so far (agent_runtime logs a line each time)."""
    try:
        return sum('"registered"' in line for line in WORKER_LOG.read_text(errors="replace").splitlines())
    except FileNotFoundError:
        return 0


@dataclass(frozen=True)
class Drill:
    name: str
    description: str  # for --help
    run: Callable[[RunContext, DrillFigures], Awaitable[str]]


# The drills `--cluster --drill NAME` runs, by name: the one map (the CLI and bench/drills.py read it).
DRILLS: dict[str, Drill] = {
    drill.name: drill
    for drill in (
        Drill("node-loss", "the room's node killed, then cut off", run_node_loss),
        Drill("redis-outage", f"Redis stopped {OUTAGES[0]:.0f} s, then {OUTAGES[1]:.0f} s", run_redis_outage),
    )
}
# A drill's default --timeout: redis-outage waits out 5 + 40 s of outage and each recovery.
DRILL_TIMEOUT = 240.0
