"""Held load against the real stack: a few rooms held together for a short hold, sampled through it; and the
worker, above its job limit, refusing the rest (the server finds no worker available, the report says so).
The curve itself and its figures are the benchmark's business (`make bench-capacity`, bench/capacity.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from devstack.stack_env import Stack
from tests.conftest import run_module

pytestmark = pytest.mark.integration

HOLD = 4.0  # two sampling rounds (hold.SAMPLE_INTERVAL is 2 s)


def held_run(*args: str) -> tuple[int, dict[str, Any], dict[str, Any]]:
    result = run_module("bootstrap", *args, "--hold", str(HOLD), "--json", timeout=120)
    report = json.loads(result.stdout)
    assert [s["name"] for s in report["stages"]] == ["services", "worker", "hold"], report["stages"]
    return result.returncode, report, report["hold"]


def test_held_rooms_are_sampled_through_the_hold(stack: Stack) -> None:
    code, report, hold = held_run("--load", "2")
    assert code == 0, (report["stages"][-1].get("cause"), hold["limits_crossed"], hold["errors"])
    assert (hold["joined"], hold["dispatched"], hold["held"], hold["refused"], hold["rooms_left"]) == (2, 2, 2, 0, 0)
    assert hold["limits_crossed"] == [] and hold["max_jobs"] > 2, "the echo worker's own limit, above 2 rooms"
    samples = hold["samples"]
    assert [s["at_s"] for s in samples] == pytest.approx([2.0, 4.0], abs=0.5)
    for sample in samples:
        assert sample["active_jobs"] == 2, "both rooms' jobs ran through the hold"
        assert sample["worker_load"] == pytest.approx(2 / hold["max_jobs"], abs=1e-3), "its share of max_jobs"
        assert sample["rpc_failed"] == 0 and sample["rpc_p95_s"] > 0, "every room pinged in every round"
        assert sample["audio_p95_s"] > 0 and sample["markers_lost"] == 0, "markers timed in every window"
        assert all(sample["cpu_percent"][side] > 0 for side in ("participants", "jobs", "server", "machine"))
    assert hold["audio"]["markers_timed"] >= 2 * HOLD / 0.06 * 0.9, "markers every 60 ms in each room"
    assert hold["rpc"]["calls"] == 2 * len(samples)
    jobs, usage = hold["per_job"], hold["usage"]
    assert 0 < jobs["pss_mb"]["p50"] <= jobs["rss_mb"]["p50"], "each job's proportional share within its RSS"
    assert jobs["cpu_percent"]["p50"] > 0
    assert usage["server"]["rss_mb"] > 0 and usage["participants"]["rss_mb"] > 0
    assert all(value is not None for value in hold["per_room"].values())


def test_above_its_limit_the_worker_refuses_and_the_report_names_it(stack: Stack) -> None:
    code, report, hold = held_run("--load", "3", "--max-jobs", "2")
    assert code == 1
    assert (hold["dispatched"], hold["held"], hold["refused"], hold["rooms_left"]) == (2, 2, 1, 0), hold["errors"]
    assert hold["limits_crossed"][0] == "dispatch refused in 1 rooms (no worker available)"
    assert any("dispatch refused: the server created no job (no worker available)" in e for e in hold["errors"])
    assert {s["worker_load"] for s in hold["samples"]} == {1.0}, "full: 2 jobs of 2"
    stage = report["stages"][-1]
    assert "its limit of 2 jobs" in stage["fix"] and "no worker available" in stage["fix"]
    assert hold["audio"]["markers_lost"] == 0, "the rooms it took kept working"
