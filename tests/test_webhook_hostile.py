"""The webhook receiver against a hostile or merely unlucky sender (#15): replays, over-long tokens, bodies
that never end or claim to be huge, and secrets in what gets logged. In-process (aiohttp's test server),
with requests signed exactly as livekit-server signs them."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
import structlog
from livekit import api

from backend.logging import configure_logging, register_secret
from backend.webhook_receiver import WEBHOOK_PATH
from tests.conftest import WebhookClient, running_receiver, sign_webhook

pytestmark = pytest.mark.unit
KEY, SECRET = "devkey", "hostile-test-secret-" + "s" * 20
BODY = json.dumps({"event": "room_started", "room": {"name": "r1", "sid": "RM_1"}, "id": "EV_hostile"}).encode()


def sign(body: bytes, ttl: timedelta = timedelta(minutes=5)) -> str:
    return sign_webhook(body, KEY, SECRET, ttl)


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[WebhookClient, list[api.WebhookEvent]]]:
    async with running_receiver(KEY, SECRET) as running:
        yield running


async def post(client: WebhookClient, body: bytes, auth: str) -> int:
    headers = {"Content-Type": "application/webhook+json", "Authorization": auth}
    async with client.post(WEBHOOK_PATH, data=body, headers=headers) as resp:
        return resp.status


async def raw_request(client: WebhookClient, head: bytes, body_part: bytes, wait: float) -> bytes:
    """Send `head` and a first part of the body, then nothing; what the server answers within `wait`."""
    assert client.server.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
    try:
        writer.write(head + body_part)
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


async def test_the_same_signed_event_posted_50_times_is_handled_once(receiver) -> None:  # type: ignore[no-untyped-def]
    client, received = receiver
    auth = sign(BODY)
    statuses = [await post(client, BODY, auth) for _ in range(50)]
    assert statuses == [200] * 50  # a duplicate is answered 200: the sender must not retry it
    assert len(received) == 1


async def test_a_token_valid_for_ten_years_is_refused(receiver) -> None:  # type: ignore[no-untyped-def]
    client, received = receiver
    assert await post(client, BODY, sign(BODY, ttl=timedelta(days=3650))) == 401
    assert received == []


async def test_a_huge_declared_body_is_refused_at_once(receiver) -> None:  # type: ignore[no-untyped-def]
    client, _ = receiver
    started = time.monotonic()
    answer = await raw_request(client, head(100 * 1024 * 1024, sign(BODY)), b"{", wait=3.0)
    assert answer.startswith(b"HTTP/1.1 413"), answer
    assert time.monotonic() - started < 1.0


async def test_a_stalled_body_is_cut_off(receiver) -> None:  # type: ignore[no-untyped-def]
    client, received = receiver
    answer = await raw_request(client, head(len(BODY), sign(BODY)), BODY[:10], wait=8.0)
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert received == []


JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1c2VyIn0.c2lnbmF0dXJlLXNpZ25hdHVyZS0xMjM0NTY"


def test_nested_values_and_exceptions_are_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(json=True)
    register_secret(SECRET)
    log = structlog.get_logger("test")
    log.info("nested", data={"token": JWT, "list": [SECRET]})
    try:
        raise ValueError(f"verification failed for {JWT} with {SECRET}")
    except ValueError:
        log.exception("boom")
        logging.getLogger("stdlib").exception("boom again")
    err = capsys.readouterr().err
    assert "nested" in err and "boom again" in err
    assert JWT not in err and SECRET not in err, err


async def test_non_utf8_and_deeply_nested_bodies_are_refused_cleanly(receiver) -> None:  # type: ignore[no-untyped-def]
    client, received = receiver
    binary = b"\xff\xfe" + BODY
    assert await post(client, binary, sign(binary)) == 400
    deep = b'{"event": "room_started", "room": ' + b'{"metadata": ' * 3000 + b"1" + b"}" * 3000 + b"}"
    assert await post(client, deep, sign(deep)) == 400  # a signed body that is no webhook event
    assert received == []
