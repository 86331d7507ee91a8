"""Audio quality against the real stack and the paths lab (issue 28): each figure answers its cause. A clean
path counts no loss and scores MOS >= 4.2; `--paths udp --impair loss=5%` counts ~5 % lost each way on the wire,
within 1.5 points of the nft rule's own counter, over >= 500 packets, and ends in WARN (exit 0); the default
run still passes with the figures shown. One short run each."""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

import pytest

from devstack import impairment, paths_lab
from devstack.stack_env import Stack, load_stack
from tests.conftest import bootstrap_report

pytestmark = pytest.mark.integration
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the paths lab's hosts are network namespaces: root")
LAB = paths_lab.hosts(load_stack())
DIRECTIONS = ("upstream", "downstream")


def path_stage(report: dict[str, Any], name: str = "path udp") -> dict[str, Any]:
    return next(s for s in report["stages"] if s["name"] == name)


def impair_tables() -> list[str]:
    """Hosts of the lab that still hold the impairment's table."""
    held = []
    for host in (LAB.client, LAB.node):
        tables = subprocess.run(host.exec_argv(["nft", "list", "tables"]), capture_output=True, text=True).stdout
        held += [host.namespace] if impairment.TABLE in tables.split() else []
    return held


def test_the_default_run_passes_with_the_quality_figures(stack: Stack) -> None:
    code, report = bootstrap_report()
    assert (code, report["status"]) == (0, "pass"), json.dumps(report["stages"], indent=1)
    quality = report["media"]["audio"]["quality"]
    for direction in DIRECTIONS:
        side = quality[direction]
        assert side["packets_expected"] > 0 and side["loss_pct"] == 0.0 and side["mos"] >= 4.2, side
    media = next(s for s in report["stages"] if s["name"] == "media")
    assert "up loss 0.0 %" in media["detail"] and "down loss 0.0 %" in media["detail"]


@needs_root
def test_a_clean_path_counts_no_loss_even_after_a_killed_impaired_run(paths_lab_up: Stack) -> None:
    """A SIGKILLed `--impair` run leaves its loss rules on the lab (its cleanup never ran), as planted here through
    the lab's API: the next run removes them before its first path, says so, and counts no loss."""
    paths_lab.impair(paths_lab_up, impairment.Impairment("loss", 30))
    try:
        assert sorted(impair_tables()) == sorted([LAB.client.namespace, LAB.node.namespace])
        code, report = bootstrap_report("--paths", "udp", timeout=60)
    finally:  # the lab as the next test expects it, whatever the run did
        paths_lab.clear_impairment(paths_lab_up)
    quality = report["paths"]["udp"]["audio"]["quality"]
    for direction in DIRECTIONS:
        side = quality[direction]
        assert side["packets_expected"] > 0 and side["packets_lost"] == 0 and side["concealed_pct"] == 0.0, side
        assert side["mos"] >= 4.2
    assert (code, path_stage(report)["status"]) == (0, "pass"), json.dumps(report["stages"], indent=1)
    assert "impairment" not in report["paths"]["udp"]
    assert "an earlier run's injected loss removed" in path_stage(report, "client-host")["detail"]


@needs_root
@pytest.mark.usefixtures("paths_lab_up")
def test_injected_loss_is_counted_on_the_wire_and_warns() -> None:
    """5 % random loss each way: the receivers count what the nft rules dropped, the run ends in WARN (exit 0)
    and the lab holds no impairment afterwards."""
    code, report = bootstrap_report("--paths", "udp", "--impair", "loss=5%", timeout=90)
    stage = path_stage(report)
    assert (code, report["status"], stage["status"]) == (0, "warn", "warn"), json.dumps(report["stages"], indent=1)
    assert "audio quality" in stage["cause"] and stage["kind"] == "media"
    figures = report["paths"]["udp"]
    injected, quality = figures["impairment"], figures["audio"]["quality"]
    assert injected["spec"] == "loss=5%"
    for direction in DIRECTIONS:
        side, nft = quality[direction], injected[direction]
        assert side["packets_expected"] >= 500, side
        nft_pct = 100.0 * nft["dropped"] / nft["seen"]
        assert abs(side["loss_pct"] - nft_pct) <= 1.5, (direction, side, nft)
        # 5 % random over ~600 packets lands anywhere from 2 to 8 %; the scorer's MOS falls with it from the clean
        # path's 4.49 (4.33 at 1.6 %, 4.05 at 3.3 %, 3.4 at 6 %: make bench-audio), so below 4.35 at 2 % or more.
        assert 2.0 <= side["loss_pct"] <= 8.0 and side["mos"] < 4.35, side
    assert "nft dropped" in stage["detail"]
    assert impair_tables() == []
