"""The low-severity findings of issue 24, each tried against the hostile input itself: test ranges that are
loopback, link-local or another network's, a pid that changed hands before the SIGKILL, setpriv leaving
capabilities or new privileges, credentials and tokens in the rendered reports and in the logs devstack shows,
and psql variables that could carry SQL. Unit tests: no stack, no root needed but for the setpriv one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from livekit import api

from backend.logging import JWT as BACKEND_JWT
from backend.logging import register_secret
from bootstrap.report import render_json, render_junit, render_text
from bootstrap.result import RunResult, StageResult, Status
from devstack import compose, native, processes, stack_env
from devstack.processes import PidRecord
from devstack.stack_env import STACK_ENV, StackEnvError, load_stack

pytestmark = pytest.mark.unit

# --- test ranges ----------------------------------------------------------------------------------------------------

# /proc/net/route's layout: a default route, this machine's LAN (192.168.7.0/24 on eth0), a VPN's 10.213.0.0/16
# on wg0, and the project's own paths bridge (lkh-p-br, 10.213.70.0/24), little-endian hex.
ROUTE_HEADER = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
DEFAULT = "eth0\t00000000\t0107A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"
LAN = "eth0\t0007A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"
VPN = "wg0\t0000D50A\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n"
OWN = "lkh-p-br\t0046D50A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"


@pytest.fixture
def route_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A route table of our own making in place of this machine's (default, LAN and own routes only)."""
    table = tmp_path / "route"
    table.write_text(ROUTE_HEADER + DEFAULT + LAN + OWN)
    monkeypatch.setattr(stack_env, "ROUTES", table)
    return table


def stack_env_with(tmp_path: Path, **values: str) -> Path:
    """stack.env with `values` in place of its own (a new path each time: load_stack caches by path)."""
    lines = [
        f"{key}={values[key]}" if (key := line.split("=", 1)[0]) in values else line
        for line in STACK_ENV.read_text().splitlines()
    ]
    path = tmp_path / f"stack-{len(list(tmp_path.iterdir()))}.env"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(
    ("subnet", "named"), [("127.0.0.0/24", "is loopback"), ("127.213.70.0/24", "is loopback"),
                          ("169.254.70.0/24", "is link-local")],
)  # fmt: skip
def test_a_loopback_or_link_local_test_range_is_refused(
    route_table: Path, tmp_path: Path, subnet: str, named: str
) -> None:
    with pytest.raises(StackEnvError, match=f"PATHS_SUBNET='{subnet}' {named}"):
        load_stack(stack_env_with(tmp_path, PATHS_SUBNET=subnet))


def test_a_test_range_over_a_route_of_this_machine_is_refused_naming_it(route_table: Path, tmp_path: Path) -> None:
    route_table.write_text(ROUTE_HEADER + DEFAULT + LAN + VPN + OWN)
    with pytest.raises(StackEnvError, match=r"CLUSTER_SUBNET='10.213.71.0/24' overlaps this machine's route "
                                            r"10.213.0.0/16 dev wg0"):  # fmt: skip
        load_stack(stack_env_with(tmp_path))
    route_table.write_text(ROUTE_HEADER + DEFAULT + LAN + OWN)
    with pytest.raises(StackEnvError, match=r"PATHS_SUBNET='192.168.0.0/16' overlaps .* 192.168.7.0/24 dev eth0"):
        load_stack(stack_env_with(tmp_path, PATHS_SUBNET="192.168.0.0/16"))


def test_the_default_route_and_the_projects_own_links_are_no_conflict(route_table: Path, tmp_path: Path) -> None:
    stack = load_stack(stack_env_with(tmp_path))  # 10.213.70.0/24 is routed on lkh-p-br: the range itself
    assert str(stack.paths_subnet) == "10.213.70.0/24"


DEAF = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(30)"


# --- the SIGKILL path -----------------------------------------------------------------------------------------------


def test_the_sigkill_is_not_sent_once_the_pid_is_another_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """A process that ignores the stop signal; once it is signalled, /proc reports another process under its pid
    (as when it exits and the pid is reused): its group must not get the SIGKILL."""
    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(30)"
    )
    process = subprocess.Popen([sys.executable, "-c", code], start_new_session=True, stdout=subprocess.PIPE)
    try:
        assert process.stdout is not None and process.stdout.readline() == b"ready\n"
        real_of, real_kill, recycled = PidRecord.of, os.kill, False

        def of(pid: int) -> PidRecord | None:
            record = real_of(pid)
            return replace(record, start_time="1") if recycled and record else record

        def kill(pid: int, signum: int) -> None:
            nonlocal recycled
            real_kill(pid, signum)
            recycled = True  # from the stop signal on, the pid is someone else's

        group_kills: list[int] = []
        monkeypatch.setattr(processes.PidRecord, "of", staticmethod(of))
        monkeypatch.setattr(os, "kill", kill)
        monkeypatch.setattr(os, "killpg", lambda pgid, signum: group_kills.append(pgid))
        monkeypatch.setattr(processes, "STOP_TIMEOUT", 0.3)
        processes.stop(process.pid, signal.SIGTERM)
        assert group_kills == []
    finally:
        process.kill()
        process.wait()


def test_the_sigkill_reaches_the_group_of_the_same_process(monkeypatch: pytest.MonkeyPatch) -> None:
    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(30)"
    )
    process = subprocess.Popen([sys.executable, "-c", code], start_new_session=True, stdout=subprocess.PIPE)
    assert process.stdout is not None and process.stdout.readline() == b"ready\n"
    monkeypatch.setattr(processes, "STOP_TIMEOUT", 0.3)
    processes.stop(process.pid, signal.SIGTERM)
    assert process.wait(timeout=5) == -signal.SIGKILL


# --- setpriv --------------------------------------------------------------------------------------------------------


@pytest.mark.skipif(os.geteuid() != 0, reason="setpriv switches users only from root")
def test_setpriv_leaves_no_capability_and_no_new_privileges() -> None:
    nobody = processes.Account("nobody", 65534, 65534)
    status = subprocess.run([*native.drop_to(nobody), "cat", "/proc/self/status"], capture_output=True, text=True,
                            check=True).stdout  # fmt: skip
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    assert fields["Uid"].split()[:2] == ["65534", "65534"] and fields["Groups"].strip() == ""
    assert fields["NoNewPrivs"].strip() == "1"
    assert {fields[cap].strip() for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")} == {"0000000000000000"}


@pytest.mark.skipif(os.geteuid() != 0, reason="setpriv switches users only from root")
def test_the_namespaced_browsers_setpriv_leaves_no_capability_and_no_new_privileges() -> None:
    import pwd
    import shutil

    from bootstrap.browser.chromium import Chromium

    browser = Chromium(namespace="lkh-test")
    try:
        argv, _ = browser._entry(pwd.getpwnam("nobody"))
    finally:
        shutil.rmtree(browser._profile)
    assert argv[:4] == ["ip", "netns", "exec", "lkh-test"]
    status = subprocess.run([*argv[4:], "cat", "/proc/self/status"], capture_output=True, text=True, check=True)
    fields = dict(line.split(":\t", 1) for line in status.stdout.splitlines() if ":\t" in line)
    assert fields["NoNewPrivs"].strip() == "1" and fields["CapBnd"].strip() == fields["CapInh"].strip() == "0" * 16


# --- reports and logs -----------------------------------------------------------------------------------------------

PLANTED = "planted-credential-value-7Qx2"  # a registered secret's value, as settings register the API secret


def real_token() -> str:
    grants = api.VideoGrants(room_join=True, room="room-1")
    return api.AccessToken("devkey", "s" * 40).with_identity("alice").with_grants(grants).to_jwt()


def test_json_junit_and_text_reports_redact_what_they_render() -> None:
    register_secret(PLANTED)
    token = real_token()
    failed = StageResult("join", Status.FAIL, 1.0, f"joined with {token}", f"the server said: {PLANTED} invalid",
                         f"mint a new token (not {token})")  # fmt: skip
    result = RunResult([failed], 1.0, context={"server": f"ws://x?token={token}"},
                       extra={"load": {"errors": [f"room-1: refused {token}", {"nested": PLANTED}]}})  # fmt: skip
    for rendered in (render_json(result), render_junit(result), render_text(result)):
        assert PLANTED not in rendered and token not in rendered, rendered
        assert token[:10] in rendered  # redacted in place: still tells which token it was
    assert json.loads(render_json(result))["load"]["errors"][1] == {"nested": "***"}


def test_log_tails_redact_livekit_servers_401_warnings(tmp_path: Path) -> None:
    token = real_token()
    service = native.Service("livekit", [], "livekit", lambda: ["true"], directory=tmp_path)
    warning = (f'2026-11-30T03:47:42.702Z\tWARN\tlivekit\tservice/utils.go:84\terror handling request\t{{"status": '
               f'401, "error": "invalid token: {token}, error: go-jose/go-jose: error in cryptographic"}}')  # fmt: skip
    service.log_file.write_text(f"starting\n{warning}\n")
    shown = native.tail(service, 5)
    assert token not in shown and "invalid token: eyJhbGciOi…(" in shown


def test_compose_logs_redact_tokens(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    token = real_token()
    docker = tmp_path / "docker"
    docker.write_text(f'#!/bin/sh\necho "livekit-1  | WARN invalid token: {token}"\necho "{token}" >&2\n')
    docker.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    assert compose.logs() == 0
    out, err = capsys.readouterr()
    assert "invalid token: eyJhbGciOi…(" in out and token not in out + err


def test_devstacks_token_pattern_is_backends() -> None:
    from devstack.redaction import JWT

    assert JWT.pattern == BACKEND_JWT.pattern


# --- psql variables -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("role", "db", "password"),
    [
        ("app'; DROP DATABASE postgres; --", "app", "generated-password-1"),
        ("app", "app' \\gexec", "generated-password-1"),
        ("App", "app", "generated-password-1"),  # quoted as "App" in one statement, folded to app in another
        ("app", "app", "pass'word-1234"),
        ("app", "app", "pass\\'; ALTER ROLE app SUPERUSER; --"),
        ("app", "app", "pass\n\\! id"),
        ("app", "app", "p:'x'1234"),
        ("app", "app", "short"),
    ],
)
def test_psql_variables_refuse_what_quoting_would_have_to_escape(role: str, db: str, password: str) -> None:
    from devstack.postgres import PostgresError, psql_variables

    with pytest.raises(PostgresError):
        psql_variables(role, db, password)


def test_psql_variables_take_the_generated_passwords() -> None:
    import secrets

    from devstack.postgres import psql_variables

    password = secrets.token_urlsafe(24)
    assert psql_variables("app", "app_db", password) == (
        f"\\set role 'app'\n\\set db 'app_db'\n\\set password '{password}'\n"
    )
