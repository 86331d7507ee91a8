"""CPU and memory of processes on this machine, read from /proc (every function takes the /proc root, so a test
can hand it a tree of its own): a process's CPU seconds (utime + stime), resident memory (VmRSS) and
proportional share (Pss: shared pages split between the processes that map them, so job processes forked from
one forkserver are not each charged its whole interpreter), the machine's busy share, and the process listening
on a TCP port (livekit-server, found by its port rather than its name: other labs on this machine run more)."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
TCP_LISTEN = "0A"  # st of a listening socket in /proc/net/tcp


@dataclass(frozen=True)
class ProcSample:
    pid: int
    cpu_seconds: float  # user + system, since the process started
    rss_bytes: int
    pss_bytes: int | None  # None where smaps_rollup cannot be read


def cpu_ticks(stat: str) -> int:
    """utime + stime from a /proc/PID/stat line (fields 14 and 15; the command name may hold spaces and ')')."""
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def parent_pid(stat: str) -> int:
    return int(stat.rsplit(")", 1)[1].split()[1])


def kib_field(text: str, name: str) -> int | None:
    """`name:   123 kB` from /proc/PID/status or smaps_rollup, in bytes."""
    for line in text.splitlines():
        if line.startswith(f"{name}:"):
            return int(line.split()[1]) * 1024
    return None


def sample(pid: int, root: Path = PROC) -> ProcSample | None:
    """`pid`'s CPU and memory now; None when it is gone."""
    try:
        stat = (root / str(pid) / "stat").read_text()
        status = (root / str(pid) / "status").read_text()
    except OSError:
        return None
    pss = None
    with contextlib.suppress(OSError):
        pss = kib_field((root / str(pid) / "smaps_rollup").read_text(), "Pss")
    return ProcSample(pid, cpu_ticks(stat) / CLOCK_TICKS, kib_field(status, "VmRSS") or 0, pss)


def thread_cpu_seconds(pid: int, tid: int, root: Path = PROC) -> float | None:
    """One thread's CPU seconds (the main thread, tid == pid, runs a Python process's event loop)."""
    try:
        return cpu_ticks((root / str(pid) / "task" / str(tid) / "stat").read_text()) / CLOCK_TICKS
    except OSError:
        return None


def machine_ticks(root: Path = PROC) -> tuple[int, int]:
    """(busy, total) clock ticks of all CPUs since boot, from /proc/stat's `cpu` line (idle and iowait are not
    busy)."""
    line = (root / "stat").read_text().splitlines()[0]
    values = [int(v) for v in line.split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    total = sum(values[:8])  # guest time is already counted in user
    return total - idle, total


def busy_percent(before: tuple[int, int], after: tuple[int, int]) -> float:
    """The machine's busy share between two machine_ticks readings, in % of all its CPUs."""
    total = after[1] - before[1]
    return 100.0 * (after[0] - before[0]) / total if total > 0 else 0.0


def cpu_percent(before: ProcSample | None, after: ProcSample | None, seconds: float) -> float | None:
    """CPU used between two samples of one process, in % of one core (200 % = both cores of this machine)."""
    if before is None or after is None or seconds <= 0:
        return None
    return 100.0 * (after.cpu_seconds - before.cpu_seconds) / seconds


def listening_inodes(table: str, port: int) -> set[int]:
    """The socket inodes listening on `port` in a /proc/net/tcp or tcp6 table."""
    inodes = set()
    for line in table.splitlines()[1:]:
        fields = line.split()
        if len(fields) > 9 and fields[3] == TCP_LISTEN and int(fields[1].rsplit(":", 1)[1], 16) == port:
            inodes.add(int(fields[9]))
    return inodes


def listener_pid(port: int, root: Path = PROC) -> int | None:
    """The process that holds a socket listening on TCP `port` (in this network namespace), if any."""
    inodes: set[int] = set()
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            inodes |= listening_inodes((root / "net" / table).read_text(), port)
    wanted = {f"socket:[{inode}]" for inode in inodes}
    if not wanted:
        return None
    for process in root.iterdir():
        if not process.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if any(os.readlink(fd) in wanted for fd in (process / "fd").iterdir()):
                return int(process.name)
    return None
