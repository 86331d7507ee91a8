"""stack.env is the one source of truth: every other copy of a version, port or key must match it."""

from __future__ import annotations

import ipaddress
import json
import re
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml
from dotenv import dotenv_values

from backend.settings import DEFAULT_AGENT_NAME
from devstack.nodes import cluster_node_config, lan, nodes, redis_host
from devstack.server_config import node_ports
from devstack.stack_env import LIVEKIT_YAML, REPO_ROOT, Stack, load_stack
from tests.conftest import TEST_SECRETS, composecheck

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def stack() -> Stack:
    return load_stack()


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """docker-compose.yml as Compose's own parser (compose-go) resolves it with stack.env and the secrets."""
    result = composecheck(REPO_ROOT / "docker-compose.yml")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["services"]  # type: ignore[no-any-return]


def test_livekit_yaml_matches_stack(stack: Stack) -> None:
    config = yaml.safe_load(LIVEKIT_YAML.read_text())
    assert config["port"] == stack.livekit_port
    assert config["rtc"]["tcp_port"] == stack.rtc_tcp_port
    assert config["rtc"]["udp_port"] == stack.rtc_udp_port
    assert config["prometheus"] == {"port": stack.livekit_prometheus_port}
    assert node_ports(stack.livekit_port)["prometheus"] == config["prometheus"]  # the node rule: port + 3
    assert config["keys"] == {stack.api_key: stack.api_secret}
    assert config["webhook"]["api_key"] == stack.api_key
    assert [urlparse(u).port for u in config["webhook"]["urls"]] == [stack.webhook_port]


def test_clients_get_no_stun_hostname_to_resolve() -> None:
    """Without rtc.stun_servers the server hands clients Google's STUN hostnames, and the rtc SDK spent a
    native thread per lookup: thousands in one load run here. Only address literals may be listed."""
    servers = yaml.safe_load(LIVEKIT_YAML.read_text())["rtc"].get("stun_servers")
    assert servers, "rtc.stun_servers must be set (empty means Google's public STUN hostnames)"
    for server in servers:
        host, _, port = server.rpartition(":")
        ipaddress.ip_address(host.strip("[]"))  # raises on a hostname
        assert port.isdigit(), server


def test_compose_pins_and_ports_match_stack(stack: Stack, compose: dict[str, Any]) -> None:
    assert compose["livekit"]["image"] == f"livekit/livekit-server:{stack.livekit_version}"
    published = {(p["published"], p["target"], p["protocol"]) for p in compose["livekit"]["ports"]}
    assert published == {
        (str(stack.livekit_port), 7880, "tcp"),
        (str(stack.rtc_tcp_port), 7881, "tcp"),
        (str(stack.rtc_udp_port), 7882, "udp"),
        (str(stack.livekit_prometheus_port), 7883, "tcp"),
    }
    assert compose["redis"]["ports"][0]["published"] == str(stack.redis_port)
    assert compose["postgres"]["ports"][0]["published"] == str(stack.postgres_port)
    for service in compose.values():
        assert ":" in service["image"] and not service["image"].endswith(":latest"), service["image"]


@pytest.mark.parametrize("example", [".env.example", "backend/.env.example", "agent-runtime/.env.example"])
def test_env_examples_match_stack(stack: Stack, example: str) -> None:
    values = dotenv_values(REPO_ROOT / example)
    assert values["LIVEKIT_URL"] == f"ws://localhost:{stack.livekit_port}"
    assert values["LIVEKIT_API_KEY"] == stack.api_key
    assert values["LIVEKIT_API_SECRET"] == stack.api_secret


def test_agent_name_and_frontend_url_match_stack(stack: Stack) -> None:
    assert dotenv_values(REPO_ROOT / "agent-runtime/.env.example")["LIVEKIT_AGENT_NAME"] == stack.agent_name
    frontend = dotenv_values(REPO_ROOT / "frontend/.env.local.example")
    assert frontend["NEXT_PUBLIC_LIVEKIT_URL"] == f"ws://localhost:{stack.livekit_port}"


@pytest.mark.parametrize("doc", ["README.md", "docs/livekit-setup.md"])
def test_docs_name_the_pinned_versions(stack: Stack, doc: str) -> None:
    text = (REPO_ROOT / doc).read_text()
    assert f"livekit-server {stack.livekit_version}" in text or f"livekit-server` {stack.livekit_version}" in text
    for port in (
        stack.livekit_port,
        stack.rtc_tcp_port,
        stack.rtc_udp_port,
        stack.redis_port,
        stack.postgres_port,
    ):
        assert str(port) in text


def test_no_other_file_pins_a_livekit_version(stack: Stack) -> None:
    """A second copy of the tag in a tracked file is drift waiting to happen (docs quote it verbatim)."""
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True).stdout.split()
    offenders = []
    for name in tracked:
        path = Path(REPO_ROOT / name)
        if name.startswith("tests/"):
            continue  # this check's own patterns
        if path.suffix in {".py", ".yml", ".yaml", ".sh", ".toml"} or path.name == "Makefile":
            text = path.read_text(errors="ignore")
            if "livekit-server:v" in text or "livekit-server@v" in text:
                offenders.append(name)
    assert offenders == []


def test_cluster_ports_follow_the_node_rule(stack: Stack) -> None:
    values = dotenv_values(REPO_ROOT / "stack.env")
    for node in ("A", "B"):
        port = int(values[f"CLUSTER_NODE_{node}_PORT"] or 0)
        assert int(values[f"CLUSTER_{node}_RTC_TCP_PORT"] or 0) == port + 1
        assert int(values[f"CLUSTER_{node}_RTC_UDP_PORT"] or 0) == port + 2


def test_paths_node_ports_follow_the_node_rule_and_turn_allows_the_test_range() -> None:
    values = dotenv_values(REPO_ROOT / "stack.env")
    port = int(values["PATHS_NODE_PORT"] or 0)
    assert (int(values["PATHS_RTC_TCP_PORT"] or 0), int(values["PATHS_RTC_UDP_PORT"] or 0)) == (port + 1, port + 2)
    turn = yaml.safe_load((REPO_ROOT / "docker" / "livekit.yaml").read_text())["turn"]
    assert turn["allow_restricted_peer_cidrs"] == [values["PATHS_SUBNET"]]
    assert turn["enabled"] is False, "the local stack's clients are all on this host: TURN stays off there"


def test_compose_cluster_profile_matches_stack(stack: Stack) -> None:
    """Each Compose node: the native node's address (its container's, and --node-ip), ports and Redis (the
    cluster's own, at its own address), on a network whose gateway is this machine, where webhooks go."""
    result = composecheck(REPO_ROOT / "docker-compose.yml", "cluster")
    assert result.returncode == 0, result.stderr
    compose = json.loads(result.stdout)
    services = compose["services"]
    for node in nodes(stack):
        service = services[node.service]
        derived = cluster_node_config(stack, node, "a-redis-password")  # what the native runner gives the same node
        flags = dict(zip(service["command"][4::2], service["command"][5::2], strict=True))
        assert flags == {
            "--port": str(derived["port"]),
            "--node-ip": derived["rtc"]["node_ip"],
            "--redis-host": derived["redis"]["address"],
            "--rtc.tcp_port": str(derived["rtc"]["tcp_port"]),
            "--udp-port": str(derived["rtc"]["udp_port"]),
        }
        assert service["networks"] == {"cluster": {"ipv4_address": node.address}}
        assert service["extra_hosts"] == [f"host.docker.internal={lan(stack).gateway}"]
        assert derived["webhook"]["urls"] == [f"http://{lan(stack).gateway}:{stack.webhook_port}/api/webhooks/livekit"]
        assert "ports" not in service and service["profiles"] == ["cluster"]
    assert services["cluster-redis"]["networks"] == {"cluster": {"ipv4_address": redis_host(stack).address}}
    assert compose["networks"]["cluster"]["ipam"]["config"] == [
        {"subnet": str(stack.cluster_subnet), "gateway": lan(stack).gateway}
    ]


def test_cluster_host_address_is_the_ranges_first() -> None:
    values = dotenv_values(REPO_ROOT / "stack.env")
    assert values["CLUSTER_HOST_ADDRESS"] == lan(load_stack()).gateway


def test_default_agent_name_matches_stack(stack: Stack) -> None:
    assert stack.agent_name == DEFAULT_AGENT_NAME


@pytest.fixture(scope="module")
def compose_cluster() -> dict[str, Any]:
    result = composecheck(REPO_ROOT / "docker-compose.yml", "cluster")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["services"]  # type: ignore[no-any-return]


def test_compose_publishes_every_port_on_loopback_only(compose_cluster: dict[str, Any]) -> None:
    published = {
        (name, p["published"], p.get("host_ip")) for name, s in compose_cluster.items() for p in s.get("ports", [])
    }
    assert published and {host for _, _, host in published} == {"127.0.0.1"}, published


def test_compose_app_role_is_no_superuser(stack: Stack, compose: dict[str, Any]) -> None:
    postgres = compose["postgres"]
    env = postgres["environment"]
    assert env["POSTGRES_USER"] == "postgres" != stack.postgres_user  # the image's superuser is not the app's role
    assert (env["APP_DB_USER"], env["APP_DB_NAME"]) == (stack.postgres_user, stack.postgres_db)
    assert env["APP_DB_PASSWORD"] == TEST_SECRETS["POSTGRES_PASSWORD"]
    assert env["POSTGRES_PASSWORD"] == TEST_SECRETS["POSTGRES_ADMIN_PASSWORD"]
    mounts = {v["source"]: v["target"] for v in postgres["volumes"] if v["type"] == "bind"}
    assert mounts[str(REPO_ROOT / "docker" / "postgres-init.sh")].startswith("/docker-entrypoint-initdb.d/")
    script = (REPO_ROOT / "docker" / "postgres-init.sh").read_text()
    assert "NOSUPERUSER" in script and "SUPERUSER " not in script.replace("NOSUPERUSER", "")


def test_compose_passwords_travel_in_the_environment_never_a_command_line(compose_cluster: dict[str, Any]) -> None:
    for name, service in compose_cluster.items():
        command = " ".join(service.get("command") or [])
        assert not any(secret in command for secret in TEST_SECRETS.values()), name
    assert compose_cluster["redis"]["environment"]["REDIS_PASSWORD"] == TEST_SECRETS["REDIS_PASSWORD"]
    assert "requirepass $REDIS_PASSWORD" in compose_cluster["redis"]["command"][-1]
    for node in ("livekit-a", "livekit-b"):
        assert compose_cluster[node]["environment"]["REDIS_PASSWORD"] == TEST_SECRETS["REDIS_PASSWORD"]


def test_compose_without_the_generated_secrets_says_run_make_env() -> None:
    result = composecheck(REPO_ROOT / "docker-compose.yml", secrets=False)
    assert result.returncode == 1
    assert "run make env, which generates .env.secrets" in result.stderr


def test_no_committed_file_holds_a_service_password() -> None:
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True).stdout.split()
    pattern = re.compile(r"^(POSTGRES_PASSWORD|POSTGRES_ADMIN_PASSWORD|REDIS_PASSWORD)=\S", re.MULTILINE)
    offenders = [name for name in tracked if (REPO_ROOT / name).is_file() and not name.startswith("tests/")
                 and pattern.search((REPO_ROOT / name).read_text(errors="ignore"))]  # fmt: skip
    assert offenders == []
    assert "app-dev-password" not in (REPO_ROOT / "stack.env").read_text()
