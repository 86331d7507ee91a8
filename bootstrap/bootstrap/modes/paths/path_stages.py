"""Paths mode (--paths): a participant on another host, over each network path in turn.

client-host  (needs CAP_NET_ADMIN, else skipped) stale hosts and nodes of earlier runs swept; the client host
             created (devstack.netns); the run's own node started with TURN on (devstack.paths_node); when a
             path needs TLS, a local CA's certificate and the TLS front (devstack.local_ca, devstack.tls_front).
worker       the no-op worker registers with that node (the worker stage, on the host).
path NAME    one per path, each on its own (one failing does not skip the next): the client host's firewall
             set for the path; a participant joins from inside it into a fresh room with the agent dispatched
             (the rtc SDK in a child process, bootstrap.participant_process, or Chromium,
             bootstrap.browser.page_client);
             its own stats name the selected pair, which must be the path's; then the data plane crosses it
             with the agent. A join that fails is explained from what the client was offered
             (bootstrap.modes.paths.path_diagnosis).
"""

from __future__ import annotations

import asyncio
import fcntl
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

from backend.tokens import participant_token
from bootstrap.context import RunContext
from bootstrap.ice import Offered
from bootstrap.lookups import find_ready_agent, poll_until
from bootstrap.modes.paths.network_paths import FAULTS, PATHS, SDK, NetworkPath
from bootstrap.modes.paths.path_diagnosis import check_pair, explain_no_join
from bootstrap.remote_participant import PathClient, SdkClient
from bootstrap.result import StageFailure, StageSkipped
from devstack import install, local_ca, netns, paths_node, tls_front
from devstack.netns import ClientHost
from devstack.stack_env import RUNTIME_DIR

ICE_TIMEOUT = 6.0  # a working path joins here in well under a second; the rtc SDK's own bound is 4 x 15 s
AGENT_WAIT = 10.0
TOKEN_TTL = timedelta(minutes=10)
POLL_INTERVAL = 0.1
FRONT_DIR = paths_node.FRONT_DIR
LOCK_FILE = RUNTIME_DIR / "paths.lock"


@dataclass
class PathsState:
    """--paths: a client host in a network namespace, a node of the run's own, one stage per network path."""

    paths: list[str]  # the paths to prove, in order (network_paths.PATHS)
    fault: str | None = None  # a misconfiguration reproduced on purpose (network_paths.FAULTS)
    host: ClientHost | None = None  # the client host, once created (client-host stage)
    node_config: dict[str, Any] = field(default_factory=dict)  # the config the node runs
    node_log: Path | None = None  # its log: the server's side of a failure
    node_log_start: int = 0  # where this run's part of it starts (earlier runs' lines come before)
    ca_cert: Path | None = None  # the local CA the clients trust, when a path needs TLS
    front_log: Path | None = None  # the TLS front's error log (a refused handshake is there)
    figures: dict[str, dict[str, Any]] = field(default_factory=dict)  # per path, for the report


def client_host(state: PathsState) -> ClientHost:
    host = state.host
    if host is None:
        raise StageFailure("no client host", "fix the client-host stage first")
    return host


async def run_client_host(ctx: RunContext, state: PathsState) -> str:
    if reason := netns.missing_capability():
        raise StageSkipped(reason)
    if missing := install.missing_paths_packages():
        raise StageFailure(f"missing {', '.join(missing)}", "run `make paths` (python -m devstack install-native)")
    if not install.livekit_server_binary(ctx.stack).exists():
        raise StageFailure("the pinned livekit-server is not built", "run `make paths` (builds it with Go)")
    paths = state
    _lock_out_other_runs(ctx)
    host = paths_node.client_host(ctx.stack)
    fault = FAULTS[paths.fault] if paths.fault else None
    tls = any(PATHS[name].needs_tls for name in paths.paths)
    paths.node_config = paths_node.paths_node_config(ctx.stack, host, fault.node_overrides if fault else None, tls=tls)
    await asyncio.to_thread(tls_front.stop, FRONT_DIR)  # one a killed run left, whether or not this run needs one
    swept = await asyncio.to_thread(netns.sweep, host.namespace)
    _finally(ctx, lambda: netns.remove(host))
    await asyncio.to_thread(netns.create, host, paths_node.client_names(host))
    paths.host = host
    _finally(ctx, lambda: paths_node.stop(ctx.stack, host))
    log = paths_node.service(ctx.stack, host, paths.node_config).log_file
    paths.node_log, paths.node_log_start = log, log.stat().st_size if log.exists() else 0
    await asyncio.to_thread(paths_node.start, ctx.stack, host, paths.node_config)
    if tls:
        await _start_tls_front(ctx, host, state)
    leftovers = f"; swept {', '.join(swept)} left by an earlier run" if swept else ""
    injected = f"; fault {fault.name}: {fault.description}" if fault else ""
    turn = "on" if paths.node_config["turn"].get("enabled") else "off"
    node = f"{host.host_address}:{ctx.stack.paths_node_port}"
    front = f", TLS front on {host.host_address}:443 and {host.service_address}:443" if tls else ""
    return (f"client host {host.client_address} ({host.namespace}); node {node} with TURN {turn}{front}"
            f"{injected}{leftovers}")  # fmt: skip


def _finally(ctx: RunContext, step: Callable[[], None]) -> None:
    """A blocking teardown step for cleanup's end (finalizers run in reverse: the last added goes first)."""

    async def run() -> None:
        await asyncio.to_thread(step)

    ctx.finalizers.append(run)


async def _start_tls_front(ctx: RunContext, host: ClientHost, state: PathsState) -> None:
    if reason := tls_front.missing():
        raise StageFailure(reason, "run `make paths`")
    tls = await asyncio.to_thread(local_ca.issue, paths_node.TLS_DIR, [paths_node.SIGNAL_NAME, paths_node.TURN_NAME])
    state.ca_cert = tls.ca_cert
    front = tls_front.Front(host.host_address, host.service_address, ctx.stack.paths_node_port,
                            ctx.stack.paths_turn_tls_port, host.host_address, FRONT_DIR)  # fmt: skip
    _finally(ctx, lambda: tls_front.stop(FRONT_DIR))
    front.error_log.unlink(missing_ok=True)  # this run's lines only: the diagnosis reads it
    state.front_log = front.error_log
    await asyncio.to_thread(tls_front.start, front, tls)
    for _ in range(50):  # nginx binds within milliseconds; its error log says why when it does not
        if await _listening(host.host_address, 443) and await _listening(host.service_address, 443):
            return
        if not tls_front.running(FRONT_DIR):
            break
        await asyncio.sleep(0.05)
    log = front.error_log.read_text(errors="replace").strip().splitlines()[-2:]
    raise StageFailure(f"the TLS front (nginx) did not listen on 443: {' | '.join(log)}", f"see {front.directory}")


async def _listening(address: str, port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection(address, port)
    except OSError:
        return False
    writer.close()
    return True


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


async def run_path(ctx: RunContext, path: NetworkPath, state: PathsState) -> str:
    paths, host = state, client_host(state)
    fault = FAULTS[paths.fault] if paths.fault else None
    blocked = path.block_udp or bool(fault and fault.block_udp)
    unreachable = (host.service_address,) if path.block_turn_tls else ()
    await asyncio.to_thread(partial(netns.restrict, host, block_udp=blocked, unreachable=unreachable))
    room = f"{ctx.room_name}-{path.name}"
    token = participant_token(ctx.settings, identity=f"client-{path.name}", room=room, ttl=TOKEN_TTL,
                              agent_name=ctx.agent_name)  # fmt: skip
    ctx.rooms_joined.add(room)
    figures: dict[str, Any] = {"client": path.client, "udp_blocked": blocked, "relay_forced": path.relay}
    if path.other_clients:
        figures["other_clients"] = path.other_clients
    paths.figures[path.name] = figures
    signal = f"{host.host_address}:{ctx.stack.paths_node_port}"
    url = f"wss://{paths_node.SIGNAL_NAME}" if path.tls_signal else f"ws://{signal}"
    client = await _client(state, path, host, url)
    ctx.closers.append(client.close)
    joined = await client.join(token, ICE_TIMEOUT)
    figures.update(url=url, join_s=joined["join_s"], pairs=joined["pairs"])
    offered = Offered.from_dict(joined["offered"]) if joined["offered"] is not None else None
    if not joined["joined"]:
        figures["offered"] = joined["offered"]
        logs = _this_runs_log(paths.node_log, paths.node_log_start) + _this_runs_log(paths.front_log, 0)
        raise explain_no_join(path, offered, joined["error"], host, signal, paths.node_config, logs)
    if failure := check_pair(path, joined["pairs"], offered or Offered()):
        raise failure
    async with asyncio.timeout(AGENT_WAIT):
        agent = await poll_until(lambda: find_ready_agent(ctx, room), POLL_INTERVAL)
    exchanged = await client.exchange(agent.identity)
    figures.update(data=exchanged["data"], audio=exchanged["audio"])
    if exchanged["failure"]:
        raise StageFailure(f"over the {path.name} path: {exchanged['failure']}",
                           f"see the agent's log (--verbose) and the node's log, {paths.node_log}")  # fmt: skip
    return _detail(path, joined, exchanged)


def _this_runs_log(path: Path | None, start: int) -> str:
    """A log from `start` on: what this run's node or front wrote (earlier runs' lines come before)."""
    if path is None or not path.exists():
        return ""
    with path.open("rb") as log:
        log.seek(start)
        return log.read().decode(errors="replace")


async def _client(paths: PathsState, path: NetworkPath, host: ClientHost, url: str) -> PathClient:
    fault = FAULTS[paths.fault] if paths.fault else None
    ca = paths.ca_cert if fault is None or fault.trust_ca else None
    if path.client == SDK:
        return await SdkClient.start(host.exec_argv, url, relay=path.relay, trust_ca=ca)
    from bootstrap.browser.page_client import PageClient  # Chromium's driver loads only for a browser path

    return PageClient(host.namespace, host.host_address, url, ca, relay=path.relay)


def _detail(path: NetworkPath, joined: dict[str, Any], exchanged: dict[str, Any]) -> str:
    pair = next(iter(joined["pairs"].values()))
    local, remote = pair["local"], pair["remote"]
    via = f" (TURN over {local['relay_protocol']})" if local.get("relay_protocol") else ""
    rpc = exchanged["data"]["rpc_round_trip_s"]
    audio = exchanged["audio"]
    if rtt := audio.get("round_trip_s"):
        heard = f"audio round trip p50 {rtt['p50'] * 1000:.0f} ms p95 {rtt['p95'] * 1000:.0f} ms"
    else:
        hz = audio["agent_heard"]["dominant_hz"]
        heard = f"agent heard {hz:.0f} Hz, page heard the echo at {audio['echo_hz']:.0f} Hz"
    return (f"{path.client}: {local['type']} {local['protocol']} {local['address']}{via} → {remote['type']} "
            f"{remote['protocol']} {remote['address']}:{remote['port']}; joined in {joined['join_s']:.2f} s; {heard}; "
            f"RPC p50 {rpc['p50'] * 1000:.0f} ms")  # fmt: skip
