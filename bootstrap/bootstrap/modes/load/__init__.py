"""Load mode (`--load N`): the stack and the worker, then N rooms through the whole path, C at a time."""

from __future__ import annotations

import argparse
from functools import partial
from typing import Any

from bootstrap.context import RunContext
from bootstrap.modes.base import DEFAULT_TIMEOUT, Mode, Plan
from bootstrap.modes.load import rooms
from bootstrap.modes.load.rooms import LoadState
from bootstrap.stages import Stage, stage_named, worker

DEFAULT_CONCURRENCY = 4
# The default --timeout: a margin of about 3x over the ~7 rooms/s measured on 2 cores.
TIMEOUT_BASE = 30.0
TIMEOUT_PER_ROOM = 0.5
# Its cap is the run's --timeout (whose default grows with N): 24 h only means "no cap of its own".
NO_CAP = 86400.0


class LoadMode(Mode):
    name = "load"
    flag = "--load"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("load mode")
        group.add_argument(
            "--load",
            type=int,
            default=0,
            metavar="N",
            help="load mode: N rooms, each joined, dispatched and its webhooks verified",
        )
        group.add_argument(
            "--concurrency",
            type=int,
            default=DEFAULT_CONCURRENCY,
            metavar="C",
            help=f"rooms in flight at once in load mode (default {DEFAULT_CONCURRENCY}, for 2 cores)",
        )

    def selected(self, args: argparse.Namespace) -> bool:
        return bool(args.load)

    def resolve(self, args: argparse.Namespace) -> str | None:
        if args.load < 0 or args.concurrency < 1:
            return "--load must be >= 0 and --concurrency >= 1"
        return None

    def timeout(self, args: argparse.Namespace) -> float:
        return max(DEFAULT_TIMEOUT, TIMEOUT_BASE + TIMEOUT_PER_ROOM * int(args.load))

    def timeout_note(self) -> str:
        return f"with --load N: {TIMEOUT_BASE:.0f} + {TIMEOUT_PER_ROOM} per room, if more"

    def plan(self, args: argparse.Namespace) -> Plan:
        state = LoadState(args.load, args.concurrency)
        run = Stage("load", partial(rooms.run, state=state), NO_CAP, partial(rooms.on_timeout, state=state))
        # The worker runs each job in a process of its own, as many kept warm as rooms are in flight.
        worker_stage = Stage("worker", partial(worker.run, job_processes=state.concurrency), stage_named("worker").cap)
        return Plan([stage_named("services"), worker_stage, run], lambda ctx: _figures(ctx, state))


def _figures(ctx: RunContext, state: LoadState) -> dict[str, Any]:
    return {"load": state.figures.as_dict()} if state.figures is not None else {}
