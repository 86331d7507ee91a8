"""What the pitch agent and its callers agree on: RPC names, the data topic, the ready attribute, the ratio.
Importing this module loads nothing of livekit-agents (~2 s), so a test process that only talks to the agent
stays light; the agent itself (pitch_agent.agent) runs in the worker process."""

ENTRYPOINT = "pitch_agent.agent:entrypoint"  # what tests hand to agent_worker
REPLY_RATIO = 1.5  # a perfect fifth
REPLY_TOPIC = "pitch.reply"
READY_ATTRIBUTE = "pitch.ready"  # set once the RPC methods are registered: a call before that is refused
LAST_METHOD = "pitch.last"
RATIO_METHOD = "pitch.ratio"
