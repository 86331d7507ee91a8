"""Stage: audio crosses the SFU both ways. The participant publishes tone pips (markers), the agent echoes
them back, and each marker is timed from send to echo (bootstrap.audio_probe). Figures: time to first echo
from publish_track's return, markers lost while the path was set up (reported) and after (must be 0), round
trips over the markers after set-up, and what the agent itself heard (its dominant frequency: not silence); then
how good the audio was each way (bootstrap.audio_quality: loss on the wire and after repair, a MOS), WARN or FAIL
by its thresholds, over AUDIO_WINDOW_S of audio after the first echo."""

from __future__ import annotations

from bootstrap import audio_quality
from bootstrap.audio_probe import AudioProbe, describe
from bootstrap.context import RunContext
from bootstrap.result import Kind, StageFailure, StageWarning, Status

MARKERS_AFTER_SETUP = 12
FIRST_ECHO_LIMIT = 4.0  # seconds after publishing; the stage's cap leaves room to explain a failure
# The markers alone flow ~0.6 s after the first echo: 30-33 packets counted each way (measured), where two lost
# packets score MOS 3.2 with FEC (a WARN for a chance drop). This window counts 57-60 (two lost: 4.0, one: 4.3)
# for ~0.45 s more per run; one lost packet in a short window raises no WARN of its own (audio_quality.JUDGED_PACKETS).
AUDIO_WINDOW_S = 1.2
FIX = "see the agent's log (`make worker` output, or --verbose) and `make logs`"


async def run(ctx: RunContext) -> str:
    if ctx.room is None or not ctx.agent_identity:
        raise StageFailure("no joined participant or dispatched agent to exchange audio with", "fix the stages before")
    probe = AudioProbe(ctx.room, ctx.agent_identity, MARKERS_AFTER_SETUP, FIRST_ECHO_LIMIT, AUDIO_WINDOW_S)
    ctx.closers.append(probe.close)
    ctx.audio = await probe.run()
    if failure := await probe.verdict():
        raise StageFailure(failure, FIX)
    detail = "; ".join(filter(None, (describe(ctx.audio), audio_quality.describe(ctx.audio.quality))))
    status, why = audio_quality.judge(ctx.audio.quality, len(ctx.audio.lost_after_setup))
    if status is Status.FAIL:
        raise StageFailure(f"audio quality: {why}", audio_quality.FIX, Kind.MEDIA)
    if status is Status.WARN:
        raise StageWarning(detail, f"audio quality: {why}", audio_quality.FIX, Kind.MEDIA)
    return detail
