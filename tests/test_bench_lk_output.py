"""The benchmark's reading of `lk perf agent-load-test` and its rule for a ratio. No lk can be built on this
project's machines, so the samples in tests/lk_samples/ are reconstructed from lk's own printStats
(livekit-cli pkg/loadtester/agentloadtester.go: a lipgloss table, Go durations), not captured from a run."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.lk_output import LkLoadRun, parse_agent_load_test, parse_go_duration, ratio_or_reason

pytestmark = pytest.mark.unit
SAMPLES = Path(__file__).parent / "lk_samples"

COMPLETE = (SAMPLES / "lk-agent-load-test-3-rooms.txt").read_text()

# What a slower machine produced when lk dispatched before our worker had registered: 1 room of 50 opened.
INCOMPLETE = (SAMPLES / "lk-agent-load-test-1-of-50.txt").read_text()


def test_every_row_is_read_and_go_durations_in_any_unit() -> None:
    run = parse_agent_load_test(COMPLETE)
    assert (run.rooms_opened, run.agents_joined) == (3, 3)
    assert run.join_delays == pytest.approx([2.991234567, 0.8125, 62.5])


@pytest.mark.parametrize(("text", "seconds"), [("950µs", 0.00095), ("1h0m1s", 3601.0), ("12ms", 0.012)])
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_go_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["-", "", "2.9", "abc"])
def test_not_a_duration(text: str) -> None:
    assert parse_go_duration(text) is None


def test_a_complete_run_gets_its_ratio() -> None:
    line = ratio_or_reason(3, parse_agent_load_test(COMPLETE), 0, lk_seconds=30.0, ours_seconds=12.0)
    assert line == "ratio  lk / ours (whole process) = 2.50x"


def test_an_incomplete_run_gets_no_ratio_and_says_why() -> None:
    line = ratio_or_reason(50, parse_agent_load_test(INCOMPLETE), 0, lk_seconds=24.0, ours_seconds=2.9)
    assert line.startswith("no ratio: lk's run did not complete (rooms opened 1/50, agents joined 0/50)")
    assert "x" not in line.split("(")[0]


def test_a_failed_lk_gets_no_ratio() -> None:
    assert ratio_or_reason(3, LkLoadRun(3, 3), 1, 30.0, 12.0) == "no ratio: lk exited with 1"
