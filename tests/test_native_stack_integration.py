"""The native stack's lifecycle through the Makefile, as a user runs it: up, health, idempotent up,
down with nothing left listening, a taken port named with its owner, and up again."""

from __future__ import annotations

import shutil
import socket
import subprocess

import pytest

from devstack.ports import port_owner
from devstack.stack_env import REPO_ROOT, Stack

pytestmark = pytest.mark.integration


def make(*targets: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "--no-print-directory", *targets], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )


def listeners(stack: Stack) -> dict[str, str | None]:
    ports = {
        "livekit": (stack.livekit_port, False),
        "rtc-tcp": (stack.rtc_tcp_port, False),
        "rtc-udp": (stack.rtc_udp_port, True),
        "redis": (stack.redis_port, False),
        "postgres": (stack.postgres_port, False),
    }
    return {name: port_owner(port, udp=udp) for name, (port, udp) in ports.items()}


@pytest.fixture(scope="module", autouse=True)
def native_only() -> None:
    if shutil.which("docker") and subprocess.run(["docker", "info"], capture_output=True).returncode == 0:
        pytest.skip("a Docker engine answers: `make up` uses Compose here, not the native runner")


def test_up_is_healthy_and_idempotent(stack: Stack) -> None:
    first = make("up")
    assert first.returncode == 0, first.stderr
    again = make("up")
    assert again.returncode == 0, again.stderr
    assert again.stderr.count("already running") == 3
    health = make("health")
    assert health.returncode == 0, health.stdout
    assert [line.split()[:2] for line in health.stdout.splitlines()] == [
        ["✓", "postgres"],
        ["✓", "redis"],
        ["✓", "livekit"],
    ]


def test_down_leaves_nothing_listening_and_a_taken_port_is_named(stack: Stack) -> None:
    down = make("down")
    assert down.returncode == 0, down.stderr
    assert listeners(stack) == dict.fromkeys(listeners(stack))  # every port free
    health = make("health")
    assert health.returncode != 0
    assert "✗ livekit   down  127.0.0.1:7880  connection refused" in health.stdout

    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", stack.redis_port))
        squatter.listen()
        blocked = make("up")
        assert blocked.returncode != 0
        assert f"redis: port {stack.redis_port}/tcp is already taken by python" in blocked.stderr
        assert all(owner is None for name, owner in listeners(stack).items() if name != "redis"), (
            "a failed `make up` must not leave other services half-started"
        )

    restored = make("up")
    assert restored.returncode == 0, restored.stderr
    assert make("health").returncode == 0


def test_the_real_server_loaded_the_config_cleanly(stack: Stack) -> None:
    """The pinned livekit-server started from (the native copy of) docker/livekit.yaml, with our keys."""
    log = (REPO_ROOT / ".runtime" / "livekit" / "livekit.log").read_text()
    assert '"nodeIP": "127.0.0.1"' in log
    assert f'"version": "{stack.livekit_version.lstrip("v")}"' in log
    assert "could not parse config" not in log
    assert "secret is too short" not in log
