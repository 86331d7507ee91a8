"""The participant token grants what a participant needs and nothing more (#24): joining its one room,
publishing, subscribing and data — never roomAdmin, roomCreate, roomList, recording, ingress, SIP or a hidden or
agent identity. Read from the signed token itself, as livekit-server reads it."""

from __future__ import annotations

from datetime import timedelta

import jwt
import pytest
from livekit import api

from backend.settings import validate
from backend.tokens import participant_token

pytestmark = pytest.mark.unit
KEY, SECRET = "devkey", "token-test-secret-" + "t" * 24
SETTINGS = validate({"LIVEKIT_URL": "ws://localhost:7880", "LIVEKIT_API_KEY": KEY, "LIVEKIT_API_SECRET": SECRET})
PARTICIPANT_GRANTS = {
    "roomJoin": True,
    "room": "room-1",
    "canPublish": True,
    "canSubscribe": True,
    "canPublishData": True,
}


@pytest.mark.parametrize("agent_name", [None, "bootstrap-noop"])
def test_a_participant_token_grants_its_room_and_nothing_more(agent_name: str | None) -> None:
    token = participant_token(SETTINGS, identity="alice", room="room-1", agent_name=agent_name)
    claims = jwt.decode(token, SECRET, algorithms=["HS256"], issuer=KEY)  # signed with the secret, by the key
    assert claims["video"] == PARTICIPANT_GRANTS  # no roomAdmin, roomCreate, roomList, roomRecord, hidden, agent…
    assert set(claims) - {"video", "roomConfig"} == {"name", "sub", "iss", "nbf", "exp"}  # no sip/kind/… grants
    assert claims["exp"] - claims["nbf"] == 3600
    grants = api.TokenVerifier(KEY, SECRET).verify(token).video
    assert grants is not None
    assert not (grants.room_admin or grants.room_create or grants.room_list or grants.room_record)
    assert not (grants.ingress_admin or grants.hidden or grants.recorder or grants.agent)


def test_a_token_is_valid_for_the_ttl_asked() -> None:
    token = participant_token(SETTINGS, identity="alice", room="room-1", ttl=timedelta(minutes=5))
    claims = jwt.decode(token, SECRET, algorithms=["HS256"], issuer=KEY)
    assert claims["exp"] - claims["nbf"] == 300
