"""Canary mode (`--canary`): the single verification (or `--url`'s) on a schedule, exported as OpenMetrics.

Every --interval seconds (the first run at a jittered offset) it runs the wrapped mode's stages — asked from the
registry by name, never imported — with their `worker` stage replaced by one that checks the canary's own worker:
registered once, kept between runs as a production worker is, re-created when lost. One run at a time, each
bounded by --timeout and each in a process of its own (isolated.py: what the rtc SDK keeps of a run ends with it).
/metrics, /healthz and /readyz on --metrics-port; livekit-server's own counters beside ours when its Prometheus
endpoint answers. SIGTERM ends it within ~18 s, exit code 0. docs/canary.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import secrets
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from bootstrap.context import RunContext
from bootstrap.modes.base import Mode, Plan, Target
from bootstrap.modes.canary.isolated import Isolation
from bootstrap.modes.canary.kept_worker import CanaryWorker
from bootstrap.modes.canary.loop import Canary, Schedule
from bootstrap.stages import Stage, services

if TYPE_CHECKING:
    from devstack.stack_env import Stack

DEFAULT_INTERVAL = 60.0
DEFAULT_METRICS_PORT = 9464  # OpenTelemetry's Prometheus exporter's default; free of every port the stack uses
MAX_JITTER = 15.0
# A canary's run does not wait for services to come up as a starting stack's run does (the single run's services
# stage polls for up to 30 s): a node that does not answer now is this run's failure, named within this.
SERVICES_CAP = 2.0
WRAPS = ("single", "remote")  # the modes whose verification it repeats: one room, one participant, one agent
OPTIONS = {
    "interval": "--interval",
    "metrics_port": "--metrics-port",
    "metrics_host": "--metrics-host",
    "jitter": "--jitter",
    "server_metrics": "--server-metrics",
    "runs": "--runs",
}


class CanaryMode(Mode):
    name = "canary"
    flag = "--canary"
    wraps = True

    def __init__(self) -> None:
        self._agent_name = ""  # chosen once: the kept worker and every run's token agree on it

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("canary mode (the verification on a schedule, as OpenMetrics)")
        group.add_argument(
            "--canary",
            action="store_true",
            help="run the single verification (or --url's) every --interval seconds and serve "
            "/metrics, /healthz, /readyz until SIGTERM (exit 0)",
        )
        group.add_argument(
            "--interval",
            type=float,
            metavar="SECONDS",
            help=f"with --canary: seconds between runs' starts (default {DEFAULT_INTERVAL:.0f})",
        )
        group.add_argument(
            "--metrics-port",
            type=int,
            metavar="PORT",
            help=f"with --canary: where /metrics answers (default {DEFAULT_METRICS_PORT})",
        )
        group.add_argument(
            "--metrics-host",
            metavar="HOST",
            help="with --canary: the address /metrics binds (default 127.0.0.1; 0.0.0.0 in a pod)",
        )
        group.add_argument(
            "--jitter",
            type=float,
            metavar="SECONDS",
            help=f"with --canary: the first run starts at a random offset up to this (default the "
            f"interval, at most {MAX_JITTER:.0f})",
        )
        group.add_argument(
            "--server-metrics",
            metavar="URL",
            help="with --canary: livekit-server's Prometheus endpoint, read after each run (default: "
            "a node on this machine's port + 3; 'off' to skip)",
        )
        group.add_argument(
            "--runs", type=int, metavar="N", help="with --canary: stop after N runs (default: until SIGTERM)"
        )

    def selected(self, args: argparse.Namespace) -> bool:
        return bool(getattr(args, "canary", False))

    def resolve(self, args: argparse.Namespace) -> str | None:
        if not self.selected(args):
            given = [flag for dest, flag in OPTIONS.items() if getattr(args, dest, None) is not None]
            return f"{', '.join(given)} only with --canary" if given else None
        inner = self._inner(args)
        if inner.name not in WRAPS:
            return f"--canary repeats the single verification (or --url's), not {inner.flag}"
        if args.json or args.junit:
            return "--canary exports its results on /metrics: no --json or --junit report"
        args.interval = DEFAULT_INTERVAL if args.interval is None else args.interval
        args.metrics_port = DEFAULT_METRICS_PORT if args.metrics_port is None else args.metrics_port
        args.metrics_host = args.metrics_host or "127.0.0.1"
        args.jitter = min(args.interval, MAX_JITTER) if args.jitter is None else args.jitter
        args.runs = args.runs or 0
        if args.interval < 1:
            return "--interval must be at least 1 second"
        if not 0 <= args.metrics_port < 65536:
            return "--metrics-port must be 0-65535 (0: any free port)"
        if args.jitter < 0 or args.runs < 0:
            return "--jitter and --runs cannot be negative"
        return None

    def timeout(self, args: argparse.Namespace) -> float:
        return self._inner(args).timeout(args)

    def target(self, args: argparse.Namespace, stack: Stack) -> Target:
        """The wrapped mode's target, under an agent name of the canary's own: its kept worker must never take
        another run's jobs (a bootstrap run on the same stack registers the stack's name)."""
        target = self._inner(args).target(args, stack)
        if not self._agent_name:
            self._agent_name = f"{target.agent_name or stack.agent_name}-canary-{secrets.token_hex(2)}"
        return dataclasses.replace(target, agent_name=self._agent_name)

    def plan(self, args: argparse.Namespace) -> Plan:
        inner = self._inner(args).plan(args)
        worker = CanaryWorker()
        stages = canary_stages(inner.stages, worker.check)
        canary = Canary(
            stages,
            Schedule(args.interval, args.jitter, args.runs),
            worker,
            args.metrics_host,
            args.metrics_port,
            None if args.server_metrics == "off" else (args.server_metrics or ""),
            Isolation(args.argv),  # the same command line, for the process each run is forked from
        )
        return Plan(stages, inner.figures, serve=canary.serve)

    @staticmethod
    def _inner(args: argparse.Namespace) -> Mode:
        from bootstrap.modes import MODES  # the registry imports this module: asked at run time, never imported

        return MODES.wrapped(args)


def canary_stages(stages: list[Stage], worker_check: Callable[[RunContext], Awaitable[str]]) -> list[Stage]:
    """The wrapped mode's stages as a canary runs them: `worker_check` is its worker stage (the kept worker's
    registration checked: CanaryWorker.check, or its question to the canary from a run's own process); services
    are not waited for, and a refused connection fails them at once."""
    return [_canary_stage(stage, worker_check) for stage in stages]


def _canary_stage(stage: Stage, worker_check: Callable[[RunContext], Awaitable[str]]) -> Stage:
    if stage.name == "worker":
        return Stage("worker", worker_check, stage.cap)
    if stage.name == "services":
        run = services.run_now if stage.run is services.run else stage.run
        return dataclasses.replace(stage, run=run, cap=min(stage.cap, SERVICES_CAP))
    return stage


__all__ = ["CanaryMode", "canary_stages"]
