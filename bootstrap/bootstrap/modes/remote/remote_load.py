"""`--url URL --load N`: the load mode's rooms against a deployment elsewhere, asked of the registry by name (never
imported). Load only what you run: refused always for LiveKit Cloud (its acceptable-use policy forbids load tests;
`lk` refuses them too), and for a host that is not this machine unless `--own-deployment` says it is yours."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from functools import partial
from typing import Any
from urllib.parse import urlparse

from bootstrap.context import RunContext
from bootstrap.modes.remote.target_checks import is_loopback
from bootstrap.stages import Stage

CLOUD_DOMAIN = "livekit.cloud"


def refusal(args: argparse.Namespace) -> str | None:
    """Why this --load (or --own-deployment) may not run against --url; None when it may."""
    if not args.load:
        if args.own_deployment:
            return "--own-deployment goes with --url and --load N: it says the deployment you load is yours"
        return None
    host = (urlparse(args.url).hostname or "").lower()
    if host == CLOUD_DOMAIN or host.endswith("." + CLOUD_DOMAIN):
        return (f"--load against LiveKit Cloud ({host}) is refused: its acceptable-use policy forbids load tests "
                "(lk refuses them too); load a deployment you run")  # fmt: skip
    if args.hold:
        return "--hold samples this machine's livekit-server and worker from /proc: with --url give --load N alone"
    if not is_loopback(host) and not args.own_deployment:
        return (f"--load would open {args.load} rooms on {host}, which is not this machine: add --own-deployment "
                "to say you run it (never load someone else's deployment)")  # fmt: skip
    return None


def load_stages(
    args: argparse.Namespace, register: Callable[..., Any]
) -> tuple[list[Stage], Callable[[RunContext], dict[str, Any]]]:
    """The load mode's stages and figures for `args`, its `services` stage dropped (the stack here is not the
    target) and its `worker` stage registering through `register` with the same job settings."""
    from bootstrap.modes import MODES  # the registry imports this package: asked at run time

    plan = MODES.get("load").plan(args)
    stages = []
    for stage in plan.stages:
        if stage.name == "services":
            continue
        if stage.name == "worker":
            settings = stage.run.keywords if isinstance(stage.run, partial) else {}
            stage = Stage("worker", partial(register, **settings), stage.cap)
        stages.append(stage)
    return stages, plan.figures


def timeout(args: argparse.Namespace) -> float:
    from bootstrap.modes import MODES

    return MODES.get("load").timeout(args)
