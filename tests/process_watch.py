"""Who the agent processes a test starts run as: /proc sampled on a thread while the test runs.

Every process descended from this one is classified by its command line, once it is Python: a harness worker
(livekit_harness_pytest.worker_process), livekit-agents' forkserver, or a job (a forkserver's child: forked, not
exec'd, so it shares the forkserver's command line). Each one's real and effective uid is recorded (from
/proc/<pid>/status `Uid:`) the first time it is seen, and again whenever it changes."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

FORKSERVER = b"multiprocessing.forkserver"
HARNESS_WORKER = b"livekit_harness_pytest.worker_process"
INTERVAL = 0.02  # a job lives for seconds; a forkserver for the run


@dataclass(frozen=True)
class Seen:
    pid: int
    role: str  # "worker", "forkserver" or "job"
    uids: tuple[int, int]  # real, effective


@dataclass
class ProcessWatch:
    seen: set[Seen] = field(default_factory=set)
    stop: threading.Event = field(default_factory=threading.Event)

    def roles(self, role: str) -> set[Seen]:
        return {s for s in self.seen if s.role == role}

    def root(self) -> set[Seen]:
        return {s for s in self.seen if 0 in s.uids}

    def sample(self) -> None:
        table = _processes()
        for pid in _descendants(os.getpid(), table):
            role = _role(pid, table)
            if role and (uids := _uids(pid)) is not None:
                self.seen.add(Seen(pid, role, uids))

    def run(self) -> None:
        while not self.stop.wait(INTERVAL):
            self.sample()


@contextlib.contextmanager
def watching() -> Iterator[ProcessWatch]:
    watch = ProcessWatch()
    thread = threading.Thread(target=watch.run, name="process-watch", daemon=True)
    thread.start()
    try:
        yield watch
    finally:
        watch.stop.set()
        thread.join(5)


def _processes() -> dict[int, tuple[int, bytes]]:
    """pid -> (parent pid, command line), for every process readable now."""
    table = {}
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            table[int(proc.name)] = (ppid, (proc / "cmdline").read_bytes())
    return table


def _descendants(ancestor: int, table: dict[int, tuple[int, bytes]]) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, stack = [], list(children.get(ancestor, []))
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(children.get(pid, []))
    return found


def _role(pid: int, table: dict[int, tuple[int, bytes]]) -> str | None:
    ppid, cmdline = table[pid]
    if not Path(os.fsdecode(cmdline.split(b"\0", 1)[0])).name.startswith("python"):
        return None  # not yet Python: the shell and setpriv that start it as the account (root until they exec)
    if HARNESS_WORKER in cmdline:
        return "worker"
    if FORKSERVER not in cmdline:
        return None
    return "job" if FORKSERVER in table.get(ppid, (0, b""))[1] else "forkserver"


def _uids(pid: int) -> tuple[int, int] | None:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Uid:"):
                real, effective = line.split()[1:3]
                return int(real), int(effective)
    return None
