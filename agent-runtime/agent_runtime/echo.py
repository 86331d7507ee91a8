"""The echo agent's parts: no model, no outside service, but it answers, so the bootstrap can prove that media
and data cross the SFU both ways. Everything it reports travels over the SFU (an RPC reply), never through
shared Python state, so the checks pass the same against a separate `python -m agent_runtime`.

- audio: each participant's microphone track is measured (what it heard) and echoed back on a track of the
  agent's own named `echo-<identity>`, so each participant hears only its own echo;
- RPC: PING_METHOD returns its payload; HEARD_METHOD returns what the agent heard from the caller, or from
  the participant its payload names (JSON); RECEIVER_METHOD returns the agent's own receiver statistics of that
  participant's audio (its inbound-rtp and codec reports, JSON: loss, NACKs, jitter, concealment);
- data: reliable packets on DATA_TOPIC (`<sender identity> <sequence number>`) are sent back to their sender,
  unchanged and in order.

Handlers that receive (tracks, data) are attached before the agent connects: an event that arrives before its
listener exists is dropped by the SDK, and reliable data sent the moment the agent appears would be lost.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from google.protobuf.json_format import MessageToDict
from livekit import rtc

# stdlib logging, not structlog: jobs may run in processes of their own, where livekit-agents forwards stdlib
# records to the worker's process (and so to its configured output); structlog's default would print to stdout.
log = logging.getLogger("agent_runtime")

SAMPLE_RATE = 48000
FRAME_MS = 10
PING_METHOD = "bootstrap.ping"
HEARD_METHOD = "bootstrap.heard"
RECEIVER_METHOD = "bootstrap.receiver"
RECEIVER_REPORTS = ("inbound_rtp", "codec")  # of a track's stats: the rest (certificates) is large and not needed
DATA_TOPIC = "bootstrap.echo"
# Set once the agent's RPC methods are registered: a call that arrives earlier is answered UNSUPPORTED_METHOD
# by the SDK (measured: 1 room in 50 under --load when pinging the moment the server listed the agent).
READY_ATTRIBUTE = "bootstrap.ready"
ECHO_TRACK_PREFIX = "echo-"
# Echo latency is bounded by what waits in the two queues: the stream's frames and the source's queue. The
# source plays out in real time, so once the agent fell behind (a busy process) a backlog would never drain:
# quiet frames are skipped while more than CATCH_UP_S waits in the source, and the stream holds up to
# STREAM_CAPACITY frames rather than dropping sound (5 frames lost a marker in ~1 room in 20 under --load).
STREAM_CAPACITY = 10  # frames
SOURCE_QUEUE_MS = 50
CATCH_UP_S = 0.02
QUIET_RMS = 100.0  # int16 RMS: below this a frame is (near) silence
ZERO_PADDING = 8


@dataclass
class Hearing:
    """What the agent heard from one participant: audio frames, the loudest frame's RMS (int16 units), the
    dominant frequency of all it heard, and reliable packets on DATA_TOPIC.

    The frequency is the peak of the frames' spectra summed, not the loudest frame's: a single decoder glitch
    (measured once: a frame of RMS 13182 whose strongest frequency was the lowest bin, 12 Hz) is louder than any
    tone, but one frame among dozens does not outweigh the tone in the sum."""

    frames: int = 0
    peak_rms: float = 0.0
    dominant_hz: float = 0.0
    packets: int = 0
    spectrum: np.ndarray | None = field(default=None, repr=False)  # the frames' magnitude spectra, summed

    def add(self, frame: rtc.AudioFrame) -> float:
        """Count `frame` in; returns its RMS."""
        samples = np.frombuffer(frame.data, dtype=np.int16).astype(np.float32)
        self.frames += 1
        rms = float(np.sqrt(np.mean(samples**2))) if samples.size else 0.0
        self.peak_rms = max(self.peak_rms, rms)
        if samples.size:
            spectrum = magnitude_spectrum(samples)
            same_shape = self.spectrum is not None and self.spectrum.shape == spectrum.shape
            self.spectrum = self.spectrum + spectrum if same_shape else spectrum
            self.dominant_hz = peak_frequency(self.spectrum, samples.size, frame.sample_rate)
        return rms

    def as_json(self) -> str:
        figures = {"frames": self.frames, "peak_rms": round(self.peak_rms, 1), "dominant_hz": self.dominant_hz}
        return json.dumps({**figures, "packets": self.packets})


def dominant_frequency(samples: np.ndarray, sample_rate: int) -> float:
    """The strongest frequency in `samples` (DC excluded). A 10 ms frame alone resolves only 100 Hz; zero-padding
    it 8x reads the spectrum's peak on a 12.5 Hz grid (440 Hz comes out as 437.5, not 400)."""
    return peak_frequency(magnitude_spectrum(samples), samples.size, sample_rate)


def magnitude_spectrum(samples: np.ndarray) -> np.ndarray:
    """|FFT| of `samples` zero-padded ZERO_PADDING times (see dominant_frequency)."""
    return np.abs(np.fft.rfft(samples, n=samples.size * ZERO_PADDING))


def peak_frequency(spectrum: np.ndarray, frame_size: int, sample_rate: int) -> float:
    """The frequency of `spectrum`'s peak (DC excluded), for frames of `frame_size` samples."""
    if spectrum.size < 2:
        return 0.0
    return float((int(np.argmax(spectrum[1:])) + 1) * sample_rate / (frame_size * ZERO_PADDING))


class EchoAgent:
    """One job's echo agent in `room`. Call the attach_* methods before connecting, the serve_* after."""

    def __init__(self, room: rtc.Room) -> None:
        self.room = room
        self.hearings: dict[str, Hearing] = {}
        self.tracks: dict[str, rtc.RemoteAudioTrack] = {}  # each participant's audio track, for its stats
        self._tasks: set[asyncio.Task[None]] = set()

    def attach_audio_echo(self) -> None:
        """Measure each participant's audio and publish it back on a track of our own."""
        self._on_audio(echo=True)

    def attach_audio_listener(self) -> None:
        """Measure each participant's audio, echo nothing (an agent that only listens)."""
        self._on_audio(echo=False)

    def _on_audio(self, *, echo: bool) -> None:
        def on_track(track: rtc.Track, _pub: rtc.RemoteTrackPublication, who: rtc.RemoteParticipant) -> None:
            if isinstance(track, rtc.RemoteAudioTrack):
                self.tracks[who.identity] = track
                self._spawn(self._listen(track, who.identity, echo))

        self.room.on("track_subscribed", on_track)

    def attach_data_echo(self) -> None:
        def on_data(packet: rtc.DataPacket) -> None:
            if packet.topic != DATA_TOPIC:
                return
            # The SDK names the sender only once it knows the participant, and livekit-server announces one that
            # publishes nothing in its 3-second batch of updates (pkg/rtc/room.go): an agent dispatched before the
            # participant joined would drop its first packets. So the packet names its sender too.
            sender = packet.participant.identity if packet.participant else packet.data.decode().split(" ")[0]
            if sender:
                self.hearings.setdefault(sender, Hearing()).packets += 1
                destination = [sender]
                self._spawn(self.room.local_participant.publish_data(
                    packet.data, reliable=True, topic=DATA_TOPIC, destination_identities=destination))  # fmt: skip

        self.room.on("data_received", on_data)

    def serve_ping(self) -> None:
        self.room.local_participant.register_rpc_method(PING_METHOD, lambda call: call.payload)

    def serve_hearing(self) -> None:
        def heard(call: rtc.RpcInvocationData) -> str:
            """What the agent heard from the participant named in the payload (default: the caller)."""
            return self.hearings.get(call.payload or call.caller_identity, Hearing()).as_json()

        self.room.local_participant.register_rpc_method(HEARD_METHOD, heard)

    def serve_receiver(self) -> None:
        async def receiver(call: rtc.RpcInvocationData) -> str:
            """The agent's receiver statistics of the audio of the participant in the payload (default: the caller)."""
            track = self.tracks.get(call.payload or call.caller_identity)
            stats = await track.get_stats() if track is not None else []
            kept = [s for s in stats if s.WhichOneof("stats") in RECEIVER_REPORTS]
            return json.dumps([MessageToDict(s, preserving_proto_field_name=True) for s in kept])

        self.room.local_participant.register_rpc_method(RECEIVER_METHOD, receiver)

    async def announce_ready(self) -> None:
        """Tell the room (a participant attribute, seen in the server's listing) that the RPCs are served."""
        await self.room.local_participant.set_attributes({READY_ATTRIBUTE: "true"})

    async def _listen(self, track: rtc.RemoteAudioTrack, identity: str, echo: bool) -> None:
        hearing = self.hearings.setdefault(identity, Hearing())
        source = await self._publish_echo(identity) if echo else None
        stream = rtc.AudioStream(track, sample_rate=SAMPLE_RATE, num_channels=1, frame_size_ms=FRAME_MS,
                                 capacity=STREAM_CAPACITY)  # fmt: skip
        try:
            async for event in stream:
                rms = hearing.add(event.frame)
                if source is None or (rms < QUIET_RMS and source.queued_duration > CATCH_UP_S):
                    continue  # behind real time: skip a quiet frame to catch up, never a loud one
                await source.capture_frame(event.frame)
        finally:
            await stream.aclose()

    async def _publish_echo(self, identity: str) -> rtc.AudioSource:
        source = rtc.AudioSource(SAMPLE_RATE, 1, queue_size_ms=SOURCE_QUEUE_MS)
        track = rtc.LocalAudioTrack.create_audio_track(f"{ECHO_TRACK_PREFIX}{identity}", source)
        options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        await self.room.local_participant.publish_track(track, options)
        log.info("echoing to %s in %s", identity, self.room.name)
        return source

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """A task kept referenced until done (the event loop holds tasks only weakly)."""
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
