"""`down` signals only what `up` started (devstack.processes.running): a pid file's record names a process only
while all of it still matches what /proc says of that pid (start time, owner, executable) and what the service
is (its account and its executable). Each check is tried alone here, on a real process of ours; no root needed,
no stack (issue 24: deleting the identity check failed no test)."""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from devstack.processes import Account, PidRecord, running, start
from devstack.safe_files import write_private

pytestmark = pytest.mark.unit
SLEEP = os.path.realpath("/bin/sleep")
CAT = os.path.realpath("/bin/cat")
ME = Account(None, os.getuid(), os.getgid())


@pytest.fixture
def sleeper() -> Iterator[PidRecord]:
    """A live process of ours, once it runs `sleep`, as /proc describes it (what `up` would record)."""
    process = subprocess.Popen([SLEEP, "60"], start_new_session=True)
    try:
        record = PidRecord.of(process.pid)
        assert record is not None and record.exe == SLEEP, record
        yield record
    finally:
        process.kill()
        process.wait()


def pid_file(tmp_path: Path, text: str) -> Path:
    return write_private(tmp_path / "service.pid", text)


def test_the_record_up_wrote_names_its_process(tmp_path: Path, sleeper: PidRecord) -> None:
    assert PidRecord.parse(str(sleeper)) == sleeper
    assert running(pid_file(tmp_path, str(sleeper)), SLEEP, ME) == sleeper.pid


def test_a_recycled_pid_is_not_ours(tmp_path: Path, sleeper: PidRecord) -> None:
    """The pid now belongs to a process started at another time than the recorded one."""
    earlier = replace(sleeper, start_time=str(int(sleeper.start_time) - 1))
    assert running(pid_file(tmp_path, str(earlier)), SLEEP, ME) is None


def test_a_process_of_another_owner_is_not_ours(tmp_path: Path, sleeper: PidRecord) -> None:
    """The record says what the service's account would have started, and so does the account; the process at
    that pid (same start time, same executable) belongs to someone else."""
    service = Account("svc", ME.uid + 4242, ME.gid + 4242)
    claimed = replace(sleeper, uid=service.uid)
    assert running(pid_file(tmp_path, str(claimed)), SLEEP, service) is None


def test_a_process_running_another_executable_is_not_ours(tmp_path: Path, sleeper: PidRecord) -> None:
    """The record says the service's executable (cat), the owner and start time match: /proc says sleep."""
    claimed = replace(sleeper, exe=CAT)
    assert running(pid_file(tmp_path, str(claimed)), CAT, ME) is None


def test_a_record_that_is_not_what_the_service_runs_is_not_ours(tmp_path: Path, sleeper: PidRecord) -> None:
    """The record matches /proc exactly, but names neither the service's executable nor its account."""
    assert running(pid_file(tmp_path, str(sleeper)), CAT, ME) is None
    assert running(pid_file(tmp_path, str(sleeper)), SLEEP, Account("svc", ME.uid + 1, ME.gid)) is None


@pytest.mark.parametrize(
    "text",
    ["{pid}", "{pid} {start}", "{pid} {start} {exe}", "x{pid} {start} {uid} {exe}", "{pid} {start} u{uid} {exe}", ""],
)
def test_a_record_of_another_layout_is_never_trusted(tmp_path: Path, sleeper: PidRecord, text: str) -> None:
    planted = text.format(pid=sleeper.pid, start=sleeper.start_time, uid=sleeper.uid, exe=sleeper.exe)
    assert running(pid_file(tmp_path, planted), SLEEP, ME) is None


def test_a_pid_file_that_is_a_symlink_is_not_read(tmp_path: Path, sleeper: PidRecord) -> None:
    """Whoever could plant a link there would point it at a record of their choosing."""
    elsewhere = pid_file(tmp_path, str(sleeper))
    link = tmp_path / "linked.pid"
    link.symlink_to(elsewhere)
    assert running(link, SLEEP, ME) is None


def test_a_record_keeps_an_executable_path_with_spaces() -> None:
    assert PidRecord.parse("12 345 6 /srv/my repo/.tools/server") == PidRecord(
        12, "345", 6, "/srv/my repo/.tools/server"
    )


def test_the_start_time_is_the_processes_own(sleeper: PidRecord) -> None:
    """Clock ticks since boot (field 22 of /proc/<pid>/stat): boot time plus it is when the process started."""
    boot = next(
        int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime")
    )
    started = boot + int(sleeper.start_time) / os.sysconf("SC_CLK_TCK")
    assert abs(started - time.time()) < 5


def test_a_process_named_like_a_zombie_is_still_seen(tmp_path: Path) -> None:
    """/proc/<pid>/stat puts the process's name in parentheses, and a name may hold ") Z ": the fields are read
    after the last parenthesis, so such a name neither hides the process nor shifts its start time."""
    disguised = tmp_path / "x) Z 1 2"
    disguised.symlink_to(SLEEP)
    process = subprocess.Popen([str(disguised), "60"])
    try:
        record = PidRecord.of(process.pid)
        assert Path(f"/proc/{process.pid}/comm").read_text().startswith("x) Z")
        assert record is not None and record.exe == SLEEP and record.start_time.isdigit()
    finally:
        process.kill()
        process.wait()


def test_a_zombie_is_gone() -> None:
    process = subprocess.Popen(["true"])
    deadline = time.monotonic() + 5
    while Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
        assert time.monotonic() < deadline, "the child never exited"
        time.sleep(0.01)
    try:
        assert PidRecord.of(process.pid) is None
    finally:
        process.wait()


@contextlib.contextmanager
def started(tmp_path: Path, command: list[str], executable: str = "") -> Iterator[PidRecord]:
    record = start(command, ME, log=tmp_path / "service.log", pid_file=tmp_path / "service.pid", cwd=tmp_path,
                   executable=executable)  # fmt: skip
    try:
        yield record
    finally:
        for kill in (os.killpg, os.kill):  # the process too, should it not lead a group of its own
            with contextlib.suppress(ProcessLookupError):
                kill(record.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(record.pid, 0)


def test_start_records_what_it_started_privately(tmp_path: Path) -> None:
    with started(tmp_path, [SLEEP, "60"]) as record:
        assert record == PidRecord.of(record.pid) and record.exe == SLEEP and record.uid == ME.uid
        assert (tmp_path / "service.pid").read_text() == str(record)
        assert stat.S_IMODE((tmp_path / "service.pid").stat().st_mode) == 0o600
        assert stat.S_IMODE((tmp_path / "service.log").stat().st_mode) == 0o600
        assert running(tmp_path / "service.pid", SLEEP, ME) == record.pid
        assert os.getpgid(record.pid) == record.pid  # its own session and group: a stop reaches its children


def test_start_records_the_executable_at_the_end_of_an_exec_chain(tmp_path: Path) -> None:
    with started(tmp_path, ["/bin/sh", "-c", f"echo starting; exec {SLEEP} 60"], executable=SLEEP) as record:
        assert record.exe == SLEEP and running(tmp_path / "service.pid", SLEEP, ME) == record.pid
        deadline = time.monotonic() + 5
        while "starting" not in (tmp_path / "service.log").read_text():
            assert time.monotonic() < deadline, "the output never reached the log"
            time.sleep(0.01)


def test_start_refuses_a_process_that_exits_before_it_runs_the_service(tmp_path: Path) -> None:
    """The exec chain ends before the service's executable (a setpriv or `ip netns exec` that failed)."""
    with pytest.raises(RuntimeError, match=f"/bin/sh exited at once, or never became {SLEEP}; see {tmp_path}"):
        start(["/bin/sh", "-c", "exit 3"], ME, log=tmp_path / "service.log", pid_file=tmp_path / "service.pid",
              cwd=tmp_path, executable=SLEEP)  # fmt: skip
    assert not (tmp_path / "service.pid").exists()
