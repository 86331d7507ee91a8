"""Everything the stages share during one run, and the deadline they all answer to."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from livekit import agents, api, rtc

from backend.settings import Settings
from bootstrap.audio_probe import AudioFigures
from bootstrap.data_probe import DataFigures
from bootstrap.load_figures import LoadFigures
from bootstrap.result import StageFailure
from bootstrap.webhook_sink import WebhookSink
from devstack.netns import ClientHost
from devstack.stack_env import Stack

if TYPE_CHECKING:  # the browser pieces are imported by the browser stage only
    from bootstrap.browser.chromium import Chromium


def fresh_room_name() -> str:
    """Unique per run: a token's agent dispatch only applies when the join creates the room."""
    return f"bootstrap-{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


@dataclass
class LoadMode:
    """--load N: N rooms through the whole path, `concurrency` at a time."""

    rooms: int
    concurrency: int
    figures: LoadFigures | None = None  # set by the load stage, read by the report


@dataclass
class BrowserMode:
    """--browser: headless Chromium joins through frontend/."""

    frontend_env: Path | None = None  # where the page reads NEXT_PUBLIC_LIVEKIT_URL (None: frontend/.env.local)
    chromium: Chromium | None = None  # set by the browser stage, for its timeout explanation


@dataclass
class ClusterMode:
    """--cluster: two nodes on hosts of their own sharing a Redis on another; the worker, on a host of its own,
    registers through node b; the participant joins from yet another."""

    figures: dict[str, dict[str, Any]] = field(default_factory=dict)  # per room, for the report
    drill_name: str = ""  # --drill NAME, if any
    drill: dict[str, dict[str, Any]] = field(default_factory=dict)  # its figures, per fault


@dataclass
class PathsMode:
    """--paths: a client host in a network namespace, a node of the run's own, one stage per network path."""

    paths: list[str]  # the paths to prove, in order (bootstrap.network_paths.PATHS)
    fault: str | None = None  # a misconfiguration reproduced on purpose (bootstrap.network_paths.FAULTS)
    host: ClientHost | None = None  # the client host, once created (client-host stage)
    node_config: dict[str, Any] = field(default_factory=dict)  # the config the node runs
    node_log: Path | None = None  # its log: the server's side of a failure
    node_log_start: int = 0  # where this run's part of it starts (earlier runs' lines come before)
    ca_cert: Path | None = None  # the local CA the clients trust, when a path needs TLS
    front_log: Path | None = None  # the TLS front's error log (a refused handshake is there)
    figures: dict[str, dict[str, Any]] = field(default_factory=dict)  # per path, for the report


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
    load: LoadMode | None = None  # set in load mode only
    browser: BrowserMode | None = None  # set in browser mode only
    cluster: ClusterMode | None = None  # set in cluster mode only
    paths: PathsMode | None = None  # set in paths mode only
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
