"""A participant on another host (a network namespace), driven from this process: what the paths and cluster
stages share. `PathClient` is the two steps every such participant takes; `SdkClient` is the rtc SDK's, a
`python -m bootstrap.participant_process` child process inside the host, spoken to in JSON lines (its module says the
protocol); Chromium's is bootstrap.browser.page_client."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, Protocol

from bootstrap.ice import RTC_DEBUG_ENV
from bootstrap.result import StageFailure
from devstack.service_python import CLIENT_ACCOUNT, ServicePythonError, Unprivileged, unprivileged

CA_COPY = "ca.pem"  # in its HOME: what SSL_CERT_FILE names
EXCHANGE_WAIT = 25.0  # 100 packets, 20 RPCs and ~20 audio markers take about 2 s on a working path


class PathClient(Protocol):
    """A participant on the client host: the rtc SDK's (below) or a browser's (bootstrap.browser.page_client)."""

    async def join(self, token: str, ice_timeout: float) -> dict[str, Any]: ...
    async def exchange(self, agent: str) -> dict[str, Any]: ...
    async def close(self) -> None: ...


class SdkClient:
    """The rtc SDK's participant: `python -m bootstrap.participant_process` inside the client host, spoken to in JSON
    lines (its module says the protocol). It trusts the local CA through SSL_CERT_FILE, which the SDK's
    signalling (rustls with rustls-native-certs) reads; it holds no API secret."""

    def __init__(
        self, process: asyncio.subprocess.Process, stderr: IO[bytes], url: str, relay: bool, sandbox: Unprivileged
    ) -> None:
        self.process, self.stderr, self.url, self.relay, self.sandbox = process, stderr, url, relay, sandbox

    @classmethod
    async def start(
        cls, on_host: Callable[[list[str]], list[str]], url: str, *, relay: bool = False, trust_ca: Path | None = None
    ) -> SdkClient:
        """The child on the host `on_host` wraps a command for (e.g. LanHost.exec_argv), to join `url`, as the
        unprivileged CLIENT_ACCOUNT: libwebrtc parses network input there, so it must not be root (nor able to
        change its host's firewall or read our .env). The CA's copy it can read (the CA's own directory is
        root's) is placed in its HOME before the hand-over: after it, root writes nothing there."""
        files = {CA_COPY: trust_ca} if trust_ca is not None else {}
        try:
            sandbox = await asyncio.to_thread(unprivileged, CLIENT_ACCOUNT, "participant", files)
        except ServicePythonError as exc:
            raise StageFailure(f"cannot start the participant unprivileged: {exc}", "run `make install`") from None
        cls._handed_over(sandbox)
        env = {"PATH": os.environ.get("PATH", ""), "HOME": str(sandbox.home), "PYTHONUNBUFFERED": "1"} | RTC_DEBUG_ENV
        if trust_ca is not None:
            env["SSL_CERT_FILE"] = str(sandbox.home / CA_COPY)
        stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed by close())
        process = await asyncio.create_subprocess_exec(
            *on_host(sandbox.argv("bootstrap.participant_process")), cwd=sandbox.home,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=stderr, env=env,
            start_new_session=True,  # a group of its own: close() ends whatever it started too
        )  # fmt: skip
        return cls(process, stderr, url, relay, sandbox)

    @classmethod
    def _handed_over(cls, sandbox: Unprivileged) -> None:
        """HOME belongs to the participant's account from here on: whatever runs as it may replace anything in
        it, HOME itself included, so root writes no path in it any more. Nothing to do; the tests plant symlinks
        here, as that account could."""

    async def join(self, token: str, ice_timeout: float) -> dict[str, Any]:
        await self._tell({"url": self.url, "token": token, "relay": self.relay, "ice_timeout": ice_timeout})
        return await self._hear(ice_timeout + 5.0)

    async def exchange(self, agent: str, window: float = 0.0) -> dict[str, Any]:
        """The data plane with `agent`; its audio kept flowing `window` s longer for the quality figures."""
        await self._tell({"agent": agent, "window": window})
        return await self._hear(EXCHANGE_WAIT + window)

    async def start_watch(self, seconds: float) -> None:
        """Ask the participant to report what its SDK tells it in the next `seconds` (read it with end_watch)."""
        await self._tell({"watch": seconds})

    async def end_watch(self, seconds: float) -> dict[str, Any]:
        return await self._hear(seconds + 5.0)

    async def close(self) -> None:
        """SIGKILL to its whole group (the participant starts no process itself, but nothing it started, e.g. a
        helper a future SDK forks, outlives it: a host's process keeps its namespace), then its HOME goes."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        await self.process.wait()
        self.stderr.close()
        self.sandbox.remove()

    def _stderr_tail(self) -> str:
        self.stderr.seek(0)
        lines = self.stderr.read().decode(errors="replace").strip().splitlines()
        return " | ".join(lines[-3:]) or "nothing on stderr"

    async def _tell(self, message: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(message).encode() + b"\n")
        await self.process.stdin.drain()

    async def _hear(self, within: float) -> dict[str, Any]:
        assert self.process.stdout is not None
        try:
            line = await asyncio.wait_for(self.process.stdout.readline(), within)
        except TimeoutError:
            raise StageFailure(
                f"the client on the client host said nothing within {within:.0f} s ({self._stderr_tail()})",
                "run with --verbose; see the node's log",
            ) from None
        if not line:
            raise StageFailure(f"the client on the client host exited: {self._stderr_tail()}",
                               "run `python -m bootstrap --paths --verbose` to see why")  # fmt: skip
        return dict(json.loads(line))
