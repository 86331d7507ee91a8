"""Paths mode (`--paths [NAMES]`, needs root): a participant on another host (a network namespace) over each
network path; `--fault NAME` reproduces a misconfiguration users hit, to see its FAIL and fix."""

from __future__ import annotations

import argparse
from functools import partial
from typing import Any

from bootstrap.context import RunContext
from bootstrap.modes.base import Mode, Plan, Target
from bootstrap.modes.paths import path_stages
from bootstrap.modes.paths.network_paths import DEFAULT_PATHS, FAULTS, PATHS
from bootstrap.modes.paths.path_stages import PathsState
from bootstrap.stages import Stage, stage_named
from devstack import paths_lab
from devstack.stack_env import Stack

PATH_CAP = 45.0


class PathsMode(Mode):
    name = "paths"
    flag = "--paths"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("paths mode")
        group.add_argument(
            "--paths",
            nargs="?",
            const="",
            default=None,
            metavar="NAMES",
            help=f"paths mode: a client on another host (a network namespace; needs root) over each "
            f"network path: comma-separated, of {', '.join(PATHS)} (default: "
            f"{','.join(DEFAULT_PATHS)})",
        )
        faults = "; ".join(f"{f.name}: {f.description}" for f in FAULTS.values())
        group.add_argument(
            "--fault",
            choices=list(FAULTS),
            help=f"with --paths: reproduce a misconfiguration users hit, to see its FAIL and fix ({faults})",
        )

    def selected(self, args: argparse.Namespace) -> bool:
        return args.paths is not None

    def resolve(self, args: argparse.Namespace) -> str | None:
        if args.fault and args.paths is None:
            return "--fault needs --paths: it reproduces a misconfiguration on the paths check's own node"
        if args.paths is None or isinstance(args.paths, list):
            return None
        names = [n.strip() for n in args.paths.split(",") if n.strip()]
        if unknown := [n for n in names if n not in PATHS]:
            return f"--paths: unknown path {', '.join(unknown)}; known: {', '.join(PATHS)}"
        if not names:  # what --paths alone implies: every path, or the ones the fault shows
            names = list(FAULTS[args.fault].paths) if args.fault else list(DEFAULT_PATHS)
        args.paths = list(dict.fromkeys(names))
        return None

    def target(self, args: argparse.Namespace, stack: Stack) -> Target:
        # The paths lab's node (make paths-up), on its own host: the worker, the API calls and cleanup all go to
        # it, not to the stack's, from this machine's address on the lab's bridge.
        return Target(livekit_url=paths_lab.node_url(stack))

    def plan(self, args: argparse.Namespace) -> Plan:
        state = PathsState(args.paths, args.fault)
        return Plan(
            [
                Stage("client-host", partial(path_stages.run_client_host, state=state), 30.0),
                stage_named("worker"),  # registered with the run's node
                *(Stage(f"path {name}", partial(path_stages.run_path, path=PATHS[name], state=state), PATH_CAP,
                        independent=True) for name in args.paths),
            ],
            lambda ctx: _figures(ctx, state),
        )  # fmt: skip


def _figures(ctx: RunContext, state: PathsState) -> dict[str, Any]:
    return {"paths": state.figures}
