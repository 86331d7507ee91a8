"""The cluster's layout: two livekit-server nodes (a, b), each on a host of its own, sharing a Redis on a host
of its own, so LiveKit runs distributed: any node accepts a participant and routes it to the node hosting the
room, whose own address (rtc.node_ip) the participant's media goes to. The hosts are network namespaces on a
bridge (devstack.netns.Lan, CLUSTER_SUBNET in stack.env); the worker and the participant get hosts of their own
too (bootstrap --cluster starts them). Each node's config is the one derivation (server_config.node_config)."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devstack.netns import Lan, LanHost
from devstack.server_config import node_config, node_ports
from devstack.stack_env import RUNTIME_DIR, Stack

NODE_ID = re.compile(r'"nodeID": "(ND_\w+)"')


def lan(stack: Stack) -> Lan:
    return Lan("c", stack.cluster_subnet)  # namespaces lkh-c-*, bridge lkh-c-br


def _host(stack: Stack, name: str, *, serves: bool = False) -> LanHost:
    """The host `name` at its address from stack.env (CLUSTER_<NAME>_ADDRESS)."""
    offset = int(ipaddress.IPv4Address(stack.cluster_addresses[name])) - int(stack.cluster_subnet.network_address)
    return lan(stack).host(name, offset, serves=serves)


def redis_host(stack: Stack) -> LanHost:
    return _host(stack, "redis", serves=True)


def worker_host(stack: Stack) -> LanHost:
    return _host(stack, "worker")


def client_host(stack: Stack) -> LanHost:
    return _host(stack, "client")


@dataclass(frozen=True)
class Node:
    name: str  # "a" or "b"
    port: int
    host: LanHost

    @property
    def address(self) -> str:
        return self.host.address

    @property
    def service(self) -> str:
        return f"livekit-{self.name}"

    @property
    def rtc_tcp_port(self) -> int:
        return int(node_ports(self.port)["rtc"]["tcp_port"])

    @property
    def rtc_udp_port(self) -> int:
        return int(node_ports(self.port)["rtc"]["udp_port"])

    @property
    def http_url(self) -> str:
        return f"http://{self.address}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.address}:{self.port}"

    @property
    def dir(self) -> Path:
        return RUNTIME_DIR / self.service

    @property
    def config_path(self) -> Path:
        return self.dir / "livekit.yaml"

    @property
    def log_file(self) -> Path:
        return self.dir / f"{self.service}.log"

    def node_id(self) -> str | None:
        """The id this node registered under in Redis, from its own start-up log line."""
        try:
            found = NODE_ID.findall(self.log_file.read_text(errors="replace"))
        except FileNotFoundError:
            return None
        return found[-1] if found else None


def nodes(stack: Stack) -> list[Node]:
    return [
        Node(name, port, _host(stack, name, serves=True)) for name, port in zip("ab", stack.cluster_ports, strict=True)
    ]


def redis_address(stack: Stack) -> str:
    return f"{redis_host(stack).address}:{stack.redis_port}"


def webhook_url(stack: Stack) -> str:
    """Where the nodes post webhooks: this machine, on the bridge (the receiver binds that address)."""
    return f"http://{lan(stack).gateway}:{stack.webhook_port}/api/webhooks/livekit"


def cluster_node_config(stack: Stack, node: Node, redis_password: str) -> dict[str, Any]:
    # Shared Redis turns on distributed mode: room placement, signal relay and agent dispatch across nodes.
    # Each node advertises, and binds its ICE/UDP to, its own host's address.
    return node_config({
        **node_ports(node.port),
        "rtc": {**node_ports(node.port)["rtc"], "node_ip": node.address, "ips": {"includes": [f"{node.address}/32"]}},
        "redis": {"address": redis_address(stack), "password": redis_password},
        "webhook": {"urls": [webhook_url(stack)]},
    })  # fmt: skip
