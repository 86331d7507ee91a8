"""Turn an exception raised in a stage into a cause (what was expected, what was seen) and a fix
(what to change, where). Known failures are raised as StageFailure by the stages themselves. Whatever failed, a
LiveKit server of the run's that stopped answering (frozen, hung) is named as the cause, in every mode."""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass

import aiohttp
from livekit import api, rtc

from backend.logging import redact
from bootstrap import token_probe
from bootstrap.context import RunContext, Server
from bootstrap.result import Kind, StageFailure

KEY_FIX = "set LIVEKIT_API_KEY / LIVEKIT_API_SECRET in .env to a pair listed under `keys:` in docker/livekit.yaml"
ICE_FIX = (
    "the server must advertise an address this client can reach: `rtc.node_ip: 127.0.0.1` and "
    "`use_external_ip: false` in docker/livekit.yaml, with TCP 7881 and UDP 7882 reachable"
)
CLOCK_FIX = (
    "sync this machine's clock (NTP: `timedatectl set-ntp true`, or chrony) and the server's; tokens are "
    "refused outside their validity window, give or take the server's 60 s leeway"
)
# What the server's 401 says of a token outside its validity window (livekit/protocol auth → golang-jwt v5).
CLOCK_REFUSALS = {
    "token is not valid yet": "its clock is behind this machine's (the token's nbf is in the server's future)",
    "token used before issued": "its clock is behind this machine's (the token's iat is in the server's future)",
    "token is expired": "its clock is ahead of this machine's by more than the token's lifetime, or the token is old",
}
# The kind of a failure a stage raised without naming one: what that stage proves decides it.
STAGE_KINDS = {
    "services": Kind.NOT_READY,
    "worker": Kind.NETWORK,
    "join": Kind.MEDIA,
    "data": Kind.MEDIA,
    "media": Kind.MEDIA,
    "dispatch": Kind.CONFIG,
    "webhooks": Kind.CONFIG,
    "token": Kind.CONFIG,
}
TIMEOUT_FIXES = {
    "worker": "check LIVEKIT_URL in .env reaches the server's /agent endpoint (port 7880) and `make logs`",
    "join": ICE_FIX,
    "token": "token minting should be instant: check the machine is not overloaded",
}


def diagnose(stage: str, exc: BaseException, ctx: RunContext, waited: float) -> StageFailure:
    """The cause and fix for `exc`, with any token or secret the error echoed redacted."""
    failure = _diagnose(stage, exc, ctx, waited)
    return StageFailure(redact(failure.cause), redact(failure.fix), failure.kind or kind_of(stage, exc))


async def explain_refusal(ctx: RunContext, failure: StageFailure) -> StageFailure:
    """A refused key or secret, asked again (bootstrap.token_probe): a token refused only for its validity window
    is the clock, with the measured skew. livekit-api's client does not read the server's plain-text 401, so the
    diagnosis above cannot tell from the exception alone."""
    settings = ctx.settings
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2.0)) as session:
        verdict = await token_probe.probe(session, settings.http_url, settings.api_key, settings.api_secret,
                                          ctx.room_name)  # fmt: skip
    if verdict.clock:
        return StageFailure(redact(token_probe.clock_cause(verdict)), CLOCK_FIX, Kind.CLOCK)
    return failure


def kind_of(stage: str, exc: BaseException) -> Kind:
    """The kind of a failure that did not name its own: a timeout, else what the failing stage proves (a path
    stage: media), else config."""
    if isinstance(exc, TimeoutError):
        return Kind.TIMEOUT
    if stage.startswith("path"):
        return Kind.MEDIA
    return STAGE_KINDS.get(stage, Kind.CONFIG)


def clock_refusal(message: str) -> str | None:
    """What a server's refusal says of the clocks, when it refused a token for its validity window (else None)."""
    lowered = message.lower()
    return next((meaning for words, meaning in CLOCK_REFUSALS.items() if words in lowered), None)


# A live livekit-server answers GET / within milliseconds, loaded or not: this long without a byte is not it.
SILENT_WAIT = 2.0


@dataclass(frozen=True)
class Silence:
    """A server that sent nothing back to GET / within SILENT_WAIT. `connected`: it accepted the TCP connection
    (the kernel still does for a stopped or hung process), else not even that (its host or the path drops)."""

    server: Server
    connected: bool

    @property
    def cause(self) -> str:
        where = f"{self.server.name} at {self.server.address} is not answering"
        if self.connected:
            return (f"{where}: it accepts connections but sent nothing back to GET / within {SILENT_WAIT:g} s "
                    "(a frozen or hung process)")  # fmt: skip
        return f"{where}: no connection within {SILENT_WAIT:g} s (its host down or cut off, or traffic dropped)"

    @property
    def fix(self) -> str:
        address, logs = self.server.address, self.server.logs
        if self.connected:
            return (f"check the livekit-server process serving {address} and its host: a stopped one (state T "
                    f"in `ps -o stat= -p PID`: SIGSTOP, a debugger) needs `kill -CONT PID`, a hung one a restart; "
                    f"{logs}")  # fmt: skip
        return f"check that {address} is reachable from here and its host is up (routes, firewall); {logs}"


async def silent_servers(servers: list[Server]) -> list[Silence]:
    """The servers that send nothing back to GET / within SILENT_WAIT, all asked at once."""
    found = await asyncio.gather(*(_silence(server) for server in servers))
    return [silence for silence in found if silence is not None]


async def _silence(server: Server) -> Silence | None:
    """None when `server` answered anything at all: a refusal, a TLS error or any HTTP status is an answer (the
    stage's own diagnosis names those). Plain asyncio, not aiohttp: what matters is whether the TCP connection
    was accepted before the silence, which a client library's single timeout does not say."""
    connected = False
    try:
        async with asyncio.timeout(SILENT_WAIT):
            reader, writer = await asyncio.open_connection(server.host, server.port)
            connected = True
            try:
                if server.http_url.startswith("https:"):  # the system store, or SSL_CERT_FILE (--ca-file)
                    await writer.start_tls(ssl.create_default_context(), server_hostname=server.host)
                writer.write(f"GET / HTTP/1.1\r\nHost: {server.address}\r\nConnection: close\r\n\r\n".encode())
                await writer.drain()
                await reader.readline()  # a status line, or the connection closed: either is an answer
            finally:
                writer.transport.abort()  # no closing handshake with a peer that may never reply
    except TimeoutError:
        return Silence(server, connected)
    except Exception:  # an answer of some kind (refused, reset, TLS): not silence, and never the run's failure
        return None
    return None


def name_silent(failure: StageFailure, silent: list[Silence]) -> StageFailure:
    """`failure`, unless a server of the run's is not answering: then that is the cause, named first (what the
    stage itself saw follows, as the symptom), kind network."""
    if not silent:
        return failure
    cause = "; ".join(s.cause for s in silent) + f" (what the stage saw: {failure.cause})"
    return StageFailure(cause, "; ".join(s.fix for s in silent), Kind.NETWORK)


def _diagnose(stage: str, exc: BaseException, ctx: RunContext, waited: float) -> StageFailure:
    if isinstance(exc, StageFailure):
        return exc
    url = ctx.settings.http_url
    if isinstance(exc, api.TwirpError) and exc.status in (401, 403):
        if clock := clock_refusal(exc.message):
            return StageFailure(
                f"HTTP {exc.status} from {url}: the server refused the token for its validity window: {clock}",
                CLOCK_FIX,
                Kind.CLOCK,
            )
        return StageFailure(
            f"HTTP {exc.status} from {url}: the API key/secret in .env do not match `keys` in docker/livekit.yaml",
            KEY_FIX,
            Kind.AUTH,
        )
    if isinstance(exc, aiohttp.ClientConnectorError | ConnectionRefusedError):
        return StageFailure(
            f"cannot reach LiveKit at {url}: {exc}",
            "start the stack (`make up`) and check LIVEKIT_URL in .env uses port 7880",
            Kind.NETWORK,
        )
    if isinstance(exc, rtc.ConnectError):
        return _diagnose_connect(str(exc), ctx)
    if isinstance(exc, TimeoutError):
        return StageFailure(
            f"{stage} did not finish within {waited:.1f}s",
            TIMEOUT_FIXES.get(stage, "raise --timeout, or see `make logs` for the server's side"),
            Kind.TIMEOUT,
        )
    return StageFailure(f"{type(exc).__name__}: {exc}", "see the log above (`--verbose`) and `make logs`")


def _diagnose_connect(message: str, ctx: RunContext) -> StageFailure:
    lowered = message.lower()
    if clock := clock_refusal(message):
        return StageFailure(f"the server at {ctx.settings.ws_url} refused the token: {clock} ({message})", CLOCK_FIX,
                            Kind.CLOCK)  # fmt: skip
    if "401" in lowered or "unauthorized" in lowered or "invalid token" in lowered:
        return StageFailure(
            f"the server at {ctx.settings.ws_url} refused the token ({message})",
            KEY_FIX + "; and mint a fresh token (an expired one is refused too)",
            Kind.AUTH,
        )
    return StageFailure(f"rtc connect to {ctx.settings.ws_url} failed: {message}", ICE_FIX, Kind.MEDIA)
