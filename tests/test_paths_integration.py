"""`python -m bootstrap --paths`: a participant on another host (a network namespace), over each network path,
against the paths lab's own real livekit-server node (make paths-up: once per test session, the paths_lab_up
fixture); the misconfigurations users hit, each named; the lab left as paths-up made it however a run ends. The
passing run is made once per module and its report read by several tests."""

from __future__ import annotations

import fcntl
import json
import os
import pwd
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devstack import netns, paths_lab, root_guard
from devstack.__main__ import remove_network_leftovers
from devstack.paths_node import NODE_DIR, paths_node_config
from devstack.safe_files import read_private
from devstack.server_config import render
from devstack.service_python import AGENT_ACCOUNT
from devstack.stack_env import REPO_ROOT, RUNTIME_DIR, Stack, load_stack
from tests.conftest import PY, Watched, bootstrap_report, bootstrap_report_watching, run_module

pytestmark = [
    pytest.mark.integration,
    # The bootstrap itself skips without CAP_NET_ADMIN (tested below); as root, as CI runs, every path must PASS.
    pytest.mark.skipif(os.geteuid() != 0, reason="client hosts are network namespaces: needs root (as CI runs)"),
    pytest.mark.usefixtures("paths_lab_up"),
]
STACK = load_stack()
LAB = paths_lab.hosts(STACK)
CLIENT, NODE = LAB.client_address, LAB.node_address
UDP_PORT = STACK.paths_node_port + 2


def leftovers() -> list[str]:
    """What a run left changed in the lab, or of its own on this machine: a process in the client host, the
    client host's path firewall, the node on another config than the lab's own, a participant anywhere, its echo
    worker (or a job of it) on the node host."""
    found = subprocess.run(["ip", "netns", "pids", LAB.client.namespace], capture_output=True, text=True).stdout.split()
    found += [f"worker process {pid} on the node host" for pid in agent_processes_on_node()]
    tables = subprocess.run(LAB.client.exec_argv(["nft", "list", "tables"]), capture_output=True, text=True).stdout
    found += [table for table in tables.split() if table == "lkh_path"]
    if read_private(NODE_DIR / "livekit.yaml") != render(paths_node_config(STACK)):
        found.append("the node runs another config than the lab's own")
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    found += [line for line in ps.splitlines() if "bootstrap.participant_process" in line]
    return found


def agent_processes_on_node() -> list[str]:
    """The node host's processes running as livekit-agent: the run's echo worker and its jobs (nothing else there
    runs as that account)."""
    return [str(pid) for pid in netns.pids_in(LAB.node.namespace, uid=pwd.getpwnam(AGENT_ACCOUNT).pw_uid)]


def stage(report: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in report["stages"] if s["name"] == name)


PARTICIPANT = "bootstrap.participant_process"  # the rtc SDK's participant, in the client host
WATCHED = {
    "livekit-server": Watched(str(NODE_DIR / "livekit.yaml"), "livekit-server"),  # the lab's node, on its host
    "participant": Watched(PARTICIPANT, "python", of_run=True),  # the udp, turn-udp and wss paths' client
    "chromium": Watched("", "chromium", of_run=True),  # the tcp and turn-tls paths' client: all its processes
    "worker": Watched("agent_runtime", "python", of_run=True),  # the echo worker, on the node host (hosted_worker)
    # Its job processes (the agent's libwebrtc): forked by its forkserver, so they share the forkserver's command.
    "agent jobs": Watched("multiprocessing.forkserver", "python", of_run=True),
}


@pytest.fixture(scope="module")
def watched_run(paths_lab_up: Stack) -> tuple[int, dict[str, Any], dict[str, set[str]]]:
    return bootstrap_report_watching("--paths", watch=WATCHED, timeout=90)


@pytest.fixture(scope="module")
def passing_run(watched_run: tuple[int, dict[str, Any], dict[str, set[str]]]) -> tuple[int, dict[str, Any]]:
    return watched_run[0], watched_run[1]


def test_no_server_participant_browser_or_worker_runs_as_root(
    watched_run: tuple[int, dict[str, Any], dict[str, set[str]]],
) -> None:
    """Each parses network input, on a host whose firewall root could change: the lab's node as livekit, the
    rtc SDK's participant (libwebrtc) as livekit-client, Chromium as livekit-browser, the echo worker and its
    agent's job processes (libwebrtc, and the API secret) as livekit-agent; no uid of any is root."""
    assert watched_run[2] == {"livekit-server": {"livekit"}, "participant": {"livekit-client"},
                              "chromium": {"livekit-browser"}, "worker": {"livekit-agent"},
                              "agent jobs": {"livekit-agent"}}  # fmt: skip


def test_every_path_passes(passing_run: tuple[int, dict[str, Any]]) -> None:
    code, report = passing_run
    assert (code, report["status"]) == (0, "pass"), json.dumps(report["stages"], indent=1)
    paths = ["path udp", "path turn-udp", "path tcp", "path turn-tls", "path wss"]
    assert [s["name"] for s in report["stages"]] == ["client-host", "worker", *paths]
    assert all(s["status"] == "pass" for s in report["stages"])


def test_udp_path_is_a_udp_host_pair_from_the_clients_own_stats(passing_run: tuple[int, dict[str, Any]]) -> None:
    figures = passing_run[1]["paths"]["udp"]
    for pair in figures["pairs"].values():
        local, remote = pair["local"], pair["remote"]
        assert (local["type"], local["protocol"], local["address"]) == ("host", "udp", CLIENT)
        assert (remote["type"], remote["protocol"], remote["address"], remote["port"]) == (
            "host",
            "udp",
            NODE,
            UDP_PORT,
        )
    assert figures["pairs"], "no transport reported a selected pair"


def test_turn_udp_path_relays_through_the_nodes_turn(passing_run: tuple[int, dict[str, Any]]) -> None:
    figures = passing_run[1]["paths"]["turn-udp"]
    assert figures["relay_forced"] is True
    for pair in figures["pairs"].values():
        assert (pair["local"]["type"], pair["local"]["protocol"], pair["local"]["relay_protocol"]) == (
            "relay",
            "udp",
            "udp",
        )
        assert (pair["remote"]["type"], pair["remote"]["address"], pair["remote"]["port"]) == ("host", NODE, UDP_PORT)
    assert figures["pairs"], "no transport reported a selected pair"


def test_tcp_path_is_chromium_over_ice_tcp_from_the_browsers_own_stats(passing_run: tuple[int, dict[str, Any]]) -> None:
    figures = passing_run[1]["paths"]["tcp"]
    assert (figures["client"], figures["udp_blocked"]) == ("chromium", True)
    pair = figures["pairs"]["publisher"]
    assert (pair["local"]["protocol"], pair["local"]["address"]) == ("tcp", CLIENT)
    assert pair["remote"] | {"relay_protocol": ""} == {
        "type": "host", "protocol": "tcp", "address": NODE, "port": STACK.paths_node_port + 1, "relay_protocol": "",
    }  # fmt: skip
    assert "Swift SDK cannot" in figures["other_clients"] and "RTCConfiguration.swift" in figures["other_clients"]


def test_turn_tls_path_relays_over_tls_through_the_front(passing_run: tuple[int, dict[str, Any]]) -> None:
    figures = passing_run[1]["paths"]["turn-tls"]
    assert (figures["client"], figures["udp_blocked"], figures["relay_forced"]) == ("chromium", True, True)
    pair = figures["pairs"]["publisher"]
    assert (pair["local"]["type"], pair["local"]["relay_protocol"]) == ("relay", "tls")
    assert (pair["remote"]["address"], pair["remote"]["port"]) == (NODE, UDP_PORT)
    assert "rtc SDK cannot with a private CA" in figures["other_clients"]


def test_wss_path_signals_through_the_tls_proxy(passing_run: tuple[int, dict[str, Any]]) -> None:
    figures = passing_run[1]["paths"]["wss"]
    assert (figures["client"], figures["url"]) == ("rtc-sdk", "wss://lk.paths.test")
    for pair in figures["pairs"].values():
        assert (pair["local"]["type"], pair["local"]["protocol"], pair["remote"]["port"]) == ("host", "udp", UDP_PORT)


@pytest.mark.parametrize("path", ["tcp", "turn-tls"])
def test_audio_and_rpc_crossed_each_browser_path(passing_run: tuple[int, dict[str, Any]], path: str) -> None:
    figures = passing_run[1]["paths"][path]
    assert figures["data"]["rpc_calls"] == 20 and figures["data"]["rpc_round_trip_s"]["p50"] > 0
    audio = figures["audio"]
    assert abs(audio["agent_heard"]["dominant_hz"] - 440) <= 30 and audio["agent_heard"]["peak_rms"] > 200
    assert abs(audio["echo_hz"] - 440) <= 30 and audio["echo_db"] > -70


@pytest.mark.parametrize("path", ["udp", "turn-udp", "wss"])
def test_media_and_data_crossed_each_sdk_path(passing_run: tuple[int, dict[str, Any]], path: str) -> None:
    figures = passing_run[1]["paths"][path]
    data, audio = figures["data"], figures["audio"]
    assert (data["reliable_back"], data["reliable_in_order"], data["rpc_calls"]) == (100, True, 20)
    assert audio["lost_after_setup"] == 0 and audio["timed_markers"] >= 12
    assert 0 < audio["round_trip_s"]["p50"] <= audio["round_trip_s"]["p95"]
    assert audio["agent_heard"]["peak_rms"] > 200
    assert figures["join_s"] > 0


def test_a_passing_run_leaves_nothing_and_reports_no_secret(passing_run: tuple[int, dict[str, Any]]) -> None:
    assert leftovers() == []
    text = json.dumps(passing_run[1])
    assert STACK.api_secret not in text and "turn_password" not in text and "eyJ" not in text


@pytest.mark.parametrize(
    ("fault", "path", "in_cause", "in_fix"),
    [
        ("node-ip", "udp", ["127.0.0.1:7962", "cannot reach", f"{NODE}:{STACK.paths_node_port}"],
         ["rtc.node_ip", NODE, "use_external_ip"]),
        ("udp-blocked", "udp", [f"UDP to the node's candidate {NODE}:{UDP_PORT} is blocked", "no TURN"],
         [f"open UDP {UDP_PORT}", "enable TURN"]),
        ("turn-peers", "turn-udp", ["permission denied", "allow_restricted_peer_cidrs", "lists nothing"],
         ["allow_restricted_peer_cidrs", str(STACK.paths_subnet)]),
        ("untrusted-ca", "wss", ["refused the signalling's TLS certificate", "UnknownIssuer"],
         ["a CA the clients trust"]),
        ("untrusted-ca", "turn-tls", ["refused the TLS front's certificate", "its log: 'alert"],
         ["a CA the clients trust"]),
    ],
)  # fmt: skip
def test_each_misconfiguration_fails_naming_its_cause(
    fault: str, path: str, in_cause: list[str], in_fix: list[str]
) -> None:
    started = time.monotonic()
    code, report = bootstrap_report("--paths", path, "--fault", fault, timeout=60)
    failed = stage(report, f"path {path}")
    assert (code, report["status"], failed["status"]) == (1, "fail", "fail"), json.dumps(report["stages"], indent=1)
    for words in in_cause:
        assert words in failed["cause"], failed["cause"]
    for words in in_fix:
        assert words in failed["fix"], failed["fix"]
    assert time.monotonic() - started < 20, "a misconfiguration must be named within the ICE bound, not the SDK's 60 s"
    assert leftovers() == []


def start_run(*args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIVEKIT_")}
    return subprocess.Popen([PY, "-m", "bootstrap", "--json", "--paths", *args], cwd=REPO_ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)  # fmt: skip


def wait_for_client_in_namespace(run: subprocess.Popen[str]) -> None:
    """Until the participant (bootstrap.participant_process) runs inside the client host: a path is under way (not
    just the short-lived nft commands that set the host up)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and run.poll() is None:
        listing = subprocess.run(["ip", "netns", "pids", LAB.client.namespace], capture_output=True, text=True)
        pids = listing.stdout.split()
        if any(b"bootstrap.participant_process" in _cmdline(pid) for pid in pids):
            return
        time.sleep(0.05)
    pytest.fail("the run never started its client inside the client host")


def _cmdline(pid: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def test_ctrl_c_mid_path_ends_the_run_and_removes_everything() -> None:
    run = start_run()
    wait_for_client_in_namespace(run)
    run.send_signal(signal.SIGINT)
    out, _ = run.communicate(timeout=10)
    report = json.loads(out)
    assert run.returncode == 1
    assert stage(report, "path udp")["cause"].startswith("interrupted")
    for later in ("path turn-udp", "path tcp", "path turn-tls", "path wss"):  # Ctrl-C ends the run
        assert (stage(report, later)["status"], stage(report, later)["cause"]) == ("skipped", "the run was interrupted")
    assert leftovers() == []


@pytest.fixture
def killed_run() -> Iterator[None]:
    """A run with a fault that changes the lab's node (TURN off) and the client host's firewall (no UDP), killed
    by SIGKILL mid-path: nothing of its cleanup happens."""
    run = start_run("udp", "--fault", "udp-blocked")
    wait_for_client_in_namespace(run)
    run.kill()
    run.wait()
    yield
    result = run_module("devstack", "paths-up")  # whatever the test left: the lab as paths-up makes it
    assert result.returncode == 0, result.stderr


def test_a_run_killed_by_sigkill_is_undone_by_the_next(killed_run: None) -> None:
    left = leftovers()
    assert "lkh_path" in left and "the node runs another config than the lab's own" in left, left
    assert agent_processes_on_node(), "the killed run's worker did not outlive it: nothing here to undo"
    code, report = bootstrap_report("--paths", "udp", timeout=60)
    assert code == 0, json.dumps(report["stages"], indent=1)
    assert "the node's own config restored (an earlier run left it changed)" in stage(report, "client-host")["detail"]
    assert leftovers() == []


def test_paths_up_undoes_what_a_killed_run_left(killed_run: None) -> None:
    result = run_module("devstack", "paths-up")
    assert result.returncode == 0 and "already up" in result.stderr, result.stderr
    assert leftovers() == []


def test_without_the_lab_the_run_fails_naming_paths_up_and_make_down_removed_it() -> None:
    """`make down`'s broom removes the lab (and the root guard with it); a run then says what is missing and the
    fix; paths-up brings it back (for the tests after this one)."""
    try:
        remove_network_leftovers()  # what `python -m devstack down` (make down) calls after stopping the stack
        namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert LAB.client.namespace not in namespaces and LAB.node.namespace not in namespaces
        assert not (RUNTIME_DIR / "paths-lab.json").exists()
        assert not root_guard.present(), "the root guard outlived the last lab"
        code, report = bootstrap_report("--paths", "udp", timeout=30)
        failed = stage(report, "client-host")
        assert (code, failed["status"]) == (1, "fail")
        assert failed["cause"] == "the paths lab is not up" and "make paths-up" in failed["fix"], failed
        assert stage(report, "path udp")["cause"] == "client-host did not pass"
    finally:
        result = run_module("devstack", "paths-up")
        assert result.returncode == 0, result.stderr


def test_without_cap_net_admin_every_path_is_skipped_and_the_run_is_no_pass() -> None:
    no_net_admin = ["setpriv", "--bounding-set=-net_admin", "--inh-caps=-net_admin", PY, "-m", "bootstrap"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIVEKIT_")}
    result = subprocess.run([*no_net_admin, "--json", "--paths"], cwd=REPO_ROOT, env=env, capture_output=True,
                            text=True, timeout=30)  # fmt: skip
    report = json.loads(result.stdout)
    assert (result.returncode, report["status"]) == (1, "fail")
    assert {s["status"] for s in report["stages"]} == {"skipped"}
    assert "CAP_NET_ADMIN" in stage(report, "client-host")["cause"]
    assert stage(report, "path udp")["cause"] == "client-host did not pass"


def test_a_second_run_at_once_is_refused_and_touches_nothing() -> None:
    RUNTIME_DIR.mkdir(exist_ok=True)
    with open(RUNTIME_DIR / "paths.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        code, report = bootstrap_report("--paths", timeout=30)
    assert (code, stage(report, "client-host")["status"]) == (1, "fail")
    assert "another `python -m bootstrap --paths` run is in progress" in stage(report, "client-host")["cause"]
