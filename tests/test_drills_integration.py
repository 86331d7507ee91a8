"""Drills against the REAL multi-host cluster: each run once (repeated runs and p50s are bench/drills.py's),
each must observe its fault, measure every figure and leave the cluster whole, however it ends."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from bootstrap.modes.cluster.cluster_probe import node_status
from devstack.nodes import client_host, nodes, worker_host
from devstack.stack_env import REPO_ROOT, Stack, load_stack
from tests.conftest import PY, bootstrap_report, native_cluster, run_module

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="the cluster's hosts are network namespaces: needs root (as CI runs)"),
]
STACK = load_stack()


@pytest.fixture(scope="module")
def cluster() -> Iterator[Stack]:
    with native_cluster() as stack:
        yield stack


def output(argv: list[str]) -> str:
    return subprocess.run(argv, capture_output=True, text=True).stdout


def not_whole() -> list[str]:
    """What keeps the cluster from being whole: a node not answering 200, a node cut off, a worker or participant
    left on their hosts."""
    statuses = {node.name: asyncio.run(node_status(node)) for node in nodes(STACK)}
    wrong = [f"node {name} answers {status}" for name, status in statuses.items() if status != "200"]
    cut = [f"node {node.name} cut off" for node in nodes(STACK)
           if "lkh_cut" in output(node.host.exec_argv(["nft", "list", "tables"]))]  # fmt: skip
    hosts = (worker_host(STACK), client_host(STACK))
    left = [f"pid {pid} left in {host.namespace}" for host in hosts
            for pid in output(["ip", "netns", "pids", host.namespace]).split()]  # fmt: skip
    return wrong + cut + left


def still_broken(within: float = 10.0) -> list[str]:
    """Empty once the cluster is whole; what is not, if it is not within `within` seconds (a drill's last
    processes may still be exiting as its report is printed)."""
    deadline = time.monotonic() + within
    while (missing := not_whole()) and time.monotonic() < deadline:
        time.sleep(0.5)
    return missing


@pytest.fixture(autouse=True)
def whole_before(cluster: Stack) -> None:
    """Each drill starts on a whole cluster: a drill that failed leaves it repaired (its closer), but a node
    restarted or let back in answers 406 until its stats in Redis are fresh again."""
    assert still_broken(within=30.0) == [], "the cluster was not whole before this drill"


def drill(name: str) -> tuple[int, dict[str, Any]]:
    return bootstrap_report("--cluster", "--drill", name, timeout=300)


def test_node_loss_is_observed_measured_and_restored(cluster: Stack) -> None:
    code, report = drill("node-loss")
    assert (code, report["status"]) == (0, "pass"), json.dumps(report["stages"], indent=1)
    figures = report["drill"]
    assert figures["name"] == "node-loss"
    for way, fault in (("killed", {"refused"}), ("cut off", {"timeout", "unreachable"})):
        lost = figures[way]
        assert lost["fault_observed"] in fault, lost
        assert 0 <= lost["fault_observed_s"] < 10
        assert set(lost["participant"]) == {"reconnecting_s", "reconnected_s", "disconnected_s", "reason"}
        assert isinstance(lost["recovered"], bool) and lost["restored_s"] >= 0
        assert (lost["recovered_s"] is not None) == lost["recovered"]
        if lost["recovered"]:  # clean audio comes no earlier than the first working room, or not in its window
            assert lost["clean_s"] is None or lost["clean_s"] >= lost["recovered_s"], lost
            assert lost["clean_attempts"] >= 1 and "audio_lost_after_setup" in lost["clean_check"]
    assert still_broken() == []


def test_redis_outage_turns_nodes_not_ready_and_is_measured(cluster: Stack) -> None:
    code, report = drill("redis-outage")
    assert (code, report["status"]) == (0, "pass"), json.dumps(report["stages"], indent=1)
    for outage in ("5s", "40s"):
        figures = report["drill"][outage]
        seen = {status for row in figures["timeline"] for status in row["status"].values()}
        assert "406" in seen, figures["timeline"]  # GET / turns Not Ready while Redis is gone
        assert figures["timeline"][-1]["status"] == {"a": "200", "b": "200"}
        assert all(0 < t <= float(outage[:-1]) for t in figures["not_ready_after_s"].values())
        assert isinstance(figures["recovered"], bool) and isinstance(figures["worker_reregistered"], bool)
        assert figures["nodes_ready_s"] is not None or figures["restarted_nodes"]
    assert still_broken() == []


def test_ctrl_c_mid_fault_leaves_the_cluster_whole(cluster: Stack) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIVEKIT_")}
    run = subprocess.Popen([PY, "-m", "bootstrap", "--json", "--cluster", "--drill", "node-loss"], cwd=REPO_ROOT,
                           env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)  # fmt: skip
    victim = nodes(STACK)[0]
    deadline = time.monotonic() + 30
    while asyncio.run(node_status(victim)) == "200" and time.monotonic() < deadline and run.poll() is None:
        time.sleep(0.1)  # until the drill has killed the node
    assert asyncio.run(node_status(victim)) != "200", "the drill never injected its fault"
    run.send_signal(signal.SIGINT)
    out, _ = run.communicate(timeout=30)
    assert run.returncode == 1 and "interrupted" in json.dumps(json.loads(out)["stages"])
    assert still_broken() == []


def test_drill_needs_cluster_mode() -> None:
    result = run_module("bootstrap", "--drill", "node-loss")
    assert result.returncode == 2 and "--drill needs --cluster" in result.stderr
