"""bootstrap.modes.remote.turn_probe (the Allocate that tells "TURN answers here" from "nothing answered"), and how
the remote mode's paths read a TURN URL, without a deployment: a TURN server played on this machine's loopback."""

from __future__ import annotations

import asyncio
import socket
import struct
import threading

import pytest

from bootstrap.modes.remote import turn_probe
from bootstrap.modes.remote.remote_paths import _host_port

pytestmark = pytest.mark.unit


def challenge(request: bytes, realm: bytes = b"livekit") -> bytes:
    """What a TURN server answers an unauthenticated Allocate: 401 with its realm (the reason phrase left empty,
    as pion/turn sends it), for the request's transaction."""
    error = struct.pack("!HBB", 0, 4, 1)  # class 4, number 01: 401
    padded = realm + b"\0" * (-len(realm) % 4)
    attributes = struct.pack("!HH", turn_probe.ERROR_CODE, len(error)) + error
    attributes += struct.pack("!HH", turn_probe.REALM, len(realm)) + padded
    return struct.pack("!HHI12s", 0x0113, len(attributes), turn_probe.MAGIC_COOKIE, request[8:20]) + attributes


def test_a_challenge_to_our_transaction_is_read_and_anothers_is_not() -> None:
    request, transaction = turn_probe.allocate_request()
    answer = turn_probe.parse_answer(challenge(request), transaction)
    assert answer is not None and str(answer) == "401 Unauthorized (realm livekit)"
    other, _ = turn_probe.allocate_request()
    assert turn_probe.parse_answer(challenge(other), transaction) is None
    assert turn_probe.parse_answer(b"HTTP/1.1 400 Bad Request\r\n\r\n", transaction) is None


def test_over_udp_a_server_that_answers_and_one_that_never_does(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(turn_probe, "UDP_WAIT", 0.2)
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as mute,
    ):
        server.bind(("127.0.0.1", 0))
        mute.bind(("127.0.0.1", 0))

        def answer_once() -> None:
            request, client = server.recvfrom(2048)
            server.sendto(challenge(request), client)

        threading.Thread(target=answer_once, daemon=True).start()
        answered = asyncio.run(turn_probe.over_udp("127.0.0.1", server.getsockname()[1]))
        assert answered is not None and answered.code == 401 and answered.realm == "livekit"
        assert asyncio.run(turn_probe.over_udp("127.0.0.1", mute.getsockname()[1])) is None


def test_turn_urls_give_their_host_and_port() -> None:
    assert _host_port("turn:10.0.0.1:3478?transport=udp") == ("10.0.0.1", 3478)
    assert _host_port("turns:turn.example.com:443?transport=tcp") == ("turn.example.com", 443)
    assert _host_port("turns:turn.example.com?transport=tcp") == ("turn.example.com", 443)
