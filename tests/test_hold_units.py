"""The held load's pieces that need no server: reading /proc (a fake tree), the capacity limits a run crossed,
the echo worker's load function, and the capacity curve's knee, next step and binding resource."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from agent_runtime.agent import LOAD_THRESHOLD, WorkerConfig, create_worker, job_share
from bench.knee import Step, bound_by, knee, next_n, step_from_report
from bootstrap.modes.load import proc_usage
from bootstrap.modes.load.hold_figures import HoldFigures, JobUsage, SideUsage
from tests.conftest import run_module

pytestmark = pytest.mark.unit

# A /proc/PID/stat line whose command name holds spaces and a ')': fields are counted after the last ')'.
STAT = "4242 (python (job) x) S 4200 4242 4200 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 9 0 123 0 0\n"
STATUS = "Name:\tpython\nVmPeak:\t  200000 kB\nVmRSS:\t  102400 kB\nThreads:\t9\n"
ROLLUP = "00400000-7fff [rollup]\nRss:  102400 kB\nPss:   32768 kB\nPss_Anon: 20000 kB\n"
# /proc/net/tcp: 127.0.0.1:7880 listening (0A, inode 5151), 127.0.0.1:7880 established, :6380 listening.
TCP = """  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1EC8 00000000:0000 0A 00000000:00000000 00:00000000 00000000  0  0 5151 1
   1: 0100007F:1EC8 0100007F:D431 01 00000000:00000000 00:00000000 00000000  0  0 6262 1
   2: 0100007F:18EC 00000000:0000 0A 00000000:00000000 00:00000000 00000000  0  0 7373 1
"""


def fake_proc(tmp_path: Path) -> Path:
    process = tmp_path / "4242"
    (process / "fd").mkdir(parents=True)
    (process / "stat").write_text(STAT)
    (process / "status").write_text(STATUS)
    (process / "smaps_rollup").write_text(ROLLUP)
    (process / "fd" / "3").symlink_to("socket:[5151]")
    other = tmp_path / "77"
    (other / "fd").mkdir(parents=True)
    (other / "fd" / "0").symlink_to("/dev/null")
    (tmp_path / "net").mkdir()
    (tmp_path / "net" / "tcp").write_text(TCP)
    (tmp_path / "stat").write_text("cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 50 0 25 400 25 0 0 0 0 0\n")
    return tmp_path


def test_a_process_cpu_and_memory_come_from_its_stat_status_and_smaps_rollup(tmp_path: Path) -> None:
    root = fake_proc(tmp_path)
    sample = proc_usage.sample(4242, root)
    assert sample is not None
    assert sample.cpu_seconds == pytest.approx(300 / proc_usage.CLOCK_TICKS)  # utime 250 + stime 50
    assert (sample.rss_bytes, sample.pss_bytes) == (102400 * 1024, 32768 * 1024)
    assert proc_usage.parent_pid(STAT) == 4200
    assert proc_usage.sample(9999, root) is None, "a process that is gone has no sample"


def test_cpu_percent_is_of_one_core_between_two_samples() -> None:
    before = proc_usage.ProcSample(1, 10.0, 0, None)
    after = proc_usage.ProcSample(1, 13.0, 0, None)
    assert proc_usage.cpu_percent(before, after, 2.0) == pytest.approx(150.0)  # 1.5 cores
    assert proc_usage.cpu_percent(None, after, 2.0) is None
    assert proc_usage.cpu_percent(before, after, 0.0) is None


def test_a_threads_cpu_comes_from_its_task_stat(tmp_path: Path) -> None:
    root = fake_proc(tmp_path)
    (root / "4242" / "task" / "4242").mkdir(parents=True)
    (root / "4242" / "task" / "4242" / "stat").write_text(STAT)
    assert proc_usage.thread_cpu_seconds(4242, 4242, root) == pytest.approx(300 / proc_usage.CLOCK_TICKS)
    assert proc_usage.thread_cpu_seconds(4242, 1, root) is None


def test_the_machine_busy_share_leaves_out_idle_and_iowait(tmp_path: Path) -> None:
    root = fake_proc(tmp_path)
    assert proc_usage.machine_ticks(root) == (150, 1000)
    assert proc_usage.busy_percent((150, 1000), (250, 1200)) == pytest.approx(50.0)
    assert proc_usage.busy_percent((150, 1000), (150, 1000)) == 0.0


def test_the_listener_of_a_port_is_found_by_its_socket_inode(tmp_path: Path) -> None:
    root = fake_proc(tmp_path)
    assert proc_usage.listening_inodes(TCP, 7880) == {5151}, "the established connection on 7880 is not a listener"
    assert proc_usage.listener_pid(7880, root) == 4242
    assert proc_usage.listener_pid(6380, root) is None, "a listener whose process is not visible: none"
    assert proc_usage.listener_pid(9, root) is None


def held(**figures: Any) -> HoldFigures:
    base: dict[str, Any] = {"rooms": 4, "concurrency": 2, "hold_seconds": 10.0, "max_jobs": 0, "joined": 4,
                            "dispatched": 4, "held": 4, "audio_round_trip": [0.2] * 20}  # fmt: skip
    return HoldFigures(**{**base, **figures})


def test_a_hold_crosses_no_limit_when_every_room_held_within_300_ms() -> None:
    assert held().limits_crossed == []


@pytest.mark.parametrize(
    ("figures", "named"),
    [
        ({"join_failed": 1, "joined": 3, "dispatched": 3, "held": 3}, "1 joins failed"),
        ({"refused": 2, "dispatched": 2, "held": 2}, "dispatch refused in 2 rooms (no worker available)"),
        ({"stalled": 1, "dispatched": 3, "held": 3}, "no agent within the dispatch wait in 1 rooms"),
        ({"held": 3}, "no echo in 1 rooms"),
        ({"markers_lost": 2, "rooms_losing_markers": 1}, "2 audio markers lost in 1 rooms"),
        ({"audio_round_trip": [0.2] * 18 + [0.31] * 2}, "audio round trip p95 310 ms > 300 ms"),
        ({"rpc_failed": 1}, "1 RPCs failed"),
    ],
)
def test_each_capacity_limit_is_named_with_its_figure(figures: dict[str, Any], named: str) -> None:
    assert held(**figures).limits_crossed == [named]


def test_cost_per_room_divides_each_side_by_the_rooms_held() -> None:
    figures = held(usage={"jobs": SideUsage(60.0), "participants": SideUsage(40.0), "server": SideUsage(8.0)},
                   jobs=[JobUsage("r", 1, 15.0, 110.0, 30.0), JobUsage("r2", 2, 15.0, 120.0, 34.0)])  # fmt: skip
    assert figures.per_room() == {"cpu_percent_job": 15.0, "cpu_percent_participants": 10.0,
                                  "cpu_percent_server": 2.0, "job_rss_mb": 110.0, "job_pss_mb": 30.0}  # fmt: skip


def effective_load(load: float, running: int, reserved: int, idle: int) -> float:
    """livekit-agents 1.8.9's AgentServer._get_effective_load: the load plus each job said yes to but not yet
    started, counted as the running jobs' average, or as load_threshold / num_idle_processes when none runs."""
    estimate = load / running if running else LOAD_THRESHOLD / max(idle, 1)
    return load + reserved * estimate


def test_the_echo_workers_load_is_its_share_of_max_jobs_and_full_at_the_limit() -> None:
    """livekit-agents takes a job while its effective load < load_threshold: with our load, while fewer than
    max_jobs are running or reserved, for every limit (float rounding included)."""
    for max_jobs in range(1, 101):
        load = job_share(max_jobs)
        for running in range(1, max_jobs + 1):
            share = load(SimpleNamespace(active_jobs=[object()] * running))  # type: ignore[arg-type]
            for reserved in range(max_jobs - running + 2):
                taken = effective_load(share, running, reserved, idle=1) < LOAD_THRESHOLD
                assert taken == (running + reserved < max_jobs), (max_jobs, running, reserved)
    assert job_share(0)(SimpleNamespace(active_jobs=[object()] * 500)) == 0.0  # type: ignore[arg-type]


@pytest.mark.parametrize("idle_runners", [0, 1, 4, 8])
def test_a_burst_with_no_job_running_never_passes_max_jobs(idle_runners: int) -> None:
    """create_worker keeps no more runners warm than max_jobs: with none running, a burst is taken up to the
    warm runners' number, never past max_jobs."""
    for max_jobs in (1, 2, 3, 5, 20):
        options = WorkerConfig("ws://x", "k", "s", idle_runners=idle_runners, max_jobs=max_jobs)
        idle = create_worker(options)._num_idle_processes
        assert isinstance(idle, int)
        taken = next(r for r in range(100) if effective_load(0.0, 0, r, idle) >= LOAD_THRESHOLD)
        assert 1 <= taken <= max_jobs, (max_jobs, idle_runners, idle)


def step(n: int, ok: bool = True, **figures: Any) -> Step:
    return Step(n, held=n if ok else n - 1, crossed=[] if ok else ["1 audio markers lost in 1 rooms"],
                status="pass" if ok else "fail", **figures)  # fmt: skip


def test_the_knee_is_the_largest_n_held_below_the_first_that_did_not() -> None:
    assert knee([step(5), step(10), step(20, ok=False), step(15)]).n == 15  # type: ignore[union-attr]
    assert knee([step(5), step(10, ok=False), step(12)]).n == 5, "a held N above a failed one is luck, not the knee"  # type: ignore[union-attr]
    assert knee([step(5, ok=False)]) is None
    assert knee([step(5), step(10)]).n == 10  # type: ignore[union-attr]


def test_next_n_steps_coarsely_then_halves_the_gap() -> None:
    coarse = (5, 10, 20, 30)
    assert next_n([], coarse) == 5
    assert next_n([step(5)], coarse) == 10
    assert next_n([step(5), step(10, ok=False)], coarse) == 7
    assert next_n([step(5), step(10, ok=False), step(7)], coarse) == 8
    assert next_n([step(5), step(10, ok=False), step(7), step(8, ok=False)], coarse) is None
    assert next_n([step(5), step(10, ok=False), step(7)], coarse, resolution=3) is None
    assert next_n([step(5, ok=False)], coarse) == 2
    assert next_n([step(n) for n in coarse], coarse) is None, "every coarse step held: done"


def test_the_binding_resource_is_named_from_each_sides_cpu() -> None:
    cpu = {"jobs": 90.0, "participants": 70.0, "server": 15.0, "machine": 190.0}
    bound = bound_by(step(8, ok=False, cpu=cpu), cores=2)
    assert bound.startswith("CPU: the machine's 2 cores 190 % busy of 200 %")
    assert "most: the agent's job processes" in bound and "anything else 15 %" in bound
    busy_loop = {"jobs": 40.0, "participants": 100.0, "server": 5.0, "machine": 150.0, "loop": 95.0}
    assert bound_by(step(8, ok=False, cpu=busy_loop), 2).startswith("the participants' event loop: its one Python")
    refused = bound_by(step(8, ok=False, refused=3, cpu={"machine": 50.0}), cores=2)
    assert refused.startswith("the worker's job limit: 3 dispatches refused")


def test_a_step_is_read_from_a_held_runs_report() -> None:
    hold = {
        "held": 6, "limits_crossed": [], "join_failed": 0, "refused": 0, "worker_load_max": 0.3,
        "audio": {"round_trip_s": {"p50": 0.19, "p95": 0.25}, "markers_lost": 0},
        "rpc": {"round_trip_s": {"p95": 0.03}}, "dispatch_latency": {"p95": 0.4},
        "usage": {"jobs": {"cpu_percent": 90.0}, "participants": {"cpu_percent": 80.0},
                  "server": {"cpu_percent": 10.0}, "machine": {"cpu_percent": 190.0}},
        "per_job": {"cpu_percent": {"p50": 15.0}, "pss_mb": {"p50": 32.0}, "rss_mb": {"p50": 114.0}},
    }  # fmt: skip
    read = step_from_report(6, {"status": "pass", "hold": hold}, others_before=12.0)
    assert read.ok and (read.audio_p95_ms, read.rpc_p95_ms, read.job_pss_mb) == (250.0, 30.0, 32.0)
    assert read.cpu == {"jobs": 90.0, "participants": 80.0, "server": 10.0, "machine": 190.0, "loop": None}
    failed = step_from_report(6, {"status": "fail", "stages": [{"name": "worker", "status": "fail",
                                                                "cause": "no register"}]}, 0.0)  # fmt: skip
    assert not failed.ok and failed.crossed == ["no hold: worker: no register"]


def test_the_standalone_workers_job_limit_must_be_a_number() -> None:
    result = run_module("agent_runtime", env={"AGENT_MAX_JOBS": "four"}, timeout=60)
    assert result.returncode == 2
    assert "AGENT_MAX_JOBS='four': give a whole number of jobs" in result.stderr
