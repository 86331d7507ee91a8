"""The backend's aiohttp application: webhook receiver and a health endpoint."""

from __future__ import annotations

from aiohttp import web

from backend.settings import Settings
from backend.webhook_receiver import MAX_BODY_BYTES, EventHandler, add_webhook_route


async def _healthz(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def create_app(settings: Settings) -> tuple[web.Application, list[EventHandler]]:
    """The app and its list of webhook handlers (append to it to receive verified events)."""
    app = web.Application(client_max_size=MAX_BODY_BYTES)  # also bounds a chunked body, which declares no length
    handlers = add_webhook_route(app, settings)
    app.router.add_get("/healthz", _healthz)
    return app, handlers
