"""The participant's and the cluster worker's processes of their own (devstack.service_python): never a silent
root when the service interpreter cannot be had, their scratch HOME gone when they end, and nothing the
participant started outliving it. Unit level: no server, no namespace (the child is a trivial command on this
host, still behind the same setpriv prefix as root)."""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bootstrap import hosted_worker
from bootstrap.hosted_worker import HostedWorker
from bootstrap.modes.cluster import cluster_stages
from bootstrap.remote_participant import SdkClient
from bootstrap.result import StageFailure
from devstack import netns, service_python
from devstack.nodes import worker_host
from devstack.processes import Account
from devstack.service_python import AGENT_ACCOUNT, unprivileged
from tests.conftest import make_context

pytestmark = pytest.mark.unit
GONE_WAIT = 5.0
NOBODY = Account("nobody", 65534, 65534)


@pytest.fixture
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where mkdtemp makes the scratch HOMEs during the test: a directory of the test's own, listed afterwards."""
    directory = tmp_path / "tmp"
    directory.mkdir()
    directory.chmod(0o755)  # the service accounts must reach their HOME in it
    monkeypatch.setattr(tempfile, "tempdir", str(directory))
    return directory


def listing(directory: Path) -> list[Path]:
    return list(directory.iterdir())


def present(path: Path) -> bool:
    return path.exists()


def unreachable(tmp_path: Path) -> Path:
    """An interpreter that exists, in a directory only its owner may enter (as pyenv's under /root)."""
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    python = private / "python"
    python.write_text("#!/bin/sh\n")  # not a symlink: check_reachable follows one out of the private directory
    python.chmod(0o755)
    return python


@pytest.fixture(params=["missing", "unreachable"])
def no_interpreter(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The service interpreter missing, or there but out of the account's reach; this process seen as root, the
    account a stand-in (no user is created), so the code takes the path it takes as root."""
    python = tmp_path / "absent" / "python" if request.param == "missing" else unreachable(tmp_path)
    monkeypatch.setattr(service_python, "INTERPRETER", python)
    monkeypatch.setattr(service_python, "account", lambda _name: NOBODY)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    return python


@pytest.fixture
def nothing_starts(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    """Every process the code would start, recorded instead (with a fall-back to root, it would start one)."""
    started: list[tuple[Any, ...]] = []

    async def record(*argv: Any, **_options: Any) -> None:
        started.append(argv)
        raise AssertionError(f"a process was started: {argv}")

    monkeypatch.setattr(asyncio, "create_subprocess_exec", record)
    return started


async def test_the_participant_fails_naming_the_missing_interpreter(
    no_interpreter: Path, nothing_starts: list[tuple[Any, ...]], scratch: Path
) -> None:
    wrapped: list[list[str]] = []

    def on_host(argv: list[str]) -> list[str]:
        wrapped.append(argv)
        return argv

    with pytest.raises(StageFailure) as failure:
        await SdkClient.start(on_host, "ws://127.0.0.1:1")
    assert "cannot start the participant unprivileged" in failure.value.cause
    assert str(no_interpreter.parent) in failure.value.cause and failure.value.fix == "run `make install`"
    assert (wrapped, nothing_starts, listing(scratch)) == ([], [], [])


async def test_the_cluster_worker_fails_naming_the_missing_interpreter(
    no_interpreter: Path, nothing_starts: list[tuple[Any, ...]], scratch: Path
) -> None:
    with pytest.raises(StageFailure) as failure:
        await cluster_stages.run_worker(make_context())
    assert "cannot start the worker unprivileged" in failure.value.cause
    assert str(no_interpreter.parent) in failure.value.cause and failure.value.fix == "run `make install`"
    assert (nothing_starts, listing(scratch)) == ([], [])


def on_this_host(*command: str) -> Any:
    """An `on_host` that runs `command` instead of the participant's Python, behind the same setpriv prefix."""
    return lambda argv: [*argv[:-3], *command]


async def test_closing_the_participant_removes_its_home(scratch: Path) -> None:
    client = await SdkClient.start(on_this_host("sleep", "30"), "ws://127.0.0.1:1")
    home = client.sandbox.home
    assert home.parent == scratch and present(home)
    await client.close()
    assert not present(home) and listing(scratch) == []


@pytest.fixture
def leftover() -> Iterator[list[int]]:
    """Pids the test saw started; any still alive at the end is killed (a failed test leaves nothing)."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if alive(pid):
            os.kill(pid, 9)


def alive(pid: int) -> bool:
    try:
        return (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]) != "Z"
    except FileNotFoundError:
        return False


async def test_closing_the_participant_ends_what_it_started(scratch: Path, leftover: list[int]) -> None:
    """A child of the participant's (its shell's `sleep`) goes with it: SIGKILL to the whole group. Were it left,
    close() would not even return: the child holds the participant's stdout open."""
    client = await SdkClient.start(on_this_host("sh", "-c", "sleep 60 & echo $!; wait"), "ws://127.0.0.1:1")
    assert client.process.stdout is not None
    leftover.append(child := int(await asyncio.wait_for(client.process.stdout.readline(), GONE_WAIT)))
    assert alive(child)
    try:
        await asyncio.wait_for(client.close(), GONE_WAIT)
    except TimeoutError:
        pytest.fail("close() did not return: the participant's child outlived it, holding its stdout")
    deadline = time.monotonic() + GONE_WAIT
    while alive(child) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert not alive(child), "the participant's child outlived it"


async def test_stopping_the_cluster_worker_removes_its_home(scratch: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    swept: list[str] = []
    monkeypatch.setattr(netns, "kill_processes_in", swept.append)  # no namespace here: the worker runs on this host
    sandbox = await asyncio.to_thread(unprivileged, AGENT_ACCOUNT, "cluster-worker")
    argv = [*sandbox.argv("agent_runtime")[:-3], "sleep", "30"]
    process = await asyncio.create_subprocess_exec(*argv, cwd=sandbox.home, start_new_session=True)
    host = worker_host(make_context().stack)
    worker = HostedWorker(host, "ws://127.0.0.1:1", scratch / "worker.log", "node b", "cluster-worker", own_host=True)
    await hosted_worker._stop(process, worker, sandbox)
    assert process.returncode is not None and swept == [host.namespace]
    assert not present(sandbox.home) and listing(scratch) == []


async def test_stopping_the_paths_worker_ends_its_own_group_only(
    scratch: Path, monkeypatch: pytest.MonkeyPatch, leftover: list[int]
) -> None:
    """On a host it shares (the paths node host runs the lab's livekit-server and nginx) the worker's stop kills its
    own process group (its job processes), never every process on the host. The stand-in ignores Ctrl-C, as a
    worker stuck closing would, so the SIGKILL is what ends it and its child."""
    swept: list[str] = []
    monkeypatch.setattr(netns, "kill_processes_in", swept.append)
    monkeypatch.setattr(hosted_worker, "WORKER_STOP_WAIT", 0.5)
    sandbox = await asyncio.to_thread(unprivileged, AGENT_ACCOUNT, "paths-worker")
    argv = [*sandbox.argv("agent_runtime")[:-3], "sh", "-c", "trap '' INT; sleep 60 & echo $!; wait"]
    process = await asyncio.create_subprocess_exec(
        *argv, cwd=sandbox.home, start_new_session=True, stdout=asyncio.subprocess.PIPE
    )
    assert process.stdout is not None
    leftover.append(child := int(await asyncio.wait_for(process.stdout.readline(), GONE_WAIT)))
    worker = HostedWorker(worker_host(make_context().stack), "ws://127.0.0.1:1", scratch / "worker.log",
                          "the lab's node", "paths-worker", own_host=False)  # fmt: skip
    await hosted_worker._stop(process, worker, sandbox)
    deadline = time.monotonic() + GONE_WAIT
    while alive(child) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert (await asyncio.wait_for(process.wait(), GONE_WAIT), alive(child), swept) == (-9, False, [])
    assert not present(sandbox.home) and listing(scratch) == []
