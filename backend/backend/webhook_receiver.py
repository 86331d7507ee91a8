"""The signed-webhook receiver: `POST /api/webhooks/livekit`.

Every request is verified with livekit-api's WebhookReceiver (JWT signed with the webhook key's secret,
its `sha256` claim equal to the hash of the raw body). Only verified events reach the handlers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web
from google.protobuf.json_format import ParseError
from livekit import api

from backend.settings import Settings

WEBHOOK_PATH = "/api/webhooks/livekit"
EventHandler = Callable[[api.WebhookEvent], Awaitable[None]]
HANDLERS_KEY = web.AppKey("webhook_handlers", list[EventHandler])
RECEIVER_KEY = web.AppKey("webhook_receiver", api.WebhookReceiver)

log = structlog.get_logger("backend.webhook_receiver")


def add_webhook_route(app: web.Application, settings: Settings) -> list[EventHandler]:
    """Mount the receiver on `app`; append handlers to the returned list to get verified events."""
    app[RECEIVER_KEY] = api.WebhookReceiver(api.TokenVerifier(settings.api_key, settings.api_secret))
    app[HANDLERS_KEY] = []
    app.router.add_post(WEBHOOK_PATH, _receive)
    return app[HANDLERS_KEY]


async def _receive(request: web.Request) -> web.Response:
    auth = request.headers.get("Authorization", "")
    if not auth:
        return _reject(401, "missing Authorization header")
    raw = await request.read()
    try:
        body = raw.decode("utf-8")
    except UnicodeDecodeError:
        return _reject(400, "body is not UTF-8")
    try:
        event = request.app[RECEIVER_KEY].receive(body, auth)
    except ParseError:
        return _reject(400, "signed body is not a webhook event")
    except Exception as exc:  # the SDK raises plain Exceptions and jwt errors for every verification failure
        return _reject(401, f"verification failed: {exc}")
    log.info("webhook verified", webhook_event=event.event, room=event.room.name, id=event.id)
    for handler in request.app[HANDLERS_KEY]:
        await handler(event)
    return web.Response(text="ok")


def _reject(status: int, reason: str) -> web.Response:
    log.warning("webhook rejected", status=status, reason=reason)
    return web.Response(status=status, text=reason)
