"""Everything the stages share during one run, and the deadline they all answer to."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from livekit import agents, api, rtc

from backend.settings import Settings
from bootstrap.audio_probe import AudioFigures
from bootstrap.data_probe import DataFigures
from bootstrap.result import StageFailure
from bootstrap.webhook_sink import WebhookSink
from devstack.stack_env import Stack


def fresh_room_name() -> str:
    """Unique per run: a token's agent dispatch only applies when the join creates the room."""
    return f"bootstrap-{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


@dataclass(frozen=True)
class Server:
    """A LiveKit server a run talks to, as a diagnosis names it: which one stopped answering, where its log is."""

    name: str  # "the LiveKit server", "node a"
    http_url: str  # http(s)://host:port, its GET / answers while the process lives
    logs: str = "see `make logs`"  # where its side of the story is
    # The network namespace it lives in, for a lab's node: while that host does not exist nobody asks it (the
    # test range then routes off this machine, where no probe of ours may go).
    namespace: str | None = None

    @property
    def reachable_here(self) -> bool:
        return self.namespace is None or Path("/run/netns", self.namespace).exists()

    @property
    def host(self) -> str:
        return urlparse(self.http_url).hostname or ""

    @property
    def port(self) -> int:
        """Spelled out even when the URL leaves it implicit."""
        url = urlparse(self.http_url)
        return url.port or (443 if url.scheme == "https" else 80)

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass
class RunContext:
    settings: Settings  # .env: the server URL and the API key/secret
    stack: Stack  # stack.env: ports, pinned version
    agent_name: str  # the agent the token dispatches and the worker registers as
    webhook_host: str  # the address the in-process webhook receiver binds
    webhook_port: int  # its port, from webhook.urls in the server config
    deadline: float  # time.monotonic() by which the whole run (cleanup included) must end
    room_name: str = field(default_factory=fresh_room_name)  # this run's room (load mode: the prefix)
    identity: str = "bootstrap-user"  # the participant the join stage connects
    servers: list[Server] = field(default_factory=list)  # the ones the run talks to (empty: LIVEKIT_URL's)
    # Written by the stages as they go, read by later stages and cleanup:
    worker: agents.AgentServer | None = None  # the in-process no-op worker (worker stage)
    worker_task: asyncio.Task[None] | None = None  # its run() task
    worker_id: str = ""  # the id the server registered it under (AW_…)
    token: str = ""  # the participant's token (token stage)
    room: rtc.Room | None = None  # the participant's connection (join stage)
    joined_at: float = 0.0  # time.monotonic() when the join returned
    agent_identity: str = ""  # the dispatched agent's identity (dispatch stage)
    data: DataFigures | None = None  # reliable packets and RPC round trips (data stage)
    audio: AudioFigures | None = None  # audio markers' round trips (media stage)
    rooms_joined: set[str] = field(default_factory=set)  # deleted by cleanup, whatever the outcome
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)  # run first by cleanup
    finalizers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)  # run last by cleanup
    webhook_sink: WebhookSink | None = None  # the receiver, once it listens (runner)
    sink_error: str = ""  # why it does not, when it does not
    lkapi: api.LiveKitAPI | None = None  # created on first use by `api`

    def data_plane_figures(self) -> dict[str, Any]:
        """The data and media stages' figures, for the report (none when neither ran)."""
        if self.audio is None and self.data is None:
            return {}
        return {"media": {"audio": self.audio.as_dict() if self.audio else None,
                          "data": self.data.as_dict() if self.data else None}}  # fmt: skip

    def servers_talked_to(self) -> list[Server]:
        """Every LiveKit server this run talks to: the mode's (a cluster's nodes), else the one at LIVEKIT_URL."""
        declared = [server for server in self.servers if server.reachable_here]
        return declared if self.servers else [Server("the LiveKit server", self.settings.http_url)]

    def remaining(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    @property
    def sink(self) -> WebhookSink:
        """The running webhook receiver; a stage that needs webhooks fails clearly when there is none."""
        if self.webhook_sink is None:
            raise StageFailure(
                self.sink_error or "the webhook receiver is not running",
                "free the port (stop that process) or change WEBHOOK_PORT and webhook.urls",
            )
        return self.webhook_sink

    @property
    def api(self) -> api.LiveKitAPI:
        if self.lkapi is None:
            self.lkapi = api.LiveKitAPI(
                self.settings.http_url, self.settings.api_key, self.settings.api_secret, failover=False
            )
        return self.lkapi
