"""The figures a load run reports: throughput, latency percentiles, webhook completeness, leftovers."""

from __future__ import annotations

from dataclasses import dataclass, field


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile (no interpolation: every figure is one that was measured)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, round(fraction * len(ordered) + 0.5 - 1e-9))
    return ordered[min(rank, len(ordered)) - 1]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "p50": round(percentile(values, 0.50), 3),
        "p95": round(percentile(values, 0.95), 3),
        "max": round(max(values, default=0.0), 3),
    }


@dataclass
class LoadFigures:
    rooms: int
    concurrency: int
    warmup_seconds: float = 0.0  # waiting out the server's agent-name refresh, before `seconds` starts
    started_at: float = 0.0  # time.monotonic() when the rooms started; 0 while warming up
    seconds: float = 0.0
    finished: int = 0  # rooms done, with or without errors (progress lines and rooms/s)
    joined: int = 0
    dispatched: int = 0
    join_latency: list[float] = field(default_factory=list)
    dispatch_latency: list[float] = field(default_factory=list)
    webhooks_expected: int = 0
    webhooks_received: int = 0
    webhooks_verified: int = 0
    media_checked: int = 0  # rooms whose RPCs and audio markers all came back
    audio_round_trip: list[float] = field(default_factory=list)  # every timed marker, all rooms
    rpc_round_trip: list[float] = field(default_factory=list)
    rooms_left: int | None = None  # None: not measured (the run timed out first)
    errors: list[str] = field(default_factory=list)

    @property
    def rooms_per_second(self) -> float:
        return self.finished / self.seconds if self.seconds else 0.0

    @property
    def complete(self) -> bool:
        return (
            self.dispatched == self.rooms
            and self.media_checked == self.rooms
            and self.webhooks_verified >= self.webhooks_expected
            and self.rooms_left == 0
            and not self.errors
        )

    def as_dict(self) -> dict[str, object]:
        return {
            "rooms": self.rooms,
            "concurrency": self.concurrency,
            "warmup_seconds": round(self.warmup_seconds, 3),
            "seconds": round(self.seconds, 3),
            "rooms_per_second": round(self.rooms_per_second, 2),
            "joined": self.joined,
            "dispatched": self.dispatched,
            "join_latency": summary(self.join_latency),
            "dispatch_latency": summary(self.dispatch_latency),
            "media": {
                "checked": self.media_checked,
                "audio_round_trip_s": summary(self.audio_round_trip),
                "rpc_round_trip_s": summary(self.rpc_round_trip),
            },
            "webhooks": {
                "expected": self.webhooks_expected,
                "received": self.webhooks_received,
                "verified": self.webhooks_verified,
            },
            "rooms_left": self.rooms_left,
            "errors": self.errors[:5],
        }
