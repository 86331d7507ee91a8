"""A session's side of the shared webhook receiver (webhook_hub): find it on the webhook port, or start it
(under a machine-wide lock, so two sessions never both start one), take a lease for the session, and read one
room's verified events from it. `WebhookEvents` is what the `webhook_events` fixture gives a test."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from google.protobuf.json_format import ParseDict
from livekit import api

from devstack.ports import port_owner
from livekit_harness_pytest.harness_stack import LiveKitStack, file_lock
from livekit_harness_pytest.process_identity import Creator
from livekit_harness_pytest.webhook_hub import HUB_NAME, MAX_WAIT

START_TIMEOUT = 10.0  # seconds for a new hub to answer, and for another program to free the port
DEFAULT_WAIT = 10.0
RELEASE_WAIT = 3.0


class WebhooksUnavailable(Exception):
    pass


class HubClient:
    def __init__(self, lk: LiveKitStack, host: str, port: int) -> None:
        self.lk, self.host, self.port = lk, host, port
        self.base = f"http://{host}:{port}"
        self.lease = ""

    def _request(self, method: str, path: str, body: Any = None, timeout: float = 3.0) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})  # fmt: skip
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return json.loads(resp.read())

    def _is_hub(self) -> bool | None:
        """True: the hub answers; False: something else holds the port; None: nothing listens."""
        try:
            return self._request("GET", "/lkh/hub").get("hub") == HUB_NAME  # type: ignore[no-any-return]
        except urllib.error.HTTPError:
            return False
        except (OSError, ValueError):
            return None if port_owner(self.port) is None else False

    def running(self) -> bool:
        return bool(self._is_hub())

    def connect(self) -> None:
        """Lease the machine's hub, starting it if nobody runs one; WebhooksUnavailable naming the port's holder."""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            with file_lock("livekit-harness-webhook-hub.lock"):
                state = self._is_hub()
                if state is None:
                    self._start()
                    state = self._is_hub()
            if state:
                try:
                    self.lease = self._request("POST", "/lkh/leases", Creator.me().as_dict())["lease"]
                    return
                except (OSError, ValueError, KeyError):
                    pass  # the hub is closing: a new one starts once the port is free
            time.sleep(0.2)
        owner = port_owner(self.port) or "nobody (the receiver did not start)"
        raise WebhooksUnavailable(
            f"webhook port {self.port} is held by {owner}, not the shared receiver, for {START_TIMEOUT:.0f}s; "
            "fix: stop that program (a `python -m bootstrap` run frees it when it ends)"
        )

    def _start(self) -> None:
        log = Path(tempfile.gettempdir()) / "livekit-harness-webhook-hub.log"
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("LIVEKIT_")}, **self.lk.env()}
        with log.open("a") as out:
            hub = subprocess.Popen([sys.executable, "-m", "livekit_harness_pytest.webhook_hub", "--host", self.host,
                                    "--port", str(self.port)], stdout=out, stderr=out, stdin=subprocess.DEVNULL,
                                   env=env, start_new_session=True)  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and hub.poll() is None:
            if self._is_hub():
                return
            time.sleep(0.05)
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-10:])
        raise WebhooksUnavailable(f"the shared webhook receiver did not start on {self.host}:{self.port}:\n{tail}")

    def release(self) -> None:
        """Give the lease back; when it was the last one, wait (at most RELEASE_WAIT s) until the hub is gone."""
        if not self.lease:
            return
        left = 1
        with contextlib.suppress(OSError, ValueError, KeyError):  # gone already: it drops ended sessions' leases too
            left = self._request("DELETE", f"/lkh/leases/{self.lease}")["leases"]
        self.lease = ""
        deadline = time.monotonic() + RELEASE_WAIT
        while not left and time.monotonic() < deadline and self._is_hub() is not None:
            time.sleep(0.05)

    def events(self, room: str, after: int = 0, wait: float = 0.0) -> list[dict[str, Any]]:
        path = f"/lkh/events?room={urllib.parse.quote(room)}&after={after}&wait={min(wait, MAX_WAIT)}"
        return self._request("GET", path, timeout=wait + 3.0)["events"]  # type: ignore[no-any-return]


class WebhookEvents:
    """The verified webhooks of one room, as api.WebhookEvent, in arrival order."""

    def __init__(self, hub: HubClient, room: str) -> None:
        self.hub, self.room = hub, room
        self.events: list[api.WebhookEvent] = []
        self._seq = 0

    def _take(self, entries: list[dict[str, Any]]) -> None:
        for entry in entries:
            self._seq = max(self._seq, entry["seq"])
            self.events.append(ParseDict(entry["event"], api.WebhookEvent(), ignore_unknown_fields=True))

    async def refresh(self, wait: float = 0.0) -> list[api.WebhookEvent]:
        self._take(await asyncio.to_thread(self.hub.events, self.room, self._seq, wait))
        return self.events

    def names(self) -> list[str]:
        return [e.event for e in self.events]

    def matching(self, event: str, identity: str | None = None) -> list[api.WebhookEvent]:
        return [e for e in self.events
                if e.event == event and (identity is None or e.participant.identity == identity)]  # fmt: skip

    async def wait_for(
        self,
        event: str,
        identity: str | None = None,
        timeout: float = DEFAULT_WAIT,  # noqa: ASYNC109 (as Participant's)
    ) -> api.WebhookEvent:
        """The first verified `event` (for participant `identity`, if given) of this room; AssertionError naming
        what did arrive after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while not (found := self.matching(event, identity)):
            left = deadline - time.monotonic()
            if left <= 0:
                who = f" for {identity}" if identity else ""
                raise AssertionError(f"no verified {event}{who} webhook for room {self.room} within {timeout:.1f}s; "
                                     f"got: {self.names() or 'none'}")  # fmt: skip
            await self.refresh(wait=min(left, 2.0))
        return found[0]
