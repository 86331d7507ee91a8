"""Cluster mode against two REAL livekit-server nodes sharing the stack's Redis."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.nodes import nodes
from devstack.stack_env import Stack
from tests.conftest import bootstrap_report, run_module

pytestmark = pytest.mark.integration


@pytest.fixture
def cluster(stack: Stack) -> Iterator[Stack]:
    up = run_module("devstack", "cluster-up")
    assert up.returncode == 0, up.stderr
    yield stack
    down = run_module("devstack", "cluster-down")
    assert down.returncode == 0, down.stderr


def cluster_report() -> tuple[int, dict[str, object]]:
    return bootstrap_report("--cluster", "--timeout", "40", timeout=90)


def test_cluster_passes_across_nodes_and_a_killed_node_is_named(cluster: Stack) -> None:
    code, report = cluster_report()
    assert code == 0, report
    stages = report["stages"]
    assert isinstance(stages, list)
    assert [s["name"] for s in stages] == ["nodes", "worker", "cross-node"]
    cross = stages[2]["detail"]
    assert "joined via b" in cross or "joined via a" in cross
    assert cross.count("webhooks verified") == 2

    node_b = nodes(cluster)[1]
    pid = int((node_b.dir / f"{node_b.service}.pid").read_text().split()[0])
    os.kill(pid, signal.SIGKILL)
    code, report = cluster_report()
    assert code == 1
    stages = report["stages"]
    assert isinstance(stages, list)
    assert stages[0]["status"] == "fail"
    assert stages[0]["cause"].startswith(f"node b at 127.0.0.1:{node_b.port}:")


def test_compose_cluster_flags_run_on_the_real_server(stack: Stack, tmp_path: Path) -> None:
    """The flags the Compose profile passes (--redis-host, --rtc.tcp_port, --udp-port) exist in the pinned
    server, and it takes Redis's password from REDIS_PASSWORD in its environment as the Compose nodes do: it
    starts with them and registers in Redis (ports shifted to stay clear of the cluster)."""
    from devstack.credentials import load_credentials
    from devstack.install import livekit_server_binary
    from devstack.server_config import node_config, render

    config = tmp_path / "livekit.yaml"
    config.write_text(render(node_config({"port": 17980})))
    server = subprocess.Popen(
        [str(livekit_server_binary(stack)), "--config", str(config), "--bind", "127.0.0.1",
         "--redis-host", f"127.0.0.1:{stack.redis_port}", "--rtc.tcp_port", "17981", "--udp-port", "17982"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "REDIS_PASSWORD": load_credentials().redis_password},
    )  # fmt: skip
    try:
        assert server.stdout is not None
        for line in server.stdout:
            if "starting LiveKit server" in line:
                break
        assert '"portHttp": 17980' in line and '"rtc.portTCP": 17981' in line and '"Start":17982' in line, line
    finally:
        server.kill()  # SIGTERM makes a Redis-backed node drain for a while; nothing to drain here
        server.wait(10)
