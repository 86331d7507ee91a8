"""Stage: data crosses the SFU both ways. Right after the server lists the agent, 100 reliable packets with
sequence numbers go to it and must all come back in order (the first is sent at once: no delay hides a loss);
then RPC round trips to the agent's ping method, every payload returned intact."""

from __future__ import annotations

from agent_runtime.echo import READY_ATTRIBUTE
from bootstrap.context import RunContext
from bootstrap.data_probe import DataFigures, DataPathError, agent_packet_count, ping, reliable_echo, reliable_failure
from bootstrap.lookups import find_ready_agent, poll_until
from bootstrap.result import StageFailure

PACKETS = 100
PINGS = 20
READY_POLL = 0.05
FIX = "see the agent's log (`make worker` output, or --verbose) and `make logs` for the server's data-channel errors"


async def run(ctx: RunContext) -> str:
    if ctx.room is None or not ctx.agent_identity:
        raise StageFailure("no joined participant or dispatched agent to exchange data with", "fix the stages before")
    figures = ctx.data = DataFigures()
    await reliable_echo(ctx.room, ctx.agent_identity, PACKETS, figures)
    if not figures.in_order:
        figures.agent_received = await agent_packet_count(ctx.room, ctx.agent_identity)
        raise StageFailure(reliable_failure(figures, ctx.agent_identity), FIX)
    # RPCs wait for the agent to say its methods are registered (earlier calls are refused by its SDK).
    await poll_until(lambda: find_ready_agent(ctx, ctx.room_name), READY_POLL)
    try:
        await ping(ctx.room, ctx.agent_identity, PINGS, figures)
    except DataPathError as exc:
        raise StageFailure(
            str(exc), "register the method in the agent (agent_runtime.echo: serve_ping); " + FIX
        ) from None
    rpc = figures.as_dict()["rpc_round_trip_s"]
    assert isinstance(rpc, dict)
    return (f"{PACKETS}/{PACKETS} reliable packets back in order; RPC x{PINGS} p50 {rpc['p50'] * 1000:.0f} ms, "
            f"p95 {rpc['p95'] * 1000:.0f} ms")  # fmt: skip


async def on_timeout(ctx: RunContext) -> StageFailure:
    if ctx.data is not None and ctx.data.in_order and not ctx.data.rpc_round_trips:
        return StageFailure(
            f"the agent {ctx.agent_identity} never set the participant attribute {READY_ATTRIBUTE!r} that says its "
            "RPC methods are registered",
            "call EchoAgent.announce_ready() once the agent serves its RPCs (agent_runtime.echo); " + FIX,
        )
    return StageFailure("data did not finish before the stage's time ran out", FIX)
