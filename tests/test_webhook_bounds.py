"""The receiver's bounds (#24): what it remembers of seen events (count, id length, bytes, per-room duplicate
counts, all from its own counters), the token verified before any body is read, the documented body and
token-validity limits at their edges, concurrent connections capped, and the time a connection may take over
its headers or sit idle. The limits are written here as the docs state them (64 KiB, 10 minutes, 10,000 ids of
64 bytes, 1,000 rooms of 256 characters), never imported: raising one in the code fails these tests."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from aiohttp import web
from livekit import api

from backend.app import create_app
from backend.settings import validate
from backend.webhook_receiver import RECENT_KEY, STATS_KEY, WEBHOOK_PATH
from tests.conftest import WebhookClient, running_receiver, sign_webhook

pytestmark = pytest.mark.unit
KEY, SECRET = "devkey", "bounds-test-secret-" + "b" * 24
DOCUMENTED_IDS, DOCUMENTED_ID_BYTES = 10_000, 64
DOCUMENTED_ROOMS, DOCUMENTED_ROOM_CHARS = 1_000, 256


def event_body(event_id: str, room: str = "r1") -> bytes:
    return json.dumps({"event": "room_started", "room": {"name": room, "sid": "RM_1"}, "id": event_id}).encode()


def sign(body: bytes, ttl: timedelta = timedelta(minutes=5), secret: str = SECRET) -> str:
    return sign_webhook(body, KEY, secret, ttl)


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[WebhookClient, list[api.WebhookEvent]]]:
    async with running_receiver(KEY, SECRET) as running:
        yield running


async def post(client: WebhookClient, body: bytes, auth: str) -> tuple[int, str]:
    headers = {"Content-Type": "application/webhook+json", "Authorization": auth}
    async with client.post(WEBHOOK_PATH, data=body, headers=headers) as resp:
        return resp.status, await resp.text()


async def raw_exchange(port: int, request: bytes, wait: float) -> bytes:
    """Send `request` (headers, perhaps part of a body) and nothing more; what the server answers within `wait`."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        try:
            return await asyncio.wait_for(reader.read(200), wait)
        except TimeoutError:
            return b""
    finally:
        writer.close()


def head(content_length: int, auth: str) -> bytes:
    return (f"POST {WEBHOOK_PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/webhook+json\r\n"
            f"Authorization: {auth}\r\nContent-Length: {content_length}\r\n\r\n").encode()  # fmt: skip


# --- the memory of seen events ---------------------------------------------------------------------------------


def test_20000_ids_leave_the_memory_within_its_documented_bound() -> None:
    from backend.webhook_receiver import RecentIds

    recent = RecentIds()
    ids = [f"EV_{i:061d}" for i in range(20_000)]  # 64 bytes each, the longest accepted
    assert all(recent.first_time(event_id, now=i * 0.001) for i, event_id in enumerate(ids))
    assert len(recent) <= DOCUMENTED_IDS
    assert recent.bytes <= DOCUMENTED_IDS * DOCUMENTED_ID_BYTES
    assert recent.bytes == sum(len(i) for i in ids[-len(recent) :])  # its counter is what it holds
    assert not recent.first_time(ids[-1], now=20.0)  # the newest are still caught as duplicates


def test_an_id_longer_than_64_bytes_is_refused_by_the_memory() -> None:
    from backend.webhook_receiver import RecentIds

    recent = RecentIds()
    assert recent.first_time("E" * 64, now=0.0)
    with pytest.raises(ValueError, match="65 bytes"):
        recent.first_time("E" * 65, now=0.0)
    assert (len(recent), recent.bytes) == (1, 64)


def test_per_room_duplicate_counts_are_bounded_and_kept_to_the_window() -> None:
    from backend.webhook_receiver import RoomCounts

    rooms = RoomCounts()
    for i in range(20_000):
        rooms.add(f"{i:05d}" + "r" * 400, now=i * 0.001)  # names longer than any the server allows
    assert len(rooms) <= DOCUMENTED_ROOMS
    assert rooms.bytes <= DOCUMENTED_ROOMS * DOCUMENTED_ROOM_CHARS
    rooms.add("recent", now=100.0)
    rooms.add("recent", now=101.0)
    assert rooms.counts(now=102.0)["recent"] == 2
    assert rooms.counts(now=101.0 + 601) == {}  # forgotten with the ids: the 600 s dedupe window
    assert (len(rooms), rooms.bytes) == (0, 0)


async def test_500_events_over_http_keep_the_receiver_within_its_bound(receiver) -> None:  # type: ignore[no-untyped-def]
    client, received = receiver
    recent, stats = client.app[RECENT_KEY], client.app[STATS_KEY]
    recent.max_entries, stats.duplicates_by_room.max_rooms = 100, 20  # bounds that 500 requests can reach
    bodies = [event_body(f"EV_{i:061d}", room=f"room-{i:03d}-" + "x" * 300) for i in range(450)]
    for body in bodies:
        assert (await post(client, body, sign(body)))[0] == 200
    for body in bodies[-50:]:  # copies of the newest: still remembered
        assert await post(client, body, sign(body)) == (200, "duplicate")
    assert len(recent) <= 100 and recent.bytes <= 100 * DOCUMENTED_ID_BYTES
    assert len(stats.duplicates_by_room) <= 20
    assert stats.duplicates_by_room.bytes <= 20 * DOCUMENTED_ROOM_CHARS
    assert (len(received), stats.duplicates) == (450, 50)


@pytest.mark.parametrize("length", [65, 60_000])
async def test_a_signed_event_with_an_overlong_id_is_refused(receiver, length: int) -> None:  # type: ignore[no-untyped-def]
    client, received = receiver
    body = event_body("E" * length)
    status, text = await post(client, body, sign(body))
    assert (status, received) == (400, []), text
    assert len(client.app[RECENT_KEY]) == 0


# --- the token before the body -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "auth"),
    [
        ("wrong secret", sign(event_body("EV_1"), secret="w" * 40)),
        ("expired", sign(event_body("EV_1"), ttl=timedelta(minutes=-10))),
        ("valid for a day", sign(event_body("EV_1"), ttl=timedelta(days=1))),
        ("no sha256 claim", api.AccessToken(KEY, SECRET).to_jwt()),
        ("not a token", "x"),
    ],
)
async def test_a_bad_token_is_refused_before_any_body_arrives(receiver, case: str, auth: str) -> None:  # type: ignore[no-untyped-def]
    client, _ = receiver
    started = time.monotonic()
    answer = await raw_exchange(client.port, head(100, auth), wait=2.0)  # a body is promised, none sent
    assert answer.startswith(b"HTTP/1.1 401"), (case, answer)
    assert time.monotonic() - started < 1.0


# --- the documented limits, at their edges -------------------------------------------------------------------------


async def test_a_body_one_byte_over_64_kib_is_refused_at_once_and_64_kib_is_read(receiver) -> None:  # type: ignore[no-untyped-def]
    client, _ = receiver
    body = b"x" * (64 * 1024)  # signed, exactly at the bound: read, then refused as no event
    assert (await post(client, body, sign(body)))[0] == 400
    started = time.monotonic()
    answer = await raw_exchange(client.port, head(64 * 1024 + 1, sign(body + b"x")) + b"x", wait=3.0)
    assert answer.startswith(b"HTTP/1.1 413"), answer
    assert time.monotonic() - started < 1.0


async def test_a_chunked_body_over_64_kib_is_refused(receiver) -> None:  # type: ignore[no-untyped-def]
    client, received = receiver
    body = event_body("EV_big", room="r" * (64 * 1024))

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 8192):
            yield body[start : start + 8192]

    headers = {"Content-Type": "application/webhook+json", "Authorization": sign(body)}
    async with client.post(WEBHOOK_PATH, data=chunks(), headers=headers) as resp:  # no Content-Length
        assert resp.status == 413
    assert received == []


@pytest.mark.parametrize(("minutes", "status"), [(5, 200), (9, 200), (11, 401), (60 * 24 * 365, 401)])
async def test_token_validity_is_bounded_at_ten_minutes(receiver, minutes: int, status: int) -> None:  # type: ignore[no-untyped-def]
    client, _ = receiver
    body = event_body(f"EV_ttl{minutes}")
    assert (await post(client, body, sign(body, ttl=timedelta(minutes=minutes))))[0] == status


# --- connections -----------------------------------------------------------------------------------------------------


def backend_app() -> web.Application:
    settings = validate({"LIVEKIT_URL": "ws://localhost:7880", "LIVEKIT_API_KEY": KEY, "LIVEKIT_API_SECRET": SECRET})
    return create_app(settings)[0]


HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"


async def test_connections_past_the_cap_get_503_at_once_and_are_served_again_below_it() -> None:
    from backend.serving import Listener

    listener = Listener(backend_app(), "127.0.0.1", 0, max_connections=3)
    await listener.start()
    held = [await asyncio.open_connection("127.0.0.1", listener.port) for _ in range(3)]
    try:
        await asyncio.sleep(0.1)
        assert listener.open_connections == 3
        started = time.monotonic()
        answer = await raw_exchange(listener.port, HEALTHZ, wait=2.0)
        assert answer.startswith(b"HTTP/1.1 503"), answer
        assert time.monotonic() - started < 1.0
        held.pop()[1].close()
        await asyncio.sleep(0.2)
        assert (await raw_exchange(listener.port, HEALTHZ, wait=2.0)).startswith(b"HTTP/1.1 200")
        assert listener.turned_away == 1
    finally:
        for _, writer in held:
            writer.close()
        await listener.stop()


async def test_the_sink_closes_slow_headers_and_idle_connections_after_the_header_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from backend import serving
    from bootstrap.webhook_sink import WebhookSink

    monkeypatch.setattr(serving, "HEADER_TIMEOUT", 0.5)  # the sink must take the module's bound, whatever it is
    settings = validate({"LIVEKIT_URL": "ws://localhost:7880", "LIVEKIT_API_KEY": KEY, "LIVEKIT_API_SECRET": SECRET})
    sink = WebhookSink(settings, "127.0.0.1", 0)
    await sink.start()
    try:
        port = sink.port
        slow = await asyncio.open_connection("127.0.0.1", port)
        slow[1].write(b"POST " + WEBHOOK_PATH.encode() + b" HTTP/1.1\r\nHost: x\r\n")  # headers never end
        idle = await asyncio.open_connection("127.0.0.1", port)
        idle[1].write(HEALTHZ)  # one request with keep-alive, then nothing
        assert (await idle[0].readuntil(b'{"status": "ok"}')).startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        for reader, _ in (slow, idle):
            assert await asyncio.wait_for(reader.read(), 3.0) == b""  # closed by the server
        assert time.monotonic() - started < 2.0
    finally:
        await sink.stop()


async def test_the_sink_keeps_at_most_its_bound_of_events() -> None:
    from bootstrap.webhook_sink import WebhookSink

    settings = validate({"LIVEKIT_URL": "ws://localhost:7880", "LIVEKIT_API_KEY": KEY, "LIVEKIT_API_SECRET": SECRET})
    sink = WebhookSink(settings, "127.0.0.1", 0)
    for i in range(20_000):
        event = api.WebhookEvent(id=f"EV_{i:012d}", event="room_started", room=api.Room(name=f"room-{i % 3000}"))
        await sink._record(event)
    assert len(sink.events) <= DOCUMENTED_IDS and len(sink.arrived_at) <= DOCUMENTED_IDS
    assert sum(len(sink.for_room(f"room-{i}")) for i in range(3000)) == len(sink.events)
    assert sink.for_room("room-1999")[-1].id == "EV_000000019999"
