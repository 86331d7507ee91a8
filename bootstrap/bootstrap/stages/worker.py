"""Stage 2: the API keys work, and the no-op livekit-agents worker registers (worker id AW_…)."""

from __future__ import annotations

import asyncio

from livekit import agents, api

from agent_runtime.agent import WorkerConfig, create_worker
from bootstrap.context import RunContext
from bootstrap.result import Kind, StageFailure
from devstack.agent_jobs import UnprivilegedJobs, unprivileged_jobs
from devstack.service_python import ServicePythonError

LOCAL_FIX = "check LIVEKIT_URL in .env points at the server (`make status`), and `make logs` for the server side"


async def run(ctx: RunContext, *, job_processes: int = 0, max_jobs: int = 0) -> str:
    """`job_processes`: 0 runs each job on a thread of this process; N > 0 runs each in a process of its own,
    N of them kept warm. `max_jobs`: the most jobs the worker takes at once (0: no limit, as every mode but the
    held load runs it; the standalone echo worker's own limit is agent_runtime.agent.MAX_JOBS)."""
    await authenticate(ctx)
    return await register(ctx, job_processes=job_processes, max_jobs=max_jobs)


async def authenticate(ctx: RunContext) -> None:
    """An authenticated API call first: the worker's own retries would hide a 401 behind "failed to connect"."""
    await ctx.api.room.list_rooms(api.ListRoomsRequest(names=[ctx.room_name]))


async def register(
    ctx: RunContext, *, job_processes: int = 0, max_jobs: int = 0, fix: str = LOCAL_FIX, kind: Kind | None = None
) -> str:
    """The echo worker registers under ctx.agent_name; a worker that stops first fails with `fix` (and `kind`:
    None lets the shared diagnosis name it)."""
    jobs = jobs_not_root_in_run(ctx) if job_processes else UnprivilegedJobs()
    config = WorkerConfig(
        ws_url=ctx.settings.ws_url,
        api_key=ctx.settings.api_key,
        api_secret=ctx.settings.api_secret,
        agent_name=ctx.agent_name,
        # A single run: threads start its one job in milliseconds where a cold process takes seconds. The price
        # (agent_runtime.agent): a job cut short mid-connect can make the rtc SDK end this process ~25 s later;
        # a single run exits long before. Load mode: a process per job, warm ones ready (started during the
        # warm-up), so agents echoing audio do not share this process's interpreter with the participants:
        # with threads, 1-2 rooms in 50 lost an audio marker to the contention.
        job_executor=agents.JobExecutorType.PROCESS if job_processes else agents.JobExecutorType.THREAD,
        idle_runners=job_processes,
        max_jobs=max_jobs,
        preload_modules=jobs.preload,
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
        raise StageFailure(f"the worker stopped before registering at {ctx.settings.ws_url}/agent: {error}", fix, kind)
    ctx.worker_id = registered.result()
    return f"registered {ctx.worker_id} as agent {ctx.agent_name!r}"


def jobs_not_root_in_run(ctx: RunContext) -> UnprivilegedJobs:
    """jobs_not_root(), its wrapper removed by the run's cleanup."""
    jobs = jobs_not_root()

    async def remove() -> None:
        jobs.remove()

    ctx.finalizers.append(remove)
    return jobs


def jobs_not_root() -> UnprivilegedJobs:
    """Job processes that are not root (devstack.agent_jobs); a worker that cannot have them fails here (the
    stage's StageFailure, naming the fix), never runs them as root."""
    try:
        return unprivileged_jobs()
    except ServicePythonError as exc:
        fix = "run `make install`: it builds .venv-services, the interpreter the service accounts run"
        raise StageFailure(f"agent job processes cannot run unprivileged: {exc}", fix, Kind.CONFIG) from None
