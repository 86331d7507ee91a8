"""Percentiles and completeness of load figures."""

import pytest

from bootstrap.load_figures import LoadFigures, percentile, summary

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
