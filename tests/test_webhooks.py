"""The webhook receiver lets nothing forged through: every unsigned, mis-signed, tampered, garbage or
expired POST gets 401 and never reaches a handler; a genuine one gets 200 and does.

Requests are signed with livekit-api's own AccessToken, exactly as livekit-server signs them."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from livekit import api

from backend.webhook_receiver import WEBHOOK_PATH
from tests.conftest import WebhookClient, running_receiver, sign_webhook

pytestmark = pytest.mark.unit
KEY, SECRET = "devkey", "s" * 40
BODY = json.dumps({"event": "room_started", "room": {"name": "r1", "sid": "RM_1"}, "id": "EV_1"}).encode()


def sign(body: bytes, key: str = KEY, secret: str = SECRET, ttl: timedelta = timedelta(minutes=5)) -> str:
    return sign_webhook(body, key, secret, ttl)


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[WebhookClient, list[api.WebhookEvent]]]:
    async with running_receiver(KEY, SECRET) as running:
        yield running


async def post(client: TestClient[web.Request, web.Application], body: bytes, auth: str | None) -> int:
    headers = {"Content-Type": "application/webhook+json"}
    if auth is not None:
        headers["Authorization"] = auth
    async with client.post(WEBHOOK_PATH, data=body, headers=headers) as resp:
        return resp.status


async def test_genuine_webhook_is_accepted_and_handled(receiver) -> None:  # type: ignore[no-untyped-def]
    client, received = receiver
    assert await post(client, BODY, sign(BODY)) == 200
    assert [(e.event, e.room.name) for e in received] == [("room_started", "r1")]


@pytest.mark.parametrize(
    ("case", "auth"),
    [
        ("unsigned", None),
        ("empty header", ""),
        ("wrong key", sign(BODY, key="otherkey")),
        ("wrong secret", sign(BODY, secret="x" * 40)),
        ("tampered body", sign(BODY.replace(b"r1", b"r2"))),
        ("garbage jwt", "not.a.jwt"),
        ("expired", sign(BODY, ttl=timedelta(minutes=-10))),
        ("bearer prefix on a body hash mismatch", "Bearer " + sign(b"{}")),
    ],
)
async def test_forged_webhooks_get_401_and_never_reach_the_handler(receiver, case: str, auth: str | None) -> None:  # type: ignore[no-untyped-def]
    client, received = receiver
    assert await post(client, BODY, auth) == 401, case
    assert received == []


async def test_signed_but_malformed_body_is_400(receiver) -> None:  # type: ignore[no-untyped-def]
    client, received = receiver
    body = b"this is not json"
    assert await post(client, body, sign(body)) == 400
    assert received == []


async def test_healthz(receiver) -> None:  # type: ignore[no-untyped-def]
    client, _ = receiver
    async with client.get("/healthz") as resp:
        assert resp.status == 200
        assert await resp.json() == {"status": "ok"}
