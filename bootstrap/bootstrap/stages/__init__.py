"""The stages, in order. Each is `async def run(ctx) -> detail`, raising on failure; a stage may also define
`async def on_timeout(ctx) -> StageFailure` to say what was missing when its time ran out. Stages never
import each other: what they share lives in bootstrap.lookups."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from bootstrap.context import RunContext
from bootstrap.network_paths import PATHS
from bootstrap.result import StageFailure
from bootstrap.stages import (
    cluster,
    data,
    dispatch,
    drills,
    join,
    load,
    media,
    paths,
    services,
    token,
    webhooks,
    worker,
)


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[RunContext], Awaitable[str]]
    cap: float  # longest it may take on its own; the run's deadline bounds it too
    on_timeout: Callable[[RunContext], Awaitable[StageFailure]] | None = None
    # Runs even when an earlier independent stage failed (each network path stands alone); still skipped
    # when a stage before it that is not independent (a prerequisite) did not pass.
    independent: bool = False


# The single run (`python -m bootstrap`).
STAGES: list[Stage] = [
    Stage("services", services.run, 30.0, services.on_timeout),
    Stage("worker", worker.run, 15.0),
    Stage("token", token.run, 5.0),
    Stage("join", join.run, 15.0),
    Stage("dispatch", dispatch.run, 15.0, dispatch.on_timeout),
    Stage("data", data.run, 8.0, data.on_timeout),
    Stage("media", media.run, 8.0),
    Stage("webhooks", webhooks.run, 15.0, webhooks.on_timeout),
]


def browser_stage() -> Stage:
    """Opt-in (--browser): headless Chromium joins the same room through frontend/. Imported here, on
    demand, so Chromium's driver and the frontend server load only in browser mode."""
    from bootstrap.stages import browser_join

    return Stage("browser", browser_join.run, 30.0, browser_join.on_timeout)


# Load mode (--load N): the stack and the worker, then N rooms through the whole path.
# Its cap is the run's --timeout (whose load-mode default grows with N): 24 h only means "no cap of its own".
LOAD_STAGES: list[Stage] = [STAGES[0], STAGES[1], Stage("load", load.run, 86400.0, load.on_timeout)]

# Cluster mode (--cluster): two nodes on hosts of their own sharing Redis, checked across nodes and hosts.
CLUSTER_STAGES: list[Stage] = [
    Stage("nodes", cluster.run_nodes, 10.0),
    Stage("worker", cluster.run_worker, 30.0),
    Stage("cross-node", cluster.run_cross_node, 45.0),
]


def drill_stages(name: str) -> list[Stage]:
    """--cluster --drill NAME: the cluster's nodes and worker, then the drill (its cap: the run's --timeout)."""
    run = {"node-loss": drills.run_node_loss, "redis-outage": drills.run_redis_outage}[name]
    return [*CLUSTER_STAGES[:2], Stage(f"drill {name}", run, 86400.0)]


def paths_stages(names: list[str]) -> list[Stage]:
    """Paths mode (--paths): the client host and the run's own node, the worker, then each path on its own."""
    return [
        Stage("client-host", paths.run_client_host, 30.0),
        Stage("worker", worker.run, 15.0),
        *(Stage(f"path {name}", paths.path_runner(PATHS[name]), 45.0, independent=True) for name in names),
    ]
