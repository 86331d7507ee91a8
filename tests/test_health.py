"""LiveKit's readiness as `make health` and the cluster stages read it (#24): GET / answering 406 "Not Ready"
(what livekit-server says while its node stats are stale, e.g. Redis gone) is down, not up; only 200 "OK" is
up. Against a tiny aiohttp server on loopback answering as livekit-server does, not a frozen one: the answer
itself decides, not a timeout."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from devstack.health import probe_livekit

pytestmark = pytest.mark.unit


@pytest.fixture
async def answering() -> AsyncIterator[Callable[[int, str], Awaitable[int]]]:
    """Start a server whose GET / answers `status` with `text`; yields a starter returning its port."""
    servers: list[TestServer] = []

    async def start(status: int, text: str) -> int:
        async def root(_: web.Request) -> web.Response:
            return web.Response(status=status, text=text)

        app = web.Application()
        app.router.add_get("/", root)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        assert server.port is not None
        return server.port

    yield start
    for server in servers:
        await server.close()


async def test_406_not_ready_is_down_and_says_so(answering) -> None:  # type: ignore[no-untyped-def]
    port = await answering(406, "Not Ready")
    health = await probe_livekit("127.0.0.1", port)
    assert not health.up
    assert health.reason == "GET / answered 406 'Not Ready', expected 200 'OK' (server not ready)"
    assert health.line().startswith("✗ livekit   down")


async def test_200_ok_is_up(answering) -> None:  # type: ignore[no-untyped-def]
    health = await probe_livekit("127.0.0.1", await answering(200, "OK"))
    assert (health.up, health.reason) == (True, "")


async def test_200_from_something_else_is_down(answering) -> None:  # type: ignore[no-untyped-def]
    health = await probe_livekit("127.0.0.1", await answering(200, "<html>nginx</html>"))
    assert not health.up and "is this port really LiveKit's?" in health.reason
