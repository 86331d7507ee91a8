"""Cluster mode (`--cluster`, `make cluster-up` first): two livekit-server nodes on hosts of their own sharing a
Redis on another, checked across nodes and hosts; `--drill NAME` takes a part of it away on purpose."""

from __future__ import annotations

import argparse
from functools import partial
from typing import Any

from bootstrap.context import Server
from bootstrap.modes.base import Mode, Plan, Target
from bootstrap.modes.cluster import cluster_stages
from bootstrap.modes.cluster.cluster_stages import ClusterRooms
from bootstrap.modes.cluster.drills import DRILL_TIMEOUT, DRILLS, DrillFigures
from bootstrap.stages import Stage
from devstack.nodes import lan, nodes
from devstack.stack_env import Stack

NO_CAP = 86400.0  # a drill's cap is the run's --timeout


class ClusterMode(Mode):
    name = "cluster"
    flag = "--cluster"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("cluster mode")
        group.add_argument(
            "--cluster",
            action="store_true",
            help="cluster mode: two nodes sharing Redis (`make cluster-up`), checked across nodes",
        )
        drills = "; ".join(f"{d.name}: {d.description}" for d in DRILLS.values())
        group.add_argument(
            "--drill",
            choices=list(DRILLS),
            help=f"with --cluster: take a part of the cluster away on purpose and measure what recovers ({drills})",
        )

    def selected(self, args: argparse.Namespace) -> bool:
        return bool(args.cluster)

    def resolve(self, args: argparse.Namespace) -> str | None:
        if args.drill and not args.cluster:
            return "--drill needs --cluster: it runs against the cluster `make cluster-up` starts"
        return None

    def timeout(self, args: argparse.Namespace) -> float:
        return DRILL_TIMEOUT if args.drill else super().timeout(args)

    def timeout_note(self) -> str:
        return f"with --drill: {DRILL_TIMEOUT:.0f}"

    def target(self, args: argparse.Namespace, stack: Stack) -> Target:
        # The API calls and cleanup go to node a; the nodes post webhooks to this machine on the bridge. Both nodes
        # are named, so a failure names the one that stopped answering (the worker and the joins use node b too).
        cluster = nodes(stack)
        servers = tuple(Server(f"node {n.name}", n.http_url, f"see its log {n.log_file}", n.host.namespace)
                        for n in cluster)  # fmt: skip
        return Target(livekit_url=cluster[0].ws_url, webhook_host=lan(stack).gateway, servers=servers)

    def plan(self, args: argparse.Namespace) -> Plan:
        setup = [
            Stage("nodes", cluster_stages.run_nodes, 10.0),
            Stage("worker", cluster_stages.run_worker, 30.0),
        ]
        if args.drill:
            drill = DrillFigures(args.drill)
            run = DRILLS[args.drill].run
            stage = Stage(f"drill {args.drill}", lambda ctx: run(ctx, drill), NO_CAP)
            return Plan([*setup, stage], lambda ctx: _figures({}, drill))
        rooms = ClusterRooms()
        cross = Stage("cross-node", partial(cluster_stages.run_cross_node, figures=rooms), 45.0)
        return Plan([*setup, cross], lambda ctx: _figures(rooms.rooms, None))


def _figures(rooms: dict[str, Any], drill: DrillFigures | None) -> dict[str, Any]:
    return {"cluster": rooms, **({"drill": drill.as_dict()} if drill else {})}
