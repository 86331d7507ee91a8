"""The figures of a held load (`--load N --hold S`): what the rooms heard and answered while all N were open
together, what each side's processes used, sampled every few seconds of the hold, and which of the capacity
limits the run crossed (the capacity benchmark steps N until one is)."""

from __future__ import annotations

from dataclasses import dataclass, field

from bootstrap.stats import percentile, summary

# The capacity limits: a held room is degraded past these.
AUDIO_P95_LIMIT_S = 0.300
MB = 1024 * 1024


@dataclass
class Sample:
    """One sampling round during the hold (every room pinged once, /proc and the worker's load read)."""

    at_s: float  # seconds into the hold
    worker_load: float | None = None  # what the worker reports (GET /worker), None if it did not answer
    active_jobs: int | None = None
    rpc: list[float] = field(default_factory=list)  # this round's RPC round trips
    rpc_failed: int = 0
    cpu_percent: dict[str, float | None] = field(default_factory=dict)  # since the previous round, per side
    audio: list[float] = field(default_factory=list)  # round trips of markers sent in this round's window
    markers_lost: int = 0  # of the markers sent in this window

    def as_dict(self) -> dict[str, object]:
        return {
            "at_s": round(self.at_s, 1),
            "worker_load": None if self.worker_load is None else round(self.worker_load, 3),
            "active_jobs": self.active_jobs,
            "audio_p95_s": round(percentile(self.audio, 0.95), 3) if self.audio else None,
            "markers_lost": self.markers_lost,
            "rpc_p95_s": round(percentile(self.rpc, 0.95), 3) if self.rpc else None,
            "rpc_failed": self.rpc_failed,
            "cpu_percent": {k: None if v is None else round(v, 1) for k, v in self.cpu_percent.items()},
        }


@dataclass
class JobUsage:
    """One job process over the hold."""

    room: str
    pid: int
    cpu_percent: float  # of one core, averaged over the hold
    rss_mb: float
    pss_mb: float | None


@dataclass
class SideUsage:
    """A side's processes over the hold: CPU in % of one core (200 % = this machine's two), memory at its end."""

    cpu_percent: float | None = None
    rss_mb: float | None = None
    pss_mb: float | None = None

    def as_dict(self) -> dict[str, float | None]:
        return {k: None if v is None else round(v, 1) for k, v in vars(self).items()}


@dataclass
class HoldFigures:
    rooms: int
    concurrency: int
    hold_seconds: float
    max_jobs: int  # the worker's limit (0: none)
    warmup_seconds: float = 0.0
    open_seconds: float = 0.0  # from the first room's join to the last room's agent ready and echoing
    joined: int = 0
    join_failed: int = 0
    dispatched: int = 0  # rooms whose agent the server listed
    refused: int = 0  # rooms the server created no job for: no worker available (full, or none registered)
    stalled: int = 0  # rooms with a job but no agent within the dispatch wait
    held: int = 0  # rooms with an echoing agent when the hold began
    join_latency: list[float] = field(default_factory=list)
    dispatch_latency: list[float] = field(default_factory=list)
    audio_round_trip: list[float] = field(default_factory=list)  # every marker timed in every held room
    markers_timed: int = 0
    markers_lost: int = 0  # after each room's first echo, until the hold ended
    rooms_losing_markers: int = 0
    # The same markers by phase: sent while rooms were still opening (jobs starting), or during the hold.
    opening_audio: list[float] = field(default_factory=list)
    opening_lost: int = 0
    hold_audio: list[float] = field(default_factory=list)
    hold_lost: int = 0
    rpc_round_trip: list[float] = field(default_factory=list)
    rpc_failed: int = 0
    samples: list[Sample] = field(default_factory=list)
    # participants (this process), participants_loop (its event loop's thread), jobs, server, machine
    usage: dict[str, SideUsage] = field(default_factory=dict)
    jobs: list[JobUsage] = field(default_factory=list)
    worker_load_max: float | None = None
    rooms_left: int | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def limits_crossed(self) -> list[str]:
        """Which capacity limits this run crossed, each named with its figure (empty: the rooms held)."""
        crossed = []
        if self.join_failed:
            crossed.append(f"{self.join_failed} joins failed")
        if self.refused:
            crossed.append(f"dispatch refused in {self.refused} rooms (no worker available)")
        if self.stalled:
            crossed.append(f"no agent within the dispatch wait in {self.stalled} rooms")
        if silent := self.dispatched - self.held:
            crossed.append(f"no echo in {silent} rooms")
        if self.markers_lost:
            crossed.append(f"{self.markers_lost} audio markers lost in {self.rooms_losing_markers} rooms")
        if (p95 := percentile(self.audio_round_trip, 0.95)) > AUDIO_P95_LIMIT_S:
            crossed.append(f"audio round trip p95 {p95 * 1000:.0f} ms > {AUDIO_P95_LIMIT_S * 1000:.0f} ms")
        if self.rpc_failed:
            crossed.append(f"{self.rpc_failed} RPCs failed")
        return crossed

    def per_room(self) -> dict[str, float | None]:
        """What one held room costs: CPU (% of one core) on each side, and the job's memory."""
        held = max(self.held, 1)

        def share(side: str) -> float | None:
            cpu = self.usage.get(side, SideUsage()).cpu_percent
            return None if cpu is None else round(cpu / held, 2)

        pss = [j.pss_mb for j in self.jobs if j.pss_mb is not None]
        return {
            "cpu_percent_job": share("jobs"),
            "cpu_percent_participants": share("participants"),
            "cpu_percent_server": share("server"),
            "job_rss_mb": round(percentile([j.rss_mb for j in self.jobs], 0.5), 1) if self.jobs else None,
            "job_pss_mb": round(percentile(pss, 0.5), 1) if pss else None,
        }

    def as_dict(self) -> dict[str, object]:
        job_cpu = [j.cpu_percent for j in self.jobs]
        return {
            "rooms": self.rooms,
            "concurrency": self.concurrency,
            "hold_seconds": self.hold_seconds,
            "max_jobs": self.max_jobs,
            "warmup_seconds": round(self.warmup_seconds, 3),
            "open_seconds": round(self.open_seconds, 3),
            "joined": self.joined,
            "join_failed": self.join_failed,
            "dispatched": self.dispatched,
            "refused": self.refused,
            "stalled": self.stalled,
            "held": self.held,
            "join_latency": summary(self.join_latency),
            "dispatch_latency": summary(self.dispatch_latency),
            "audio": {
                "round_trip_s": summary(self.audio_round_trip),
                "markers_timed": self.markers_timed,
                "markers_lost": self.markers_lost,
                "rooms_losing_markers": self.rooms_losing_markers,
                "opening": {"round_trip_s": summary(self.opening_audio), "markers_lost": self.opening_lost},
                "hold": {"round_trip_s": summary(self.hold_audio), "markers_lost": self.hold_lost},
            },
            "rpc": {
                "round_trip_s": summary(self.rpc_round_trip),
                "calls": len(self.rpc_round_trip),
                "failed": self.rpc_failed,
            },
            "worker_load_max": self.worker_load_max,
            "usage": {side: usage.as_dict() for side, usage in self.usage.items()},
            "per_job": {
                "cpu_percent": summary(job_cpu),
                "rss_mb": summary([j.rss_mb for j in self.jobs]),
                "pss_mb": summary([j.pss_mb for j in self.jobs if j.pss_mb is not None]),
            },
            "per_room": self.per_room(),
            "samples": [s.as_dict() for s in self.samples],
            "limits_crossed": self.limits_crossed,
            "rooms_left": self.rooms_left,
            "errors": self.errors[:5],
        }
