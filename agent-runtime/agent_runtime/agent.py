"""The agent worker: a livekit-agents AgentServer whose session is the echo agent (agent_runtime.echo): no model
and no outside service, but it echoes audio and data and answers RPCs, so the data plane can be proven."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from livekit import agents

from agent_runtime.echo import EchoAgent
from backend.settings import DEFAULT_AGENT_NAME

# stdlib logging, not structlog: jobs may run in processes of their own, where livekit-agents forwards stdlib
# records to the worker's process (and so to its configured output); structlog's default would print to stdout.
log = logging.getLogger("agent_runtime")


# The echo worker's capacity on this machine's 2 cores, from the held-load curve (`make bench-capacity`,
# docs/scaling.md): the largest number of rooms held at once with audio p95 <= 300 ms and no marker lost was 4 in
# three runs of four (3 in the fourth; 5 crossed a limit in all four), with every participant and livekit-server
# on the same cores.
MAX_JOBS = 4
# A hair under 1.0: livekit-agents sums per-job shares (load / jobs) to decide, and float rounding of
# (max_jobs - 1)/max_jobs + 1/max_jobs must neither admit job max_jobs + 1 nor refuse job max_jobs.
LOAD_THRESHOLD = 1.0 - 1e-6
# How long a job waits for its room's sid after connecting (the server sends it with the join: at once, in practice).
SID_WAIT = 5.0


@dataclass(frozen=True)
class WorkerConfig:
    """How create_worker builds the AgentServer (named apart from livekit-agents' own WorkerOptions)."""

    ws_url: str
    api_key: str
    api_secret: str = field(repr=False)
    agent_name: str = DEFAULT_AGENT_NAME
    # Bounded: livekit-agents' default (16 retries, up to 10 s apart) can stall for minutes.
    max_retry: int = 2
    # PROCESS: each job in its own process, so one job's failure stays its own. Measured here: with THREAD,
    # a room deleted while its agent was still connecting made the rtc SDK panic ~25 s later and SIGTERM
    # the whole worker, every other job with it (tests/test_agent_runtime_integration.py). THREAD starts
    # jobs fastest and suits a short-lived in-process worker (the bootstrap's).
    job_executor: agents.JobExecutorType = agents.JobExecutorType.PROCESS
    # Job runners kept warm. A cold process runner costs seconds (importing livekit-agents); under load
    # runners are created one after another, so warm as many as jobs run at once.
    idle_runners: int = 1
    # The most jobs it holds at once (0: no limit). Its reported load is its share of them, and at 1.0 it takes
    # no more: the server then says no worker is available, instead of every room it holds degrading. The
    # standalone worker (python -m agent_runtime) runs with MAX_JOBS unless AGENT_MAX_JOBS says otherwise, and the
    # held load with --max-jobs; an in-process worker that runs a known number of jobs (the bootstrap's single run
    # and throughput load, the harness plugin's) needs none.
    max_jobs: int = 0
    # Modules the job processes' forkserver imports first (a job-process worker only): devstack.agent_jobs gives
    # the one that keeps them from running as root when this process is.
    preload_modules: tuple[str, ...] = ()


Session = Callable[[agents.JobContext], Awaitable[None]]


async def echo_session(ctx: agents.JobContext) -> None:
    """Join the room as the echo agent and return: livekit-agents keeps the job alive until the room ends."""
    agent = EchoAgent(ctx.room)
    agent.attach_audio_echo()
    agent.attach_data_echo()
    await ctx.connect(auto_subscribe=agents.AutoSubscribe.AUDIO_ONLY)
    if await left_a_replaced_room(ctx):
        return
    agent.serve_ping()
    agent.serve_hearing()
    agent.serve_receiver()
    await agent.announce_ready()
    log.info("agent %s joined %s", ctx.room.local_participant.identity, ctx.room.name)


async def left_a_replaced_room(ctx: agents.JobContext) -> bool:
    """True, once the job has ended, when the room it joined is not the one it was dispatched to: that room was
    deleted before or while the agent connected, and its join (the server creates rooms on join) made a new one of
    the same name. The rtc SDK retries a join whose peer connection never came up (the deleted room closed it), so
    the retry lands in a fresh room ~15 s later. Staying there would leave a job that never ends, for as long as
    the worker runs (it counts against MAX_JOBS) and a room nobody asked for: measured, 10 rooms deleted under
    joining agents were all back 15 s later, each with its job. A new room nobody else is in is deleted (this
    join made it); one somebody joined is left to them (their own dispatch serves it)."""
    dispatched = ctx.job.room.sid
    try:
        joined = await asyncio.wait_for(ctx.room.sid, SID_WAIT)
    except TimeoutError:
        return False  # the server never said: nothing to compare (the SDK's own reconnects stay in charge)
    if not dispatched or joined == dispatched:
        return False
    log.info("room %s (%s) is gone: this join made %s; leaving", ctx.room.name, dispatched, joined)
    if not ctx.room.remote_participants:
        await ctx.delete_room()
    ctx.shutdown(reason=f"room {dispatched} deleted before the agent joined")
    return True


# A no-op agent needs no VAD or end-of-turn model; livekit-agents otherwise loads them (~244 MB) into the
# worker process before the first job: measured here, that halves the single run's dispatch (0.47 -> 0.21 s).
# setdefault: an agent that does use them can still turn preloading back on.
os.environ.setdefault("LIVEKIT_AGENTS_PRELOAD_LOCAL_INFERENCE", "0")


def job_share(max_jobs: int) -> Callable[[agents.AgentServer], float]:
    """The load function: the share of `max_jobs` the worker's running jobs take (0.0 always when max_jobs is 0).
    Jobs, not CPU: livekit-agents' default (this machine's CPU, averaged over 2.5 s) counts whatever else runs on
    the host - here the bootstrap's participants - and reacts only after a burst of jobs landed."""

    def load(server: agents.AgentServer) -> float:
        return len(server.active_jobs) / max_jobs if max_jobs else 0.0

    return load


def create_worker(options: WorkerConfig, session: Session = echo_session) -> agents.AgentServer:
    """An AgentServer running `session` for each job, with `options`' executor and warm runners, an
    ephemeral health port, and a load that counts jobs against `max_jobs` (never CPU, so CPU spikes on a 2-core
    box never refuse a job), full at LOAD_THRESHOLD."""
    server = agents.AgentServer(
        ws_url=options.ws_url,
        api_key=options.api_key,
        api_secret=options.api_secret,
        job_executor_type=options.job_executor,
        # No more warm than it may run: with no job running, livekit-agents counts each job it said yes to but has
        # not started yet as load_threshold / num_idle_processes, so a burst would otherwise pass max_jobs.
        num_idle_processes=min(options.idle_runners, options.max_jobs) if options.max_jobs else options.idle_runners,
        port=0,
        host="127.0.0.1",
        load_fnc=job_share(options.max_jobs),
        load_threshold=LOAD_THRESHOLD,
        max_retry=options.max_retry,
        preload_modules=list(options.preload_modules),
    )
    server.rtc_session(session, agent_name=options.agent_name)
    return server


__all__ = ["LOAD_THRESHOLD", "MAX_JOBS", "Session", "WorkerConfig", "create_worker", "echo_session", "job_share"]
