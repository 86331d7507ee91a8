"""Run inside the LAN neighbour's namespace (tests/test_lab_isolation_integration.py): try every target it is given
on stdin ({"tcp": [[address, port], …], "udp": [[address, port], …]}) at once, and print what answered as JSON:
TCP "connected" (something accepted), "refused" (a reset: a kernel said no) or "silent" (nothing came back);
UDP "answered" (a datagram came back to a STUN Binding Request, which TURN answers without credentials) or
"silent"."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys

TIMEOUT = 1.0  # the probes' peers are all on this machine: an answer comes within milliseconds


async def tcp(address: str, port: int) -> str:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(address, port), TIMEOUT)
    except ConnectionRefusedError:
        return "refused"
    except (TimeoutError, OSError):
        return "silent"
    writer.close()
    return "connected"


def stun_binding_request() -> bytes:
    # type 0x0001 (Binding Request), length 0, the magic cookie, a 96-bit transaction id (RFC 8489 §5)
    return b"\x00\x01\x00\x00\x21\x12\xa4\x42" + os.urandom(12)


async def udp(address: str, port: int) -> str:
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        try:
            sock.connect((address, port))
            sock.send(stun_binding_request())
            await asyncio.wait_for(loop.sock_recv(sock, 2048), TIMEOUT)
        except (TimeoutError, OSError):  # an ICMP port unreachable surfaces as ConnectionRefusedError: no service
            return "silent"
    return "answered"


async def main() -> None:
    targets = json.load(sys.stdin)
    tcp_targets = [tuple(t) for t in targets["tcp"]]
    udp_targets = [tuple(t) for t in targets["udp"]]
    results = await asyncio.gather(*(tcp(a, p) for a, p in tcp_targets), *(udp(a, p) for a, p in udp_targets))
    tcp_results, udp_results = results[: len(tcp_targets)], results[len(tcp_targets) :]
    print(json.dumps({
        "tcp": {f"{a}:{p}": r for (a, p), r in zip(tcp_targets, tcp_results, strict=True)},
        "udp": {f"{a}:{p}": r for (a, p), r in zip(udp_targets, udp_results, strict=True)},
    }))  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main())
