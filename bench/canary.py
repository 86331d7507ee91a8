"""Benchmark the canary (python -m bootstrap --canary) against the running stack: its CPU at a 60 s interval, its
resident memory over 100 runs, and how fast /metrics answers while a run is in progress.

    python -m bench.canary [--runs 100]        (make bench-canary; holds the integration lock)

- CPU at a 60 s interval, scaled rather than waited for (10 runs at 60 s would take 10 minutes): the canary's CPU
  seconds per run, measured over the runs at a 2 s interval (back to back: a run takes ~1.9 s), plus its idle CPU
  rate between runs (a second canary at a 1-hour interval, measured for 10 s after its first run), give
  (per_run + idle_rate * (60 - run_seconds)) / 60. Target: <= 5 % of one core.
- Resident memory (VmRSS, /proc) after run 1, run 10 and the last run of --runs at a 2 s interval; the growth from
  run 10 (warm) to the last is the figure. Target: <= 10 MB over 100 runs.
- /metrics: 200 GETs spread over the back-to-back runs (so a run is in progress for all but the ~0.1 s between
  runs), p50/p95/max. Target: <= 10 ms.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from devstack.stack_env import REPO_ROOT

PY = str(REPO_ROOT / ".venv" / "bin" / "python")
TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU of the process and its children, running (the metrics endpoint's) or reaped."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    own = sum(int(f) for f in fields[11:15]) / TICKS
    return own + sum(cpu_seconds(child) for child in children(pid))


def children(pid: int) -> list[int]:
    pids: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        pids += [int(p) for p in (task / "children").read_text().split()]
    return pids


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def runs_done(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
        text = response.read().decode()
    return int(
        sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("lkh_canary_runs_total"))
    )


def start(interval: float, port: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIVEKIT_")}
    command = [PY, "-m", "bootstrap", "--canary", "--interval", str(interval), "--jitter", "0",
               "--metrics-port", str(port)]  # fmt: skip
    return subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_runs(process: subprocess.Popen[bytes], port: int, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            sys.exit(f"the canary exited ({process.returncode}); run it by hand to see why")
        try:
            if runs_done(port) >= count:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            sys.exit(f"fewer than {count} runs within {timeout:.0f}s")
        time.sleep(0.05)


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


def scrape_ms(port: int) -> float:
    started = time.perf_counter()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
        response.read()
    return (time.perf_counter() - started) * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.canary", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--runs", type=int, default=100, help="runs at a 2 s interval (default 100)")
    args = parser.parse_args(argv)

    port = free_port()
    canary = start(2.0, port)
    scrapes: list[float] = []
    try:
        wait_runs(canary, port, 1, 60)
        rss_first = rss_mb(canary.pid)
        wait_runs(canary, port, 10, 120)
        rss_warm, cpu_warm, wall_warm = rss_mb(canary.pid), cpu_seconds(canary.pid), time.monotonic()
        every = max(1, (args.runs - 10) * 2 // 200)  # ~200 scrapes over the rest
        done = 10
        while done < args.runs:
            scrapes.append(scrape_ms(port))
            time.sleep(every * 0.02)
            done = runs_done(port)
            if canary.poll() is not None:
                sys.exit("the canary exited")
        cpu_end, wall_end, rss_end = cpu_seconds(canary.pid), time.monotonic(), rss_mb(canary.pid)
        measured_runs = done - 10
    finally:
        stop(canary)
    per_run_cpu = (cpu_end - cpu_warm) / measured_runs
    run_seconds = (wall_end - wall_warm) / measured_runs

    idle_port = free_port()
    idle = start(3600.0, idle_port)
    try:
        wait_runs(idle, idle_port, 1, 60)
        time.sleep(1)
        cpu0, t0 = cpu_seconds(idle.pid), time.monotonic()
        time.sleep(10)
        idle_rate = (cpu_seconds(idle.pid) - cpu0) / (time.monotonic() - t0)
    finally:
        stop(idle)

    cpu_share = (per_run_cpu + idle_rate * max(0.0, 60 - run_seconds)) / 60
    p = statistics.quantiles(scrapes, n=20)
    print(f"canary benchmark against the running stack ({measured_runs} runs measured after 10 warm-up runs)")
    print(
        f"  CPU per run {per_run_cpu:.3f} s (a run every {run_seconds:.2f} s), idle {idle_rate * 100:.2f} % of a core"
    )
    print(f"  at a 60 s interval: {cpu_share * 100:.2f} % of one core  (target <= 5 %)")
    growth, total = rss_end - rss_warm, rss_end - rss_first
    print(f"  RSS after run 1 {rss_first:.1f} MB, run 10 {rss_warm:.1f} MB, run {done} {rss_end:.1f} MB: growth "
          f"{growth:+.1f} MB from run 10 ({total:+.1f} MB from run 1)  (target <= 10 MB)")  # fmt: skip
    print(f"  /metrics during runs: p50 {statistics.median(scrapes):.1f} ms, p95 {p[18]:.1f} ms, max "
          f"{max(scrapes):.1f} ms over {len(scrapes)} scrapes  (target <= 10 ms)")  # fmt: skip
    ok = cpu_share <= 0.05 and growth <= 10 and p[18] <= 10
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
