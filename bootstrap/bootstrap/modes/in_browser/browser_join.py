"""The browser stage (--browser): a real browser joins. Headless Chromium opens frontend/ (livekit-client from
npm), which joins this run's room with a token from the backend, publishes a 440 Hz oscillator and sees the
agent. Checked through the server API and a verified track_published webhook; then audio both ways: the
agent reports (over RPC) hearing the oscillator's frequency, and the page's WebAudio analyser hears the
agent's echo of it. A screenshot is saved on failure."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from livekit import api

from backend.tokens import participant_token
from bootstrap.audio_probe import HEARD_RMS, agent_hearing
from bootstrap.browser.chromium import Chromium
from bootstrap.browser.frontend_server import CLIENT_JS, URL_SETTING, FrontendServer, frontend_env_file
from bootstrap.context import RunContext
from bootstrap.lookups import find_active, poll_until
from bootstrap.result import StageFailure

IDENTITY = "bootstrap-browser"
POLL_INTERVAL = 0.2
OSCILLATOR_HZ = 440.0  # frontend/app.js
FREQUENCY_TOLERANCE = 30.0  # the page's analyser reads on an 11.7 Hz grid, the agent's FFT on 12.5 Hz
ECHO_MIN_DB = -70.0  # a WebAudio analyser bin this loud is a tone, not the silence of an idle track
SCREENSHOT = Path("reports") / "browser-failure.png"


@dataclass
class BrowserState:
    frontend_env: Path | None = None  # where the page reads NEXT_PUBLIC_LIVEKIT_URL (None: frontend/.env.local)
    chromium: Chromium | None = None  # set by the browser stage, for its timeout explanation


async def run(ctx: RunContext, state: BrowserState) -> str:
    if not CLIENT_JS.exists():
        raise StageFailure("frontend/node_modules has no livekit-client", "run `make browser-deps` (npm ci)")
    mode = state
    server = FrontendServer(mode.frontend_env or frontend_env_file())
    await server.start()
    ctx.closers.append(server.stop)
    browser = mode.chromium = Chromium()
    ctx.closers.append(browser.close)
    await browser.start()
    token = participant_token(ctx.settings, identity=IDENTITY, room=ctx.room_name)
    await browser.open(f"{server.url}#token={token}")
    while True:
        page = await page_state(browser)
        if page.get("error"):
            shot = await browser.screenshot(SCREENSHOT)
            raise StageFailure(f"the page failed: {page['error']} (screenshot: {shot})", _fix(page["error"]))
        if page.get("published") and await _server_confirms(ctx, browser):
            break
        await asyncio.sleep(POLL_INTERVAL)
    heard = await poll_until(lambda: _agent_heard_the_oscillator(ctx), POLL_INTERVAL)
    echo = await poll_until(lambda: _page_heard_the_echo(browser), POLL_INTERVAL)
    return (f"{IDENTITY} joined from Chromium, published audio (track_published verified), saw the agent; the agent "
            f"heard {heard['dominant_hz']:.0f} Hz from it, the page heard the echo at {echo['hz']:.0f} Hz")  # fmt: skip


def _near_oscillator(hz: float) -> bool:
    return abs(hz - OSCILLATOR_HZ) <= FREQUENCY_TOLERANCE


async def _agent_heard_the_oscillator(ctx: RunContext) -> dict[str, float] | None:
    """Browser → agent: the agent's own report of the browser's audio (its dominant frequency)."""
    assert ctx.room is not None
    heard = await agent_hearing(ctx.room, ctx.agent_identity, about=IDENTITY)
    return heard if heard.get("peak_rms", 0) >= HEARD_RMS and _near_oscillator(heard["dominant_hz"]) else None


async def _page_heard_the_echo(browser: Chromium) -> dict[str, float] | None:
    """Agent → browser: the page's analyser on the agent's echo track."""
    echo: dict[str, float | None] = (await page_state(browser)).get("echo") or {}
    db, hz = echo.get("db"), echo.get("hz")  # db is null (JSON's -Infinity) until a frame was analysed
    return (
        {"db": db, "hz": hz}
        if db is not None and hz is not None and db > ECHO_MIN_DB and _near_oscillator(hz)
        else None
    )


async def page_state(browser: Chromium) -> dict[str, Any]:
    raw = await browser.evaluate("JSON.stringify(window.lkState || {})")
    return json.loads(raw) if raw else {}


def _fix(error: str) -> str:
    if URL_SETTING in error:
        return f"set {URL_SETTING}=ws://localhost:7880 in frontend/.env.local (see frontend/.env.local.example)"
    return "open the saved screenshot and `make logs`; check the browser can reach ports 7880, 7881 and 7882/udp"


async def _server_confirms(ctx: RunContext, chromium: Chromium) -> bool:
    """The server lists the browser ACTIVE with an audio track, a verified webhook says it was published,
    and the page lists the agent among the participants it sees."""
    browser = await find_active(ctx, ctx.room_name, IDENTITY)
    if browser is None or not any(t.type == api.TrackType.AUDIO for t in browser.tracks):
        return False
    published = any(
        e.event == "track_published" and e.participant.identity == IDENTITY for e in ctx.sink.for_room(ctx.room_name)
    )
    seen = {p["identity"] for p in (await page_state(chromium)).get("participants", [])}
    return published and ctx.agent_identity in seen


async def on_timeout(ctx: RunContext, state: BrowserState) -> StageFailure:
    page: dict[str, Any] = {}
    shot = ""
    if (chromium := state.chromium) is not None:
        try:
            page = await page_state(chromium)
            shot = f"; screenshot: {await chromium.screenshot(SCREENSHOT)}"
        except Exception as exc:
            shot = f"; no screenshot ({exc})"
    return StageFailure(
        f"the browser check did not finish: page connection={page.get('connection', 'unknown')!r}, "
        f"published={page.get('published', False)}, participants seen="
        f"{[p['identity'] for p in page.get('participants', [])]}; browser → agent audio: "
        f"{await _what_agent_heard(ctx)}; agent → browser audio: the page's loudest echo {page.get('echo')}{shot}",
        _fix(page.get("error", "")),
    )


async def _what_agent_heard(ctx: RunContext) -> str:
    if ctx.room is None or not ctx.agent_identity:
        return "no agent to ask"
    try:
        return f"the agent heard {await agent_hearing(ctx.room, ctx.agent_identity, about=IDENTITY)}"
    except Exception as exc:
        return f"the agent did not answer ({type(exc).__name__})"
