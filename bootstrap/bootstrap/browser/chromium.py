"""Just enough of the Chrome DevTools Protocol to drive Debian's headless Chromium: open a page,
evaluate JavaScript, take a screenshot. No browser download: it runs the system `chromium`."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Any

import aiohttp

FLAGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--no-first-run", "--remote-debugging-port=0",
    # The page plays an oscillator without a user gesture, and offers its real loopback candidates.
    "--autoplay-policy=no-user-gesture-required", "--disable-features=WebRtcHideLocalIpsWithMdns",
]  # fmt: skip
DEVTOOLS_LINE = re.compile(r"DevTools listening on (ws://\S+)")
START_TIMEOUT = 15.0


class ChromiumError(RuntimeError):
    """Chromium is missing or did not start; the message says what to do."""


def find_chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


class Chromium:
    """One headless Chromium process with one page, driven over a flattened CDP session."""

    def __init__(self) -> None:
        self._process: asyncio.subprocess.Process | None = None
        self._profile = Path(tempfile.mkdtemp(prefix="bootstrap-chromium-"))
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._session = ""

    async def start(self) -> None:
        binary = find_chromium()
        if binary is None:
            raise ChromiumError("chromium is not installed: run `make browser-deps` (Debian package chromium)")
        self._process = await asyncio.create_subprocess_exec(
            binary, *FLAGS, f"--user-data-dir={self._profile}", "about:blank",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # its own process group: close() ends the renderers too
        )  # fmt: skip
        async with asyncio.timeout(START_TIMEOUT):
            url = await self._devtools_url()
        self._http = aiohttp.ClientSession()
        self._ws = await self._http.ws_connect(url, max_msg_size=0)
        self._reader = asyncio.create_task(self._read())

    async def _devtools_url(self) -> str:
        assert self._process is not None and self._process.stderr is not None
        while line := await self._process.stderr.readline():
            if match := DEVTOOLS_LINE.search(line.decode(errors="replace")):
                return match.group(1)
        raise ChromiumError(f"chromium exited (code {await self._process.wait()}) before DevTools started")

    async def _read(self) -> None:
        assert self._ws is not None
        async for message in self._ws:
            data = json.loads(message.data)
            if (future := self._pending.pop(data.get("id", -1), None)) and not future.done():
                future.set_result(data)

    async def send(self, method: str, params: dict[str, Any] | None = None, *, page: bool = True) -> dict[str, Any]:
        assert self._ws is not None
        message: dict[str, Any] = {"id": next(self._ids), "method": method, "params": params or {}}
        if page:
            message["sessionId"] = self._session
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[message["id"]] = future
        await self._ws.send_str(json.dumps(message))
        reply = await future
        if "error" in reply:
            raise ChromiumError(f"{method}: {reply['error'].get('message')}")
        return reply.get("result", {})  # type: ignore[no-any-return]

    async def open(self, url: str) -> None:
        target = await self.send("Target.createTarget", {"url": url}, page=False)
        attached = await self.send("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True},
                                   page=False)  # fmt: skip
        self._session = attached["sessionId"]

    async def evaluate(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        return result.get("result", {}).get("value")

    async def screenshot(self, path: Path) -> Path:
        shot = await self.send("Page.captureScreenshot", {"format": "png"})
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))  # noqa: ASYNC240 - one small file, on failure only
        return path

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        if self._ws is not None:
            await self._ws.close()
        if self._http is not None:
            await self._http.close()
        if self._process is not None and self._process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._process.pid, signal.SIGKILL)
            await self._process.wait()
        with contextlib.suppress(OSError):
            shutil.rmtree(self._profile)
