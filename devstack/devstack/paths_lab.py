"""`make paths-up` / `make paths-down`: the paths lab `python -m bootstrap --paths` verifies, as a devstack
lifecycle (the run itself only checks). Natively, as root (network namespaces):

  - a bridge and two hosts on PATHS_SUBNET (devstack.paths_node: the layout): the client host and the node host;
  - on the node host, the lab's own livekit-server node, TURN on (its config: paths_node.paths_node_config), and
    its TLS front (nginx, devstack.tls_front) with a certificate from a local CA (devstack.local_ca);
  - the root namespace's guard (devstack.root_guard): this machine's own address on the lab's bridge answers the
    lab's hosts only.

What a run changes in the lab goes through this module, each change under the lab's lock (`LAB.lock_file`): the
node's config (`configure_node`, for a fault the run reproduces: the node restarts only when its config changes),
the client host's firewall for a path (`restrict`), and loss injected into a path's media (`impair`,
devstack.impairment: nftables in each host's INPUT hook; no delay or jitter, this machine has no netem). The run
undoes them in its cleanup (`restore`: all back to the lab's own; Ctrl-C and SIGTERM run it too, within the
cleanup's time bound). A run killed by SIGKILL, or whose cleanup was cut short, leaves them (and its echo worker
on the node host): the next run starts by putting the firewall back, ending that worker and removing any
impairment (`start_run`), and sets the node's config through `configure_node`; `paths-up` on a lab that is up
restores all.

Everything the lab creates is written to RECORD before it is created; `paths-down` (and `make down`, and a
`paths-up` that finds the lab broken) removes exactly what the record names, under one lock (`LAB.lock_file`), so two
lifecycle calls never interleave and nothing another checkout or program made is touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import pwd
import socket
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devstack import impairment, install, local_ca, native, netns, root_guard, tls_front
from devstack.health import probe_livekit
from devstack.lab_record import LabRecord
from devstack.native import StackError
from devstack.paths_node import (
    FRONT_DIR,
    NODE_DIR,
    SERVICE,
    SIGNAL_NAME,
    TLS_DIR,
    TURN_NAME,
    PathsHosts,
    hosts,
    paths_node_config,
    service,
)
from devstack.safe_files import read_private
from devstack.server_config import render
from devstack.service_python import AGENT_ACCOUNT
from devstack.stack_env import Stack

# The layout, re-exported: a run asks this module only.
__all__ = ["SIGNAL_NAME", "TURN_NAME", "PathsHosts", "hosts"]

LAB = LabRecord("paths")  # its lock, and the record of what it created: all the sweep ever removes
RECORD = LAB.record_file
READY_TIMEOUT = 15.0  # the node answers GET / within about 1 s of starting here


def node_url(stack: Stack) -> str:
    """The node's signalling URL from this machine (through its address on the lab's bridge)."""
    return f"ws://{hosts(stack).node_address}:{stack.paths_node_port}"


def ca_cert() -> Path:
    """The local CA a client trusts to accept the lab's TLS (wss:// and TURN over TLS)."""
    return local_ca.files(TLS_DIR).ca_cert


def node_log() -> Path:
    return NODE_DIR / f"{SERVICE}.log"


def front_error_log() -> Path:
    """At info: nginx logs a client's refused TLS handshake ("alert unknown ca") there."""
    return FRONT_DIR / tls_front.ERROR_LOG


@dataclass(frozen=True)
class LogMark:
    """Where the node's log and the front's error log ended when a run began: `since` reads the run's own lines."""

    offsets: tuple[tuple[Path, int], ...]

    @classmethod
    def now(cls) -> LogMark:
        return cls(
            tuple((path, path.stat().st_size if path.exists() else 0) for path in (node_log(), front_error_log()))
        )

    def since(self) -> str:
        """What the node and the front wrote after the mark (one after the other)."""
        text = []
        for path, start in self.offsets:
            with contextlib.suppress(OSError), path.open("rb") as log:
                log.seek(start if path.stat().st_size >= start else 0)  # a log recreated since: all of it
                text.append(log.read().decode(errors="replace"))
        return "".join(text)


def _front(stack: Stack) -> tls_front.Front:
    lab = hosts(stack)
    return tls_front.Front(lab.node_address, lab.turn_address, stack.paths_node_port, stack.paths_turn_tls_port,
                           lab.node_address, FRONT_DIR, namespace=lab.node.namespace)  # fmt: skip


def up(stack: Stack) -> None:
    """The lab, ready: reused (and restored to its own config) when it is up and sound, else made afresh."""
    if reason := netns.missing_capability("paths-up"):
        raise StackError(f"the paths lab's hosts are network namespaces; {reason}")
    install.ensure_packages(paths=True)
    install.ensure_livekit_server(stack)
    if reason := tls_front.missing():
        raise StackError(reason)
    with LAB.locked():
        if why_down(stack) is None:
            _restore(stack)
            print(f"  paths lab already up (node {node_url(stack)}); restored to its own config", file=sys.stderr)
            return
        for removed in LAB.made_afresh(lambda: _sweep(stack), lambda: _create(stack)):
            print(f"  removed   {removed} (an earlier paths lab, incomplete)", file=sys.stderr)


def _create(stack: Stack) -> None:
    lab = hosts(stack)
    LAB.record(lab.lan, [lab.client, lab.node])
    netns.create_lan(lab.lan, [lab.client, lab.node])
    netns.add_address(lab.node, lab.turn_address)
    netns.write_hosts_file(lab.client.namespace, lab.names())
    guarded = root_guard.update(stack)
    print(f"  hosts     client {lab.client_address}, node {lab.node_address} and {lab.turn_address} on "
          f"{lab.lan.bridge}; root guard ({root_guard.TABLE}) on {', '.join(g.bridge for g in guarded)}",
          file=sys.stderr)  # fmt: skip
    _start_node(stack, paths_node_config(stack))  # first: it makes NODE_DIR, where the CA and front live
    _start_front(stack, local_ca.issue(TLS_DIR, [SIGNAL_NAME, TURN_NAME]))
    print(f"  node      {node_url(stack)} (TURN on), TLS front on {lab.node_address}:443 ({SIGNAL_NAME}) and "
          f"{lab.turn_address}:443 ({TURN_NAME}), CA {ca_cert()}", file=sys.stderr)  # fmt: skip


def _start_node(stack: Stack, config: dict[str, Any]) -> None:
    """The node with `config` (a running one stopped first), ready when GET / answers 200 from this machine."""
    node = service(stack, config)
    native.stop_services([node], quiet=True)
    native.start_missing([node], quiet=True)
    address = hosts(stack).node_address
    deadline = time.monotonic() + READY_TIMEOUT
    while not asyncio.run(probe_livekit(address, stack.paths_node_port)).up:
        if not node.running_pid():
            raise StackError(f"{SERVICE} exited during start-up; last log lines:\n{native.tail(node, 15)}")
        if time.monotonic() > deadline:
            raise StackError(f"{SERVICE} not ready after {READY_TIMEOUT:.0f}s; see {node.log_file}")
        time.sleep(0.1)


def _start_front(stack: Stack, tls: local_ca.TlsFiles) -> None:
    lab = hosts(stack)
    front = _front(stack)
    tls_front.stop(FRONT_DIR)
    tls_front.start(front, tls)
    for _ in range(100):  # nginx binds within milliseconds; its error log says why when it does not
        if _listening(lab.node_address, 443) and _listening(lab.turn_address, 443):
            return
        if not tls_front.running(FRONT_DIR):
            break
        time.sleep(0.05)
    log = (read_private(front.error_log) or "").strip().splitlines()[-2:]
    raise StackError(f"the TLS front (nginx) did not listen on 443: {' | '.join(log)}; see {front.directory}")


def _listening(address: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((address, port), timeout=0.5):
        return True
    return False


def why_down(stack: Stack) -> str | None:
    """Why the lab cannot serve a run now (None when it can): what is missing, first found first."""
    lab = hosts(stack)
    if not RECORD.exists():
        return "the paths lab is not up"
    present = netns.namespaces()
    if missing := [host.namespace for host in (lab.client, lab.node) if host.namespace not in present]:
        return f"the paths lab's host {', '.join(missing)} is gone"
    if not service(stack, {}).running_pid():
        return f"the paths lab's node ({SERVICE}) is not running"
    if not asyncio.run(probe_livekit(lab.node_address, stack.paths_node_port)).up:
        return f"the paths lab's node does not answer GET / at {lab.node_address}:{stack.paths_node_port}"
    if not tls_front.running(FRONT_DIR):
        return "the paths lab's TLS front (nginx) is not running"
    if not local_ca.valid_for(local_ca.files(TLS_DIR), hours=12):
        return "the paths lab's TLS certificate expires within 12 hours"
    if not root_guard.present():
        return f"the root namespace's guard ({root_guard.TABLE}) is missing"
    return None


def configure_node(stack: Stack, overrides: Mapping[str, Any] | None = None) -> tuple[dict[str, Any], bool]:
    """The node running the lab's config with `overrides` merged over it (None: the lab's own), restarted only
    when that differs from what it runs. Returns the config it runs and whether it had to restart."""
    config = paths_node_config(stack, overrides)
    with LAB.locked():
        return config, _ensure_node(stack, config)


def _ensure_node(stack: Stack, config: dict[str, Any]) -> bool:
    if read_private(NODE_DIR / "livekit.yaml") == render(config) and service(stack, config).running_pid():
        return False
    _start_node(stack, config)
    return True


def restrict(stack: Stack, *, block_udp: bool = False, unreachable: tuple[str, ...] = ()) -> None:
    """One path's firewall on the client host (replacing the last): no UDP out, nothing to `unreachable`."""
    with LAB.locked():
        _restrict(stack, block_udp=block_udp, unreachable=unreachable)


def _restrict(stack: Stack, *, block_udp: bool = False, unreachable: tuple[str, ...] = ()) -> None:
    netns.restrict(hosts(stack).client, block_udp=block_udp, unreachable=unreachable)


def impair(stack: Stack, loss: impairment.Impairment) -> None:
    """`loss` of the media in both directions (replacing any): the client host drops it from the node (server →
    client), the node host from the client host (client → server). Undone by clear_impairment and restore."""
    lab = hosts(stack)
    with LAB.locked():
        impairment.apply(lab.client.exec_argv([]), loss, lab.node_address)
        impairment.apply(lab.node.exec_argv([]), loss, lab.client_address)


def impairment_counters(stack: Stack) -> dict[str, dict[str, int]]:
    """The impairment's own counters per direction ({"seen", "dropped"} RTP packets), {} where there is none."""
    lab = hosts(stack)
    return {"downstream": impairment.counters(lab.client.exec_argv([])),
            "upstream": impairment.counters(lab.node.exec_argv([]))}  # fmt: skip


def clear_impairment(stack: Stack) -> None:
    with LAB.locked():
        _clear_impairment(stack)


def _clear_impairment(stack: Stack) -> list[str]:
    """The impairment removed from both hosts; the namespaces that held one."""
    lab = hosts(stack)
    return [host.namespace for host in (lab.client, lab.node) if impairment.clear(host.exec_argv([]))]


def start_run(stack: Stack) -> list[str]:
    """What a run starts from: the client host's firewall its guard only and no impairment on either host,
    whatever a run killed before its cleanup left. Returns the hosts whose impairment it removed."""
    with LAB.locked():
        _restrict(stack)
        _end_workers(stack)
        return _clear_impairment(stack)


def restore(stack: Stack) -> None:
    """The lab as `paths-up` left it: the node on its own config, the client host's firewall its guard only, no
    impairment."""
    with LAB.locked():
        _restore(stack)


def _restore(stack: Stack) -> None:
    _restrict(stack)
    _end_workers(stack)
    _clear_impairment(stack)
    _ensure_node(stack, paths_node_config(stack))


def _end_workers(stack: Stack) -> None:
    """A run's echo worker runs on the node host as AGENT_ACCOUNT (bootstrap.hosted_worker), in a session of its
    own, so a run SIGKILLed leaves it registered with the node: SIGKILL whatever runs there as that account (one
    run at a time uses the lab, so none is another run's)."""
    try:
        uid = pwd.getpwnam(AGENT_ACCOUNT).pw_uid
    except KeyError:
        return  # no such account: no worker of a run's ever ran
    netns.kill_processes_in(hosts(stack).node.namespace, uid=uid)


def down(stack: Stack, *, quiet: bool = False) -> None:
    LAB.down(lambda: _sweep(stack), quiet=quiet, left_up="paths lab")


def _sweep(stack: Stack) -> list[str]:
    """Stop the node and the front (each only if it is the process we recorded), then remove exactly the
    namespaces and links RECORD names, whichever of them exist; then the record, and the root guard is
    rewritten for the labs still up. Returns what it removed."""
    removed = []
    node = service(stack, {})
    if node.running_pid():
        removed.append(SERVICE)
    native.stop_services([node], quiet=True)
    if tls_front.running(FRONT_DIR):
        removed.append("tls-front (nginx)")
    tls_front.stop(FRONT_DIR)
    return removed + LAB.remove_recorded(stack)


def status(stack: Stack) -> int:
    lab = hosts(stack)
    reason = why_down(stack)
    node, front = service(stack, {}).running_pid(), tls_front.running(FRONT_DIR)
    mark = "✗" if reason else "✓"
    print(f"{mark} paths lab  {'up' if reason is None else 'down: ' + reason}")
    print(f"  hosts     client {lab.client_address} ({lab.client.namespace}), node {lab.node_address} "
          f"({lab.node.namespace}) on {lab.lan.bridge}")  # fmt: skip
    print(f"  node      {node_url(stack)}  [{f'pid {node}' if node else 'not running'}]")
    print(f"  front     {lab.node_address}:443, {lab.turn_address}:443  [{f'pid {front}' if front else 'not running'}]")
    print(f"  guard     {root_guard.TABLE} {'present' if root_guard.present() else 'absent'}")
    return 0 if reason is None else 1
