"""Cluster mode (--cluster): two livekit-server nodes, each on a host of its own, must act as one
(`make cluster-up`: devstack.native_cluster, devstack.nodes).

nodes       both nodes answer GET / with OK at their own addresses, and both are registered in the cluster's
            Redis (hash `nodes`), which they reach over the network on a host of its own.
worker      `python -m agent_runtime` on the worker's own host registers through node b.
cross-node  for a room created through each node: Redis says which node hosts it; a participant on its own
            host (bootstrap.participant_process) joins through the OTHER node, and its own stats must show its media
            going to the HOST node's address; the agent is dispatched from the worker's host; reliable packets,
            RPCs and audio markers cross the nodes with it; the room's webhooks (sent by its host to this
            machine, on the bridge) arrive verified.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from livekit import api

from backend.tokens import participant_token
from bootstrap.context import RunContext
from bootstrap.hosted_worker import HostedWorker, run_on_host
from bootstrap.lookups import find_ready_agent, poll_until
from bootstrap.modes.cluster.cluster_probe import WORKER_LOG, node_api, redis_command
from bootstrap.remote_participant import SdkClient
from bootstrap.result import StageFailure
from devstack import netns
from devstack.health import probe_livekit
from devstack.nodes import Node, client_host, nodes, redis_host, worker_host

POLL_INTERVAL = 0.1
ICE_TIMEOUT = 6.0


async def run_nodes(ctx: RunContext) -> str:
    if reason := netns.missing_capability("cluster-up"):
        raise StageFailure(f"the cluster's hosts are network namespaces; {reason}", "run it as root")
    cluster = nodes(ctx.stack)
    present = await asyncio.to_thread(netns.namespaces)
    if missing := [node.host.namespace for node in cluster if node.host.namespace not in present]:
        # Nothing is sent then: with no host on the test range's bridge, its addresses route off this machine.
        raise StageFailure(f"the cluster is not up: its node hosts {', '.join(missing)} do not exist",
                           "start the cluster with `make cluster-up`")  # fmt: skip
    checks = await asyncio.gather(*(probe_livekit(node.address, node.port, node.name) for node in cluster))
    problems = [f"node {c.name} at {c.address}: {c.reason}" for c in checks if not c.up]
    if problems:
        raise StageFailure(
            "; ".join(problems), "start the cluster with `make cluster-up`; see .runtime/livekit-*/*.log"
        )
    for node in cluster:
        node_id = node.node_id()
        if not node_id or await redis_command(ctx, "HEXISTS", "nodes", node_id) != b":1":
            raise StageFailure(
                f"node {node.name} ({node_id or 'no id in its log'}) is not registered in Redis `nodes`",
                f"both nodes need `redis.address` {redis_host(ctx.stack).address}:{ctx.stack.redis_port} "
                f"(see {node.config_path})",
            )
    where = ", ".join(f"{n.name}={n.node_id()} on {n.address}" for n in cluster)
    return f"2 nodes ready, each on its own host, registered in Redis on {redis_host(ctx.stack).address} ({where})"


async def run_worker(ctx: RunContext) -> str:
    """The worker on a host of its own, through node b: dispatch across nodes goes through Redis."""
    entry = nodes(ctx.stack)[1]
    host = worker_host(ctx.stack)
    worker = HostedWorker(host, entry.ws_url, WORKER_LOG, "node b", "cluster-worker", own_host=True)
    as_whom = await run_on_host(ctx, worker)
    return (f"registered {ctx.worker_id} as agent {ctx.agent_name!r} from host {host.address}, through node b, "
            f"as {as_whom}")  # fmt: skip


@dataclass
class ClusterRooms:
    """What the cross-node stage measured, per room (its name → host, entry node, pairs, data plane)."""

    rooms: dict[str, dict[str, Any]] = field(default_factory=dict)


async def run_cross_node(ctx: RunContext, figures: ClusterRooms) -> str:
    details = []
    for creator in nodes(ctx.stack):
        details.append(await _one_room(ctx, creator, f"{ctx.room_name}-{creator.name}", figures))
    # Placement is the server's choice (its node selector), so both rooms may land on one node; what is
    # proven either way is that the entry node differs from the host for every room.
    return "; ".join(details)


async def _one_room(ctx: RunContext, creator: Node, name: str, figures: ClusterRooms) -> str:
    cluster = nodes(ctx.stack)
    async with node_api(ctx, creator) as lk:
        await lk.room.create_room(api.CreateRoomRequest(name=name))
        ctx.rooms_joined.add(name)
        host_id = (await redis_command(ctx, "HGET", "room_node_map", name)).decode()
        host = next((n for n in cluster if n.node_id() == host_id), None)
        if host is None:
            raise StageFailure(f"room {name} is mapped to unknown node {host_id!r}", "restart the cluster")
        entry = next(n for n in cluster if n is not host)
        started = time.monotonic()
        await lk.agent_dispatch.create_dispatch(api.CreateAgentDispatchRequest(agent_name=ctx.agent_name, room=name))
        identity = f"via-{entry.name}"
        client = await SdkClient.start(client_host(ctx.stack).exec_argv, entry.ws_url)
        ctx.closers.append(client.close)
        joined = await client.join(participant_token(ctx.settings, identity=identity, room=name), ICE_TIMEOUT)
        if not joined["joined"]:
            raise StageFailure(f"the participant could not join room {name} through node {entry.name}: "
                               f"{joined['error']}", f"see {host.log_file} and {entry.log_file}")  # fmt: skip
        _check_media_goes_to(host, entry, joined["pairs"], name)
        agent = await poll_until(lambda: find_ready_agent(ctx, name, lk), POLL_INTERVAL)
        dispatch_s = time.monotonic() - started
        exchanged = await client.exchange(agent.identity)
        await client.close()
    figures.rooms[name] = {"host": host.name, "entry": entry.name, "pairs": joined["pairs"],
                           "dispatch_s": round(dispatch_s, 3), **exchanged}  # fmt: skip
    if exchanged["failure"]:
        raise StageFailure(f"across nodes (room on {host.name}, joined via {entry.name}): {exchanged['failure']}",
                           f"see {host.log_file}")  # fmt: skip
    wanted = {("room_started", ""), ("participant_joined", identity), ("participant_joined", agent.identity)}
    await ctx.sink.wait_until(lambda: wanted <= {(e.event, e.participant.identity) for e in ctx.sink.for_room(name)})
    rtt = exchanged["audio"]["round_trip_s"]
    return (f"room {name[-1]} hosted on {host.name}, joined via {entry.name}, media to {host.address}; agent from the "
            f"worker's host in {dispatch_s:.2f}s; audio p50 {rtt['p50'] * 1000:.0f} ms; webhooks verified")  # fmt: skip


def _check_media_goes_to(host: Node, entry: Node, pairs: dict[str, Any], room: str) -> None:
    """The participant's own stats: its media goes to the room's host node, not the node it entered through."""
    for side, pair in pairs.items():
        remote = pair["remote"]
        if remote["address"] != host.address:
            raise StageFailure(
                f"room {room} is hosted on node {host.name} ({host.address}) but the participant's {side} media goes "
                f"to {remote['address']}:{remote['port']} (it entered through node {entry.name}, {entry.address})",
                f"each node's rtc.node_ip must be its own address (see {host.config_path})",
            )
    if not pairs:
        raise StageFailure(f"the participant in room {room} reports no selected candidate pair", "see its log")
