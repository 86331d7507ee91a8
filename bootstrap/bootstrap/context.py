"""Everything the stages share during one run, and the deadline they all answer to."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from livekit import agents, api, rtc

from backend.settings import Settings
from bootstrap.chromium import Chromium
from bootstrap.frontend_server import frontend_env_file
from bootstrap.load_figures import LoadFigures
from bootstrap.stack import Stack
from bootstrap.webhook_sink import WebhookSink


def fresh_room_name() -> str:
    """Unique per run: a token's agent dispatch only applies when the join creates the room."""
    return f"bootstrap-{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


@dataclass
class RunContext:
    settings: Settings
    stack: Stack
    agent_name: str
    webhook_host: str
    webhook_port: int
    deadline: float  # time.monotonic() by which the whole run (cleanup included) must end
    room_name: str = field(default_factory=fresh_room_name)
    identity: str = "bootstrap-user"
    lkapi: api.LiveKitAPI | None = None
    worker: agents.AgentServer | None = None
    worker_task: asyncio.Task[None] | None = None
    worker_id: str = ""
    worker_ws_url: str = ""  # where the worker registers, when not LIVEKIT_URL (cluster mode: node b)
    sink: WebhookSink | None = None
    sink_error: str = ""
    token: str = ""
    room: rtc.Room | None = None
    joined_at: float = 0.0
    agent_identity: str = ""
    rooms_joined: set[str] = field(default_factory=set)  # deleted by cleanup, whatever the outcome
    frontend_env: Path = field(default_factory=frontend_env_file)
    browser: Chromium | None = None
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)  # run first by cleanup
    load_rooms: int = 0
    load_concurrency: int = 1
    load_figures: LoadFigures | None = None

    def remaining(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    @property
    def api(self) -> api.LiveKitAPI:
        if self.lkapi is None:
            self.lkapi = api.LiveKitAPI(
                self.settings.http_url, self.settings.api_key, self.settings.api_secret, failover=False
            )
        return self.lkapi
