"""The signed-webhook receiver: `POST /api/webhooks/livekit`.

Every request is verified with livekit-api's WebhookReceiver (JWT signed with the webhook key's secret,
its `sha256` claim equal to the hash of the raw body). Only verified events reach the handlers, and each
event id only once. Reads are bounded in size and time, so a slow or hostile sender cannot hold the receiver.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import jwt
import structlog
from aiohttp import web
from google.protobuf.json_format import ParseError
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
RECEIVER_KEY = web.AppKey("webhook_receiver", api.WebhookReceiver)

log = structlog.get_logger("backend.webhook_receiver")


@dataclass
class DeliveryStats:
    """What the receiver saw: verified events handled, duplicates answered 200 without handling, refusals."""

    handled: int = 0
    duplicates: int = 0
    refused: int = 0
    duplicates_by_room: Counter[str] = field(default_factory=Counter)


STATS_KEY = web.AppKey("webhook_stats", DeliveryStats)


class RecentIds:
    """Event ids seen within DEDUPE_WINDOW seconds (oldest first, pruned as it goes)."""

    def __init__(self, window: float = DEDUPE_WINDOW) -> None:
        self.window = window
        self._seen: OrderedDict[str, float] = OrderedDict()

    def first_time(self, event_id: str, now: float) -> bool:
        while self._seen and next(iter(self._seen.values())) < now - self.window:
            self._seen.popitem(last=False)
        if event_id in self._seen:
            return False
        self._seen[event_id] = now
        return True


RECENT_KEY = web.AppKey("webhook_recent_ids", RecentIds)


def add_webhook_route(app: web.Application, settings: Settings) -> list[EventHandler]:
    """Mount the receiver on `app`; append handlers to the returned list to get verified events."""
    app[RECEIVER_KEY] = api.WebhookReceiver(api.TokenVerifier(settings.api_key, settings.api_secret))
    app[HANDLERS_KEY] = []
    app[STATS_KEY] = DeliveryStats()
    app[RECENT_KEY] = RecentIds()
    app.router.add_post(WEBHOOK_PATH, _receive)
    return app[HANDLERS_KEY]


async def _receive(request: web.Request) -> web.Response:
    auth = request.headers.get("Authorization", "")
    if not auth:
        return _reject(request, 401, "missing Authorization header")
    if (request.content_length or 0) > MAX_BODY_BYTES:
        return _reject(request, 413, f"body of {request.content_length} bytes: more than {MAX_BODY_BYTES}", close=True)
    try:
        async with asyncio.timeout(BODY_READ_TIMEOUT):
            raw = await request.read()
    except TimeoutError:
        return _reject(request, 408, f"body not received within {BODY_READ_TIMEOUT:.0f} s", close=True)
    try:
        event = request.app[RECEIVER_KEY].receive(raw.decode("utf-8"), auth)
    except UnicodeDecodeError:
        return _reject(request, 400, "body is not UTF-8")
    except ParseError:
        return _reject(request, 400, "signed body is not a webhook event")
    except Exception as exc:  # the SDK raises plain Exceptions and jwt errors for every verification failure
        return _reject(request, 401, f"verification failed: {exc}")
    if (validity := _validity(auth)) > MAX_TOKEN_VALIDITY:
        return _reject(request, 401, f"token valid for {validity:.0f} s, more than {MAX_TOKEN_VALIDITY:.0f} s")
    return await _handle_once(request, event)


async def _handle_once(request: web.Request, event: api.WebhookEvent) -> web.Response:
    stats = request.app[STATS_KEY]
    if not request.app[RECENT_KEY].first_time(event.id, time.monotonic()):
        stats.duplicates += 1
        stats.duplicates_by_room[event.room.name] += 1
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
