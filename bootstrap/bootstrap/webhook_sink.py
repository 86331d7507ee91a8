"""The backend's webhook receiver, run in-process on the webhook port, collecting verified events."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from aiohttp import web
from aiohttp.typedefs import Handler
from livekit import api

from backend.app import create_app
from backend.settings import Settings
from backend.webhook_receiver import STATS_KEY

EventPredicate = Callable[[api.WebhookEvent], bool]


class WebhookSink:
    """Serves POST /api/webhooks/livekit (verification is the backend's) and records what passed it."""

    def __init__(self, settings: Settings, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.events: list[api.WebhookEvent] = []
        self.arrived_at: dict[str, float] = {}  # event id -> time.monotonic() when it was verified here
        self._by_room: dict[str, list[api.WebhookEvent]] = {}  # load mode asks per room, thousands of times
        self.received = 0  # every POST to the receiver, verified or not
        self._changed = asyncio.Condition()
        app, handlers = create_app(settings)
        self._app = app
        app.middlewares.append(self._count)
        handlers.append(self._record)
        # A short shutdown: the server holds keep-alive connections open, which would stall cleanup.
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)

    @web.middleware
    async def _count(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method == "POST":
            self.received += 1
        return await handler(request)

    async def _record(self, event: api.WebhookEvent) -> None:
        async with self._changed:
            self.arrived_at[event.id] = time.monotonic()
            self.events.append(event)
            self._by_room.setdefault(event.room.name, []).append(event)
            self._changed.notify_all()

    async def start(self) -> None:
        await self._runner.setup()
        # SO_REUSEADDR (aiohttp's default) lets a new run bind while the last run's connections close;
        # on Linux it never lets two listeners share the port.
        await web.TCPSite(self._runner, self.host, self.port).start()

    async def stop(self) -> None:
        await self._runner.cleanup()

    @property
    def duplicates_by_room(self) -> dict[str, int]:
        """Copies of an already handled event the receiver answered 200 without handling, per room."""
        return dict(self._app[STATS_KEY].duplicates_by_room)

    def for_room(self, room: str) -> list[api.WebhookEvent]:
        return list(self._by_room.get(room, ()))

    async def wait_until(self, done: Callable[[], bool]) -> None:
        """Return once `done()` holds; callers bound the wait with asyncio.timeout."""
        async with self._changed:
            await self._changed.wait_for(done)
