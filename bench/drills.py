"""Benchmark the cluster drills: each drill run N times (default 5) against the cluster, p50 and max of every
figure it measures (no pass/fail: figures; a drill that FAILS is reported as such).

    python -m bench.drills [--repeat 5] [--drill node-loss|redis-outage]        (make bench-drills; root)

It brings the cluster up first (`python -m devstack cluster-up`, which also removes a stale one) and takes it
down at the end. CI runs each drill once (tests/test_drills_integration.py); repeated runs belong here.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from typing import Any

from bootstrap.modes.cluster.drills import DRILLS
from devstack.stack_env import REPO_ROOT

PY = str(REPO_ROOT / ".venv" / "bin" / "python")


def flatten(figures: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"killed": {"participant": {"reconnecting_s": 11.3}}} → {"killed.participant.reconnecting_s": 11.3}."""
    flat: dict[str, Any] = {}
    for key, value in figures.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat |= flatten(value, f"{name}.")
        elif not isinstance(value, list):
            flat[name] = value
    return flat


def run_drill(name: str) -> tuple[str, dict[str, Any]]:
    done = subprocess.run([PY, "-m", "bootstrap", "--cluster", "--drill", name, "--json"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    report = json.loads(done.stdout)
    figures = {k: v for k, v in report.get("drill", {}).items() if k != "name"}
    return report["status"], flatten(figures)


def show(name: str, runs: list[dict[str, Any]]) -> None:
    for key in sorted({k for run in runs for k in run}):
        values = [run.get(key) for run in runs]
        numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
        flags = [v for v in values if isinstance(v, bool)]
        if flags:
            print(f"  {key:<55} yes {sum(flags)}/{len(values)}")
        elif numbers:
            missing = f"  (not measured in {len(values) - len(numbers)})" if len(numbers) < len(values) else ""
            print(f"  {key:<55} p50 {statistics.median(numbers):7.2f}  max {max(numbers):7.2f}{missing}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--drill", choices=DRILLS, action="append", help="default: every drill")
    args = parser.parse_args()
    up = subprocess.run([PY, "-m", "devstack", "cluster-up"], cwd=REPO_ROOT, capture_output=True, text=True)
    if up.returncode != 0:
        print(f"cluster-up failed: {up.stderr.strip()}", file=sys.stderr)
        return 1
    try:
        for name in args.drill or DRILLS:
            results = [run_drill(name) for _ in range(args.repeat)]
            verdicts = [status for status, _ in results]
            print(f"drill {name}: {verdicts.count('pass')}/{len(verdicts)} PASS")
            show(name, [figures for _, figures in results])
    finally:
        subprocess.run([PY, "-m", "devstack", "cluster-down"], cwd=REPO_ROOT, capture_output=True, text=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
