"""pytest-livekit-harness starts agent workers safely from a session whose rtc SDK is running.

The rtc SDK's native threads call into Python (ctypes callbacks: each call makes and drops a thread state under
the interpreter's lock). A child forked while one of them holds that lock, and made to run Python before exec
(a preexec_fn), hangs in CPython 3.11's after-fork re-initialisation for good, and Popen in the session with it:
that was the pytester `-n 2` test's flake (an xdist worker's test hung in pool.get until the 120 s timeout)."""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from livekit_harness_pytest.worker_pool import WorkerProcess

pytestmark = pytest.mark.unit
STARTS = 500  # with a preexec_fn put back, 9 of 10 runs of this test hung (after 5 to 451 starts)
PUMPS = 8
LIBC = ctypes.CDLL("libc.so.6")
NATIVE_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p)


def _called_from_a_native_thread(_arg: object) -> None:
    return None


CALLED_FROM_A_NATIVE_THREAD = NATIVE_CALLBACK(_called_from_a_native_thread)  # kept: native threads call it


@pytest.fixture
def native_threads_calling_python() -> Iterator[None]:
    """PUMPS Python threads that each start native threads (pthread_create) calling into Python, one after another,
    as the rtc SDK's FFI threads deliver its events."""
    stop = threading.Event()

    def pump() -> None:
        thread = ctypes.c_ulong()
        while not stop.is_set():
            LIBC.pthread_create(ctypes.byref(thread), None, CALLED_FROM_A_NATIVE_THREAD, None)
            LIBC.pthread_join(thread, None)

    pumps = [threading.Thread(target=pump, daemon=True) for _ in range(PUMPS)]
    for pump_thread in pumps:
        pump_thread.start()
    yield
    stop.set()
    for pump_thread in pumps:
        pump_thread.join(5)


def _forked_but_not_exec(pid: int) -> list[int]:
    """Children of `pid` still running its program: forks that never reached exec."""
    mine = Path(f"/proc/{pid}/cmdline").read_bytes()
    stuck = []
    for proc in Path("/proc").iterdir():
        try:
            child = proc.name.isdigit() and (proc / "stat").read_text().rsplit(")", 1)[1].split()[1] == str(pid)
            if child and (proc / "cmdline").read_bytes() == mine:
                stuck.append(int(proc.name))
        except OSError:
            continue
    return stuck


def test_workers_start_while_native_threads_call_into_python(
    native_threads_calling_python: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(WorkerProcess, "command", (shutil.which("true") or "/bin/true",))  # a stand-in worker
    monkeypatch.setattr(WorkerProcess, "runs_as", None)  # as ourselves: the stand-in, not the service interpreter
    started: list[int] = []  # pids (the workers themselves are let go: their pipes close with them)
    stop = threading.Event()

    def start_from_a_thread() -> None:  # as pool.get does, under asyncio.to_thread
        while len(started) < STARTS and not stop.is_set():
            worker = WorkerProcess.start({}, tmp_path)
            worker.stop()
            started.append(worker.process.pid)

    starting = threading.Thread(target=start_from_a_thread, daemon=True)
    starting.start()
    starting.join(30)
    hung_after = len(started) if starting.is_alive() else None
    stop.set()
    while starting.is_alive():  # free the thread: kill the children stuck between fork and exec
        for pid in _forked_but_not_exec(os.getpid()):
            os.kill(pid, signal.SIGKILL)
        starting.join(0.5)
    assert hung_after is None, f"a worker's start hung (fork without exec) after {hung_after} of {STARTS}"
    assert len(started) == STARTS
