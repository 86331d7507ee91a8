"""Paths mode (`--paths [NAMES]`, needs root): a participant on another host (a network namespace) over each
network path; `--fault NAME` reproduces a misconfiguration users hit, to see its FAIL and fix; `--impair loss=N%`
(or `burst=N%`) drops that share of one path's media both ways, to see the audio-quality figures answer it."""

from __future__ import annotations

import argparse
from functools import partial
from typing import Any

from bootstrap.context import RunContext, Server
from bootstrap.modes.base import Mode, Plan, Target
from bootstrap.modes.paths import path_stages
from bootstrap.modes.paths.network_paths import DEFAULT_PATHS, FAULTS, PATHS
from bootstrap.modes.paths.path_stages import PathsState
from bootstrap.stages import Stage
from devstack import paths_lab
from devstack.impairment import Impairment
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
        group.add_argument(
            "--impair",
            metavar="SPEC",
            help="with --paths: drop media packets both ways on the path (nftables in each host's input; no delay or "
            "jitter: this machine has no netem): loss=N%% at random, or burst=N%% (N in a row of every 100); the "
            f"audio flows {path_stages.IMPAIR_WINDOW:.0f} s for the figures, the rule's own counters beside them "
            f"(paths {', '.join(IMPAIRABLE)} only; default path udp)",
        )

    def selected(self, args: argparse.Namespace) -> bool:
        return args.paths is not None

    def resolve(self, args: argparse.Namespace) -> str | None:
        if args.fault and args.paths is None:
            return "--fault needs --paths: it reproduces a misconfiguration on the paths check's own node"
        if error := _resolve_impair(args):
            return error
        if args.paths is None or isinstance(args.paths, list):
            return None
        names = [n.strip() for n in args.paths.split(",") if n.strip()]
        if unknown := [n for n in names if n not in PATHS]:
            return f"--paths: unknown path {', '.join(unknown)}; known: {', '.join(PATHS)}"
        if not names:  # what --paths alone implies: every path, or the ones the fault shows (or the impaired one)
            names = list(FAULTS[args.fault].paths) if args.fault else list(DEFAULT_PATHS)
            names = ["udp"] if args.impair else names
        if args.impair and (other := [n for n in names if n not in IMPAIRABLE]):
            return (f"--impair: {', '.join(other)} cannot be impaired: the loss is matched on host-to-host RTP "
                    f"over UDP ({', '.join(IMPAIRABLE)}); TURN wraps it in channel data, the browser paths run TCP "
                    "or TLS")  # fmt: skip
        args.paths = list(dict.fromkeys(names))
        return None

    def target(self, args: argparse.Namespace, stack: Stack) -> Target:
        # The paths lab's node (make paths-up), on its own host: the worker, the API calls and cleanup all go to
        # it, not to the stack's, from this machine's address on the lab's bridge.
        url = paths_lab.node_url(stack)
        node = Server("the paths lab's node", url.replace("ws://", "http://", 1), f"see its log {paths_lab.node_log()}",
                      paths_lab.hosts(stack).node.namespace)  # fmt: skip
        return Target(livekit_url=url, servers=(node,))

    def plan(self, args: argparse.Namespace) -> Plan:
        state = PathsState(args.paths, args.fault, impair=args.impair)
        return Plan(
            [
                Stage("client-host", partial(path_stages.run_client_host, state=state), 30.0),
                Stage("worker", partial(path_stages.run_worker, state=state), 30.0),  # on the lab's node host
                *(Stage(f"path {name}", partial(path_stages.run_path, path=PATHS[name], state=state), PATH_CAP,
                        independent=True) for name in args.paths),
            ],
            lambda ctx: _figures(ctx, state),
        )  # fmt: skip


IMPAIRABLE = ("udp", "wss")


def _resolve_impair(args: argparse.Namespace) -> str | None:
    """--impair's SPEC parsed into an Impairment (in place); an error when it is malformed or without --paths."""
    if args.impair is None or isinstance(args.impair, Impairment):
        return None
    if args.paths is None:
        return "--impair needs --paths: the loss is injected in the paths lab"
    try:
        args.impair = Impairment.parse(args.impair)
    except ValueError as exc:
        return f"--impair: {exc}"
    return None


def _figures(ctx: RunContext, state: PathsState) -> dict[str, Any]:
    return {"paths": state.figures}
