"""`python -m backend`, the real receiver process, under many stalled senders (#15): /healthz keeps answering
within a generous bound, the stalled bodies are cut after the read timeout, and SIGTERM stops it at once."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from backend.webhook_receiver import BODY_READ_TIMEOUT, WEBHOOK_PATH
from devstack.stack_env import REPO_ROOT, Stack
from tests.conftest import PY

pytestmark = pytest.mark.faults
STALLED = 100
HEALTHZ_BOUND = 1.0  # generous: the benchmark reports the real figure


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Backend:
    process: subprocess.Popen[bytes]
    port: int
    log: Path  # its stderr: a file, since a pipe nobody reads would block it on a full buffer


@contextlib.contextmanager
def backend_process(stack: Stack, descriptor_limit: int | None = None) -> Iterator[Backend]:
    """`python -m backend` on a free port, answering /healthz; with `descriptor_limit` as its hard (and soft)
    open-files limit, which it then cannot raise."""
    port = free_port()
    log = Path(tempfile.mkdtemp()) / "backend.log"
    env = {**os.environ, "LIVEKIT_URL": stack.livekit_ws_url, "LIVEKIT_API_KEY": stack.api_key,
           "LIVEKIT_API_SECRET": stack.api_secret, "PYTHONUNBUFFERED": "1"}  # fmt: skip

    def limit() -> None:
        if descriptor_limit is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (descriptor_limit, descriptor_limit))

    with log.open("wb") as stderr:
        process = subprocess.Popen([PY, "-m", "backend", "--port", str(port)], cwd=REPO_ROOT, env=env,
                                   stdout=subprocess.DEVNULL, stderr=stderr, preexec_fn=limit)  # fmt: skip
    try:
        deadline = time.monotonic() + 15
        while healthz(port) is None:
            assert process.poll() is None and time.monotonic() < deadline, "python -m backend did not start"
            time.sleep(0.1)
        yield Backend(process, port, log)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


@pytest.fixture
def backend(stack: Stack) -> Iterator[Backend]:
    with backend_process(stack) as running:
        yield running


def healthz(port: int) -> float | None:
    """Seconds /healthz took to answer 200, or None."""
    started = time.monotonic()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=HEALTHZ_BOUND * 2) as resp:
            return time.monotonic() - started if resp.status == 200 else None
    except OSError:
        return None


def stall(port: int) -> socket.socket:
    """A webhook whose headers promise 100 bytes, of which one arrives."""
    conn = socket.create_connection(("127.0.0.1", port))
    conn.sendall(
        f"POST {WEBHOOK_PATH} HTTP/1.1\r\nHost: x\r\nAuthorization: x\r\nContent-Length: 100\r\n\r\n{{".encode()
    )
    return conn


def test_stalled_senders_neither_starve_healthz_nor_hold_the_receiver(backend: Backend) -> None:
    process, port = backend.process, backend.port
    stalled = [stall(port) for _ in range(STALLED)]
    try:
        answers = [healthz(port) for _ in range(5)]
        assert all(a is not None and a < HEALTHZ_BOUND for a in answers), answers
        time.sleep(BODY_READ_TIMEOUT + 1)
        cut = sum(1 for conn in stalled if conn.recv(64).startswith(b"HTTP/1.1 408"))
        assert cut == STALLED  # every stalled body was answered 408 once its time ran out
        stalled.append(stall(port))  # and one more, still mid-body when the stop comes
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=10)
        assert time.monotonic() - started < 4.0
    finally:
        for conn in stalled:
            conn.close()


@pytest.fixture
def backend_with_256_descriptors(stack: Stack) -> Iterator[Backend]:
    """As in some containers: a hard limit of 256 open files."""
    with backend_process(stack, descriptor_limit=256) as running:
        yield running


def test_running_out_of_descriptors_neither_spins_the_log_nor_lasts(backend_with_256_descriptors: Backend) -> None:
    process, port = backend_with_256_descriptors.process, backend_with_256_descriptors.port
    stalled = []
    try:
        for _ in range(300):  # more than its 256 descriptors
            with contextlib.suppress(OSError):
                stalled.append(stall(port))
        # Those it could accept are cut after BODY_READ_TIMEOUT, freeing descriptors; those waiting in the
        # listen backlog are accepted then and cut one timeout later, and /healthz waits behind them in that
        # backlog: measured, it answered again 14 s after the 300 senders stalled.
        deadline = time.monotonic() + 3 * BODY_READ_TIMEOUT + 3
        while healthz(port) is None:
            assert time.monotonic() < deadline, "the receiver did not recover once the stalled bodies were cut"
    finally:
        for conn in stalled:
            conn.close()
        process.terminate()
    process.wait(timeout=10)
    spins = backend_with_256_descriptors.log.read_text(errors="replace").count("out of system resource")
    assert 1 <= spins <= 5, f"{spins} lines about exhausted descriptors"  # seen at all, and one per 5 s at most
