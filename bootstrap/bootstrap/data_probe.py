"""Data round trips through the SFU: RPCs answered by the agent (each payload must come back intact), and
reliable packets with sequence numbers that the agent sends back (all of them, in order). One clock, one
process. No delay is added anywhere: a packet lost because it was sent the moment the agent appeared is a
failure (livekit/livekit#3049), not something to wait out."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from dataclasses import dataclass, field

from livekit import rtc

from agent_runtime.echo import DATA_TOPIC, HEARD_METHOD, PING_METHOD
from bootstrap.stats import summary

RPC_TIMEOUT = 2.0
ECHO_WAIT = 2.0  # after the last packet was sent: how long the rest may take before they count as lost


class DataPathError(Exception):
    """A direction of the data path is broken; the message names it."""


@dataclass
class DataFigures:
    rpc_round_trips: list[float] = field(default_factory=list)
    packets_sent: int = 0
    packets_back: list[int] = field(default_factory=list)  # sequence numbers, in arrival order
    agent_received: int | None = None  # packets the agent reports it got (over RPC), when asked

    @property
    def in_order(self) -> bool:
        return self.packets_back == list(range(self.packets_sent))

    def as_dict(self) -> dict[str, object]:
        return {
            "rpc_round_trip_s": summary(self.rpc_round_trips),
            "rpc_calls": len(self.rpc_round_trips),
            "reliable_sent": self.packets_sent,
            "reliable_back": len(self.packets_back),
            "reliable_in_order": self.in_order,
        }


async def ping(room: rtc.Room, agent: str, count: int, figures: DataFigures) -> None:
    """`count` RPC round trips, each payload checked."""
    for i in range(count):
        payload = f"{i}:{secrets.token_hex(16)}"
        started = time.monotonic()
        try:
            reply = await room.local_participant.perform_rpc(
                destination_identity=agent, method=PING_METHOD, payload=payload, response_timeout=RPC_TIMEOUT
            )
        except rtc.RpcError as exc:
            raise DataPathError(_rpc_failure(exc, agent)) from None
        figures.rpc_round_trips.append(time.monotonic() - started)
        if reply != payload:
            raise DataPathError(f"RPC {PING_METHOD} to {agent} returned {reply[:40]!r} for payload {payload[:40]!r}")


def _rpc_failure(exc: rtc.RpcError, agent: str) -> str:
    if exc.code == rtc.RpcError.ErrorCode.UNSUPPORTED_METHOD:
        return f"participant → agent RPC: the agent {agent} has no RPC method {PING_METHOD!r} (UNSUPPORTED_METHOD)"
    if exc.code == rtc.RpcError.ErrorCode.RESPONSE_TIMEOUT:
        return f"agent → participant RPC: no answer to {PING_METHOD!r} from {agent} within {RPC_TIMEOUT:.0f} s"
    return f"RPC {PING_METHOD!r} to {agent} failed: {exc.message} (code {exc.code})"


async def reliable_echo(room: rtc.Room, agent: str, count: int, figures: DataFigures) -> None:
    """Send `count` reliable packets to the agent at once and collect what comes back; sets figures."""
    all_back = asyncio.Event()

    def on_data(packet: rtc.DataPacket) -> None:
        # The sender may still be unknown to the SDK (participant None): livekit-server announces a participant
        # that publishes no track only in its 3-second batch of updates (pkg/rtc/room.go, subscriberUpdateInterval),
        # and the agent is such a participant until it echoes audio. Only the agent is sent these packets, and
        # our own are never delivered back to us, so the topic identifies its echoes.
        sender = packet.participant.identity if packet.participant else agent
        if packet.topic == DATA_TOPIC and sender == agent:
            figures.packets_back.append(int(packet.data.decode().rsplit(" ", 1)[-1]))
            if len(figures.packets_back) >= count:
                all_back.set()

    room.on("data_received", on_data)
    try:
        for seq in range(count):
            await room.local_participant.publish_data(
                f"{room.local_participant.identity} {seq}".encode(),
                reliable=True,
                topic=DATA_TOPIC,
                destination_identities=[agent],
            )
            figures.packets_sent += 1
        with contextlib.suppress(TimeoutError):  # what did not come back by then is lost
            await asyncio.wait_for(all_back.wait(), ECHO_WAIT)
    finally:
        room.off("data_received", on_data)


async def agent_packet_count(room: rtc.Room, agent: str) -> int | None:
    """How many of our reliable packets the agent says it received (its HEARD report), if it answers."""
    try:
        reply = await room.local_participant.perform_rpc(
            destination_identity=agent, method=HEARD_METHOD, payload="", response_timeout=RPC_TIMEOUT
        )
        return int(json.loads(reply).get("packets", 0))
    except (rtc.RpcError, ValueError):
        return None


def reliable_failure(figures: DataFigures, agent: str) -> str:
    """Which direction lost or reordered packets, from what came back and what the agent says it received."""
    back = figures.packets_back
    missing = sorted(set(range(figures.packets_sent)) - set(back))
    where = ""
    if figures.agent_received is not None:
        lost_to = figures.agent_received < figures.packets_sent
        where = (f"participant → agent: the agent received {figures.agent_received}/{figures.packets_sent}"
                 if lost_to else f"agent → participant: the agent received all {figures.packets_sent}")  # fmt: skip
    if missing:
        shown = ", ".join(map(str, missing[:8])) + ("…" if len(missing) > 8 else "")
        return f"{len(back)}/{figures.packets_sent} reliable packets came back from {agent} (lost: {shown}); {where}"
    return f"reliable packets came back out of order from {agent}: {back[:12]}…; {where}"
