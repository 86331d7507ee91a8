"""Failure is a result too. Bad input and injected faults against the REAL stack: each ends quickly in a
FAIL (or exit 2) at the right stage, naming the cause — never a hang, a traceback or a false PASS."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent_runtime.agent import WorkerConfig, create_worker
from backend.tokens import participant_token
from bootstrap import runner
from bootstrap.context import RunContext
from bootstrap.result import RunResult, Status
from bootstrap.stages import STAGES
from devstack.ports import port_owner
from devstack.server_config import ConfigError, load_config
from devstack.stack_env import LIVEKIT_YAML, REPO_ROOT, Stack
from tests.conftest import (
    PY,
    bootstrap_report,
    extra_livekit,
    make_context,
    run_module,
    server_rooms,
    stage_run,
    stages_with,
)

pytestmark = pytest.mark.faults


# ---------------------------------------------------------------- helpers


def bootstrap_json(*args: str, env: dict[str, str] | None = None) -> tuple[int, dict[str, Any], float]:
    """Exit code, the JSON report, and the run's own seconds (what --timeout bounds; start-up excluded)."""
    code, report = bootstrap_report(*args, env=env)
    return code, report, report["seconds"]


def failed_stage(report: dict[str, Any]) -> dict[str, Any]:
    failed: list[dict[str, Any]] = [s for s in report["stages"] if s["status"] == "fail"]
    assert len(failed) == 1, report
    return failed[0]


async def run_with(ctx: RunContext, **stage_runs: Any) -> RunResult:
    """The real runner, with some stages' run functions replaced (fault injection)."""
    return await runner.run(ctx, stages_with(**stage_runs))


def the_failure(result: RunResult) -> tuple[str, str]:
    failed = [s for s in result.stages if s.status is Status.FAIL]
    assert len(failed) == 1, result
    return failed[0].name, failed[0].cause


async def rooms_left(ctx_room: str) -> list[str]:
    return [name for name in await server_rooms() if name == ctx_room]


@pytest.fixture
def native_service(stack: Stack) -> Iterator[Any]:
    """Stop one native service for a test and always start it again."""
    stopped: list[str] = []

    def stop(name: str) -> None:
        assert run_module("devstack", "down", name).returncode == 0
        stopped.append(name)

    yield stop
    for name in stopped:
        result = run_module("devstack", "up", name)
        assert result.returncode == 0, result.stderr


# ---------------------------------------------------------------- bad input


def test_missing_env_vars_are_all_listed(stack: Stack, tmp_path: Path) -> None:
    empty = tmp_path / ".env"
    empty.write_text("")
    env = {k: "" for k in ("LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET")}
    result = run_module("bootstrap", "--env-file", str(empty), env=env)
    assert result.returncode == 2
    for name in ("LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET"):
        assert f"{name} is not set" in result.stderr
    assert str(empty) in result.stderr


def test_url_without_scheme_exits_2(stack: Stack) -> None:
    result = run_module("bootstrap", "--json", env={"LIVEKIT_URL": "localhost:7880"})
    assert result.returncode == 2
    assert json.loads(result.stdout)["status"] == "error"
    assert "LIVEKIT_URL='localhost:7880' has no ws://, wss://, http:// or https:// scheme" in result.stderr


def test_wrong_api_key_fails_worker_with_key_mismatch(stack: Stack) -> None:
    code, report, _ = bootstrap_json(env={"LIVEKIT_API_KEY": "not-a-key"})
    assert code == 1
    stage = failed_stage(report)
    assert stage["name"] == "worker"
    assert "HTTP 401 from http://localhost:7880: the API key/secret in .env do not match" in stage["cause"]


def test_short_secret_is_warned_in_development_and_refused_otherwise(stack: Stack) -> None:
    code, report, _ = bootstrap_json(env={"LIVEKIT_API_SECRET": "devsecret", "APP_ENV": "development"})
    assert code == 1 and failed_stage(report)["name"] == "worker"  # warned, then the server says 401
    result = run_module("bootstrap", env={"LIVEKIT_API_SECRET": "devsecret", "APP_ENV": "production"})
    assert result.returncode == 2
    assert "LIVEKIT_API_SECRET is 9 characters; LiveKit expects at least 32 (refused because" in result.stderr
    warned = run_module("bootstrap", env={"LIVEKIT_API_SECRET": "devsecret", "APP_ENV": "development"})
    assert "LIVEKIT_API_SECRET is 9 characters" in warned.stderr


async def test_expired_token_fails_join(stack: Stack) -> None:
    async def expired_token(ctx: RunContext) -> str:
        ctx.token = participant_token(
            ctx.settings,
            identity=ctx.identity,
            room=ctx.room_name,
            ttl=timedelta(minutes=-5),
            agent_name=ctx.agent_name,
        )
        return "expired token"

    ctx = make_context()
    name, cause = the_failure(await run_with(ctx, token=expired_token))
    assert name == "join"
    assert cause.startswith(f"the server at {ctx.settings.ws_url} refused the token")
    assert "token is expired" in cause
    assert ctx.token not in cause and ctx.token[:10] + "…" in cause  # the server echoes it: redacted


async def test_token_for_another_room_fails_join(stack: Stack) -> None:
    async def other_room(ctx: RunContext) -> str:
        ctx.token = participant_token(ctx.settings, identity=ctx.identity, room=ctx.room_name + "-other")
        return "token for another room"

    ctx = make_context()
    name, cause = the_failure(await run_with(ctx, token=other_room))
    assert (name, cause) == (
        "join",
        f"the token joined room {ctx.room_name + '-other'!r}, not this run's room {ctx.room_name!r}",
    )
    assert await rooms_left(ctx.room_name + "-other") == []  # cleanup deletes what it joined too


def test_malformed_livekit_yaml_names_file_and_line(stack: Stack, tmp_path: Path) -> None:
    broken = tmp_path / "livekit.yaml"
    lines = LIVEKIT_YAML.read_text().splitlines()
    line_no = next(i for i, line in enumerate(lines) if line.startswith("rtc:")) + 2
    lines[line_no] = "  tcp_port: [7881"  # an unclosed flow sequence
    broken.write_text("\n".join(lines))
    with pytest.raises(ConfigError, match=rf"{broken}:\d+: invalid YAML"):
        load_config(broken)
    result = run_module("bootstrap", "--livekit-config", str(broken))
    assert result.returncode == 2
    assert f"{broken}:" in result.stderr and "invalid YAML" in result.stderr


def test_webhook_key_not_among_keys_is_caught_and_the_real_server_agrees(stack: Stack, tmp_path: Path) -> None:
    config = yaml.safe_load(LIVEKIT_YAML.read_text())
    config["webhook"]["api_key"] = "ghostkey"
    path = tmp_path / "livekit.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match=r"webhook.api_key 'ghostkey' is not among `keys` \(devkey\)"):
        load_config(path)
    # The pinned server itself refuses this config (printing a terse line and, surprisingly, exiting 0):
    # our check names the file and the fix before it would start.
    config["port"], config["rtc"]["tcp_port"], config["rtc"]["udp_port"] = 27880, 27881, 27882
    path.write_text(yaml.safe_dump(config))
    from devstack.install import livekit_server_binary

    server = subprocess.run(
        [str(livekit_server_binary(stack)), "--config", str(path), "--bind", "127.0.0.1"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert "api_key is required to use webhooks" in server.stdout + server.stderr


async def test_unknown_agent_name_fails_dispatch(stack: Stack) -> None:
    async def worker_under_another_name(ctx: RunContext) -> str:
        options = WorkerConfig(ctx.settings.ws_url, ctx.settings.api_key, ctx.settings.api_secret, "someone-else")
        ctx.worker = create_worker(options)
        ctx.worker_task = asyncio.create_task(ctx.worker.run())
        await asyncio.sleep(0.5)
        return "worker registered as someone-else"

    ctx = make_context(timeout=14)
    name, cause = the_failure(await run_with(ctx, worker=worker_under_another_name))
    assert name == "dispatch"
    assert cause.startswith("dispatch of 'bootstrap-noop' is pending and no worker registered under that name")


def test_webhook_port_taken_fails_webhooks_naming_the_owner(stack: Stack) -> None:
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # earlier runs' connections may linger
        squatter.bind(("0.0.0.0", stack.webhook_port))
        squatter.listen()
        code, report, _ = bootstrap_json()
    assert code == 1
    stage = failed_stage(report)
    assert stage["name"] == "webhooks"
    assert stage["cause"].startswith(f"webhook port {stack.webhook_port} is already taken by python")
    assert f"(pid {os.getpid()})" in stage["cause"]


def test_livekit_port_held_by_something_else_is_named(stack: Stack, tmp_path: Path) -> None:
    """LIVEKIT_URL pointing at a port where another HTTP server answers: not LiveKit, and who it is."""
    server = subprocess.Popen(
        [PY, "-m", "http.server", "17999", "--bind", "127.0.0.1", "-d", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while port_owner(17999) is None and time.monotonic() < deadline:
            time.sleep(0.1)
        code, report, elapsed = bootstrap_json("--timeout", "8", env={"LIVEKIT_URL": "ws://127.0.0.1:17999"})
    finally:
        server.terminate()
        server.wait()
    assert code == 1
    stage = failed_stage(report)
    assert stage["name"] == "services"
    assert "is this port really LiveKit's?" in stage["cause"]
    assert f"(port held by python3 (pid {server.pid}))" in stage["cause"] or f"pid {server.pid}" in stage["cause"]
    assert elapsed <= 8 + 2  # --timeout plus the documented cleanup margin


# ---------------------------------------------------------------- faults


@pytest.mark.parametrize("service", ["redis", "postgres"])
def test_database_down_fails_services(stack: Stack, native_service: Any, service: str) -> None:
    native_service(service)
    code, report, elapsed = bootstrap_json("--timeout", "8")
    assert code == 1
    stage = failed_stage(report)
    assert stage["name"] == "services"
    port = stack.redis_port if service == "redis" else stack.postgres_port
    assert f"{service} at 127.0.0.1:{port}: connection refused" in stage["cause"]
    assert elapsed <= 8 + 2  # --timeout plus the documented cleanup margin


async def test_livekit_killed_mid_run(stack: Stack, tmp_path: Path) -> None:
    with extra_livekit(tmp_path, lambda config: None) as url:
        pid = port_owner_pid(int(url.rsplit(":", 1)[1]))
        original_token = stage_run("token")

        async def kill_then_mint(ctx: RunContext) -> str:
            os.kill(pid, signal.SIGKILL)
            return await original_token(ctx)

        ctx = make_context(timeout=15, LIVEKIT_URL=url)
        started = time.monotonic()
        result = await run_with(ctx, token=kill_then_mint)
        elapsed = time.monotonic() - started
    name, cause = the_failure(result)
    assert name == "join"
    assert url in cause
    assert elapsed < 15 + 2


def port_owner_pid(port: int) -> int:
    from devstack.ports import owner_pid

    pid = owner_pid(port)
    assert pid is not None
    return pid


async def test_worker_crashing_before_dispatch(stack: Stack) -> None:
    original_worker = stage_run("worker")

    async def worker_then_crash(ctx: RunContext) -> str:
        detail = await original_worker(ctx)
        assert ctx.worker is not None
        await ctx.worker.aclose()  # the worker goes away after registering, before any job
        return detail

    ctx = make_context(timeout=14)
    name, cause = the_failure(await run_with(ctx, worker=worker_then_crash))
    assert name == "dispatch"
    assert "no worker" in cause


def test_livekit_not_ready_fails_services_within_the_timeout(stack: Stack, tmp_path: Path) -> None:
    """A server that accepts connections but does not answer ready (frozen with SIGSTOP)."""
    with extra_livekit(tmp_path, lambda config: None, offset=11000) as url:
        pid = port_owner_pid(int(url.rsplit(":", 1)[1]))
        os.kill(pid, signal.SIGSTOP)
        try:
            code, report, elapsed = bootstrap_json("--timeout", "8", env={"LIVEKIT_URL": url})
        finally:
            os.kill(pid, signal.SIGCONT)
    assert code == 1
    stage = failed_stage(report)
    assert stage["name"] == "services"
    assert "livekit at localhost:18880" in stage["cause"]
    assert "no answer within 2s" in stage["cause"] or "406" in stage["cause"]
    assert elapsed <= 8 + 2  # --timeout plus the documented cleanup margin


def test_webhook_receiver_unreachable_from_the_server(stack: Stack, tmp_path: Path) -> None:
    def unreachable(config: dict[str, Any]) -> None:
        config["webhook"]["urls"] = ["http://192.0.2.1:8000/api/webhooks/livekit"]  # TEST-NET: never routed here

    with extra_livekit(tmp_path, unreachable, offset=12000) as url:
        code, report, _ = bootstrap_json("--timeout", "12", env={"LIVEKIT_URL": url})
    assert code == 1
    assert failed_stage(report)["name"] == "webhooks"


# ---------------------------------------------------------------- no leftovers, secrets, repeatability


def test_ctrl_c_mid_run_cleans_up(stack: Stack) -> None:
    process = subprocess.Popen(
        [PY, "-m", "bootstrap", "--json", "--verbose"],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stderr is not None
    room = ""
    for line in process.stderr:  # wait until the participant joined: then interrupt
        if '"stage": "join"' in line and "stage passed" in line:
            room = line.split(" ACTIVE in ")[1].split('"')[0]
            process.send_signal(signal.SIGINT)
            break
    out, _ = process.communicate(timeout=30)
    report = json.loads(out)
    assert process.returncode == 1
    assert any(s["cause"] == "interrupted (Ctrl-C or SIGTERM)" for s in report["stages"])
    assert room and asyncio.run(rooms_left(room)) == []
    assert port_owner(stack.webhook_port) is None


def test_no_secret_or_token_in_any_output(stack: Stack, tmp_path: Path) -> None:
    junit = tmp_path / "report.xml"
    outputs = []
    for args in ([], ["--verbose"], ["--json"], ["--json", "--verbose", "--junit", str(junit)]):
        result = run_module("bootstrap", *args)
        assert result.returncode == 0, result.stdout + result.stderr
        outputs += [result.stdout, result.stderr]
    outputs.append(junit.read_text())
    text = "\n".join(outputs)
    assert stack.api_secret not in text
    import re

    assert re.findall(r"eyJ[\w-]{10,}\.[\w-]{10,}\.[\w-]{10,}", text) == []  # no whole JWT anywhere


def test_env_is_git_ignored() -> None:
    result = subprocess.run(
        ["git", "check-ignore", ".env", "backend/.env", "agent-runtime/.env"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    )
    assert result.stdout.split() == [".env", "backend/.env", "agent-runtime/.env"]


async def test_twenty_runs_in_a_row_all_pass_and_leave_no_room(stack: Stack) -> None:
    names = []
    for _ in range(20):
        ctx = make_context(timeout=30)
        result = await runner.run(ctx, STAGES)
        assert result.passed, result
        names.append(ctx.room_name)
    assert (await server_rooms()).isdisjoint(names)
