"""Cluster mode (--cluster): two livekit-server nodes sharing Redis must act as one.

nodes       both nodes answer GET / with OK, and each sees the other: both node ids are registered in the
            shared Redis (hash `nodes`).
worker      the no-op worker registers on node b (the worker stage, with ctx.cluster set).
cross-node  for a room created through each node: Redis says which node hosts it; a participant joins
            through the OTHER node and the host lists it ACTIVE; an API dispatch brings the agent from
            the worker on node b; the room's webhooks (sent by its host) arrive verified.
"""

from __future__ import annotations

import asyncio
import time

from livekit import api, rtc

from backend.tokens import participant_token
from bootstrap.context import RunContext
from bootstrap.lookups import find_active, find_agent, poll_until
from bootstrap.result import StageFailure
from devstack.credentials import load_credentials
from devstack.health import probe_livekit
from devstack.health import redis_command as devstack_redis_command
from devstack.nodes import Node, nodes

POLL_INTERVAL = 0.1


async def redis_command(ctx: RunContext, *args: str) -> bytes:
    """One command to the stack's Redis, authenticated with the generated password."""
    password = load_credentials().redis_password
    return await devstack_redis_command(ctx.stack.host, ctx.stack.redis_port, password, *args)


async def run_nodes(ctx: RunContext) -> str:
    checks = await asyncio.gather(*(probe_livekit("127.0.0.1", node.port, node.name) for node in nodes(ctx.stack)))
    problems = [f"node {c.name} at {c.address}: {c.reason}" for c in checks if not c.up]
    if problems:
        raise StageFailure(
            "; ".join(problems), "start the cluster with `make cluster-up`; see .runtime/livekit-*/*.log"
        )
    for node in nodes(ctx.stack):
        node_id = node.node_id()
        if not node_id or await redis_command(ctx, "HEXISTS", "nodes", node_id) != b":1":
            raise StageFailure(
                f"node {node.name} ({node_id or 'no id in its log'}) is not registered in Redis `nodes`",
                f"both nodes need `redis.address: 127.0.0.1:{ctx.stack.redis_port}` (see {node.config_path})",
            )
    ids = ", ".join(f"{n.name}={n.node_id()}" for n in nodes(ctx.stack))
    return f"2 nodes ready and registered in Redis ({ids})"


async def run_cross_node(ctx: RunContext) -> str:
    details = []
    for creator in nodes(ctx.stack):
        details.append(await _one_room(ctx, creator, f"{ctx.room_name}-{creator.name}"))
    # Placement is the server's choice (its node selector), so both rooms may land on one node; what is
    # proven either way is that the entry node differs from the host for every room.
    return "; ".join(details)


async def _one_room(ctx: RunContext, creator: Node, name: str) -> str:
    cluster = nodes(ctx.stack)
    async with api.LiveKitAPI(creator.http_url, ctx.settings.api_key, ctx.settings.api_secret, failover=False) as lk:
        await lk.room.create_room(api.CreateRoomRequest(name=name))
        ctx.rooms_joined.add(name)
        host_id = (await redis_command(ctx, "HGET", "room_node_map", name)).decode()
        host = next((n for n in cluster if n.node_id() == host_id), None)
        if host is None:
            raise StageFailure(f"room {name} is mapped to unknown node {host_id!r}", "restart the cluster")
        entry = next(n for n in cluster if n is not host)
        room = rtc.Room()
        ctx.closers.append(room.disconnect)
        token = participant_token(ctx.settings, identity=f"via-{entry.name}", room=name)
        await room.connect(entry.ws_url, token, rtc.RoomOptions(auto_subscribe=False))
        await poll_until(lambda: find_active(ctx, name, f"via-{entry.name}", lk), POLL_INTERVAL)
        started = time.monotonic()
        await lk.agent_dispatch.create_dispatch(api.CreateAgentDispatchRequest(agent_name=ctx.agent_name, room=name))
        agent = await poll_until(lambda: find_agent(ctx, name, lk), POLL_INTERVAL)
        dispatch_s = time.monotonic() - started
    wanted = {("room_started", ""), ("participant_joined", f"via-{entry.name}"), ("participant_joined", agent.identity)}
    await ctx.sink.wait_until(lambda: wanted <= {(e.event, e.participant.identity) for e in ctx.sink.for_room(name)})
    return (f"room {name[-1]} hosted on {host.name}, joined via {entry.name}, agent from b in {dispatch_s:.2f}s, "
            f"webhooks verified")  # fmt: skip
