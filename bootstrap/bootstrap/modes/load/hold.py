"""Held load (--load N --hold S): N rooms opened `--concurrency` at a time, then all kept open together for S
seconds with the agent echoing in each, as a worker's rooms are in production. Each room's participant sends
audio markers from its agent's first echo until the hold ends (every marker timed, lost ones counted), and every
few seconds (SAMPLE_INTERVAL) each room is pinged over RPC, the worker's own reported load is read
(GET /worker on its health port) and /proc says what each side uses: this process (every participant, and the
worker's main loop), the job processes (one per room), livekit-server, the machine. Then every room is closed.

A room whose agent never came is told apart by the server's own record: a dispatch with no job means the server
found no worker available (every worker at its load threshold, or none registered); a job without an agent, a
stall. The run passes only when every room held: no failed join, no refused or stalled dispatch, no marker lost,
no RPC failed and audio round trip p95 within AUDIO_P95_LIMIT_S (hold_figures)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import aiohttp
import structlog
from livekit import api, rtc

from backend.logging import redact
from backend.tokens import participant_token
from bootstrap.audio_probe import AudioProbe
from bootstrap.context import RunContext
from bootstrap.data_probe import DataFigures, DataPathError, ping
from bootstrap.lookups import find_agent, find_ready_agent, poll_until
from bootstrap.modes.load import proc_usage
from bootstrap.modes.load.hold_figures import MB, HoldFigures, JobUsage, Sample, SideUsage
from bootstrap.modes.load.rooms import WARMUP_SECONDS, settle_server_agent_cache
from bootstrap.result import StageFailure

log = structlog.get_logger("bootstrap")

SAMPLE_INTERVAL = 2.0  # seconds between sampling rounds during the hold
JOIN_TIMEOUT = 10.0
DISPATCH_WAIT = 10.0  # for the agent to be listed; then the server's dispatch record says why not
READY_WAIT = 10.0
FIRST_ECHO_LIMIT = 5.0
ECHO_WAIT = 1.0  # after the markers stop: the last ones' echoes may still be on their way
POLL_INTERVAL = 0.05
UNBOUNDED = 10**9  # markers after the first echo: the sender runs until the hold ends
CLOSE_WAIT = 5.0  # each room's close (probe, disconnect, delete)


@dataclass
class HoldState:
    """--load N --hold S: N rooms, `concurrency` opened at a time, held together for `hold` seconds, the worker
    taking at most `max_jobs` jobs (0: no limit)."""

    rooms: int
    concurrency: int
    hold: float
    max_jobs: int
    figures: HoldFigures | None = None


@dataclass
class HeldRoom:
    name: str
    room: rtc.Room = field(default_factory=rtc.Room)
    agent: str = ""
    probe: AudioProbe | None = None
    sender: asyncio.Task[Any] | None = None  # the probe's run(): markers until cancelled at the hold's end


async def run(ctx: RunContext, state: HoldState) -> str:
    figures = state.figures = HoldFigures(state.rooms, state.concurrency, state.hold, state.max_jobs)
    rooms = [HeldRoom(f"{ctx.room_name}-{i:03d}") for i in range(state.rooms)]
    figures.warmup_seconds = await settle_server_agent_cache(ctx)
    try:
        started = time.monotonic()
        gate = asyncio.Semaphore(state.concurrency)
        await asyncio.gather(*(_open(ctx, room, gate, figures) for room in rooms))
        figures.open_seconds = time.monotonic() - started
        log.info("rooms open, holding", held=figures.held, rooms=state.rooms, seconds=state.hold)
        await _hold(ctx, [r for r in rooms if r.sender is not None], state.hold, figures)
    finally:
        await asyncio.gather(*(_close(ctx, room) for room in rooms))
    left = await ctx.api.room.list_rooms(api.ListRoomsRequest(names=[r.name for r in rooms]))
    figures.rooms_left = len(left.rooms)
    detail = _detail(figures)
    if crossed := figures.limits_crossed:
        raise StageFailure(f"{detail}; limits crossed: {'; '.join(crossed)}; first errors: {figures.errors[:3]}",
                           _fix(figures))  # fmt: skip
    if figures.rooms_left:
        raise StageFailure(f"{detail}; {figures.rooms_left} rooms left", "see `make logs` for failed DeleteRoom calls")
    return detail


async def on_timeout(ctx: RunContext, state: HoldState) -> StageFailure:
    figures = state.figures
    if figures is None or not figures.warmup_seconds:
        return StageFailure(
            "--timeout ran out while waiting out livekit-server's agent-name refresh, before any room",
            f"raise --timeout (load mode first waits {WARMUP_SECONDS:.1f} s)",
        )
    return StageFailure(
        f"--timeout ran out with {figures.joined}/{figures.rooms} rooms joined, {figures.held} echoing",
        "raise --timeout, or hold fewer rooms or for less time",
    )


def _detail(f: HoldFigures) -> str:
    audio, rpc, dispatch = f.as_dict()["audio"], f.as_dict()["rpc"], f.as_dict()["dispatch_latency"]
    assert isinstance(audio, dict) and isinstance(rpc, dict) and isinstance(dispatch, dict)
    rtt = audio["round_trip_s"]
    cost = f.per_room()
    return (
        f"held {f.held}/{f.rooms} rooms for {f.hold_seconds:g} s (opened in {f.open_seconds:.1f} s): audio round "
        f"trip p50 {rtt['p50'] * 1000:.0f} ms p95 {rtt['p95'] * 1000:.0f} ms over {f.markers_timed} markers, "
        f"{f.markers_lost} lost; RPC p95 {rpc['round_trip_s']['p95'] * 1000:.0f} ms ({f.rpc_failed} failed); "
        f"dispatch p95 {dispatch['p95']:.2f} s, {f.refused} refused; {f.join_failed} joins failed; worker load max "
        f"{f.worker_load_max}; per room CPU: job {cost['cpu_percent_job']} %, participant side "
        f"{cost['cpu_percent_participants']} %, server {cost['cpu_percent_server']} %; job PSS {cost['job_pss_mb']} MB"
    )


def _fix(f: HoldFigures) -> str:
    if f.refused:
        limit = f"its limit of {f.max_jobs} jobs" if f.max_jobs else "its load threshold"
        return (f"the worker is at {limit}: the server found no worker available for the rest (its log: 'no "
                "worker available to handle job'). Hold fewer rooms per worker, or run more workers "
                "(docs/scaling.md)")  # fmt: skip
    if f.join_failed:
        return "joins failed: the server or this machine is saturated; hold fewer rooms (`make logs`)"
    return ("the held rooms degraded: this many rooms is past this machine's capacity (see the samples and the "
            "usage per side in --json); hold fewer, or lower the worker's max_jobs (docs/scaling.md)")  # fmt: skip


async def _open(ctx: RunContext, held: HeldRoom, gate: asyncio.Semaphore, figures: HoldFigures) -> None:
    """Join, wait for the agent, then start the markers; count where it stopped."""
    async with gate:
        identity = f"hold-user-{held.name[-3:]}"
        token = participant_token(ctx.settings, identity=identity, room=held.name, agent_name=ctx.agent_name)
        ctx.rooms_joined.add(held.name)  # cleanup deletes it whatever the outcome
        try:
            begun = time.monotonic()
            async with asyncio.timeout(JOIN_TIMEOUT):
                await held.room.connect(ctx.settings.ws_url, token, rtc.RoomOptions(auto_subscribe=False))
        except Exception as exc:
            figures.join_failed += 1
            figures.errors.append(redact(f"{held.name}: join: {type(exc).__name__}: {exc}")[:200])
            return
        joined = time.monotonic()
        figures.joined += 1
        figures.join_latency.append(joined - begun)
        try:
            async with asyncio.timeout(DISPATCH_WAIT):
                agent = await poll_until(lambda: find_agent(ctx, held.name), POLL_INTERVAL)
        except TimeoutError:
            await _why_no_agent(ctx, held.name, figures)
            return
        figures.dispatched += 1
        figures.dispatch_latency.append(time.monotonic() - joined)
        held.agent = agent.identity
        try:
            await _start_markers(ctx, held)
        except Exception as exc:
            figures.errors.append(redact(f"{held.name}: echo: {type(exc).__name__}: {exc}")[:200])
            return
        figures.held += 1


async def _why_no_agent(ctx: RunContext, room: str, figures: HoldFigures) -> None:
    """No agent within DISPATCH_WAIT: the server's dispatch record has a job (a stall) or none (refused)."""
    try:
        dispatches = await ctx.api.agent_dispatch.list_dispatch(room_name=room)
    except Exception as exc:  # the server's record unreadable: a stall, named
        figures.stalled += 1
        figures.errors.append(
            redact(f"{room}: no agent, dispatch record unreadable: {type(exc).__name__}: {exc}")[:200]
        )
        return
    if any(d.state.jobs for d in dispatches):
        figures.stalled += 1
        figures.errors.append(f"{room}: a job was created but no agent joined within {DISPATCH_WAIT:.0f} s")
    else:
        figures.refused += 1
        figures.errors.append(f"{room}: dispatch refused: the server created no job (no worker available)")


async def _start_markers(ctx: RunContext, held: HeldRoom) -> None:
    """Once the agent serves its RPCs, send markers until cancelled; return once the first echo came back."""
    async with asyncio.timeout(READY_WAIT):
        await poll_until(lambda: find_ready_agent(ctx, held.name), POLL_INTERVAL)
    held.probe = probe = AudioProbe(held.room, held.agent, UNBOUNDED, FIRST_ECHO_LIMIT)
    sender = asyncio.create_task(probe.run(), name=f"markers-{held.name}")
    while probe.figures.first is None and not sender.done():
        await asyncio.sleep(POLL_INTERVAL)
    if probe.figures.first is None:
        with contextlib.suppress(BaseException):
            await sender
        raise TimeoutError(f"no echo of our markers from {held.agent} within {FIRST_ECHO_LIMIT:.0f} s")
    held.sender = sender


class _Meter:
    """What each side's processes used since the last reading, from /proc."""

    def __init__(self, ctx: RunContext) -> None:
        self.pids = {"participants": [os.getpid()], "jobs": list(_job_rooms(ctx)), "server": []}
        url = urlparse(ctx.settings.ws_url)
        if url.hostname in ("localhost", "127.0.0.1", "::1"):  # a server elsewhere is not ours to read
            pid = proc_usage.listener_pid(url.port or (443 if url.scheme == "wss" else 80))
            self.pids["server"] = [pid] if pid else []
        self.cpus = os.cpu_count() or 1
        self.read()

    def read(self) -> None:
        self.at = time.monotonic()
        self.samples = {pid: proc_usage.sample(pid) for pids in self.pids.values() for pid in pids}
        self.machine = proc_usage.machine_ticks()
        self.loop = proc_usage.thread_cpu_seconds(os.getpid(), os.getpid())  # this process's event loop

    def since(self, before: _Meter) -> dict[str, SideUsage]:
        """Each side's CPU (% of one core) between `before`'s reading and this one, and its memory now."""
        seconds = self.at - before.at
        usage = {}
        for side, pids in self.pids.items():
            cpu = [proc_usage.cpu_percent(before.samples.get(p), self.samples.get(p), seconds) for p in pids]
            now = [s for p in pids if (s := self.samples.get(p)) is not None]
            pss = [s.pss_bytes for s in now if s.pss_bytes is not None]
            usage[side] = SideUsage(
                sum(c for c in cpu if c is not None) if any(c is not None for c in cpu) else None,
                sum(s.rss_bytes for s in now) / MB if now else None,
                sum(pss) / MB if pss else None,
            )
        usage["machine"] = SideUsage(proc_usage.busy_percent(before.machine, self.machine) * self.cpus)
        # The participants' event loop: one Python thread, so one core is all it can have.
        loop = None if self.loop is None or before.loop is None or seconds <= 0 else (self.loop - before.loop)
        usage["participants_loop"] = SideUsage(None if loop is None else 100.0 * loop / seconds)
        return usage

    def snapshot(self) -> _Meter:
        copy = object.__new__(_Meter)
        copy.__dict__.update(self.__dict__)
        return copy


def _job_rooms(ctx: RunContext) -> dict[int, str]:
    """The worker's job processes that run a job: pid -> room. livekit-agents has no public list of its job
    processes: its process pool (AgentServer._proc_pool, pinned by uv.lock) is read here, and nothing else."""
    pool = getattr(ctx.worker, "_proc_pool", None)
    found = {}
    for executor in getattr(pool, "processes", []):
        job, pid = executor.running_job, getattr(executor, "pid", None)
        if job is not None and pid:
            found[pid] = job.job.room.name
    return found


async def _hold(ctx: RunContext, held: list[HeldRoom], seconds: float, figures: HoldFigures) -> None:
    """Keep the rooms open for `seconds`, sampling every SAMPLE_INTERVAL; then stop the markers and count them."""
    rounds = max(1, round(seconds / SAMPLE_INTERVAL))
    interval = seconds / rounds
    port = ctx.worker.worker_info.http_port if ctx.worker is not None else 0
    job_rooms = _job_rooms(ctx)
    start = _Meter(ctx)
    previous = start.snapshot()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2.0)) as http:
        for k in range(1, rounds + 1):
            await asyncio.sleep(max(0.0, start.at + k * interval - time.monotonic()))
            sample = Sample(at_s=time.monotonic() - start.at)
            await asyncio.gather(*(_ping(room, sample) for room in held), _worker_load(http, port, sample))
            current = previous.snapshot()
            current.read()
            sample.cpu_percent = {side: u.cpu_percent for side, u in current.since(previous).items()}
            previous = current
            figures.samples.append(sample)
            figures.rpc_round_trip += sample.rpc
            figures.rpc_failed += sample.rpc_failed
    end = previous
    figures.usage = end.since(start)
    figures.jobs = [_job_usage(job_rooms[pid], start.samples.get(pid), end.samples.get(pid), end.at - start.at)
                    for pid in job_rooms if end.samples.get(pid) is not None]  # fmt: skip
    loads = [s.worker_load for s in figures.samples if s.worker_load is not None]
    figures.worker_load_max = round(max(loads), 3) if loads else None
    for room in held:
        assert room.sender is not None
        room.sender.cancel()
    await asyncio.sleep(ECHO_WAIT)
    for room in held:
        _count_markers(room, start.at, interval, figures)


def _job_usage(room: str, before: proc_usage.ProcSample | None, after: proc_usage.ProcSample | None,
               seconds: float) -> JobUsage:  # fmt: skip
    assert after is not None
    pss = None if after.pss_bytes is None else after.pss_bytes / MB
    return JobUsage(room, after.pid, proc_usage.cpu_percent(before, after, seconds) or 0.0, after.rss_bytes / MB, pss)


async def _ping(held: HeldRoom, sample: Sample) -> None:
    data = DataFigures()
    try:
        await ping(held.room, held.agent, 1, data)
    except (DataPathError, rtc.RpcError, ConnectionError, RuntimeError):
        sample.rpc_failed += 1
    sample.rpc += data.rpc_round_trips


async def _worker_load(http: aiohttp.ClientSession, port: int, sample: Sample) -> None:
    """The load the worker reports to the server (livekit-agents' GET /worker; zero fields are left out)."""
    if not port:
        return
    with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
        async with http.get(f"http://127.0.0.1:{port}/worker") as response:
            info = await response.json(content_type=None)
        sample.worker_load = float(info.get("worker_load", 0.0))
        sample.active_jobs = int(info.get("active_jobs", 0))


def _count_markers(held: HeldRoom, hold_start: float, interval: float, figures: HoldFigures) -> None:
    """Every marker from the first echo on, but the last (it may have been cut off mid-pip by the stop): timed or
    lost, in the totals, and in the sampling window it was sent in (markers sent while rooms were still opening
    count in the totals only)."""
    assert held.probe is not None
    audio = held.probe.figures
    first = audio.first
    if first is None:
        return
    lost = 0
    for m in range(first, len(audio.sent) - 1):
        window = int((audio.sent[m] - hold_start) // interval)
        sample = figures.samples[window] if 0 <= window < len(figures.samples) else None
        opening = audio.sent[m] < hold_start
        if m in audio.echoed:
            rtt = audio.echoed[m] - audio.sent[m]
            figures.audio_round_trip.append(rtt)
            figures.markers_timed += 1
            (figures.opening_audio if opening else figures.hold_audio).append(rtt)
            if sample is not None:
                sample.audio.append(rtt)
        else:
            lost += 1
            if opening:
                figures.opening_lost += 1
            else:
                figures.hold_lost += 1
            if sample is not None:
                sample.markers_lost += 1
    figures.markers_lost += lost
    figures.rooms_losing_markers += 1 if lost else 0


async def _close(ctx: RunContext, held: HeldRoom) -> None:
    """Stop the markers, leave, delete the room: each step bounded, each attempted."""
    if held.sender is not None:
        held.sender.cancel()
        with contextlib.suppress(BaseException):
            await held.sender
    with contextlib.suppress(Exception):
        async with asyncio.timeout(CLOSE_WAIT):
            if held.probe is not None:
                await held.probe.close()
    with contextlib.suppress(Exception):
        async with asyncio.timeout(CLOSE_WAIT):
            await held.room.disconnect()
    with contextlib.suppress(Exception):
        async with asyncio.timeout(CLOSE_WAIT):
            await ctx.api.room.delete_room(api.DeleteRoomRequest(room=held.name))
            ctx.rooms_joined.discard(held.name)
