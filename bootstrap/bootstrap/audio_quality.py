"""How GOOD the audio was, not only its delay: each direction's receiver figures, loss on the wire and after
repair, and a MOS, from the WebRTC statistics of the two ends (read as dicts: protobuf's JSON form with the
proto's field names, the participant's own `get_rtc_stats()` and the agent's over RPC, agent_runtime.echo).

participant → agent  (upstream) loss on the wire, jitter and concealment from the agent's inbound-rtp (the SFU
                     forwards a lost packet as a gap in the sequence numbers, so the agent counts the loss on the
                     wire); beside it the SFU's own count, from the RTCP receiver reports it sends us (our
                     remote-inbound-rtp). The repair of the participant → SFU leg is ours to see: the NACKs the
                     SFU sent our publisher and what we retransmitted are on our own outbound-rtp (the agent's
                     inbound NACKs are the SFU → agent leg's).
agent → participant  (downstream) our inbound-rtp on the echo track: packets received and lost, the NACKs we
                     sent and retransmissions we received, jitter, jitter-buffer delay, concealment.
Each direction's `counted_by` names which end's report gave each figure.

Loss on the wire is packets lost / packets expected; loss after repair is the share of samples the decoder had
to conceal audibly (Opus PLC): what NACK retransmission and Opus in-band FEC (or RED) did not bring back. The
concealed samples the receiver itself counts as silent (`silent_concealed_samples`: a speech pause, as DTX
leaves one, concealed with silence or comfort noise) are not counted: no speech was lost there.

The MOS is livekit-server's (v1.13.5, pkg/sfu/connectionquality/scorer.go calculatePacketScore and scoreToMOS,
the loss weights in connectionstats.go getPacketLossWeight; a simplified E-model after PingPlotter's, the same
family as livekit/rtcscore-go): R = 100 - delay effect - loss % x weight, where the effective delay is half the
round trip plus twice the jitter (ms), its effect delay/40, or (delay - 120)/10 above 160 ms; the weight is 8
for Opus, 4 for RED, each divided by 1.5 with in-band FEC; MOS = 1 + 0.035 R + 7e-6 R (R - 60)(100 - R), 4.5 at
R >= 100. `mos_after_repair` is the same formula over the concealed share at plain Opus's weight: it tells a
burst (which FEC cannot repair) from random loss of the same rate, which the scorer cannot.

The delay it takes is half the audio markers' own round trip (p50; participant → SFU → agent → SFU →
participant, jitter buffers and the agent included: what a user waits for an answer), not ICE's network RTT
(< 1 ms here): the mouth-to-ear delay of one direction. The jitter is the receiver's inbound-rtp jitter (the rtc
SDK reported 0.0 on every stream here, so it adds nothing yet).

Measured here (Python rtc SDK 1.1.21, livekit-server v1.13.5): Opus with in-band FEC both ways (useinbandfec=1),
DTX on our upstream (usedtx=1), no RED, and no NACK seen for audio under 5 % injected loss (nack_count 0 on our
inbound-rtp downstream and on our outbound-rtp upstream, although the server offers nack for audio,
pkg/rtc/config.go; so no retransmissions either); FEC repairs a lone lost packet from the next one's redundancy,
so random loss barely reaches concealment while a burst does. Where our MOS differs from the server's own (its
rttMax, DTX weighting, smoothing): docs/bootstrap.md, audio quality.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from bootstrap.result import Status

# The verdict, in one place. WARN: the scorer's MOS (what LiveKit itself reports for the track) below 4.0 (R 80,
# where it stops calling a track EXCELLENT), or more than 2 % of the audio concealed (audible as clicks and
# smeared syllables). FAIL is judged on what was left after repair, what the listener (or the agent's
# speech-to-text) gets: MOS after repair below 3.1 (R 60, ITU-T G.107's "many users dissatisfied"), or more than
# 10 % concealed (whole words gone). Not on the scorer's MOS: measured here (make bench-audio), 10 % random loss
# scored 2.11-2.22 there while Opus FEC left 0.33-1.19 % to conceal, a path the agent still understands.
WARN_MOS = 4.0
WARN_CONCEALED_PCT = 2.0
# One packet lost in a short window is too few to judge a path by: 1 of 60 puts the loss rate anywhere from 0.04 %
# to 9 % (95 % Clopper-Pearson), yet 1 of 30 scores MOS 3.65 without FEC and, unrepaired, is 3.3 % concealed.
# Below JUDGED_PACKETS counted (5 s of Opus; a default media stage counts 57-60 each way, a paths check or a
# fresh join's drill check ~30, the stayed participant's drill check ~100), a single lost packet is reported,
# with its MOS, but raises no WARN of its own (MOS, concealment); two do, markers lost still WARN, and FAIL is never
# waived.
JUDGED_PACKETS = 250
FAIL_MOS = 3.1
FAIL_REPAIRED_LOSS_PCT = 10.0
FIX = "find where the path loses packets (the receivers' loss on the wire says which direction): Wi-Fi, a VPN, a "
FIX += "congested uplink; a TURN server nearer the user, or RED (a redundant copy of each packet), hides some"

MAX_MOS = 4.5
OPUS_WEIGHT = 8.0
RED_WEIGHT = 4.0
FEC_DIVISOR = 1.5


def scorer_weight(mime_type: str, fec: bool) -> float:
    """livekit-server's packet-loss weight for an audio codec (getPacketLossWeight)."""
    weight = RED_WEIGHT if mime_type.lower() == "audio/red" else OPUS_WEIGHT
    return weight / FEC_DIVISOR if fec else weight


def r_factor(loss_pct: float, round_trip_ms: float, jitter_ms: float, weight: float) -> float:
    """The scorer's packet score (its R): 100 less the delay's and the loss's effects, not below 0."""
    delay = round_trip_ms / 2.0 + jitter_ms * 2.0
    delay_effect = (delay - 120.0) / 10.0 if delay > 160.0 else delay / 40.0
    return max(0.0, 100.0 - delay_effect - loss_pct * weight)


def mos_of(r: float) -> float:
    """scoreToMOS: 1.0 at R <= 0, 4.5 at R >= 100."""
    if r <= 0.0:
        return 1.0
    if r >= 100.0:
        return MAX_MOS
    return 1.0 + 0.035 * r + 0.000007 * r * (r - 60.0) * (100.0 - r)


def mos(
    loss_pct: float, round_trip_ms: float, jitter_ms: float, mime_type: str = "audio/opus", fec: bool = False
) -> float:
    return mos_of(r_factor(loss_pct, round_trip_ms, jitter_ms, scorer_weight(mime_type, fec)))


def _num(report: dict[str, Any], *path: str) -> float:
    """A number in a report's nested dicts (protobuf's JSON form writes 64-bit integers as strings; an unset
    field is absent): 0 when absent."""
    value: Any = report
    for key in path:
        value = value.get(key, {}) if isinstance(value, dict) else {}
    return float(value) if isinstance(value, (int, float, str)) and value != "" else 0.0


def _pct(part: float, whole: float) -> float | None:
    return None if whole <= 0 else round(100.0 * part / whole, 2)


@dataclass(frozen=True)
class Codec:
    mime_type: str = ""
    fmtp: str = ""

    @property
    def red(self) -> bool:
        return self.mime_type.lower() == "audio/red"

    @property
    def fec(self) -> bool:
        return "useinbandfec=1" in self.fmtp

    @property
    def dtx(self) -> bool:
        return "usedtx=1" in self.fmtp


def codecs(reports: list[dict[str, Any]]) -> dict[str, Codec]:
    """The codec reports by id ({"codec": {"rtc": {"id"}, "codec": {"mime_type", "sdp_fmtp_line"}}})."""
    found = {}
    for report in reports:
        if "codec" in report:
            codec = report["codec"].get("codec", {})
            name = str(report["codec"].get("rtc", {}).get("id", ""))
            found[name] = Codec(str(codec.get("mime_type", "")), str(codec.get("sdp_fmtp_line", "")))
    return found


def _audio(reports: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [r[kind] for r in reports if kind in r and r[kind].get("stream", {}).get("kind") == "audio"]


@dataclass(frozen=True)
class Receiver:
    """One audio stream as its receiver saw it (an inbound-rtp report): counts since the stream began, or since
    an earlier report (`since`)."""

    packets_received: int
    packets_lost: int
    nack_count: int
    retransmitted: int
    jitter_ms: float  # the latest, not a count
    jitter_buffer_delay_s: float  # summed over the emitted samples
    jitter_buffer_emitted: int
    concealed_samples: int
    silent_concealed_samples: int  # a subset of concealed_samples: concealment of silence, nothing lost to hear
    total_samples: int
    concealment_events: int
    codec: Codec

    @classmethod
    def from_reports(cls, reports: list[dict[str, Any]]) -> Receiver | None:
        """The audio inbound-rtp that received most (the echo track, or the agent's one track), or None."""
        streams = _audio(reports, "inbound_rtp")
        if not streams:
            return None
        inbound = max(streams, key=lambda s: _num(s, "received", "packets_received"))
        return cls(
            packets_received=int(_num(inbound, "received", "packets_received")),
            packets_lost=max(0, int(_num(inbound, "received", "packets_lost"))),
            nack_count=int(_num(inbound, "inbound", "nack_count")),
            retransmitted=int(_num(inbound, "inbound", "retransmitted_packets_received")),
            jitter_ms=round(_num(inbound, "received", "jitter") * 1000.0, 2),
            jitter_buffer_delay_s=_num(inbound, "inbound", "jitter_buffer_delay"),
            jitter_buffer_emitted=int(_num(inbound, "inbound", "jitter_buffer_emitted_count")),
            concealed_samples=int(_num(inbound, "inbound", "concealed_samples")),
            silent_concealed_samples=int(_num(inbound, "inbound", "silent_concealed_samples")),
            total_samples=int(_num(inbound, "inbound", "total_samples_received")),
            concealment_events=int(_num(inbound, "inbound", "concealment_events")),
            codec=codecs(reports).get(str(inbound.get("stream", {}).get("codec_id", "")), Codec()),
        )

    def since(self, earlier: Receiver | None) -> Receiver:
        """The counts between `earlier` and this report (this one when there is no earlier)."""
        if earlier is None:
            return self
        return replace(
            self, **{name: getattr(self, name) - getattr(earlier, name) for name in _COUNTS}
        )  # fmt: skip

    @property
    def expected(self) -> int:
        return self.packets_received + self.packets_lost

    @property
    def loss_pct(self) -> float | None:
        return _pct(self.packets_lost, self.expected)

    @property
    def audible_concealed(self) -> int:
        """Concealed samples less the silent ones (where the stats expose them; 0 silent when they do not)."""
        return max(0, self.concealed_samples - self.silent_concealed_samples)

    @property
    def concealed_pct(self) -> float | None:
        return _pct(self.audible_concealed, self.total_samples)

    @property
    def jitter_buffer_ms(self) -> float:
        """The mean time a sample waited in the jitter buffer."""
        return (
            round(1000.0 * self.jitter_buffer_delay_s / self.jitter_buffer_emitted, 1)
            if self.jitter_buffer_emitted
            else 0.0
        )


_COUNTS = ("packets_received", "packets_lost", "nack_count", "retransmitted", "jitter_buffer_delay_s",
           "jitter_buffer_emitted", "concealed_samples", "silent_concealed_samples", "total_samples",
           "concealment_events")  # fmt: skip


@dataclass(frozen=True)
class SfuView:
    """Our own outbound audio (our outbound-rtp) and the SFU's view of it: the loss its RTCP receiver reports
    counted (remote-inbound-rtp; they lag by up to a report interval), the NACKs it sent us for packets it missed,
    and what we retransmitted for them: the participant → SFU leg's repair, which only our end sees."""

    packets_sent: int
    packets_lost: int
    nack_count: int
    retransmitted: int
    codec: Codec

    @classmethod
    def from_reports(cls, reports: list[dict[str, Any]]) -> SfuView | None:
        outbound = _audio(reports, "outbound_rtp")
        if not outbound:
            return None
        sent = max(outbound, key=lambda s: _num(s, "sent", "packets_sent"))
        ssrc = sent.get("stream", {}).get("ssrc")
        report = next((r for r in _audio(reports, "remote_inbound_rtp") if r.get("stream", {}).get("ssrc") == ssrc), {})
        return cls(
            packets_sent=int(_num(sent, "sent", "packets_sent")),
            packets_lost=max(0, int(_num(report, "received", "packets_lost"))),
            nack_count=int(_num(sent, "outbound", "nack_count")),
            retransmitted=int(_num(sent, "outbound", "retransmitted_packets_sent")),
            codec=codecs(reports).get(str(sent.get("stream", {}).get("codec_id", "")), Codec()),
        )

    def since(self, earlier: SfuView | None) -> SfuView:
        if earlier is None:
            return self
        counts = ("packets_sent", "packets_lost", "nack_count", "retransmitted")
        return replace(self, **{name: getattr(self, name) - getattr(earlier, name) for name in counts})

    @property
    def loss_pct(self) -> float | None:
        return _pct(self.packets_lost, self.packets_sent)


def direction(receiver: Receiver, codec: Codec, round_trip_ms: float) -> dict[str, Any]:
    """One direction's figures: loss on the wire (the receiver's count: the SFU forwards a gap as a gap, and
    nothing here retransmits), what was left after repair, and the MOS from the wire loss, the round trip and
    the jitter, as livekit-server scores it."""
    wire_pct = receiver.loss_pct
    figures: dict[str, Any] = {
        "packets_expected": receiver.expected,
        "packets_lost": receiver.packets_lost,
        "loss_pct": wire_pct,
        "nack_count": receiver.nack_count,
        "retransmitted": receiver.retransmitted,
        "codec": codec.mime_type,
        "red": codec.red,
        "fec": codec.fec,
        "dtx": codec.dtx,
        "jitter_ms": receiver.jitter_ms,
        "jitter_buffer_ms": receiver.jitter_buffer_ms,
        "concealed_samples": receiver.audible_concealed,
        "silent_concealed_samples": receiver.silent_concealed_samples,
        "total_samples": receiver.total_samples,
        "concealment_events": receiver.concealment_events,
        "concealed_pct": receiver.concealed_pct,
    }
    if wire_pct is not None:
        mime = codec.mime_type or "audio/opus"
        figures["mos"] = round(mos(wire_pct, round_trip_ms, receiver.jitter_ms, mime, codec.fec), 2)
    if receiver.concealed_pct is not None:
        # The same formula over what was left after repair, at plain Opus's weight (the repair is counted): where
        # bursts show, which the scorer's loss rate alone cannot (FEC repairs a lone loss, not five in a row).
        figures["mos_after_repair"] = round(mos(receiver.concealed_pct, round_trip_ms, receiver.jitter_ms), 2)
    return figures


Snapshot = tuple[list[dict[str, Any]], list[dict[str, Any]]]


# Which end's report gave each figure (`counted_by` in the JSON).
AGENT_RX, OWN_RX, OWN_TX = "agent inbound-rtp", "participant inbound-rtp", "participant outbound-rtp"
SFU_RR = "participant remote-inbound-rtp (the SFU's RTCP receiver reports)"


def quality(own: list[dict[str, Any]], agent: list[dict[str, Any]], round_trip_ms: float,
            since: Snapshot | None = None) -> dict[str, Any]:  # fmt: skip
    """Both directions' figures from our reports (`own`) and the agent's (`agent`), counted since the snapshot
    `since` (our reports and the agent's then), with the audio round trip the MOS takes half of. Upstream: the
    agent's receiver, the repair of our leg (NACKs, retransmissions) from our outbound-rtp, beside them the SFU's
    own receiver reports to us (`sfu_packets_lost`); downstream: ours."""
    before_own, before_agent = since or ([], [])
    result: dict[str, Any] = {"round_trip_ms": round(round_trip_ms, 1)}
    sfu = SfuView.from_reports(own)
    sfu = sfu.since(SfuView.from_reports(before_own)) if sfu else None
    if (agent_rx := Receiver.from_reports(agent)) is not None:
        result["upstream"] = _upstream(agent_rx.since(Receiver.from_reports(before_agent)), sfu, round_trip_ms)
    if (own_rx := Receiver.from_reports(own)) is not None:
        result["downstream"] = direction(own_rx.since(Receiver.from_reports(before_own)), own_rx.codec, round_trip_ms)
        result["downstream"]["counted_by"] = {"loss": OWN_RX, "nacks": OWN_RX, "jitter_and_concealment": OWN_RX}
    return result


def _upstream(agent_rx: Receiver, sfu: SfuView | None, round_trip_ms: float) -> dict[str, Any]:
    """The participant → agent figures: the agent's receiver, but the NACKs the SFU sent us (and what we resent)
    for our leg; the agent's own NACKs are the SFU → agent leg's, not ours."""
    figures = direction(agent_rx, sfu.codec if sfu else agent_rx.codec, round_trip_ms)
    figures |= {"nack_count": None, "retransmitted": None}  # unknown without our outbound-rtp
    figures["counted_by"] = {"loss": AGENT_RX, "jitter_and_concealment": AGENT_RX}
    if sfu is not None:
        figures |= {"nack_count": sfu.nack_count, "retransmitted": sfu.retransmitted,
                    "sfu_packets_sent": sfu.packets_sent, "sfu_packets_lost": sfu.packets_lost}  # fmt: skip
        figures["counted_by"] |= {"nacks": OWN_TX, "sfu_packets_lost": SFU_RR}
    return figures


def lossy(figures: dict[str, Any]) -> bool:
    """Whether a receiver counted packets lost on the wire, either way: markers lost then are the loss's doing,
    judged by `judge`, not a broken path."""
    return any((figures.get(name) or {}).get("packets_lost", 0) > 0 for name in ("upstream", "downstream"))


def judge(figures: dict[str, Any], markers_lost: int = 0) -> tuple[Status, str]:
    """The verdict on `quality()`'s figures: the worst direction's, with the reason (thresholds above); markers
    lost to a lossy path make it at least WARN."""
    worst, reasons = Status.PASS, []
    for name in ("upstream", "downstream"):
        side = figures.get(name)
        if not side:
            continue
        status, why = _judge_side(side)
        if why:
            reasons.append(f"{name}: {why}")
        if status is Status.FAIL or (status is Status.WARN and worst is Status.PASS):
            worst = status
    if markers_lost:
        reasons.append(f"{markers_lost} audio markers lost")
        worst = Status.WARN if worst is Status.PASS else worst
    return worst, "; ".join(reasons)


def single_loss(side: dict[str, Any]) -> bool:
    """One packet lost in a window too short to judge a loss rate by (JUDGED_PACKETS)."""
    return side.get("packets_lost") == 1 and side.get("packets_expected", 0) < JUDGED_PACKETS


def _judge_side(side: dict[str, Any]) -> tuple[Status, str]:
    score, concealed, heard = side.get("mos"), side.get("concealed_pct"), side.get("mos_after_repair")
    fails = []
    if heard is not None and heard < FAIL_MOS:
        fails.append(f"MOS after repair {heard:.2f} < {FAIL_MOS}")
    if concealed is not None and concealed > FAIL_REPAIRED_LOSS_PCT:
        fails.append(f"loss after repair {concealed:.1f} % > {FAIL_REPAIRED_LOSS_PCT:.0f} %")
    if fails:
        return Status.FAIL, ", ".join(fails)
    if single_loss(side):
        return Status.PASS, ""
    warns = []
    if score is not None and score < WARN_MOS:
        warns.append(f"MOS {score:.2f} < {WARN_MOS}")
    if concealed is not None and concealed > WARN_CONCEALED_PCT:
        warns.append(f"concealed {concealed:.1f} % > {WARN_CONCEALED_PCT:.0f} %")
    return (Status.WARN, ", ".join(warns)) if warns else (Status.PASS, "")


def describe(figures: dict[str, Any]) -> str:
    """One line for the report, each direction: loss on the wire, after repair (concealed), jitter, the jitter
    buffer's delay per emitted sample, NACKs, the repair the codec negotiated (FEC, DTX, RED), and the MOS."""
    parts = []
    for name, label in (("upstream", "up"), ("downstream", "down")):
        side = figures.get(name)
        if not side or side.get("loss_pct") is None:
            continue
        after = side.get("concealed_pct")
        repaired = f", concealed {after:.1f} %" if after is not None else ""
        heard = f" (after repair {side['mos_after_repair']:.2f})" if "mos_after_repair" in side else ""
        loss = f"{label} loss {side['loss_pct']:.1f} % of {side['packets_expected']}"
        nacks = f", {side['nack_count']} NACKs" if side.get("nack_count") is not None else ""
        receiver = f", jitter {side.get('jitter_ms', 0.0):.1f} ms, buffer {side.get('jitter_buffer_ms', 0.0):.0f} ms"
        codec = "+".join(tool.upper() for tool in ("fec", "dtx", "red") if side.get(tool)) or "no FEC/DTX/RED"
        parts.append(f"{loss}{repaired}{receiver}{nacks}, {codec}, MOS {side['mos']:.2f}{heard}")
    return "; ".join(parts)
