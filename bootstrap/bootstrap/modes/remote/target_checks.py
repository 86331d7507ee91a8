"""The remote mode's own stages: what a deployment elsewhere offers before any data plane runs.

  - endpoint: the name resolves (its addresses), the port connects, TLS verifies (the system store or --ca-file:
    chain, name, days to expiry), GET / answers 200 (406: the node is not ready); ws:// to a host that is not
    this machine is warned (the token and media keys cross the network in the clear);
  - keys: the server's clock against ours (its HTTP Date header), and a token probe that tells a key or secret
    the server refuses from a token outside its validity window (a clock off);
  - offer: what the join was offered: the ICE servers (STUN, TURN over UDP, TURN over TLS), the server's own
    candidates (no ICE/TCP candidate warned), the server's version, region and node.
Every figure goes to the run's `target` object (RemoteState.evidence), secrets never (the server's 401 body echoes
the whole token; the join response carries TURN credentials: only the servers' URLs are kept)."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import re
import socket
import ssl
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import aiohttp
from cryptography import x509
from livekit import api

from bootstrap import token_probe
from bootstrap.context import RunContext
from bootstrap.ice import JOIN_RESPONSE, Offered, OfferRecorder
from bootstrap.result import Kind, StageFailure, StageWarning
from bootstrap.stages import join
from bootstrap.token_probe import LEEWAY_S

CONNECT_TIMEOUT = 3.0  # per attempt: a deployment's port answers in milliseconds, a dropped SYN never
EXPIRY_WARN_DAYS = 14
CLOCK_WARN_S = 5.0  # the Date header has a resolution of 1 s: below this a skew is noise
SERVER_INFO = re.compile(r'\b(version|region|node_id): "([^"]*)"')


@dataclass
class RemoteState:
    """What --url, --ca-file and --webhook-listen say, and what the stages measured (the report's `target`)."""

    url: str
    ca_file: Path | None = None
    evidence: dict[str, Any] = field(default_factory=dict)
    server_date: datetime | None = None  # the server's Date header, and our clock when it came
    local_date: datetime | None = None
    offered: Offered = field(default_factory=Offered)
    session: aiohttp.ClientSession | None = None
    server_info: dict[str, str] = field(default_factory=dict)

    @property
    def parsed(self) -> Any:
        return urlparse(self.url)

    @property
    def host(self) -> str:
        return str(self.parsed.hostname or "")

    @property
    def secure(self) -> bool:
        return self.parsed.scheme in ("wss", "https")

    @property
    def port(self) -> int:
        return int(self.parsed.port or (443 if self.secure else 80))

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
        return context


def is_loopback(host: str) -> bool:
    """The host is this machine (localhost or a loopback address)."""
    if host == "localhost":
        return True
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(host).is_loopback
    return False


# --- endpoint ---------------------------------------------------------------------------------------------------


async def run_endpoint(ctx: RunContext, *, state: RemoteState) -> str:
    warnings: list[tuple[str, str, Kind]] = []
    endpoint: dict[str, Any] = {"url": state.url, "host": state.host, "port": state.port}
    state.evidence["endpoint"] = endpoint
    addresses = await _resolve(state, endpoint)
    address = await _connect(state, addresses, endpoint)
    if state.secure:
        if warning := await _verify_tls(state, endpoint):
            warnings.append(warning)
    elif speaks_tls := await _peer_certificate(state):
        endpoint["tls"] = speaks_tls
        raise StageFailure(
            f"{state.url} is ws:// but port {state.port} speaks TLS (it presented a certificate for "
            f"{', '.join(speaks_tls.get('names', [])) or '?'}): a plain WebSocket there gets only an HTTP 400",
            f"use wss://{state.host}{'' if state.port == 443 else f':{state.port}'} (LIVEKIT_URL too)",
            Kind.CONFIG,
        )
    elif not is_loopback(state.host):
        warnings.append((
            f"ws:// to {state.host}, not this machine: tokens and signalling cross the network unencrypted",
            "serve LiveKit behind TLS (a load balancer or proxy with a certificate) and use wss://",
            Kind.CONFIG,
        ))  # fmt: skip
    session = state.session = _session(state)
    ctx.lkapi = api.LiveKitAPI(ctx.settings.http_url, ctx.settings.api_key, ctx.settings.api_secret,
                               session=session, failover=False)  # fmt: skip
    ctx.finalizers.append(session.close)  # after cleanup's room deletion, which uses it
    await _health(ctx, state, session, endpoint)
    await _upgrade(ctx, session, endpoint)
    detail = f"{state.host} → {', '.join(addresses)}; {address}:{state.port} connects"
    detail += f"; TLS verified, {endpoint['tls']['days_left']} days left" if state.secure else ""
    detail += "; GET / 200; the WebSocket upgrade reaches LiveKit"
    if warnings:
        cause, fix, kind = warnings[0]
        raise StageWarning(detail, cause, fix, kind)
    return detail


async def _resolve(state: RemoteState, endpoint: dict[str, Any]) -> list[str]:
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(state.host, state.port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        endpoint["addresses"] = []
        raise StageFailure(
            f"the name {state.host} does not resolve here ({exc.strerror})",
            f"check the URL's host name; give it a DNS record (or a hosts entry) that points at the deployment's "
            f"load balancer, and check this machine's resolver (`getent hosts {state.host}`)",
            Kind.DNS,
        ) from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    endpoint["addresses"] = addresses
    return addresses


async def _connect(state: RemoteState, addresses: list[str], endpoint: dict[str, Any]) -> str:
    errors = []
    for address in addresses:
        started = time.monotonic()
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(address, state.port), CONNECT_TIMEOUT)
        except (OSError, TimeoutError) as exc:
            reason = "no answer" if isinstance(exc, TimeoutError) else _reason(exc)
            errors.append(f"{address}:{state.port} {reason}")
            continue
        writer.close()
        endpoint["tcp_connect_ms"] = round((time.monotonic() - started) * 1000, 1)
        endpoint["connected"] = address
        return address
    endpoint["tcp_errors"] = errors
    raise StageFailure(
        f"nothing accepts TCP at {state.host} port {state.port}: {'; '.join(errors)}",
        f"check the port in the URL ({'443 for wss://' if state.secure else '7880 for ws://'} unless the deployment "
        f"says otherwise), that LiveKit (or its load balancer) listens there, and that no firewall drops it",
        Kind.NETWORK,
    )


def _reason(exc: OSError) -> str:
    """ "connection refused", "no route to host": asyncio's own text names only the address."""
    return os.strerror(exc.errno).lower() if exc.errno else str(exc) or type(exc).__name__


async def _verify_tls(state: RemoteState, endpoint: dict[str, Any]) -> tuple[str, str, Kind] | None:
    """The certificate's evidence (dates, names, issuer) whether or not it verifies; a FAIL when it does not, a
    warning when it expires within EXPIRY_WARN_DAYS."""
    tls: dict[str, Any] = {"trust": str(state.ca_file) if state.ca_file else "system store"}
    endpoint["tls"] = tls
    tls.update(await _peer_certificate(state))
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(state.host, state.port, ssl=state.ssl_context(), server_hostname=state.host),
            CONNECT_TIMEOUT,
        )
        writer.close()
        tls["verified"] = True
    except ssl.SSLCertVerificationError as exc:
        tls["verified"] = False
        tls["error"] = exc.verify_message
        raise _tls_failure(state, exc, tls) from None
    except (ssl.SSLError, OSError, TimeoutError) as exc:
        tls["verified"] = False
        tls["error"] = str(exc) or type(exc).__name__
        raise StageFailure(
            f"no TLS handshake with {state.host}:{state.port}: {tls['error']}",
            "the port must speak TLS for wss:// (a plain ws:// port answers TLS with garbage): check the URL's "
            "scheme and port, and the proxy's TLS listener",
            Kind.TLS,
        ) from None
    days = tls.get("days_left")
    if isinstance(days, int | float) and days < EXPIRY_WARN_DAYS:
        return (
            f"the certificate of {state.host} expires in {days} days ({tls.get('not_after')})",
            "renew it (cert-manager, certbot, or the load balancer's certificate)",
            Kind.TLS,
        )
    return None


def _tls_failure(state: RemoteState, exc: ssl.SSLCertVerificationError, tls: dict[str, Any]) -> StageFailure:
    dates = f"valid {tls.get('not_before')} to {tls.get('not_after')}"
    names = ", ".join(tls.get("names", [])) or "none"
    issuer = tls.get("issuer", "?")
    trust = f"--ca-file {state.ca_file}" if state.ca_file else "this machine's trust store"
    code = exc.verify_code
    if code == 10:  # X509_V_ERR_CERT_HAS_EXPIRED
        return StageFailure(
            f"the certificate of {state.host} expired {-int(tls.get('days_left', 0))} days ago ({dates})",
            "renew the certificate where TLS ends (the load balancer, ingress or proxy), e.g. cert-manager/certbot",
            Kind.TLS,
        )
    if code == 9:  # X509_V_ERR_CERT_NOT_YET_VALID
        return StageFailure(
            f"the certificate of {state.host} is not valid yet ({dates}): this machine's clock, or a certificate "
            f"issued for the future",
            "sync this machine's clock (NTP), or reissue the certificate",
            Kind.TLS,
        )
    if code == 62:  # X509_V_ERR_HOSTNAME_MISMATCH
        return StageFailure(
            f"the certificate at {state.host}:{state.port} is for {names}, not {state.host} ({dates})",
            f"serve a certificate whose subjectAltName lists {state.host} (or use the name it was issued for)",
            Kind.TLS,
        )
    if code in (18, 19, 20, 21):  # self-signed, self-signed in chain, issuer unknown, unable to verify the leaf
        return StageFailure(
            f"the certificate of {state.host} (issued by {issuer!r}, {dates}) does not chain to a CA in {trust}: "
            f"{exc.verify_message}",
            "serve the full chain from a CA clients trust; for a private CA, pass its certificate with --ca-file "
            "(and give it to every client)",
            Kind.TLS,
        )
    return StageFailure(
        f"the certificate of {state.host} does not verify against {trust}: {exc.verify_message} ({dates}, names "
        f"{names})",
        "serve a valid certificate chain for this name",
        Kind.TLS,
    )


async def _peer_certificate(state: RemoteState) -> dict[str, Any]:
    """The certificate the server presents, read without verifying it (the evidence a FAIL shows)."""
    insecure = ssl.create_default_context()
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(state.host, state.port, ssl=insecure, server_hostname=state.host), CONNECT_TIMEOUT
        )
    except (OSError, TimeoutError, ssl.SSLError):
        return {}
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    finally:
        writer.close()
    return _describe(der) if der else {}


def _describe(der: bytes) -> dict[str, Any]:
    """The certificate's names, issuer and dates, decoded whether or not it verified (the standard library
    decodes only a verified peer's)."""
    cert = x509.load_der_x509_certificate(der)
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns_names = names.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        dns_names = []
    issuer = cert.issuer.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    not_after = cert.not_valid_after_utc
    return {
        "names": dns_names,
        "issuer": str(issuer[0].value) if issuer else "",
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": not_after.isoformat(),
        "days_left": round((not_after - datetime.now(UTC)).total_seconds() / 86400, 1),
    }


def _session(state: RemoteState) -> aiohttp.ClientSession:
    """The run's HTTP session to the target (the API, the probes), trusting what the endpoint check trusted."""
    connector = aiohttp.TCPConnector(ssl=state.ssl_context() if state.secure else False)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=5.0))


async def _health(
    ctx: RunContext, state: RemoteState, session: aiohttp.ClientSession, endpoint: dict[str, Any]
) -> None:
    url = ctx.settings.http_url.rstrip("/") + "/"
    try:
        async with session.get(url) as response:
            body = (await response.text())[:80]
            state.local_date = datetime.now(UTC)
            date = response.headers.get("Date")
    except aiohttp.ClientError as exc:
        raise StageFailure(
            f"GET {url} failed after the TLS check passed: {type(exc).__name__}: {exc}",
            "check the proxy in front of LiveKit forwards HTTP to its port 7880",
            Kind.NETWORK,
        ) from None
    endpoint["health"] = {"status": response.status, "body": body.strip()}
    if date:
        with contextlib.suppress(TypeError, ValueError):
            state.server_date = parsedate_to_datetime(date)
    if response.status == 406:
        raise StageFailure(
            f"GET {url} answered 406 {body.strip()!r}: the node is up but NOT READY (its stats are stale: "
            f"usually it has lost its Redis)",
            "check the node's Redis (reachable, not out of memory) and the node's log; a load balancer should route "
            "away from a node answering 406",
            Kind.NOT_READY,
        )
    if response.status != 200:
        raise StageFailure(
            f"GET {url} answered {response.status} {body.strip()!r}, not LiveKit's 200 'OK'",
            "the URL reaches something that is not LiveKit (a default backend, an auth proxy): point the proxy's "
            "route for this host at LiveKit's port 7880",
            Kind.CONFIG,
        )


async def _upgrade(ctx: RunContext, session: aiohttp.ClientSession, endpoint: dict[str, Any]) -> None:
    """A WebSocket handshake on /rtc with no token: LiveKit sees the upgrade and asks for a token (401); a proxy
    that drops the Upgrade or Connection header hands it a plain GET, which it answers 404. Nothing joins."""
    url = ctx.settings.ws_url.rstrip("/") + "/rtc"
    try:
        async with session.ws_connect(url, timeout=aiohttp.ClientWSTimeout(ws_close=2.0)):
            status = 101  # upgraded without a token: not LiveKit's way, but the upgrade itself passed
    except aiohttp.WSServerHandshakeError as exc:
        status = exc.status
    except aiohttp.ClientError as exc:
        raise StageFailure(
            f"the WebSocket handshake on {url} failed: {type(exc).__name__}: {exc}",
            "check the proxy in front of LiveKit passes WebSocket connections",
            Kind.NETWORK,
        ) from None
    endpoint["upgrade"] = {"path": "/rtc", "status": status}
    if status == 404:
        raise StageFailure(
            f"a WebSocket upgrade on {url} is answered 404 while GET / answers 200: the proxy in front of LiveKit "
            "does not pass the upgrade (it drops the Upgrade/Connection headers), so no client or agent can connect",
            "pass the upgrade on every path (nginx: `proxy_http_version 1.1; proxy_set_header Upgrade $http_upgrade; "
            'proxy_set_header Connection "upgrade";`; a cloud load balancer: enable WebSockets)',
            Kind.CONFIG,
        )
    if status not in (101, 401):
        raise StageFailure(
            f"a WebSocket upgrade on {url} is answered {status}, not LiveKit's 401 (token required)",
            "check the proxy's route for /rtc and /agent reaches LiveKit's port 7880 with the upgrade passed",
            Kind.CONFIG,
        )


# --- keys and clock ---------------------------------------------------------------------------------------------


async def run_keys(ctx: RunContext, *, state: RemoteState) -> str:
    keys: dict[str, Any] = {"api_key": ctx.settings.api_key}
    clock: dict[str, Any] = {"leeway_s": LEEWAY_S}
    state.evidence.update(keys=keys, clock=clock)
    assert state.session is not None  # made by the endpoint stage, a prerequisite
    settings = ctx.settings
    verdict = await token_probe.probe(state.session, settings.http_url, settings.api_key, settings.api_secret,
                                      ctx.room_name)  # fmt: skip
    keys["probe"] = verdict.fresh.as_dict()
    if verdict.wide is not None:
        keys["wide_window_probe"] = verdict.wide.as_dict()
    skew = _skew(state, clock, verdict.fresh.skew_s)
    keys["accepted"] = verdict.accepted or verdict.clock
    if verdict.clock:
        raise StageFailure(token_probe.clock_cause(verdict), _clock_fix(), Kind.CLOCK)
    if verdict.fresh.status == 401:
        raise _key_failure(ctx, (verdict.wide or verdict.fresh).said)
    if not verdict.accepted:
        raise StageFailure(
            f"the token probe (ListRooms for this run's room only) answered {verdict.fresh.status}: "
            f"{verdict.fresh.said}",
            "check the key's permissions (roomList, roomAdmin, roomCreate, roomJoin) and the server's log",
            Kind.AUTH if verdict.fresh.status == 403 else Kind.CONFIG,
        )
    detail = f"key {ctx.settings.api_key!r} accepted; clock skew {_signed(skew)} (server Date header)"
    if skew is None:
        return detail
    if skew < -CLOCK_WARN_S:  # ours ahead, within the leeway (a token refused for it failed above)
        ahead = f"this machine's clock is {-skew:.0f} s ahead of the server's: tokens minted here pass only thanks"
        raise StageWarning(detail, f"{ahead} to the server's {LEEWAY_S} s leeway", _clock_fix(), Kind.CLOCK)
    if skew > CLOCK_WARN_S:
        shortest = max(0, int(skew) - LEEWAY_S)
        clock["shortest_failing_ttl_s"] = shortest
        raise StageWarning(
            detail,
            f"this machine's clock is {skew:.0f} s behind the server's: tokens minted here live {skew:.0f} s less "
            f"there, and any with a lifetime of {shortest} s or less is refused as expired",
            _clock_fix(),
            Kind.CLOCK,
        )
    return detail


def _signed(skew: float | None) -> str:
    return "unknown (no Date header)" if skew is None else f"{skew:+.1f} s"


def _skew(state: RemoteState, clock: dict[str, Any], measured: float | None) -> float | None:
    """The server's clock minus ours, in seconds (positive: ours is behind), from the probe's Date header; the
    endpoint stage's GET / dates as evidence."""
    if state.server_date is not None and state.local_date is not None:
        clock.update(server_date=state.server_date.isoformat(), local_date=state.local_date.isoformat())
    clock["skew_s"] = measured
    return measured


def _clock_fix() -> str:
    return ("sync this machine's clock with NTP (`timedatectl set-ntp true`, chrony) — and the server's; the skew is "
            "measured from the server's HTTP Date header")  # fmt: skip


def _key_failure(ctx: RunContext, said: str) -> StageFailure:
    key = ctx.settings.api_key
    if "invalid api key" in said.lower():
        return StageFailure(
            f"the server does not know the API key {key!r} (it said: {said})",
            "set LIVEKIT_API_KEY to a key listed under `keys:` in the deployment's config (or its key file / "
            "Kubernetes secret), with its secret in LIVEKIT_API_SECRET",
            Kind.AUTH,
        )
    return StageFailure(
        f"the server knows the key {key!r} but refused the signature even of a token valid 3 h either side of now: "
        f"LIVEKIT_API_SECRET is not that key's secret (it said: {said})",
        f"set LIVEKIT_API_SECRET to the secret paired with {key!r} in the deployment's `keys:`",
        Kind.AUTH,
    )


# --- join (recording the offer) and what the server offers ------------------------------------------------------


class _OfferTap(logging.Filter):
    """On the `livekit` logger for the rest of the run: the SDK's debug records feed the recorder and go nowhere
    else (they carry TURN credentials); records at the level the logger had before pass as they did."""

    def __init__(self, recorder: OfferRecorder, info: dict[str, str], level: int) -> None:
        super().__init__()
        self.recorder, self.info, self.level = recorder, info, level

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.DEBUG:
            return record.levelno >= self.level
        self.recorder.emit(record)
        message = record.getMessage()
        if JOIN_RESPONSE in message:
            for key, value in SERVER_INFO.findall(message):
                self.info.setdefault(key, value)
        return False


async def run_join(ctx: RunContext, *, state: RemoteState) -> str:
    """The shared join, the SDK's offer recorded from its first signal to the run's end (the publisher's
    candidates trickle when the media stage publishes)."""
    sdk = logging.getLogger("livekit")
    recorder, level = OfferRecorder(), sdk.getEffectiveLevel()
    recorder.offered = state.offered
    tap = _OfferTap(recorder, state.server_info, level)
    sdk.addFilter(tap)
    sdk.setLevel(logging.DEBUG)
    os.environ["LIVEKIT_RTC_DEBUG"] = "1"

    async def untap() -> None:
        os.environ.pop("LIVEKIT_RTC_DEBUG", None)
        sdk.setLevel(level)
        sdk.removeFilter(tap)

    ctx.finalizers.append(untap)
    return await join.run(ctx)


def offer_evidence(state: RemoteState) -> dict[str, Any]:
    """What the server offered this client: its ICE servers by kind, the TURN domains, its candidates."""
    urls = list(dict.fromkeys(state.offered.ice_servers))  # the join response and its resends repeat them
    return {
        "server": state.server_info,
        "ice_servers": {
            "stun": [u for u in urls if u.startswith("stun:")],
            "turn_udp": [u for u in urls if u.startswith("turn:") and "transport=tcp" not in u],
            "turn_tcp": [u for u in urls if u.startswith("turn:") and "transport=tcp" in u],
            "turn_tls": [u for u in urls if u.startswith("turns:")],
        },
        "turn_domains": sorted({u.split(":")[1] for u in urls if u.startswith(("turn:", "turns:"))}),
        "candidates": [str(c) for c in state.offered.candidates],
    }


async def run_offer(ctx: RunContext, *, state: RemoteState) -> str:
    """After the media stage: the candidates the server offered for both directions are in by then."""
    offer = state.evidence["offer"] = offer_evidence(state)
    servers, candidates = offer["ice_servers"], offer["candidates"]
    server = ", ".join(f"{k} {v}" for k, v in state.server_info.items() if v) or "server info not seen"
    count = sum(len(urls) for urls in servers.values())
    detail = (f"{server}; {count} ICE server URL(s) (TURN/UDP {len(servers['turn_udp'])}, TURN/TLS "
              f"{len(servers['turn_tls'])}); candidates: {', '.join(candidates) or 'none seen'}")  # fmt: skip
    if state.offered.candidates and not any(c.protocol == "tcp" for c in state.offered.candidates):
        raise StageWarning(
            detail,
            "the server offers no ICE/TCP candidate: a client whose UDP is blocked has only TURN left",
            "set rtc.tcp_port (e.g. 7881) in the server's config and open it on the load balancer/firewall",
            Kind.CONFIG,
        )
    return detail
