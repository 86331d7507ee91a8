"""Headless Chromium as the browser stage drives it, without the LiveKit stack: DevTools runs over a pipe
(no TCP port for any local process to drive it), never as root, and close() leaves nothing behind."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import pytest

from bootstrap.browser.chromium import Chromium, find_chromium

pytestmark = pytest.mark.integration

PAGE = "data:text/html,<title>pipe</title><p>hello</p>"


def group_pids(pgid: int) -> list[int]:
    """Live (not zombie) processes in a process group, from /proc/<pid>/stat: "pid (comm) state ppid pgrp"."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _ppid, pgrp = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, IndexError):
            continue  # exited while we looked
        if int(pgrp) == pgid and state != "Z":
            pids.append(int(stat.parent.name))
    return pids


def uids(pid: int) -> list[int]:
    """Real, effective, saved and filesystem uids."""
    line = next(li for li in Path(f"/proc/{pid}/status").read_text().splitlines() if li.startswith("Uid:"))
    return [int(uid) for uid in line.split()[1:]]


def chromium_listeners(pids: list[int]) -> list[str]:
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    return [
        line
        for line in out.splitlines()
        if "chrom" in line or any(f"pid={pid}," in line for pid in pids)  # chromium, chrome
    ]


async def gone(pgid: int) -> list[int]:
    """SIGKILL is delivered asynchronously: give the group a moment to die."""
    for _ in range(50):
        if not (pids := group_pids(pgid)):
            break
        await asyncio.sleep(0.1)
    return pids


async def title_within(browser: Chromium, seconds: float) -> str:
    """The page's title once it has one, or "" after `seconds`."""
    deadline = asyncio.get_running_loop().time() + seconds
    while not (title := await browser.evaluate("document.title")) and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
    return str(title or "")


async def test_chromium_runs_unprivileged_over_a_pipe_and_close_cleans_up() -> None:
    if find_chromium() is None:
        pytest.fail("chromium missing: run `make browser-deps` (`make test` does)")
    browser = Chromium()
    try:
        await browser.start()
        await browser.open(PAGE)
        assert await browser.evaluate("1+1") == 2
        # open() returns once the tab exists, not once the page has loaded: until then the title is about:blank's.
        assert await title_within(browser, 10.0) == "pipe"
        assert browser.pid is not None
        pids = group_pids(browser.pid)
        assert browser.pid in pids and len(pids) > 1  # the browser and its renderer/GPU/utility children
        expected = {os.getuid()} if os.geteuid() != 0 else None
        for pid in pids:
            if expected is None:
                assert 0 not in uids(pid), f"chromium process {pid} runs as root"
            else:
                assert set(uids(pid)) == expected, "as an ordinary user, chromium runs as that user"
        assert chromium_listeners(pids) == [], "chromium listens on TCP (DevTools must use the pipe)"
        assert browser.profile.is_dir()
    finally:
        await browser.close()
    assert await gone(browser.pid) == []
    assert not browser.profile.exists()
