"""The stack's settings, read from `stack.env` at the repository root (the one source of truth for versions,
ports and development keys)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from dotenv import dotenv_values

REPO_ROOT = Path(__file__).resolve().parents[2]
STACK_ENV = REPO_ROOT / "stack.env"
LIVEKIT_YAML = REPO_ROOT / "docker" / "livekit.yaml"
RUNTIME_DIR = REPO_ROOT / ".runtime"
TOOLS_DIR = REPO_ROOT / ".tools"


PATHS_SUBNET = ipaddress.IPv4Network("10.213.70.0/24")  # dataclass defaults; stack.env's values win
CLUSTER_SUBNET = ipaddress.IPv4Network("10.213.71.0/24")


# The cluster's hosts and their stack.env keys (CLUSTER_<KEY>_ADDRESS).
CLUSTER_HOSTS = (("redis", "REDIS"), ("a", "NODE_A"), ("b", "NODE_B"), ("worker", "WORKER"), ("client", "CLIENT"))


class StackEnvError(ValueError):
    """stack.env is broken (a key missing or not a number); the message names the key and the fix."""


@dataclass(frozen=True)
class Stack:
    livekit_version: str
    livekit_cli_version: str
    livekit_port: int
    rtc_tcp_port: int
    rtc_udp_port: int
    redis_port: int
    postgres_port: int
    webhook_port: int
    api_key: str
    api_secret: str
    agent_name: str
    postgres_user: str
    postgres_db: str
    cluster_ports: tuple[int, int] = (7980, 7990)
    paths_subnet: ipaddress.IPv4Network = PATHS_SUBNET  # the client hosts' test range (--paths)
    paths_node_port: int = 7960
    paths_turn_tls_port: int = 5349
    cluster_subnet: ipaddress.IPv4Network = CLUSTER_SUBNET  # the cluster's hosts (make cluster-up)
    # Their addresses in it: the cluster's Redis, nodes a and b, the worker, the participant.
    cluster_addresses: dict[str, str] = field(default_factory=dict)
    host: str = "127.0.0.1"

    @property
    def livekit_http_url(self) -> str:
        return f"http://{self.host}:{self.livekit_port}"

    @property
    def livekit_ws_url(self) -> str:
        return f"ws://{self.host}:{self.livekit_port}"


@cache
def load_stack(path: Path = STACK_ENV) -> Stack:
    """Parse stack.env; a missing key is a broken checkout, so fail loudly naming it."""
    values = dotenv_values(path)

    def get(key: str) -> str:
        value = values.get(key)
        if not value:
            raise StackEnvError(f"{path}: {key} is missing; restore it from git (`git checkout stack.env`)")
        return value

    def port(key: str) -> int:
        value = get(key)
        if not value.isdigit() or not 0 < int(value) < 65536:
            raise StackEnvError(f"{path}: {key}={value!r} is not a port (1-65535); restore it from git")
        return int(value)

    def subnet(key: str) -> ipaddress.IPv4Network:
        value = get(key)
        try:
            network = ipaddress.IPv4Network(value)
        except ValueError:
            raise StackEnvError(f"{path}: {key}={value!r} is not an IPv4 network (e.g. 10.213.70.0/24)") from None
        if not network.is_private or network.num_addresses < 4:
            raise StackEnvError(f"{path}: {key}={value!r} must be a private range of 4+ addresses, e.g. 10.213.70.0/24")
        return network

    def address(key: str, network: ipaddress.IPv4Network) -> str:
        value = get(key)
        try:
            inside = ipaddress.IPv4Address(value) in network
        except ValueError:
            inside = False
        if not inside or value in (str(network.network_address), str(network.network_address + 1)):
            raise StackEnvError(f"{path}: {key}={value!r} must be a host address in {network}, above its first")
        return value

    cluster = subnet("CLUSTER_SUBNET")
    return Stack(
        livekit_version=get("LIVEKIT_VERSION"),
        livekit_cli_version=get("LIVEKIT_CLI_VERSION"),
        livekit_port=port("LIVEKIT_PORT"),
        rtc_tcp_port=port("LIVEKIT_RTC_TCP_PORT"),
        rtc_udp_port=port("LIVEKIT_RTC_UDP_PORT"),
        redis_port=port("REDIS_PORT"),
        postgres_port=port("POSTGRES_PORT"),
        webhook_port=port("WEBHOOK_PORT"),
        api_key=get("LIVEKIT_DEV_API_KEY"),
        api_secret=get("LIVEKIT_DEV_API_SECRET"),
        agent_name=get("LIVEKIT_AGENT_NAME"),
        postgres_user=get("POSTGRES_USER"),
        postgres_db=get("POSTGRES_DB"),
        cluster_ports=(port("CLUSTER_NODE_A_PORT"), port("CLUSTER_NODE_B_PORT")),
        paths_subnet=subnet("PATHS_SUBNET"),
        paths_node_port=port("PATHS_NODE_PORT"),
        paths_turn_tls_port=port("PATHS_TURN_TLS_PORT"),
        cluster_subnet=cluster,
        cluster_addresses={host: address(f"CLUSTER_{key}_ADDRESS", cluster) for host, key in CLUSTER_HOSTS},
    )
