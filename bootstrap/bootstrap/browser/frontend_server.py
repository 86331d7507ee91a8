"""Serves frontend/ (the minimal browser client) on an ephemeral loopback port, with /config.json
carrying NEXT_PUBLIC_LIVEKIT_URL from frontend/.env.local, as a Next.js app would expose it."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web
from dotenv import dotenv_values

from devstack.stack_env import REPO_ROOT

FRONTEND = REPO_ROOT / "frontend"
CLIENT_JS = FRONTEND / "node_modules" / "livekit-client" / "dist" / "livekit-client.esm.mjs"
URL_SETTING = "NEXT_PUBLIC_LIVEKIT_URL"


def frontend_env_file() -> Path:
    """frontend/.env.local, as `make env` creates it; the example when it was never created."""
    local = FRONTEND / ".env.local"
    return local if local.exists() else FRONTEND / ".env.local.example"


class FrontendServer:
    """Serves the page on `host` (loopback by default; the paths check binds its client host's link) with the
    server URL from `env_file`, or `livekit_url` when given."""

    def __init__(self, env_file: Path | None = None, *, livekit_url: str = "", host: str = "127.0.0.1") -> None:
        self.livekit_url = livekit_url or (dotenv_values(env_file).get(URL_SETTING) if env_file else "") or ""
        self.host = host
        app = web.Application()
        app.router.add_get("/", self._file(FRONTEND / "index.html"))
        app.router.add_get("/app.js", self._file(FRONTEND / "app.js"))
        app.router.add_get("/vendor/livekit-client.esm.mjs", self._file(CLIENT_JS))
        app.router.add_get("/config.json", self._config)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        self.url = ""

    @staticmethod
    def _file(path: Path):  # type: ignore[no-untyped-def]
        async def handler(_: web.Request) -> web.FileResponse:
            return web.FileResponse(path)

        return handler

    async def _config(self, _: web.Request) -> web.Response:
        return web.json_response({URL_SETTING: self.livekit_url})

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://{self.host}:{port}/"

    async def stop(self) -> None:
        await self._runner.cleanup()
