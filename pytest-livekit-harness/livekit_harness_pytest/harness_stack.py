"""The session's LiveKit stack: which server, brought up if it is the project's own and down, and proven once by
the checks `python -m bootstrap` runs (its --json report: services, worker, token, join, dispatch, data, media,
webhooks). A failed proof is turned into one message with the report's cause and fix, for pytest.exit.

Proven once per test run: xdist workers share one verdict (a file keyed by the run's uid, under a lock), and a
session started by a session that proved the same server and keys (pytester) inherits its verdict
(VERIFIED_ENV), checking only that the server still answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from livekit import api

from backend.settings import Settings, validate
from backend.tokens import participant_token
from devstack.health import check_all
from devstack.ports import port_owner
from devstack.stack_env import REPO_ROOT, Stack, load_stack

VERIFIED_ENV = "LIVEKIT_HARNESS_VERIFIED"
VERIFY_TIMEOUT = 45.0  # seconds for `python -m bootstrap` (its own stages stop within --timeout 30)
UP_TIMEOUT = 300.0  # `python -m devstack up` may build livekit-server on a fresh machine
LOCK_DIR = Path(tempfile.gettempdir())
PORT_WAIT = 10.0  # seconds for another program to free the webhook port before the one retry


class StackUnusable(Exception):
    """The stack could not be brought up or proven: the message holds the cause and the fix."""


@dataclass
class LiveKitStack:
    """What `livekit_stack` yields: where the server is, its keys, an API client, and how it was proven."""

    url: str  # ws:// or wss://
    api_key: str
    api_secret: str = field(repr=False)
    stack: Stack | None = None  # the project's stack settings (None for a server elsewhere)
    report: dict[str, Any] = field(default_factory=dict, repr=False)  # the bootstrap's --json report
    verified: str = ""  # how: "bootstrap", "bootstrap (earlier in this run)", or "inherited"
    _clients: dict[int, api.LiveKitAPI] = field(default_factory=dict, repr=False)

    @property
    def http_url(self) -> str:
        parsed = urlparse(self.url)
        scheme = {"ws": "http", "wss": "https"}.get(parsed.scheme, parsed.scheme)
        return parsed._replace(scheme=scheme).geturl().rstrip("/")

    @property
    def settings(self) -> Settings:
        return validate(
            {"LIVEKIT_URL": self.url, "LIVEKIT_API_KEY": self.api_key, "LIVEKIT_API_SECRET": self.api_secret}
        )

    @property
    def api(self) -> api.LiveKitAPI:
        """An API client bound to the running event loop (one per loop, closed at the session's end)."""
        loop = asyncio.get_running_loop()
        client = self._clients.get(id(loop))
        if client is None:
            client = api.LiveKitAPI(self.http_url, self.api_key, self.api_secret)
            self._clients[id(loop)] = client
        return client

    def token(self, identity: str, room: str, **options: Any) -> str:
        """A participant token (backend.tokens.participant_token): join `room` as `identity`."""
        return participant_token(self.settings, identity=identity, room=room, **options)

    def env(self) -> dict[str, str]:
        """The LIVEKIT_* variables for a process that talks to this server."""
        return {"LIVEKIT_URL": self.url, "LIVEKIT_API_KEY": self.api_key, "LIVEKIT_API_SECRET": self.api_secret}

    def fingerprint(self) -> str:
        """Names this server and key pair without revealing the secret."""
        return hashlib.sha256(f"{self.url}\0{self.api_key}\0{self.api_secret}".encode()).hexdigest()[:16]


def resolve(url_option: str | None) -> LiveKitStack:
    """--livekit-url, else LIVEKIT_HARNESS_URL, else the project's stack (stack.env); keys from LIVEKIT_API_KEY /
    LIVEKIT_API_SECRET when a URL is given, else the stack's development keys."""
    stack = load_stack()
    url = url_option or os.environ.get("LIVEKIT_HARNESS_URL", "")
    if not url:
        return LiveKitStack(stack.livekit_ws_url, stack.api_key, stack.api_secret, stack)
    key = os.environ.get("LIVEKIT_API_KEY", stack.api_key)
    secret = os.environ.get("LIVEKIT_API_SECRET", stack.api_secret)
    own = urlparse(url).port == stack.livekit_port and urlparse(url).hostname in ("localhost", "127.0.0.1")
    return LiveKitStack(url.rstrip("/"), key, secret, stack if own else None)


@contextlib.contextmanager
def file_lock(name: str) -> Iterator[None]:
    with (LOCK_DIR / name).open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _module(*args: str, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("LIVEKIT_")}
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**inherited, **env})  # fmt: skip


def stack_down(stack: Stack) -> str:
    """'' when PostgreSQL, Redis and LiveKit all answer their readiness checks, else what is down and why."""
    return "; ".join(f"{r.name} {r.reason}" for r in asyncio.run(check_all(stack)) if not r.up)


def bring_up(lk: LiveKitStack) -> bool:
    """The project's stack up through devstack if it is down; True when this session started it."""
    if lk.stack is None:
        return False
    with file_lock("livekit-harness-up.lock"):
        if not (down := stack_down(lk.stack)):
            return False
        result = _module("devstack", "up", env={}, timeout=UP_TIMEOUT)
        if result.returncode != 0:
            raise StackUnusable(f"the stack was down ({down}) and `python -m devstack up` failed:\n"
                                f"{result.stderr.strip()[-2000:]}\nfix: see `make logs`")  # fmt: skip
        return True


def server_answers(lk: LiveKitStack) -> str:
    """'' when GET / answers 200 OK; else why not."""
    try:
        with urllib.request.urlopen(f"{lk.http_url}/", timeout=3) as resp:
            body = resp.read().strip()
            return "" if resp.status == 200 and body == b"OK" else f"GET / answered {resp.status} {body[:40]!r}"
    except OSError as exc:
        return f"GET {lk.http_url}/ failed: {exc}"


def verify(lk: LiveKitStack, run_uid: str = "", hub_events: Any = None) -> None:
    """Prove `lk` with the bootstrap's checks, once per run; raises StackUnusable with the cause and fix."""
    if os.environ.get(VERIFIED_ENV) == lk.fingerprint():
        if why := server_answers(lk):
            raise StackUnusable(f"the server proven earlier in this run no longer answers: {why}")
        lk.verified = "inherited"
        return
    cache = LOCK_DIR / f"livekit-harness-verified-{run_uid}-{lk.fingerprint()}.json" if run_uid else None
    with file_lock(f"livekit-harness-verify-{lk.fingerprint()}.lock"):
        if cache is not None and cache.exists():
            lk.report, lk.verified = json.loads(cache.read_text()), "bootstrap (earlier in this run)"
        else:
            lk.report, lk.verified = run_bootstrap(lk, hub_events), "bootstrap"
            if cache is not None:
                cache.write_text(json.dumps(lk.report))
    os.environ[VERIFIED_ENV] = lk.fingerprint()


def run_bootstrap(lk: LiveKitStack, hub_events: Any = None) -> dict[str, Any]:
    """The bootstrap's verdict; once more when its only failure was the webhook port held by another program (a
    `python -m bootstrap` of someone else's holds it for ~2 s), after it was freed (at most PORT_WAIT s)."""
    report = _bootstrap_once(lk, hub_events)
    if _only_port_taken(report) and not _webhooks_through_hub(report, hub_events):
        deadline = time.monotonic() + PORT_WAIT
        while time.monotonic() < deadline and port_owner(lk.stack.webhook_port if lk.stack else 8000):
            time.sleep(0.2)
        report = _bootstrap_once(lk, hub_events)
    if report.get("status") != "pass" and not _webhooks_through_hub(report, hub_events):
        raise StackUnusable(describe_failure(report))
    return report


def _only_port_taken(report: dict[str, Any]) -> bool:
    failed = [s for s in report.get("stages", []) if s.get("status") == "fail"]
    return [s["name"] for s in failed] == ["webhooks"] and "already taken" in failed[0].get("cause", "")


def _bootstrap_once(lk: LiveKitStack, hub_events: Any = None) -> dict[str, Any]:
    started = time.monotonic()
    try:
        result = _module("bootstrap", "--json", "--timeout", "30", env=lk.env(), timeout=VERIFY_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise StackUnusable(f"`python -m bootstrap` did not finish within {VERIFY_TIMEOUT:.0f}s") from None
    try:
        report: dict[str, Any] = json.loads(result.stdout)
    except json.JSONDecodeError:
        raise StackUnusable(f"`python -m bootstrap --json` printed no report (exit {result.returncode}):\n"
                            f"{result.stderr.strip()[-1500:]}") from None  # fmt: skip
    if report.get("status") == "error":
        raise StackUnusable(f"`python -m bootstrap` refused its settings: {report.get('error')}")
    report["harness_seconds"] = round(time.monotonic() - started, 3)
    return report


def describe_failure(report: dict[str, Any]) -> str:
    failed = [s for s in report.get("stages", []) if s.get("status") == "fail"]
    lines = [f"the LiveKit stack failed `python -m bootstrap` ({len(failed)} stage(s) failed):"]
    for stage in failed:
        lines += [
            f"  ✗ {stage['name']}",
            f"      cause: {stage.get('cause', '')}",
            f"      fix:   {stage.get('fix', '')}",
        ]
    return "\n".join(lines)


def _webhooks_through_hub(report: dict[str, Any], hub_events: Any) -> bool:
    """The bootstrap could not bind the webhook port because the shared receiver (webhook_hub) holds it: then the
    same check (room_started and participant_joined for the user and the agent, verified) is made on the events
    the shared receiver verified for the bootstrap's room."""
    stages = {s["name"]: s for s in report.get("stages", [])}
    failed = [name for name, s in stages.items() if s.get("status") == "fail"]
    webhooks = stages.get("webhooks", {})
    if hub_events is None or failed != ["webhooks"] or "already taken" not in webhooks.get("cause", ""):
        return False
    room = re.search(r"ACTIVE in (\S+)", stages.get("join", {}).get("detail", ""))
    if room is None:
        return False
    events = hub_events(room.group(1))
    kinds = [entry["event"].get("event") for entry in events]  # each entry: {"seq": …, "event": the event}
    if "room_started" not in kinds or kinds.count("participant_joined") < 2:
        return False
    webhooks.update(
        status="pass", detail=f"{len(events)} verified by the shared receiver: {', '.join(sorted(set(kinds)))}"
    )
    report["status"] = "pass"
    return True
