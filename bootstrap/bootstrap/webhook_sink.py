"""The backend's webhook receiver, run in-process on the webhook port, collecting verified events."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

from aiohttp import web
from aiohttp.typedefs import Handler
from livekit import api

from backend.app import create_app
from backend.serving import Listener
from backend.settings import Settings
from backend.webhook_receiver import MAX_RECENT_IDS, STATS_KEY

EventPredicate = Callable[[api.WebhookEvent], bool]


class WebhookSink:
    """Serves POST /api/webhooks/livekit (verification is the backend's) and records what passed it: the last
    `max_events` verified events (as many as the receiver remembers ids; older ones are forgotten)."""

    def __init__(self, settings: Settings, host: str, port: int, max_events: int = MAX_RECENT_IDS) -> None:
        self.host, self.port, self.max_events = host, port, max_events
        self.events: deque[api.WebhookEvent] = deque()
        self.arrived_at: dict[str, float] = {}  # event id -> time.monotonic() when it was verified here
        self._by_room: dict[str, deque[api.WebhookEvent]] = {}  # load mode asks per room, thousands of times
        self.received = 0  # every POST to the receiver, verified or not
        self._changed = asyncio.Condition()
        app, handlers = create_app(settings)
        self._app = app
        app.middlewares.append(self._count)
        handlers.append(self._record)
        # Connections capped, headers and idle keep-alive bounded (backend.serving), and a short shutdown.
        self._listener = Listener(app, host, port, shutdown_timeout=1.0)

    @web.middleware
    async def _count(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method == "POST":
            self.received += 1
        return await handler(request)

    async def _record(self, event: api.WebhookEvent) -> None:
        async with self._changed:
            self.arrived_at[event.id] = time.monotonic()
            self.events.append(event)
            self._by_room.setdefault(event.room.name, deque()).append(event)
            while len(self.events) > self.max_events:
                self._forget(self.events.popleft())
            self._changed.notify_all()

    def _forget(self, event: api.WebhookEvent) -> None:
        """The oldest event: out of its room's list (where it is the first) and the arrival times."""
        room = self._by_room[event.room.name]
        room.popleft()
        if not room:
            del self._by_room[event.room.name]
        self.arrived_at.pop(event.id, None)

    async def start(self) -> None:
        await self._listener.start()
        self.port = self._listener.port  # the one chosen when asked for port 0

    async def stop(self) -> None:
        await self._listener.stop()

    @property
    def duplicates_by_room(self) -> dict[str, int]:
        """Copies of an already handled event the receiver answered 200 without handling, per room (rooms with
        a duplicate in the receiver's dedupe window)."""
        return self._app[STATS_KEY].duplicates_by_room.counts(time.monotonic())

    def for_room(self, room: str) -> list[api.WebhookEvent]:
        return list(self._by_room.get(room, ()))

    async def wait_until(self, done: Callable[[], bool]) -> None:
        """Return once `done()` holds; callers bound the wait with asyncio.timeout."""
        async with self._changed:
            await self._changed.wait_for(done)
