"""Stage 2: the API keys work, and the no-op livekit-agents worker registers (worker id AW_…)."""

from __future__ import annotations

import asyncio

from livekit import agents, api

from agent_runtime.agent import WorkerConfig, create_worker
from bootstrap.context import RunContext
from bootstrap.result import StageFailure


async def run(ctx: RunContext) -> str:
    # An authenticated API call first: the worker's own retries would hide a 401 behind "failed to connect".
    await ctx.api.room.list_rooms(api.ListRoomsRequest())
    config = WorkerConfig(
        ws_url=ctx.worker_ws_url,
        api_key=ctx.settings.api_key,
        api_secret=ctx.settings.api_secret,
        agent_name=ctx.agent_name,
        # In-process and short-lived: threads start a job in milliseconds where a process takes seconds.
        # The price (agent_runtime.worker): a job cut short mid-connect can make the rtc SDK end this
        # process ~25 s later. Rooms are deleted only once their agent has joined, except on a failure,
        # and a single run exits long before; a long --load run that loses a room mid-join could be cut.
        job_executor=agents.JobExecutorType.THREAD,
        idle_runners=ctx.load.concurrency if ctx.load else 0,
    )
    ctx.worker = create_worker(config)
    registered: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def on_registered(worker_id: str, _info: object) -> None:
        if not registered.done():
            registered.set_result(worker_id)

    ctx.worker.on("worker_registered", on_registered)
    ctx.worker_task = asyncio.create_task(ctx.worker.run(), name="noop-worker")
    waiters: set[asyncio.Future[object]] = {registered, ctx.worker_task}  # type: ignore[arg-type]
    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    if not registered.done():
        error = ctx.worker_task.exception() if ctx.worker_task.done() else None
        raise StageFailure(
            f"the worker stopped before registering at {ctx.worker_ws_url}/agent: {error}",
            "check LIVEKIT_URL in .env points at the server (`make status`), and `make logs` for the server side",
        )
    ctx.worker_id = registered.result()
    where = f" on node {ctx.cluster.worker_node}" if ctx.cluster else ""
    return f"registered {ctx.worker_id} as agent {ctx.agent_name!r}{where}"
