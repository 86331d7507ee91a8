"""Percentiles and completeness of load figures."""

import pytest
from livekit import api

from bootstrap.modes.load.load_figures import DeliveryFigures, LoadFigures, RoomTriggers
from bootstrap.stats import percentile, summary

pytestmark = pytest.mark.unit


def test_nearest_rank_percentiles() -> None:
    values = [float(v) for v in range(1, 21)]  # 1..20
    assert percentile(values, 0.50) == 10.0
    assert percentile(values, 0.95) == 19.0
    assert summary(values) == {"p50": 10.0, "p95": 19.0, "max": 20.0}
    assert percentile([], 0.5) == 0.0


def test_complete_needs_every_room_dispatched_every_webhook_and_no_leftovers() -> None:
    figures = LoadFigures(rooms=2, concurrency=1, dispatched=2, media_checked=2, webhooks_expected=6,
                          webhooks_verified=6, rooms_left=0)  # fmt: skip
    assert figures.complete
    unchecked = LoadFigures(rooms=2, concurrency=1, dispatched=2, media_checked=1, webhooks_expected=6,
                            webhooks_verified=6, rooms_left=0)  # fmt: skip
    assert not unchecked.complete, "a room whose media and data were not checked is not done"
    unmeasured = LoadFigures(rooms=2, concurrency=1, dispatched=2, webhooks_expected=6, webhooks_verified=6)
    assert not unmeasured.complete, "rooms left never counted (timed out) is not 0 rooms left"
    assert not LoadFigures(
        rooms=2, concurrency=1, dispatched=1, webhooks_expected=6, webhooks_verified=6, rooms_left=0
    ).complete
    assert not LoadFigures(
        rooms=2, concurrency=1, dispatched=2, webhooks_expected=6, webhooks_verified=5, rooms_left=0
    ).complete
    left = LoadFigures(rooms=2, concurrency=1, dispatched=2, media_checked=2, webhooks_expected=6,
                       webhooks_verified=6, rooms_left=1)  # fmt: skip
    assert not left.complete


def _event(kind: str, event_id: str, identity: str = "") -> api.WebhookEvent:
    event = api.WebhookEvent(event=kind, id=event_id)
    event.room.name = "r"
    if identity:
        event.participant.identity = identity
    return event


def test_delivery_latency_is_measured_from_local_triggers_and_order_is_checked() -> None:
    delivery = DeliveryFigures()
    triggers = RoomTriggers(join_started=10.0, identity="user")
    in_order = [_event("room_started", "a"), _event("participant_joined", "b", "user"),
                _event("participant_joined", "c", "agent-1")]  # fmt: skip
    arrived = {"a": 10.25, "b": 10.5, "c": 10.9}
    delivery.add_room(in_order, arrived, triggers)
    assert delivery.room_started_latency == pytest.approx([0.25])  # from the join's start
    assert delivery.participant_joined_latency == pytest.approx([0.5])  # the user's, from the join's start too
    assert delivery.rooms_out_of_order == 0
    delivery.add_room([in_order[1], in_order[0]], arrived, triggers)
    assert delivery.rooms_out_of_order == 1


def test_duplicates_are_counted_per_room() -> None:
    delivery = DeliveryFigures()
    delivery.add_duplicates({"r1": 2, "other": 5}, ["r1", "r2"])
    assert (delivery.duplicates, delivery.rooms_with_duplicates) == (2, 1)
    assert delivery.as_dict()["duplicates"] == 2
