"""Audio round trips through the SFU: the participant publishes tone pips (markers), the agent echoes them on
`echo-<identity>`, and the participant times each marker from its send to its echo. One clock, one process.

Marker m is a PIP_FRAMES-long tone at MARKER_HZ[m % len(MARKER_HZ)], one every PERIOD_FRAMES frames, silence
between. Each frequency sits on the 100 Hz grid of a 10 ms frame's FFT at 48 kHz, 200 Hz from its neighbours,
so a received frame names its marker by its dominant frequency; a cycle of all frequencies (960 ms) is far
longer than a round trip, so the latest send of that frequency is the one echoed.

Once the markers are timed, both ends' receiver statistics give the audio's quality (bootstrap.audio_quality:
loss on the wire and after repair, jitter, concealment, a MOS), counted between two snapshots taken while the
markers flow: at the first echo (set-up is not the path's quality) and as the sending stops (a receiver whose
packets stopped conceals the silence after them). A `window_s` keeps the markers flowing that much longer, so
the figures count enough packets (50 a second each way).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from google.protobuf.json_format import MessageToDict
from livekit import rtc

from agent_runtime.echo import (
    ECHO_TRACK_PREFIX,
    FRAME_MS,
    HEARD_METHOD,
    RECEIVER_METHOD,
    SAMPLE_RATE,
    dominant_frequency,
)
from bootstrap import audio_quality
from bootstrap.stats import summary

MARKER_HZ = tuple(1000 + 200 * k for k in range(16))
PIP_FRAMES = 4  # 40 ms of tone: two whole 10 ms frames survive any alignment and a jitter buffer shortening it
PERIOD_FRAMES = 6  # a marker every 60 ms
AMPLITUDE = 0.3 * 32767
SAMPLES_PER_FRAME = SAMPLE_RATE * FRAME_MS // 1000
# A frame is a marker's echo when it is this loud (int16 RMS) and its dominant frequency is a marker's.
DETECT_RMS = 500.0
# The agent heard a signal (not silence) when its loudest frame was this loud.
HEARD_RMS = 200.0
# Our source's queue: frames are pushed in real time, so a short queue keeps send time = capture time.
SOURCE_QUEUE_MS = 50
STREAM_CAPACITY = 0  # unbounded: our reader is never paced, so a backlog drains at once (none is dropped)
ECHO_WAIT = 1.0  # after the last marker: how long its echo may take before it counts as lost
Reports = list[dict[str, Any]]


class AudioPathError(Exception):
    """A direction of the audio path is broken; the message names it."""


@dataclass
class AudioFigures:
    markers_after_setup: int  # how many markers to time once the first echo arrived
    published_at: float = 0.0  # time.monotonic() when publish_track returned: the clock's start
    sent: list[float] = field(default_factory=list)  # marker m's send time
    echoed: dict[int, float] = field(default_factory=dict)  # marker m -> when its echo was detected
    heard: dict[str, float] = field(default_factory=dict)  # what the agent reports it heard from us
    spurious: int = 0  # pips heard at a frequency no marker then in flight had (reported, not credited)
    quality: dict[str, Any] = field(default_factory=dict)  # bootstrap.audio_quality.quality's figures

    @property
    def first(self) -> int | None:
        return min(self.echoed) if self.echoed else None

    @property
    def first_echo_s(self) -> float | None:
        return None if self.first is None else self.echoed[self.first] - self.published_at

    @property
    def setup_lost(self) -> int:
        return 0 if self.first is None else self.first

    @property
    def lost_after_setup(self) -> list[int]:
        if self.first is None:
            return []
        return [m for m in range(self.first, len(self.sent)) if m not in self.echoed]

    @property
    def round_trips(self) -> list[float]:
        return [self.echoed[m] - self.sent[m] for m in sorted(self.echoed)]

    @property
    def done_sending(self) -> bool:
        return self.first is not None and len(self.sent) > self.first + self.markers_after_setup

    def as_dict(self) -> dict[str, object]:
        return {
            "first_echo_s": None if self.first_echo_s is None else round(self.first_echo_s, 3),
            "markers_sent": len(self.sent),
            "setup_lost": self.setup_lost,
            "lost_after_setup": len(self.lost_after_setup),
            "round_trip_s": summary(self.round_trips),
            "timed_markers": len(self.round_trips),
            "spurious": self.spurious,
            "agent_heard": self.heard,
            "quality": self.quality,
        }


def marker_frame(index: int, offset: int) -> rtc.AudioFrame:
    """Frame `offset` of marker `index`'s period: tone for the first PIP_FRAMES frames, then silence. The tone's
    phase runs on from frame to frame, so a pip has no click inside it."""
    samples = np.zeros(SAMPLES_PER_FRAME, dtype=np.int16)
    if offset < PIP_FRAMES:
        t = (np.arange(SAMPLES_PER_FRAME) + offset * SAMPLES_PER_FRAME) / SAMPLE_RATE
        samples = (AMPLITUDE * np.sin(2 * np.pi * MARKER_HZ[index % len(MARKER_HZ)] * t)).astype(np.int16)
    return rtc.AudioFrame(samples.tobytes(), SAMPLE_RATE, 1, SAMPLES_PER_FRAME)


def marker_of(frame: rtc.AudioFrame) -> int | None:
    """Which marker frequency (its index in MARKER_HZ) `frame` carries, if it carries one."""
    samples = np.frombuffer(frame.data, dtype=np.int16).astype(np.float32)
    if samples.size == 0 or float(np.sqrt(np.mean(samples**2))) < DETECT_RMS:
        return None
    frequency = dominant_frequency(samples, frame.sample_rate)
    return next((k for k, hz in enumerate(MARKER_HZ) if abs(hz - frequency) <= 50), None)


async def agent_hearing(room: rtc.Room, agent: str, about: str = "") -> dict[str, float]:
    """What the agent says it heard from `about` (default: us), over RPC: frames, peak_rms, dominant_hz."""
    reply = await room.local_participant.perform_rpc(
        destination_identity=agent, method=HEARD_METHOD, payload=about, response_timeout=2.0
    )
    return dict(json.loads(reply))


class AudioProbe:
    """Publishes the markers from `room` and listens for their echo from `agent_identity`."""

    def __init__(
        self, room: rtc.Room, agent_identity: str, markers_after_setup: int, first_echo_limit: float,
        window_s: float = 0.0,
    ) -> None:  # fmt: skip
        self.room, self.agent = room, agent_identity
        self.first_echo_limit = first_echo_limit
        self.window_s = window_s  # markers keep flowing this long after the first echo, for the quality figures
        self.figures = AudioFigures(markers_after_setup)
        self.echo_track_seen = asyncio.Event()
        self._pending: tuple[int, float] | None = None  # a frame at a marker's frequency, awaiting its second
        self._tasks: list[asyncio.Task[None]] = []
        self._snapshots: list[asyncio.Task[tuple[Reports, Reports]]] = []  # at the first echo, at the end
        self._track: rtc.LocalAudioTrack | None = None

    async def run(self) -> AudioFigures:
        """Send markers until enough were echoed after the first echo (or none came within first_echo_limit),
        then wait out the last ones' echoes."""
        self._watch_for_echo_track()
        source = rtc.AudioSource(SAMPLE_RATE, 1, queue_size_ms=SOURCE_QUEUE_MS)
        self._track = rtc.LocalAudioTrack.create_audio_track("bootstrap-markers", source)
        options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        await self.room.local_participant.publish_track(self._track, options)
        self.figures.published_at = time.monotonic()
        await self._send(source)
        deadline = time.monotonic() + ECHO_WAIT
        while self.figures.lost_after_setup and time.monotonic() < deadline:
            await asyncio.sleep(FRAME_MS / 1000)
        try:
            self.figures.quality = await self.read_quality()
        except Exception as exc:  # no stats is no verdict on quality, not a broken path
            self.figures.quality = {"error": f"{type(exc).__name__}: {exc}"}
        return self.figures

    async def read_quality(self) -> dict[str, Any]:
        """Both directions' quality figures (bootstrap.audio_quality) between the snapshots (without a first
        echo: all the stats counted)."""
        snapshots = [await task for task in self._snapshots]
        end = snapshots[-1] if len(snapshots) == 2 else await self._snapshot()
        since = snapshots[0] if len(snapshots) == 2 else None
        round_trips = self.figures.round_trips
        round_trip_ms = 1000.0 * sorted(round_trips)[len(round_trips) // 2] if round_trips else 0.0
        return audio_quality.quality(*end, round_trip_ms, since=since)

    async def _snapshot(self) -> tuple[Reports, Reports]:
        """Our stats and the agent's (its RPC; an agent that cannot say leaves its figures out), as dicts."""
        session = await self.room.get_rtc_stats()
        own = [MessageToDict(s, preserving_proto_field_name=True)
               for s in (*session.publisher_stats, *session.subscriber_stats)]  # fmt: skip
        try:
            reply = await self.room.local_participant.perform_rpc(
                destination_identity=self.agent, method=RECEIVER_METHOD, payload="", response_timeout=2.0
            )
            agent = list(json.loads(reply))
        except Exception:
            agent = []
        return own, agent

    async def ask_what_agent_heard(self) -> dict[str, float]:
        self.figures.heard = await agent_hearing(self.room, self.agent)
        return self.figures.heard

    async def verdict(self) -> str | None:
        """After run(): what failed, naming the direction, or None. Asks the agent what it heard from us (over
        RPC): an agent that cannot say is itself a finding."""
        try:
            await self.ask_what_agent_heard()
        except Exception as exc:
            self.figures.heard = {"error": 1.0}
            return f"the agent did not say what it heard ({type(exc).__name__}: {exc})"
        figures = self.figures
        if figures.first is None:
            return _no_echo(figures, self.echo_track_seen.is_set(), self.agent)
        if (lost := figures.lost_after_setup) and not audio_quality.lossy(figures.quality):
            return (f"audio markers {lost[:8]} were lost after the path was set up (marker {figures.first} was "
                    "the first echoed)")  # fmt: skip
        heard = figures.heard
        if (
            heard.get("peak_rms", 0.0) < HEARD_RMS
            or not MARKER_HZ[0] - 100 <= heard.get("dominant_hz", 0.0) <= MARKER_HZ[-1] + 100
        ):
            return f"the agent heard no signal: {_heard(heard)} (publish the markers, a tone, not silence)"
        return None

    async def close(self) -> None:
        for snapshot in self._snapshots:
            snapshot.cancel()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task
        if self._track is not None:
            with contextlib.suppress(Exception):
                await self.room.local_participant.unpublish_track(self._track.sid)

    async def _send(self, source: rtc.AudioSource) -> None:
        """One frame every FRAME_MS on an absolute schedule (no drift, no backlog in the source's queue), whole
        markers only, until enough were sent after the first echo, or none came back within first_echo_limit."""
        next_at, frame_no = time.monotonic(), 0
        give_up = self.figures.published_at + self.first_echo_limit
        while True:
            marker, offset = divmod(frame_no, PERIOD_FRAMES)
            if offset == 0:
                if self.figures.first is not None and not self._snapshots:
                    self._snapshots.append(asyncio.create_task(self._snapshot()))
                if self.figures.done_sending and self._window_over() and len(self._snapshots) == 1:
                    self._snapshots.append(asyncio.create_task(self._snapshot()))  # while the audio still flows
                if (len(self._snapshots) == 2 and self._snapshots[1].done()) or (
                    self.figures.first is None and time.monotonic() > give_up
                ):
                    return
                self.figures.sent.append(time.monotonic())
            await source.capture_frame(marker_frame(marker, offset))
            frame_no += 1
            next_at += FRAME_MS / 1000
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    def _window_over(self) -> bool:
        first = self.figures.first
        return not self.window_s or (
            first is not None and time.monotonic() >= self.figures.echoed[first] + self.window_s
        )

    def _watch_for_echo_track(self) -> None:
        wanted = f"{ECHO_TRACK_PREFIX}{self.room.local_participant.identity}"

        def subscribe(publication: rtc.RemoteTrackPublication, participant: rtc.RemoteParticipant) -> None:
            if participant.identity == self.agent and publication.name == wanted:
                publication.set_subscribed(True)

        def on_subscribed(
            track: rtc.Track, publication: rtc.RemoteTrackPublication, who: rtc.RemoteParticipant
        ) -> None:
            if who.identity == self.agent and publication.name == wanted and isinstance(track, rtc.RemoteAudioTrack):
                self.echo_track_seen.set()
                self._tasks.append(asyncio.create_task(self._listen(track)))

        self.room.on("track_published", subscribe)
        self.room.on("track_subscribed", on_subscribed)
        if (agent := self.room.remote_participants.get(self.agent)) is not None:
            for publication in agent.track_publications.values():
                subscribe(publication, agent)

    async def _listen(self, track: rtc.RemoteAudioTrack) -> None:
        stream = rtc.AudioStream(track, sample_rate=SAMPLE_RATE, num_channels=1, frame_size_ms=FRAME_MS,
                                 capacity=STREAM_CAPACITY)  # fmt: skip
        try:
            async for event in stream:
                self._detect(marker_of(event.frame), time.monotonic())
        finally:
            await stream.aclose()

    def _detect(self, frequency_index: int | None, now: float) -> None:
        """A marker's echo is two frames in a row at its frequency (one frame can be a codec or catch-up artefact),
        timed at the first of them, credited to the latest marker sent at that frequency after the last marker
        echoed: one audio stream is in order, so an echo that would be older than the last one is spurious."""
        pending, self._pending = self._pending, None
        if frequency_index is None:
            return
        if pending is None or pending[0] != frequency_index:
            self._pending = (frequency_index, now)
            return
        heard_at, sent, last = pending[1], self.figures.sent, max(self.figures.echoed, default=-1)
        candidates = [
            m for m in range(last + 1, len(sent)) if m % len(MARKER_HZ) == frequency_index and sent[m] < heard_at
        ]
        if candidates:
            self.figures.echoed[candidates[-1]] = heard_at
        elif frequency_index != max(self.figures.echoed, default=-1) % len(MARKER_HZ):
            self.figures.spurious += 1  # not the tail of the marker just credited: a frequency we never sent then


def describe(figures: AudioFigures) -> str:
    audio = figures.as_dict()
    rtt = audio["round_trip_s"]
    assert isinstance(rtt, dict)
    return (f"echo after {audio['first_echo_s']} s ({figures.setup_lost} set-up markers lost), "
            f"round trip p50 {rtt['p50'] * 1000:.0f} ms p95 {rtt['p95'] * 1000:.0f} ms over {audio['timed_markers']} "
            f"markers; agent heard {figures.heard.get('dominant_hz', 0):.0f} Hz")  # fmt: skip


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
