"""Benchmark pytest-livekit-harness against the running stack (figures, no pass/fail):

    python -m bench.harness [--runs 5] [--tests 5]

Each run is a fresh `python -m pytest` (its own process, no proof inherited) over a generated suite of --tests
tests, each asking for the pitch agent (examples/pitch-agent) in a room of its own with a participant joined:
- start -> first body: from launching pytest to the first test's body, after `await agent_worker(...)` returned
  (stack proven by `python -m bootstrap`, worker started and registered, agent dispatched and in the room);
- per further test: from one test's body ending to the next one's body starting after its agent_worker call
  (teardown of the room and participant, the next room, participant, dispatch; pytest's own overhead included).
Medians over the runs (and per-test p50/max over all runs). Targets: <= 5 s and <= 0.5 s.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from devstack.stack_env import REPO_ROOT

SUITE = """
import json, os, time
import pytest
from pitch_agent.protocol import ENTRYPOINT

@pytest.mark.parametrize("n", range({tests}))
async def test_timed(n, agent_worker, participant):
    await agent_worker(ENTRYPOINT, agent_name="bench")
    started = time.time()
    with open(os.environ["BENCH_OUT"], "a") as out:
        out.write(json.dumps({{"n": n, "body": started, "end": time.time()}}) + "\\n")
"""
INI = """[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = session
asyncio_default_test_loop_scope = session
"""


def one_run(tests: int) -> tuple[float, list[float]]:
    with tempfile.TemporaryDirectory(prefix="bench-harness-") as tmp:
        Path(tmp, "pytest.ini").write_text(INI)
        Path(tmp, "test_bench.py").write_text(SUITE.format(tests=tests))
        out = Path(tmp, "out.jsonl")
        env = {k: v for k, v in os.environ.items() if not k.startswith("LIVEKIT_")}
        env["BENCH_OUT"] = str(out)
        launched = time.time()
        result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", tmp], cwd=tmp,
                                env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
        if result.returncode != 0:
            raise SystemExit(f"the suite failed:\n{result.stdout[-3000:]}")
        rows = sorted((json.loads(line) for line in out.read_text().splitlines()), key=lambda r: r["n"])
    proven = [line for line in result.stdout.splitlines() if line.startswith("livekit-harness:")]
    print(f"  {proven[0] if proven else ''}", file=sys.stderr)
    first = rows[0]["body"] - launched
    further = [b["body"] - a["end"] for a, b in itertools.pairwise(rows)]
    return first, further


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tests", type=int, default=5)
    args = parser.parse_args()
    firsts, furthers, medians = [], [], []
    for run in range(args.runs):
        first, further = one_run(args.tests)
        firsts.append(first)
        furthers += further
        medians.append(statistics.median(further))
        print(f"run {run + 1}: start -> first body {first:.2f}s; further tests' fixtures "
              f"{', '.join(f'{f:.2f}' for f in further)} s", file=sys.stderr)  # fmt: skip
    figures = {
        "runs": args.runs,
        "tests_per_run": args.tests,
        "start_to_first_body_s": {
            "median": round(statistics.median(firsts), 2),
            "max": round(max(firsts), 2),
            "all": [round(f, 2) for f in firsts],
        },
        "further_test_fixtures_s": {
            "median_of_run_medians": round(statistics.median(medians), 3),
            "p50": round(statistics.median(furthers), 3),
            "max": round(max(furthers), 3),
        },
        "targets": {"start_to_first_body_s": 5.0, "further_test_fixtures_s": 0.5},
    }
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    os.chdir(REPO_ROOT)
    main()
