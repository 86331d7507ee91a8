"""Shared fixtures and helpers. `stack` gives the integration tests the REAL stack, through the harness
plugin's `livekit_stack` (pytest-livekit-harness): reused when all three services already answer their readiness
checks (not just an open port), otherwise started natively with `python -m devstack up` and stopped again at
the end of the session; proven once by `python -m bootstrap` either way. Every test module declares its
category (unit, integration or faults): a module without one fails collection."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import pwd
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from livekit import api

from agent_runtime.ffi_exit import exit_without_finalization
from backend.app import create_app
from backend.settings import validate
from bootstrap.context import RunContext
from bootstrap.stages import STAGES, Stage
from devstack import install, paths_lab
from devstack.health import check_all
from devstack.server_config import node_config, node_ports, render
from devstack.stack_env import REPO_ROOT, Stack, load_stack
from livekit_harness_pytest.harness_stack import LiveKitStack

PY = sys.executable
CATEGORIES = ("unit", "integration", "faults")
COMPOSECHECK = REPO_ROOT / ".tools" / "composecheck"
# Stand-ins for .env.secrets when Compose's own parser resolves docker-compose.yml: recognisable in its output.
TEST_SECRETS = {
    "POSTGRES_PASSWORD": "test-app-password",
    "POSTGRES_ADMIN_PASSWORD": "test-admin-password",
    "REDIS_PASSWORD": "test-redis-password",
}


def composecheck(compose_file: Path, profile: str = "", *, secrets: bool = True) -> subprocess.CompletedProcess[str]:
    """compose-go (`make tools`) resolving `compose_file` as `docker compose --env-file stack.env --env-file
    .env.secrets` would, with TEST_SECRETS standing in for the generated passwords (none with secrets=False)."""
    if not COMPOSECHECK.exists():
        pytest.fail("run `make tools` first (make test does)")
    env_files = [str(REPO_ROOT / "stack.env")]
    if secrets:
        path = Path(tempfile.mkdtemp()) / ".env.secrets"
        path.write_text("".join(f"{k}={v}\n" for k, v in TEST_SECRETS.items()))
        env_files.append(str(path))
    command = [str(COMPOSECHECK), str(compose_file), ",".join(env_files), *([profile] if profile else [])]
    return subprocess.run(command, capture_output=True, text=True)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Each test module says what it needs (as livekit/agents' conftest enforces): unit, integration, faults."""
    for item in items:
        if not any(item.get_closest_marker(name) for name in CATEGORIES):
            raise pytest.UsageError(
                f"{item.nodeid}: mark its module with pytestmark = pytest.mark.<{'|'.join(CATEGORIES)}>"
            )


def make_context(timeout: float = 20.0, **settings: str) -> RunContext:
    """A run's context with the development settings (some replaced by `settings`), as the CLI builds it."""
    stack = load_stack()
    env = {
        "LIVEKIT_URL": stack.livekit_ws_url,
        "LIVEKIT_API_KEY": stack.api_key,
        "LIVEKIT_API_SECRET": stack.api_secret,
        **settings,
    }
    return RunContext(
        settings=validate(env),
        stack=stack,
        agent_name=stack.agent_name,
        webhook_host="127.0.0.1",
        webhook_port=stack.webhook_port,
        deadline=time.monotonic() + timeout,
    )


def stages_with(**runs: Callable[[RunContext], Awaitable[str]]) -> list[Stage]:
    """The single run's stages, with some stages' run functions replaced (fault injection): pass the list
    to runner.run(ctx, stages)."""
    return [replace(s, run=runs[s.name]) if s.name in runs else s for s in STAGES]


def stage_run(name: str) -> Callable[[RunContext], Awaitable[str]]:
    """The real run function of stage `name`, for a replacement that wraps it."""
    return next(s.run for s in STAGES if s.name == name)


def stack_healthy(stack: Stack) -> bool:
    return all(r.up for r in asyncio.run(check_all(stack)))


def run_module(*args: str, env: dict[str, str] | None = None, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """Run `python -m ...` from the repo root, as a user would, capturing both streams. LIVEKIT_* variables
    come only from `env` and the .env files: livekit-agents exports LIVEKIT_URL into this process once an
    in-process worker ran, and a user's shell would not have it."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("LIVEKIT_")}
    return subprocess.run(
        [PY, "-m", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**inherited, **(env or {})},
    )


def bootstrap_report(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> tuple[int, dict[str, Any]]:
    """`python -m bootstrap --json ARGS`: its exit code and its report, which must be the one line on stdout."""
    result = run_module("bootstrap", "--json", *args, env=env, timeout=timeout)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stdout.count("\n") == 1, f"expected one JSON line, got:\n{result.stdout}\n{result.stderr}"
    return result.returncode, json.loads(result.stdout)


async def server_rooms() -> set[str]:
    """The names of every room the stack's livekit-server lists right now."""
    stack = load_stack()
    async with api.LiveKitAPI(stack.livekit_http_url, stack.api_key, stack.api_secret, failover=False) as lk:
        return {r.name for r in (await lk.room.list_rooms(api.ListRoomsRequest())).rooms}


_exit_status = 0


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    global _exit_status
    _exit_status = int(exitstatus)


def pytest_unconfigure(config: pytest.Config) -> None:
    """After the summary is printed: exit without finalization, as `python -m bootstrap` does, because
    the livekit FFI's threads (used in-process by these tests) can abort while Python tears down. Not under
    mutmut (`make mutation`): it runs pytest inside its own process, again and again, on unit tests only."""
    if "MUTANT_UNDER_TEST" not in os.environ:
        exit_without_finalization(_exit_status)


@pytest.fixture(scope="session")
def stack(livekit_stack: LiveKitStack) -> Stack:
    """The plugin's stack (pytest-livekit-harness): up through devstack if it was down (and down again at the
    end), proven once by `python -m bootstrap`; a stack that fails that proof stops the session with its cause."""
    assert livekit_stack.stack is not None, "the project's tests run against its own stack, not --livekit-url"
    return livekit_stack.stack


@pytest.fixture(scope="session")
def paths_lab_owner() -> Iterator[dict[str, bool]]:
    """Whether this session brought the paths lab up: then it takes it down at the end, else leaves it."""
    owner = {"started_here": False}
    yield owner
    if owner["started_here"]:
        run_module("devstack", "paths-down")


@pytest.fixture(scope="module")
def paths_lab_up(paths_lab_owner: dict[str, bool]) -> Stack:
    """The paths lab up for each module that needs it (needs root): `make paths-up` when it is down (a module
    before may have run `make down`, which removes it), else reused as it is (about 1 s saved per module)."""
    settings = load_stack()
    if paths_lab.why_down(settings) is not None:
        result = run_module("devstack", "paths-up", timeout=300)
        assert result.returncode == 0, f"the paths lab did not come up:\n{result.stderr}"
        paths_lab_owner["started_here"] = True
    return settings


@contextlib.contextmanager
def native_cluster() -> Iterator[Stack]:
    """`make cluster-up` natively (nodes and Redis each on a host of its own), taken down afterwards."""
    up = run_module("devstack", "cluster-up", "--runner", "native")
    assert up.returncode == 0, up.stderr
    yield load_stack()
    down = run_module("devstack", "cluster-down", "--runner", "native")
    assert down.returncode == 0, down.stderr


@contextlib.contextmanager
def agent_runtime_process(
    stack: Stack, agent_name: str | None = None, registered: dict[str, Any] | None = None
) -> Iterator[subprocess.Popen[str]]:
    """`python -m agent_runtime` in a process of its own, registered (under `agent_name`, default its own
    default); stopped with Ctrl-C afterwards, killed if that does not end it. `registered` receives its
    registration's log record (its id, max_jobs, health_port)."""
    env = {**os.environ, "LIVEKIT_URL": stack.livekit_ws_url, "LIVEKIT_API_KEY": stack.api_key,
           "LIVEKIT_API_SECRET": stack.api_secret, "PYTHONUNBUFFERED": "1"}  # fmt: skip
    if agent_name:
        env["LIVEKIT_AGENT_NAME"] = agent_name
    worker = subprocess.Popen([PY, "-m", "agent_runtime"], cwd=REPO_ROOT, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        assert worker.stdout is not None
        deadline = time.monotonic() + 30
        for line in worker.stdout:
            if "registered" in line and "AW_" in line:
                if registered is not None:
                    registered.update(json.loads(line))
                break
            assert time.monotonic() < deadline, "python -m agent_runtime did not register"
        # Keep reading: a worker whose log pipe fills up blocks on its next log line and stops taking jobs.
        threading.Thread(target=worker.stdout.read, daemon=True).start()
        yield worker
    finally:
        if worker.poll() is None:
            worker.send_signal(signal.SIGINT)
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


WebhookClient = TestClient[web.Request, web.Application]


def sign_webhook(body: bytes, key: str, secret: str, ttl: timedelta = timedelta(minutes=5)) -> str:
    """An Authorization token for `body` as livekit-server makes one: its sha256 claim, valid 5 minutes."""
    digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
    return api.AccessToken(key, secret).with_sha256(digest).with_ttl(ttl).to_jwt()


@contextlib.asynccontextmanager
async def running_receiver(key: str, secret: str) -> AsyncIterator[tuple[WebhookClient, list[api.WebhookEvent]]]:
    """The backend's app (webhook receiver and /healthz) on aiohttp's test server, verifying with `key`/`secret`;
    the events its handlers got, in order."""
    settings = validate({"LIVEKIT_URL": "ws://localhost:7880", "LIVEKIT_API_KEY": key, "LIVEKIT_API_SECRET": secret})
    app, handlers = create_app(settings)
    received: list[api.WebhookEvent] = []

    async def record(event: api.WebhookEvent) -> None:
        received.append(event)

    handlers.append(record)
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield client, received
    finally:
        await client.close()


@pytest.fixture
def env_file(tmp_path: Path) -> Path:
    """A .env with the development values, for tests that then break one of them."""
    stack = load_stack()
    path = tmp_path / ".env"
    path.write_text(
        f"LIVEKIT_URL=ws://localhost:{stack.livekit_port}\n"
        f"LIVEKIT_API_KEY={stack.api_key}\nLIVEKIT_API_SECRET={stack.api_secret}\n"
    )
    return path


@contextlib.contextmanager
def extra_livekit(tmp_path: Path, edit: Callable[[dict[str, Any]], None], offset: int = 10000) -> Iterator[str]:
    """A second REAL livekit-server (the pinned build) on ports shifted by `offset`, its config the
    project's docker/livekit.yaml changed by `edit`; yields its ws:// URL, stops it on exit."""
    stack = load_stack()
    config = node_config(node_ports(stack.livekit_port + offset))
    edit(config)
    path = tmp_path / "livekit.yaml"
    path.write_text(render(config))
    log = (tmp_path / "livekit.log").open("wb")
    binary = install.livekit_server_binary(stack)
    process = subprocess.Popen([str(binary), "--config", str(path), "--bind", "127.0.0.1"], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 20
        while not _livekit_ready(config["port"]):
            assert process.poll() is None, (tmp_path / "livekit.log").read_text()
            assert time.monotonic() < deadline, "extra livekit-server did not become ready"
            time.sleep(0.2)
        yield f"ws://localhost:{config['port']}"
    finally:
        process.terminate()
        process.wait(10)
        log.close()


def _livekit_ready(port: int) -> bool:
    """Synchronous (callable from async tests too): GET / answers 200 "OK"."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1) as resp:
            return bool(resp.status == 200 and resp.read().strip() == b"OK")
    except OSError:
        return False


@dataclass(frozen=True)
class Watched:
    """A kind of process the /proc watch looks for: its command line holds `mark` (any, when empty) and its
    executable's resolved path holds `exe`; `of_run`: only those the run started (descended from the run's
    process), so that what else runs on this machine meanwhile (a plugin's worker, another checkout's run) is not
    counted; a lab's node, started before the run, is told by its config's path instead. The
    exe test leaves out the `ip netns exec` and `setpriv` that exec into the process (namespace plumbing, root
    by design, with the same command line for a moment)."""

    mark: str
    exe: str
    of_run: bool = False


def bootstrap_report_watching(
    *args: str, watch: dict[str, Watched], timeout: float = 120
) -> tuple[int, dict[str, Any], dict[str, set[str]]]:
    """`bootstrap_report`, and meanwhile which users each kind of process in `watch` ran as: every uid the kernel
    holds for it (real, effective, saved, filesystem: /proc/<pid>/status `Uid:`), sampled from /proc every 50 ms
    while the run lasts. A kind never seen maps to an empty set."""
    command = [PY, "-m", "bootstrap", "--json", *args]
    seen: dict[str, set[str]] = {name: set() for name in watch}
    with subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as run:
        deadline = time.monotonic() + timeout
        while run.poll() is None and time.monotonic() < deadline:
            for proc in Path("/proc").glob("[0-9]*"):
                _watch_one(proc, run.pid, watch, seen)
            time.sleep(0.05)
        out, err = run.communicate(timeout=max(1.0, deadline - time.monotonic()))
    assert out.count("\n") == 1, f"expected one JSON line, got:\n{out}\n{err}"
    return run.returncode, json.loads(out), seen


def _watch_one(proc: Path, run: int, watch: dict[str, Watched], seen: dict[str, set[str]]) -> None:
    try:
        cmdline, exe = (proc / "cmdline").read_bytes(), os.readlink(proc / "exe")
        kinds = [name for name, w in watch.items() if w.mark.encode() in cmdline and w.exe in exe]
        if any(watch[name].of_run for name in kinds) and not _descends_from(int(proc.name), run):
            kinds = [name for name in kinds if not watch[name].of_run]
        if not kinds:
            return
        status = (proc / "status").read_text()
    except OSError:
        return  # gone meanwhile (or a kernel thread: no exe)
    uids = next(line.split()[1:] for line in status.splitlines() if line.startswith("Uid:"))
    users = {_user(int(uid)) for uid in uids}
    for name in kinds:
        seen[name] |= users


def _descends_from(pid: int, ancestor: int) -> bool:
    """Whether `ancestor` is among `pid`'s parents (/proc/<pid>/stat: the parent's pid follows the state, after
    the command name in parentheses)."""
    while pid > 1:
        pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        if pid == ancestor:
            return True
    return False


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)
