"""Root never writes through what the participant's account planted in its own HOME (issue 24, as for the browser's
profile in test_chromium_profile_faults).

bootstrap.remote_participant.SdkClient hands a scratch HOME to `livekit-client` (devstack.service_python), then
starts the participant as that account. From the hand-over on, whoever acts as that account owns HOME and may
replace anything in it, or HOME itself (its entry in the temporary directory is theirs): these tests plant
symlinks as that account (never as root) at the seam SdkClient offers right after the hand-over (`_handed_over`,
so no race is involved), then check that a root-owned victim is untouched, through the participant's start and
its close. Root only: as anyone else nothing is handed over."""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bootstrap.remote_participant import CA_COPY, SdkClient
from devstack import local_ca
from devstack.service_python import CLIENT_ACCOUNT, Unprivileged
from tests import planted
from tests.planted import Victim

pytestmark = [
    pytest.mark.faults,
    pytest.mark.skipif(os.geteuid() != 0, reason="only root hands the participant's HOME to its account"),
]


@pytest.fixture
def victim() -> Iterator[Victim]:
    with planted.victim(file_mode=0o600) as made:
        yield made


@pytest.fixture
def ca_cert(tmp_path: Path) -> Path:
    """The paths mode's local CA (devstack.local_ca), which its wss path has the participant trust."""
    return local_ca.issue(tmp_path / "tls", ["lk.paths.test"]).ca_cert


def as_client(script: str, *args: str) -> None:
    """`sh -c script` as the participant's account, which must succeed (a plant that fails tests nothing)."""
    account = pwd.getpwnam(CLIENT_ACCOUNT)
    done = subprocess.run(["sh", "-c", script, "plant", *args], user=account.pw_uid, group=account.pw_gid,
                          extra_groups=[], cwd="/", capture_output=True, text=True, timeout=10)  # fmt: skip
    assert done.returncode == 0, f"the plant failed: {done.stderr}"


def link_the_copy(home: Path, victim: Victim) -> None:
    """HOME's CA copy, whatever it was, replaced by a symlink to the victim file."""
    as_client('rm -f -- "$1" && ln -s -- "$2" "$1"', str(home / CA_COPY), str(victim.file))
    assert os.readlink(home / CA_COPY) == str(victim.file)


def swap_the_home(home: Path, victim: Victim) -> None:
    """HOME itself moved aside (its entry is the account's) and a symlink to the victim directory in its place."""
    as_client('mv -- "$1" "$1.moved" && ln -s -- "$2" "$1"', str(home), str(victim.directory))
    assert os.readlink(home) == str(victim.directory)


PLANTS: dict[str, Callable[[Path, Victim], None]] = {"ca-copy": link_the_copy, "home": swap_the_home}


@pytest.mark.parametrize("plant", PLANTS)
async def test_root_writes_nothing_through_what_the_account_planted(plant: str, victim: Victim, ca_cert: Path) -> None:
    before = victim.snapshot()
    homes: list[Path] = []

    class Planted(SdkClient):
        @classmethod
        def _handed_over(cls, sandbox: Unprivileged) -> None:
            assert sandbox.home.stat().st_uid == pwd.getpwnam(CLIENT_ACCOUNT).pw_uid, "not handed over yet"
            homes.append(sandbox.home)
            PLANTS[plant](sandbox.home, victim)

    try:
        client = await Planted.start(lambda argv: [*argv[:-3], "sleep", "30"], "ws://127.0.0.1:1", trust_ca=ca_cert)
        assert homes, "the seam was never reached"
        assert victim.snapshot() == before, "root wrote through the plant when starting the participant"
        await client.close()
        assert victim.snapshot() == before, "root wrote through the plant when closing the participant"
    finally:
        for home in homes:  # what the plant (or a failed start) left: the symlink, HOME moved aside, HOME
            if home.is_symlink():
                home.unlink()
            shutil.rmtree(f"{home}.moved", ignore_errors=True)
            shutil.rmtree(home, ignore_errors=True)


async def test_the_ca_copy_is_in_place_before_the_hand_over(ca_cert: Path) -> None:
    """What the plants replace: root's copy of the CA, readable by the participant, made while HOME was root's."""
    ca_text = await asyncio.to_thread(ca_cert.read_bytes)
    seen: list[tuple[int, int, bytes]] = []
    homes: list[Path] = []

    class Looked(SdkClient):
        @classmethod
        def _handed_over(cls, sandbox: Unprivileged) -> None:
            homes.append(copy := sandbox.home / CA_COPY)
            info = copy.lstat()
            seen.append((info.st_uid, stat.S_IMODE(info.st_mode), copy.read_bytes()))

    try:
        client = await Looked.start(lambda argv: [*argv[:-3], "sleep", "30"], "ws://127.0.0.1:1", trust_ca=ca_cert)
        await client.close()
    finally:
        for copy in homes:  # a start that failed at the seam leaves its HOME
            shutil.rmtree(copy.parent, ignore_errors=True)
    assert seen == [(0, 0o644, ca_text)]
