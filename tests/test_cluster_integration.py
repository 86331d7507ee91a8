"""Cluster mode against two REAL livekit-server nodes, each on a host of its own (network namespaces), sharing
the cluster's Redis on another; the worker and the participant each on a host of their own. One cluster per
module (cluster-up takes about a second); each test leaves it as it found it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bootstrap.modes.cluster.cluster_probe import node_status
from devstack import netns
from devstack.native_cluster import service as native_cluster_service
from devstack.nodes import Node, client_host, lan, nodes, worker_host
from devstack.stack_env import REPO_ROOT, Stack, load_stack
from tests.conftest import PY, Watched, bootstrap_report, bootstrap_report_watching, native_cluster, run_module
from tests.frozen_run import run_frozen_after_worker

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="the cluster's hosts are network namespaces: needs root (as CI runs)"),
]
STACK = load_stack()


def cluster_leftovers() -> list[str]:
    """Namespaces, links and processes of the cluster still on this machine."""
    prefix = lan(STACK).prefix
    found = [n for n in netns.namespaces() + netns.links() if n.startswith(prefix)]
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    ours = ("livekit-a/", "livekit-b/", "cluster-redis", "agent_runtime", "bootstrap.participant_process")
    return found + [line for line in ps.splitlines() if any(mark in line for mark in ours)]


def processes_on(host: netns.LanHost) -> list[str]:
    return subprocess.run(["ip", "netns", "pids", host.namespace], capture_output=True, text=True).stdout.split()


@pytest.fixture(scope="module")
def cluster() -> Iterator[Stack]:
    with native_cluster() as stack:
        yield stack
    assert cluster_leftovers() == [], "cluster-down left these behind"


WATCHED = {
    **{f"livekit-server {node.name}": Watched(str(node.config_path), "livekit-server") for node in nodes(STACK)},
    "participant": Watched("bootstrap.participant_process", "python", of_run=True),
    "worker": Watched("agent_runtime", "python", of_run=True),
}
SCRATCH = ("participant-*", "cluster-worker-*")  # the participant's and the worker's HOMEs (service_python)


def scratch_homes() -> set[Path]:
    return {home for pattern in SCRATCH for home in Path(tempfile.gettempdir()).glob(pattern)}


@pytest.fixture(scope="module")
def watched_run(cluster: Stack) -> tuple[int, dict[str, Any], dict[str, set[str]], set[Path]]:
    """The run, the users its processes ran as, and the scratch HOMEs it left (none were there before)."""
    before = scratch_homes()
    code, report, owners = bootstrap_report_watching("--cluster", "--timeout", "60", watch=WATCHED, timeout=90)
    return code, report, owners, scratch_homes() - before


@pytest.fixture(scope="module")
def passing_run(watched_run: tuple[int, dict[str, Any], Any, Any]) -> tuple[int, dict[str, Any]]:
    return watched_run[0], watched_run[1]


def test_no_node_participant_or_worker_runs_as_root(watched_run: tuple[int, dict[str, Any], Any, Any]) -> None:
    """libwebrtc parses network input in the participant, the nodes parse everyone's, and the worker holds the
    API secret: each runs as its own unprivileged account (the participant and the worker with the interpreter
    `make install` built for them: never a silent root); no uid of any is root."""
    assert watched_run[2] == {"livekit-server a": {"livekit"}, "livekit-server b": {"livekit"},
                              "participant": {"livekit-client"}, "worker": {"livekit-agent"}}  # fmt: skip


def test_a_run_leaves_no_scratch_home(watched_run: tuple[int, dict[str, Any], Any, Any]) -> None:
    """The participant's and the worker's scratch HOMEs are removed when they end (the run's own cleanup)."""
    assert watched_run[3] == set()


def test_cluster_passes_across_nodes_and_hosts(passing_run: tuple[int, dict[str, Any]]) -> None:
    code, report = passing_run
    assert code == 0, json.dumps(report["stages"], indent=1)
    assert [s["name"] for s in report["stages"]] == ["nodes", "worker", "cross-node"]
    assert "each on its own host" in report["stages"][0]["detail"]
    assert f"from host {worker_host(STACK).address}, through node b" in report["stages"][1]["detail"]
    assert report["stages"][2]["detail"].count("webhooks verified") == 2


def test_each_rooms_media_goes_to_its_host_node_from_the_participants_own_stats(
    passing_run: tuple[int, dict[str, Any]],
) -> None:
    by_name = {node.name: node for node in nodes(STACK)}
    rooms = passing_run[1]["cluster"]
    assert len(rooms) == 2
    for figures in rooms.values():
        host, entry = by_name[figures["host"]], by_name[figures["entry"]]
        assert host is not entry
        assert figures["pairs"], "no selected pair"
        for pair in figures["pairs"].values():
            assert (pair["local"]["address"], pair["remote"]["address"]) == (client_host(STACK).address, host.address)
            assert pair["remote"]["port"] == host.rtc_udp_port


def test_the_data_plane_crosses_the_nodes(passing_run: tuple[int, dict[str, Any]]) -> None:
    for figures in passing_run[1]["cluster"].values():
        data, audio = figures["data"], figures["audio"]
        assert (data["reliable_back"], data["reliable_in_order"], data["rpc_calls"]) == (100, True, 20)
        assert (
            audio["lost_after_setup"] == 0 and audio["timed_markers"] >= 12 and audio["agent_heard"]["peak_rms"] > 200
        )
        assert figures["failure"] is None and figures["dispatch_s"] > 0


def test_a_run_leaves_no_worker_or_participant_on_their_hosts(passing_run: tuple[int, dict[str, Any]]) -> None:
    assert processes_on(worker_host(STACK)) == [] and processes_on(client_host(STACK)) == []


def test_ctrl_c_mid_run_stops_the_worker_and_the_participant(cluster: Stack) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIVEKIT_")}
    run = subprocess.Popen([PY, "-m", "bootstrap", "--json", "--cluster"], cwd=REPO_ROOT, env=env, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 20
    while not processes_on(client_host(STACK)) and time.monotonic() < deadline and run.poll() is None:
        time.sleep(0.05)
    assert processes_on(client_host(STACK)), "the participant never started on its host"
    run.send_signal(signal.SIGINT)
    out, _ = run.communicate(timeout=20)
    assert run.returncode == 1 and "interrupted" in json.dumps(json.loads(out)["stages"])
    assert processes_on(worker_host(STACK)) == [] and processes_on(client_host(STACK)) == []


def test_a_killed_node_is_named_with_its_address(cluster: Stack) -> None:
    node_b = nodes(cluster)[1]
    pid = int((node_b.dir / f"{node_b.service}.pid").read_text().split()[0])
    os.kill(pid, signal.SIGKILL)
    try:
        code, report = bootstrap_report("--cluster", "--timeout", "30", timeout=60)
        assert code == 1
        assert report["stages"][0]["status"] == "fail"
        assert report["stages"][0]["cause"].startswith(f"node b at {node_b.address}:{node_b.port}:")
    finally:
        up = run_module("devstack", "cluster-up", "--runner", "native")  # the next tests get a whole cluster
        assert up.returncode == 0, up.stderr


def test_cluster_up_without_cap_net_admin_says_so_and_starts_nothing() -> None:
    no_net_admin = ["setpriv", "--bounding-set=-net_admin", "--inh-caps=-net_admin"]
    result = subprocess.run([*no_net_admin, PY, "-m", "devstack", "cluster-up", "--runner", "native"],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 1 and "CAP_NET_ADMIN" in result.stderr, result.stderr


def test_compose_cluster_flags_run_on_the_real_server(stack: Stack, tmp_path: Path) -> None:
    """The flags the Compose profile passes (--port, --node-ip, --redis-host, --rtc.tcp_port, --udp-port) exist in
    the pinned server, and it takes Redis's password from REDIS_PASSWORD in its environment as the Compose nodes
    do: it starts with them and registers in Redis (the stack's, ports shifted to stay clear of the cluster)."""
    from devstack.credentials import load_credentials
    from devstack.install import livekit_server_binary
    from devstack.server_config import node_config, render

    config = tmp_path / "livekit.yaml"
    # The flags under test shift every port but Prometheus's, which has none: moved here, off the stack's.
    config.write_text(render(node_config({"prometheus": {"port": 17983}})))
    server = subprocess.Popen(
        [str(livekit_server_binary(stack)), "--config", str(config), "--bind", "127.0.0.1", "--port", "17980",
         "--node-ip", "127.0.0.1", "--redis-host", f"127.0.0.1:{stack.redis_port}", "--rtc.tcp_port", "17981",
         "--udp-port", "17982"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "REDIS_PASSWORD": load_credentials().redis_password},
    )  # fmt: skip
    try:
        assert server.stdout is not None
        for line in server.stdout:
            if "starting LiveKit server" in line:
                break
        assert '"portHttp": 17980' in line and '"rtc.portTCP": 17981' in line and '"Start":17982' in line, line
        assert '"nodeIP": "127.0.0.1"' in line, line
    finally:
        server.kill()  # SIGTERM makes a Redis-backed node drain for a while; nothing to drain here
        server.wait(10)


def test_a_node_frozen_mid_run_is_named_with_its_address(cluster: Stack) -> None:
    """Node b, the worker's entry, frozen once the worker registered (SIGSTOP: the kernel still accepts its
    connections, nothing answers; continued afterwards, tests/frozen_run.py). The API goes to node a, which
    answers "no response from servers": the failing stage names node b, not only what node a said."""
    node_b = nodes(cluster)[1]
    pid = native_cluster_service(cluster, node_b.service).running_pid()
    assert pid is not None
    run = run_frozen_after_worker(pid, "--cluster", "--timeout", "15")  # the worker registers ~5 s into the run
    assert [s["status"] for s in run.report["stages"]] == ["pass", "pass", "fail"], run.report["stages"]
    failed = run.failed
    assert failed["cause"].startswith(f"node b at {node_b.address}:{node_b.port} is not answering: it accepts"), failed
    assert failed["kind"] == "network" and str(node_b.log_file) in failed["fix"]
    assert run.waited <= 10.0, f"the run ended {run.waited:.1f} s after the freeze"
    assert processes_on(worker_host(STACK)) == [] and processes_on(client_host(STACK)) == []
    assert ready_within(node_b, 10.0), "node b did not answer GET / 200 within 10 s of SIGCONT"


def ready_within(node: Node, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while (status := asyncio.run(node_status(node))) != "200" and time.monotonic() < deadline:
        time.sleep(0.2)
    return status == "200"
