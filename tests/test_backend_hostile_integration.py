"""`python -m backend`, the real receiver process, under many stalled senders (#15, #24): /healthz keeps
answering within a generous bound, the stalled bodies are cut after the read timeout, senders past its
connection cap are turned away at once, and SIGTERM stops it within the documented 2 s."""

from __future__ import annotations

import contextlib
import os
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
from tests.conftest import PY, sign_webhook

pytestmark = pytest.mark.faults
STALLED = 100
HEALTHZ_BOUND = 1.0  # generous: the benchmark reports the real figure
STOP_BOUND = 2.0  # docs/livekit-setup.md: "stops within 2 s however many senders are stalled"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Backend:
    process: subprocess.Popen[bytes]
    port: int
    log: Path  # its stderr: a file, since a pipe nobody reads would block it on a full buffer
    auth: str  # a genuine signature (of a body nobody sends whole): the receiver reads the body only then


@contextlib.contextmanager
def backend_process(stack: Stack, descriptor_limit: int | None = None) -> Iterator[Backend]:
    """`python -m backend` on a free port, answering /healthz; with `descriptor_limit` as its hard (and soft)
    open-files limit, which it then cannot raise."""
    port = free_port()
    log = Path(tempfile.mkdtemp()) / "backend.log"
    env = {**os.environ, "LIVEKIT_URL": stack.livekit_ws_url, "LIVEKIT_API_KEY": stack.api_key,
           "LIVEKIT_API_SECRET": stack.api_secret, "PYTHONUNBUFFERED": "1"}  # fmt: skip

    # prlimit (util-linux), not a preexec_fn: Python code between fork and exec can hang for good while the rtc
    # SDK's native threads call into this interpreter (docs/testing-agents.md).
    limit = [] if descriptor_limit is None else ["prlimit", f"--nofile={descriptor_limit}:{descriptor_limit}"]
    with log.open("wb") as stderr:
        process = subprocess.Popen([*limit, PY, "-m", "backend", "--port", str(port)], cwd=REPO_ROOT, env=env,
                                   stdout=subprocess.DEVNULL, stderr=stderr)  # fmt: skip
    try:
        deadline = time.monotonic() + 15
        while healthz(port) is None:
            assert process.poll() is None and time.monotonic() < deadline, "python -m backend did not start"
            time.sleep(0.1)
        yield Backend(process, port, log, sign_webhook(b"{" * 100, stack.api_key, stack.api_secret))
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


def stall(backend: Backend) -> socket.socket:
    """A signed webhook whose headers promise 100 bytes, of which one arrives."""
    conn = socket.create_connection(("127.0.0.1", backend.port))
    head = f"POST {WEBHOOK_PATH} HTTP/1.1\r\nHost: x\r\nAuthorization: {backend.auth}\r\nContent-Length: 100\r\n\r\n"
    conn.sendall(head.encode() + b"{")
    return conn


def test_stalled_senders_neither_starve_healthz_nor_hold_the_receiver(backend: Backend) -> None:
    process, port = backend.process, backend.port
    stalled = [stall(backend) for _ in range(STALLED)]
    try:
        answers = [healthz(port) for _ in range(5)]
        assert all(a is not None and a < HEALTHZ_BOUND for a in answers), answers
        time.sleep(BODY_READ_TIMEOUT + 1)
        cut = sum(1 for conn in stalled if conn.recv(64).startswith(b"HTTP/1.1 408"))
        assert cut == STALLED  # every stalled body was answered 408 once its time ran out
        stalled.append(stall(backend))  # and one more, still mid-body when the stop comes
        time.sleep(0.2)
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=10)
        print(f"stopped {time.monotonic() - started:.2f} s after SIGTERM")
        assert time.monotonic() - started < STOP_BOUND
    finally:
        for conn in stalled:
            conn.close()


@pytest.fixture
def backend_with_256_descriptors(stack: Stack) -> Iterator[Backend]:
    """As in some containers: a hard limit of 256 open files."""
    with backend_process(stack, descriptor_limit=256) as running:
        yield running


def test_more_senders_than_descriptors_are_turned_away_at_once(backend_with_256_descriptors: Backend) -> None:
    backend = backend_with_256_descriptors
    stalled = []
    try:
        for _ in range(300):  # more than its 256 descriptors
            with contextlib.suppress(OSError):
                stalled.append(stall(backend))
        # Its connection cap (128 here, below the descriptors) answers the others 503 at once: no descriptor
        # table runs full, nothing waits in the listen backlog. Before the cap, /healthz answered again only
        # 14 s after 300 senders stalled; now once the held bodies are cut, after BODY_READ_TIMEOUT (5.2 s).
        time.sleep(0.5)
        turned_away = sum(1 for conn in stalled if _answer(conn).startswith(b"HTTP/1.1 503"))
        assert turned_away >= 300 - 128, turned_away
        deadline = time.monotonic() + BODY_READ_TIMEOUT + 3
        while healthz(backend.port) is None:
            assert time.monotonic() < deadline, "the receiver did not recover once the stalled bodies were cut"
            time.sleep(0.1)
    finally:
        for conn in stalled:
            conn.close()
        backend.process.terminate()
    backend.process.wait(timeout=10)
    # Not asserted: that the descriptor table never runs full. Under a loaded CI machine asyncio can accept a few
    # backlogs' worth before their 503s close, and 2 of 4 clean-clone runs logged "accept() out of system
    # resource" once (asyncio then pauses accepting for 1 s): the cap and the recovery above still hold.


def _answer(conn: socket.socket) -> bytes:
    """What the server has said on `conn` so far (nothing: b"")."""
    conn.setblocking(False)
    try:
        return conn.recv(64)
    except BlockingIOError:
        return b""
    finally:
        conn.setblocking(True)
