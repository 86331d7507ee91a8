"""The pitch agent: listens to each caller, and when the caller's sound stops, answers with a tone a fifth above
what it heard (REPLY_RATIO times the caller's dominant frequency), on a track of its own; it also tells the
caller over data (topic REPLY_TOPIC) and answers two RPCs. No model, no outside service.

- RPC `pitch.last`: JSON {"heard_hz", "replied_hz", "replies"} for the caller;
- RPC `pitch.ratio`: the ratio it replies at, as text.
Names and the ratio live in pitch_agent.protocol (light to import, for tests).
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass

import numpy as np
from livekit import agents, rtc

from pitch_agent.protocol import LAST_METHOD, RATIO_METHOD, READY_ATTRIBUTE, REPLY_RATIO, REPLY_TOPIC

log = logging.getLogger("pitch_agent")

SAMPLE_RATE = 48000
FRAME_MS = 10
REPLY_SECONDS = 0.4
QUIET_RMS = 300.0  # int16: quieter frames are silence
END_OF_SOUND_FRAMES = 15  # 150 ms of silence after sound ends the caller's turn
MIN_SOUND_FRAMES = 10  # a turn shorter than 100 ms is noise


def dominant_hz(samples: np.ndarray) -> float:
    windowed = samples.astype(np.float64) * np.hanning(samples.size)
    spectrum = np.abs(np.fft.rfft(windowed))
    spectrum[0] = 0.0
    return float(np.argmax(spectrum) * SAMPLE_RATE / samples.size)


def tone(hz: float, seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (0.3 * 32767 * np.sin(2 * np.pi * hz * t)).astype(np.int16)


@dataclass
class Caller:
    heard_hz: float = 0.0
    replied_hz: float = 0.0
    replies: int = 0


class PitchAgent:
    def __init__(self, room: rtc.Room) -> None:
        self.room = room
        self.callers: dict[str, Caller] = {}
        self.source = rtc.AudioSource(SAMPLE_RATE, 1, queue_size_ms=200)
        self.tasks: set[asyncio.Task[None]] = set()
        self.listening: set[str] = set()  # track sids

    async def start(self) -> None:
        track = rtc.LocalAudioTrack.create_audio_track("pitch-reply", self.source)
        await self.room.local_participant.publish_track(
            track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        )
        self.room.local_participant.register_rpc_method(LAST_METHOD, self.last)
        self.room.local_participant.register_rpc_method(RATIO_METHOD, self.ratio)
        self.room.on("track_subscribed", self.on_track)
        for participant in self.room.remote_participants.values():
            for publication in participant.track_publications.values():
                if publication.track is not None:
                    self.on_track(publication.track, publication, participant)
        await self.room.local_participant.set_attributes({READY_ATTRIBUTE: "1"})

    async def last(self, data: rtc.RpcInvocationData) -> str:
        caller = self.callers.get(data.caller_identity, Caller())
        return json.dumps({"heard_hz": caller.heard_hz, "replied_hz": caller.replied_hz, "replies": caller.replies})

    async def ratio(self, _data: rtc.RpcInvocationData) -> str:
        return str(REPLY_RATIO)

    def on_track(self, track: rtc.Track, _pub: rtc.RemoteTrackPublication, who: rtc.RemoteParticipant) -> None:
        if track.kind == rtc.TrackKind.KIND_AUDIO and track.sid not in self.listening:
            self.listening.add(track.sid)
            task = asyncio.get_running_loop().create_task(self.listen(track, who.identity))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def listen(self, track: rtc.Track, identity: str) -> None:
        caller = self.callers.setdefault(identity, Caller())
        stream = rtc.AudioStream(track, sample_rate=SAMPLE_RATE, num_channels=1, frame_size_ms=FRAME_MS)
        sound: list[np.ndarray] = []
        quiet = 0
        async for event in stream:
            samples = np.frombuffer(event.frame.data, dtype=np.int16)
            loud = samples.size > 0 and float(np.sqrt(np.mean(samples.astype(np.float64) ** 2))) > QUIET_RMS
            if loud:
                sound.append(samples.copy())
                quiet = 0
            elif sound and (quiet := quiet + 1) >= END_OF_SOUND_FRAMES:
                if len(sound) >= MIN_SOUND_FRAMES:
                    await self.reply(identity, caller, np.concatenate(sound))
                sound = []

    async def reply(self, identity: str, caller: Caller, sound: np.ndarray) -> None:
        caller.heard_hz = round(dominant_hz(sound), 1)
        caller.replied_hz = round(caller.heard_hz * REPLY_RATIO, 1)
        caller.replies += 1
        log.info("heard %.1f Hz from %s, replying at %.1f Hz", caller.heard_hz, identity, caller.replied_hz)
        payload = json.dumps({"heard_hz": caller.heard_hz, "replied_hz": caller.replied_hz})
        await self.room.local_participant.publish_data(payload, topic=REPLY_TOPIC, destination_identities=[identity])
        samples = tone(caller.replied_hz, REPLY_SECONDS)
        per_frame = SAMPLE_RATE * FRAME_MS // 1000
        for start in range(0, samples.size - per_frame + 1, per_frame):
            chunk = samples[start : start + per_frame]
            await self.source.capture_frame(rtc.AudioFrame(chunk.tobytes(), SAMPLE_RATE, 1, per_frame))


async def entrypoint(ctx: agents.JobContext) -> None:
    """The job: join with audio subscribed, serve until the room ends."""
    await ctx.connect(auto_subscribe=agents.AutoSubscribe.AUDIO_ONLY)
    agent = PitchAgent(ctx.room)
    await agent.start()
    log.info("pitch agent %s ready in %s", ctx.room.local_participant.identity, ctx.room.name)


def main() -> None:  # pragma: no cover - `python -m pitch_agent.agent` runs it as a standalone worker
    agents.cli.run_app(agents.WorkerOptions(entrypoint_fnc=entrypoint, agent_name="pitch"))


if __name__ == "__main__":
    main()
