"""Stage: audio crosses the SFU both ways. The participant publishes tone pips (markers), the agent echoes
them back, and each marker is timed from send to echo (bootstrap.audio_probe). Figures: time to first echo
from publish_track's return, markers lost while the path was set up (reported) and after (must be 0), round
trips over the markers after set-up, and what the agent itself heard (its dominant frequency: not silence)."""

from __future__ import annotations

from bootstrap.audio_probe import HEARD_RMS, MARKER_HZ, AudioFigures, AudioProbe
from bootstrap.context import RunContext
from bootstrap.result import StageFailure

MARKERS_AFTER_SETUP = 12
FIRST_ECHO_LIMIT = 4.0  # seconds after publishing; the stage's cap leaves room to explain a failure
FIX = "see the agent's log (`make worker` output, or --verbose) and `make logs`"


async def run(ctx: RunContext) -> str:
    if ctx.room is None or not ctx.agent_identity:
        raise StageFailure("no joined participant or dispatched agent to exchange audio with", "fix the stages before")
    probe = AudioProbe(ctx.room, ctx.agent_identity, MARKERS_AFTER_SETUP, FIRST_ECHO_LIMIT)
    ctx.closers.append(probe.close)
    figures = ctx.audio = await probe.run()
    await _ask_agent(probe)
    if figures.first is None:
        raise StageFailure(_no_echo(figures, probe.echo_track_seen.is_set(), ctx.agent_identity), FIX)
    if lost := figures.lost_after_setup:
        raise StageFailure(f"audio markers {lost[:8]} were lost after the path was set up (marker "
                           f"{figures.first} was the first echoed)", FIX)  # fmt: skip
    _check_heard(figures)
    audio = figures.as_dict()
    rtt = audio["round_trip_s"]
    assert isinstance(rtt, dict)
    return (f"echo after {audio['first_echo_s']} s ({figures.setup_lost} set-up markers lost), "
            f"round trip p50 {rtt['p50'] * 1000:.0f} ms p95 {rtt['p95'] * 1000:.0f} ms over {audio['timed_markers']} "
            f"markers; agent heard {figures.heard.get('dominant_hz', 0):.0f} Hz")  # fmt: skip


async def _ask_agent(probe: AudioProbe) -> None:
    """What the agent heard from us, over RPC; a failure to answer is itself a finding."""
    try:
        await probe.ask_what_agent_heard()
    except Exception as exc:
        probe.figures.heard = {"error": 1.0}
        raise StageFailure(f"the agent did not say what it heard ({type(exc).__name__}: {exc})", FIX) from None


def _check_heard(figures: AudioFigures) -> None:
    heard = figures.heard
    if (
        heard.get("peak_rms", 0.0) < HEARD_RMS
        or not MARKER_HZ[0] - 100 <= heard.get("dominant_hz", 0.0) <= MARKER_HZ[-1] + 100
    ):
        raise StageFailure(f"the agent heard no signal: {_heard(heard)}", "publish the markers (a tone), not silence")


def _no_echo(figures: AudioFigures, echo_track_seen: bool, agent: str) -> str:
    heard = figures.heard
    if not heard.get("frames"):
        return f"participant → agent audio: the agent {agent} received no audio from us ({_heard(heard)})"
    if heard.get("peak_rms", 0.0) < HEARD_RMS:
        return f"the agent heard no signal: {_heard(heard)}"
    if not echo_track_seen:
        return f"agent → participant audio: no echo: the agent heard us ({_heard(heard)}) but no echo track reached us"
    sent = len(figures.sent)
    return f"agent → participant audio: no echo: its echo track arrived but carried none of our {sent} markers"


def _heard(heard: dict[str, float]) -> str:
    return (f"{heard.get('frames', 0):.0f} frames, loudest RMS {heard.get('peak_rms', 0):.0f} at "
            f"{heard.get('dominant_hz', 0):.0f} Hz")  # fmt: skip
