"""Just enough of the Chrome DevTools Protocol to drive Debian's headless Chromium: open a page,
evaluate JavaScript, take a screenshot. No browser download: it runs the system `chromium`.

DevTools runs over a pipe (`--remote-debugging-pipe`), never a TCP port: a port on loopback would let
any local process drive the browser. As root, Chromium runs as an unprivileged system user, and the profile is
that user's from the hand-over on: root makes everything it puts there (the stderr log, the NSS store) while the
profile is still its own 0700 directory, hands it all over with lchown, and afterwards never opens, writes,
chowns or reads a path in it (the log is read back through the descriptor root opened)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import pwd
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Any

from devstack.install import ensure_service_user

FLAGS = [
    # No --no-sandbox: Chromium never runs as root (see _account), and as an ordinary user its namespace
    # and seccomp sandbox works (tested here: renderers get their own user/pid namespaces, seccomp mode 2).
    "--headless=new", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--no-first-run", "--remote-debugging-pipe",
    # The page plays an oscillator without a user gesture, and offers its real loopback candidates.
    "--autoplay-policy=no-user-gesture-required", "--disable-features=WebRtcHideLocalIpsWithMdns",
]  # fmt: skip
# Chromium reads CDP from fd 3 and writes to fd 4. Popen places our pipe ends on stdin/stdout (it handles
# any fd numbers safely); this shell moves them to 3 and 4 and gives Chromium /dev/null instead.
PIPE_WRAPPER = ["sh", "-c", 'exec "$0" "$@" 3<&0 4>&1 </dev/null >/dev/null']
BROWSER_USER = "livekit-browser"
KEPT_ENV = {"PATH", "LANG", "LC_ALL", "TZ"}
START_TIMEOUT = 15.0
LOG = "chromium-stderr.log"  # in the profile; read back (through our descriptor) when Chromium dies early
LOG_TAIL_BYTES = 16384
MAX_MESSAGE = 1 << 28  # a full-page PNG screenshot, base64, fits many times over


class ChromiumError(RuntimeError):
    """Chromium is missing or did not start; the message says what to do."""


def find_chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


class Chromium:
    """One headless Chromium process with one page, driven over a flattened CDP session on a pipe.

    `namespace`: run it inside that network namespace (a client host of the paths check; root only), entered
    as root and left as the browser user before Chromium starts. `trust_ca`: a CA certificate this browser, and
    only this one, trusts: put in its profile's own NSS store (HOME is the profile), never the system's."""

    def __init__(self, *, namespace: str | None = None, trust_ca: Path | None = None) -> None:
        self._namespace, self._trust_ca = namespace, trust_ca
        self._process: asyncio.subprocess.Process | None = None
        self._profile = Path(tempfile.mkdtemp(prefix="bootstrap-chromium-"))
        self._pipes: tuple[asyncio.ReadTransport, asyncio.WriteTransport] | None = None  # DevTools, our ends
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._session = ""
        self._log: int | None = None  # Chromium's stderr, opened before the hand-over

    @property
    def pid(self) -> int | None:
        """The launched process, which leads Chromium's process group."""
        return None if self._process is None else self._process.pid

    @property
    def profile(self) -> Path:
        return self._profile

    async def start(self, *, insecure_origin_as_secure: str = "") -> None:
        """`insecure_origin_as_secure`: an http:// origin (not loopback) the page is served from, given the
        secure-context APIs a page on https:// would have."""
        binary = find_chromium()
        if binary is None:
            raise ChromiumError("chromium is not installed: run `make browser-deps` (Debian package chromium)")
        account = self._account()
        # While the profile is root's own 0700 directory: nobody else can have planted anything in it yet.
        self._log = os.open(self._profile / LOG, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                            0o600)  # fmt: skip
        if self._trust_ca is not None:
            await self._trust(self._trust_ca)
        if account is not None:
            self._hand_over(account)
            self._handed_over()
        flags = [*FLAGS, *([f"--unsafely-treat-insecure-origin-as-secure={insecure_origin_as_secure}"]
                           if insecure_origin_as_secure else [])]  # fmt: skip
        prefix, switch = self._entry(account)
        to_chromium, from_chromium = os.pipe(), os.pipe()  # (read, write) each; not inherited by default
        await self._connect(to_chromium[1], from_chromium[0])  # our ends: close() closes them, whatever happens
        try:
            self._process = await asyncio.create_subprocess_exec(
                *prefix, *PIPE_WRAPPER, binary, *flags, f"--user-data-dir={self._profile}", "about:blank",
                stdin=to_chromium[0], stdout=from_chromium[1], stderr=self._log,
                env=self._env(), start_new_session=True,  # own process group: close() ends the renderers too
                **switch,
            )  # fmt: skip
        finally:
            os.close(to_chromium[0])  # the child's ends: with them closed here, EOF means Chromium is gone
            os.close(from_chromium[1])
        async with asyncio.timeout(START_TIMEOUT):
            await self.send("Browser.getVersion", page=False)  # answered once DevTools is up

    def _account(self) -> pwd.struct_passwd | None:
        """As root: the unprivileged browser user. As anyone else: None (nothing changes)."""
        if os.geteuid() != 0:
            return None
        return pwd.getpwnam(ensure_service_user(BROWSER_USER))

    def _hand_over(self, account: pwd.struct_passwd) -> None:
        """Everything in the profile, then the profile itself (mkdtemp made it 0700), to the browser account:
        deepest first, so it can write nowhere in there before root is done; lchown, never through a link."""
        for directory, subdirectories, files in os.walk(self._profile, topdown=False):
            for name in [*files, *subdirectories]:
                os.chown(os.path.join(directory, name), account.pw_uid, account.pw_gid, follow_symlinks=False)
        os.chown(self._profile, account.pw_uid, account.pw_gid, follow_symlinks=False)

    def _handed_over(self) -> None:
        """The profile belongs to the browser account from here on: whatever runs as it may replace anything in
        it, so root touches no path in it any more. Nothing to do; the tests plant symlinks here, as that account
        could."""

    def _entry(self, account: pwd.struct_passwd | None) -> tuple[list[str], dict[str, Any]]:
        """How the process becomes the browser user, with no supplementary groups (root's would be kept): by
        Popen's own switch, or, in a namespace (entered as root), by setpriv after `ip netns exec`."""
        if account is None:
            if self._namespace:
                raise ChromiumError("a browser inside a network namespace needs root")
            return [], {}
        if self._namespace:
            ids = [f"--reuid={account.pw_uid}", f"--regid={account.pw_gid}", "--clear-groups"]
            # No capabilities and no new privileges: Chromium's sandbox needs neither (its renderers still get
            # their own user and pid namespaces and seccomp mode 2 under these flags: checked in /proc).
            drop = ["--no-new-privs", "--inh-caps=-all", "--bounding-set=-all"]
            return ["ip", "netns", "exec", self._namespace, "setpriv", *ids, *drop, "--"], {}
        return [], {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}

    async def _trust(self, ca: Path) -> None:
        """`ca` in this profile's own NSS store (Chromium on Linux reads $HOME/.pki/nssdb), trusted for TLS. Made
        before the hand-over, which gives the store to the browser account with the rest of the profile."""
        store = self._profile / ".pki" / "nssdb"
        store.mkdir(parents=True)
        database = ["-d", f"sql:{store}"]
        for command in (["certutil", "-N", *database, "--empty-password"],
                        ["certutil", "-A", *database, "-n", "harness-ca", "-t", "C,,", "-i", str(ca)]):  # fmt: skip
            done = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.DEVNULL,
                                                        stderr=asyncio.subprocess.PIPE)  # fmt: skip
            _, error = await done.communicate()
            if done.returncode != 0:
                raise ChromiumError(f"{' '.join(command[:2])} failed: {error.decode().strip()} (libnss3-tools)")

    def _env(self) -> dict[str, str]:
        """A minimal environment, so none of our secrets or root's runtime dirs reach the browser, with
        HOME and XDG dirs inside the profile: the service user has no home, and root's is not ours."""
        home = str(self._profile)
        xdg = {f"XDG_{kind}_HOME": f"{home}/.{kind.lower()}" for kind in ("CONFIG", "CACHE", "DATA", "STATE")}
        kept = {name: value for name, value in os.environ.items() if name in KEPT_ENV}
        return {**kept, "HOME": home, "TMPDIR": home, **xdg}

    async def _connect(self, write_fd: int, read_fd: int) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=MAX_MESSAGE)
        protocol = asyncio.StreamReaderProtocol(reader)
        incoming, _ = await loop.connect_read_pipe(lambda: protocol, os.fdopen(read_fd, "rb", 0))
        outgoing, _ = await loop.connect_write_pipe(asyncio.Protocol, os.fdopen(write_fd, "wb", 0))
        self._pipes = (incoming, outgoing)
        self._reader = asyncio.create_task(self._read(reader))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        """Routes replies to their senders until the pipe ends; then fails whoever waits rather than hang."""
        try:
            while True:
                data = json.loads((await reader.readuntil(b"\0"))[:-1])
                if (future := self._pending.pop(data.get("id", -1), None)) and not future.done():
                    future.set_result(data)
        except asyncio.IncompleteReadError:  # EOF: every writer, Chromium, is gone
            error = ChromiumError(f"chromium exited (code {await self._exit_code()}): {self._log_tail()}")
        except (ValueError, asyncio.LimitOverrunError) as exc:
            error = ChromiumError(f"unreadable DevTools message: {exc}")
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)
        self._pending.clear()

    async def _exit_code(self) -> int | None:
        return None if self._process is None else await self._process.wait()

    def _log_tail(self) -> str:
        """Chromium's last stderr lines: why it stopped (e.g. "No usable sandbox!"). Read through the descriptor
        opened before the hand-over: the name in the profile may point anywhere by now."""
        if self._log is None:
            return "no log"
        with contextlib.suppress(OSError):
            size = os.fstat(self._log).st_size
            tail = os.pread(self._log, LOG_TAIL_BYTES, max(0, size - LOG_TAIL_BYTES))
            return " | ".join(tail.decode(errors="replace").splitlines()[-3:]) or "no output"
        return "no log"

    async def send(self, method: str, params: dict[str, Any] | None = None, *, page: bool = True) -> dict[str, Any]:
        if self._pipes is None or self._reader is None or self._reader.done():
            raise ChromiumError(f"{method}: chromium is not running")
        message: dict[str, Any] = {"id": next(self._ids), "method": method, "params": params or {}}
        if page:
            message["sessionId"] = self._session
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[message["id"]] = future
        self._pipes[1].write(json.dumps(message).encode() + b"\0")  # CDP over a pipe: NUL-terminated JSON
        reply = await future
        if "error" in reply:
            raise ChromiumError(f"{method}: {reply['error'].get('message')}")
        return reply.get("result", {})  # type: ignore[no-any-return]

    async def open(self, url: str) -> None:
        target = await self.send("Target.createTarget", {"url": url}, page=False)
        attached = await self.send("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True},
                                   page=False)  # fmt: skip
        self._session = attached["sessionId"]

    async def evaluate(self, expression: str, *, wait: bool = False) -> Any:
        """The expression's value; `wait`: it is a promise, whose settled value is returned."""
        params = {"expression": expression, "returnByValue": True, "awaitPromise": wait}
        result = await self.send("Runtime.evaluate", params)
        return result.get("result", {}).get("value")

    async def screenshot(self, path: Path) -> Path:
        shot = await self.send("Page.captureScreenshot", {"format": "png"})
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))  # noqa: ASYNC240 - one small file, on failure only
        return path

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        for pipe in self._pipes or ():
            pipe.close()
        if self._process is not None and self._process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._process.pid, signal.SIGKILL)
            await self._process.wait()
        if self._log is not None:
            os.close(self._log)
            self._log = None
        with contextlib.suppress(OSError):
            shutil.rmtree(self._profile)  # fd-based: it unlinks a planted link, never follows it
