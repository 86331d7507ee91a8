"""The machine's one webhook receiver for test sessions: `python -m livekit_harness_pytest.webhook_hub`.

livekit-server posts every webhook to ONE URL (docker/livekit.yaml: 127.0.0.1:8000), but several pytest sessions
(xdist workers, pytester's inner sessions, a colleague's run) may want their rooms' events at once. So the first
session that needs webhooks starts this process, detached; every session (that one included) takes a lease and
reads its rooms' events from it over loopback:

- `POST /api/webhooks/livekit`: the backend's own receiver (backend.app: signature verified, duplicates dropped);
  each verified event is kept under its room (the last MAX_ROOMS rooms, MAX_EVENTS_PER_ROOM each);
- `GET /lkh/hub`: {"hub": HUB_NAME, "pid": …}, how a session recognises it (anything else on the port is not it);
- `POST /lkh/leases` {"pid", "start", "boot"} -> {"lease": id}; `DELETE /lkh/leases/{id}`;
- `GET /lkh/events?room=R&after=SEQ&wait=S`: the room's events with a sequence number above SEQ, waiting up to
  S seconds (at most MAX_WAIT) for one.

It exits once no lease is held (released, or its holder's process gone: a SIGKILLed session's lease dies with
it), so the port is free again for `python -m bootstrap`, which binds it for its own run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import time
from collections import OrderedDict, deque
from typing import Any

from aiohttp import web
from google.protobuf.json_format import MessageToDict
from livekit import api

from backend.app import create_app
from backend.settings import validate
from livekit_harness_pytest.process_identity import Creator

HUB_NAME = "livekit-harness-webhook-hub"
MAX_ROOMS = 500
MAX_EVENTS_PER_ROOM = 200
MAX_LEASES = 256
MAX_WAIT = 10.0  # seconds a long poll may wait
FIRST_LEASE_WITHIN = 10.0  # seconds: a hub nobody leased (its starter died at once) does not linger
IDLE_GRACE = 1.0  # seconds without a lease before exiting
CHECK_EVERY = 0.5


class Hub:
    def __init__(self) -> None:
        self.rooms: OrderedDict[str, deque[dict[str, Any]]] = OrderedDict()
        self.seq = 0
        self.leases: dict[str, Creator] = {}
        self.closing = False
        self.last_released = asyncio.Event()
        self.changed = asyncio.Condition()

    async def record(self, event: api.WebhookEvent) -> None:
        async with self.changed:
            self.seq += 1
            room = self.rooms.setdefault(event.room.name, deque(maxlen=MAX_EVENTS_PER_ROOM))
            self.rooms.move_to_end(event.room.name)
            room.append({"seq": self.seq, "event": MessageToDict(event)})
            while len(self.rooms) > MAX_ROOMS:
                self.rooms.popitem(last=False)
            self.changed.notify_all()

    def _after(self, room: str, after: int) -> list[dict[str, Any]]:
        return [e for e in self.rooms.get(room, ()) if e["seq"] > after]

    async def events(self, request: web.Request) -> web.Response:
        room = request.query.get("room", "")
        try:
            after = int(request.query.get("after", "0"))
            wait = min(float(request.query.get("wait", "0")), MAX_WAIT)
        except ValueError:
            raise web.HTTPBadRequest(text="after must be an integer, wait a number") from None
        async with self.changed:
            try:
                async with asyncio.timeout(max(wait, 0.0)):
                    await self.changed.wait_for(lambda: bool(self._after(room, after)))
            except TimeoutError:
                pass
            return web.json_response({"events": self._after(room, after), "seq": self.seq})

    async def hello(self, _request: web.Request) -> web.Response:
        return web.json_response({"hub": HUB_NAME, "pid": os.getpid(), "leases": len(self.leases)})

    async def lease(self, request: web.Request) -> web.Response:
        creator = Creator.from_dict(await request.json())
        if creator is None:
            raise web.HTTPBadRequest(text="a lease needs pid, start and boot")
        if self.closing or len(self.leases) >= MAX_LEASES:
            raise web.HTTPServiceUnavailable(text="closing" if self.closing else "too many leases")
        lease = secrets.token_hex(8)
        self.leases[lease] = creator
        return web.json_response({"lease": lease})

    async def release(self, request: web.Request) -> web.Response:
        """The last lease released: the hub closes at once (the session waits for the port to be free, so a
        `python -m bootstrap` right after it can bind it)."""
        self.leases.pop(request.match_info["lease"], None)
        if not self.leases:
            self.closing = True
            self.last_released.set()
        return web.json_response({"leases": len(self.leases)})

    async def until_unleased(self) -> None:
        """Return once no live lease has been held for IDLE_GRACE (or none was taken in FIRST_LEASE_WITHIN)."""
        started, idle_since = time.monotonic(), time.monotonic()
        ever_leased = False
        while True:
            await asyncio.sleep(CHECK_EVERY)
            for lease, creator in list(self.leases.items()):
                if creator.gone():
                    del self.leases[lease]
            now = time.monotonic()
            if self.leases:
                ever_leased, idle_since = True, now
            elif (ever_leased and now - idle_since >= IDLE_GRACE) or now - started >= FIRST_LEASE_WITHIN:
                self.closing = True
                return


async def serve(host: str, port: int) -> None:
    settings = validate(os.environ)  # the session passes LIVEKIT_URL and the keys in the environment
    hub = Hub()
    app, handlers = create_app(settings)
    handlers.append(hub.record)
    app.router.add_get("/lkh/hub", hub.hello)
    app.router.add_post("/lkh/leases", hub.lease)
    app.router.add_delete("/lkh/leases/{lease}", hub.release)
    app.router.add_get("/lkh/events", hub.events)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    print(json.dumps({"hub": HUB_NAME, "pid": os.getpid(), "port": port}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    ends = {asyncio.create_task(hub.until_unleased()), asyncio.create_task(stop.wait()),
            asyncio.create_task(hub.last_released.wait())}  # fmt: skip
    await asyncio.wait(ends, return_when=asyncio.FIRST_COMPLETED)
    hub.closing = True
    await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
