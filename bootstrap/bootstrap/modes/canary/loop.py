"""The canary's schedule: one run at a time, every --interval seconds from a jittered start, each run bounded by
--timeout; SIGTERM or Ctrl-C lets the current run finish for STOP_GRACE seconds, then interrupts it (the runner
cleans up) and abandons it after ABANDON_AFTER more; exit code 0."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

from backend.logging import redact
from backend.settings import SettingsError
from bootstrap import runner
from bootstrap.context import RunContext
from bootstrap.metrics_endpoint import readiness
from bootstrap.modes.canary.kept_worker import CanaryWorker
from bootstrap.modes.canary.metrics import CanaryMetrics, Endpoint
from bootstrap.modes.canary.server_view import ServerView, default_metrics_url
from bootstrap.result import Kind, RunResult, Status
from bootstrap.stages import Stage

# The rtc SDK (livekit 1.1.21) keeps a native "AudioSourceCapt" thread for each audio source a run creates (the
# participant's markers, the agent's echo) after the source is disposed and its room left: the Python objects are
# freed, the process's memory grows ~1.5 MB a run (bench/canary.py: +134 MB over 90 runs). The canary re-executes
# itself once it grew this much: at a 60 s interval, about every 3 hours.
RECYCLE_MB = 256.0
STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}
# SIGTERM: the current run may finish for STOP_GRACE (a healthy run takes ~1.6 s), then it is interrupted and its
# cleanup (each step bounded by the runner) gets ABANDON_AFTER; the worker closes in CLOSE_TIMEOUT (3 s). So the
# process exits within ~18 s of SIGTERM: inside Kubernetes' default 30 s terminationGracePeriodSeconds.
STOP_GRACE = 5.0
ABANDON_AFTER = 10.0
log = structlog.get_logger("bootstrap.canary")


@dataclass
class Schedule:
    interval: float
    jitter: float  # the first run starts at a random offset in [0, jitter]: canaries started together spread out
    runs: int = 0  # stop after this many runs (0: until SIGTERM); for benchmarks and tests
    recycle_mb: float = 0.0  # re-execute itself once its RSS grew this much since the first run (0: never)


@dataclass
class Canary:
    stages: list[Stage]
    schedule: Schedule
    worker: CanaryWorker
    metrics_host: str
    metrics_port: int
    server_metrics: str | None  # the server's Prometheus URL; "" derives it from LIVEKIT_URL; None: off
    finished_at: float = 0.0  # Unix time the last run finished (0: none yet)
    last_result: str = ""

    def ready(self) -> tuple[bool, str]:
        """/readyz: a run finished within two intervals (the endpoint's process answers it the same way)."""
        return readiness(self.finished_at, self.schedule.interval, time.time())

    async def serve(self, make_context: Callable[[], RunContext]) -> int:
        metrics = CanaryMetrics([s.name for s in self.stages], self.schedule.interval)
        try:
            endpoint = Endpoint(metrics, self.schedule.interval, self.metrics_host, self.metrics_port)
        except OSError as exc:
            log.error("cannot serve the metrics", address=f"{self.metrics_host}:{self.metrics_port}", error=str(exc))
            return 2
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # blocked across a re-exec (reexecute): pending now
        log.info(
            "canary started",
            interval=self.schedule.interval,
            metrics=f"http://{self.metrics_host}:{endpoint.port}/metrics",
        )
        view: ServerView | None = None
        baseline, recycle = 0.0, False
        try:
            await _sleep_or_stop(stop, random.uniform(0, self.schedule.jitter))
            done = 0
            while not stop.is_set():
                started = time.monotonic()
                result, ctx = await self._one_run(make_context, stop, metrics)
                if ctx is not None and view is None and (url := self._server_metrics_url(ctx)):
                    view = ServerView(url)
                if view is not None and result is not None:
                    await view.after_run(metrics, result)
                endpoint.publish(self.finished_at, self.last_result)
                done += 1
                if self.schedule.runs and done >= self.schedule.runs:
                    break
                baseline = baseline or rss_mb()
                if self.schedule.recycle_mb and (grown := rss_mb() - baseline) > self.schedule.recycle_mb:
                    log.warning("recycling: re-executing after its memory grew", grown_mb=round(grown), runs=done)
                    recycle = True
                    break
                await _sleep_or_stop(stop, started + self.schedule.interval - time.monotonic())
        finally:
            await self.worker.close()
            endpoint.stop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
        if recycle and not stop.is_set():  # a SIGTERM that came meanwhile ends it: a new image would not know
            self.reexecute()
        log.info("canary stopped")
        return 0

    def reexecute(self) -> None:
        """The same command line in this process (its pid, so systemd and Kubernetes see no restart): a fresh
        interpreter gives back what the rtc SDK keeps per run (RECYCLE_MB). Its metrics start again from zero, as
        after any restart (rate() and increase() handle the reset)."""
        # Blocked across the exec (the mask is inherited), so a SIGTERM during the new image's start-up waits for
        # its handler (serve unblocks them) instead of killing it with the default action.
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        os.execv(sys.executable, list(sys.orig_argv))

    def _server_metrics_url(self, ctx: RunContext) -> str | None:
        if self.server_metrics is None:
            return None
        return self.server_metrics or default_metrics_url(ctx.settings.livekit_url)

    async def _one_run(
        self, make_context: Callable[[], RunContext], stop: asyncio.Event, metrics: CanaryMetrics
    ) -> tuple[RunResult | None, RunContext | None]:
        """One run, recorded; None when it was interrupted or its settings could not be read."""
        try:
            ctx = make_context()
        except (SettingsError, ValueError, OSError) as exc:  # devstack's ConfigError, StackEnvError are ValueErrors
            log.error("canary run not started: configuration error", error=str(exc))
            self._finished(metrics, "fail")
            metrics.stage_success.labels(self.stages[0].name).set(0)
            metrics.stage_failures.labels(self.stages[0].name, Kind.CONFIG.value).inc()
            return None, None
        worker_before = self.worker.registrations
        started = time.monotonic()
        task = asyncio.create_task(runner.run(ctx, self.stages), name="canary-run")
        result = await _finish_or_abandon(task, stop)
        if self.worker.registrations > worker_before:
            metrics.worker_registrations.inc(self.worker.registrations - worker_before)
        if ctx.sink_error:
            log.warning("canary webhooks not received", cause=ctx.sink_error)  # e.g. a bootstrap run holds the port
        if result is None or any(s.kind == Kind.INTERRUPTED for s in result.stages):
            log.warning("canary run interrupted", seconds=round(time.monotonic() - started, 1))
            metrics.runs.labels("interrupted").inc()
            return None, ctx
        metrics.run_duration.observe(result.seconds)
        record(metrics, result, ctx)
        self._finished(metrics, result.status.value)
        failed = {s.name: s.kind for s in result.stages if s.status is Status.FAIL}
        log.info("canary run", result=result.status.value, seconds=round(result.seconds, 2), failed=failed)
        for stage in result.stages:  # the alert names the stage; the cause and the fix are here
            if stage.status in (Status.FAIL, Status.WARN):
                log.warning("canary stage", stage=stage.name, status=stage.status.value, kind=stage.kind,
                            cause=redact(stage.cause), fix=redact(stage.fix))  # fmt: skip
        return result, ctx

    def _finished(self, metrics: CanaryMetrics, result: str) -> None:
        self.finished_at, self.last_result = time.time(), result
        metrics.runs.labels(result).inc()
        metrics.last_run.set(self.finished_at)
        if result in ("pass", "warn"):
            metrics.last_success.set(self.finished_at)


def record(metrics: CanaryMetrics, result: RunResult, ctx: RunContext) -> None:
    """Each stage's outcome and the run's figures."""
    for stage in result.stages:
        passed = stage.status in (Status.PASS, Status.WARN)
        metrics.stage_success.labels(stage.name).set(1 if passed else 0)
        consecutive = metrics.stage_consecutive_failures.labels(stage.name)
        if passed:
            consecutive.set(0)
        else:
            consecutive.inc()
        if stage.status is Status.FAIL:
            metrics.stage_failures.labels(stage.name, stage.kind or Kind.CONFIG.value).inc()
    by_name = {s.name: s for s in result.stages}
    for name, histogram in (("join", metrics.join), ("dispatch", metrics.dispatch)):
        if (timed := by_name.get(name)) is not None and timed.status is Status.PASS:
            histogram.observe(timed.seconds)
    if ctx.audio is not None:
        if (first := ctx.audio.first_echo_s) is not None:
            metrics.first_echo.observe(first)
        for seconds in ctx.audio.round_trips:
            metrics.audio_round_trip.observe(seconds)
        for direction, side in ctx.audio.quality.items():
            if isinstance(side, dict) and side.get("loss_pct") is not None:
                metrics.audio_loss.labels(direction).set(side["loss_pct"] / 100.0)
                metrics.audio_concealed.labels(direction).set((side.get("concealed_pct") or 0.0) / 100.0)
                metrics.audio_mos.labels(direction).set(side["mos"])
    if ctx.data is not None:
        for seconds in ctx.data.rpc_round_trips:
            metrics.rpc_round_trip.observe(seconds)
    if (delivery := webhook_delivery(ctx)) is not None:
        metrics.webhook_delivery.observe(delivery)


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


async def _finish_or_abandon(task: asyncio.Task[RunResult], stop: asyncio.Event) -> RunResult | None:
    """The run's result; on SIGTERM it may finish for STOP_GRACE, then is interrupted, then abandoned."""
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
    if not task.done():
        log.warning("stopping: letting the current run finish", grace=STOP_GRACE)
        await asyncio.wait({task}, timeout=STOP_GRACE)
    if not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=ABANDON_AFTER)
    if not task.done():
        log.warning("abandoned the current run: its cleanup did not finish in time", after=ABANDON_AFTER)
        return None
    with contextlib.suppress(asyncio.CancelledError):
        if task.exception() is None:
            return task.result()
        log.error("canary run failed unexpectedly", error=repr(task.exception()))
    return None


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    if seconds > 0:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)


def rss_mb() -> float:
    """This process's resident memory (VmRSS), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0
