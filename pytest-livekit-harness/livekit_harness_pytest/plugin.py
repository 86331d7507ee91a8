"""pytest-livekit-harness: fixtures that give a test a proven LiveKit stack, its own room, a real agent worker
dispatched into it, a participant, and the room's verified webhooks (docs/testing-agents.md).

- `livekit_stack` (session): the stack up (devstack) if it is the project's own and down, proven once by
  `python -m bootstrap --json`; a failed proof stops the session with the report's cause and fix.
  `--livekit-url` / LIVEKIT_HARNESS_URL point it at a server that is already running, here or elsewhere.
- `livekit_room`: a room of the test's own, deleted after; rooms of killed sessions are swept at start.
- `agent_worker`: `await agent_worker(entrypoint, agent_name=...)` runs the entrypoint in a real worker (one
  process per entrypoint, kept for the session, registered under a unique name) and dispatches it into the
  room; its log is attached to a failing test's report.
- `participant` / `participant_factory`: rtc SDK participants joined with minted tokens.
- `webhook_events`: the room's verified webhooks, through the machine's shared receiver (webhook_hub).
- `@pytest.mark.livekit_needs("browser" | "cluster" | "root")`: skipped with the reason when unmet.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import sys
import tempfile
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from livekit import api

from agent_runtime.ffi_exit import exit_without_finalization
from livekit_harness_pytest import room_sweep
from livekit_harness_pytest.harness_stack import LiveKitStack, StackUnusable, bring_up, resolve, verify
from livekit_harness_pytest.participant import Participant
from livekit_harness_pytest.webhook_events import HubClient, WebhookEvents, WebhooksUnavailable
from livekit_harness_pytest.worker_pool import WorkerPool, WorkerProcess, entrypoint_ref

DISPATCH_TIMEOUT = 10.0  # seconds for a dispatched agent to join the room (measured here: ~0.3 s)
AGENT_NAME_ATTRIBUTE = "lk.agent_name"
NEEDS = ("browser", "cluster", "root")

pool_key = pytest.StashKey[WorkerPool]()
hub_key = pytest.StashKey[HubClient]()
stack_key = pytest.StashKey[LiveKitStack]()
logs_key = pytest.StashKey[list[tuple[WorkerProcess, int]]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("livekit", "LiveKit harness (pytest-livekit-harness)")
    group.addoption("--livekit-url", default=None,
                    help="a running LiveKit server (ws:// or wss://) instead of the project's stack; keys from "
                         "LIVEKIT_API_KEY / LIVEKIT_API_SECRET (env LIVEKIT_HARNESS_URL works too)")  # fmt: skip
    group.addoption("--livekit-agent-jobs", choices=("thread", "process"), default="thread",
                    help="agent jobs on a thread of the worker (fast; default) or a process each")  # fmt: skip
    group.addoption("--livekit-webhook-host", default="127.0.0.1",
                    help="address the shared webhook receiver binds (0.0.0.0 for a server in Docker)")  # fmt: skip


_sessions = {"active": 0, "exit_status": 0}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "livekit_needs(*needs): needs browser, cluster or root; skipped when unmet")
    _sessions["active"] += 1


def pytest_unconfigure(config: pytest.Config) -> None:
    """The outermost session that used the livekit FFI ends without interpreter finalization (as `python -m
    bootstrap` does: agent_runtime.ffi_exit), since the FFI's threads can abort while Python tears down. Not for
    a session nested in another (pytester's inline runs), an xdist worker (its controller must hear it finish),
    or under mutmut."""
    _sessions["active"] -= 1
    nested_or_managed = _sessions["active"] or "PYTEST_XDIST_WORKER" in os.environ or "MUTANT_UNDER_TEST" in os.environ
    if not nested_or_managed and "livekit.rtc" in sys.modules:
        exit_without_finalization(int(_sessions["exit_status"]))


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start a worker process (importing livekit-agents takes ~2 s) while the stack is being proven, when a test
    will ask for one."""
    if any("agent_worker" in getattr(item, "fixturenames", ()) for item in session.items):
        session.config.stash[pool_key] = _pool(session.config)
        session.config.stash[pool_key].prewarm()


def _pool(config: pytest.Config) -> WorkerPool:
    if pool_key not in config.stash:
        lk = _resolved(config)
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("LIVEKIT_")}, **lk.env(),
               "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}  # fmt: skip
        log_dir = Path(tempfile.mkdtemp(prefix="livekit-harness-workers-"))
        config.stash[pool_key] = WorkerPool(env, log_dir, config.getoption("--livekit-agent-jobs"))
    return config.stash[pool_key]


def _resolved(config: pytest.Config) -> LiveKitStack:
    if stack_key not in config.stash:
        config.stash[stack_key] = resolve(config.getoption("--livekit-url"))
    return config.stash[stack_key]


def _hub(config: pytest.Config) -> HubClient:
    if hub_key not in config.stash:
        lk = _resolved(config)
        port = lk.stack.webhook_port if lk.stack else 8000
        config.stash[hub_key] = HubClient(lk, config.getoption("--livekit-webhook-host"), port)
    return config.stash[hub_key]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _sessions["exit_status"] = int(exitstatus)
    if pool_key in session.config.stash:
        session.config.stash[pool_key].close()
    if hub_key in session.config.stash:
        session.config.stash[hub_key].release()


# --- the stack -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def livekit_stack(request: pytest.FixtureRequest) -> Iterator[LiveKitStack]:
    config = request.config
    lk = _resolved(config)
    hub = _hub(config)
    run_uid = getattr(config, "workerinput", {}).get("testrunuid", "")
    try:
        started_here = bring_up(lk)
        verify(lk, run_uid, hub_events=lambda room: hub.events(room) if hub.running() else [])
    except StackUnusable as exc:
        pytest.exit(f"LiveKit stack unusable, no test ran: {exc}", returncode=pytest.ExitCode.INTERNAL_ERROR)
    swept = asyncio.run(_sweep(lk))
    if swept:
        print(f"\nlivekit-harness: deleted {len(swept)} room(s) left by killed sessions: {', '.join(swept)}")
    yield lk
    if started_here and "PYTEST_XDIST_WORKER" not in os.environ:
        from livekit_harness_pytest.harness_stack import _module

        _module("devstack", "down", env={}, timeout=120)


async def _sweep(lk: LiveKitStack) -> list[str]:
    async with api.LiveKitAPI(lk.http_url, lk.api_key, lk.api_secret) as client:
        return await room_sweep.sweep(client)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    lk = config.stash.get(stack_key, None)
    if lk is not None and lk.verified:
        took = lk.report.get("harness_seconds")
        how = f"{lk.verified} in {took:.1f}s" if took is not None and lk.verified == "bootstrap" else lk.verified
        terminalreporter.write_line(f"livekit-harness: {lk.url} proven ({how})")


# --- a room per test -------------------------------------------------------------------------------------------


@pytest_asyncio.fixture
async def livekit_room(livekit_stack: LiveKitStack, request: pytest.FixtureRequest) -> AsyncIterator[api.Room]:
    """A room named after the test (unique), created now with its creator in the metadata, deleted after."""
    if "webhook_events" in request.fixturenames:  # the receiver must listen before room_started is sent
        await asyncio.to_thread(_connect_hub, request.config)
    room = await room_sweep.create(livekit_stack.api, room_sweep.room_name(request.node.name))
    try:
        yield room
    finally:
        await room_sweep.delete(livekit_stack.api, room.name)


def _connect_hub(config: pytest.Config) -> HubClient:
    hub = _hub(config)
    if not hub.lease:
        try:
            hub.connect()
        except WebhooksUnavailable as exc:
            pytest.fail(str(exc), pytrace=False)
    return hub


@pytest.fixture
def webhook_events(livekit_room: api.Room, request: pytest.FixtureRequest) -> WebhookEvents:
    return WebhookEvents(_connect_hub(request.config), livekit_room.name)


# --- agents ----------------------------------------------------------------------------------------------------


@dataclass
class Agent:
    """A dispatched agent: its unique agent name, its identity in the room, its worker."""

    name: str
    identity: str
    room: str
    worker: WorkerProcess

    def log(self) -> str:
        return self.worker.log_since(0)


AgentWorker = Callable[..., Awaitable[Agent]]


@pytest.fixture
def agent_worker(livekit_stack: LiveKitStack, livekit_room: api.Room, request: pytest.FixtureRequest) -> AgentWorker:
    """`await agent_worker(entrypoint, agent_name="agent", room=None, metadata="")`: the entrypoint's worker
    (started on first use, kept for the session) dispatched into the test's room (or `room`), returned once the
    agent is in it."""
    pool = _pool(request.config)
    used = request.node.stash.setdefault(logs_key, [])

    async def dispatch(entrypoint: Callable[..., Any] | str, agent_name: str = "agent", room: str | None = None,
                       metadata: str = "") -> Agent:  # fmt: skip
        worker = await asyncio.to_thread(pool.get, entrypoint_ref(entrypoint), agent_name)
        if all(w is not worker for w, _ in used):
            used.append((worker, worker.log_size()))
        target = room or livekit_room.name
        await livekit_stack.api.agent_dispatch.create_dispatch(
            api.CreateAgentDispatchRequest(agent_name=worker.agent_name, room=target, metadata=metadata)
        )
        identity = await _agent_joined(livekit_stack.api, target, worker.agent_name)
        return Agent(worker.agent_name, identity, target, worker)

    return dispatch


async def _agent_joined(client: api.LiveKitAPI, room: str, agent_name: str) -> str:
    deadline = asyncio.get_running_loop().time() + DISPATCH_TIMEOUT
    while asyncio.get_running_loop().time() < deadline:
        listed = await client.room.list_participants(api.ListParticipantsRequest(room=room))
        for p in listed.participants:
            if p.kind == api.ParticipantInfo.Kind.AGENT and p.attributes.get(AGENT_NAME_ATTRIBUTE) == agent_name:
                return p.identity
        await asyncio.sleep(0.05)
    raise AssertionError(f"agent {agent_name!r} was dispatched into {room} but did not join within "
                         f"{DISPATCH_TIMEOUT:.0f}s (its log is in this report)")  # fmt: skip


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    report: pytest.TestReport = yield
    if report.failed and logs_key in item.stash:
        secret = _resolved(item.config).api_secret
        for worker, offset in item.stash[logs_key]:
            text = redact(worker.log_since(offset), secret)
            report.sections.append((f"livekit agent {worker.agent_name} log ({report.when})", text or "(nothing)"))
    return report


def redact(text: str, secret: str) -> str:
    text = text.replace(secret, "<secret>") if secret else text
    return re.sub(r"eyJ[\w-]{6}[\w.-]*", lambda m: f"{m.group()[:10]}…({len(m.group())} chars)", text)


# --- participants ----------------------------------------------------------------------------------------------


ParticipantFactory = Callable[..., Awaitable[Participant]]


@pytest_asyncio.fixture
async def participant_factory(livekit_stack: LiveKitStack, livekit_room: api.Room) -> AsyncIterator[ParticipantFactory]:
    """`await participant_factory(identity="user", room=None)`: a participant joined with a minted token."""
    joined: list[Participant] = []

    async def join(identity: str = "user", room: str | None = None, **token_options: Any) -> Participant:
        name = room or livekit_room.name
        person = Participant(identity, name)
        joined.append(person)
        await person.join(livekit_stack.url, livekit_stack.token(identity, name, **token_options))
        return person

    try:
        yield join
    finally:
        for person in joined:
            try:
                async with asyncio.timeout(5):
                    await person.leave()
            except (TimeoutError, Exception):  # leaving is best effort: the room is deleted anyway
                pass


@pytest_asyncio.fixture
async def participant(participant_factory: ParticipantFactory) -> Participant:
    """A participant `user` joined to the test's room."""
    return await participant_factory("user")


# --- needs -----------------------------------------------------------------------------------------------------


def pytest_runtest_setup(item: pytest.Item) -> None:
    for marker in item.iter_markers("livekit_needs"):
        for need in marker.args:
            if need not in NEEDS:
                raise pytest.UsageError(f"{item.nodeid}: livekit_needs({need!r}): choose from {', '.join(NEEDS)}")
            if reason := unmet(need, item.config):
                pytest.skip(f"needs {need}: {reason}")


def unmet(need: str, config: pytest.Config) -> str:
    """Why `need` cannot be met on this machine ('' when it can)."""
    if need == "root":
        return "" if os.geteuid() == 0 else "not running as root"
    if need == "browser":
        from devstack.stack_env import REPO_ROOT

        if not (shutil.which("chromium") or shutil.which("chromium-browser")):
            return "no chromium on PATH (make browser-deps)"
        if not (REPO_ROOT / "frontend" / "node_modules" / "livekit-client").exists():
            return "frontend/node_modules has no livekit-client (make browser-deps)"
        return ""
    lk = _resolved(config)
    if lk.stack is None:
        return "the cluster is the project's own (make cluster-up), not the server given by --livekit-url"
    if os.geteuid() != 0:
        return "the cluster's hosts are network namespaces: needs root"
    from devstack.nodes import nodes

    for node in nodes(lk.stack):
        try:
            with urllib.request.urlopen(f"{node.http_url}/", timeout=1):
                pass
        except OSError:
            return f"cluster node {node.name} does not answer at {node.http_url} (make cluster-up)"
    return ""
