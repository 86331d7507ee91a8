"""`python -m bootstrap.modes.canary.zygote ARG...` (the canary's own arguments): the process the canary forks each
run from, so a run's native state ends with it while the worker stays registered in the canary. Why, and the
protocol it speaks: bootstrap.modes.canary.isolated. Nothing imports this module: it only runs."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import threading
import traceback
from functools import partial
from typing import Any

from agent_runtime.ffi_exit import exit_without_finalization
from backend.logging import configure_logging
from backend.settings import SettingsError
from bootstrap import __main__ as cli
from bootstrap import runner
from bootstrap.context import RunContext
from bootstrap.modes import MODES, Mode
from bootstrap.modes.canary import canary_stages
from bootstrap.modes.canary.isolated import INTERRUPT, Outcome, RunFigures, read_line
from bootstrap.result import Kind, RunResult, StageFailure, StageResult, Status
from bootstrap.stages import Stage
from bootstrap.stages.worker import authenticate
from devstack.server_config import ConfigError
from devstack.stack_env import StackEnvError

SAID = 70  # a run's process that ended before saying its outcome (EX_SOFTWARE)


class Channel:
    """The protocol's two ends: stdin (fd 0, read unbuffered: what follows a line is the next reader's) and a
    descriptor of its own for what it says."""

    def __init__(self, said: int) -> None:
        self.said = said

    def say(self, message: dict[str, Any]) -> None:
        data = json.dumps(message).encode() + b"\n"
        while data:
            data = data[os.write(self.said, data) :]

    def hear(self) -> dict[str, Any] | None:
        """The next message (blocking); None at the end of input (the canary closed it, or is gone)."""
        while (line := read_line(0)) is not None:
            with contextlib.suppress(ValueError):
                return dict(json.loads(line))
        return None

    async def ask(self, message: dict[str, Any]) -> dict[str, Any]:
        """Say `message`, and wait for the answer on a daemon thread: a run that stops waiting (its stage's time
        ran out) must not wait for that thread to end (asyncio.run's default executor would)."""
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[dict[str, Any] | None] = loop.create_future()

        def hear() -> None:
            heard = self.hear()

            def settle() -> None:
                if not answer.done():
                    answer.set_result(heard)

            with contextlib.suppress(RuntimeError):  # the run ended meanwhile: its loop is closed
                loop.call_soon_threadsafe(settle)

        self.say(message)
        threading.Thread(target=hear, name="canary-answer", daemon=True).start()
        if (heard := await answer) is None:
            raise StageFailure("the canary is gone", "see the canary's log", Kind.INTERRUPTED)
        return heard


async def ask_worker(channel: Channel, cap: float, ctx: RunContext) -> str:
    """The worker stage of a run in its own process: the authenticated call here (with the mode's HTTP session),
    then the canary checks its kept worker (or registers a new one)."""
    await authenticate(ctx)
    answer = await channel.ask({"worker": min(cap, ctx.remaining() - runner.CLEANUP_RESERVE)})
    if failure := answer.get("failure"):
        kind = Kind(failure["kind"]) if failure.get("kind") else None
        raise StageFailure(failure["cause"], failure["fix"], kind)
    ctx.worker_id = str(answer["worker_id"])
    # The worker runs (in the canary): a stage that asks whether one does (dispatch's explanation) hears yes.
    ctx.worker_task = asyncio.create_task(_forever(), name="canary-worker-elsewhere")
    return str(answer["detail"])


async def _forever() -> None:
    await asyncio.Event().wait()


async def verify(args: argparse.Namespace, mode: Mode, stages: list[Stage], agent_name: str) -> Outcome:
    """The run, as the canary's in-process one (runner.run), with SIGUSR1 for an interrupt."""
    try:
        ctx = cli.build_context(args, mode)
    except (SettingsError, ConfigError, StackEnvError, OSError) as exc:
        failed = StageResult(stages[0].name, Status.FAIL, cause=f"configuration error: {exc}",
                             fix="fix the settings the canary reads (.env, stack.env, the server's config)",
                             kind=Kind.CONFIG)  # fmt: skip
        return Outcome(RunResult([failed], 0.0))
    ctx.agent_name = agent_name  # the kept worker's, which the token dispatches
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(INTERRUPT, lambda: (loop.remove_signal_handler(INTERRUPT), task.cancel()))
    result = await runner.run(ctx, stages)
    return Outcome(result, RunFigures.of(ctx), ctx.sink_error)


def child(channel: Channel, args: argparse.Namespace, mode: Mode, stages: list[Stage], request: dict[str, Any]) -> None:
    """A run's process: says its pid, runs, says its outcome, exits without finalization (the rtc SDK's threads)."""
    channel.say({"pid": os.getpid()})
    outcome = asyncio.run(verify(args, mode, stages, str(request["agent_name"])))
    channel.say({"outcome": outcome.as_json()})
    exit_without_finalization(0)


def main(argv: list[str]) -> int:
    said = os.dup(1)
    os.dup2(2, 1)  # whatever a library prints goes to stderr, never into the protocol
    for sig in (signal.SIGINT, signal.SIGTERM):  # the canary ends it (its end of file) and interrupts its runs
        signal.signal(sig, signal.SIG_IGN)
    args = cli.parse_args(argv)
    configure_logging(verbose=args.verbose)
    if not args.verbose:  # as the canary's own process (bootstrap.__main__)
        for chatty in ("backend.webhook_receiver", "agent_runtime"):
            logging.getLogger(chatty).setLevel(logging.WARNING)
    mode = MODES.select(args)
    inner = MODES.wrapped(args).plan(args).stages
    channel = Channel(said)
    worker_cap = next((s.cap for s in inner if s.name == "worker"), 15.0)
    stages = canary_stages(inner, partial(ask_worker, channel, worker_cap))
    channel.say({"ready": os.getpid()})
    while (message := channel.hear()) is not None:
        if "run" not in message:
            continue  # a worker answer its run no longer waited for
        pid = os.fork()
        if pid == 0:
            try:
                child(channel, args, mode, stages, message["run"])
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(SAID)
        _, status = os.waitpid(pid, 0)
        channel.say({"exited": os.waitstatus_to_exitcode(status)})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
