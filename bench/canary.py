"""Benchmark the canary (python -m bootstrap --canary) against the running stack: its memory over 100 runs, its CPU
at a 60 s interval, and how fast /metrics answers while a run is in progress.

    python -m bench.canary [--runs 100] [--cpu-runs 10]      (make bench-canary; holds the integration lock)

- Memory over --runs at a 2 s interval (back to back: a run takes ~1.7 s), measured after each run from run 10
  (warm) to the last. Three figures, each with a growth target of <= 10 MB:
  - the canary's own process (VmRSS), and its thread count (a native thread kept per run would show there);
  - its long-lived children, the same processes from run 10 to the last (the metrics endpoint, the zygote each run
    is forked from, livekit-agents' forkserver and resource tracker): their VmRSS summed;
  - the whole tree, the runs' own processes included (a run's, its agent's job, the next warm job process): its
    PSS summed (shared pages counted once), the median over runs 10-19 against the median over the last 10.
- CPU at a 60 s interval: a canary at --interval 60 for --cpu-runs runs after its first (10 minutes at the default),
  the CPU seconds of its whole tree (children reaped included) over that wall time. --cpu-runs 0 estimates it
  instead (a minute): CPU per run over the 2 s runs, plus the idle rate of a canary at a 1-hour interval measured for
  20 s after its first run: (per_run + idle_rate * (60 - run_seconds)) / 60. Target: <= 5 % of one core.
- /metrics: GETs spread over the back-to-back runs (a run is in progress for all but the ~0.3 s between runs),
  p50/p95/max. Target: <= 10 ms.
"""

from __future__ import annotations

import argparse
import contextlib
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
TARGET_MB = 10.0
TARGET_CPU = 0.05
TARGET_MS = 10.0
SCRAPE_EVERY = 15.0  # Prometheus' usual scrape interval, during the CPU measurement


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def children(pid: int) -> list[int]:
    pids: list[int] = []
    with contextlib.suppress(OSError):  # gone meanwhile
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                pids += [int(p) for p in (task / "children").read_text().split()]
    return pids


def descendants(pid: int) -> list[int]:
    found, stack = [], children(pid)
    while stack:
        child = stack.pop()
        found.append(child)
        stack += children(child)
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU of the process and its children, running or reaped (cutime, cstime)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    own = sum(int(f) for f in fields[11:15]) / TICKS
    return own + sum(cpu_seconds(child) for child in children(pid))


def status_kb(pid: int, key: str, file: str = "status") -> float:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/{file}").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return float(line.split()[1])
    return 0.0


def rss_mb(pid: int) -> float:
    return status_kb(pid, "VmRSS") / 1024


def pss_mb(pid: int) -> float:
    return status_kb(pid, "Pss", "smaps_rollup") / 1024


def threads(pid: int) -> int:
    with contextlib.suppress(OSError):
        return len(os.listdir(f"/proc/{pid}/task"))
    return 0


KNOWN = {
    b"bootstrap.metrics_endpoint": "the metrics endpoint",
    b"bootstrap.modes.canary.zygote": "the zygote (forks each run)",
    b"multiprocessing.forkserver": "livekit-agents' forkserver (job processes)",
    b"multiprocessing.resource_tracker": "multiprocessing's resource tracker",
}


def name(pid: int) -> str:
    with contextlib.suppress(OSError):
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        other = cmdline[:40].decode(errors="replace")
        return next((label for words, label in KNOWN.items() if words in cmdline), other)
    return "?"


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
        with contextlib.suppress(OSError):
            if runs_done(port) >= count:
                return
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


class Sample:
    """The tree's memory after one run."""

    def __init__(self, pid: int) -> None:
        self.canary_rss, self.canary_threads = rss_mb(pid), threads(pid)
        self.children = {child: (name(child), rss_mb(child)) for child in descendants(pid)}
        self.tree_pss = pss_mb(pid) + sum(pss_mb(child) for child in self.children)


def memory_runs(runs: int) -> tuple[dict[int, Sample], list[float], float, float]:
    """Samples after each run from the 10th, /metrics times during runs, CPU per run and seconds per run."""
    port = free_port()
    canary = start(2.0, port)
    samples: dict[int, Sample] = {}
    scrapes: list[float] = []
    try:
        wait_runs(canary, port, 1, 90)
        samples[1] = Sample(canary.pid)
        wait_runs(canary, port, 10, 120)
        samples[10] = Sample(canary.pid)
        cpu_warm, wall_warm = cpu_seconds(canary.pid), time.monotonic()
        done = 10
        while done < runs:
            scrapes.append(scrape_ms(port))
            time.sleep(0.02)
            if (now := runs_done(port)) > done:
                done = now
                samples[done] = Sample(canary.pid)
            if canary.poll() is not None:
                sys.exit("the canary exited")
        cpu_end, wall_end = cpu_seconds(canary.pid), time.monotonic()
    finally:
        stop(canary)
    measured = done - 10
    return samples, scrapes, (cpu_end - cpu_warm) / measured, (wall_end - wall_warm) / measured


def cpu_at_60(runs: int) -> tuple[float, float]:
    """A canary at a 60 s interval: its tree's CPU share over `runs` intervals from the end of its first run (so
    runs 2 to runs + 1 fall inside), scraped every SCRAPE_EVERY as Prometheus would (polling it faster would bill
    the endpoint's answers to the canary), and the number of runs that finished inside."""
    port = free_port()
    canary = start(60.0, port)
    try:
        wait_runs(canary, port, 1, 90)
        cpu0, t0 = cpu_seconds(canary.pid), time.monotonic()
        while (left := t0 + 60 * runs - time.monotonic()) > 0:
            time.sleep(min(SCRAPE_EVERY, left))
            if canary.poll() is not None:
                sys.exit("the canary exited")
            if left > SCRAPE_EVERY:
                scrape_ms(port)
        cpu1, t1 = cpu_seconds(canary.pid), time.monotonic()
        finished = runs_done(port) - 1
    finally:
        stop(canary)
    return (cpu1 - cpu0) / (t1 - t0), finished


def idle_rate() -> float:
    """A canary at a 1-hour interval, 20 s after its first run: its tree's CPU share between runs."""
    port = free_port()
    idle = start(3600.0, port)
    try:
        wait_runs(idle, port, 1, 90)
        time.sleep(2)  # the run's job process gone, the next warm one started
        cpu0, t0 = cpu_seconds(idle.pid), time.monotonic()
        time.sleep(20)
        return (cpu_seconds(idle.pid) - cpu0) / (time.monotonic() - t0)
    finally:
        stop(idle)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.canary", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--runs", type=int, default=100, help="runs at a 2 s interval (default 100)")
    parser.add_argument("--cpu-runs", type=int, default=10,
                        help="runs at a 60 s interval for the CPU figure (default 10; 0: estimate it)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.runs and args.runs < 20:
        parser.error("--runs: at least 20 (10 warm-up runs, then the figures), or 0 for the CPU figure alone")
    if not args.runs and not args.cpu_runs:
        parser.error("--runs 0 needs --cpu-runs: the estimate is made from the runs at a 2 s interval")
    ok = True
    if args.runs:
        samples, scrapes, per_run_cpu, run_seconds = memory_runs(args.runs)
        ok = report_memory(samples) and report_scrapes(scrapes)
        print(f"  CPU per run {per_run_cpu:.3f} s (its whole tree; a run every {run_seconds:.2f} s)")
    if args.cpu_runs:
        cpu_share, finished = cpu_at_60(args.cpu_runs)
        print(f"  at a 60 s interval: {cpu_share * 100:.2f} % of one core over {args.cpu_runs} intervals of 60 s "
              f"({finished} runs finished inside), measured  (target <= {TARGET_CPU * 100:.0f} %)")  # fmt: skip
    else:
        idle = idle_rate()
        cpu_share = (per_run_cpu + idle * max(0.0, 60 - run_seconds)) / 60
        print(f"  at a 60 s interval: {cpu_share * 100:.2f} % of one core, estimated (idle {idle * 100:.2f} % of a "
              f"core between runs)  (target <= {TARGET_CPU * 100:.0f} %)")  # fmt: skip
    return 0 if ok and cpu_share <= TARGET_CPU else 1


def report_memory(samples: dict[int, Sample]) -> bool:
    last = max(samples)
    first, warm, end = samples[1], samples[10], samples[last]
    print(f"canary benchmark against the running stack ({last - 10} runs at a 2 s interval after 10 warm-up runs)")
    growth = end.canary_rss - warm.canary_rss
    print(f"  canary process: RSS after run 1 {first.canary_rss:.1f} MB, run 10 {warm.canary_rss:.1f} MB, run {last} "
          f"{end.canary_rss:.1f} MB: growth {growth:+.1f} MB from run 10; threads {warm.canary_threads} -> "
          f"{end.canary_threads}  (target <= {TARGET_MB:.0f} MB)")  # fmt: skip
    kept = sorted(set(warm.children) & set(end.children))
    kept_growth = sum(end.children[p][1] - warm.children[p][1] for p in kept)
    print(f"  its long-lived children (the same processes at run 10 and run {last}): growth {kept_growth:+.1f} MB  "
          f"(target <= {TARGET_MB:.0f} MB)")  # fmt: skip
    for pid in kept:
        print(f"    {warm.children[pid][0]:<44} {warm.children[pid][1]:6.1f} -> {end.children[pid][1]:6.1f} MB RSS")
    early = [samples[n].tree_pss for n in sorted(samples) if 10 <= n < 20]
    late = [samples[n].tree_pss for n in sorted(samples)[-10:]]
    tree_growth = statistics.median(late) - statistics.median(early)
    print(f"  the whole tree (the runs' own processes included), PSS: median {statistics.median(early):.1f} MB over "
          f"runs 10-19, {statistics.median(late):.1f} MB over the last 10: growth {tree_growth:+.1f} MB  "
          f"(target <= {TARGET_MB:.0f} MB)")  # fmt: skip
    return max(growth, kept_growth, tree_growth) <= TARGET_MB


def report_scrapes(scrapes: list[float]) -> bool:
    p95 = statistics.quantiles(scrapes, n=20)[18]
    print(f"  /metrics during runs: p50 {statistics.median(scrapes):.1f} ms, p95 {p95:.1f} ms, max "
          f"{max(scrapes):.1f} ms over {len(scrapes)} scrapes  (target <= {TARGET_MS:.0f} ms)")  # fmt: skip
    return p95 <= TARGET_MS


if __name__ == "__main__":
    sys.exit(main())
