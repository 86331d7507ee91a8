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
REMOTE_LAB_SUBNET = ipaddress.IPv4Network("10.213.72.0/24")
# A test range must be free on this machine: not loopback or link-local, and overlapping no route it already has
# (a LAN, a VPN, a container network) except those on the project's own links, which carry the range itself.
RESERVED = {"loopback": ipaddress.IPv4Network("127.0.0.0/8"), "link-local": ipaddress.IPv4Network("169.254.0.0/16")}
OWN_LINK_PREFIX = "lkh-"  # every namespace and link devstack.netns creates starts with it
ROUTES = Path("/proc/net/route")  # this machine's IPv4 routes (the main table)


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
    remote_lab_subnet: ipaddress.IPv4Network = REMOTE_LAB_SUBNET  # the remote lab's hosts (make remote-lab-up)
    host: str = "127.0.0.1"
    livekit_prometheus_port: int = 7883  # the server's Prometheus endpoint (the canary reads it): port + 3

    @property
    def livekit_http_url(self) -> str:
        return f"http://{self.host}:{self.livekit_port}"

    @property
    def livekit_ws_url(self) -> str:
        return f"ws://{self.host}:{self.livekit_port}"


def routes(table: Path = ROUTES) -> list[tuple[str, ipaddress.IPv4Network]]:
    """(interface, destination) of each route in `table` (/proc/net/route's layout), the default route left out:
    it overlaps every range, and a test range's hosts reach it through this machine anyway."""
    found = []
    try:
        rows = table.read_text().splitlines()[1:]
    except OSError:
        return []
    for row in rows:
        fields = row.split()
        if len(fields) < 8:
            continue
        destination, mask = (ipaddress.IPv4Address(bytes.fromhex(f)[::-1]) for f in (fields[1], fields[7]))
        network = ipaddress.IPv4Network(f"{destination}/{mask}", strict=False)
        if network.prefixlen:
            found.append((fields[0], network))
    return found


def conflicting_route(network: ipaddress.IPv4Network, table: Path | None = None) -> str | None:
    """The first route of this machine's (as `ip route` would print it) that `network` overlaps, outside the
    project's own links; None when the range is free."""
    for interface, destination in routes(table or ROUTES):
        if not interface.startswith(OWN_LINK_PREFIX) and destination.overlaps(network):
            return f"{destination} dev {interface}"
    return None


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
        if reserved := next((name for name, block in RESERVED.items() if network.overlaps(block)), None):
            raise StackEnvError(f"{path}: {key}={value!r} is {reserved}; pick a free private range like 10.213.70.0/24")
        if route := conflicting_route(network):
            raise StackEnvError(
                f"{path}: {key}={value!r} overlaps this machine's route {route}: its hosts would be unreachable or "
                "shadow that network; pick a private range no route uses (`ip route`)"
            )
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
        livekit_prometheus_port=port("LIVEKIT_PROMETHEUS_PORT"),
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
        remote_lab_subnet=subnet("REMOTE_LAB_SUBNET"),
    )
