"""The paths lab's layout and its node's config (the lab's lifecycle is devstack.paths_lab).

Two hosts on a bridge of their own (devstack.netns.Lan `lkh-p-br`, PATHS_SUBNET in stack.env), this machine the
range's first address on it: the client host (where the participant runs, behind a client's firewall) and the
node host, where the lab's servers run: its own livekit-server and the TLS front in front of it (nginx). The node
host has two addresses, because both TLS services are on 443: the node's (signalling, media, wss://) and the TURN
front's. The clients use names, resolved in the client host's own /etc/hosts: SIGNAL_NAME and TURN_NAME.

The node's own ports (PATHS_NODE_PORT in stack.env) and its config, the one derivation
(server_config.node_config) of docker/livekit.yaml:
  - rtc.node_ip is the node host's address; ICE/UDP and TURN bind it only;
  - turn.enabled: the yaml's commented `turn:` section, switched on, TURN over TLS for the domain TURN_NAME with
    the TLS held by the front on 443 (turn.external_tls), the node speaking plain TURN on PATHS_TURN_TLS_PORT;
  - no webhooks (this node proves network paths; the stack's node proves webhooks);
  - pion's log at info, so a TURN permission refusal ("permission denied for client … to peer …") is in its log.
`overrides` (a fault a run reproduces on purpose, through paths_lab.configure_node) merge over all of that.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devstack import native
from devstack.netns import Lan, LanHost
from devstack.server_config import merged, node_config, node_ports
from devstack.stack_env import RUNTIME_DIR, Stack

SERVICE = "livekit-paths"
NODE_DIR = RUNTIME_DIR / SERVICE
TLS_DIR = NODE_DIR / "tls"  # the local CA's certificate and the server's (devstack.local_ca)
FRONT_DIR = NODE_DIR / "tls-front"  # the TLS front's config, logs and pid (devstack.tls_front)
# The names clients use over TLS, under .test (reserved: no resolver answers), in the client host's /etc/hosts.
SIGNAL_NAME = "lk.paths.test"  # wss://lk.paths.test → the front on the node's address → the node's port
TURN_NAME = "turn.paths.test"  # turns:turn.paths.test:443 → the front on the TURN address → TURN
CLIENT_OFFSET, NODE_OFFSET, TURN_OFFSET = 2, 11, 12  # addresses on PATHS_SUBNET (this machine: the first)


def lan(stack: Stack) -> Lan:
    return Lan("p", stack.paths_subnet)  # namespaces lkh-p-client and lkh-p-node, bridge lkh-p-br


@dataclass(frozen=True)
class PathsHosts:
    """Where everything of the paths lab is: its hosts, their addresses, the files a run reads."""

    lan: Lan
    client: LanHost
    node: LanHost

    @property
    def subnet(self) -> ipaddress.IPv4Network:
        return self.lan.subnet

    @property
    def gateway(self) -> str:
        """This machine's own address on the lab's bridge: what it serves the client host from (a browser's
        page), and where it reaches the node from."""
        return self.lan.gateway

    @property
    def client_address(self) -> str:
        return self.client.address

    @property
    def node_address(self) -> str:
        """The node's: its signalling port and media (rtc.node_ip), and the wss:// front on 443."""
        return self.node.address

    @property
    def turn_address(self) -> str:
        """The node host's second address: the TURN-over-TLS front on 443."""
        return str(self.lan.subnet.network_address + TURN_OFFSET)

    @property
    def hosts_file(self) -> Path:
        """What the client host sees as /etc/hosts (`ip netns exec` mounts it there)."""
        return Path("/etc/netns", self.client.namespace, "hosts")

    def names(self) -> dict[str, str]:
        return {SIGNAL_NAME: self.node_address, TURN_NAME: self.turn_address}


def hosts(stack: Stack) -> PathsHosts:
    network = lan(stack)
    return PathsHosts(network, network.host("client", CLIENT_OFFSET), network.host("node", NODE_OFFSET, serves=True))


def paths_node_config(stack: Stack, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    address = hosts(stack).node_address
    settings: dict[str, Any] = {
        **node_ports(stack.paths_node_port),
        "rtc": {
            **node_ports(stack.paths_node_port)["rtc"],
            "node_ip": address,
            "ips": {"includes": [f"{address}/32"]},
        },
        "turn": {
            "enabled": True,
            "bind_addresses": [address],
            "tls_port": stack.paths_turn_tls_port,
            "domain": TURN_NAME,
            "external_tls": True,
        },
        "webhook": {"urls": []},
        "logging": {"pion_level": "info"},
    }
    return node_config(merged(settings, overrides or {}))


def service(stack: Stack, config: dict[str, Any]) -> native.Service:
    """The node on its own host; its ports are that host's (no check against this machine's)."""
    node = hosts(stack).node
    command = native.livekit_command(stack, NODE_DIR / "livekit.yaml", ("127.0.0.1", node.address))
    return native.Service(
        SERVICE, [], "livekit", lambda: command,
        prepare=lambda account: native.prepare_livekit(NODE_DIR, config, account),
        namespace=node.namespace,
    )  # fmt: skip
