"""The stages, in order. Each is `async def run(ctx) -> detail`, raising on failure; a stage may also define
`async def on_timeout(ctx) -> StageFailure` to say what was missing when its time ran out. Stages never
import each other: what they share lives in bootstrap.lookups. A mode that needs stages of its own keeps
them in its own room (bootstrap.modes); this package and the engine never import a mode."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from bootstrap.context import RunContext
from bootstrap.result import StageFailure
from bootstrap.stages import data, dispatch, join, media, services, token, webhooks, worker


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[RunContext], Awaitable[str]]
    cap: float  # longest it may take on its own; the run's deadline bounds it too
    on_timeout: Callable[[RunContext], Awaitable[StageFailure]] | None = None
    # Runs even when an earlier independent stage failed (each network path stands alone); still skipped
    # when a stage before it that is not independent (a prerequisite) did not pass.
    independent: bool = False


# The single run (`python -m bootstrap`).
STAGES: list[Stage] = [
    Stage("services", services.run, 30.0, services.on_timeout),
    Stage("worker", worker.run, 15.0),
    Stage("token", token.run, 5.0),
    Stage("join", join.run, 15.0),
    Stage("dispatch", dispatch.run, 15.0, dispatch.on_timeout),
    Stage("data", data.run, 8.0, data.on_timeout),
    Stage("media", media.run, 8.0),
    Stage("webhooks", webhooks.run, 15.0, webhooks.on_timeout),
]


def stage_named(name: str) -> Stage:
    """One of the single run's stages, for a mode that runs it too (e.g. the worker against its own node)."""
    return next(stage for stage in STAGES if stage.name == name)
