"""Stage 6: the backend's receiver got signed, verified room_started and participant_joined (for the
user and the agent) for this run's room."""

from __future__ import annotations

from livekit import api

from bootstrap.context import RunContext
from bootstrap.result import StageFailure


def _expected(ctx: RunContext) -> set[tuple[str, str]]:
    return {
        ("room_started", ""),
        ("participant_joined", ctx.identity),
        ("participant_joined", ctx.agent_identity),
    }


def _seen(ctx: RunContext) -> set[tuple[str, str]]:
    return {(e.event, _identity(e)) for e in ctx.sink.for_room(ctx.room_name)}


def _identity(event: api.WebhookEvent) -> str:
    return event.participant.identity if event.HasField("participant") else ""


async def run(ctx: RunContext) -> str:
    expected = _expected(ctx)
    await ctx.sink.wait_until(lambda: expected <= _seen(ctx))
    events = sorted({e for e, _ in expected})
    return f"{len(ctx.sink.for_room(ctx.room_name))} verified: {', '.join(events)} (user + agent)"


LOCAL_FIX = (
    "check webhook.urls in docker/livekit.yaml points at this machine's port {port} (host.docker.internal "
    "under Docker, 127.0.0.1 natively) and `make logs` for the server's delivery errors"
)


async def on_timeout(ctx: RunContext, *, fix: str = LOCAL_FIX) -> StageFailure:
    """`fix`: what to check, `{port}` the receiver's (a deployment elsewhere has its own config and logs)."""
    missing = sorted(f"{event}({who})" if who else event for event, who in _expected(ctx) - _seen(ctx))
    return StageFailure(
        f"missing verified webhooks for {ctx.room_name}: {', '.join(missing)} "
        f"(:{ctx.webhook_port} verified {len(ctx.sink.for_room(ctx.room_name))} event(s) for this room, "
        f"{len(ctx.sink.events) - len(ctx.sink.for_room(ctx.room_name))} for others)",
        fix.format(port=ctx.webhook_port),
    )
