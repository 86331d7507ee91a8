"""The pitch agent's behaviour, end to end through a real LiveKit server and a real worker: written only with
pytest-livekit-harness's fixtures (what a later epic copies)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from livekit_harness_pytest.participant import Participant, dominant_frequency, tone
from livekit_harness_pytest.plugin import AgentWorker, ParticipantFactory
from livekit_harness_pytest.webhook_events import WebhookEvents
from pitch_agent.protocol import ENTRYPOINT, LAST_METHOD, RATIO_METHOD, READY_ATTRIBUTE, REPLY_RATIO, REPLY_TOPIC

pytestmark = pytest.mark.integration  # this repository's category marker (tests/conftest.py)
# The agent by reference ("module:function"): the worker process imports it, this process never loads
# livekit-agents (~2 s at collection).
SILENCE = np.zeros(int(0.3 * 48000), dtype=np.int16)  # ends the caller's turn


async def ready_agent(agent_worker: AgentWorker, caller: Participant) -> str:
    agent = await agent_worker(ENTRYPOINT, agent_name="pitch")
    await caller.wait_for_attribute(agent.identity, READY_ATTRIBUTE)
    return agent.identity


def loud(caller: Participant, sender: str, min_rms: float = 1000.0) -> np.ndarray:
    frames = [
        f for f in caller.audio[sender].frames if f.size and np.sqrt(np.mean(f.astype(np.float64) ** 2)) > min_rms
    ]
    return np.concatenate(frames)


async def test_it_answers_its_ratio_over_rpc(agent_worker: AgentWorker, participant: Participant) -> None:
    agent = await ready_agent(agent_worker, participant)
    assert float(await participant.rpc(agent, RATIO_METHOD)) == REPLY_RATIO


@pytest.mark.parametrize("hz", [330.0, 660.0])
async def test_it_replies_a_fifth_above_what_it_heard(
    agent_worker: AgentWorker, participant: Participant, hz: float
) -> None:
    agent = await ready_agent(agent_worker, participant)
    await participant.publish_audio(np.concatenate([tone(hz, 0.5), SILENCE]))

    said = json.loads((await participant.wait_for_data(topic=REPLY_TOPIC, sender=agent))[0].payload)
    assert said["heard_hz"] == pytest.approx(hz, abs=5)
    await participant.wait_for_audio(agent, seconds=0.2, min_rms=1000)
    assert dominant_frequency(loud(participant, agent)) == pytest.approx(hz * REPLY_RATIO, rel=0.03)
    last = json.loads(await participant.rpc(agent, LAST_METHOD))
    assert last["replies"] == 1 and last["replied_hz"] == said["replied_hz"]


async def test_each_caller_hears_its_own_pitch(
    agent_worker: AgentWorker, participant_factory: ParticipantFactory
) -> None:
    low, high = await participant_factory("low"), await participant_factory("high")
    agent = await ready_agent(agent_worker, low)
    await high.wait_for_attribute(agent, READY_ATTRIBUTE)
    await low.publish_audio(np.concatenate([tone(300.0, 0.5), SILENCE]))
    await high.publish_audio(np.concatenate([tone(800.0, 0.5), SILENCE]))
    for caller, hz in ((low, 300.0), (high, 800.0)):
        said = json.loads((await caller.wait_for_data(topic=REPLY_TOPIC, sender=agent))[0].payload)
        assert said["replied_hz"] == pytest.approx(hz * REPLY_RATIO, abs=8), caller.identity


async def test_the_server_reports_caller_and_agent(agent_worker: AgentWorker, participant: Participant,
                                                   webhook_events: WebhookEvents) -> None:  # fmt: skip
    agent = await ready_agent(agent_worker, participant)
    await webhook_events.wait_for("room_started")
    await webhook_events.wait_for("participant_joined", participant.identity)
    joined = await webhook_events.wait_for("participant_joined", agent)
    assert joined.participant.attributes.get("lk.agent_name", "").startswith("pitch-")
