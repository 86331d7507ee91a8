"""The data and media stages fail on what a healthy run never shows (issue 24): reliable packets that came back
out of order, and audio markers lost after the path was set up. The stages run against a fake room that
reorders or drops, with the probes' own bookkeeping (bootstrap.data_probe, bootstrap.audio_probe) in between;
no server, no SDK connection."""

from __future__ import annotations

import json
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any, cast

import pytest
from livekit import rtc

from agent_runtime.echo import DATA_TOPIC
from bootstrap.audio_probe import MARKER_HZ, AudioFigures, AudioProbe
from bootstrap.data_probe import DataFigures, reliable_echo
from bootstrap.result import StageFailure
from bootstrap.stages import data as data_stage
from bootstrap.stages import media as media_stage
from tests.conftest import make_context

pytestmark = pytest.mark.unit
AGENT = "agent-under-test"
HEARD = {"frames": 300.0, "peak_rms": 6000.0, "dominant_hz": 1800.0}  # the agent heard the markers
ECHO_DELAY = 0.15  # seconds from a marker's send to its echo: longer than a marker period (60 ms), as measured


class FakeLocal:
    """The participant's side: reliable packets go to the room's echo; RPCs get the agent's HEARD report."""

    identity = "bootstrap-user"

    def __init__(self, room: FakeRoom) -> None:
        self.room = room

    async def publish_data(self, payload: bytes, **options: Any) -> None:
        self.room.sent.append(payload)
        if len(self.room.sent) == self.room.count:
            self.room.echo()

    async def perform_rpc(self, **call: Any) -> str:
        return json.dumps({**HEARD, "packets": len(self.room.sent)})


class FakeRoom:
    """Echoes every reliable packet once all `count` are sent, in the order `reorder` gives."""

    def __init__(self, count: int = 0, reorder: Callable[[list[int]], list[int]] = lambda seqs: seqs) -> None:
        self.count, self.reorder = count, reorder
        self.sent: list[bytes] = []
        self.handlers: dict[str, Callable[..., None]] = {}
        self.local_participant = FakeLocal(self)
        self.remote_participants: dict[str, Any] = {}

    def on(self, event: str, handler: Callable[..., None]) -> None:
        self.handlers[event] = handler

    def off(self, event: str, handler: Callable[..., None]) -> None:
        self.handlers.pop(event, None)

    def echo(self) -> None:
        for seq in self.reorder(list(range(len(self.sent)))):
            packet = SimpleNamespace(participant=SimpleNamespace(identity=AGENT), topic=DATA_TOPIC, data=self.sent[seq])
            self.handlers["data_received"](packet)


def swap(first: int, second: int) -> Callable[[list[int]], list[int]]:
    def reorder(seqs: list[int]) -> list[int]:
        seqs[first], seqs[second] = seqs[second], seqs[first]
        return seqs

    return reorder


def context_with(room: FakeRoom) -> Any:
    ctx = make_context()
    ctx.room, ctx.agent_identity = cast(rtc.Room, room), AGENT
    return ctx


async def gone_past(*_args: Any, **_kwargs: Any) -> None:
    raise AssertionError("the stage went on to its RPCs")


# ---------------------------------------------------------------- data: reliable packets out of order


async def test_reliable_packets_in_order_are_in_order() -> None:
    figures = DataFigures()
    await reliable_echo(cast(rtc.Room, FakeRoom(100)), AGENT, 100, figures)
    assert figures.packets_back == list(range(100)) and figures.in_order


async def test_data_stage_fails_on_reliable_packets_out_of_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """All 100 packets came back, two of them swapped: nothing was lost, and still the stage fails."""
    monkeypatch.setattr(data_stage, "poll_until", gone_past)
    ctx = context_with(FakeRoom(data_stage.PACKETS, swap(3, 4)))
    with pytest.raises(StageFailure, match="reliable packets came back out of order from agent-under-test") as failure:
        await data_stage.run(ctx)
    assert "[0, 1, 2, 4, 3, 5," in str(failure.value) and "the agent received all 100" in str(failure.value)
    assert sorted(ctx.data.packets_back) == list(range(100)) and not ctx.data.as_dict()["reliable_in_order"]


async def test_data_stage_fails_on_a_reliable_packet_lost(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data_stage, "poll_until", gone_past)
    monkeypatch.setattr("bootstrap.data_probe.ECHO_WAIT", 0.1)  # what has not come back by then is lost
    ctx = context_with(FakeRoom(data_stage.PACKETS, lambda seqs: [s for s in seqs if s != 57]))
    with pytest.raises(StageFailure, match=r"99/100 reliable packets came back .* \(lost: 57\)"):
        await data_stage.run(ctx)


# ---------------------------------------------------------------- media: markers lost after set-up


def fake_run(echoed: Callable[[int], bool]) -> Callable[[AudioProbe], Any]:
    """AudioProbe.run without a track: the markers' send times, then each echo fed to the probe's own detector
    (`_detect`: two frames at a marker's frequency, then silence) for the markers `echoed` says came back.
    Marker 0 is lost while the path is set up, as in most real runs."""

    async def run(probe: AudioProbe) -> AudioFigures:
        figures = probe.figures
        count = 1 + figures.markers_after_setup + 1
        figures.sent = [0.06 * m for m in range(count)]
        for m in range(1, count):
            if echoed(m):
                heard_at = figures.sent[m] + ECHO_DELAY
                for offset, frequency in ((0.0, m % len(MARKER_HZ)), (0.01, m % len(MARKER_HZ)), (0.02, None)):
                    probe._detect(frequency, heard_at + offset)
        return figures

    return run


async def test_media_stage_passes_when_only_set_up_markers_are_lost(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(AudioProbe, "run", fake_run(lambda m: True))
    ctx = context_with(FakeRoom())
    detail = await media_stage.run(ctx)
    assert ctx.audio.setup_lost == 1 and ctx.audio.lost_after_setup == [] and ctx.audio.spurious == 0
    assert "(1 set-up markers lost)" in detail and f"over {media_stage.MARKERS_AFTER_SETUP + 1} markers" in detail


async def test_media_stage_fails_on_a_marker_lost_after_set_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(AudioProbe, "run", fake_run(lambda m: m != 7))
    ctx = context_with(FakeRoom())
    with pytest.raises(StageFailure, match=r"audio markers \[7\] were lost after the path was set up \(marker 1 was"):
        await media_stage.run(ctx)
    assert ctx.audio.as_dict()["lost_after_setup"] == 1


async def test_media_stage_fails_when_the_last_marker_never_comes_back(monkeypatch: pytest.MonkeyPatch) -> None:
    last = 1 + media_stage.MARKERS_AFTER_SETUP
    monkeypatch.setattr(AudioProbe, "run", fake_run(lambda m: m != last))
    with pytest.raises(StageFailure, match=rf"audio markers \[{last}\] were lost after the path was set up"):
        await media_stage.run(context_with(FakeRoom()))


def test_an_echo_older_than_the_last_one_is_not_credited() -> None:
    """One audio stream is in order: a frequency heard after a later marker's echo cannot be an earlier marker's
    echo (it is counted spurious), so a lost marker cannot be papered over by a late artefact."""
    probe = AudioProbe(cast(rtc.Room, FakeRoom()), AGENT, 4, 1.0)
    probe.figures.sent = [0.0, 0.06, 0.12, 0.18]
    for frequency, at in ((2, 0.3), (2, 0.31), (None, 0.32), (1, 0.33), (1, 0.34)):
        probe._detect(frequency, at)
    assert probe.figures.echoed == {2: 0.3} and probe.figures.spurious == 1
