"""Cluster nodes: two livekit-server nodes (a, b) on one machine sharing the stack's Redis, so LiveKit runs
distributed: any node accepts a participant and routes it to the node hosting the room. Each node's config is
the one derivation (server_config.node_config) with its own ports and `redis.address`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devstack.server_config import node_config, node_ports
from devstack.stack_env import RUNTIME_DIR, Stack

NODE_ID = re.compile(r'"nodeID": "(ND_\w+)"')


@dataclass(frozen=True)
class Node:
    name: str  # "a" or "b"
    port: int

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
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

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
    return [Node(name, port) for name, port in zip("ab", stack.cluster_ports, strict=True)]


def cluster_node_config(stack: Stack, node: Node, redis_password: str) -> dict[str, Any]:
    # Shared Redis turns on distributed mode: room placement, signal relay and agent dispatch across nodes.
    redis = {"address": f"127.0.0.1:{stack.redis_port}", "password": redis_password}
    return node_config({**node_ports(node.port), "redis": redis})
