"""The data-plane stages fail on their own, naming the direction that broke, against REAL agent variants
registered under names of their own (the stages are unchanged: only which agent the token dispatches differs),
and against a participant that publishes silence."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Iterator

import numpy as np
import pytest
from livekit import agents, rtc

from agent_runtime.agent import WorkerConfig, create_worker
from agent_runtime.echo import SAMPLE_RATE, EchoAgent
from bootstrap import audio_probe, runner
from bootstrap.context import RunContext
from bootstrap.result import RunResult, Status
from devstack.stack_env import Stack
from tests.conftest import agent_runtime_process, make_context, stages_with

pytestmark = pytest.mark.integration
Session = Callable[[agents.JobContext], Awaitable[None]]


async def listens_but_never_echoes(ctx: agents.JobContext) -> None:
    agent = EchoAgent(ctx.room)
    agent.attach_audio_listener()
    agent.attach_data_echo()
    await ctx.connect(auto_subscribe=agents.AutoSubscribe.AUDIO_ONLY)
    agent.serve_ping()
    agent.serve_hearing()
    await agent.announce_ready()


async def has_no_ping_method(ctx: agents.JobContext) -> None:
    agent = EchoAgent(ctx.room)
    agent.attach_audio_echo()
    agent.attach_data_echo()
    await ctx.connect(auto_subscribe=agents.AutoSubscribe.AUDIO_ONLY)
    agent.serve_hearing()
    await agent.announce_ready()


def worker_running(session: Session) -> Callable[[RunContext], Awaitable[str]]:
    """A worker stage that registers `session` under the run's agent name (in-process, like the real one)."""

    async def run(ctx: RunContext) -> str:
        config = WorkerConfig(ctx.settings.ws_url, ctx.settings.api_key, ctx.settings.api_secret, ctx.agent_name,
                              job_executor=agents.JobExecutorType.THREAD, idle_runners=0)  # fmt: skip
        ctx.worker = create_worker(config, session=session)
        registered = asyncio.Event()
        ctx.worker.on("worker_registered", lambda *_: registered.set())
        ctx.worker_task = asyncio.create_task(ctx.worker.run())
        await asyncio.wait_for(registered.wait(), 10)
        return f"{session.__name__} registered"

    return run


async def run_with_agent(session: Session, name: str) -> tuple[RunResult, RunContext]:
    ctx = make_context(timeout=30)
    ctx.agent_name = name
    return await runner.run(ctx, stages_with(worker=worker_running(session))), ctx


def failure(result: RunResult) -> tuple[str, str]:
    failed = [s for s in result.stages if s.status is Status.FAIL]
    assert len(failed) == 1, result
    return failed[0].name, failed[0].cause


async def test_an_agent_that_never_echoes_fails_media_naming_the_agent_to_participant_direction(stack: Stack) -> None:
    result, ctx = await run_with_agent(listens_but_never_echoes, "variant-listens-only")
    name, cause = failure(result)
    assert name == "media"
    assert cause.startswith("agent → participant audio: no echo: the agent heard us"), cause
    assert ctx.data is not None and ctx.data.in_order  # data still crossed both ways


async def test_an_agent_without_the_ping_method_fails_data_naming_it(stack: Stack) -> None:
    result, _ = await run_with_agent(has_no_ping_method, "variant-no-ping")
    name, cause = failure(result)
    assert name == "data"
    assert "has no RPC method 'bootstrap.ping' (UNSUPPORTED_METHOD)" in cause, cause
    assert cause.startswith("participant → agent RPC")


async def test_a_participant_publishing_silence_is_told_the_agent_heard_no_signal(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    def silence(index: int, offset: int) -> rtc.AudioFrame:
        samples = np.zeros(audio_probe.SAMPLES_PER_FRAME, dtype=np.int16)
        return rtc.AudioFrame(samples.tobytes(), SAMPLE_RATE, 1, audio_probe.SAMPLES_PER_FRAME)

    monkeypatch.setattr(audio_probe, "marker_frame", silence)
    ctx = make_context(timeout=30)
    name, cause = failure(await runner.run(ctx, stages_with()))
    assert name == "media"
    assert cause.startswith("the agent heard no signal:"), cause


@pytest.fixture
def separate_runtime(stack: Stack) -> Iterator[str]:
    """`python -m agent_runtime` in a process of its own, registered under a name of its own; its name."""
    name = f"separate-runtime-{os.getpid()}"
    with agent_runtime_process(stack, name):
        yield name


async def test_the_stages_pass_against_a_separate_agent_runtime(separate_runtime: str) -> None:
    """Everything the agent reports travels over the SFU: the same stages pass against `python -m agent_runtime`
    in a process of its own (its own name, so no other worker takes the job)."""

    async def already_running(ctx: RunContext) -> str:
        return f"python -m agent_runtime registered as {separate_runtime!r}"

    ctx = make_context(timeout=30)
    ctx.agent_name = separate_runtime
    result = await runner.run(ctx, stages_with(worker=already_running))
    assert result.passed, result
    assert ctx.audio is not None and ctx.audio.heard["peak_rms"] > 0
