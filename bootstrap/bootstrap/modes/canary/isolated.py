"""Each canary run in a process of its own, while the worker stays registered in the canary's process.

Why: the rtc SDK (livekit 1.1.21) keeps native state of a run after its Python objects are gone: an
"AudioSourceCapture" thread and ~1.3 MB a run for the audio sources of both sides, the agent's echo (its room
deleted under it) and the participant's markers (left after AudioSource.aclose() and unpublishing): measured,
+134 MB over 90 runs in one process. So the participant's side of a run lives in a child process that ends with the
run, and the kept worker runs each job in a process of its own (livekit-agents' process executor): nothing of a run
outlives it (bench/canary.py: docs/canary.md).

How: `python -m bootstrap.modes.canary.zygote ARG...` (the canary's own arguments) is started once: it imports
everything and builds the wrapped mode's stages, then forks one child per run. A fork starts a run in milliseconds
where a fresh interpreter would spend ~1.8 s of CPU importing livekit-agents again; it is safe because the zygote is
single-threaded and never starts an event loop or the rtc SDK. One run at a time: while the zygote waits for its
child, the child speaks for it on the same pipes.

Protocol, one JSON object a line (the processes' stdout is a descriptor of its own: their fd 1 is their stderr, so
nothing a library prints can break it):
  zygote -> canary  {"ready": PID}                       once, when it can fork runs
  canary -> zygote  {"run": {"agent_name": NAME}}        the kept worker's agent name, which the token dispatches
  child  -> canary  {"pid": PID}                         first: SIGUSR1 interrupts the run (its cleanup runs)
  child  -> canary  {"worker": BUDGET}                   the worker stage: is the kept worker registered?
  canary -> child   {"detail": ..., "worker_id": ...}    or {"failure": {"cause": ..., "fix": ..., "kind": ...}}
  child  -> canary  {"outcome": {...}}                   Outcome.as_json()
  zygote -> canary  {"exited": CODE}                     the child reaped: the pipes are the zygote's again
The child ignores SIGINT and SIGTERM (a terminal's Ctrl-C, or systemd's stop, reaches the whole group): the canary
decides when a run is interrupted, after its grace.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

import structlog

from bootstrap.context import RunContext
from bootstrap.diagnosis import diagnose
from bootstrap.modes.canary.kept_worker import CanaryWorker
from bootstrap.result import RunResult, StageResult, Status
from bootstrap.runner import CLEANUP_RESERVE

INTERRUPT = signal.SIGUSR1  # to a run's process: interrupt the run (the runner cleans up and reports it)
START_TIMEOUT = 60.0  # the zygote importing everything: ~2 s here, more on a loaded CI machine
REAPED_WAIT = 5.0  # a killed run's process reaped and said so by the zygote
CLOSE_TIMEOUT = 3.0
LINE_LIMIT = 1 << 20  # an outcome line: a few kB
log = structlog.get_logger("bootstrap.canary")


@dataclass
class RunFigures:
    """What a run measured for the histograms: all its process sends back besides the stages' results."""

    first_echo: float | None = None  # audio published -> its first marker back
    audio_round_trips: list[float] = field(default_factory=list)
    audio_quality: dict[str, Any] = field(default_factory=dict)  # bootstrap.audio_quality's figures, each way
    rpc_round_trips: list[float] = field(default_factory=list)
    webhook_delivery: float | None = None  # join returned -> our participant_joined verified

    @classmethod
    def of(cls, ctx: RunContext) -> RunFigures:
        audio, data = ctx.audio, ctx.data
        return cls(
            first_echo=audio.first_echo_s if audio is not None else None,
            audio_round_trips=list(audio.round_trips) if audio is not None else [],
            audio_quality=dict(audio.quality) if audio is not None else {},
            rpc_round_trips=list(data.rpc_round_trips) if data is not None else [],
            webhook_delivery=webhook_delivery(ctx),
        )


def webhook_delivery(ctx: RunContext) -> float | None:
    """From the join returning to our participant_joined verified by the receiver (0 when it came first)."""
    sink = ctx.webhook_sink
    if sink is None or not ctx.joined_at:
        return None
    for event in sink.for_room(ctx.room_name):
        ours = event.event == "participant_joined" and event.participant.identity == ctx.identity
        if ours and (arrived := sink.arrived_at.get(event.id)) is not None:
            return max(0.0, arrived - ctx.joined_at)
    return None


@dataclass
class Outcome:
    """A run as the canary records it: its result (None: interrupted, or its process ended without one)."""

    result: RunResult | None
    figures: RunFigures = field(default_factory=RunFigures)
    sink_error: str = ""  # why the webhook receiver did not listen (a taken port)
    error: str = ""  # why its process ended without a result (it crashed, or could not start)
    pid: int = 0  # the process it ran in (0: none of its own)

    def as_json(self) -> dict[str, Any]:
        result = self.result
        stages = [asdict(s) for s in result.stages] if result is not None else None
        return {
            "stages": stages,
            "seconds": result.seconds if result is not None else 0.0,
            "figures": asdict(self.figures),
            "sink_error": self.sink_error,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Outcome:
        stages = data.get("stages")
        result = None
        if stages is not None:
            results = [StageResult(**{**s, "status": Status(s["status"])}) for s in stages]
            result = RunResult(results, float(data["seconds"]))
        return cls(result, RunFigures(**data["figures"]), str(data.get("sink_error", "")))


async def check_worker(ctx: RunContext, worker: CanaryWorker, budget: float) -> dict[str, Any]:
    """The worker stage's answer to a run's process (which made the authenticated call itself): the kept worker's
    registration checked (or a new one registered) within `budget`, or the failure as the runner would have
    diagnosed it."""
    try:
        async with asyncio.timeout(max(0.0, budget)):
            detail = await worker.ensure(ctx)
    except Exception as exc:  # TimeoutError included: the runner's diagnosis names it
        failure = diagnose("worker", exc, ctx, budget)
        return {"failure": {"cause": failure.cause, "fix": failure.fix, "kind": failure.kind}}
    return {"detail": detail, "worker_id": ctx.worker_id}


class Isolation:
    """The canary's side: the zygote started once (again if it died), a run asked of it, the run's process spoken
    to, interrupted on SIGTERM after the grace, killed when it outlives its bound."""

    def __init__(self, argv: list[str]) -> None:
        self.argv = list(argv)  # the canary's command line (after `python -m bootstrap`)
        self._zygote: asyncio.subprocess.Process | None = None
        self._child: int | None = None  # the current run's process

    async def start(self) -> bool:
        """The zygote, listening; False (and said) when it could not start."""
        if self._zygote is not None and self._zygote.returncode is None:
            return True
        self._zygote = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bootstrap.modes.canary.zygote", *self.argv,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=LINE_LIMIT,
        )  # fmt: skip
        try:
            ready = await asyncio.wait_for(self._hear(), START_TIMEOUT)
        except TimeoutError:
            ready = None
        if ready is None or "ready" not in ready:
            log.error("the canary's run process could not start", said=ready, code=self._zygote.returncode)
            await self.close()
            return False
        return True

    async def run(self, ctx: RunContext, worker: CanaryWorker, stop: asyncio.Event, grace: float,
                  abandon_after: float) -> Outcome:  # fmt: skip
        """One run in a process of its own, bounded by `ctx`'s deadline (then interrupted, then killed); on `stop`
        it may finish for `grace`, then is interrupted, then killed `abandon_after` later."""
        try:
            if not await self.start():
                return Outcome(None, error="its process could not start (see the log above)")
            self._tell({"run": {"agent_name": ctx.agent_name}})
            talk = asyncio.create_task(self._converse(ctx, worker), name="canary-run")
            stopping = asyncio.create_task(stop.wait())
            try:
                await asyncio.wait({talk, stopping}, timeout=ctx.remaining() + 1.0,
                                   return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
            finally:
                stopping.cancel()
            if not talk.done() and stop.is_set():
                log.warning("stopping: letting the current run finish", grace=grace)
                await asyncio.wait({talk}, timeout=grace)
            if not talk.done():
                self._signal(INTERRUPT)  # its runner turns this into an interrupted run, after its cleanup
                await asyncio.wait({talk}, timeout=abandon_after)
            if not talk.done():
                log.warning("abandoned the current run: its cleanup did not finish in time", after=abandon_after)
                self._signal(signal.SIGKILL)
                await asyncio.wait({talk}, timeout=REAPED_WAIT)
            if not talk.done():  # the zygote does not answer either: a new one for the next run
                talk.cancel()
                await self.close()
                return Outcome(None, error="its process did not end when killed")
            return talk.result()
        finally:
            await _release(ctx)

    async def close(self) -> None:
        """Its end of file: the zygote exits (killed if it does not in time)."""
        zygote, self._zygote, self._child = self._zygote, None, None
        if zygote is None:
            return
        if zygote.stdin is not None:
            with contextlib.suppress(OSError):
                zygote.stdin.close()
        try:
            await asyncio.wait_for(zygote.wait(), CLOSE_TIMEOUT)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                zygote.kill()
            await zygote.wait()

    async def _converse(self, ctx: RunContext, worker: CanaryWorker) -> Outcome:
        """The run's messages until the zygote says its process was reaped."""
        outcome = Outcome(None)
        while (message := await self._hear()) is not None:
            if "pid" in message:
                self._child = outcome.pid = int(message["pid"])
            elif "worker" in message:
                budget = min(float(message["worker"]), ctx.remaining() - CLEANUP_RESERVE)
                self._tell(await check_worker(ctx, worker, budget))
            elif "outcome" in message:
                outcome = Outcome.from_json(message["outcome"])
                outcome.pid = self._child or 0
            elif "exited" in message:
                self._child = None
                if outcome.result is None and message["exited"] != 0:
                    outcome.error = f"its process ended without a result (exit code {message['exited']})"
                return outcome
        self._child = None
        log.error("the canary's run process (the zygote) is gone; a new one is started for the next run")
        await self.close()
        return Outcome(None, error="its process ended without a result (the zygote is gone)")

    async def _hear(self) -> dict[str, Any] | None:
        assert self._zygote is not None and self._zygote.stdout is not None
        try:
            line = await self._zygote.stdout.readline()
        except (ValueError, OSError) as exc:  # a line over LINE_LIMIT, or the pipe broken
            log.error("the canary's run process said something unreadable", error=str(exc))
            return None
        return dict(json.loads(line)) if line else None

    def _tell(self, message: dict[str, Any]) -> None:
        if self._zygote is not None and self._zygote.stdin is not None:
            with contextlib.suppress(OSError):  # gone: _hear says so
                self._zygote.stdin.write(json.dumps(message).encode() + b"\n")

    def _signal(self, sig: signal.Signals) -> None:
        if self._child is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._child, sig)


async def _release(ctx: RunContext) -> None:
    """What the worker check left in this process's context: its watcher task, its API session."""
    if ctx.worker_task is not None and not ctx.worker_task.done():
        ctx.worker_task.cancel()  # the watcher only: the kept worker runs on
    if ctx.lkapi is not None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ctx.lkapi.aclose(), CLOSE_TIMEOUT)


def read_line(fd: int) -> bytes | None:
    """One line from `fd` (None at its end), unbuffered: nothing past it is taken from a pipe that another process
    reads next."""
    line = bytearray()
    while byte := os.read(fd, 1):
        if byte == b"\n":
            return bytes(line)
        line += byte
    return None
