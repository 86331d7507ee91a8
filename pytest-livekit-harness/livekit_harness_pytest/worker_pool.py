"""Real livekit-agents workers for a session: one process per (entrypoint, agent name), started on first use and
kept for the session, each registered under a name of its own (`<agent_name>-<pid>-<random>`), so sibling xdist
workers and other sessions never take each other's jobs.

A warm process (livekit-agents imported, no assignment yet) is started as soon as the session knows a test asks
for `agent_worker`, while the stack is still being verified; the first assignment takes it. Each worker's
stderr goes to a log file of its own; the plugin attaches what it logged during a test to that test's failure
report. The processes die with the session: stdin closed at the end, PR_SET_PDEATHSIG if the session is killed
(set by the worker itself, first thing: see WorkerProcess.start for why not in a preexec_fn).

A session run as root never runs its workers (nor their job processes) as root: each is `livekit-agent` with the
service interpreter (devstack.service_python.unprivileged), in a scratch HOME and working directory of its own.
Where that interpreter is missing, or the account cannot read the agent's module, the test's agent_worker fails
naming the cause and the fix.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import queue
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from devstack.native import StackError, check_reachable
from devstack.service_python import AGENT_ACCOUNT, ServicePythonError, Unprivileged, unprivileged

REGISTER_TIMEOUT = 20.0  # seconds: a cold process imports livekit-agents (~2 s here), then registers (~0.1 s)
STOP_TIMEOUT = 8.0


def entrypoint_ref(entrypoint: Callable[..., Any] | str) -> str:
    """'module:qualname' for a function the worker process can import (a string is taken as it is)."""
    if isinstance(entrypoint, str):
        return entrypoint
    module, name = entrypoint.__module__, entrypoint.__qualname__
    if "<" in name or module == "__main__":
        raise ValueError(f"{name} in {module}: pass a module-level function, the worker process imports it")
    return f"{module}:{name}"


def unique_agent_name(base: str) -> str:
    return f"{base}-{os.getpid()}-{secrets.token_hex(2)}"


@dataclass
class WorkerProcess:
    process: subprocess.Popen[str]
    log_path: Path
    lines: queue.Queue[str] = field(default_factory=queue.Queue)
    entrypoint: str = ""
    agent_name: str = ""
    worker_id: str = ""
    account: Unprivileged | None = None  # who it runs as, when not as ourselves (the session is root)

    module: ClassVar[str] = "livekit_harness_pytest.worker_process"
    command: ClassVar[tuple[str, ...]] = (sys.executable, "-m", module)  # how it runs as ourselves
    runs_as: ClassVar[str | None] = AGENT_ACCOUNT  # who runs it when the session is root

    @classmethod
    def start(cls, env: dict[str, str], log_dir: Path) -> WorkerProcess:
        """The worker process, started with no Python code run between fork and exec (no preexec_fn): a session
        that joined rooms has the rtc SDK's native threads calling into Python (each call makes and drops a
        thread state under the interpreter's lock), and a child forked while one of them holds that lock hangs
        in CPython 3.11's after-fork re-initialisation before it can exec, with this call waiting on it forever
        (pool.get's lock held: the test, and the xdist run, hung). The worker sets its own death signal
        (worker_process.die_with_parent), given this process's pid. As root: the service account's, by setpriv
        (one pid: it execs the worker), ServicePythonError when it cannot run Python."""
        who = unprivileged(cls.runs_as, "agent-worker") if cls.runs_as and os.geteuid() == 0 else None
        command = who.argv(cls.module) if who else list(cls.command)
        if who:
            env = {**env, "HOME": str(who.home), "PYTHONPATH": service_path(env.get("PYTHONPATH", ""))}
        fd, name = tempfile.mkstemp(prefix="agent-worker-", suffix=".log", dir=log_dir)
        log_path = Path(name)
        with os.fdopen(fd, "w") as log:
            process = subprocess.Popen(
                [*command, "--parent-pid", str(os.getpid())], cwd=who.home if who else None,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, env=env,
            )  # fmt: skip
        worker = cls(process, log_path, account=who)
        threading.Thread(target=worker._read, daemon=True).start()
        return worker

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)

    def assign(self, entrypoint: str, agent_name: str, executor: str) -> None:
        """Register `entrypoint` as `agent_name`; raises RuntimeError with the log's tail if it does not."""
        assert self.process.stdin is not None
        self.entrypoint, self.agent_name = entrypoint, agent_name
        assignment = {"entrypoint": entrypoint, "agent_name": agent_name, "executor": executor}
        try:
            self.process.stdin.write(json.dumps(assignment) + "\n")
            self.process.stdin.flush()
            answer = json.loads(self.lines.get(timeout=REGISTER_TIMEOUT))
        except (OSError, queue.Empty, json.JSONDecodeError) as exc:
            answer = {"error": f"no answer within {REGISTER_TIMEOUT:.0f}s ({exc!r})"}
        if "registered" not in answer:
            raise RuntimeError(f"agent worker {agent_name!r} ({entrypoint}) did not register: {answer.get('error')}\n"
                               f"{self.log_tail()}")  # fmt: skip
        self.worker_id = answer["registered"]

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def log_since(self, offset: int) -> str:
        try:
            with self.log_path.open(errors="replace") as log:
                log.seek(offset)
                return log.read()
        except OSError:
            return ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_since(0).splitlines()[-lines:])

    def stop(self) -> None:
        """Close stdin (the worker closes itself), then SIGTERM, then SIGKILL: bounded."""
        stdin = self.process.stdin
        with contextlib.suppress(OSError):
            if stdin:
                stdin.close()
        for signal_to_send in (None, signal.SIGTERM, signal.SIGKILL):
            if signal_to_send is not None and self.alive():
                self.process.send_signal(signal_to_send)
            try:
                self.process.wait(timeout=STOP_TIMEOUT / 2)
                break
            except subprocess.TimeoutExpired:
                continue
        if self.account is not None and not self.alive():
            self.account.remove()


def service_path(pythonpath: str) -> str:
    """The session's module path for a worker on the service interpreter: without this interpreter's own
    directories (its standard library and site-packages: the service interpreter has its own, and this one's may
    be where the account cannot read, /root)."""
    own = [Path(p).resolve() for p in {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}]
    kept = [p for p in pythonpath.split(os.pathsep) if p and not any(Path(p).resolve().is_relative_to(o) for o in own)]
    return os.pathsep.join(kept)


def readable_module(entrypoint: str, who: Unprivileged | None) -> None:
    """RuntimeError naming the path and the fix when the account `who` runs the worker as cannot read the
    entrypoint's module (its worker would fail to import it; it must never be run as root instead)."""
    if who is None or who.user is None:
        return
    module = entrypoint.partition(":")[0]
    spec = importlib.util.find_spec(module)
    origin = Path(spec.origin) if spec and spec.origin and spec.has_location else None
    if origin is None:
        return  # not from a file (built in, or not found here either): the worker says what it finds
    try:
        check_reachable(origin, who.user)
        info = origin.stat()
        if not (info.st_mode & 0o004 or info.st_uid == who.user.uid):
            raise StackError(
                f"{origin} is not readable by others (mode {info.st_mode & 0o777:o}): `chmod o+r {origin}`"
            )
    except StackError as exc:
        raise RuntimeError(
            f"the agent's module {origin} cannot be read by {who.user.name}, the account that runs agent workers when "
            f"the session runs as root (never root): {exc}; or run pytest as an ordinary user"
        ) from None


class WorkerPool:
    """The session's workers, by (entrypoint, agent name base); plus at most one warm, unassigned process."""

    def __init__(self, env: dict[str, str], log_dir: Path, executor: str = "thread") -> None:
        self.env, self.log_dir, self.executor = env, log_dir, executor
        self.workers: dict[tuple[str, str], WorkerProcess] = {}
        self.warm: WorkerProcess | None = None
        self.lock = threading.Lock()

    def prewarm(self) -> None:
        """A warm process now; a session that cannot start one (no service interpreter) hears why from the
        first agent_worker, which tries again."""
        with self.lock, contextlib.suppress(ServicePythonError):
            if self.warm is None or not self.warm.alive():
                self.warm = WorkerProcess.start(self.env, self.log_dir)

    def get(self, entrypoint: str, base_name: str) -> WorkerProcess:
        """The registered worker for `entrypoint` under `base_name`, started (or restarted, if it died) now."""
        with self.lock:
            key = (entrypoint, base_name)
            worker = self.workers.get(key)
            if worker is not None and worker.alive():
                return worker
            worker, self.warm = (self.warm, None) if self.warm and self.warm.alive() else (None, None)
            if worker is None:
                worker = WorkerProcess.start(self.env, self.log_dir)
            try:
                readable_module(entrypoint, worker.account)
                worker.assign(entrypoint, unique_agent_name(base_name), self.executor)
            except RuntimeError:
                worker.stop()
                raise
            self.workers[key] = worker
            return worker

    def close(self) -> None:
        with self.lock:
            everything = [*self.workers.values(), *([self.warm] if self.warm else [])]
            self.workers, self.warm = {}, None
        threads = [threading.Thread(target=w.stop) for w in everything]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(STOP_TIMEOUT + 1)
