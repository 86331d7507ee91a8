"""Paths mode (--paths): a participant on another host, over each network path in turn.

client-host  (needs CAP_NET_ADMIN, else skipped) stale hosts and nodes of earlier runs swept; the client host
             created (devstack.netns); the run's own node started with TURN on (devstack.paths_node).
worker       the no-op worker registers with that node (the worker stage, on the host).
path NAME    one per path, each on its own (one failing does not skip the next): the client host's firewall
             set for the path; a participant joins from inside it (bootstrap.path_client, a child process) into
             a fresh room with the agent dispatched; its own stats name the selected pair, which must be the
             path's; then reliable packets, RPCs and audio markers cross it with the agent. A join that fails
             is explained from what the client was offered (bootstrap.path_diagnosis).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import sys
import tempfile
from datetime import timedelta
from typing import IO, Any

from backend.tokens import participant_token
from bootstrap.context import PathsMode, RunContext
from bootstrap.ice import RTC_DEBUG_ENV, Offered
from bootstrap.lookups import find_ready_agent, poll_until
from bootstrap.network_paths import FAULTS, NetworkPath
from bootstrap.path_diagnosis import check_pair, explain_no_join
from bootstrap.result import StageFailure, StageSkipped
from devstack import netns, paths_node
from devstack.netns import ClientHost
from devstack.stack_env import RUNTIME_DIR

HOST_NAME = "paths"  # the client host's namespace is lkh-paths
ICE_TIMEOUT = 6.0  # a working path joins here in about 0.1 s; the rtc SDK's own bound is 4 x 15 s
AGENT_WAIT = 10.0
EXCHANGE_WAIT = 25.0  # 100 packets, 20 RPCs and ~20 audio markers take about 2 s on a working path
TOKEN_TTL = timedelta(minutes=10)
POLL_INTERVAL = 0.1
LOCK_FILE = RUNTIME_DIR / "paths.lock"
SECRET_VARIABLES = ("LIVEKIT_API_SECRET",)  # the client host's process never gets one


def mode(ctx: RunContext) -> PathsMode:
    assert ctx.paths is not None, "paths stages run in paths mode only"
    return ctx.paths


def client_host(ctx: RunContext) -> ClientHost:
    host = mode(ctx).host
    if host is None:
        raise StageFailure("no client host", "fix the client-host stage first")
    return host


async def run_client_host(ctx: RunContext) -> str:
    if reason := netns.missing_capability():
        raise StageSkipped(reason)
    paths = mode(ctx)
    _lock_out_other_runs(ctx)
    host = ClientHost(HOST_NAME, ctx.stack.paths_subnet)
    fault = FAULTS[paths.fault] if paths.fault else None
    paths.node_config = paths_node.paths_node_config(ctx.stack, host, fault.node_overrides if fault else None)

    async def remove_host() -> None:
        await asyncio.to_thread(netns.remove, host)

    async def stop_node() -> None:
        await asyncio.to_thread(paths_node.stop, ctx.stack, host)

    swept = await asyncio.to_thread(netns.sweep, netns.PREFIX + HOST_NAME)
    ctx.finalizers += [remove_host, stop_node]  # cleanup runs them in reverse: the node, then the host
    await asyncio.to_thread(netns.create, host)
    paths.host = host
    started = await asyncio.to_thread(paths_node.start, ctx.stack, host, paths.node_config)
    paths.node_log = started.log_file
    leftovers = f"; swept {', '.join(swept)} left by an earlier run" if swept else ""
    injected = f"; fault {fault.name}: {fault.description}" if fault else ""
    turn = "on" if paths.node_config["turn"].get("enabled") else "off"
    node = f"{host.host_address}:{ctx.stack.paths_node_port}"
    return f"client host {host.client_address} ({host.namespace}); node {node} with TURN {turn}{injected}{leftovers}"


def _lock_out_other_runs(ctx: RunContext) -> None:
    """One paths run at a time: they share the node's ports and the host's name. The lock dies with the process,
    whatever ends it, so a killed run never blocks the next (which sweeps what it left)."""
    RUNTIME_DIR.mkdir(exist_ok=True)
    handle = open(LOCK_FILE, "w")  # noqa: SIM115 (held open until the run ends)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise StageFailure("another `python -m bootstrap --paths` run is in progress on this machine",
                           "wait for it to finish: runs share the paths node's ports") from None  # fmt: skip

    async def unlock() -> None:
        handle.close()

    ctx.finalizers.insert(0, unlock)  # runs last of all


def path_runner(path: NetworkPath) -> Any:
    async def run(ctx: RunContext) -> str:
        return await run_path(ctx, path)

    return run


async def run_path(ctx: RunContext, path: NetworkPath) -> str:
    paths, host = mode(ctx), client_host(ctx)
    fault = FAULTS[paths.fault] if paths.fault else None
    blocked = path.block_udp or bool(fault and fault.block_udp)
    await asyncio.to_thread(netns.block_udp, host, blocked)
    room = f"{ctx.room_name}-{path.name}"
    token = participant_token(ctx.settings, identity=f"client-{path.name}", room=room, ttl=TOKEN_TTL,
                              agent_name=ctx.agent_name)  # fmt: skip
    ctx.rooms_joined.add(room)
    figures: dict[str, Any] = {"udp_blocked": blocked, "relay_forced": path.relay}
    paths.figures[path.name] = figures
    signal = f"{host.host_address}:{ctx.stack.paths_node_port}"
    client = await _start_client(ctx, host)
    await _tell(client, {"url": f"ws://{signal}", "token": token, "relay": path.relay, "ice_timeout": ICE_TIMEOUT})
    joined = await _hear(client, ICE_TIMEOUT + 5.0)
    figures.update(join_s=joined["join_s"], pairs=joined["pairs"])
    offered = Offered.from_dict(joined["offered"])
    if not joined["joined"]:
        figures["offered"] = joined["offered"]
        node_log = paths.node_log.read_text(errors="replace") if paths.node_log else ""
        raise explain_no_join(path, offered, joined["error"], host, signal, paths.node_config, node_log)
    if failure := check_pair(path, joined["pairs"], offered):
        raise failure
    async with asyncio.timeout(AGENT_WAIT):
        agent = await poll_until(lambda: find_ready_agent(ctx, room), POLL_INTERVAL)
    await _tell(client, {"agent": agent.identity})
    exchanged = await _hear(client, EXCHANGE_WAIT)
    figures.update(data=exchanged["data"], audio=exchanged["audio"])
    if exchanged["failure"]:
        raise StageFailure(f"over the {path.name} path: {exchanged['failure']}",
                           "see the agent's log (--verbose) and the node's log, " + str(paths.node_log))  # fmt: skip
    return _detail(path, joined, exchanged)


def _detail(path: NetworkPath, joined: dict[str, Any], exchanged: dict[str, Any]) -> str:
    pair = next(iter(joined["pairs"].values()))
    local, remote = pair["local"], pair["remote"]
    rtt, rpc = exchanged["audio"]["round_trip_s"], exchanged["data"]["rpc_round_trip_s"]
    return (f"{local['type']} {local['protocol']} {local['address']} → {remote['type']} {remote['address']}:"
            f"{remote['port']}; joined in {joined['join_s']:.2f} s; audio round trip p50 {rtt['p50'] * 1000:.0f} ms "
            f"p95 {rtt['p95'] * 1000:.0f} ms; RPC p50 {rpc['p50'] * 1000:.0f} ms")  # fmt: skip


class _Client:
    def __init__(self, process: asyncio.subprocess.Process, stderr: IO[bytes]) -> None:
        self.process, self.stderr = process, stderr

    def stderr_tail(self) -> str:
        self.stderr.seek(0)
        lines = self.stderr.read().decode(errors="replace").strip().splitlines()
        return " | ".join(lines[-3:]) or "nothing on stderr"


async def _start_client(ctx: RunContext, host: ClientHost) -> _Client:
    env = {k: v for k, v in os.environ.items() if k not in SECRET_VARIABLES} | RTC_DEBUG_ENV
    stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed by the closer below)
    argv = host.exec_argv([sys.executable, "-m", "bootstrap.path_client"])
    process = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=stderr, env=env
    )
    client = _Client(process, stderr)

    async def stop() -> None:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        stderr.close()

    ctx.closers.append(stop)
    return client


async def _tell(client: _Client, message: dict[str, Any]) -> None:
    assert client.process.stdin is not None
    client.process.stdin.write(json.dumps(message).encode() + b"\n")
    await client.process.stdin.drain()


async def _hear(client: _Client, within: float) -> dict[str, Any]:
    assert client.process.stdout is not None
    try:
        line = await asyncio.wait_for(client.process.stdout.readline(), within)
    except TimeoutError:
        raise StageFailure(f"the client on the client host said nothing within {within:.0f} s "
                           f"({client.stderr_tail()})", "run with --verbose; see the node's log") from None  # fmt: skip
    if not line:
        raise StageFailure(f"the client on the client host exited: {client.stderr_tail()}",
                           "run `python -m bootstrap --paths --verbose` to see why")  # fmt: skip
    return dict(json.loads(line))
