"""The run context's seams: the webhook receiver behind a property, and the one bounded poll."""

from __future__ import annotations

import asyncio

import pytest

from bootstrap.lookups import poll_until
from bootstrap.result import StageFailure
from tests.conftest import make_context

pytestmark = pytest.mark.unit


def test_sink_without_a_receiver_is_a_clear_failure() -> None:
    ctx = make_context()
    ctx.sink_error = "webhook port 8000 is already taken by nginx (pid 7)"
    with pytest.raises(StageFailure) as caught:
        _ = ctx.sink
    assert caught.value.cause == ctx.sink_error
    assert "WEBHOOK_PORT" in caught.value.fix


async def test_poll_until_returns_the_first_answer() -> None:
    answers = iter([None, None, "found"])

    async def probe() -> str | None:
        return next(answers)

    assert await poll_until(probe, 0.001) == "found"


async def test_poll_until_is_bounded_by_its_caller() -> None:
    async def never() -> str | None:
        return None

    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await poll_until(never, 0.01)
