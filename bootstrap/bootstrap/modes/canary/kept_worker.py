"""The canary's own echo worker: registered once and kept between runs, as a production worker is; its
registration is checked at every run (the `worker` stage) and it is re-created when lost."""

from __future__ import annotations

import asyncio
import contextlib
import time

import structlog
from livekit import agents

from agent_runtime.agent import WorkerConfig, create_worker
from bootstrap.context import RunContext
from bootstrap.result import Kind, StageFailure
from bootstrap.stages.worker import authenticate, jobs_not_root
from devstack.agent_jobs import UnprivilegedJobs

CLOSE_TIMEOUT = 3.0  # a lost worker's aclose(), bounded: its server may be gone
UNREGISTERED = "unregistered"  # livekit-agents' AgentServer.id before (or between) registrations
log = structlog.get_logger("bootstrap.canary")


class CanaryWorker:
    """One AgentServer for the canary's whole life, in the canary's process. The runner's cleanup never sees it
    (ctx.worker stays None, so its job processes are not reaped as a run's own worker's are): each run gets a
    watcher task as ctx.worker_task, which the cleanup may cancel without touching the worker."""

    def __init__(self) -> None:
        self.server: agents.AgentServer | None = None
        self.task: asyncio.Task[None] | None = None
        self.identity: tuple[str, str, str] = ("", "", "")  # ws_url, api key, agent name it registered with
        self.registered_at = 0.0  # time.monotonic() of its registration
        self.registrations = 0  # how many times it was (re-)created and registered
        self._registered: asyncio.Future[str] | None = None
        # Its job processes' account (devstack.agent_jobs): made once, for the canary's whole life, because the
        # forkserver it starts outlives any one worker and keeps the wrapper's environment (the CA copy's path).
        self.jobs = UnprivilegedJobs()

    def registered(self) -> bool:
        """Running, connected and registered. livekit-agents exposes no "connected" flag: `_connecting` is set
        while it (re)connects, and its id is "unregistered" until the server answered a registration."""
        server = self.server
        return (
            server is not None
            and self.task is not None
            and not self.task.done()
            and not getattr(server, "_connecting", False)
            and server.id != UNREGISTERED
        )

    def lost_because(self) -> str:
        """Why the worker is not registered, for the stage's detail (no secret, no URL with a token)."""
        if self.server is None:
            return "first run"
        if self.task is not None and self.task.done():
            error = None if self.task.cancelled() else self.task.exception()
            return f"it stopped: {type(error).__name__ if error else 'closed'}"
        return "its connection to the server was lost"

    async def check(self, ctx: RunContext) -> str:
        """The `worker` stage: the same authenticated call the single run makes first, then the kept worker's
        registration, or a new worker registered."""
        await authenticate(ctx)
        return await self.ensure(ctx)

    async def ensure(self, ctx: RunContext) -> str:
        """The kept worker's registration, or a new worker registered (for a run in a process of its own, which
        made the authenticated call itself, with its mode's HTTP session: a private CA's, with --ca-file)."""
        wanted = (ctx.settings.ws_url, ctx.settings.api_key, ctx.agent_name)
        ctx.worker_task = asyncio.create_task(self._watch(), name="canary-worker-watch")
        if self.registered() and self.identity == wanted:
            assert self.server is not None
            ctx.worker_id = self.server.id
            age = time.monotonic() - self.registered_at
            return f"{ctx.worker_id} still registered as agent {ctx.agent_name!r} ({age:.0f}s)"
        reason = "its settings changed" if self.server is not None and self.identity != wanted else self.lost_because()
        await self.close()
        ctx.worker_id = await self._start(ctx, wanted)
        ctx.worker_task = asyncio.create_task(self._watch(), name="canary-worker-watch")
        return f"registered {ctx.worker_id} as agent {ctx.agent_name!r} ({reason})"

    async def _start(self, ctx: RunContext, wanted: tuple[str, str, str]) -> str:
        if self.jobs.wrapper_dir is None:
            self.jobs = jobs_not_root()
        config = WorkerConfig(
            ws_url=ctx.settings.ws_url,
            api_key=ctx.settings.api_key,
            api_secret=ctx.settings.api_secret,
            agent_name=ctx.agent_name,
            # Each job in a process of its own, one kept warm as a production worker keeps them: what the rtc SDK
            # keeps of a room deleted under the agent (a native thread and its audio buffers per echo track,
            # isolated.py) ends with the job's process, and so does a job the SDK aborts (a room deleted while
            # its agent was still connecting: agent_runtime.agent), never this process.
            job_executor=agents.JobExecutorType.PROCESS,
            idle_runners=1,
            preload_modules=self.jobs.preload,
        )
        server = create_worker(config)
        registered: asyncio.Future[str] = asyncio.get_running_loop().create_future()

        def on_registered(worker_id: str, _info: object) -> None:
            self.registered_at = time.monotonic()  # also each time it re-registers after a reconnect
            if not registered.done():
                registered.set_result(worker_id)

        server.on("worker_registered", on_registered)
        self.server, self.identity = server, wanted
        self.task = asyncio.create_task(server.run(), name="canary-worker")
        waiters: set[asyncio.Future[object]] = {registered, self.task}  # type: ignore[arg-type]
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        if not registered.done():
            error = None if self.task.cancelled() else self.task.exception()
            raise StageFailure(
                f"the canary's worker stopped before registering at {ctx.settings.ws_url}/agent: {error}",
                "check the server is up and LIVEKIT_URL points at it; a proxy must pass the WebSocket upgrade on "
                "/agent as on /rtc",
                Kind.NETWORK,
            )
        self.registrations += 1
        log.info("canary worker registered", worker_id=registered.result(), registrations=self.registrations)
        return registered.result()

    async def _watch(self) -> None:
        """Ends when the worker does; cancelling it (the runner's cleanup does) leaves the worker running."""
        if self.task is None:
            return
        with contextlib.suppress(BaseException):
            await asyncio.shield(self.task)

    async def close(self) -> None:
        """Stop the worker, bounded; a worker that does not close in time is cancelled."""
        server, task, self.server, self.task = self.server, self.task, None, None
        if server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.aclose(), CLOSE_TIMEOUT)
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(task, CLOSE_TIMEOUT)

    async def end(self) -> None:
        """The canary's last close: the worker, then its job processes' wrapper and CA copy."""
        await self.close()
        self.jobs.remove()
