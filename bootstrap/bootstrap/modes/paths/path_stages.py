"""Paths mode (--paths): a participant on another host, over each network path in turn, in the paths lab
(devstack.paths_lab: `make paths-up` brings it up; the run only verifies, and undoes whatever it changed there).

client-host  (needs CAP_NET_ADMIN, else skipped) the lab is up: its client host, its node (TURN on) on a host of
             its own, the TLS front with the local CA's certificate; else it fails, naming what is missing and
             `make paths-up`. The run starts from the lab's own state: the client host's firewall and no
             injected loss (paths_lab.start_run: what a run killed before its cleanup left). A `--fault` that
             changes the node's config goes through the lab (paths_lab.configure_node); the run's cleanup
             restores the lab's own config (a SIGKILLed run's: the next run, or paths-up).
worker       the no-op worker (`python -m agent_runtime`, as livekit-agent: bootstrap.hosted_worker) registers
             with the lab's node from the node host, never in this process: libwebrtc under its agent opens
             ICE sockets on every address it has, which there are the lab's, behind the lab's firewall.
             The loss --impair injects on the node host matches the client host's address only, so the
             agent's own media there is never dropped.
path NAME    one per path, each on its own (one failing does not skip the next): the client host's firewall
             set for the path (paths_lab.restrict); a participant joins from inside it into a fresh room with the
             agent dispatched (the rtc SDK in a child process, bootstrap.participant_process, or Chromium,
             bootstrap.browser.page_client);
             its own stats name the selected pair, which must be the path's; then the data plane crosses it
             with the agent. A join that fails is explained from what the client was offered
             (bootstrap.modes.paths.path_diagnosis). The audio's quality (bootstrap.audio_quality) makes it WARN
             or FAIL by its thresholds; with --impair, the loss is injected into the path's media through the lab
             (paths_lab.impair, cleared after the path and by the lab's restore) while the audio flows
             IMPAIR_WINDOW s, and the rule's own counters go beside the receivers' figures.
"""

from __future__ import annotations

import asyncio
import fcntl
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

from backend.tokens import participant_token
from bootstrap import audio_quality
from bootstrap.context import RunContext
from bootstrap.hosted_worker import HostedWorker, run_on_host
from bootstrap.ice import Offered
from bootstrap.lookups import find_ready_agent, poll_until
from bootstrap.modes.paths.network_paths import FAULTS, SDK, NetworkPath
from bootstrap.modes.paths.path_diagnosis import check_pair, explain_no_join
from bootstrap.remote_participant import PathClient, SdkClient
from bootstrap.result import Kind, StageFailure, StageSkipped, StageWarning, Status
from bootstrap.stages import worker as worker_stage
from devstack import netns, paths_lab
from devstack.impairment import Impairment
from devstack.paths_lab import LogMark, PathsHosts
from devstack.stack_env import RUNTIME_DIR

ICE_TIMEOUT = 6.0  # a working path joins here in well under a second; the rtc SDK's own bound is 4 x 15 s
AGENT_WAIT = 10.0
TOKEN_TTL = timedelta(minutes=10)
POLL_INTERVAL = 0.1
IMPAIR_WINDOW = 12.0  # s of audio after the first echo: ~600 RTP packets each way at Opus's 50 a second
LOCK_FILE = RUNTIME_DIR / "paths.lock"
WORKER_LOG = RUNTIME_DIR / "paths-worker" / "worker.log"  # this run's worker (each run starts it anew)
LAB_FIX = "run `make paths-up` (root): it brings the paths lab up, or makes it afresh when part of it is gone"


@dataclass
class PathsState:
    """--paths: the paths lab's hosts, the config its node runs for this run, one stage per network path."""

    paths: list[str]  # the paths to prove, in order (network_paths.PATHS)
    fault: str | None = None  # a misconfiguration reproduced on purpose (network_paths.FAULTS)
    lab: PathsHosts | None = None  # the lab's hosts, once found up (client-host stage)
    node_config: dict[str, Any] = field(default_factory=dict)  # the config the node runs
    logs: LogMark | None = None  # where the node's and the front's logs stood when the run began
    ca_cert: Path | None = None  # the local CA the clients trust
    figures: dict[str, dict[str, Any]] = field(default_factory=dict)  # per path, for the report
    impair: Impairment | None = None  # --impair: media loss injected on each path for its exchange


def client_lab(state: PathsState) -> PathsHosts:
    if state.lab is None:
        raise StageFailure("no paths lab", "fix the client-host stage first")
    return state.lab


async def run_client_host(ctx: RunContext, state: PathsState) -> str:
    if reason := netns.missing_capability():
        raise StageSkipped(reason)
    _lock_out_other_runs(ctx)
    if reason := await asyncio.to_thread(paths_lab.why_down, ctx.stack):
        raise StageFailure(reason, LAB_FIX)
    lab = paths_lab.hosts(ctx.stack)
    fault = FAULTS[state.fault] if state.fault else None
    state.logs = LogMark.now()

    async def restore() -> None:  # the lab as paths-up left it, at cleanup (a SIGKILLed run's: by the next run)
        await asyncio.to_thread(paths_lab.restore, ctx.stack)

    ctx.finalizers.append(restore)
    # Whatever a run killed before its cleanup left: its last path's firewall, and its injected loss, which would
    # otherwise drop this run's media unseen (nothing else checks for it).
    impaired = await asyncio.to_thread(paths_lab.start_run, ctx.stack)
    state.node_config, restarted = await asyncio.to_thread(
        paths_lab.configure_node, ctx.stack, fault.node_overrides if fault else None
    )
    state.lab, state.ca_cert = lab, paths_lab.ca_cert()
    injected = f"; fault {fault.name}: {fault.description}" if fault else ""
    restored = "; the node's own config restored (an earlier run left it changed)" if restarted and not fault else ""
    restored += f"; an earlier run's injected loss removed from {', '.join(impaired)}" if impaired else ""
    turn = "on" if state.node_config["turn"].get("enabled") else "off"
    return (f"client host {lab.client_address} ({lab.client.namespace}); node {lab.node_address}:"
            f"{ctx.stack.paths_node_port} ({lab.node.namespace}) with TURN {turn}, TLS front on {lab.node_address}:443 "
            f"and {lab.turn_address}:443{injected}{restored}")  # fmt: skip


async def run_worker(ctx: RunContext, state: PathsState) -> str:
    lab = client_lab(state)
    await worker_stage.authenticate(ctx)
    # No job limit, as the in-process worker it replaces: each path's agent stays in its room until the run's
    # cleanup, so the standalone's default (4) would refuse the fifth path's.
    worker = HostedWorker(lab.node, paths_lab.node_url(ctx.stack), WORKER_LOG, "the lab's node", "paths-worker",
                          own_host=False, max_jobs=0)  # fmt: skip
    as_whom = await run_on_host(ctx, worker)
    return f"registered {ctx.worker_id} as agent {ctx.agent_name!r} from the node host {lab.node_address}, as {as_whom}"


def _lock_out_other_runs(ctx: RunContext) -> None:
    """One paths run at a time: they share the lab. The lock dies with the process, whatever ends it, so a killed
    run never blocks the next (which restores what it left changed)."""
    RUNTIME_DIR.mkdir(exist_ok=True)
    handle = open(LOCK_FILE, "w")  # noqa: SIM115 (held open until the run ends)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise StageFailure("another `python -m bootstrap --paths` run is in progress on this machine",
                           "wait for it to finish: runs share the paths lab") from None  # fmt: skip

    async def unlock() -> None:
        handle.close()

    ctx.finalizers.insert(0, unlock)  # runs last of all


async def run_path(ctx: RunContext, path: NetworkPath, state: PathsState) -> str:
    lab = client_lab(state)
    fault = FAULTS[state.fault] if state.fault else None
    blocked = path.block_udp or bool(fault and fault.block_udp)
    unreachable = (lab.turn_address,) if path.block_turn_tls else ()
    await asyncio.to_thread(partial(paths_lab.restrict, ctx.stack, block_udp=blocked, unreachable=unreachable))
    room = f"{ctx.room_name}-{path.name}"
    token = participant_token(ctx.settings, identity=f"client-{path.name}", room=room, ttl=TOKEN_TTL,
                              agent_name=ctx.agent_name)  # fmt: skip
    ctx.rooms_joined.add(room)
    figures: dict[str, Any] = {"client": path.client, "udp_blocked": blocked, "relay_forced": path.relay}
    if path.other_clients:
        figures["other_clients"] = path.other_clients
    state.figures[path.name] = figures
    signal = f"{lab.node_address}:{ctx.stack.paths_node_port}"
    url = f"wss://{paths_lab.SIGNAL_NAME}" if path.tls_signal else f"ws://{signal}"
    client = await _client(state, path, lab, url)
    ctx.closers.append(client.close)
    joined = await client.join(token, ICE_TIMEOUT)
    figures.update(url=url, join_s=joined["join_s"], pairs=joined["pairs"])
    offered = Offered.from_dict(joined["offered"]) if joined["offered"] is not None else None
    if not joined["joined"]:
        figures["offered"] = joined["offered"]
        logs = state.logs.since() if state.logs else ""
        raise explain_no_join(path, offered, joined["error"], lab, signal, state.node_config, logs)
    if failure := check_pair(path, joined["pairs"], offered or Offered()):
        raise failure
    async with asyncio.timeout(AGENT_WAIT):
        agent = await poll_until(lambda: find_ready_agent(ctx, room), POLL_INTERVAL)
    exchanged = await _exchange(ctx, state, client, agent.identity, figures)
    figures.update(data=exchanged["data"], audio=exchanged["audio"])
    if exchanged["failure"]:
        raise StageFailure(f"over the {path.name} path: {exchanged['failure']}",
                           f"see the agent's log (--verbose) and the node's log, {paths_lab.node_log()}")  # fmt: skip
    return _judge_quality(path, _detail(path, joined, exchanged), exchanged["audio"], figures.get("impairment"))


async def _exchange(
    ctx: RunContext, state: PathsState, client: PathClient, agent: str, figures: dict[str, Any]
) -> dict[str, Any]:
    """The data plane with the agent; with --impair, under the injected loss, its counters kept in `figures`."""
    if state.impair is None:
        return await client.exchange(agent)
    assert isinstance(client, SdkClient)  # --impair takes the rtc SDK's paths only (the mode checked)
    await asyncio.to_thread(paths_lab.impair, ctx.stack, state.impair)
    try:
        return await client.exchange(agent, IMPAIR_WINDOW)
    finally:
        counters = await asyncio.to_thread(paths_lab.impairment_counters, ctx.stack)
        await asyncio.to_thread(paths_lab.clear_impairment, ctx.stack)
        figures["impairment"] = {"spec": str(state.impair), **counters}


def _judge_quality(path: NetworkPath, detail: str, audio: dict[str, Any], injected: dict[str, Any] | None) -> str:
    quality = audio.get("quality") or {}
    if line := audio_quality.describe(quality):
        detail += f"; {line}"
    if injected:
        nft = [f"{side[:2]} {c.get('dropped', 0)}/{c.get('seen', 0)}" for side in ("upstream", "downstream")
               if (c := injected.get(side))]  # fmt: skip
        detail += f"; injected {injected['spec']}: nft dropped {', '.join(nft)} RTP packets"
    status, why = audio_quality.judge(quality, int(audio.get("lost_after_setup", 0) or 0))
    if status is Status.FAIL:
        raise StageFailure(f"over the {path.name} path: audio quality: {why}", audio_quality.FIX, Kind.MEDIA)
    if status is Status.WARN:
        raise StageWarning(detail, f"over the {path.name} path: audio quality: {why}", audio_quality.FIX, Kind.MEDIA)
    return detail


async def _client(state: PathsState, path: NetworkPath, lab: PathsHosts, url: str) -> PathClient:
    fault = FAULTS[state.fault] if state.fault else None
    ca = state.ca_cert if fault is None or fault.trust_ca else None
    if path.client == SDK:
        return await SdkClient.start(lab.client.exec_argv, url, relay=path.relay, trust_ca=ca)
    from bootstrap.browser.page_client import PageClient  # Chromium's driver loads only for a browser path

    # The page is served from this machine's address on the lab's bridge, where the client host reaches it.
    return PageClient(lab.client.namespace, lab.gateway, url, ca, relay=path.relay)


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
