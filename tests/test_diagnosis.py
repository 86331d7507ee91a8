"""bootstrap.diagnosis: each kind of exception a stage can raise becomes a cause naming what was seen and
a fix naming what to change, with tokens and secrets redacted."""

from __future__ import annotations

import aiohttp
import pytest
from livekit import api, rtc

from backend.logging import register_secret
from bootstrap.diagnosis import ICE_FIX, KEY_FIX, diagnose
from bootstrap.result import StageFailure
from tests.conftest import make_context

pytestmark = pytest.mark.unit
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJib290c3RyYXAtdXNlciJ9.c2lnbmF0dXJlLXNpZ25hdHVyZQ"


def test_a_stage_failure_passes_through() -> None:
    failure = diagnose("join", StageFailure("the cause", "the fix"), make_context(), 1.0)
    assert (failure.cause, failure.fix) == ("the cause", "the fix")


@pytest.mark.parametrize("status", [401, 403])
def test_refused_keys_point_at_the_key_pair(status: int) -> None:
    ctx = make_context()
    failure = diagnose("worker", api.TwirpError("unauthenticated", "no", status=status), ctx, 1.0)
    assert failure.cause.startswith(f"HTTP {status} from {ctx.settings.http_url}")
    assert failure.fix == KEY_FIX


def test_unreachable_server_says_start_the_stack() -> None:
    error = aiohttp.ClientConnectorError(
        aiohttp.client_reqrep.ConnectionKey("127.0.0.1", 1, False, True, None, None, None), OSError(111, "refused")
    )
    failure = diagnose("worker", error, make_context(), 1.0)
    assert failure.cause.startswith("cannot reach LiveKit at")
    assert "`make up`" in failure.fix


def test_refused_token_is_redacted_and_names_the_keys() -> None:
    failure = diagnose("join", rtc.ConnectError(f"401 Unauthorized: invalid token {JWT}"), make_context(), 1.0)
    assert "refused the token" in failure.cause
    assert JWT not in failure.cause and JWT[:10] + "…" in failure.cause
    assert failure.fix.startswith(KEY_FIX)


def test_other_connect_errors_point_at_ice() -> None:
    failure = diagnose("join", rtc.ConnectError("wait_pc_connection timed out"), make_context(), 1.0)
    assert "wait_pc_connection timed out" in failure.cause
    assert failure.fix == ICE_FIX


@pytest.mark.parametrize(("stage", "fix"), [("join", ICE_FIX), ("webhooks", "raise --timeout, or see `make logs`")])
def test_timeouts_say_how_long_and_what_to_check(stage: str, fix: str) -> None:
    failure = diagnose(stage, TimeoutError(), make_context(), 4.25)
    assert failure.cause == f"{stage} did not finish within 4.2s"
    assert failure.fix.startswith(fix)


def test_unknown_errors_name_their_type_and_redact_secrets() -> None:
    register_secret("a-registered-secret-value-0123456789")
    failure = diagnose("token", ValueError("bad a-registered-secret-value-0123456789"), make_context(), 1.0)
    assert failure.cause == "ValueError: bad ***"
    assert "--verbose" in failure.fix


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        ("invalid token: x, error: token has invalid claims: token is not valid yet", "clock"),
        ("invalid token: x, error: token has invalid claims: token is expired", "clock"),
        ("invalid token: x, error: token signature is invalid: signature is invalid", "auth"),
        ("invalid API key: nobody", "auth"),
    ],
)
def test_a_refused_token_is_named_clock_or_auth_from_what_the_server_said(message: str, kind: str) -> None:
    """Issue 25: a clock ahead is named as the clock, not as a key mismatch, in every mode (the local run too)."""
    failure = diagnose("worker", api.TwirpError("unauthenticated", message, status=401), make_context(), 1.0)
    assert failure.kind == kind
    assert ("clock" in failure.fix) == (kind == "clock")


def test_every_diagnosed_failure_carries_a_kind() -> None:
    ctx = make_context()
    assert diagnose("join", TimeoutError(), ctx, 1.0).kind == "timeout"
    assert diagnose("media", StageFailure("no echo", "fix"), ctx, 1.0).kind == "media"
    assert diagnose("path udp", StageFailure("no pair", "fix"), ctx, 1.0).kind == "media"
    assert diagnose("dispatch", RuntimeError("odd"), ctx, 1.0).kind == "config"
