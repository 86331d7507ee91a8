"""The participant on a client host as a real browser: Chromium inside the namespace opens frontend/ (served on
the host side of the link), which joins with livekit-client. The same two steps as the rtc SDK's client
(bootstrap.participant_process), with the same result shapes, so a path does not care which client crossed it:
  join()          the page connects; its selected candidate pair from the browser's own stats (RTCRtpSender
                  getStats(): transport → selected candidate-pair → local and remote candidates);
  exchange(agent) RPC round trips (livekit-client's performRpc to the agent's ping), what the agent heard from
                  the page's 440 Hz oscillator (its `bootstrap.heard` RPC) and the agent's echo heard by the
                  page's WebAudio analyser.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from pathlib import Path
from typing import Any

from agent_runtime.echo import HEARD_METHOD, PING_METHOD
from bootstrap.audio_probe import HEARD_RMS
from bootstrap.browser.chromium import Chromium
from bootstrap.browser.frontend_server import FrontendServer
from bootstrap.stats import summary

OSCILLATOR_HZ = 440.0  # frontend/app.js
FREQUENCY_TOLERANCE = 30.0
ECHO_MIN_DB = -70.0
PINGS = 20
ECHO_WAIT = 5.0
POLL = 0.05


class PageClient:
    def __init__(self, namespace: str, bind_address: str, livekit_url: str, trust_ca: Path | None, relay: bool) -> None:
        self.relay = relay  # media through TURN only
        self.server = FrontendServer(livekit_url=livekit_url, host=bind_address)
        self.browser = Chromium(namespace=namespace, trust_ca=trust_ca)

    async def close(self) -> None:
        await self.browser.close()
        await self.server.stop()

    async def join(self, token: str, ice_timeout: float) -> dict[str, Any]:
        await self.server.start()
        await self.browser.start(insecure_origin_as_secure=self.server.url.rstrip("/"))
        await self.browser.open(f"{self.server.url}#token={token}" + ("&relay=1" if self.relay else ""))
        deadline = time.monotonic() + ice_timeout
        # Connected, and the oscillator published: its sender's stats name the transport's selected pair.
        while not (state := await self.state()).get("published") and state.get("connection") != "failed":
            if time.monotonic() > deadline:
                return self._not_joined(
                    f"the page did not connect within {ice_timeout:.0f} s ({state.get('connection')})"
                )
            await asyncio.sleep(POLL)
        if state["connection"] == "failed":
            return self._not_joined(state["error"])
        pair = await self.browser.evaluate("window.lkSelectedPair()", wait=True)
        joined = {"joined": True, "join_s": round(state["joinMs"] / 1000, 3), "error": ""}
        return joined | {"offered": {"candidates": [], "ice_servers": []}, "pairs": {"publisher": pair} if pair else {}}

    @staticmethod
    def _not_joined(error: str) -> dict[str, Any]:
        return {"joined": False, "join_s": None, "error": error, "offered": None, "pairs": {}}

    async def exchange(self, agent: str) -> dict[str, Any]:
        rtts: list[float] = []
        for i in range(PINGS):
            payload = f"{i}:{secrets.token_hex(8)}"
            call = await self.rpc(agent, PING_METHOD, payload)
            if call.get("error") or call.get("reply") != payload:
                return self._failed(f"RPC {PING_METHOD} from the page to {agent}: {call.get('error') or call}", rtts)
            rtts.append(call["ms"] / 1000)
        heard = json.loads((await self.rpc(agent, HEARD_METHOD, "")).get("reply") or "{}")
        audio: dict[str, Any] = {"agent_heard": heard}
        if heard.get("peak_rms", 0) < HEARD_RMS or not _near_oscillator(heard.get("dominant_hz", 0)):
            return self._failed(f"page → agent audio: the agent heard {heard}, not the page's 440 Hz", rtts, audio)
        echo = await self._echo()
        first = echo.get("firstS")
        audio |= {"echo_hz": echo.get("hz"), "echo_db": echo.get("db"), "first_echo_s": first and round(first, 3)}
        if not _loud_echo(echo):
            return self._failed(f"agent → page audio: the page's analyser heard {echo}, not the echo", rtts, audio)
        return {"data": self._data(rtts), "audio": audio, "failure": None}

    async def _echo(self) -> dict[str, Any]:
        deadline = time.monotonic() + ECHO_WAIT
        while True:
            echo: dict[str, Any] = (await self.state()).get("echo") or {}
            if _loud_echo(echo) or time.monotonic() > deadline:
                return echo
            await asyncio.sleep(POLL)

    @staticmethod
    def _data(rtts: list[float]) -> dict[str, Any]:
        return {"rpc_round_trip_s": summary(rtts), "rpc_calls": len(rtts)}

    def _failed(self, failure: str, rtts: list[float], audio: dict[str, Any] | None = None) -> dict[str, Any]:
        return {"data": self._data(rtts), "audio": audio, "failure": failure}

    async def rpc(self, agent: str, method: str, payload: str) -> dict[str, Any]:
        expression = f"window.lkRpc({json.dumps(agent)}, {json.dumps(method)}, {json.dumps(payload)})"
        return dict(await self.browser.evaluate(expression, wait=True) or {})

    async def state(self) -> dict[str, Any]:
        raw = await self.browser.evaluate("JSON.stringify(window.lkState || {})")
        return dict(json.loads(raw)) if raw else {"connection": "loading"}


def _near_oscillator(hz: float) -> bool:
    return abs(hz - OSCILLATOR_HZ) <= FREQUENCY_TOLERANCE


def _loud_echo(echo: dict[str, Any]) -> bool:
    """The page's analyser heard a tone at the oscillator's frequency (db is null until a frame was analysed)."""
    db = echo.get("db")
    return db is not None and db > ECHO_MIN_DB and _near_oscillator(echo.get("hz") or 0)
