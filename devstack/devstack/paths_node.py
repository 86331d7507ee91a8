"""The paths check's own livekit-server node: on the host side of a client host's link, with TURN on.

Its own ports (PATHS_NODE_PORT in stack.env): livekit-server's ICE/TCP port listens on every address, so it
cannot share the stack's. Its config is the one derivation (server_config.node_config) of docker/livekit.yaml:
  - rtc.node_ip is the host side's address, the one the client host reaches; ICE/UDP and TURN bind it only;
  - turn.enabled: the yaml's commented `turn:` section, switched on;
  - no webhooks (this node proves network paths; the stack's node proves webhooks);
  - pion's log at info, so a TURN permission refusal ("permission denied for client … to peer …") is in its log;
  - with `tls`: TURN over TLS for the domain TURN_NAME, the TLS held by the front (devstack.tls_front) on 443
    (turn.external_tls), the node speaking plain TURN on PATHS_TURN_TLS_PORT behind it.
`overrides` (a fault the check reproduces on purpose) merge over all of that.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

from devstack import native
from devstack.health import probe_livekit
from devstack.netns import ClientHost
from devstack.safe_files import read_private
from devstack.server_config import merged, node_config, node_ports
from devstack.stack_env import RUNTIME_DIR, Stack

SERVICE = "livekit-paths"
READY_TIMEOUT = 15.0
TLS_DIR = RUNTIME_DIR / SERVICE / "tls"  # the local CA's certificate and the server's (devstack.local_ca)
FRONT_DIR = RUNTIME_DIR / SERVICE / "tls-front"  # the TLS front's config, logs and pid (devstack.tls_front)
# The names clients use over TLS, under .test (reserved: no resolver answers), in the client host's /etc/hosts.
SIGNAL_NAME = "lk.paths.test"  # wss://lk.paths.test → the front on the host address → the node's port
TURN_NAME = "turn.paths.test"  # turns:turn.paths.test:443 → the front on the service address → TURN


def client_host(stack: Stack) -> ClientHost:
    """The paths check's client host: namespace lkh-paths on PATHS_SUBNET."""
    return ClientHost("paths", stack.paths_subnet)


def client_names(host: ClientHost) -> dict[str, str]:
    return {SIGNAL_NAME: host.host_address, TURN_NAME: host.service_address}


def paths_node_config(
    stack: Stack, host: ClientHost, overrides: Mapping[str, Any] | None = None, *, tls: bool = False
) -> dict[str, Any]:
    address = host.host_address
    settings: dict[str, Any] = {
        **node_ports(stack.paths_node_port),
        "rtc": {
            **node_ports(stack.paths_node_port)["rtc"],
            "node_ip": address,
            "ips": {"includes": [f"{address}/32"]},
        },
        "turn": {"enabled": True, "bind_addresses": [address]}
        | ({"tls_port": stack.paths_turn_tls_port, "domain": TURN_NAME, "external_tls": True} if tls else {}),
        "webhook": {"urls": []},
        "logging": {"pion_level": "info"},
    }
    return node_config(merged(settings, overrides or {}))


def turn_udp_port(config: Mapping[str, Any]) -> int:
    return int((config.get("turn") or {}).get("udp_port") or 0)


def service(stack: Stack, host: ClientHost, config: dict[str, Any]) -> native.Service:
    ports = native.livekit_ports(stack.paths_node_port)
    if turn := turn_udp_port(config):
        ports.append((turn, True))
    if turn_tls := int((config.get("turn") or {}).get("tls_port") or 0):
        ports.append((turn_tls, False))
    directory = RUNTIME_DIR / SERVICE
    command = native.livekit_command(stack, directory / "livekit.yaml", ("127.0.0.1", host.host_address))
    return native.Service(
        SERVICE, ports, "livekit", lambda: command,
        prepare=lambda account: native.prepare_livekit(directory, config, account),
    )  # fmt: skip


def start(stack: Stack, host: ClientHost, config: dict[str, Any]) -> native.Service:
    """A fresh node with `config` (one an earlier, killed run left is stopped first), ready when GET / answers
    200; StackError with its log's tail when it exits or is not ready in time. Blocking: from asyncio, run it in a
    thread."""
    node = service(stack, host, config)
    native.stop_services([node], quiet=True)
    native.start_missing([node], quiet=True)
    deadline = time.monotonic() + READY_TIMEOUT
    while not asyncio.run(probe_livekit("127.0.0.1", stack.paths_node_port)).up:
        if not node.running_pid():
            raise native.StackError(f"{SERVICE} exited during start-up; last log lines:\n{native.tail(node, 15)}")
        if time.monotonic() > deadline:
            raise native.StackError(f"{SERVICE} not ready after {READY_TIMEOUT:.0f}s; see {node.log_file}")
        time.sleep(0.1)
    return node


def stop(stack: Stack, host: ClientHost) -> None:
    native.stop_services([service(stack, host, {})], quiet=True)


def log_text(node: native.Service) -> str:
    return read_private(node.log_file) or ""
