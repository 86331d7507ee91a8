"""Turn an exception raised in a stage into a cause (what was expected, what was seen) and a fix
(what to change, where). Known failures are raised as StageFailure by the stages themselves."""

from __future__ import annotations

import aiohttp
from livekit import api, rtc

from backend.logging import redact
from bootstrap.context import RunContext
from bootstrap.result import StageFailure

KEY_FIX = "set LIVEKIT_API_KEY / LIVEKIT_API_SECRET in .env to a pair listed under `keys:` in docker/livekit.yaml"
ICE_FIX = (
    "the server must advertise an address this client can reach: `rtc.node_ip: 127.0.0.1` and "
    "`use_external_ip: false` in docker/livekit.yaml, with TCP 7881 and UDP 7882 reachable"
)
TIMEOUT_FIXES = {
    "worker": "check LIVEKIT_URL in .env reaches the server's /agent endpoint (port 7880) and `make logs`",
    "join": ICE_FIX,
    "token": "token minting should be instant: check the machine is not overloaded",
}


def diagnose(stage: str, exc: BaseException, ctx: RunContext, waited: float) -> StageFailure:
    """The cause and fix for `exc`, with any token or secret the error echoed redacted."""
    failure = _diagnose(stage, exc, ctx, waited)
    return StageFailure(redact(failure.cause), redact(failure.fix))


def _diagnose(stage: str, exc: BaseException, ctx: RunContext, waited: float) -> StageFailure:
    if isinstance(exc, StageFailure):
        return exc
    url = ctx.settings.http_url
    if isinstance(exc, api.TwirpError) and exc.status in (401, 403):
        return StageFailure(
            f"HTTP {exc.status} from {url}: the API key/secret in .env do not match `keys` in docker/livekit.yaml",
            KEY_FIX,
        )
    if isinstance(exc, aiohttp.ClientConnectorError | ConnectionRefusedError):
        return StageFailure(
            f"cannot reach LiveKit at {url}: {exc}",
            "start the stack (`make up`) and check LIVEKIT_URL in .env uses port 7880",
        )
    if isinstance(exc, rtc.ConnectError):
        return _diagnose_connect(str(exc), ctx)
    if isinstance(exc, TimeoutError):
        return StageFailure(
            f"{stage} did not finish within {waited:.1f}s",
            TIMEOUT_FIXES.get(stage, "raise --timeout, or see `make logs` for the server's side"),
        )
    return StageFailure(f"{type(exc).__name__}: {exc}", "see the log above (`--verbose`) and `make logs`")


def _diagnose_connect(message: str, ctx: RunContext) -> StageFailure:
    lowered = message.lower()
    if "401" in lowered or "unauthorized" in lowered or "invalid token" in lowered:
        return StageFailure(
            f"the server at {ctx.settings.ws_url} refused the token ({message})",
            KEY_FIX + "; and mint a fresh token (an expired one is refused too)",
        )
    return StageFailure(f"rtc connect to {ctx.settings.ws_url} failed: {message}", ICE_FIX)
