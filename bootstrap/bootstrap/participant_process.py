"""`python -m bootstrap.participant_process`: the rtc SDK's participant in a process of its own: on a client host,
inside its network namespace, for the paths and cluster modes (bootstrap.remote_participant.SdkClient), or on this
machine for the remote mode's paths (bootstrap.modes.remote.remote_paths). It holds no API secret: its token comes
from the parent.

Line protocol, one JSON object per line:
  stdin  {"url", "token", "relay": bool, "ice_timeout": s}  → join, bounded by ice_timeout
  stdout {"joined", "join_s", "error", "offered", "pairs"}   (offered: what the SDK was given while connecting)
then any of these, until stdin ends:
  stdin  {"agent": identity, "window": s}                     (the parent saw it ready through the API; window:
                                                              audio kept flowing s longer for its quality figures)
  stdout {"data", "audio", "failure"}                         (the data-plane round trips over this path)
  stdin  {"watch": s}                                         (a drill is about to break the room's node)
  stdout {"reconnecting_s", "reconnected_s", "disconnected_s", "reason"}  (seconds after the watch began, or
                                                              null: what the SDK told this participant within s)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from dataclasses import asdict
from typing import Any

from livekit import rtc

from agent_runtime.ffi_exit import exit_without_finalization
from bootstrap.audio_probe import AudioProbe
from bootstrap.data_probe import DataFigures, DataPathError, agent_packet_count, ping, reliable_echo, reliable_failure
from bootstrap.ice import OfferRecorder, selected_pairs

PACKETS = 100
PINGS = 20
MARKERS_AFTER_SETUP = 12
FIRST_ECHO_LIMIT = 4.0


def say(message: dict[str, Any]) -> None:
    print(json.dumps(message), flush=True)


async def hear() -> dict[str, Any]:
    line = await asyncio.to_thread(sys.stdin.readline)
    return dict(json.loads(line)) if line.strip() else {}


async def join(room: rtc.Room, request: dict[str, Any], recorder: OfferRecorder) -> dict[str, Any]:
    """Connect as asked; what was offered while connecting, and on success the selected pairs."""
    relay = rtc.IceTransportType.TRANSPORT_RELAY if request["relay"] else rtc.IceTransportType.TRANSPORT_ALL
    options = rtc.RoomOptions(auto_subscribe=False, rtc_config=rtc.RtcConfiguration(ice_transport_type=relay))
    started = time.monotonic()
    try:
        # The SDK's own bound is 4 attempts of 15 s each (rust-sdks rtc_session.rs ICE_CONNECT_TIMEOUT); ours is
        # the check's: a path that works here joins in well under a second.
        await asyncio.wait_for(room.connect(request["url"], request["token"], options), request["ice_timeout"])
    except (TimeoutError, rtc.ConnectError) as exc:
        await asyncio.sleep(1.2)  # the SDK forwards its log in batches, once a second (livekit-ffi logger.rs)
        error = str(exc) or f"ICE did not connect within {request['ice_timeout']:.0f} s"
        return {"joined": False, "join_s": None, "error": error, "offered": recorder.offered.as_dict(), "pairs": {}}
    join_s = time.monotonic() - started
    pairs = selected_pairs(await room.get_rtc_stats())
    return {
        "joined": True,
        "join_s": round(join_s, 3),
        "error": "",
        "offered": recorder.offered.as_dict(),
        "pairs": {side: {"local": asdict(p.local), "remote": asdict(p.remote)} for side, p in pairs.items()},
    }


async def exchange(room: rtc.Room, agent: str, window: float = 0.0) -> dict[str, Any]:
    """Reliable packets, RPC round trips and audio markers with the agent, as the single run's data and media
    stages do; the first failure is reported, naming its direction."""
    data = DataFigures()
    result: dict[str, Any] = {"data": None, "audio": None, "failure": None}
    await reliable_echo(room, agent, PACKETS, data)
    if not data.in_order:
        data.agent_received = await agent_packet_count(room, agent)
        result.update(data=data.as_dict(), failure=reliable_failure(data, agent))
        return result
    try:
        await ping(room, agent, PINGS, data)
    except DataPathError as exc:
        result.update(data=data.as_dict(), failure=str(exc))
        return result
    result["data"] = data.as_dict()
    probe = AudioProbe(room, agent, MARKERS_AFTER_SETUP, FIRST_ECHO_LIMIT, window_s=window)
    try:
        figures = await probe.run()
        result["failure"] = await probe.verdict()
        result["audio"] = figures.as_dict()
    finally:
        await probe.close()
    return result


async def watch(room: rtc.Room, seconds: float) -> dict[str, Any]:
    """When the SDK says the connection is in trouble, then back or lost (whichever ends the watch): the
    participant's own view of a fault."""
    started, ended = time.monotonic(), asyncio.Event()
    seen: dict[str, float | str] = {}

    def mark(name: str) -> None:
        seen.setdefault(name, round(time.monotonic() - started, 3))

    def on_reconnected() -> None:
        mark("reconnected_s")
        ended.set()

    def on_disconnected(reason: object = None) -> None:
        mark("disconnected_s")
        seen.setdefault("reason", str(reason))
        ended.set()

    room.on("reconnecting", lambda: mark("reconnecting_s"))
    room.on("reconnected", on_reconnected)
    room.on("disconnected", on_disconnected)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(ended.wait(), seconds)
    return {key: seen.get(key) for key in ("reconnecting_s", "reconnected_s", "disconnected_s", "reason")}


async def main() -> None:
    recorder = OfferRecorder()
    recorder.install()
    request = await hear()
    room = rtc.Room()
    try:
        joined = await join(room, request, recorder)
        say(joined)
        while joined["joined"] and (command := await hear()):
            if agent := command.get("agent"):
                say(await exchange(room, agent, float(command.get("window", 0.0))))
            elif "watch" in command:
                say(await watch(room, float(command["watch"])))
    finally:
        if room.isconnected():
            await room.disconnect()


if __name__ == "__main__":
    asyncio.run(main())
    exit_without_finalization(0)
