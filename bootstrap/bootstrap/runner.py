"""Run the stages in order under one deadline, then always clean up: the participant leaves, the room
is deleted, the worker is closed and the receiver stopped."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import structlog
from livekit import api

from backend.logging import redact
from bootstrap.context import RunContext
from bootstrap.diagnosis import diagnose, explain_refusal, kind_of, name_silent, silent_servers
from bootstrap.result import Kind, RunResult, StageFailure, StageResult, StageSkipped, StageWarning, Status
from bootstrap.stages import Stage
from bootstrap.webhook_sink import WebhookSink
from devstack.ports import port_owner

# Seconds kept back from --timeout for explaining a timeout (<= EXPLAIN_TIMEOUT) and cleaning up, so
# the whole run ends by --timeout; only a cleanup that hangs may overrun, by at most CLEANUP_MIN.
CLEANUP_RESERVE = 5.0
# > health.CHECK_TIMEOUT: explanations re-run the checks; >= diagnosis.SILENT_WAIT, the servers asked meanwhile
EXPLAIN_TIMEOUT = 2.5
CLEANUP_STEP = 2.0
CLEANUP_MIN = 2.0
INTERRUPTED = "interrupted (Ctrl-C or SIGTERM)"
log = structlog.get_logger("bootstrap")


async def run(ctx: RunContext, stages: list[Stage]) -> RunResult:
    """`stages` in order, each skipped once a prerequisite did not pass (any stage before it that is not
    independent: see Stage), then cleanup."""
    started = time.monotonic()
    results: list[StageResult] = []
    try:
        await _start_sink(ctx)
        for stage in stages:
            if any(r.cause == INTERRUPTED for r in results):  # Ctrl-C ends the run, independent stages too
                results.append(StageResult(stage.name, Status.SKIPPED, cause="the run was interrupted"))
                continue
            if blocker := _failed_prerequisite(results, stages):
                results.append(StageResult(stage.name, Status.SKIPPED, cause=f"{blocker.name} did not pass"))
                continue
            results.append(await _run_stage(ctx, stage))
    finally:
        await cleanup(ctx)
    return RunResult(results, time.monotonic() - started)


def _failed_prerequisite(results: list[StageResult], stages: list[Stage]) -> StageResult | None:
    """The first stage run so far that is a prerequisite (not independent) and did not pass, if any."""
    done = zip(results, stages[: len(results)], strict=True)
    return next((r for r, s in done if not s.independent and r.status not in (Status.PASS, Status.WARN)), None)


async def _run_stage(ctx: RunContext, stage: Stage) -> StageResult:
    name = stage.name
    budget = min(stage.cap, ctx.remaining() - CLEANUP_RESERVE)
    started = time.monotonic()
    log.debug("stage started", stage=name, budget=round(budget, 1))
    try:
        if budget <= 0:
            raise StageFailure("the run's --timeout was used up before this stage", "raise --timeout", Kind.TIMEOUT)
        async with asyncio.timeout(budget):
            detail = await stage.run(ctx)
    except asyncio.CancelledError:
        _uncancel()
        failure = StageFailure(INTERRUPTED, "run it again; cleanup has been done")
        return StageResult(name, Status.FAIL, time.monotonic() - started, "", failure.cause, failure.fix,
                           Kind.INTERRUPTED)  # fmt: skip
    except StageWarning as warned:
        log.info("stage warned", stage=name, cause=redact(warned.cause))
        return StageResult(name, Status.WARN, time.monotonic() - started, redact(warned.detail), redact(warned.cause),
                           redact(warned.fix), warned.kind)  # fmt: skip
    except StageSkipped as skipped:
        log.info("stage skipped", stage=name, reason=str(skipped))
        return StageResult(name, Status.SKIPPED, time.monotonic() - started, "", str(skipped))
    except TimeoutError as exc:
        failure = await _with_silent_servers(ctx, _explain_timeout(ctx, stage, exc, budget))
        return StageResult(name, Status.FAIL, time.monotonic() - started, "", failure.cause, failure.fix,
                           failure.kind or Kind.TIMEOUT)  # fmt: skip
    except Exception as exc:
        failure = await _with_silent_servers(ctx, _explain_refusal(ctx, diagnose(name, exc, ctx, budget)))
        log.debug("stage failed", stage=name, error=repr(exc))
        return StageResult(name, Status.FAIL, time.monotonic() - started, "", failure.cause, failure.fix,
                           failure.kind or Kind.CONFIG)  # fmt: skip
    seconds = time.monotonic() - started
    log.info("stage passed", stage=name, seconds=round(seconds, 3), detail=detail)
    return StageResult(name, Status.PASS, seconds, detail)


async def _with_silent_servers(ctx: RunContext, explanation: Awaitable[StageFailure]) -> StageFailure:
    """The stage's explanation, and meanwhile every LiveKit server the run talks to asked GET / (bounded by
    diagnosis.SILENT_WAIT): one that is not answering (frozen, hung) is the cause, named, in every mode."""
    failure, silent = await asyncio.gather(explanation, silent_servers(ctx.servers_talked_to()))
    return name_silent(failure, silent)


async def _explain_timeout(ctx: RunContext, stage: Stage, exc: TimeoutError, budget: float) -> StageFailure:
    """The stage's own account of what was still missing, itself bounded (the server may be gone)."""
    if stage.on_timeout is not None:
        try:
            async with asyncio.timeout(EXPLAIN_TIMEOUT):
                failure = await stage.on_timeout(ctx)
            return StageFailure(redact(failure.cause), redact(failure.fix), failure.kind or kind_of(stage.name, exc))
        except Exception as explain_error:
            log.debug("timeout explanation failed", stage=stage.name, error=repr(explain_error))
    return diagnose(stage.name, exc, ctx, budget)


async def _explain_refusal(ctx: RunContext, failure: StageFailure) -> StageFailure:
    """A refused key or secret asked again, bounded: clocks that disagree are named as the clock (every mode)."""
    if failure.kind != Kind.AUTH:
        return failure
    try:
        async with asyncio.timeout(EXPLAIN_TIMEOUT):
            return await explain_refusal(ctx, failure)
    except Exception as explain_error:
        log.debug("refusal explanation failed", error=repr(explain_error))
        return failure


def _uncancel() -> None:
    """Let cleanup's own awaits run after an interrupt was turned into a FAIL."""
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()


async def _start_sink(ctx: RunContext) -> None:
    """Bind the webhook receiver before anything can send webhooks. A taken port is a FAIL of the
    webhooks stage naming the owner: never assume another listener received them."""
    if owner := port_owner(ctx.webhook_port):
        ctx.sink_error = f"webhook port {ctx.webhook_port} is already taken by {owner}, so this run cannot receive"
        return
    sink = WebhookSink(ctx.settings, ctx.webhook_host, ctx.webhook_port)
    try:
        await sink.start()
    except OSError as exc:
        ctx.sink_error = f"cannot listen on {ctx.webhook_host}:{ctx.webhook_port}: {exc}"
        await sink.stop()
        return
    ctx.webhook_sink = sink


async def cleanup(ctx: RunContext) -> None:
    """Each step bounded and independent: one failing never leaves the others undone."""
    # Factories, not coroutines: each step looks at the context as the previous steps left it.
    steps: list[tuple[str, Callable[[], Awaitable[None] | None]]] = [
        *((f"close {closer.__qualname__}", closer) for closer in reversed(ctx.closers)),
        ("leave room", lambda: ctx.room.disconnect() if ctx.room else None),
        ("delete rooms", lambda: _delete_rooms(ctx)),  # first: jobs end, so the worker closes fast
        ("close worker", lambda: ctx.worker.aclose() if ctx.worker else None),
        # Again: a job assigned just before the delete joins after it and auto-creates the room anew.
        ("delete rooms again", lambda: _delete_rooms(ctx) if ctx.worker else None),
        ("stop receiver", lambda: ctx.webhook_sink.stop() if ctx.webhook_sink else None),
        ("close api", lambda: ctx.lkapi.aclose() if ctx.lkapi else None),
        # Last: what the steps above still talk to (a node of the run's own, a client host).
        *((f"finalize {finalizer.__qualname__}", finalizer) for finalizer in reversed(ctx.finalizers)),
    ]
    end = time.monotonic() + max(ctx.remaining(), CLEANUP_MIN)
    for what, step in steps:
        left = end - time.monotonic()
        if left <= 0:
            log.warning("cleanup step skipped: out of time", step=what)
            continue
        try:
            async with asyncio.timeout(min(CLEANUP_STEP, left)):
                if (pending := step()) is not None:
                    await pending
        except Exception as exc:  # cleanup reports, never raises: the verdict is already decided
            log.warning("cleanup step failed", step=what, error=repr(exc))
    if ctx.worker_task is not None and not ctx.worker_task.done():
        ctx.worker_task.cancel()
        with contextlib.suppress(BaseException):
            await ctx.worker_task
    if ctx.worker is not None:
        _stop_leftover_job_processes()


def _stop_leftover_job_processes() -> None:
    """Load mode's job processes come from livekit-agents' forkserver, a child of this process. A worker that
    did not finish closing within its cleanup step leaves them (and the forkserver) behind, since the process
    then exits without finalization: measured once after a 12-room run. SIGKILL them; nothing of ours else."""
    children = _children_by_parent()
    forkservers = [pid for pid in children.get(os.getpid(), []) if b"multiprocessing.forkserver" in _cmdline(pid)]
    doomed, stack = [], list(forkservers)
    while stack:
        pid = stack.pop()
        doomed.append(pid)
        stack.extend(children.get(pid, []))
    for pid in doomed:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if doomed:
        log.debug("stopped leftover job processes", pids=doomed)


def _children_by_parent() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
        children.setdefault(ppid, []).append(int(stat.parent.name))
    return children


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


async def _delete_rooms(ctx: RunContext) -> None:
    # This run's room even if the join never returned: a half-finished connect may have created it.
    for room in ctx.rooms_joined | ({ctx.room_name} if ctx.token else set()):
        with contextlib.suppress(api.TwirpError):  # already gone is fine
            await ctx.api.room.delete_room(api.DeleteRoomRequest(room=room))
