"""Agent job processes and the harness plugin's workers never run as root, and never fall back to it: the pieces,
without a server (the runs that watch /proc: test_load_integration.py, test_harness_plugin_integration.py)."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
from collections.abc import Iterator
from multiprocessing import spawn
from pathlib import Path

import pytest

from bootstrap.result import StageFailure
from bootstrap.stages.worker import jobs_not_root
from devstack import service_python
from devstack.agent_jobs import FORKSERVER_PRELOAD, unprivileged_jobs
from devstack.service_python import AGENT_ACCOUNT, ServicePythonError, account, unprivileged
from livekit_harness_pytest.worker_pool import WorkerProcess, readable_module

pytestmark = [
    pytest.mark.unit,
    pytest.mark.skipif(os.geteuid() != 0, reason="as an ordinary user every process runs as that user anyway"),
]


@pytest.fixture
def executable() -> Iterator[str | bytes]:
    """multiprocessing's executable, put back after the test (unprivileged_jobs sets it for the process)."""
    before = spawn.get_executable()
    yield before
    multiprocessing.set_executable(before)


@pytest.fixture
def no_service_interpreter(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(service_python, "INTERPRETER", tmp_path / "no-such-python")


def test_the_wrapper_runs_the_service_interpreter_as_the_agent_account(executable: str | bytes) -> None:
    jobs = unprivileged_jobs()
    assert jobs.preload[0] == FORKSERVER_PRELOAD and jobs.wrapper_dir is not None
    try:
        wrapper = Path(os.fsdecode(spawn.get_executable()))
        assert wrapper.parent == jobs.wrapper_dir
        info = jobs.wrapper_dir.stat()
        assert (info.st_uid, info.st_mode & 0o777) == (0, 0o700)  # root runs it: nobody else may write there
        probe = "import os, sys; print(os.getuid(), os.geteuid(), sys.executable, os.getcwd())"
        said = subprocess.run([wrapper, "-c", probe], capture_output=True, text=True, timeout=10, check=True).stdout
        agent = account(AGENT_ACCOUNT).uid
        assert said.split() == [str(agent), str(agent), str(service_python.INTERPRETER), "/"]
    finally:
        jobs.remove()
    assert not jobs.wrapper_dir.exists()


def test_jobs_read_the_ca_this_process_trusts_from_where_root_alone_reaches_it(
    executable: str | bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Remote mode trusts --ca-file through SSL_CERT_FILE; pytest's own tmp directories are root's alone (0700):
    the jobs (livekit-agent) get a copy they can read, or their TLS to the deployment fails (UnknownIssuer)."""
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    ca = private / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\nroot's own\n-----END CERTIFICATE-----\n")
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))
    jobs = unprivileged_jobs()
    try:
        probe = "import os; print(open(os.environ['SSL_CERT_FILE']).read())"
        done = subprocess.run([os.fsdecode(spawn.get_executable()), "-c", probe], capture_output=True, text=True,
                              timeout=10, check=False)  # fmt: skip
        assert done.returncode == 0, done.stderr[-500:]
        assert done.stdout.strip() == ca.read_text().strip()
        assert jobs.ca_dir is not None and jobs.ca_dir.stat().st_uid == 0  # root's copy, never the account's
    finally:
        jobs.remove()
    assert jobs.ca_dir is not None and not jobs.ca_dir.exists()


@pytest.mark.usefixtures("no_service_interpreter")
def test_no_service_interpreter_fails_the_worker_stage_naming_make_install(executable: str | bytes) -> None:
    with pytest.raises(StageFailure) as failure:
        jobs_not_root()
    assert "cannot run unprivileged" in failure.value.cause and "make install" in failure.value.fix
    assert spawn.get_executable() == executable  # nothing was switched: no job process starts at all


def test_the_forkserver_refuses_to_serve_as_root() -> None:
    """Its preload, imported as root (a forkserver started without the wrapper), ends it: every job start then
    fails, none runs as root."""
    done = subprocess.run([sys.executable, "-c", f"import {FORKSERVER_PRELOAD}"], capture_output=True, text=True,
                          timeout=10)  # fmt: skip
    assert done.returncode != 0 and "must not run as root" in done.stderr


@pytest.mark.usefixtures("no_service_interpreter")
def test_the_plugins_worker_without_the_service_interpreter_fails_naming_make_install(tmp_path: Path) -> None:
    with pytest.raises(ServicePythonError, match="make install"):
        WorkerProcess.start({}, tmp_path)
    assert not list(tmp_path.glob("agent-worker-*.log"))  # nothing started, as root or otherwise


def test_an_agent_module_the_account_cannot_read_fails_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hidden = tmp_path / "hidden"  # under pytest's own temporary directory: 0700, root's
    hidden.mkdir(mode=0o700)
    (hidden / "hidden_agent.py").write_text("async def entrypoint(ctx): pass\n")
    monkeypatch.syspath_prepend(str(hidden))
    who = unprivileged(AGENT_ACCOUNT, "agent-worker-test")
    try:
        with pytest.raises(RuntimeError) as refused:
            readable_module("hidden_agent:entrypoint", who)
        assert str(hidden / "hidden_agent.py") in str(refused.value) and AGENT_ACCOUNT in str(refused.value)
        assert "chmod" in str(refused.value)
        readable_module("agent_runtime.agent:echo_session", who)  # in the checkout, readable by all: accepted
    finally:
        who.remove()
