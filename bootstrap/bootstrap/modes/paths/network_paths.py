"""The network paths `--paths` proves, and the misconfigurations (`--fault`) it reproduces on purpose.

A path is what the client host's network allows, which client crosses it and how it connects; it passes when
the client's own stats show the expected candidate pair and the data plane crosses it with the agent. A fault
breaks one thing users get wrong; its run must FAIL, with a cause the diagnosis (bootstrap.modes.paths.path_diagnosis)
derives from what the client was offered and what happened, never from the fault's name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SDK = "rtc-sdk"  # the Python rtc SDK (LiveKit's Rust SDK underneath), bootstrap.participant_process
CHROMIUM = "chromium"  # Debian's Chromium running frontend/ (livekit-client), bootstrap.browser.page_client


@dataclass(frozen=True)
class NetworkPath:
    name: str
    description: str
    client: str  # SDK or CHROMIUM
    local_types: tuple[str, ...]  # what the client's side of the selected pair may be
    protocol: str  # the transport of the client's side of the pair (a relay's: that of the relayed address)
    relay: bool = False  # ICE forced through TURN (relay-only transport policy)
    relay_protocol: str = ""  # the transport from client to TURN the relay candidate must use
    block_udp: bool = False  # the client host sends no UDP at all
    block_turn_tls: bool = False  # nor anything to TURN's TLS front (so TURN/TLS cannot stand in for the path)
    tls_signal: bool = False  # the signalling URL is wss:// through the TLS front
    other_clients: str = ""  # which other clients can or cannot take the path, and the source that says so

    @property
    def needs_tls(self) -> bool:
        return self.tls_signal or self.relay_protocol == "tls"

    @property
    def expected(self) -> str:
        via = f" through TURN over {self.relay_protocol}" if self.relay_protocol else ""
        return f"{'/'.join(self.local_types)} {self.protocol}{via}"


TCP_CLIENTS = (
    "the rtc SDK takes it too (LiveKit's Rust SDK sets no TCP candidate policy, so libwebrtc's default, enabled, "
    "applies: webrtc-sys peer_connection.cpp to_native_rtc_configuration; --fault udp-blocked shows its pair fall "
    "back to TCP); the Swift SDK cannot (client-sdk-swift Sources/LiveKit/Extensions/RTCConfiguration.swift: "
    "tcpCandidatePolicy = .disabled)"
)
TURN_TLS_CLIENTS = (
    "the rtc SDK cannot with a private CA: webrtc-sys passes libwebrtc no certificate verifier (peer_connection.cpp, "
    "PeerConnectionDependencies), so TURN's certificate is checked against libwebrtc's built-in roots only, and "
    "SSL_CERT_FILE is not read there (its log: 'OpenSSLAdapter::BeginSSL: turn.paths.test', 'ContinueSSL -- error "
    "-1'); a deployment serves TURN/TLS with a publicly trusted certificate"
)
PATHS: dict[str, NetworkPath] = {
    path.name: path
    for path in (
        NetworkPath("udp", "nothing blocked: UDP host to host", SDK, ("host",), "udp"),
        NetworkPath("turn-udp", "relay forced through the node's TURN over UDP", SDK, ("relay",), "udp",
                    relay=True, relay_protocol="udp", block_turn_tls=True),
        # A browser's ICE/TCP candidate is active (it connects out): its type is host, or prflx when the
        # node's reply names the connection's address first.
        NetworkPath("tcp", "UDP and TURN blocked: ICE over TCP to the node's rtc.tcp_port", CHROMIUM,
                    ("host", "prflx"), "tcp", block_udp=True, block_turn_tls=True, other_clients=TCP_CLIENTS),
        NetworkPath("turn-tls", "UDP blocked, relay forced through TURN over TLS on 443", CHROMIUM, ("relay",),
                    "udp", relay=True, relay_protocol="tls", block_udp=True, other_clients=TURN_TLS_CLIENTS),
        NetworkPath("wss", "signalling over wss:// through a TLS-terminating reverse proxy", SDK, ("host",), "udp",
                    tls_signal=True),
    )
}  # fmt: skip
DEFAULT_PATHS = list(PATHS)


@dataclass(frozen=True)
class Fault:
    name: str
    description: str
    node_overrides: dict[str, Any] = field(default_factory=dict)  # merged over the node's config
    block_udp: bool = False  # the client host sends no UDP, on every path
    trust_ca: bool = True  # the clients are given the local CA that signed the TLS certificate
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
        Fault(
            "untrusted-ca", "the TLS certificate's CA is not one the clients trust (self-signed, private)",
            trust_ca=False, paths=("wss", "turn-tls"),
        ),
    )
}  # fmt: skip
