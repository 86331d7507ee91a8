"""The capacity curve: how many rooms one echo worker holds at once on this machine, what each costs, and where
it breaks (figures, no pass/fail).

    python -m bench.capacity [--hold 20] [--concurrency 4] [--steps 5,10,20,...]        (make bench-capacity)

Each step is `python -m bootstrap --load N --hold S --max-jobs 0 --json` (no job limit: the curve is measured
past it), N stepping 5, 10, 20, 30, … until a limit is crossed (audio round trip p95 > 300 ms, a marker lost, a
join failed, a dispatch refused, an RPC failed), then halving the gap to the last N that held. Before each step
the machine's busy share is read for a few seconds with nothing of ours running: other work on the machine is
printed beside the figures it skews. Then the table, the knee (the largest N that held) with its cost per room,
and which resource bound it. Last, one run above the knee with the echo worker's own limit
(agent_runtime.agent.MAX_JOBS): it should hold its limit's rooms and refuse the rest (the server finds no
worker available) instead of degrading them all; and `lk perf agent-load-test` against the standalone worker
where lk exists (no ratio when lk's run did not complete, bench/lk_output.py).

Run it alone: the Makefile target holds /tmp/lkh-integration.lock, so no integration test runs meanwhile.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from agent_runtime.agent import MAX_JOBS
from bench.bench import PY, STACK, find_lk, lk_args, registered_worker, timed
from bench.knee import COARSE, Step, bound_by, knee, next_n, step_from_report
from bench.lk_output import parse_agent_load_test
from bootstrap.modes.load.proc_usage import busy_percent, machine_ticks
from bootstrap.stats import summary

OTHERS_WINDOW = 3.0  # seconds of the machine's busy share read before each step
CORES = os.cpu_count() or 1
QUIET = 25.0  # % of one core: the machine counts as quiet for a step below this (nothing of ours running)
# Rooms opened one at a time, as they reach a worker: four at once on 2 cores degrade the rooms already held while
# the new ones start (N=4, markers sent during the opening: p95 448 and 277 ms in two runs with 4 at once, 212 ms
# one at a time).
CONCURRENCY = 1
SETTLE = 60.0  # the longest a step waits for a quiet machine (--settle)


def others_busy(seconds: float = OTHERS_WINDOW) -> float:
    """The machine's busy share over `seconds`, in % of one core, while nothing of ours runs."""
    before = machine_ticks()
    time.sleep(seconds)
    return busy_percent(before, machine_ticks()) * CORES


def quiet_machine(settle: float) -> float:
    """Other work's busy share before a step; waiting up to `settle` seconds for it to drop below QUIET (other
    sessions' jobs on a shared machine skew a step's figures: it is printed beside them either way)."""
    deadline = time.monotonic() + settle
    while (others := others_busy()) >= QUIET and time.monotonic() < deadline:
        pass
    return others


def run_step(n: int, hold: float, concurrency: int, max_jobs: int | None = 0, settle: float = SETTLE) -> Step:
    others = quiet_machine(settle)
    limit = [] if max_jobs is None else ["--max-jobs", str(max_jobs)]
    command = [PY, "-m", "bootstrap", "--load", str(n), "--hold", str(hold), "--concurrency", str(concurrency),
               *limit, "--json"]  # fmt: skip
    seconds, done = timed(command)
    try:
        report = json.loads(done.stdout)
    except json.JSONDecodeError:
        report = {"status": f"no report (exit {done.returncode}): {done.stderr[-300:]!r}"}
    step = step_from_report(n, report, others)
    print(f"  N={n:3d}  {seconds:5.1f}s  {'held' if step.ok else 'NOT held: ' + '; '.join(step.crossed)}",
          flush=True)  # fmt: skip
    return step


def measure(n: int, args: argparse.Namespace, max_jobs: int | None = 0) -> tuple[Step, list[Step]]:
    """Step `n`; a step that did not hold while other work took QUIET or more of a core during its hold is run
    once more (after settling): the one kept, and the ones set aside (shown, not counted)."""
    step = run_step(n, args.hold, args.concurrency, max_jobs, args.settle)
    if step.ok or step.others_during < QUIET:
        return step, []
    print(f"         other work took {step.others_during:.0f} % of a core during that hold: once more")
    return run_step(n, args.hold, args.concurrency, max_jobs, args.settle), [step]


def table(steps: list[Step], set_aside: list[Step]) -> None:
    print(f"{'N':>4} {'held':>4} {'audio p50/p95 ms':>16} {'open/hold p95':>13} {'lost':>4} {'RPC p95':>7} "
          f"{'disp p95':>8} {'fail':>4} {'ref':>3} {'load':>5} {'CPU% jobs':>9} {'partic':>6} {'server':>6} "
          f"{'machine':>7} {'others':>6} {'else':>4} {'job CPU%':>8} {'job PSS':>7} {'job RSS':>7}")  # fmt: skip
    aside = {id(s) for s in set_aside}
    for s in sorted(steps + set_aside, key=lambda s: (s.n, id(s) not in aside)):
        cpu = {k: f"{v:.0f}" if v is not None else "-" for k, v in s.cpu.items()}
        load = "-" if s.worker_load_max is None else f"{s.worker_load_max:.2f}"
        print(f"{s.n:>4} {s.held:>4} {s.audio_p50_ms:>7.0f}/{s.audio_p95_ms:<8.0f} "
              f"{s.opening_p95_ms:>6.0f}/{s.hold_p95_ms:<6.0f} {s.markers_lost:>4} "
              f"{s.rpc_p95_ms:>5.0f}ms {s.dispatch_p95_s:>7.2f}s {s.join_failed:>4} {s.refused:>3} {load:>5} "
              f"{cpu.get('jobs', '-'):>9} {cpu.get('participants', '-'):>6} {cpu.get('server', '-'):>6} "
              f"{cpu.get('machine', '-'):>7} {s.others_before:>6.0f} {s.others_during:>4.0f} {s.job_cpu_p50:>8.1f} "
              f"{s.job_pss_mb:>5.0f}MB {s.job_rss_mb:>5.0f}MB{'' if s.ok else '  x'}"
              f"{'  (set aside: other work during its hold)' if id(s) in aside else ''}")  # fmt: skip
    print(f"(CPU in % of one core, {CORES} cores here; 'others': the machine's busy share just before the step, "
          "nothing of ours running; 'else': what the machine spent on anything but the step's processes during its "
          "hold; x: a limit crossed)")  # fmt: skip


def report_knee(steps: list[Step]) -> Step | None:
    best = knee(steps)
    bad = [s for s in steps if not s.ok]
    first_bad = min(bad, key=lambda s: s.n) if bad else None
    if best is None:
        print("knee: none: even the first step did not hold")
    else:
        cpu = {k: v or 0.0 for k, v in best.cpu.items()}
        per_room = {side: cpu[side] / best.n for side in ("jobs", "participants", "server")}
        print(f"knee: {best.n} rooms held at once (audio p95 {best.audio_p95_ms:.0f} ms, {best.markers_lost} markers "
              f"lost, RPC p95 {best.rpc_p95_ms:.0f} ms, dispatch p95 {best.dispatch_p95_s:.2f} s)")  # fmt: skip
        print(f"cost per held room: CPU {per_room['jobs']:.1f} % of a core in its job process, "
              f"{per_room['participants']:.1f} % on the participants' side, {per_room['server']:.1f} % in "
              f"livekit-server ({sum(per_room.values()):.1f} % in all); job memory PSS {best.job_pss_mb:.0f} MB (RSS "
              f"{best.job_rss_mb:.0f} MB)")  # fmt: skip
    if first_bad is not None:
        print(f"first N that did not hold: {first_bad.n} ({'; '.join(first_bad.crossed)})")
        print(f"bound by: {bound_by(first_bad, CORES)}")
    return best


def above_knee(best: Step | None, args: argparse.Namespace) -> int:
    """One run above the knee with the worker limited to it: its rooms held, the rest refused."""
    limit = best.n if best else MAX_JOBS
    n = limit + max(2, limit // 2)
    print(f"== above the knee: {n} rooms, the worker limited to the knee (--max-jobs {limit}; the echo worker's own "
          f"limit, agent_runtime.agent.MAX_JOBS, is {MAX_JOBS})")  # fmt: skip
    step = run_step(n, args.hold, args.concurrency, limit, args.settle)
    print(f"   held {step.held}, refused {step.refused} (the server: no worker available), joins failed "
          f"{step.join_failed}; in the rooms held: audio p50/p95 {step.audio_p50_ms:.0f}/{step.audio_p95_ms:.0f} ms, "
          f"{step.markers_lost} markers lost, RPC p95 {step.rpc_p95_ms:.0f} ms; worker load max "
          f"{step.worker_load_max}; machine {step.cpu.get('machine') or 0:.0f} %, "
          f"else {step.others_during:.0f} %")  # fmt: skip
    return n


def against_lk(rooms: int, limit: int) -> None:
    lk = find_lk()
    print(f"== lk perf agent-load-test, {rooms} rooms, against the standalone worker (AGENT_MAX_JOBS={limit} "
          "python -m agent_runtime)")  # fmt: skip
    if lk is None:
        print("lk     unavailable: no lk binary (make lk / PATH / $LK); no ratio")
        return
    duration = int(rooms * 3.2 + 10)  # lk opens its rooms about 3 s apart (bench/bench.py)
    with registered_worker(max_jobs=limit) as registered:  # the standalone worker's job limit: the knee
        if not registered:
            print("lk     skipped: our worker did not register; no ratio")
            return
        lk_s, result = timed([*lk_args(lk), "perf", "agent-load-test", "--rooms", str(rooms), "--agent-name",
                              STACK.agent_name, "--duration", f"{duration}s"], timeout=duration + 120)  # fmt: skip
    run = parse_agent_load_test(result.stdout)
    print(f"lk     {lk_s:.1f}s, exit {result.returncode}, rooms opened {run.rooms_opened}/{rooms}, agents joined "
          f"{run.agents_joined} (the worker takes {limit} at once), agent-join latency "
          f"{summary(run.join_delays) if run.join_delays else '-'}")  # fmt: skip
    if result.returncode != 0 or run.rooms_opened < rooms:
        print(f"no comparison: lk's run did not complete (exit {result.returncode}, rooms opened "
              f"{run.rooms_opened}/{rooms})")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hold", type=float, default=20.0, help="seconds each step holds its rooms (default 20)")
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY,
                        help=f"rooms opened at once (default {CONCURRENCY}: one by one, as at a worker)")  # fmt: skip
    parser.add_argument("--steps", default=",".join(map(str, COARSE)), help="the coarse steps of N")
    parser.add_argument("--resolution", type=int, default=1, help="refine the knee to this many rooms")
    parser.add_argument("--no-above", action="store_true", help="skip the run above the knee and lk's")
    parser.add_argument("--settle", type=float, default=SETTLE, metavar="SECONDS",
                        help=f"before each step, wait up to this long for other work to drop below {QUIET:.0f} %% "
                        "of a core")  # fmt: skip
    args = parser.parse_args()
    os.environ.update(LIVEKIT_API_KEY=STACK.api_key, LIVEKIT_API_SECRET=STACK.api_secret)  # for lk, see lk_args
    coarse = tuple(int(n) for n in args.steps.split(","))
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    print(f"== capacity curve (started {started}): livekit-server {STACK.livekit_version}, {CORES} cores, hold "
          f"{args.hold:g} s, concurrency {args.concurrency}, no job limit", flush=True)  # fmt: skip
    steps: list[Step] = []
    set_aside: list[Step] = []
    while (n := next_n(steps, coarse, args.resolution)) is not None:
        step, aside = measure(n, args)
        steps.append(step)
        set_aside += aside
    table(steps, set_aside)
    best = report_knee(steps)
    if not args.no_above:
        rooms = above_knee(best, args)
        against_lk(rooms, best.n if best else MAX_JOBS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
