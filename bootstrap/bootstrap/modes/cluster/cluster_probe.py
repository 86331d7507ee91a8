"""What the cluster stages and drills ask of the cluster: its Redis, a node's `GET /` in one word, whether a
node is registered, and one room proven end to end from the participant's host (join through one node, agent
dispatched, the data plane across). Stages never import each other; they meet here."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import aiohttp
from livekit import api

from backend.tokens import participant_token
from bootstrap.context import RunContext
from bootstrap.lookups import find_ready_agent, poll_until
from bootstrap.remote_participant import SdkClient
from devstack.credentials import load_credentials
from devstack.health import redis_command as devstack_redis_command
from devstack.nodes import Node, client_host, redis_host
from devstack.stack_env import RUNTIME_DIR

WORKER_LOG = RUNTIME_DIR / "cluster-worker" / "worker.log"  # this run's worker (each run starts it anew)
STATUS_TIMEOUT = 0.8  # a node's GET / within this, or "timeout"
POLL_INTERVAL = 0.1
ICE_TIMEOUT = 6.0
AGENT_WAIT = 10.0
TOKEN_TTL = timedelta(minutes=10)


def node_api(ctx: RunContext, node: Node) -> api.LiveKitAPI:
    """The API of that node itself (no failover: which node answers is what the checks are about)."""
    return api.LiveKitAPI(node.http_url, ctx.settings.api_key, ctx.settings.api_secret, failover=False)


async def redis_command(ctx: RunContext, *args: str) -> bytes:
    """One command to the cluster's Redis, on its own host, authenticated with the generated password."""
    password = load_credentials().redis_password
    return await devstack_redis_command(redis_host(ctx.stack).address, ctx.stack.redis_port, password, *args)


async def redis_answers(ctx: RunContext) -> bool:
    try:
        async with asyncio.timeout(STATUS_TIMEOUT):
            return await redis_command(ctx, "PING") == b"+PONG"
    except (OSError, TimeoutError):
        return False


async def node_status(node: Node) -> str:
    """`GET /` in one word: "200" (ready), "406" (not ready: stale stats, e.g. no Redis), "refused", "timeout"."""
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=STATUS_TIMEOUT)) as session,
            session.get(f"{node.http_url}/") as response,
        ):
            return str(response.status)
    except aiohttp.ClientConnectorError as exc:
        return "refused" if isinstance(exc.os_error, ConnectionRefusedError) else "unreachable"
    except TimeoutError:
        return "timeout"
    except (OSError, aiohttp.ClientError):
        return "error"


async def registered(ctx: RunContext, node: Node) -> bool:
    node_id = node.node_id()
    try:
        return bool(node_id) and await redis_command(ctx, "HEXISTS", "nodes", node_id or "") == b":1"
    except OSError:
        return False


async def _fresh_agent(
    ctx: RunContext, room: str, lk: api.LiveKitAPI, stale: frozenset[str]
) -> api.ParticipantInfo | None:
    agent = await find_ready_agent(ctx, room, lk)
    return agent if agent is not None and agent.identity not in stale else None


def room_works(exchanged: dict[str, Any]) -> bool:
    """What a drill counts as a working room after a fault: every reliable packet back in order, every RPC
    answered, and audio both ways (the agent heard us, its echo reached us). Markers lost on the way are a
    figure of the recovery (`lost_after_setup`), not a verdict: the single run holds the strict line."""
    data, audio = exchanged.get("data") or {}, exchanged.get("audio") or {}
    heard = (audio.get("agent_heard") or {}).get("peak_rms", 0)
    return (
        bool(data.get("reliable_in_order"))
        and data.get("rpc_calls") == 20
        and (audio.get("first_echo_s") is not None and heard > 200)
    )


@dataclass
class RoomCheck:
    """One room proven from the participant's host: what a client that (re)joins finds."""

    joined: bool = False
    agent: bool = False
    data_plane: bool = False
    error: str = ""
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def works(self) -> bool:
        return self.joined and self.agent and self.data_plane


async def check_room(
    ctx: RunContext, entry: Node, room: str, identity: str, stale: frozenset[str] = frozenset()
) -> RoomCheck:
    """Join `room` through `entry` with a token that dispatches the agent (it applies when the join creates the
    room), wait for an agent (not one of `stale`: agents listed from before a fault, which may be ghosts), run
    the data plane. Bounded; never raises for what it finds."""
    check = RoomCheck()
    client = await SdkClient.start(client_host(ctx.stack).exec_argv, entry.ws_url)
    try:
        token = participant_token(ctx.settings, identity=identity, room=room, ttl=TOKEN_TTL, agent_name=ctx.agent_name)
        ctx.rooms_joined.add(room)
        joined = await client.join(token, ICE_TIMEOUT)
        check.joined, check.error = joined["joined"], joined["error"]
        if not check.joined:
            return check
        started = time.monotonic()
        async with node_api(ctx, entry) as lk:
            try:
                async with asyncio.timeout(AGENT_WAIT):
                    agent = await poll_until(lambda: _fresh_agent(ctx, room, lk, stale), POLL_INTERVAL)
            except TimeoutError:
                check.error = f"no agent ready within {AGENT_WAIT:.0f} s"
                return check
        check.agent = True
        exchanged = await client.exchange(agent.identity)
        check.data_plane, check.error = room_works(exchanged), exchanged["failure"] or ""
        check.figures = {"pairs": joined["pairs"], "dispatch_s": round(time.monotonic() - started, 3), **exchanged}
        return check
    except Exception as exc:  # a drill's room check reports; the drill decides
        check.error = f"{type(exc).__name__}: {exc}"
        return check
    finally:
        await client.close()
