"""The capacity curve's logic, apart from running it: one step's figures read from a held run's report, the
next N to try (coarse steps, then halving the gap between the last N that held and the first that did not), the
knee (the largest N that held, every smaller N tried having held too) and which resource bound it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

COARSE = (5, 10, 20, 30, 40, 50, 60, 80, 100)
SATURATED = 0.85  # the machine is CPU-bound when this share of all its cores was busy
ONE_CORE = 90.0  # % of a core: a process whose Python thread is this busy is bound by its one event loop


@dataclass
class Step:
    n: int
    held: int = 0
    crossed: list[str] = field(default_factory=list)  # the limits crossed (empty: the N rooms held)
    audio_p50_ms: float = 0.0
    audio_p95_ms: float = 0.0
    markers_lost: int = 0
    opening_p95_ms: float = 0.0  # markers sent while rooms were still opening
    hold_p95_ms: float = 0.0  # markers sent during the hold
    rpc_p95_ms: float = 0.0
    dispatch_p95_s: float = 0.0
    join_failed: int = 0
    refused: int = 0
    worker_load_max: float | None = None
    # % of one core: jobs, participants, server, machine; loop: the participants' event loop thread
    cpu: dict[str, float | None] = field(default_factory=dict)
    job_cpu_p50: float = 0.0  # % of one core
    job_pss_mb: float = 0.0
    job_rss_mb: float = 0.0
    others_before: float = 0.0  # the machine's busy % (of one core) just before the step, with nothing of ours
    status: str = ""

    @property
    def ok(self) -> bool:
        return not self.crossed and self.status == "pass"

    @property
    def others_during(self) -> float:
        """What the machine spent on anything but this step's sides during its hold, in % of one core."""
        cpu = {side: value or 0.0 for side, value in self.cpu.items()}
        ours = cpu.get("jobs", 0.0) + cpu.get("participants", 0.0) + cpu.get("server", 0.0)
        return max(0.0, cpu.get("machine", 0.0) - ours)


def step_from_report(n: int, report: dict[str, Any], others_before: float) -> Step:
    """A step from `python -m bootstrap --load N --hold S --json`; a run that never reached its hold (no figures)
    is a step that did not hold, its failing stage named."""
    hold = report.get("hold")
    if not hold:
        failed: dict[str, Any] = next((s for s in report.get("stages", []) if s.get("status") == "fail"), {})
        return Step(
            n, crossed=[f"no hold: {failed.get('name')}: {failed.get('cause')}"], status=report.get("status", "")
        )
    audio, usage = hold["audio"], hold["usage"]
    return Step(
        n=n,
        held=hold["held"],
        crossed=list(hold["limits_crossed"]) or ([] if report["status"] == "pass" else [f"run {report['status']}"]),
        audio_p50_ms=audio["round_trip_s"]["p50"] * 1000,
        audio_p95_ms=audio["round_trip_s"]["p95"] * 1000,
        markers_lost=audio["markers_lost"],
        opening_p95_ms=audio.get("opening", {}).get("round_trip_s", {}).get("p95", 0.0) * 1000,
        hold_p95_ms=audio.get("hold", {}).get("round_trip_s", {}).get("p95", 0.0) * 1000,
        rpc_p95_ms=hold["rpc"]["round_trip_s"]["p95"] * 1000,
        dispatch_p95_s=hold["dispatch_latency"]["p95"],
        join_failed=hold["join_failed"],
        refused=hold["refused"],
        worker_load_max=hold["worker_load_max"],
        cpu={side: usage.get(side, {}).get("cpu_percent") for side in ("jobs", "participants", "server", "machine")}
        | {"loop": usage.get("participants_loop", {}).get("cpu_percent")},
        job_cpu_p50=hold["per_job"]["cpu_percent"]["p50"],
        job_pss_mb=hold["per_job"]["pss_mb"]["p50"],
        job_rss_mb=hold["per_job"]["rss_mb"]["p50"],
        others_before=others_before,
        status=report["status"],
    )


def knee(steps: list[Step]) -> Step | None:
    """The largest N that held, below the smallest N that did not (None: not even the first held)."""
    first_bad = min((s.n for s in steps if not s.ok), default=None)
    held = [s for s in steps if s.ok and (first_bad is None or s.n < first_bad)]
    return max(held, key=lambda s: s.n, default=None)


def next_n(steps: list[Step], coarse: tuple[int, ...] = COARSE, resolution: int = 1) -> int | None:
    """The next N to try: the coarse steps until one does not hold, then halving the gap between the knee and
    the smallest N that did not hold, until they are `resolution` apart; None when done."""
    tried = {s.n for s in steps}
    first_bad = min((s.n for s in steps if not s.ok), default=None)
    if first_bad is None:
        return next((n for n in coarse if n not in tried), None)
    best = knee(steps)
    low = best.n if best else 0
    if first_bad - low <= resolution:
        return None
    middle = (low + first_bad) // 2
    return middle if middle > 0 and middle not in tried else None


def bound_by(step: Step, cores: int) -> str:
    """Which resource the step that did not hold ran out of, from what each side used during its hold."""
    cpu = {side: value or 0.0 for side, value in step.cpu.items()}
    machine, total = cpu.get("machine", 0.0), 100.0 * cores
    jobs, participants, server = cpu.get("jobs", 0.0), cpu.get("participants", 0.0), cpu.get("server", 0.0)
    split = (f"job processes {jobs:.0f} %, participants' process {participants:.0f} %, livekit-server "
             f"{server:.0f} %, anything else {max(0.0, machine - jobs - participants - server):.0f} %")  # fmt: skip
    if machine >= SATURATED * total:
        biggest = max(("jobs", "participants", "server"), key=lambda side: cpu.get(side, 0.0))
        names = {"jobs": "the agent's job processes", "participants": "the participants' side (this process)",
                 "server": "livekit-server"}  # fmt: skip
        return (
            f"CPU: the machine's {cores} cores {machine:.0f} % busy of {total:.0f} % ({split}); most: {names[biggest]}"
        )
    if cpu.get("loop", 0.0) >= ONE_CORE:
        return (f"the participants' event loop: its one Python thread {cpu['loop']:.0f} % of a core ({split}), the "
                "machine not saturated")  # fmt: skip
    if step.join_failed:
        return f"the server: {step.join_failed} joins failed ({split})"
    if step.refused:
        return f"the worker's job limit: {step.refused} dispatches refused ({split})"
    return (f"no resource saturated on average (machine {machine:.0f} % of {total:.0f} %: {split}; the participants' "
            f"event loop {cpu.get('loop', 0.0):.0f} % of a core): bursts, see the step's samples")  # fmt: skip
