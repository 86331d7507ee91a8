"""Readiness checks for the three services, speaking each one's own protocol (an open port is not
readiness): Redis answers PING with PONG (after AUTH with the generated password), PostgreSQL answers an
SSLRequest, LiveKit answers GET / with 200 "OK" (406 "Not Ready" while its node stats are stale).

`python -m devstack health` (what `make health` runs) prints one line per service; exit 0 only if all up.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp

from devstack.credentials import CredentialsError, load_credentials
from devstack.stack_env import Stack

CHECK_TIMEOUT = 2.0
# PostgreSQL's SSLRequest: length 8, code 80877103; a live server replies with one byte, 'S' or 'N'.
PG_SSL_REQUEST = struct.pack("!ii", 8, 80877103)


@dataclass(frozen=True)
class ServiceHealth:
    name: str
    address: str
    up: bool
    reason: str = ""
    refused: bool = False  # nothing listens at the address: the connection was refused

    def line(self) -> str:
        mark, state = ("✓", "up") if self.up else ("✗", "down")
        tail = f"  {self.reason}" if self.reason else ""
        return f"{mark} {self.name:<9} {state:<5} {self.address}{tail}"


async def _exchange(host: str, port: int, payload: bytes, size: int) -> bytes:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(payload)
        await writer.drain()
        return await reader.read(size)
    finally:
        writer.close()


async def redis_command(host: str, port: int, password: str, *args: str) -> bytes:
    """One command over RESP after AUTH; returns the raw first reply line of the command (a bulk string's
    value). Redis here always wants its password (.env.secrets)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        for command in (("AUTH", password), args):
            writer.write(f"*{len(command)}\r\n".encode() + b"".join(f"${len(a)}\r\n{a}\r\n".encode() for a in command))
        await writer.drain()
        if not (auth := await reader.readline()).startswith(b"+OK"):
            return auth.rstrip(b"\r\n")
        line = await reader.readline()
        if line.startswith(b"$") and int(line[1:]) >= 0:
            return (await reader.readline()).rstrip(b"\r\n")
        return line.rstrip(b"\r\n")
    finally:
        writer.close()


async def check_redis(host: str, port: int) -> str:
    try:
        password = load_credentials().redis_password
    except CredentialsError as exc:
        return str(exc)
    reply = await redis_command(host, port, password, "PING")
    if reply.startswith(b"-WRONGPASS") or reply.startswith(b"-ERR AUTH"):
        return f"Redis refused the password in .env.secrets ({reply[:40]!r}): restart it with `make down && make up`"
    if reply != b"+PONG":
        return f"PING answered {reply[:40]!r}, expected +PONG"
    return ""


async def check_postgres(host: str, port: int) -> str:
    reply = await _exchange(host, port, PG_SSL_REQUEST, 1)
    if reply not in (b"S", b"N"):
        return f"SSLRequest answered {reply!r}, expected a PostgreSQL server's 'S' or 'N'"
    return ""


async def check_livekit(host: str, port: int) -> str:
    timeout = aiohttp.ClientTimeout(total=CHECK_TIMEOUT)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.get(f"http://{host}:{port}/") as resp,
    ):
        body = (await resp.text()).strip()
        if resp.status != 200:
            return f"GET / answered {resp.status} {body[:40]!r}, expected 200 'OK' (server not ready)"
        if body != "OK":
            return f"GET / answered 200 {body[:40]!r}, expected 'OK': is this port really LiveKit's?"
        return ""


async def _probe(name: str, host: str, port: int, check: Callable[[str, int], Awaitable[str]]) -> ServiceHealth:
    address = f"{host}:{port}"
    refused = False
    try:
        async with asyncio.timeout(CHECK_TIMEOUT):
            reason = await check(host, port)
    except (ConnectionRefusedError, aiohttp.ClientConnectorError) as exc:
        refused = isinstance(exc, ConnectionRefusedError) or isinstance(exc.os_error, ConnectionRefusedError)
        reason = "connection refused (not running? start it with `make up`)" if refused else str(exc)
    except TimeoutError:
        reason = f"no answer within {CHECK_TIMEOUT:.0f}s"
    except (OSError, aiohttp.ClientError) as exc:
        reason = f"{type(exc).__name__}: {exc}"
    return ServiceHealth(name, address, not reason, reason, refused)


async def probe_livekit(host: str, port: int, name: str = "livekit") -> ServiceHealth:
    """One LiveKit node's readiness, with the same timeout and reasons as `make health`."""
    return await _probe(name, host, port, check_livekit)


async def check_all(stack: Stack, livekit: tuple[str, int] | None = None) -> list[ServiceHealth]:
    """All three checks, concurrently; `livekit` overrides where LiveKit is (default: the stack's)."""
    lk_host, lk_port = livekit or (stack.host, stack.livekit_port)
    return list(
        await asyncio.gather(
            _probe("postgres", stack.host, stack.postgres_port, check_postgres),
            _probe("redis", stack.host, stack.redis_port, check_redis),
            probe_livekit(lk_host, lk_port),
        )
    )


def print_health(stack: Stack) -> int:
    """One line per service; 0 only if all are up (`python -m devstack health`)."""
    results = asyncio.run(check_all(stack))
    for result in results:
        print(result.line())
    return 0 if all(r.up for r in results) else 1
