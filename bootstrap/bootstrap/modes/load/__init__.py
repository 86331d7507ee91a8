"""Load mode (`--load N`): the stack and the worker, then N rooms through the whole path, C at a time; with
`--hold S`, the N rooms opened C at a time and then held open together for S seconds (modes/load/hold.py)."""

from __future__ import annotations

import argparse
from functools import partial
from typing import Any

from agent_runtime.agent import MAX_JOBS
from bootstrap.context import RunContext
from bootstrap.modes.base import DEFAULT_TIMEOUT, Mode, Plan
from bootstrap.modes.load import hold, rooms
from bootstrap.modes.load.hold import HoldState
from bootstrap.modes.load.rooms import LoadState
from bootstrap.stages import Stage, stage_named, worker

DEFAULT_CONCURRENCY = 4
# The default --timeout: a margin of about 3x over the ~7 rooms/s measured on 2 cores.
TIMEOUT_BASE = 30.0
TIMEOUT_PER_ROOM = 0.5
# Its cap is the run's --timeout (whose default grows with N): 24 h only means "no cap of its own".
NO_CAP = 86400.0
# A held room's opening is slower than a throughput room's (every room held before it is still echoing): the
# default --timeout with --hold adds this per room, the hold itself and a margin for closing the rooms.
HOLD_TIMEOUT_PER_ROOM = 1.5
HOLD_TIMEOUT_CLOSE = 30.0


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
        group.add_argument(
            "--hold",
            type=float,
            default=0.0,
            metavar="SECONDS",
            help="held load: open the N rooms, then keep them all open together this long, the agent echoing in "
            "each, sampling audio, RPC, the worker's load and each side's CPU and memory",
        )
        group.add_argument(
            "--max-jobs",
            type=int,
            default=None,
            metavar="K",
            help="with --hold: the most jobs the worker takes at once (default: the echo worker's own limit, "
            "agent_runtime.agent.MAX_JOBS; 0: no limit, to measure past it)",
        )

    def selected(self, args: argparse.Namespace) -> bool:
        return bool(args.load)

    def resolve(self, args: argparse.Namespace) -> str | None:
        if args.load < 0 or args.concurrency < 1:
            return "--load must be >= 0 and --concurrency >= 1"
        if args.hold < 0 or (args.max_jobs is not None and args.max_jobs < 0):
            return "--hold and --max-jobs must be >= 0"
        if args.hold and not args.load:
            return "--hold holds the rooms of --load N: give --load too"
        if args.max_jobs is not None and not args.hold:
            return "--max-jobs sets the worker's limit for a held load: give --load N --hold SECONDS too"
        return None

    def timeout(self, args: argparse.Namespace) -> float:
        if args.hold:
            return TIMEOUT_BASE + HOLD_TIMEOUT_PER_ROOM * int(args.load) + float(args.hold) + HOLD_TIMEOUT_CLOSE
        return max(DEFAULT_TIMEOUT, TIMEOUT_BASE + TIMEOUT_PER_ROOM * int(args.load))

    def timeout_note(self) -> str:
        return (f"with --load N: {TIMEOUT_BASE:.0f} + {TIMEOUT_PER_ROOM} per room, if more; with --hold S too: "
                f"{TIMEOUT_BASE:.0f} + {HOLD_TIMEOUT_PER_ROOM} per room + S + {HOLD_TIMEOUT_CLOSE:.0f}")  # fmt: skip

    def plan(self, args: argparse.Namespace) -> Plan:
        if args.hold:
            return _held_plan(args)
        state = LoadState(args.load, args.concurrency)
        run = Stage("load", partial(rooms.run, state=state), NO_CAP, partial(rooms.on_timeout, state=state))
        # The worker runs each job in a process of its own, as many kept warm as rooms are in flight, and no limit
        # of jobs: a throughput run holds only `concurrency` rooms at once (and jobs whose rooms were deleted may
        # still be ending).
        worker_stage = Stage("worker", partial(worker.run, job_processes=state.concurrency, max_jobs=0),
                             stage_named("worker").cap)  # fmt: skip
        return Plan([stage_named("services"), worker_stage, run], lambda ctx: _figures(ctx, state))


def _held_plan(args: argparse.Namespace) -> Plan:
    state = HoldState(args.load, args.concurrency, args.hold, MAX_JOBS if args.max_jobs is None else args.max_jobs)
    run = Stage("hold", partial(hold.run, state=state), NO_CAP, partial(hold.on_timeout, state=state))
    # A process per job, as in the throughput run; its limit is the echo worker's own unless --max-jobs says.
    worker_stage = Stage("worker", partial(worker.run, job_processes=state.concurrency, max_jobs=state.max_jobs),
                         stage_named("worker").cap)  # fmt: skip
    figures = lambda ctx: {"hold": state.figures.as_dict()} if state.figures is not None else {}  # noqa: E731
    return Plan([stage_named("services"), worker_stage, run], figures)


def _figures(ctx: RunContext, state: LoadState) -> dict[str, Any]:
    return {"load": state.figures.as_dict()} if state.figures is not None else {}
