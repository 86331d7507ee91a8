"""Processes the native runner starts, and only those: each one's pid file records what `up` started (pid,
start time, owner, executable) in a directory only we can write, and `down` signals a process only when all
of it still matches. Stopping is bounded: the service's own shutdown signal, then SIGKILL for its group."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from devstack.safe_files import open_private_log, read_private, write_private

STOP_TIMEOUT = 10.0


@dataclass(frozen=True)
class Account:
    """Who a service runs as: a named system account when we are root, else ourselves (name None)."""

    name: str | None
    uid: int
    gid: int

    @property
    def switch_uid(self) -> int | None:
        """For subprocess's user=: None when there is nobody to switch to."""
        return self.uid if self.name else None

    @property
    def switch_gid(self) -> int | None:
        return self.gid if self.name else None

    @property
    def switch_groups(self) -> list[int] | None:
        """No supplementary groups: root's (group 0 among them) must not follow it into the service."""
        return [] if self.name else None


@dataclass(frozen=True)
class PidRecord:
    pid: int
    start_time: str  # clock ticks since boot: a recycled pid has another one
    uid: int
    exe: str  # the resolved executable the process runs

    def __str__(self) -> str:
        return f"{self.pid} {self.start_time} {self.uid} {self.exe}"

    @classmethod
    def of(cls, pid: int) -> PidRecord | None:
        """What /proc says of `pid` now; None when it is gone or a zombie."""
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            uid = os.stat(f"/proc/{pid}").st_uid
            exe = os.readlink(f"/proc/{pid}/exe")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            return None
        return None if fields[0] == "Z" else cls(pid, fields[19], uid, exe)

    @classmethod
    def parse(cls, text: str) -> PidRecord | None:
        parts = text.split(maxsplit=3)
        if len(parts) != 4 or not parts[0].isdigit() or not parts[2].isdigit():
            return None  # a pid file from an older layout, or garbage: never trusted
        return cls(int(parts[0]), parts[1], int(parts[2]), parts[3].strip())


def start(
    command: list[str], account: Account, *, log: Path, pid_file: Path, cwd: Path, executable: str = ""
) -> PidRecord:
    """Start `command` as `account` in its own session, output appended to `log`; record it in `pid_file`.
    `executable`: what the process becomes through the exec chain `command` starts with (`ip netns exec …
    setpriv … server`: one pid throughout); it is recorded once the process runs it."""
    log_fd = open_private_log(log)
    try:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log_fd, stderr=subprocess.STDOUT, cwd=cwd,
            start_new_session=True, umask=0o077,
            user=account.switch_uid, group=account.switch_gid, extra_groups=account.switch_groups,
        )  # fmt: skip
    finally:
        os.close(log_fd)
    record = _settled(process.pid, os.path.realpath(executable or command[0]))
    if record is None:
        raise RuntimeError(f"{command[0]} exited at once, or never became {executable or command[0]}; see {log}")
    write_private(pid_file, str(record))
    return record


def _settled(pid: int, executable: str, within: float = 5.0) -> PidRecord | None:
    """`pid` once it runs `executable` (None if it dies first or never does)."""
    deadline = time.monotonic() + within
    while (record := PidRecord.of(pid)) is not None and record.exe != executable and time.monotonic() < deadline:
        time.sleep(0.01)
    return record if record is not None and record.exe == executable else None


def running(pid_file: Path, executable: str, account: Account) -> int | None:
    """The pid in `pid_file` if that process is alive and is still exactly what `up` started: the same start
    time, owned by `account`, running `executable`. Anything else is not ours to signal."""
    recorded = PidRecord.parse(read_private(pid_file) or "")
    if recorded is None:
        return None
    expected = PidRecord(recorded.pid, recorded.start_time, account.uid, os.path.realpath(executable))
    return recorded.pid if recorded == expected == PidRecord.of(recorded.pid) else None


def stop(pid: int, stop_signal: signal.Signals) -> None:
    """`stop_signal` to the process, then SIGKILL to its whole group after STOP_TIMEOUT: never a leftover. The
    group is signalled only while `pid` is still the process it was when the stop began (same start time,
    owner, executable): if it exited and the pid went to another process meanwhile, that one is not ours."""
    identity = PidRecord.of(pid)
    if identity is None:
        return
    os.kill(pid, stop_signal)
    if _gone_within(pid, STOP_TIMEOUT):
        return
    if PidRecord.of(pid) != identity:
        return  # gone, and its pid (and group id) now someone else's
    os.killpg(pid, signal.SIGKILL)  # its own session: the group is it and its children
    _gone_within(pid, 2.0)


def _gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if PidRecord.of(pid) is None:
            return True
        time.sleep(0.05)
    return False
