"""The agent worker: a livekit-agents AgentServer whose session is the echo agent (agent_runtime.echo): no model
and no outside service, but it echoes audio and data and answers RPCs, so the data plane can be proven."""

from __future__ import annotations

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


Session = Callable[[agents.JobContext], Awaitable[None]]


async def echo_session(ctx: agents.JobContext) -> None:
    """Join the room as the echo agent and return: livekit-agents keeps the job alive until the room ends."""
    agent = EchoAgent(ctx.room)
    agent.attach_audio_echo()
    agent.attach_data_echo()
    await ctx.connect(auto_subscribe=agents.AutoSubscribe.AUDIO_ONLY)
    agent.serve_ping()
    agent.serve_hearing()
    await agent.announce_ready()
    log.info("agent %s joined %s", ctx.room.local_participant.identity, ctx.room.name)


# A no-op agent needs no VAD or end-of-turn model; livekit-agents otherwise loads them (~244 MB) into the
# worker process before the first job: measured here, that halves the single run's dispatch (0.47 -> 0.21 s).
# setdefault: an agent that does use them can still turn preloading back on.
os.environ.setdefault("LIVEKIT_AGENTS_PRELOAD_LOCAL_INFERENCE", "0")


def create_worker(options: WorkerConfig, session: Session = echo_session) -> agents.AgentServer:
    """An AgentServer running `session` for each job, with `options`' executor and warm runners, an
    ephemeral health port and a constant load, so CPU spikes on a 2-core box never refuse a job."""
    server = agents.AgentServer(
        ws_url=options.ws_url,
        api_key=options.api_key,
        api_secret=options.api_secret,
        job_executor_type=options.job_executor,
        num_idle_processes=options.idle_runners,
        port=0,
        host="127.0.0.1",
        load_fnc=lambda: 0.0,
        max_retry=options.max_retry,
    )
    server.rtc_session(session, agent_name=options.agent_name)
    return server


__all__ = ["Session", "WorkerConfig", "create_worker", "echo_session"]
