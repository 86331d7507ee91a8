"""`python -m bootstrap --url` against the remote lab (make remote-lab-up: once per test session): a deployment this
code did not configure, reached only by its name through a TLS front, the harness on the lab's client host with
only a URL, a key, a secret and a CA. A healthy run, then seeded faults, each asserting the EVIDENCE in the report's
`target` object (the measured skew, the certificate's dates and names, the addresses), the cause's kind, and that
nothing secret is printed. Every fault is put back however its test ends (remote_lab.restore)."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from backend.webhook_receiver import WEBHOOK_PATH
from devstack import install, remote_lab
from devstack.remote_lab_hosts import OTHER_NAME, SIGNAL_NAME, TURN_NAME, hosts
from devstack.stack_env import load_stack
from tests.conftest import PY, run_module

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab's hosts are network namespaces: needs root (as CI runs)"),
]
STACK = load_stack()
LAB = hosts(STACK)
RUN_TIMEOUT = 60  # the whole process, bounded from outside too (timeout -k)
WEBHOOK_LISTEN_PORT = 8090  # on the client host: its own network, so the stack's 8000 is no concern
WHOLE_JWT = re.compile(r"eyJ[\w-]{10,}\.[\w-]{10,}\.[\w-]{10,}")


@pytest.fixture(scope="module", autouse=True)
def remote_lab_up() -> Iterator[None]:
    """`make remote-lab-up` once (reused, restored, when it is up already); down afterwards if this made it."""
    started_here = remote_lab.why_down(STACK) is not None
    result = run_module("devstack", "remote-lab-up", timeout=300)
    assert result.returncode == 0, f"the remote lab did not come up:\n{result.stderr}"
    yield
    if started_here:
        run_module("devstack", "remote-lab-down")


@pytest.fixture(scope="module")
def ca_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The lab's CA, as a user would be handed it (a copy: the lab's own directory is root's only)."""
    return _copy_ca("healthy", tmp_path_factory.mktemp("ca"))


def _copy_ca(certificate: str, directory: Path) -> Path:
    copy = directory / f"{certificate}-ca.pem"
    copy.write_bytes(remote_lab.ca_cert(certificate).read_bytes())
    return copy


def bootstrap(
    *args: str, key: str | None = None, secret: str | None = None, clock: str = ""
) -> tuple[int, str, dict[str, Any]]:
    """`python -m bootstrap --json ARGS` on the lab's client host, the key and secret in its environment only;
    `clock` shifts its clock (libfaketime, preloaded into the Python process alone). Exit code, stderr, report."""
    lab_key, lab_secret = remote_lab.credentials()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIVEKIT_")}
    env |= {"LIVEKIT_API_KEY": key or lab_key, "LIVEKIT_API_SECRET": secret or lab_secret}
    shift = ["env", f"LD_PRELOAD={_libfaketime()}", f"FAKETIME={clock}"] if clock else []
    argv = ["timeout", "-k", "5", str(RUN_TIMEOUT), *shift, PY, "-m", "bootstrap", "--json", "--env-file",
            "/nonexistent/.env", *args]  # fmt: skip
    done = subprocess.run(remote_lab.client_argv(STACK, argv), capture_output=True, text=True, env=env,
                          timeout=RUN_TIMEOUT + 15, check=False)  # fmt: skip
    assert done.stdout.strip(), done.stderr[-2000:]
    output = done.stdout + done.stderr
    assert lab_secret not in output and (secret is None or secret not in output)
    assert not WHOLE_JWT.search(output), "a whole token was printed"
    return done.returncode, done.stderr, json.loads(done.stdout)


def _libfaketime() -> str:
    found = glob.glob(install.LIBFAKETIME_GLOB)
    assert found, "libfaketime is missing: make remote-lab-up installs Debian's faketime"
    return found[0]


def stage(report: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in report["stages"] if s["name"] == name)


@contextlib.contextmanager
def serving(certificate: str, *, passes_upgrade: bool = True) -> Iterator[None]:
    try:
        remote_lab.serve(STACK, certificate, passes_upgrade=passes_upgrade)
        yield
    finally:
        remote_lab.restore(STACK)


def test_a_healthy_deployment_passes_with_no_warning_and_its_evidence(ca_file: Path) -> None:
    started = time.monotonic()
    code, _, report = bootstrap("--url", remote_lab.url(), "--ca-file", str(ca_file))
    elapsed = time.monotonic() - started
    assert (code, report["status"]) == (0, "pass"), json.dumps(report["stages"], indent=1)
    assert not [s for s in report["stages"] if s["status"] == "warn"]
    assert stage(report, "webhooks")["status"] == "skipped" and "--webhook-listen" in stage(report, "webhooks")["cause"]
    target = report["target"]
    endpoint = target["endpoint"]
    assert endpoint["addresses"] == [LAB.node.address] and endpoint["port"] == 443
    tls = endpoint["tls"]
    now = datetime.now(UTC)
    assert tls["verified"] and SIGNAL_NAME in tls["names"]
    assert datetime.fromisoformat(tls["not_before"]) <= now - timedelta(hours=1)  # backdated
    assert tls["days_left"] >= 30
    assert endpoint["health"] == {"status": 200, "body": "OK"}
    assert endpoint["upgrade"] == {"path": "/rtc", "status": 401}  # LiveKit saw the upgrade and asked for a token
    assert abs(target["clock"]["skew_s"]) < 3 and target["keys"]["accepted"]
    offer = target["offer"]
    assert f"host udp {LAB.node.address}:7882" in offer["candidates"]
    assert f"host tcp {LAB.node.address}:7881" in offer["candidates"]
    assert offer["ice_servers"]["turn_tls"] == ["turns:turn.remote.test:443?transport=tcp"]
    assert offer["server"]["version"] == STACK.livekit_version.lstrip("v")
    assert target["agent_name"].startswith("bootstrap-remote-")
    _assert_paths_pass(report)
    assert elapsed < 15, f"the healthy run took {elapsed:.1f}s (target: 15 s, whole process)"
    assert _rooms_named(target["room"], ca_file) == [], "the run's room was left on the deployment"


def _rooms_named(room: str, ca_file: Path) -> list[str]:
    """The deployment's rooms named `room` (asking for that name only), from the client host."""
    key, secret = remote_lab.credentials()
    probe = (
        "import asyncio,sys;from livekit import api\n"
        "async def main():\n"
        f" lk=api.LiveKitAPI('https://{SIGNAL_NAME}',sys.argv[1],sys.argv[2])\n"
        f" rooms=await lk.room.list_rooms(api.ListRoomsRequest(names=['{room}']))\n"
        " print(','.join(r.name for r in rooms.rooms));await lk.aclose()\n"
        "asyncio.run(main())\n"
    )
    env = {**os.environ, "SSL_CERT_FILE": str(ca_file)}
    done = subprocess.run(remote_lab.client_argv(STACK, [PY, "-c", probe, key, secret]), capture_output=True,
                          text=True, env=env, timeout=30, check=True)  # fmt: skip
    return [name for name in done.stdout.strip().split(",") if name]


def test_a_wrong_secret_is_named_as_the_secret(ca_file: Path) -> None:
    code, _, report = bootstrap("--url", remote_lab.url(), "--ca-file", str(ca_file),
                                secret="not-the-secret-0123456789abcdef012345")  # fmt: skip
    keys = stage(report, "keys")
    assert (code, keys["status"], keys["kind"]) == (1, "fail", "auth")
    assert "LIVEKIT_API_SECRET is not that key's secret" in keys["cause"]
    evidence = report["target"]["keys"]
    assert evidence["probe"]["status"] == 401 and evidence["wide_window_probe"]["status"] == 401
    assert "signature is invalid" in evidence["wide_window_probe"]["said"]
    assert all(s["status"] == "skipped" for s in report["stages"][2:])


def test_an_unknown_key_is_named_as_the_key(ca_file: Path) -> None:
    code, _, report = bootstrap("--url", remote_lab.url(), "--ca-file", str(ca_file), key="nobody")
    keys = stage(report, "keys")
    assert (code, keys["status"], keys["kind"]) == (1, "fail", "auth")
    assert "does not know the API key 'nobody'" in keys["cause"]
    assert "invalid API key" in report["target"]["keys"]["probe"]["said"]


def test_a_clock_ten_minutes_ahead_fails_naming_the_clock_and_the_skew(ca_file: Path) -> None:
    code, _, report = bootstrap("--url", remote_lab.url(), "--ca-file", str(ca_file), clock="+10m")
    keys = stage(report, "keys")
    assert (code, keys["status"], keys["kind"]) == (1, "fail", "clock"), keys
    skew = report["target"]["clock"]["skew_s"]
    assert -605 <= skew <= -595, skew
    assert f"{-skew:.0f} s ahead of the server's" in keys["cause"]
    assert report["target"]["keys"]["wide_window_probe"]["status"] == 200  # the key itself is fine
    assert "not valid yet" in report["target"]["keys"]["probe"]["said"]


def test_a_clock_fifteen_minutes_behind_warns_with_the_skew_and_passes(ca_file: Path) -> None:
    code, _, report = bootstrap("--url", remote_lab.url(), "--ca-file", str(ca_file), clock="-15m")
    keys = stage(report, "keys")
    assert (code, report["status"]) == (0, "warn"), json.dumps(report["stages"], indent=1)
    assert (keys["status"], keys["kind"]) == ("warn", "clock")
    clock = report["target"]["clock"]
    assert 895 <= clock["skew_s"] <= 905, clock
    assert abs(clock["shortest_failing_ttl_s"] - (clock["skew_s"] - 60)) <= 1
    assert f"{clock['shortest_failing_ttl_s']} s or less is refused as expired" in keys["cause"]
    assert [s["status"] for s in report["stages"] if s["name"] != "keys"].count("fail") == 0


def test_an_expired_certificate_fails_with_its_dates(tmp_path: Path) -> None:
    with serving("expired"):
        code, _, report = bootstrap("--url", remote_lab.url(), "--ca-file", str(_copy_ca("expired", tmp_path)))
    endpoint = stage(report, "endpoint")
    assert (code, endpoint["status"], endpoint["kind"]) == (1, "fail", "tls")
    tls = report["target"]["endpoint"]["tls"]
    assert not tls["verified"] and tls["days_left"] < -9
    assert datetime.fromisoformat(tls["not_after"]) < datetime.now(UTC) - timedelta(days=9)
    assert f"expired {-int(tls['days_left'])} days ago" in endpoint["cause"] and tls["not_after"] in endpoint["cause"]


def test_a_certificate_for_another_name_fails_naming_both(tmp_path: Path) -> None:
    with serving("other-name"):
        code, _, report = bootstrap("--url", remote_lab.url(), "--ca-file", str(_copy_ca("other-name", tmp_path)))
    endpoint = stage(report, "endpoint")
    assert (code, endpoint["status"], endpoint["kind"]) == (1, "fail", "tls")
    assert report["target"]["endpoint"]["tls"]["names"] == [OTHER_NAME]
    assert f"is for {OTHER_NAME}, not {SIGNAL_NAME}" in endpoint["cause"]


def test_an_untrusted_ca_fails_and_its_ca_file_makes_it_pass(ca_file: Path, tmp_path: Path) -> None:
    with serving("untrusted"):
        code, _, report = bootstrap("--url", remote_lab.url(), "--ca-file", str(ca_file))
        trusted_code, _, trusted = bootstrap("--url", remote_lab.url(), "--ca-file",
                                             str(_copy_ca("untrusted", tmp_path)))  # fmt: skip
    endpoint = stage(report, "endpoint")
    assert (code, endpoint["status"], endpoint["kind"]) == (1, "fail", "tls")
    assert "does not chain to a CA in --ca-file" in endpoint["cause"] and "--ca-file" in endpoint["fix"]
    assert report["target"]["endpoint"]["tls"]["verified"] is False
    assert (trusted_code, trusted["status"]) == (0, "pass"), json.dumps(trusted["stages"], indent=1)


def test_nothing_listening_is_named_with_the_address_and_port(ca_file: Path) -> None:
    code, _, report = bootstrap("--url", remote_lab.url(8443), "--ca-file", str(ca_file))
    endpoint = stage(report, "endpoint")
    assert (code, endpoint["status"], endpoint["kind"]) == (1, "fail", "network")
    assert report["target"]["endpoint"]["tcp_errors"] == [f"{LAB.node.address}:8443 connection refused"]
    assert f"nothing accepts TCP at {SIGNAL_NAME} port 8443" in endpoint["cause"]


def test_ws_to_the_tls_port_is_named_with_the_wss_url() -> None:
    code, _, report = bootstrap("--url", f"ws://{SIGNAL_NAME}:443")
    endpoint = stage(report, "endpoint")
    assert (code, endpoint["status"], endpoint["kind"]) == (1, "fail", "config")
    assert "port 443 speaks TLS" in endpoint["cause"] and f"use wss://{SIGNAL_NAME}" in endpoint["fix"]
    assert SIGNAL_NAME in report["target"]["endpoint"]["tls"]["names"]


def test_a_front_that_drops_the_websocket_upgrade_is_named_with_the_status(ca_file: Path) -> None:
    with serving("healthy", passes_upgrade=False):
        code, _, report = bootstrap("--url", remote_lab.url(), "--ca-file", str(ca_file))
    endpoint = stage(report, "endpoint")
    assert (code, endpoint["status"], endpoint["kind"]) == (1, "fail", "config"), endpoint
    assert report["target"]["endpoint"]["health"]["status"] == 200  # GET / alone cannot tell
    assert report["target"]["endpoint"]["upgrade"] == {"path": "/rtc", "status": 404}
    assert "does not pass the upgrade" in endpoint["cause"] and "proxy_set_header Upgrade" in endpoint["fix"]


def test_webhooks_posted_here_are_verified_with_the_listen_flag(ca_file: Path) -> None:
    try:
        remote_lab.post_webhooks_to_client(STACK, WEBHOOK_LISTEN_PORT, WEBHOOK_PATH)
        code, _, report = bootstrap("--url", remote_lab.url(), "--ca-file", str(ca_file),
                                    "--webhook-listen", f"0.0.0.0:{WEBHOOK_LISTEN_PORT}")  # fmt: skip
    finally:
        remote_lab.restore(STACK)
    webhooks = stage(report, "webhooks")
    assert (code, webhooks["status"]) == (0, "pass"), json.dumps(report["stages"], indent=1)
    assert "room_started" in webhooks["detail"] and "participant_joined" in webhooks["detail"]


def test_a_node_without_its_redis_is_named_not_ready(ca_file: Path) -> None:
    try:
        remote_lab.redis(STACK, running=False)
        deadline = time.monotonic() + 10
        while remote_lab.health(STACK) != 406:
            assert time.monotonic() < deadline, "the node did not turn 406 within 10 s of its Redis stopping"
            time.sleep(0.2)
        code, _, report = bootstrap("--url", remote_lab.url(), "--ca-file", str(ca_file))
    finally:
        remote_lab.restore(STACK)
    endpoint = stage(report, "endpoint")
    assert (code, endpoint["status"], endpoint["kind"]) == (1, "fail", "not-ready")
    assert report["target"]["endpoint"]["health"]["status"] == 406
    assert "NOT READY" in endpoint["cause"]


def test_ctrl_c_after_the_join_leaves_no_room_on_the_deployment(ca_file: Path) -> None:
    key, secret = remote_lab.credentials()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIVEKIT_")}
    env |= {"LIVEKIT_API_KEY": key, "LIVEKIT_API_SECRET": secret, "PYTHONUNBUFFERED": "1"}
    argv = [PY, "-m", "bootstrap", "--json", "--verbose", "--env-file", "/nonexistent/.env", "--url",
            remote_lab.url(), "--ca-file", str(ca_file)]  # fmt: skip
    run = subprocess.Popen(remote_lab.client_argv(STACK, argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, env=env)  # fmt: skip
    assert run.stderr is not None
    for line in run.stderr:  # `ip netns exec` execs python: the signal reaches the run itself
        if '"stage": "join"' in line and "stage passed" in line:
            run.send_signal(signal.SIGINT)
            break
    out, _ = run.communicate(timeout=30)
    report = json.loads(out)
    assert run.returncode == 1 and any(s["cause"] == "interrupted (Ctrl-C or SIGTERM)" for s in report["stages"])
    room = report["target"]["room"]
    assert room.startswith("bootstrap-") and _rooms_named(room, ca_file) == []


def _assert_paths_pass(report: dict[str, Any]) -> None:
    """From the client host: UDP host to host, a relay forced over TURN/UDP, and TURN/TLS checked up to TURN's
    answer, its relay skipped naming the rtc SDK's limit (the lab's CA is private)."""
    node, paths = LAB.node.address, report["target"]["paths"]
    assert stage(report, "path udp")["status"] == "pass"
    assert paths["udp"]["pairs"]["publisher"] == f"host udp {LAB.client.address} → host udp {node}:7882"
    assert stage(report, "path turn-udp")["status"] == "pass"
    assert paths["turn-udp"]["pairs"]["publisher"].startswith(f"relay udp {node} (TURN over udp) → ")
    assert paths["turn-udp"]["allocate"] == {f"{node}:3478": "401 Unauthorized (realm livekit)"}
    turn_tls = stage(report, "path turn-tls")
    assert turn_tls["status"] == "skipped" and "the rtc SDK cannot force TURN over TLS" in turn_tls["cause"]
    assert "private CA (--ca-file)" in turn_tls["cause"]
    checked = paths["turn-tls"]["checks"]["turns:turn.remote.test:443?transport=tcp"]
    assert checked == {"host": TURN_NAME, "port": 443, "addresses": [LAB.turn_address], "tls": "verified",
                       "allocate": "401 Unauthorized (realm livekit)"}  # fmt: skip


@contextlib.contextmanager
def faulted(overrides: dict[str, Any] | None = None, *, udp_blocked: bool = False) -> Iterator[None]:
    """The lab's node on its config with `overrides` merged in, and/or its host sending no UDP; put back however
    the test ends."""
    try:
        if overrides:
            remote_lab.configure(STACK, overrides)
        remote_lab.block_udp(STACK, udp_blocked)
        yield
    finally:
        remote_lab.restore(STACK)


def test_a_node_ip_the_client_cannot_reach_is_named_as_the_node_ip_trap(ca_file: Path) -> None:
    unreachable = str(LAB.lan.subnet.network_address + 99)  # on the lab's bridge, where no host answers
    with faulted({"rtc": {"node_ip": unreachable}}):
        code, _, report = bootstrap("--url", remote_lab.url(), "--ca-file", str(ca_file))
    join = stage(report, "join")
    assert (code, join["status"], join["kind"]) == (1, "fail", "config"), join
    assert "the node_ip trap" in join["cause"] and f"host udp {unreachable}:7882" in join["cause"]
    assert f"set rtc.node_ip to the address clients reach the node at ({LAB.node.address}" in join["fix"]
    evidence = report["target"]["join"]
    assert evidence["offered"] == [f"host udp {unreachable}:7882", f"host tcp {unreachable}:7881"]
    assert evidence["signal_addresses"] == [LAB.node.address]
    assert evidence["reachability"] == {unreachable: "no answer on TCP 7881 in 1.5 s"}


def test_the_deployments_udp_blocked_with_no_turn_is_named_with_the_port(ca_file: Path) -> None:
    with faulted({"turn": {"enabled": False}}, udp_blocked=True):
        code, _, report = bootstrap("--url", remote_lab.url(), "--ca-file", str(ca_file))
    udp = stage(report, "path udp")
    assert (code, udp["status"], udp["kind"]) == (1, "fail", "network"), udp
    node = LAB.node.address
    assert f"UDP to the server's candidate {node}:7882 never answered from here" in udp["cause"]
    assert "the server offers no TURN to relay through" in udp["cause"] and "open UDP 7882" in udp["fix"]
    assert report["target"]["paths"]["udp"]["pairs"]["publisher"].endswith(f"→ host tcp {node}:7881")
    assert stage(report, "join")["status"] == "pass"  # over ICE/TCP: the run's own data plane still works
    for skipped in (stage(report, "path turn-udp"), stage(report, "path turn-tls")):
        assert skipped["status"] == "skipped" and "the server offers no TURN" in skipped["cause"]


def test_turn_udp_blocked_is_named_with_its_address_and_port(ca_file: Path) -> None:
    with faulted(udp_blocked=True):
        code, _, report = bootstrap("--url", remote_lab.url(), "--ca-file", str(ca_file))
    turn_udp = stage(report, "path turn-udp")
    assert (code, turn_udp["status"], turn_udp["kind"]) == (1, "fail", "network"), turn_udp
    assert f"TURN over UDP at {LAB.node.address}:3478 never answered from here" in turn_udp["cause"]
    assert report["target"]["paths"]["turn-udp"]["allocate"] == {f"{LAB.node.address}:3478": "no answer"}


def test_a_turn_domain_that_does_not_resolve_is_named_as_its_dns(ca_file: Path) -> None:
    missing = "turn-missing.remote.test"
    assert missing not in LAB.hosts_file.read_text()  # the client host's only resolver
    with faulted({"turn": {"domain": missing}}):
        code, _, report = bootstrap("--url", remote_lab.url(), "--ca-file", str(ca_file))
    turn_tls = stage(report, "path turn-tls")
    assert (code, turn_tls["status"], turn_tls["kind"]) == (1, "fail", "dns"), turn_tls
    url = f"turns:{missing}:443?transport=tcp"
    assert f"TURN over TLS at {url}, but its domain {missing} does not resolve here" in turn_tls["cause"]
    assert f"turn.domain ({missing}) a DNS record" in turn_tls["fix"]
    assert report["target"]["paths"]["turn-tls"]["checks"][url] == {"host": missing, "port": 443, "addresses": []}
    assert [stage(report, p)["status"] for p in ("path udp", "path turn-udp")] == ["pass", "pass"]


def test_a_load_of_an_owned_deployment_runs_its_rooms_there_and_leaves_none(ca_file: Path) -> None:
    code, _, report = bootstrap("--url", remote_lab.url(), "--ca-file", str(ca_file), "--load", "3",
                                "--concurrency", "3", "--own-deployment")  # fmt: skip
    assert (code, report["status"]) == (0, "pass"), json.dumps(report["stages"], indent=1)
    assert [s["name"] for s in report["stages"]] == ["endpoint", "keys", "worker", "load"]
    load = report["load"]
    assert (load["rooms"], load["dispatched"], load["media"]["checked"], load["rooms_left"]) == (3, 3, 3, 0), load
    assert load["webhooks"]["expected"] == 0  # no --webhook-listen: none awaited, none claimed
    assert "webhooks not received here" in stage(report, "load")["detail"]


def test_no_run_leaves_a_process_on_the_client_host() -> None:
    pids = subprocess.run(["ip", "netns", "pids", LAB.client.namespace], capture_output=True, text=True).stdout
    assert pids.split() == []
