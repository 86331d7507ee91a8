"""One agent worker for a test session: `python -m livekit_harness_pytest.worker_process`, started by the plugin.

It imports livekit-agents first (the slow part, ~2 s) and then waits for its assignment, one JSON line on stdin:
{"entrypoint": "module:function", "agent_name": "...", "executor": "thread"|"process"}; so the plugin starts it
while the stack is still being verified. It then registers the entrypoint under that unique agent name
(agent_runtime.create_worker: the project's worker settings) and answers on stdout, one JSON line each:
{"registered": "AW_…"} or {"error": "…"}. The server URL and keys come in the environment, never in argv.
Logs go to stderr (the plugin's log file). It ends when stdin closes (the session ended or died), on SIGTERM or
SIGINT, and with the session's process too: PR_SET_PDEATHSIG, which it sets itself first thing (`--parent-pid`:
the session's pid, so one that died before then is noticed too). Not set in a preexec_fn by the plugin: Python
code between fork and exec can hang the child for good (worker_pool.WorkerProcess.start).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import importlib
import json
import logging
import os
import signal
import sys
from typing import Any

from livekit import agents

from agent_runtime.agent import Session, WorkerConfig, create_worker
from agent_runtime.ffi_exit import exit_without_finalization

log = logging.getLogger("livekit_harness_pytest.worker")
CLOSE_TIMEOUT = 5.0
PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    """SIGKILL this process when its parent (the session that started it) ends, however it ends; exit now if it
    has ended already (this process was then handed to another parent)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:
        exit_without_finalization(0)


def say(**message: Any) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def load_entrypoint(spec: str) -> Session:
    module, _, name = spec.partition(":")
    target: Any = importlib.import_module(module)
    for part in name.split("."):
        target = getattr(target, part)
    return target  # type: ignore[no-any-return]


async def read_line() -> str:
    return await asyncio.to_thread(sys.stdin.readline)


async def serve() -> int:
    assignment = json.loads(await read_line() or "null")
    if not assignment:
        return 0
    session = load_entrypoint(assignment["entrypoint"])
    executor = (
        agents.JobExecutorType.PROCESS if assignment.get("executor") == "process" else agents.JobExecutorType.THREAD
    )
    config = WorkerConfig(
        ws_url=os.environ["LIVEKIT_URL"],
        api_key=os.environ["LIVEKIT_API_KEY"],
        api_secret=os.environ["LIVEKIT_API_SECRET"],
        agent_name=assignment["agent_name"],
        job_executor=executor,
        idle_runners=1 if executor is agents.JobExecutorType.PROCESS else 0,
    )
    server = create_worker(config, session)
    registered: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def on_registered(worker_id: str, _info: object) -> None:
        if not registered.done():
            registered.set_result(worker_id)

    server.on("worker_registered", on_registered)
    running = asyncio.create_task(server.run(), name="agent-worker")
    waiters: set[asyncio.Future[object]] = {registered, running}  # type: ignore[arg-type]
    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    if not registered.done():
        error = running.exception() if running.done() else None
        say(error=f"the worker stopped before registering at {config.ws_url}: {error!r}")
        return 1
    say(registered=registered.result())
    log.info("registered %s as %r (%s jobs)", registered.result(), config.agent_name, executor.name.lower())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    eof = asyncio.create_task(read_line())  # the session closes stdin when it is done with this worker
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait({eof, stopped, running}, return_when=asyncio.FIRST_COMPLETED)
    try:
        async with asyncio.timeout(CLOSE_TIMEOUT):
            await server.aclose()
    except TimeoutError:
        log.warning("the worker did not close within %ss", CLOSE_TIMEOUT)
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--parent-pid", type=int, required=True, help="the session's pid: die with it")
    die_with_parent(parser.parse_args().parent_pid)
    fmt = "%(asctime)s.%(msecs)03d %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format=fmt, datefmt="%H:%M:%S")
    os.environ.setdefault("LIVEKIT_AGENTS_PRELOAD_LOCAL_INFERENCE", "0")
    try:
        code = asyncio.run(serve())
    except Exception as exc:
        log.exception("worker failed")
        say(error=repr(exc))
        code = 1
    exit_without_finalization(code)


if __name__ == "__main__":
    main()
