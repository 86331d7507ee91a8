"""The figures a load run reports: throughput, latency percentiles, webhook completeness and delivery,
leftovers. Webhook delivery latency: `WebhookEvent.created_at` has whole-second resolution, so it is measured
from a local trigger on this process's clock: the join's start (it creates the room; the user's participant_joined
follows once its media connected). Not the join's return: the server's participant_joined was measured arriving
before the SDK's connect() returned to Python in most rooms (p50 -11 ms)."""

from __future__ import annotations

from dataclasses import dataclass, field

from livekit import api

from bootstrap.stats import summary


@dataclass
class RoomTriggers:
    join_started: float  # time.monotonic() before connect()
    identity: str  # the room's participant


@dataclass
class DeliveryFigures:
    duplicates: int = 0  # copies of an event already handled (answered 200, not handled again)
    rooms_with_duplicates: int = 0
    rooms_out_of_order: int = 0  # a participant_joined verified before its room's room_started
    room_started_latency: list[float] = field(default_factory=list)
    participant_joined_latency: list[float] = field(default_factory=list)

    def add_room(self, events: list[api.WebhookEvent], arrived_at: dict[str, float], triggers: RoomTriggers) -> None:
        """One room's verified events, in arrival order."""
        kinds = [e.event for e in events]
        if "room_started" in kinds and "participant_joined" in kinds[: kinds.index("room_started")]:
            self.rooms_out_of_order += 1
        for event in events:
            if event.event == "room_started":
                self.room_started_latency.append(arrived_at[event.id] - triggers.join_started)
            elif event.event == "participant_joined" and event.participant.identity == triggers.identity:
                self.participant_joined_latency.append(arrived_at[event.id] - triggers.join_started)

    def add_duplicates(self, by_room: dict[str, int], rooms: list[str]) -> None:
        copies = [by_room.get(room, 0) for room in rooms]
        self.duplicates, self.rooms_with_duplicates = sum(copies), sum(1 for c in copies if c)

    def as_dict(self) -> dict[str, object]:
        return {
            "duplicates": self.duplicates,
            "rooms_with_duplicates": self.rooms_with_duplicates,
            "rooms_out_of_order": self.rooms_out_of_order,
            "latency_s": {
                "room_started, from the join's start": summary(self.room_started_latency),
                "participant_joined, from the join's start": summary(self.participant_joined_latency),
            },
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
    delivery: DeliveryFigures = field(default_factory=DeliveryFigures)  # how the webhooks arrived
    triggers: dict[str, RoomTriggers] = field(default_factory=dict)  # room -> its join's times, for latency
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
                **self.delivery.as_dict(),
            },
            "rooms_left": self.rooms_left,
            "errors": self.errors[:5],
        }
