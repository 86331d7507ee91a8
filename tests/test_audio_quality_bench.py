"""`make bench-audio` (bench/audio_quality.py) fails when a target is missed: its exit code, not only its ✗, so a
bench run in CI or a script can gate on it. No lab, no run: the runs' tallies are given."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from bench import audio_quality as bench

pytestmark = pytest.mark.unit


def tally(lost: int, dropped: int, concealed: int = 0) -> bench.Tally:
    return bench.Tally(expected=1200, lost=lost, concealed=concealed, samples=1_152_000, seen=1230, dropped=dropped,
                       round_trips=[180.0], mos=[4.0], statuses=["pass"])  # fmt: skip


def results(loss_5_seen_by_receivers: int) -> dict[str, dict[str, bench.Tally]]:
    """A clean level and a 5 % level whose receivers counted `loss_5_seen_by_receivers` of the 61 nft dropped."""
    return {"loss=0%": {d: tally(0, 0) for d in bench.DIRECTIONS},
            "loss=5%": {d: tally(loss_5_seen_by_receivers, 61, 960) for d in bench.DIRECTIONS}}  # fmt: skip


@pytest.mark.parametrize(("lost", "code"), [(60, 0), (20, 1)])  # 20 of 1200 is 1.7 %, 3.3 points off the nft's 5 %
def test_the_bench_exits_1_when_a_target_is_missed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], lost: int, code: int
) -> None:
    def lab_up(*args: Any, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(args, 0, "", "")

    levels = results(lost)
    monkeypatch.setattr(subprocess, "run", lab_up)  # the lab "comes up" without root
    monkeypatch.setattr(bench, "measure", lambda spec, runs: levels[spec])
    monkeypatch.setattr(sys, "argv", ["bench", "--spec", "loss=0%", "--spec", "loss=5%"])
    assert bench.main() == code
    printed = capsys.readouterr().out
    assert ("✗" in printed) == bool(code) and "✓ clean upstream" in printed
