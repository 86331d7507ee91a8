"""`make remote-lab-up` / `make remote-lab-down`: a LiveKit deployment this code did not configure, for
`python -m bootstrap --url` to be proven against. Natively, as root (network namespaces; layout in
devstack.remote_lab_hosts):

  - the node host runs its own Redis, livekit-server on the hand-written config tests/remote_lab/livekit.yaml
    (signalling on the host's loopback only, TURN on) and a TLS front (nginx, devstack.tls_front) that is the only
    way in: wss://lk.remote.test, and turns:turn.remote.test:443;
  - the certificate comes from a local CA (devstack.local_ca), valid CERT_DAYS and backdated CERT_BACKDATE, so a
    clock a little behind is not first refused by TLS; the faults' certificates (expired, for another name, from
    a CA the harness is not given) are made beside it, each with a CA of its own, and `serve` puts one in front;
  - the client host, where the harness runs, resolves the names through its own /etc/hosts (this machine's is
    never edited);
  - the root namespace's guard (devstack.root_guard) covers the lab's bridge too.

What `up` creates is written to RECORD first; `down` (and `make down`) removes exactly what it names, under one
lock (LOCK_FILE). A test that changed the lab (`serve`, `redis`, `configure`, `block_udp`) puts it back with
`restore`.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import ssl
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from devstack import install, local_ca, native, netns, root_guard, tls_front
from devstack.lab_record import LabRecord
from devstack.native import StackError
from devstack.processes import Account
from devstack.remote_lab_hosts import (
    CONFIG,
    LAB_DIR,
    NODE_PORT,
    OTHER_NAME,
    SIGNAL_NAME,
    TURN_NAME,
    TURN_TLS_PORT,
    RemoteLabHosts,
    hosts,
)
from devstack.safe_files import ensure_dir, read_private, write_private
from devstack.server_config import merged
from devstack.stack_env import RUNTIME_DIR, Stack

LAB = LabRecord("remote")  # its lock, and the record of what it created: all the sweep ever removes
RECORD = LAB.record_file
TLS_DIR = LAB_DIR / "tls"
FRONT_DIR = LAB_DIR / "tls-front"
NODE_SERVICE, REDIS_SERVICE = "remote-lab-livekit", "remote-lab-redis"
CERT_DAYS, CERT_BACKDATE = 31, "-2h"
# Each certificate the front can serve: its names, its days, the clock openssl signs it at; each with its own CA.
CERTIFICATES = {
    "healthy": ([SIGNAL_NAME, TURN_NAME], CERT_DAYS, CERT_BACKDATE),
    "expired": ([SIGNAL_NAME, TURN_NAME], 30, "-40d"),  # expired 10 days ago
    "other-name": ([OTHER_NAME], CERT_DAYS, CERT_BACKDATE),
    "untrusted": ([SIGNAL_NAME, TURN_NAME], CERT_DAYS, CERT_BACKDATE),  # its CA is not the one the lab hands out
}
READY_TIMEOUT = 15.0
# livekit-server sent SIGTERM within ~0.5 s of starting does not exit until the stop's SIGKILL 10 s later (measured:
# 10.15 s at once, 0.16 s after 0.5 s): a restart waits until the node has run this long.
NODE_SETTLE = 1.0


def url(port: int | None = None) -> str:
    return f"wss://{SIGNAL_NAME}" + (f":{port}" if port else "")


def ca_cert(certificate: str = "healthy") -> Path:
    """The CA that signed `certificate`: the healthy one's is what the lab hands a user (--ca-file)."""
    return local_ca.files(TLS_DIR / certificate).ca_cert


def credentials() -> tuple[str, str]:
    """The key and secret, as the deployment's config lists them (a user copies them from there too)."""
    keys = yaml.safe_load(CONFIG.read_text())["keys"]
    key = next(iter(keys))
    return key, str(keys[key])


def client_argv(stack: Stack, argv: list[str]) -> list[str]:
    """`argv` run on the lab's client host (where the names resolve)."""
    return hosts(stack).client.exec_argv(argv)


def _redis(stack: Stack) -> native.Service:
    directory = RUNTIME_DIR / REDIS_SERVICE  # its account enters it by its group (each service's own, as the stack's)

    def prepare(account: Account) -> None:
        data = ensure_dir(directory / "data", mode=0o700, uid=account.uid, gid=account.gid)
        lines = ["# Written by devstack.remote_lab: the deployment's own Redis, on its host's loopback.",
                 "port 6379", "bind 127.0.0.1", "protected-mode yes", f"dir {data}", 'save ""', "appendonly no",
                 "daemonize no"]  # fmt: skip
        write_private(directory / "redis.conf", "\n".join(lines) + "\n", mode=0o640, gid=account.gid)

    return native.Service(REDIS_SERVICE, [], "redis",
                          lambda: [shutil.which("redis-server") or "redis-server", str(directory / "redis.conf")],
                          prepare=prepare, namespace=hosts(stack).node.namespace, directory=directory)  # fmt: skip


def _node(stack: Stack, text: str | None = None) -> native.Service:
    """The node on `text` (None: the hand-written file, as it is)."""
    directory = RUNTIME_DIR / NODE_SERVICE
    config = directory / "livekit.yaml"

    def prepare(account: Account) -> None:
        write_private(config, text or CONFIG.read_text(), mode=0o640, gid=account.gid)

    return native.Service(NODE_SERVICE, [], "livekit", lambda: native.livekit_command(stack, config, ("127.0.0.1",)),
                          prepare=prepare, namespace=hosts(stack).node.namespace, directory=directory)  # fmt: skip


def _front(stack: Stack, *, passes_upgrade: bool = True) -> tls_front.Front:
    lab = hosts(stack)
    return tls_front.Front(lab.node.address, lab.turn_address, NODE_PORT, TURN_TLS_PORT, lab.node.address, FRONT_DIR,
                           namespace=lab.node.namespace, passes_upgrade=passes_upgrade)  # fmt: skip


def up(stack: Stack) -> None:
    """The lab, ready: reused (and restored: the healthy certificate, Redis up) when it is sound, else made anew."""
    if reason := netns.missing_capability("remote-lab-up"):
        raise StackError(f"the remote lab's hosts are network namespaces; {reason}")
    install.ensure_packages(paths=True)
    install.ensure_livekit_server(stack)
    if reason := tls_front.missing():
        raise StackError(reason)
    with LAB.locked():
        if why_down(stack) is None:
            _restore(stack)
            print(f"  remote lab already up ({url()}); restored", file=sys.stderr)
            return
        for removed in LAB.made_afresh(lambda: _sweep(stack), lambda: _create(stack)):
            print(f"  removed   {removed} (an earlier remote lab, incomplete)", file=sys.stderr)


def _create(stack: Stack) -> None:
    lab = hosts(stack)
    ensure_dir(LAB_DIR, mode=0o755)
    ensure_dir(TLS_DIR, mode=0o700)
    LAB.record(lab.lan, [lab.client, lab.node])
    netns.create_lan(lab.lan, [lab.client, lab.node])
    netns.add_address(lab.node, lab.turn_address)
    netns.write_hosts_file(lab.client.namespace, lab.names())
    root_guard.update(stack)
    for name, (names, days, clock) in CERTIFICATES.items():
        local_ca.issue(TLS_DIR / name, names, days=days, clock=clock)
    native.start_missing([_redis(stack), _node(stack)], quiet=True)
    serve(stack, "healthy")
    print(f"  remote lab {url()} (node {lab.node.address}, TURN front {lab.turn_address}; client host "
          f"{lab.client.namespace}, its hosts file {lab.hosts_file}); CA {ca_cert()}", file=sys.stderr)  # fmt: skip


def serve(stack: Stack, certificate: str, *, passes_upgrade: bool = True) -> None:
    """The front restarted with `certificate` (one of CERTIFICATES), passing the WebSocket upgrade or (a proxy
    misconfigured) not; returns once the node answers through it (any status: without its Redis, 406)."""
    tls_front.stop(FRONT_DIR)
    tls_front.start(_front(stack, passes_upgrade=passes_upgrade), local_ca.files(TLS_DIR / certificate))
    deadline = time.monotonic() + READY_TIMEOUT
    while (status := health(stack)) is None or (certificate == "healthy" and status != 200 and _redis_up(stack)):
        if time.monotonic() > deadline:
            log = (read_private(_front(stack).error_log) or "").strip().splitlines()[-2:]
            raise StackError(f"the remote lab's node did not answer through its front within {READY_TIMEOUT:.0f}s "
                             f"(last GET / status {status}; front: {' | '.join(log)})")  # fmt: skip
        time.sleep(0.1)


def _redis_up(stack: Stack) -> bool:
    return _redis(stack).running_pid() is not None


def health(stack: Stack) -> int | None:
    """GET / through the front, from this machine (TLS not verified: the certificate may be a fault's); the
    status, or None when nothing answers."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    try:
        with (
            socket.create_connection((hosts(stack).node.address, 443), timeout=2.0) as raw,
            context.wrap_socket(raw, server_hostname=SIGNAL_NAME) as tls,
        ):
            tls.sendall(f"GET / HTTP/1.1\r\nHost: {SIGNAL_NAME}\r\nConnection: close\r\n\r\n".encode())
            head = tls.recv(64).decode(errors="replace")
    except OSError:
        return None
    parts = head.split()
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None


def redis(stack: Stack, *, running: bool) -> None:
    """The node's Redis stopped (the node turns not ready: GET / 406 within ~4 s) or started again."""
    service = _redis(stack)
    if running:
        native.start_missing([service], quiet=True)
    else:
        native.stop_services([service], quiet=True)


def configure(stack: Stack, overrides: Mapping[str, Any]) -> None:
    """The node restarted on the hand-written config with `overrides` merged over it (a fault a user's config
    has: rtc.node_ip, turn.domain, turn.enabled); returns once it answers GET / 200 through the front."""
    config = merged(yaml.safe_load(CONFIG.read_text()), overrides)
    header = f"# tests/remote_lab/livekit.yaml with a fault merged over it: {dict(overrides)}\n"
    with LAB.locked():
        _restart_node(stack, header + yaml.safe_dump(config, sort_keys=False))
        serve(stack, "healthy")


def _restart_node(stack: Stack, text: str | None) -> None:
    node = _node(stack, text)
    with contextlib.suppress(OSError):  # a node started less than NODE_SETTLE ago (a restore just before) settles
        time.sleep(max(0.0, NODE_SETTLE - (time.time() - node.pid_file.stat().st_mtime)))
    native.stop_services([node], quiet=True)
    native.start_missing([node], quiet=True)


def block_udp(stack: Stack, blocked: bool) -> None:
    """The node host sends no UDP (a deployment's firewall that lets only TCP through: ICE over UDP and TURN over
    UDP never answer), or again does (`blocked=False`)."""
    netns.restrict(hosts(stack).node, block_udp=blocked)


def post_webhooks_to_client(stack: Stack, port: int, path: str) -> None:
    """The deployment's webhooks (signed with its own key) posted to the client host's `port` at `path`, which
    the client host's guard opens to the node host only (until `restore`), as a user points webhook.urls at the
    machine that runs `--webhook-listen`."""
    lab = hosts(stack)
    key, _ = credentials()
    netns.open_port(lab.client, lab.node.address, port)
    configure(stack, {"webhook": {"api_key": key, "urls": [f"http://{lab.client.address}:{port}{path}"]}})


def restore(stack: Stack) -> None:
    with LAB.locked():
        _restore(stack)


def _restore(stack: Stack) -> None:
    """The lab as `up` made it: the node's firewall open, Redis up, the node on its hand-written config (restarted
    only when it runs another), the healthy certificate in front (which waits for GET / 200)."""
    netns.restrict(hosts(stack).node)
    netns.close_ports(hosts(stack).client)
    native.start_missing([_redis(stack)], quiet=True)
    node = _node(stack)
    if node.running_pid() and read_private(node.dir / "livekit.yaml") != CONFIG.read_text():
        _restart_node(stack, None)
    native.start_missing([node], quiet=True)
    serve(stack, "healthy")


def why_down(stack: Stack) -> str | None:
    lab: RemoteLabHosts = hosts(stack)
    if not RECORD.exists():
        return "the remote lab is not up"
    present = netns.namespaces()
    if missing := [ns for ns in (lab.client.namespace, lab.node.namespace) if ns not in present]:
        return f"the remote lab's host {', '.join(missing)} is gone"
    if not _node(stack).running_pid():
        return f"the remote lab's node ({NODE_SERVICE}) is not running"
    if not tls_front.running(FRONT_DIR):
        return "the remote lab's TLS front (nginx) is not running"
    if not local_ca.valid_for(local_ca.files(TLS_DIR / "healthy"), hours=24 * 30):
        return "the remote lab's certificate is valid for less than 30 days"
    if not root_guard.present():
        return f"the root namespace's guard ({root_guard.TABLE}) is missing"
    return None


def down(stack: Stack, *, quiet: bool = False) -> None:
    LAB.down(lambda: _sweep(stack), quiet=quiet, left_up="remote lab")


def _sweep(stack: Stack) -> list[str]:
    """The front and the services (each only if it is the process we recorded), then exactly the namespaces and
    links RECORD names; the record; the root guard rewritten for the labs still up."""
    removed = []
    if tls_front.running(FRONT_DIR):
        removed.append("tls-front (nginx)")
    tls_front.stop(FRONT_DIR)
    for service in (_node(stack), _redis(stack)):
        if service.running_pid():
            removed.append(service.name)
        native.stop_services([service], quiet=True)
    return removed + LAB.remove_recorded(stack)
