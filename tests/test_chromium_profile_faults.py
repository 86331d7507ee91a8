"""Root never writes, chowns or reads through what the browser account planted in its own profile (issue 24).

bootstrap.browser.chromium hands the profile directory to `livekit-browser`, then starts Chromium as that account.
From the hand-over on, whoever acts as that account owns the profile: these tests plant symlinks there as that
account (never as root), at the seam Chromium offers right after the hand-over (`_handed_over`, so no race is
involved) and after start, then check that a root-owned victim is untouched. Root only: as anyone else nothing
is handed over."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bootstrap.browser import page_client
from bootstrap.browser.chromium import BROWSER_USER, LOG, Chromium, ChromiumError, find_chromium
from devstack import local_ca, netns
from tests import planted
from tests.planted import Victim

pytestmark = [
    pytest.mark.faults,
    pytest.mark.skipif(os.geteuid() != 0, reason="only root hands the profile to the browser account"),
    pytest.mark.skipif(find_chromium() is None, reason="chromium missing: run `make browser-deps` (make test does)"),
]
NSS_STORE = ".pki"  # Chromium on Linux reads $HOME/.pki/nssdb; HOME is the profile
PAGE = "data:text/html,<title>profile</title>"


@pytest.fixture
def victim() -> Iterator[Victim]:
    with planted.victim(file_mode=0o644) as made:
        yield made


@pytest.fixture
def namespace() -> Iterator[str]:
    """A bare network namespace, as the paths mode's client host is for Chromium (removed by its own name)."""
    name = f"{netns.PREFIX}chromium-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=10)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, timeout=10)
        yield name
    finally:
        netns.remove_namespace(name)


@pytest.fixture
def ca_cert(tmp_path: Path) -> Path:
    """The paths mode's local CA (devstack.local_ca), which its turn-tls path has Chromium trust."""
    return local_ca.issue(tmp_path / "tls", ["turn.lkh.test"]).ca_cert


def as_browser(*argv: str) -> subprocess.CompletedProcess[str]:
    account = pwd.getpwnam(BROWSER_USER)
    return subprocess.run(argv, user=account.pw_uid, group=account.pw_gid, extra_groups=[], cwd="/",
                          capture_output=True, text=True, timeout=10)  # fmt: skip


def plant(profile: Path, name: str, target: Path) -> None:
    """As the browser account: `profile/name`, whatever it was, replaced by a symlink to `target`."""
    link = profile / name
    done = as_browser("sh", "-c", 'rm -rf -- "$1" && ln -s -- "$2" "$1"', "plant", str(link), str(target))
    assert done.returncode == 0, f"the plant failed: {done.stderr}"
    assert link.is_symlink() and os.readlink(link) == str(target)


class Planted(Chromium):
    """Chromium whose profile gets `plants` (name in the profile → symlink target) right after the hand-over."""

    def __init__(self, plants: dict[str, Path], **options: Any) -> None:
        super().__init__(**options)
        self.plants, self.planted = plants, list[str]()

    def _handed_over(self) -> None:
        for name, target in self.plants.items():
            plant(self.profile, name, target)
            self.planted.append(name)


async def started(browser: Chromium) -> None:
    """Chromium started and showing a page: the planted profile did not stop it."""
    await browser.start()
    await browser.open(PAGE)
    for _ in range(50):  # createTarget answers before the page has loaded
        if await browser.evaluate("document.title") == "profile":
            return
        await asyncio.sleep(0.1)
    pytest.fail("chromium did not show the page within 5 s")


async def test_browser_run_never_truncates_through_a_planted_log(victim: Victim) -> None:
    before = victim.snapshot()
    browser = Planted({LOG: victim.file})
    try:
        await started(browser)
    finally:
        await browser.close()
    assert browser.planted == [LOG]
    assert victim.snapshot() == before, "root wrote through the symlink the browser account planted"


async def test_turn_tls_browser_never_chowns_or_writes_through_planted_links(
    victim: Victim, namespace: str, ca_cert: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The browser as the turn-tls path builds it (page_client: in the client host's namespace, trusting the
    local CA in its profile's NSS store), with the store's directory and the log both planted."""
    plants = {NSS_STORE: victim.directory, LOG: victim.file}
    monkeypatch.setattr(page_client, "Chromium", lambda **options: Planted(plants, **options))
    before = victim.snapshot()
    client = page_client.PageClient(namespace, "127.0.0.1", "ws://127.0.0.1:7880", ca_cert, relay=True)
    browser = client.browser
    assert isinstance(browser, Planted)
    try:
        await started(browser)
    finally:
        await browser.close()
    assert browser.planted == [NSS_STORE, LOG]
    assert victim.snapshot() == before, "root chowned or wrote through the links the browser account planted"


async def test_a_crash_report_never_reads_a_file_through_a_planted_log() -> None:
    """Chromium dies; its error carries the log's last lines. The browser account pointed the log at a file
    only root may read: that file's text must not reach the report."""
    secret = Path(tempfile.mkdtemp(prefix="victim-")) / "root-only"
    token = f"lkh-root-only-{secrets.token_hex(8)}"
    secret.write_text(f"{token}\n")
    secret.chmod(0o600)
    browser = Chromium()
    try:
        await started(browser)
        plant(browser.profile, LOG, secret)
        pending = asyncio.create_task(browser.evaluate("new Promise(() => {})", wait=True))
        await asyncio.sleep(0.1)  # the call is written and waits for its reply
        assert browser.pid is not None
        os.killpg(browser.pid, signal.SIGKILL)
        with pytest.raises(ChromiumError, match="chromium exited") as failure:
            await asyncio.wait_for(pending, 10)
    finally:
        await browser.close()
        with contextlib.suppress(OSError):
            shutil.rmtree(secret.parent)
    assert token not in str(failure.value), "root read a file of its own into the report through a planted link"
    assert "no log" not in str(failure.value), "the report lost Chromium's own last lines"


async def test_the_trusted_ca_is_in_the_profiles_own_store_owned_by_the_browser(ca_cert: Path) -> None:
    """The fix keeps what the turn-tls path needs: the CA is in the profile's NSS store, which the browser
    account owns and can read."""
    browser = Chromium(trust_ca=ca_cert)
    try:
        await started(browser)
        store = browser.profile / NSS_STORE / "nssdb"
        listed = as_browser("certutil", "-L", "-d", f"sql:{store}")
        assert listed.returncode == 0, listed.stderr
        assert "harness-ca" in listed.stdout and "C,," in listed.stdout
        browser_uid = pwd.getpwnam(BROWSER_USER).pw_uid
        owners = {p.lstat().st_uid for p in [browser.profile, *browser.profile.joinpath(NSS_STORE).rglob("*")]}
        assert owners == {browser_uid}
    finally:
        await browser.close()
