"""The six stages, in order. Each is `async def run(ctx) -> detail` and raises on failure."""

from collections.abc import Awaitable, Callable

from bootstrap.context import RunContext
from bootstrap.stages import dispatch, join, services, token, webhooks, worker

Stage = Callable[[RunContext], Awaitable[str]]

# (name, function, longest it may take on its own; the run's deadline bounds it too)
STAGES: list[tuple[str, Stage, float]] = [
    ("services", services.run, 30.0),
    ("worker", worker.run, 15.0),
    ("token", token.run, 5.0),
    ("join", join.run, 15.0),
    ("dispatch", dispatch.run, 15.0),
    ("webhooks", webhooks.run, 15.0),
]
