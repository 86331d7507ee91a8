"""Benchmark the audio-quality figures against a known, injected loss (issue 28): for each impairment, RUNS runs
of `python -m bootstrap --paths udp --impair SPEC --json` in the paths lab, each direction's counts summed over
the runs (>= 1,000 RTP packets each way per level), beside the nft rules' own counts.

    python -m bench.audio_quality [--runs 2] [--spec loss=5% ...]          (make bench-audio; root)

Checks (printed ✓/✗, figures either way; exit 0 when every check held, 1 when one missed its target, the lab did
not come up or a run could not report):
  - clean path (`loss=0%`: the rules count, drop nothing): loss 0 %, MOS >= 4.2;
  - each level: the receivers' loss on the wire within 1.5 points of the nft counter's;
  - MOS strictly decreasing from 0 to 5 to 10 %;
  - a burst (N in a row of every 100) against random loss of the same average: its loss after repair (concealed)
    higher and its mos_after_repair lower (LiveKit's scorer, from the loss rate alone, cannot tell them apart).

It brings the paths lab up first (`python -m devstack paths-up`: reused when up) and leaves it up.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

from bootstrap.audio_quality import mos
from devstack.stack_env import REPO_ROOT

PY = str(REPO_ROOT / ".venv" / "bin" / "python")
SPECS = ["loss=0%", "loss=2%", "loss=5%", "loss=10%", "burst=5%"]
DIRECTIONS = ("upstream", "downstream")
TOLERANCE = 1.5  # points between the receivers' loss on the wire and the nft counter's
CLEAN_MOS = 4.2


@dataclass
class Tally:
    """One direction's counts summed over the runs of one impairment."""

    expected: int = 0
    lost: int = 0
    concealed: int = 0
    samples: int = 0
    seen: int = 0
    dropped: int = 0
    round_trips: list[float] = field(default_factory=list)
    mos: list[float] = field(default_factory=list)
    statuses: list[str] = field(default_factory=list)

    def add(self, side: dict[str, Any], nft: dict[str, int], round_trip_ms: float, status: str) -> None:
        self.expected += side["packets_expected"]
        self.lost += side["packets_lost"]
        self.concealed += side["concealed_samples"]
        self.samples += side["total_samples"]
        self.seen += nft.get("seen", 0)
        self.dropped += nft.get("dropped", 0)
        self.round_trips.append(round_trip_ms)
        self.mos.append(side["mos"])
        self.statuses.append(status)

    @property
    def loss_pct(self) -> float:
        return 100.0 * self.lost / self.expected if self.expected else 0.0

    @property
    def nft_pct(self) -> float:
        return 100.0 * self.dropped / self.seen if self.seen else 0.0

    @property
    def concealed_pct(self) -> float:
        return 100.0 * self.concealed / self.samples if self.samples else 0.0

    def scored(self, fec: bool = True) -> tuple[float, float]:
        """MOS over the summed loss (the scorer's weight with Opus FEC, as negotiated here) and after repair."""
        rtt = statistics.median(self.round_trips) if self.round_trips else 0.0
        return mos(self.loss_pct, rtt, 0.0, fec=fec), mos(self.concealed_pct, rtt, 0.0)


def run_once(spec: str) -> tuple[str, dict[str, Any]]:
    done = subprocess.run([PY, "-m", "bootstrap", "--paths", "udp", "--impair", spec, "--json"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=180)  # fmt: skip
    report = json.loads(done.stdout)
    return str(report["status"]), dict(report.get("paths", {}).get("udp", {}))


def measure(spec: str, runs: int) -> dict[str, Tally]:
    tallies = {d: Tally() for d in DIRECTIONS}
    for _ in range(runs):
        status, figures = run_once(spec)
        quality = figures.get("audio", {}).get("quality", {})
        if not all(d in quality for d in DIRECTIONS):
            raise SystemExit(f"{spec}: the run reported no quality figures ({status}): {json.dumps(figures)[:400]}")
        for direction in DIRECTIONS:
            nft = figures.get("impairment", {}).get(direction, {})
            tallies[direction].add(quality[direction], nft, quality["round_trip_ms"], status)
        print(f"  ran {spec}: {status}", file=sys.stderr, flush=True)
    return tallies


def table(results: dict[str, dict[str, Tally]]) -> list[str]:
    lines = [
        "| injected | direction | nft dropped / seen | receivers: lost / expected | Δ points | concealed "
        "(after repair) | MOS (scorer) | MOS after repair | verdicts |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for spec, tallies in results.items():
        for direction, t in tallies.items():
            score, repaired = t.scored()
            lines.append(
                f"| {spec} | {direction} | {t.dropped} / {t.seen} ({t.nft_pct:.2f} %) | {t.lost} / {t.expected} "
                f"({t.loss_pct:.2f} %) | {t.loss_pct - t.nft_pct:+.2f} | {t.concealed_pct:.2f} % | {score:.2f} | "
                f"{repaired:.2f} | {', '.join(t.statuses)} |"
            )
    return lines


def checks(results: dict[str, dict[str, Tally]]) -> list[tuple[bool, str]]:
    found: list[tuple[bool, str]] = []
    for direction in DIRECTIONS:
        if clean := results.get("loss=0%"):
            t = clean[direction]
            score = t.scored()[0]
            found.append((t.lost == 0 and score >= CLEAN_MOS,
                          f"clean {direction}: loss {t.loss_pct:.2f} % of {t.expected}, MOS {score:.2f}"))  # fmt: skip
        for spec, tallies in results.items():
            t = tallies[direction]
            found.append((abs(t.loss_pct - t.nft_pct) <= TOLERANCE and t.expected >= 1000,
                          f"{spec} {direction}: receivers {t.loss_pct:.2f} % of {t.expected}, nft {t.nft_pct:.2f} % "
                          f"of {t.seen}"))  # fmt: skip
        levels = [results[s][direction].scored()[0] for s in ("loss=0%", "loss=5%", "loss=10%") if s in results]
        if len(levels) == 3:
            found.append((levels[0] > levels[1] > levels[2],
                          f"MOS {direction} 0 → 5 → 10 %: {' > '.join(f'{m:.2f}' for m in levels)}"))  # fmt: skip
        if "burst=5%" in results and "loss=5%" in results:
            burst, random = results["burst=5%"][direction], results["loss=5%"][direction]
            found.append((burst.concealed_pct > random.concealed_pct and burst.scored()[1] < random.scored()[1],
                          f"burst vs random 5 % {direction}: concealed {burst.concealed_pct:.2f} vs "
                          f"{random.concealed_pct:.2f} %, MOS after repair {burst.scored()[1]:.2f} vs "
                          f"{random.scored()[1]:.2f}"))  # fmt: skip
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=2, help="runs per impairment (each ~600 packets each way)")
    parser.add_argument("--spec", action="append", help=f"default: {' '.join(SPECS)}")
    args = parser.parse_args()
    up = subprocess.run([PY, "-m", "devstack", "paths-up"], cwd=REPO_ROOT, capture_output=True, text=True)
    if up.returncode != 0:
        print(f"the paths lab did not come up:\n{up.stderr}", file=sys.stderr)
        return 1
    results = {spec: measure(spec, args.runs) for spec in args.spec or SPECS}
    print("\n".join(table(results)))
    print()
    return report(checks(results))


def report(found: list[tuple[bool, str]]) -> int:
    """Each check printed ✓/✗; the exit code: 1 when any missed its target (a bench in CI fails on it)."""
    for ok, line in found:
        print(f"{'✓' if ok else '✗'} {line}")
    return 0 if all(ok for ok, _ in found) else 1


if __name__ == "__main__":
    sys.exit(main())
