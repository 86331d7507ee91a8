"""The canary's schedule: one run at a time, every --interval seconds from a jittered start, each run bounded by
--timeout; SIGTERM or Ctrl-C lets the current run finish for STOP_GRACE seconds, then interrupts it (the runner
cleans up) and abandons it after ABANDON_AFTER more; exit code 0."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from backend.logging import redact
from backend.settings import SettingsError
from bootstrap import runner
from bootstrap.context import RunContext
from bootstrap.metrics_endpoint import readiness
from bootstrap.modes.canary.isolated import Isolation, Outcome, RunFigures
from bootstrap.modes.canary.kept_worker import CanaryWorker
from bootstrap.modes.canary.metrics import CanaryMetrics, Endpoint
from bootstrap.modes.canary.server_view import ServerView, default_metrics_url
from bootstrap.result import Kind, RunResult, Status
from bootstrap.stages import Stage

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


@dataclass
class Canary:
    stages: list[Stage]
    schedule: Schedule
    worker: CanaryWorker
    metrics_host: str
    metrics_port: int
    server_metrics: str | None  # the server's Prometheus URL; "" derives it from LIVEKIT_URL; None: off
    # Each run in a process of its own (the CLI's, bootstrap.modes.canary.isolated); None: in this one (tests).
    isolation: Isolation | None = None
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
        log.info(
            "canary started",
            interval=self.schedule.interval,
            metrics=f"http://{self.metrics_host}:{endpoint.port}/metrics",
        )
        view: ServerView | None = None
        try:
            if self.isolation is not None:
                await self.isolation.start()  # imports once, during the jitter's wait
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
                await _sleep_or_stop(stop, started + self.schedule.interval - time.monotonic())
        finally:
            if self.isolation is not None:
                await self.isolation.close()
            await self.worker.end()
            endpoint.stop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
        log.info("canary stopped")
        return 0

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
        if self.isolation is not None:
            outcome = await self.isolation.run(ctx, self.worker, stop, STOP_GRACE, ABANDON_AFTER)
        else:
            outcome = await self._in_process(ctx, stop)
        if self.worker.registrations > worker_before:
            metrics.worker_registrations.inc(self.worker.registrations - worker_before)
        if outcome.sink_error:  # e.g. a bootstrap run holds the port
            log.warning("canary webhooks not received", cause=outcome.sink_error)
        result = outcome.result
        if result is None and outcome.error and not stop.is_set():  # a crash: no stage to blame, NoSuccess alerts
            log.error("canary run failed: no result", error=outcome.error, seconds=round(time.monotonic() - started, 1))
            self._finished(metrics, "fail")
            return None, ctx
        if result is None or any(s.kind == Kind.INTERRUPTED for s in result.stages):
            log.warning("canary run interrupted", seconds=round(time.monotonic() - started, 1))
            metrics.runs.labels("interrupted").inc()
            return None, ctx
        metrics.run_duration.observe(result.seconds)
        record(metrics, result, outcome.figures)
        self._finished(metrics, result.status.value)
        failed = {s.name: s.kind for s in result.stages if s.status is Status.FAIL}
        log.info("canary run", result=result.status.value, seconds=round(result.seconds, 2), failed=failed,
                 pid=outcome.pid or os.getpid())  # fmt: skip
        for stage in result.stages:  # the alert names the stage; the cause and the fix are here
            if stage.status in (Status.FAIL, Status.WARN):
                log.warning("canary stage", stage=stage.name, status=stage.status.value, kind=stage.kind,
                            cause=redact(stage.cause), fix=redact(stage.fix))  # fmt: skip
        return result, ctx

    async def _in_process(self, ctx: RunContext, stop: asyncio.Event) -> Outcome:
        task = asyncio.create_task(runner.run(ctx, self.stages), name="canary-run")
        result = await _finish_or_abandon(task, stop)
        return Outcome(result, RunFigures.of(ctx), ctx.sink_error)

    def _finished(self, metrics: CanaryMetrics, result: str) -> None:
        self.finished_at, self.last_result = time.time(), result
        metrics.runs.labels(result).inc()
        metrics.last_run.set(self.finished_at)
        if result in ("pass", "warn"):
            metrics.last_success.set(self.finished_at)


def record(metrics: CanaryMetrics, result: RunResult, figures: RunFigures) -> None:
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
    if (first := figures.first_echo) is not None:
        metrics.first_echo.observe(first)
    for seconds in figures.audio_round_trips:
        metrics.audio_round_trip.observe(seconds)
    for direction, side in figures.audio_quality.items():
        if isinstance(side, dict) and side.get("loss_pct") is not None:
            metrics.audio_loss.labels(direction).set(side["loss_pct"] / 100.0)
            metrics.audio_concealed.labels(direction).set((side.get("concealed_pct") or 0.0) / 100.0)
            metrics.audio_mos.labels(direction).set(side["mos"])
    for seconds in figures.rpc_round_trips:
        metrics.rpc_round_trip.observe(seconds)
    if figures.webhook_delivery is not None:
        metrics.webhook_delivery.observe(figures.webhook_delivery)


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
