"""Serving the backend's app on a TCP port with bounds aiohttp does not set itself: at most MAX_CONNECTIONS at
once (past it, 503 and closed), and HEADER_TIMEOUT seconds for a connection to deliver a request's headers or
to sit idle between requests. `python -m backend` and bootstrap's in-process receiver both serve this way."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

# Each livekit-server node delivers webhooks one at a time per URL (a queue worker), so a handful of
# connections is the real load; 128 leaves room for a cluster and /healthz probes, and stays far below the
# descriptor limits the receiver meets (256 in some containers: _raise_descriptor_limit keeps 32 spare).
MAX_CONNECTIONS = 128
# aiohttp's keep-alive timer also bounds the time from accept to the end of a request's headers (a slow
# sender is closed when it fires) and how long an idle connection stays: 75 s under run_app, 3630 s under an
# AppRunner. livekit-server sends its headers at once and reconnects when an idle connection was closed.
HEADER_TIMEOUT = 10.0
# asyncio accepts up to the listen backlog's worth of connections per wake-up before any of them can close, so a
# burst past the cap briefly holds that many more descriptors (its 503s): 64, not asyncio's 100, and counted in
# the descriptors `python -m backend` keeps spare (measured: 300 senders at 256 descriptors ran the table full
# with 100 under CI load).
ACCEPT_BATCH = 64
SHUTDOWN_TIMEOUT = 1.5  # seconds a request in progress gets when the server stops (measured stop: docs)
_BUSY = b"too many connections"
TURNED_AWAY = b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s" % (
    len(_BUSY),
    _BUSY,
)


class _TurnAway(asyncio.Protocol):
    """A connection past the cap: answered 503 (the sender retries later) and closed, nothing read."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(TURNED_AWAY)
        transport.close()


class _Counted(asyncio.Protocol):
    """aiohttp's request handler for one connection, counted open from accept to connection_lost. (aiohttp's
    own list of connections lags: asyncio calls the protocol factory for a whole batch of accepted connections
    before any of their connection_made, so a burst would pass a cap read from it.)"""

    def __init__(self, inner: asyncio.Protocol, listener: Listener) -> None:
        self._inner, self._listener = inner, listener
        listener.open_connections += 1

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._listener.open_connections -= 1
        self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


class Listener:
    """`app` served on host:port (port 0: any free one, see .port after start) within the bounds above."""

    def __init__(
        self,
        app: web.Application,
        host: str,
        port: int,
        *,
        max_connections: int = MAX_CONNECTIONS,
        header_timeout: float | None = None,
        shutdown_timeout: float = SHUTDOWN_TIMEOUT,
        access_log: bool = False,
    ) -> None:
        self.host, self.port, self.max_connections = host, port, max_connections
        self.header_timeout = HEADER_TIMEOUT if header_timeout is None else header_timeout
        self.turned_away = 0  # connections answered 503 because max_connections were open
        self.open_connections = 0
        self._runner = web.AppRunner(
            app,
            keepalive_timeout=self.header_timeout,
            shutdown_timeout=shutdown_timeout,
            # A body refused unread (bad token, too large, too slow) is not drained: aiohttp would otherwise
            # keep reading it for up to 10 s after the answer, holding the connection and its descriptor.
            lingering_time=0.0,
            access_log=logging.getLogger("aiohttp.access") if access_log else None,
        )
        self._server: asyncio.Server | None = None

    def _protocol(self) -> asyncio.BaseProtocol:
        server = self._runner.server
        assert server is not None
        if self.open_connections >= self.max_connections:
            self.turned_away += 1
            return _TurnAway()
        return _Counted(server(), self)

    async def start(self) -> None:
        await self._runner.setup()
        loop = asyncio.get_running_loop()
        # SO_REUSEADDR (aiohttp's default too) lets a new run bind while the last run's connections close; on
        # Linux it never lets two listeners share the port.
        self._server = await loop.create_server(
            self._protocol, self.host, self.port, reuse_address=True, backlog=ACCEPT_BATCH
        )
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()  # no new connections; those open are closed by the runner's cleanup
            self._server = None
        await self._runner.cleanup()
