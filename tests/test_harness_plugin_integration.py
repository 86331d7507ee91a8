"""pytest-livekit-harness's own tests, with pytester: inner sessions in processes of their own (the rtc SDK and
the session's exit are per process) against the real stack. An inner session inherits this session's proof of the
stack (LIVEKIT_HARNESS_VERIFIED), except where the test breaks it on purpose."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from livekit import api

from devstack.ports import port_owner
from livekit_harness_pytest.harness_stack import LiveKitStack
from livekit_harness_pytest.process_identity import start_ticks
from livekit_harness_pytest.webhook_events import WebhookEvents
from tests.process_watch import watching

pytestmark = pytest.mark.integration
pytest_plugins = ["pytester"]
EXAMPLE_TESTS = Path(__file__).resolve().parents[1] / "examples" / "pitch-agent" / "tests" / "test_pitch_agent.py"

INI = """
[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = session
asyncio_default_test_loop_scope = session
markers = integration: the example's category
"""
# The agent the inner sessions dispatch: it says which process serves it, and logs a line to look for.
AGENT = """
import logging, os
log = logging.getLogger("harness_agent")

async def entrypoint(ctx):
    log.info("HARNESS-AGENT-MARKER job in %s", ctx.room.name)  # before the agent joins: logged by then
    await ctx.connect()
    await ctx.room.local_participant.set_attributes({"pid": str(os.getpid())})
"""
# Each inner test records its room and its agent's worker process, so the outer test can check both after.
RECORDING_TESTS = """
import asyncio, json, os, pathlib
from harness_agent import entrypoint

async def record(agent_worker, livekit_room):
    agent = await agent_worker(entrypoint, agent_name="cleanup")
    line = {"room": livekit_room.name, "worker": agent.worker.process.pid, "agent": agent.name}
    with pathlib.Path(os.environ["HARNESS_OUT"]).open("a") as out:
        out.write(json.dumps(line) + "\\n")

async def test_passes(agent_worker, participant, livekit_room):
    await record(agent_worker, livekit_room)

async def test_fails(agent_worker, participant, livekit_room):
    await record(agent_worker, livekit_room)
    assert False, "failing on purpose"

async def test_waits(agent_worker, participant, livekit_room):
    if os.environ.get("HARNESS_WAIT") != "1":
        return
    await record(agent_worker, livekit_room)
    await asyncio.sleep(60)
"""
# Under xdist: each test's agent must be served by ITS session's worker (a shared agent name would hand some
# jobs to the other session's worker), and its webhooks must be its room's only.
COLLISION_TESTS = """
import pytest
from harness_agent import entrypoint

@pytest.mark.parametrize("n", range(4))
async def test_own_worker_and_webhooks(n, agent_worker, participant, webhook_events, livekit_room):
    agent = await agent_worker(entrypoint, agent_name="collide")
    assert await participant.wait_for_attribute(agent.identity, "pid") == str(agent.worker.process.pid)
    await webhook_events.wait_for("participant_joined", participant.identity)
    await webhook_events.wait_for("participant_joined", agent.identity)
    assert {e.room.name for e in webhook_events.events} == {livekit_room.name}
"""


@pytest.fixture
def agent_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The inner sessions' agent module, where the account that runs their workers (livekit-agent, when this
    session is root) can read it: pytester's own directory is under pytest's 0700 one."""
    directory = Path(tempfile.mkdtemp(prefix="harness-agent-"))
    directory.chmod(0o755)
    (directory / "harness_agent.py").write_text(AGENT)
    (directory / "harness_agent.py").chmod(0o644)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(directory), os.environ.get("PYTHONPATH")) if p))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def inner(
    pytester: pytest.Pytester, livekit_stack: LiveKitStack, agent_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> pytest.Pytester:
    pytester.makeini(INI)
    monkeypatch.setenv("HARNESS_OUT", str(pytester.path / "out.jsonl"))
    return pytester


def recorded(pytester: pytest.Pytester) -> list[dict[str, object]]:
    path = pytester.path / "out.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


async def listed_rooms(lk: LiveKitStack) -> set[str]:
    return {r.name for r in (await lk.api.room.list_rooms(api.ListRoomsRequest())).rooms}


def gone(pid: int) -> bool:
    return start_ticks(pid) is None or Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")


def test_a_failing_stack_stops_the_session_with_its_cause(inner: pytest.Pytester, livekit_stack: LiveKitStack,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    inner.makepyfile(test_inner="def test_a(livekit_stack): pass\n\ndef test_b(livekit_room): pass\n")
    monkeypatch.setenv("LIVEKIT_API_SECRET", "not-the-secret-of-this-stack-at-all")
    result = inner.runpytest_subprocess("--livekit-url", livekit_stack.url, "-p", "no:cacheprovider", timeout=60)
    out = result.stdout.str()
    assert result.ret == pytest.ExitCode.INTERNAL_ERROR, out
    assert "LiveKit stack unusable, no test ran" in out and "✗ worker" in out
    assert "cause: HTTP 401" in out and "fix:" in out
    assert "not-the-secret" not in out + result.stderr.str()
    assert " passed" not in out and " error" not in out


async def test_rooms_and_workers_are_cleaned_after_pass_and_fail_and_the_failure_shows_its_agent_log(
    inner: pytest.Pytester, livekit_stack: LiveKitStack
) -> None:
    inner.makepyfile(test_inner=RECORDING_TESTS)
    with watching() as watch:  # its jobs in processes of their own: what runs as whom, seen from /proc
        result = await asyncio.to_thread(inner.runpytest_subprocess, "-p", "no:cacheprovider",
                                         "--livekit-agent-jobs", "process", timeout=90)  # fmt: skip
    result.assert_outcomes(passed=2, failed=1)
    assert watch.roles("worker") and watch.roles("job"), watch.seen
    assert not watch.root(), f"the session's agent processes ran as root: {sorted(watch.root(), key=str)}"
    out = result.stdout.str()
    runs = recorded(inner)
    assert len(runs) == 2
    # The failing test's report holds its agent's log (from its first agent_worker call on: a line the previous
    # test's agent logged late may come along); the passing tests print none.
    assert out.count("- livekit agent cleanup-") == 1, out
    assert f"HARNESS-AGENT-MARKER job in {runs[1]['room']}" in out, out
    assert livekit_stack.api_secret not in out
    assert not {str(r["room"]) for r in runs} & await listed_rooms(livekit_stack)
    assert all(gone(int(str(r["worker"]))) for r in runs)


def run_until_recorded(inner: pytest.Pytester) -> tuple[subprocess.Popen[str], dict[str, object]]:
    """An inner session in the background, waiting inside test_waits once it recorded its room and worker."""
    inner.makepyfile(test_inner=RECORDING_TESTS)
    env = {**os.environ, "HARNESS_WAIT": "1"}
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-k", "test_waits"]
    session = subprocess.Popen(
        command, cwd=inner.path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.monotonic() + 40
    while not recorded(inner):
        if session.poll() is not None or time.monotonic() > deadline:
            session.kill()
            pytest.fail(f"the inner session recorded nothing:\n{session.communicate()[0]}")
        time.sleep(0.1)
    return session, recorded(inner)[0]


async def test_ctrl_c_cleans_the_room_and_the_worker(inner: pytest.Pytester, livekit_stack: LiveKitStack) -> None:
    session, run = await asyncio.to_thread(run_until_recorded, inner)
    assert str(run["room"]) in await listed_rooms(livekit_stack)
    session.send_signal(signal.SIGINT)
    out, _ = await asyncio.to_thread(session.communicate, timeout=15)
    assert "KeyboardInterrupt" in out, out
    assert str(run["room"]) not in await listed_rooms(livekit_stack)
    assert gone(int(str(run["worker"])))


async def test_a_killed_sessions_leftovers_go_once_the_next_session_starts_and_live_rooms_stay(
    inner: pytest.Pytester, livekit_stack: LiveKitStack, livekit_room: api.Room
) -> None:
    session, run = await asyncio.to_thread(run_until_recorded, inner)
    session.kill()
    await asyncio.to_thread(session.wait, 10)
    deadline = time.monotonic() + 5  # the worker dies with its session (PR_SET_PDEATHSIG)
    while not gone(int(str(run["worker"]))):
        assert time.monotonic() < deadline, "the killed session's worker outlived it"
        await asyncio.sleep(0.1)
    assert str(run["room"]) in await listed_rooms(livekit_stack)  # nobody deleted it: its session was killed

    inner.makepyfile(test_next="def test_next(livekit_stack): pass\n")
    result = await asyncio.to_thread(inner.runpytest_subprocess, "-p", "no:cacheprovider", "-s", "test_next.py",
                                     timeout=60)  # fmt: skip
    result.assert_outcomes(passed=1)
    swept = [line for line in result.stdout.lines if "room(s) left by killed sessions" in line]
    assert swept and str(run["room"]) in swept[0], result.stdout.str()
    rooms = await listed_rooms(livekit_stack)
    assert str(run["room"]) not in rooms
    assert livekit_room.name in rooms  # this (live) session's room was not swept


def test_two_xdist_workers_never_collide(inner: pytest.Pytester, livekit_stack: LiveKitStack) -> None:
    """The example epic's suite and a collision probe, with -n 2: rooms, agent names, the worker that serves a
    room, ports and webhooks all stay each session's own."""
    inner.makepyfile(test_pitch_agent=EXAMPLE_TESTS.read_text(), test_collisions=COLLISION_TESTS)
    result = inner.runpytest_subprocess("-n", "2", "-p", "no:cacheprovider", timeout=60)  # ~9 s here
    result.assert_outcomes(passed=9)
    # The shared receiver left with the last session that leased it: the port is free for `python -m bootstrap`.
    assert port_owner(livekit_stack.stack.webhook_port if livekit_stack.stack else 8000) is None


def test_an_unmet_need_skips_with_its_reason_and_an_unknown_one_is_a_usage_error(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        test_needs="""
import pytest

@pytest.mark.livekit_needs("cluster")
def test_cluster(): pass

@pytest.mark.livekit_needs("root")
def test_root(): pass

@pytest.mark.livekit_needs("gpu")
def test_gpu(): pass
"""
    )
    result = inner.runpytest_subprocess(
        "-p", "no:cacheprovider", "-rs", "--livekit-url", "ws://127.0.0.1:1", timeout=60
    )
    out = result.stdout.str()
    assert "SKIPPED" in out and "needs cluster: the cluster is the project's own" in out, out
    assert "livekit_needs('gpu'): choose from browser, cluster, root" in out + result.stderr.str()
    assert ("1 passed" in out) == (os.geteuid() == 0)


@pytest.fixture
def hub_released_after(request: pytest.FixtureRequest) -> Iterator[None]:
    """This session's lease on the shared receiver given back after the test (set up before webhook_events, so
    torn down after it): the rest of this suite runs `python -m bootstrap`, whose receiver needs the port."""
    yield
    from livekit_harness_pytest.plugin import _hub

    _hub(request.config).release()


def test_a_proof_while_the_shared_receiver_holds_the_port_checks_webhooks_through_it(
    inner: pytest.Pytester, hub_released_after: None, webhook_events: WebhookEvents, monkeypatch: pytest.MonkeyPatch
) -> None:
    """This session leased the shared receiver (webhook_events), so the port is taken when the inner session's
    `python -m bootstrap` runs: its webhooks stage is then checked on what the receiver verified for its room."""
    monkeypatch.delenv("LIVEKIT_HARNESS_VERIFIED")  # a proof of its own, not inherited
    inner.makepyfile(
        test_proof="""
def test_proof(livekit_stack):
    webhooks = next(s for s in livekit_stack.report["stages"] if s["name"] == "webhooks")
    print("WEBHOOKS", webhooks["status"], webhooks["detail"])
"""
    )
    result = inner.runpytest_subprocess("-p", "no:cacheprovider", "-s", timeout=60)
    result.assert_outcomes(passed=1)
    assert "WEBHOOKS pass" in result.stdout.str() and "verified by the shared receiver" in result.stdout.str()
