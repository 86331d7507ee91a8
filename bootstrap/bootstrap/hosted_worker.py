"""The echo worker (`python -m agent_runtime`) on a lab host, as livekit-agent (devstack.service_python), never in
this process: the --cluster run's worker on a host of its own, the --paths run's on the paths lab's node host.
libwebrtc under its agent opens ICE sockets on the addresses it has: on a lab host those are the lab's, behind
its firewall; in this machine's namespace they were every address, a LAN neighbour's link included, with
passive ICE/TCP listeners among them.

It logs to `log` (this run's lines only); the run's id is read from its "registered" line. The run's closer stops
it: Ctrl-C first (its jobs end, it unregisters), then SIGKILL for what is left: every process on a host of its
own, its process group on a host it shares (the paths node host runs the lab's livekit-server and nginx). A run
SIGKILLed leaves it running (its session is its own): the host's lab ends it (the paths lab: paths_lab.start_run,
at the next run, and `make paths-up`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from dataclasses import dataclass
from pathlib import Path

from bootstrap.context import RunContext
from bootstrap.result import StageFailure
from devstack import netns
from devstack.safe_files import ensure_dir, open_private_log
from devstack.service_python import AGENT_ACCOUNT, ServicePythonError, Unprivileged, unprivileged

POLL_INTERVAL = 0.1
WORKER_STOP_WAIT = 1.5  # inside the cleanup's 2 s step (runner.CLEANUP_STEP): the kill after it fits too


@dataclass(frozen=True)
class HostedWorker:
    """Where the worker runs and how it is reached: `entry` names the node it registers through in a failure
    ("node b"), `purpose` its scratch HOME's prefix, `own_host` whether nothing else runs on `host`, `max_jobs`
    its AGENT_MAX_JOBS (None: the standalone worker's default, agent_runtime.agent.MAX_JOBS; 0: no limit)."""

    host: netns.LanHost
    url: str
    log: Path
    entry: str
    purpose: str
    own_host: bool
    max_jobs: int | None = None


async def run_on_host(ctx: RunContext, worker: HostedWorker) -> str:
    """Start the worker and wait until it registered (ctx.worker_id, and ctx.worker_task: done when it exits);
    returns the account it runs as."""
    try:
        sandbox = await asyncio.to_thread(unprivileged, AGENT_ACCOUNT, worker.purpose)
    except ServicePythonError as exc:
        raise StageFailure(f"cannot start the worker unprivileged: {exc}", "run `make install`") from None
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(sandbox.home), "PYTHONUNBUFFERED": "1",
           "LIVEKIT_URL": worker.url, "LIVEKIT_API_KEY": ctx.settings.api_key,
           "LIVEKIT_API_SECRET": ctx.settings.api_secret, "LIVEKIT_AGENT_NAME": ctx.agent_name}  # fmt: skip
    if worker.max_jobs is not None:
        env["AGENT_MAX_JOBS"] = str(worker.max_jobs)
    ensure_dir(worker.log.parent, mode=0o700)
    worker.log.unlink(missing_ok=True)  # this run's lines only
    log = open_private_log(worker.log)
    try:
        process = await asyncio.create_subprocess_exec(
            *worker.host.exec_argv(sandbox.argv("agent_runtime")), cwd=sandbox.home, env=env,
            stdout=log, stderr=log, start_new_session=True,
        )  # fmt: skip
    finally:
        os.close(log)
    ctx.closers.append(lambda: _stop(process, worker, sandbox))
    while not (registered := registered_id(worker.log)):
        if process.returncode is not None:
            tail = " | ".join(worker.log.read_text(errors="replace").splitlines()[-3:])
            fix = f"check that its host reaches {worker.entry} at {worker.url}; see {worker.log}"
            raise StageFailure(f"the worker on {worker.host.address} exited before registering: {tail}", fix)
        await asyncio.sleep(POLL_INTERVAL)
    ctx.worker_id = registered
    # A stage that asks whether the worker still runs (as of the in-process one) asks this task.
    ctx.worker_task = asyncio.create_task(_exited(process), name="hosted-worker")
    return (sandbox.user.name if sandbox.user else None) or "this process's user"


def registered_id(log: Path) -> str:
    """The worker id of the last registration in the worker's log (agent_runtime logs one JSON line)."""
    for line in reversed(log.read_text(errors="replace").splitlines()):
        if '"registered"' in line and "AW_" in line:
            return str(json.loads(line).get("id", ""))
    return ""


async def _exited(process: asyncio.subprocess.Process) -> None:
    await process.wait()


async def _stop(process: asyncio.subprocess.Process, worker: HostedWorker, sandbox: Unprivileged) -> None:
    """Ctrl-C first (its jobs end, it unregisters), then SIGKILL for anything left (job processes), even when the
    cleanup's step bound cut the wait short; then its scratch directory goes."""
    try:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGINT)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(process.wait(), WORKER_STOP_WAIT)
    finally:
        await asyncio.to_thread(_kill_left, process, worker)
        sandbox.remove()


def _kill_left(process: asyncio.subprocess.Process, worker: HostedWorker) -> None:
    if worker.own_host:
        netns.kill_processes_in(worker.host.namespace)
        return
    # Its session's process group (start_new_session: the group is its pid): its forkserver and job processes.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
