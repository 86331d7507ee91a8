"""Whether a TURN server answers at an address, over UDP or over TLS: one unauthenticated Allocate request (RFC 8656
§7.1), which a TURN server answers with 401 Unauthorized and its realm (a challenge: no credentials are sent, no
relay is allocated). It tells "nothing answered at this address and port" from "TURN is there" without the rtc SDK,
whose ICE servers cannot be chosen one by one."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import struct
from dataclasses import dataclass

MAGIC_COOKIE = 0x2112A442
ALLOCATE = 0x0003
REQUESTED_TRANSPORT, ERROR_CODE, REALM = 0x0019, 0x0009, 0x0014
UDP_PROTOCOL = 17
UDP_TRIES, UDP_WAIT = 2, 1.0  # one retransmission: a TURN server on the same continent answers in milliseconds
TLS_WAIT = 3.0


@dataclass(frozen=True)
class TurnAnswer:
    """A STUN response to the Allocate: its class (error or success), error code and realm."""

    code: int  # 0 for a success response
    reason: str
    realm: str

    def __str__(self) -> str:
        reason = self.reason or ("Unauthorized" if self.code == 401 else "")
        said = "allocated" if self.code == 0 else f"{self.code} {reason}".strip()
        return f"{said}{f' (realm {self.realm})' if self.realm else ''}"


def allocate_request() -> tuple[bytes, bytes]:
    """An Allocate request asking for a UDP relay, and its transaction id."""
    transaction = os.urandom(12)
    attribute = struct.pack("!HHB3x", REQUESTED_TRANSPORT, 4, UDP_PROTOCOL)
    return struct.pack("!HHI12s", ALLOCATE, len(attribute), MAGIC_COOKIE, transaction) + attribute, transaction


def parse_answer(message: bytes, transaction: bytes) -> TurnAnswer | None:
    """The Allocate's response, or None when `message` is not one (another transaction, not STUN)."""
    if len(message) < 20:
        return None
    kind, length, cookie, received = struct.unpack("!HHI12s", message[:20])
    if cookie != MAGIC_COOKIE or received != transaction or kind & 0x3EEF != ALLOCATE:
        return None
    code, reason, realm, offset = 0, "", "", 20
    while offset + 4 <= min(len(message), 20 + length):
        attribute, size = struct.unpack("!HH", message[offset : offset + 4])
        value = message[offset + 4 : offset + 4 + size]
        if attribute == ERROR_CODE and size >= 4:
            code = (value[2] & 0x07) * 100 + value[3]
            reason = value[4:].decode(errors="replace")
        elif attribute == REALM:
            realm = value.decode(errors="replace")
        offset += 4 + size + (-size % 4)  # attributes are padded to 4 bytes
    return TurnAnswer(code, reason, realm)


async def over_udp(address: str, port: int) -> TurnAnswer | None:
    """The answer of the TURN server at `address`:`port`/udp, or None when nothing answered."""
    return await asyncio.to_thread(_udp, address, port)


def _udp(address: str, port: int) -> TurnAnswer | None:
    request, transaction = allocate_request()
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(UDP_WAIT)
        for _ in range(UDP_TRIES):
            try:
                sock.sendto(request, (address, port))
                while (answer := parse_answer(sock.recv(2048), transaction)) is None:
                    continue  # not ours (a late answer to nothing we sent): keep listening until the timeout
                return answer
            except TimeoutError:
                continue
            except OSError:
                return None  # an ICMP error (port unreachable) or no route: nothing answers there either
    return None


async def over_tls(address: str, port: int, context: ssl.SSLContext, name: str) -> TurnAnswer | None:
    """The answer of the TURN server behind TLS at `address`:`port` (certificate checked for `name` by
    `context`), or None when the connection closed or nothing answered. TLS errors propagate (ssl.SSLError):
    the caller names them."""
    request, transaction = allocate_request()
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(address, port, ssl=context, server_hostname=name), TLS_WAIT
    )
    try:
        writer.write(request)  # over TCP, STUN messages follow each other unframed (RFC 8489 §6.2.2)
        await writer.drain()
        header = await asyncio.wait_for(reader.readexactly(20), TLS_WAIT)
        body = await asyncio.wait_for(reader.readexactly(struct.unpack("!H", header[2:4])[0]), TLS_WAIT)
    except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
        return None
    finally:
        writer.close()
    return parse_answer(header + body, transaction)
