"""The signed-webhook receiver: `POST /api/webhooks/livekit`.

Every request is verified as livekit-api's WebhookReceiver does (JWT signed with the webhook key's secret,
its `sha256` claim equal to the hash of the raw body), the token before any of the body is read. Only verified
events reach the handlers, and each event id only once. Reads are bounded in size and time, and the memory of
seen ids in count and size, so a slow or hostile sender cannot hold or grow the receiver.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import jwt
import structlog
from aiohttp import web
from google.protobuf.json_format import Parse, ParseError
from livekit import api

from backend.settings import Settings

WEBHOOK_PATH = "/api/webhooks/livekit"
# livekit-server's events are a few KB (a room and a participant with their tracks); 64 KiB is generous.
MAX_BODY_BYTES = 64 * 1024
BODY_READ_TIMEOUT = 5.0  # seconds for the whole body: the server sends it at once
# livekit-server signs each delivery with a token valid for 5 minutes (livekit/protocol webhook/url_notifier.go:
# SetValidFor(5 * time.Minute)). A longer window is no token the server made: refused. Twice that allows skew.
MAX_TOKEN_VALIDITY = 600.0
# The server retries a failed delivery (connection error, 5xx) with the same event id, with backoff (go-retryablehttp:
# 4 retries, 1-30 s apart), and drops events queued over 30 s. Every copy of an event carries a token of at most
# MAX_TOKEN_VALIDITY, so remembering ids that long catches every duplicate a valid token can carry; in memory,
# since one receiver process is this service's shape (a fleet would share this in Redis).
DEDUPE_WINDOW = MAX_TOKEN_VALIDITY

EventHandler = Callable[[api.WebhookEvent], Awaitable[None]]
HANDLERS_KEY = web.AppKey("webhook_handlers", list[EventHandler])
VERIFIER_KEY = web.AppKey("webhook_token_verifier", api.TokenVerifier)

log = structlog.get_logger("backend.webhook_receiver")


# The memory of what was seen is bounded in count and size, not only in time: a sender holding the key could
# otherwise grow it without limit with fresh ids. LiveKit's event ids are "EV_" + 12 characters: a longer id
# (a body may hold 64 KiB) is refused. 10,000 ids cover what a `--load 50` run delivers (150 events) many times
# over; when full, the oldest id is forgotten (a copy of it arriving later would be handled again).
MAX_EVENT_ID_BYTES = 64
MAX_RECENT_IDS = 10_000
# Duplicates are counted per room for as long as ids are remembered (DEDUPE_WINDOW), for at most this many
# rooms, each name cut at livekit-server's default limit.max_room_name_length (256 characters).
MAX_DUPLICATE_ROOMS = 1_000
MAX_ROOM_NAME_CHARS = 256


class RecentIds:
    """Event ids seen within `window` seconds, at most `max_entries` of them (oldest first, pruned as it goes).
    `len()` and `.bytes` (the ids' UTF-8 size) are its own counters of what it holds."""

    def __init__(self, window: float = DEDUPE_WINDOW, max_entries: int = MAX_RECENT_IDS) -> None:
        self.window, self.max_entries = window, max_entries
        self._seen: OrderedDict[str, float] = OrderedDict()
        self.bytes = 0
        self.forgotten_early = 0  # ids dropped because the memory was full, before their window ended

    def __len__(self) -> int:
        return len(self._seen)

    def first_time(self, event_id: str, now: float) -> bool:
        if len(event_id.encode()) > MAX_EVENT_ID_BYTES:
            raise ValueError(f"event id of {len(event_id.encode())} bytes: more than {MAX_EVENT_ID_BYTES}")
        while self._seen and next(iter(self._seen.values())) < now - self.window:
            self._forget_oldest()
        if event_id in self._seen:
            return False
        while len(self._seen) >= self.max_entries:
            self._forget_oldest()
            self.forgotten_early += 1
        self._seen[event_id] = now
        self.bytes += len(event_id.encode())
        return True

    def _forget_oldest(self) -> None:
        event_id, _ = self._seen.popitem(last=False)
        self.bytes -= len(event_id.encode())


class RoomCounts:
    """Duplicates per room within `window` seconds of the room's last one, for at most `max_rooms` rooms (the
    least recently counted forgotten first), names cut at MAX_ROOM_NAME_CHARS; `len()` and `.bytes` as above."""

    def __init__(self, window: float = DEDUPE_WINDOW, max_rooms: int = MAX_DUPLICATE_ROOMS) -> None:
        self.window, self.max_rooms = window, max_rooms
        self._counts: OrderedDict[str, tuple[int, float]] = OrderedDict()  # room -> (count, last time)
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._counts)

    def add(self, room: str, now: float) -> None:
        room = room[:MAX_ROOM_NAME_CHARS]
        self._prune(now)
        count, _ = self._counts.pop(room, (0, now))
        if not count:
            while len(self._counts) >= self.max_rooms:
                self._forget_oldest()
            self.bytes += len(room.encode())
        self._counts[room] = (count + 1, now)

    def counts(self, now: float) -> dict[str, int]:
        self._prune(now)
        return {room: count for room, (count, _) in self._counts.items()}

    def _prune(self, now: float) -> None:
        while self._counts and next(iter(self._counts.values()))[1] < now - self.window:
            self._forget_oldest()

    def _forget_oldest(self) -> None:
        room, _ = self._counts.popitem(last=False)
        self.bytes -= len(room.encode())


@dataclass
class DeliveryStats:
    """What the receiver saw: verified events handled, duplicates answered 200 without handling, refusals."""

    handled: int = 0
    duplicates: int = 0
    refused: int = 0
    duplicates_by_room: RoomCounts = field(default_factory=RoomCounts)


STATS_KEY = web.AppKey("webhook_stats", DeliveryStats)


RECENT_KEY = web.AppKey("webhook_recent_ids", RecentIds)


def add_webhook_route(app: web.Application, settings: Settings) -> list[EventHandler]:
    """Mount the receiver on `app`; append handlers to the returned list to get verified events."""
    app[VERIFIER_KEY] = api.TokenVerifier(settings.api_key, settings.api_secret)
    app[HANDLERS_KEY] = []
    app[STATS_KEY] = DeliveryStats()
    app[RECENT_KEY] = RecentIds()
    app.router.add_post(WEBHOOK_PATH, _receive)
    return app[HANDLERS_KEY]


async def _receive(request: web.Request) -> web.Response:
    """The token first, from the headers alone (signature, issuer, `exp`, validity), then the body: an unsigned
    or expired request is answered before a byte of its body is read (and its connection closed)."""
    auth = request.headers.get("Authorization", "")
    if not auth:
        return _reject(request, 401, "missing Authorization header", close=True)
    try:
        # As livekit-api's WebhookReceiver.receive does, in two halves: TokenVerifier.verify checks the JWT
        # (HS256 with the secret, issuer = the key, `exp` required), then its sha256 claim must hash the body.
        claims = request.app[VERIFIER_KEY].verify(auth)
        expected = base64.b64decode(claims.sha256, validate=True) if claims.sha256 else b""
    except Exception as exc:  # jwt errors, ValueError, binascii.Error: every way a token can be bad
        return _reject(request, 401, f"verification failed: {exc}", close=True)
    if not expected:
        return _reject(request, 401, "verification failed: sha256 was not found in the token", close=True)
    if (validity := _validity(auth)) > MAX_TOKEN_VALIDITY:
        reason = f"token valid for {validity:.0f} s, more than {MAX_TOKEN_VALIDITY:.0f} s"
        return _reject(request, 401, reason, close=True)
    if (request.content_length or 0) > MAX_BODY_BYTES:
        return _reject(request, 413, f"body of {request.content_length} bytes: more than {MAX_BODY_BYTES}", close=True)
    try:
        async with asyncio.timeout(BODY_READ_TIMEOUT):
            raw = await request.read()
    except TimeoutError:
        return _reject(request, 408, f"body not received within {BODY_READ_TIMEOUT:.0f} s", close=True)
    if not hmac.compare_digest(hashlib.sha256(raw).digest(), expected):
        return _reject(request, 401, "verification failed: hash mismatch")
    try:
        event = Parse(raw.decode("utf-8"), api.WebhookEvent(), ignore_unknown_fields=True)
    except UnicodeDecodeError:
        return _reject(request, 400, "body is not UTF-8")
    except ParseError:
        return _reject(request, 400, "signed body is not a webhook event")
    return await _handle_once(request, event)


async def _handle_once(request: web.Request, event: api.WebhookEvent) -> web.Response:
    stats, now = request.app[STATS_KEY], time.monotonic()
    try:
        first = request.app[RECENT_KEY].first_time(event.id, now)
    except ValueError as exc:  # an id no server makes, too long to remember
        return _reject(request, 400, str(exc))
    if not first:
        stats.duplicates += 1
        stats.duplicates_by_room.add(event.room.name, now)
        log.info("webhook duplicate", webhook_event=event.event, id=event.id)
        return web.Response(text="duplicate")  # 200: the sender must not retry it
    stats.handled += 1
    log.info("webhook verified", webhook_event=event.event, room=event.room.name, id=event.id)
    for handler in request.app[HANDLERS_KEY]:
        await handler(event)
    return web.Response(text="ok")


def _validity(auth: str) -> float:
    """Seconds the (already verified) token is valid for: from its not-before (or issued-at) to its expiry."""
    claims = jwt.decode(auth, options={"verify_signature": False})
    start = claims.get("nbf", claims.get("iat"))
    return float("inf") if start is None or "exp" not in claims else float(claims["exp"]) - float(start)


def _reject(request: web.Request, status: int, reason: str, *, close: bool = False) -> web.Response:
    """Refuse, say why; `close` ends the connection instead of draining a body we will not read."""
    request.app[STATS_KEY].refused += 1
    log.warning("webhook rejected", status=status, reason=reason)
    return web.Response(status=status, text=reason, headers={"Connection": "close"} if close else None)
