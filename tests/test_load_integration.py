"""Load mode against the real stack: every room joined, dispatched and its webhooks verified; none left.
(Throughput and latency figures are the benchmark's business: `make bench` (bench/bench.py), never asserted here.)"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

import pytest

from devstack.stack_env import Stack
from tests.conftest import run_module, server_rooms
from tests.process_watch import watching

pytestmark = pytest.mark.integration


def forkservers() -> set[int]:
    """livekit-agents' forkserver processes on this machine (load mode's job processes come from one)."""
    found = set()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            if b"multiprocessing.forkserver" in cmdline.read_bytes() and b"livekit.agents" in cmdline.read_bytes():
                found.add(int(cmdline.parent.name))
    return found


def test_load_mode_reports_complete_figures(stack: Stack) -> None:
    before = forkservers()
    with watching() as watch:
        result = run_module("bootstrap", "--load", "12", "--concurrency", "4", "--json", "--timeout", "120",
                            timeout=180)  # fmt: skip
    report = json.loads(result.stdout)
    load_stage = report["stages"][-1]
    assert result.returncode == 0, (load_stage["cause"], report["load"]["errors"], report["load"]["media"])
    assert [s["name"] for s in report["stages"]] == ["services", "worker", "load"]
    load = report["load"]
    assert (load["rooms"], load["joined"], load["dispatched"], load["rooms_left"]) == (12, 12, 12, 0)
    assert load["webhooks"]["verified"] == load["webhooks"]["expected"] == 36
    assert load["webhooks"]["received"] >= load["webhooks"]["verified"]
    latency = load["webhooks"]["latency_s"]["room_started, from the join's start"]
    assert 0 < latency["p50"] <= latency["max"]  # delivery is measured, on this process's clock
    assert {"duplicates", "rooms_with_duplicates", "rooms_out_of_order"} <= set(load["webhooks"])
    for figure in ("join_latency", "dispatch_latency"):
        assert 0 < load[figure]["p50"] <= load[figure]["p95"] <= load[figure]["max"]
    # The room that started the server's agent-name refresh was waited on, then deleted too.
    assert load["warmup_seconds"] > 0
    assert not [name for name in asyncio.run(server_rooms()) if name.endswith("-warmup")]
    assert forkservers() <= before, "the run left livekit-agents' forkserver (and its job processes) behind"
    # Its agents ran in job processes (the rooms above passed), none of them root, even when this test is.
    assert watch.roles("job") and watch.roles("forkserver"), watch.seen
    assert not watch.root(), f"agent job processes ran as root: {sorted(watch.root(), key=str)}"


def test_load_and_browser_are_separate_modes() -> None:
    result = run_module("bootstrap", "--load", "2", "--browser")
    assert result.returncode == 2
    assert "--load, --browser, --cluster, --paths, --url and --canary are separate modes" in result.stderr
