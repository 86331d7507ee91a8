"""Who created something, in a form that outlives the creator: pid, the process's start time (in clock ticks
since boot, so a reused pid is not mistaken for the creator) and this boot's id. What a killed session left
(rooms, the shared webhook receiver's leases) is removed only when its creator is provably gone."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BOOT_ID_PATH = Path("/proc/sys/kernel/random/boot_id")


def boot_id() -> str:
    try:
        return BOOT_ID_PATH.read_text().strip()
    except OSError:  # not Linux: no boot id, so nothing is ever judged gone by it
        return ""


def start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22), None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: count fields after its closing one.
    return int(stat.rsplit(")", 1)[1].split()[19])


@dataclass(frozen=True)
class Creator:
    pid: int
    start: int
    boot: str

    @classmethod
    def me(cls) -> Creator:
        pid = os.getpid()
        return cls(pid, start_ticks(pid) or 0, boot_id())

    def as_dict(self) -> dict[str, Any]:
        return {"pid": self.pid, "start": self.start, "boot": self.boot}

    @classmethod
    def from_dict(cls, data: Any) -> Creator | None:
        try:
            return cls(int(data["pid"]), int(data["start"]), str(data["boot"]))
        except (KeyError, TypeError, ValueError):
            return None

    def gone(self) -> bool:
        """True only when this machine can tell: same boot, and the pid is dead or now another process.
        Another boot id means another machine (or a reboot): not ours to judge, never swept."""
        if not self.boot or self.boot != boot_id():
            return False
        return start_ticks(self.pid) != self.start
