"""ICE as the client itself sees it: the candidates and ICE servers its SDK was offered (read from the SDK's own
debug log, the only place they exist before connect() returns: there are no stats until then), and the pair it
selected (from its stats once connected)."""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from livekit.rtc.room import RtcStats

# rust-sdks rtc_session.rs logs each trickled candidate and the JoinResponse at debug level; the Python SDK
# forwards them to the `livekit` logger when LIVEKIT_RTC_DEBUG=1 (rtc/_ffi_client.py).
RTC_DEBUG_ENV = {"LIVEKIT_RTC_DEBUG": "1"}
CANDIDATE = re.compile(r"candidate:\S+ \d+ (udp|tcp) \d+ (\S+) (\d+) typ (\w+)", re.IGNORECASE)
JOIN_RESPONSE = "received JoinResponse"
# Only the servers' URLs are kept: the same line carries the TURN username and password.
ICE_SERVER_URLS = re.compile(r"IceServer \{ urls: \[([^\]]*)\]")


@dataclass(frozen=True)
class Candidate:
    type: str  # host, srflx, prflx or relay
    protocol: str  # udp or tcp
    address: str
    port: int
    relay_protocol: str = ""  # a relay candidate's transport to its TURN server: udp, tcp or tls

    @property
    def udp(self) -> bool:
        return self.protocol == "udp"

    def __str__(self) -> str:
        via = f" (TURN over {self.relay_protocol})" if self.relay_protocol else ""
        return f"{self.type} {self.protocol} {self.address}:{self.port}{via}"


@dataclass(frozen=True)
class Pair:
    local: Candidate
    remote: Candidate

    def __str__(self) -> str:
        return f"{self.local} → {self.remote}"


def parse_candidate(text: str) -> Candidate | None:
    """A candidate from its SDP line (`candidate:… udp 2130706431 10.0.0.1 7962 typ host …`)."""
    found = CANDIDATE.search(text)
    if found is None:
        return None
    protocol, address, port, kind = found.groups()
    return Candidate(kind.lower(), protocol.lower(), address, int(port))


@dataclass
class Offered:
    """What the client was offered while it connected: the server's candidates and the ICE servers' URLs."""

    candidates: list[Candidate] = field(default_factory=list)
    ice_servers: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"candidates": [asdict(c) for c in self.candidates], "ice_servers": self.ice_servers}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Offered:
        return cls([Candidate(**c) for c in data.get("candidates", [])], list(data.get("ice_servers", [])))


class OfferRecorder(logging.Handler):
    """Collects `Offered` from the SDK's debug log; every record is dropped afterwards (they carry credentials)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.offered = Offered()

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "remote ice_candidate" in message:
            candidate = parse_candidate(message)
            if candidate is not None and candidate not in self.offered.candidates:
                self.offered.candidates.append(candidate)
        elif JOIN_RESPONSE in message:
            for urls in ICE_SERVER_URLS.findall(message):
                self.offered.ice_servers.extend(u.strip().strip('"') for u in urls.split(",") if u.strip())

    def install(self) -> None:
        """The only handler of the `livekit` logger: its debug records go nowhere else (no log, no stderr)."""
        sdk = logging.getLogger("livekit")
        sdk.handlers[:] = [self]
        sdk.setLevel(logging.DEBUG)
        sdk.propagate = False


def _enum_name(message: Any, field_name: str) -> str:
    enum = message.DESCRIPTOR.fields_by_name[field_name].enum_type
    return str(enum.values_by_number[getattr(message, field_name)].name)


def _candidate(stats: Any) -> Candidate:
    kind = _enum_name(stats, "candidate_type").lower()
    relay = _enum_name(stats, "relay_protocol").lower().removeprefix("transport_") if kind == "relay" else ""
    return Candidate(kind, stats.protocol.lower(), stats.address, stats.port, relay)


def selected_pairs(session: RtcStats) -> dict[str, Pair]:
    """Each connected transport's selected pair ("publisher", "subscriber"), from the client's own stats."""
    pairs = {}
    for side in ("publisher", "subscriber"):
        # Each report is one of a oneof (transport, candidate_pair, …), its id in that member's `rtc`.
        by_id = {}
        for stats in getattr(session, f"{side}_stats"):
            member = getattr(stats, str(stats.WhichOneof("stats")))
            by_id[member.rtc.id] = member
        for report in by_id.values():
            selected = getattr(getattr(report, "transport", None), "selected_candidate_pair_id", "")
            pair = by_id.get(selected) if selected else None
            if pair is None:
                continue
            local = by_id.get(pair.candidate_pair.local_candidate_id)
            remote = by_id.get(pair.candidate_pair.remote_candidate_id)
            if local is not None and remote is not None:
                pairs[side] = Pair(_candidate(local.candidate), _candidate(remote.candidate))
    return pairs
