"""The network paths `--paths` proves, and the misconfigurations (`--fault`) it reproduces on purpose.

A path is what the client host's network allows and how its client connects; it passes when the client's own
stats show the expected candidate pair and the data-plane round trips cross it. A fault breaks one thing users
get wrong; its run must FAIL, with a cause the diagnosis (bootstrap.path_diagnosis) derives from what the client
was offered and what happened, never from the fault's name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class NetworkPath:
    name: str
    description: str
    relay: bool  # ICE forced through TURN (rtc.IceTransportType.TRANSPORT_RELAY)
    local_type: str  # the candidate type the client's side of the selected pair must have
    protocol: str  # and its transport
    block_udp: bool = False  # the client host sends no UDP at all


PATHS: dict[str, NetworkPath] = {
    path.name: path
    for path in (
        NetworkPath("udp", "nothing blocked: UDP host to host", relay=False, local_type="host", protocol="udp"),
        NetworkPath(
            "turn-udp", "relay forced through the node's embedded TURN over UDP", relay=True, local_type="relay",
            protocol="udp",
        ),
    )
}  # fmt: skip
DEFAULT_PATHS = ["udp", "turn-udp"]


@dataclass(frozen=True)
class Fault:
    name: str
    description: str
    node_overrides: dict[str, Any] = field(default_factory=dict)  # merged over the node's config
    block_udp: bool = False  # the client host sends no UDP, on every path
    paths: tuple[str, ...] = ("udp",)  # the paths it runs when none are named


FAULTS: dict[str, Fault] = {
    fault.name: fault
    for fault in (
        Fault(
            "node-ip", "the node advertises 127.0.0.1 (rtc.node_ip), the Docker trap: the client cannot reach it",
            {"rtc": {"node_ip": "127.0.0.1"}},
        ),
        Fault(
            "udp-blocked", "the client's firewall blocks UDP and the node runs no TURN",
            {"turn": {"enabled": False}}, block_udp=True,
        ),
        Fault(
            "turn-peers", "TURN on, but turn.allow_restricted_peer_cidrs leaves out the test range",
            {"turn": {"allow_restricted_peer_cidrs": []}}, paths=("turn-udp",),
        ),
    )
}  # fmt: skip
