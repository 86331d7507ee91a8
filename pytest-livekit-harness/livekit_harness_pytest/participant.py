"""A test's participant: the rtc SDK in the test's own process, joined with a minted token. It publishes audio
(a numpy array or a WAV file, paced in real time), records what it receives (audio frames per sender, data
packets), calls and serves RPCs, and every wait is bounded and says what it waited for."""

from __future__ import annotations

import asyncio
import time
import wave
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from livekit import rtc

SAMPLE_RATE = 48000
FRAME_MS = 10
# seconds: every wait here is bounded (failure paths stay short). The waits take a `timeout` argument (ruff's
# ASYNC109 prefers asyncio.timeout around the call): a test states its bound where it waits, and the failure
# names what was awaited, which an outer asyncio.timeout cannot.
DEFAULT_WAIT = 10.0
POLL = 0.02


@dataclass
class DataPacket:
    sender: str
    topic: str
    payload: bytes
    at: float  # time.monotonic() on arrival


@dataclass
class ReceivedAudio:
    """Frames from one remote participant (all its audio tracks), as int16 mono samples at SAMPLE_RATE."""

    frames: list[np.ndarray] = field(default_factory=list)
    first_at: float | None = None

    def samples(self) -> np.ndarray:
        return np.concatenate(self.frames) if self.frames else np.zeros(0, dtype=np.int16)

    @property
    def seconds(self) -> float:
        return sum(f.size for f in self.frames) / SAMPLE_RATE


def load_wav(path: Path | str) -> tuple[np.ndarray, int]:
    """int16 samples (mono: channels averaged) and the sample rate of a PCM16 WAV file."""
    with wave.open(str(path), "rb") as wav:
        if wav.getsampwidth() != 2:
            raise ValueError(f"{path}: {wav.getsampwidth() * 8}-bit samples, only 16-bit PCM is supported")
        data = np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16)
        channels = wav.getnchannels()
        mono = data.reshape(-1, channels).mean(axis=1).astype(np.int16) if channels > 1 else data
        return mono, wav.getframerate()


def tone(frequency: float, seconds: float, amplitude: float = 0.3, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """A sine tone as int16 samples, for publish_audio."""
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    return (amplitude * 32767 * np.sin(2 * np.pi * frequency * t)).astype(np.int16)


def dominant_frequency(samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> float:
    """The strongest frequency in `samples` (Hz), 0.0 for silence."""
    if samples.size == 0 or not np.any(samples):
        return 0.0
    windowed = samples.astype(np.float64) * np.hanning(samples.size)
    spectrum = np.abs(np.fft.rfft(windowed))
    spectrum[0] = 0.0
    return float(np.argmax(spectrum) * sample_rate / samples.size)


class Participant:
    """Joined by the `participant` fixture (or `participant_factory`); left and closed by it after the test."""

    def __init__(self, identity: str, room_name: str) -> None:
        self.identity, self.room_name = identity, room_name
        self.room = rtc.Room()
        self.audio: dict[str, ReceivedAudio] = {}
        self.data: list[DataPacket] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._sources: list[rtc.AudioSource] = []
        self.room.on("track_subscribed", self._on_track)
        self.room.on("data_received", self._on_data)

    async def join(self, url: str, token: str, timeout: float = DEFAULT_WAIT) -> None:  # noqa: ASYNC109 (DEFAULT_WAIT)
        async with asyncio.timeout(timeout):
            await self.room.connect(url, token, rtc.RoomOptions(auto_subscribe=True))

    def _on_track(self, track: rtc.Track, _pub: rtc.RemoteTrackPublication, who: rtc.RemoteParticipant) -> None:
        if track.kind == rtc.TrackKind.KIND_AUDIO:
            task = asyncio.get_running_loop().create_task(self._record(track, who.identity))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _record(self, track: rtc.Track, sender: str) -> None:
        received = self.audio.setdefault(sender, ReceivedAudio())
        stream = rtc.AudioStream(track, sample_rate=SAMPLE_RATE, num_channels=1, frame_size_ms=FRAME_MS)
        try:
            async for event in stream:
                if received.first_at is None:
                    received.first_at = time.monotonic()
                received.frames.append(np.frombuffer(event.frame.data, dtype=np.int16).copy())
        finally:
            await stream.aclose()

    def _on_data(self, packet: rtc.DataPacket) -> None:
        sender = packet.participant.identity if packet.participant else ""
        self.data.append(DataPacket(sender, packet.topic or "", bytes(packet.data), time.monotonic()))

    # --- what others do ---------------------------------------------------------------------------------------

    async def wait_for(self, condition: Callable[[], object], what: str, timeout: float = DEFAULT_WAIT) -> None:  # noqa: ASYNC109 (DEFAULT_WAIT)
        """Return once `condition()` is true; fail after `timeout` seconds naming `what` was awaited."""
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.identity}: waited {timeout:.1f}s for {what}, in vain")
            await asyncio.sleep(POLL)

    async def wait_for_participant(self, identity: str | None = None, *, agent: bool = False,
                                   timeout: float = DEFAULT_WAIT) -> rtc.RemoteParticipant:  # fmt: skip  # noqa: ASYNC109 (DEFAULT_WAIT)
        """The remote participant named `identity` (or the first agent, with agent=True), once it is in the room."""

        def found() -> rtc.RemoteParticipant | None:
            for p in self.room.remote_participants.values():
                is_agent = p.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT
                if (identity is None or p.identity == identity) and (is_agent or not agent):
                    return p
            return None

        await self.wait_for(found, f"participant {identity or ('an agent' if agent else 'anyone')}", timeout)
        participant = found()
        assert participant is not None
        return participant

    async def wait_for_attribute(self, identity: str, key: str, value: str | None = None,
                                 timeout: float = DEFAULT_WAIT) -> str:  # fmt: skip  # noqa: ASYNC109 (DEFAULT_WAIT)
        """The participant attribute `key` of `identity` once it is set (to `value`, if given)."""

        def current() -> str | None:
            p = self.room.remote_participants.get(identity)
            got = p.attributes.get(key) if p else None
            return got if got is not None and (value is None or got == value) else None

        await self.wait_for(lambda: current() is not None, f"attribute {key}={value or '*'} on {identity}", timeout)
        return current() or ""

    async def wait_for_audio(self, sender: str, seconds: float, min_rms: float = 0.0,
                             timeout: float = DEFAULT_WAIT) -> np.ndarray:  # fmt: skip  # noqa: ASYNC109 (DEFAULT_WAIT)
        """At least `seconds` of audio received from `sender` (louder than `min_rms`, counted frame by frame)."""

        def enough() -> bool:
            frames = self.audio.get(sender, ReceivedAudio()).frames
            loud = sum(f.size for f in frames if f.size and np.sqrt(np.mean(f.astype(np.float64) ** 2)) > min_rms)
            return loud >= seconds * SAMPLE_RATE

        await self.wait_for(enough, f"{seconds}s of audio from {sender} (RMS > {min_rms})", timeout)
        return self.audio[sender].samples()

    async def wait_for_data(self, topic: str | None = None, sender: str | None = None, count: int = 1,
                            timeout: float = DEFAULT_WAIT) -> list[DataPacket]:  # fmt: skip  # noqa: ASYNC109 (DEFAULT_WAIT)
        def matching() -> list[DataPacket]:
            return [
                p for p in self.data if (topic is None or p.topic == topic) and (sender is None or p.sender == sender)
            ]

        await self.wait_for(lambda: len(matching()) >= count, f"{count} data packet(s) on {topic!r}", timeout)
        return matching()

    # --- what this participant does ---------------------------------------------------------------------------

    async def publish_audio(self, samples: np.ndarray | Path | str, sample_rate: int = SAMPLE_RATE,
                            track_name: str = "microphone", wait: bool = True) -> rtc.LocalAudioTrack:  # fmt: skip
        """Publish mono int16 `samples` (or a WAV file) on a new track, paced in real time. With wait=True,
        return after the last frame was queued; otherwise in the background (the track stays published)."""
        if not isinstance(samples, np.ndarray):
            samples, sample_rate = load_wav(samples)
        source = rtc.AudioSource(sample_rate, 1, queue_size_ms=200)
        self._sources.append(source)
        track = rtc.LocalAudioTrack.create_audio_track(track_name, source)
        options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        await self.room.local_participant.publish_track(track, options)
        sending = asyncio.get_running_loop().create_task(self._send(source, samples.astype(np.int16), sample_rate))
        self._tasks.add(sending)
        sending.add_done_callback(self._tasks.discard)
        if wait:
            await sending
        return track

    async def _send(self, source: rtc.AudioSource, samples: np.ndarray, sample_rate: int) -> None:
        per_frame = sample_rate * FRAME_MS // 1000
        padded = np.concatenate([samples, np.zeros(-samples.size % per_frame, dtype=np.int16)])
        for start in range(0, padded.size, per_frame):
            chunk = padded[start : start + per_frame]
            await source.capture_frame(rtc.AudioFrame(chunk.tobytes(), sample_rate, 1, per_frame))
        await source.wait_for_playout()

    async def send_data(self, payload: bytes | str, topic: str = "", reliable: bool = True,
                        to: list[str] | None = None) -> None:  # fmt: skip
        await self.room.local_participant.publish_data(payload, reliable=reliable, topic=topic,
                                                       destination_identities=to or [])  # fmt: skip

    async def rpc(self, destination: str, method: str, payload: str = "", timeout: float = DEFAULT_WAIT) -> str:  # noqa: ASYNC109 (DEFAULT_WAIT)
        """Call `method` on `destination`; its reply. rtc.RpcError on an error reply or no reply in `timeout`."""
        return await self.room.local_participant.perform_rpc(
            destination_identity=destination, method=method, payload=payload, response_timeout=timeout
        )

    def serve_rpc(self, method: str, handler: Callable[[rtc.RpcInvocationData], Awaitable[str]]) -> None:
        self.room.local_participant.register_rpc_method(method, handler)

    async def leave(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for source in self._sources:
            await source.aclose()
        await self.room.disconnect()
