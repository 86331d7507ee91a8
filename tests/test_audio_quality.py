"""The audio-quality math (bootstrap.audio_quality) on its own: livekit-server's scorer formula at known points,
the receivers' reports read from their JSON form, the verdict's thresholds, and the impairment's spec and nft
rules (devstack.impairment). No server, no namespace."""

from __future__ import annotations

from typing import Any, cast

import pytest
from livekit import rtc

from bootstrap import audio_quality as aq
from bootstrap.audio_probe import AudioFigures, AudioProbe
from bootstrap.modes.canary.isolated import RunFigures
from bootstrap.modes.canary.loop import record
from bootstrap.modes.canary.metrics import CanaryMetrics
from bootstrap.modes.cluster.drills import CleanStreak, audio_clean, audio_seconds
from bootstrap.result import RunResult, StageResult, StageWarning, Status
from bootstrap.stages import media as media_stage
from devstack.impairment import Impairment
from tests.conftest import make_context

pytestmark = pytest.mark.unit

FMTP = "minptime=10;useinbandfec=1"


def codec(name: str, fmtp: str = FMTP, mime: str = "audio/opus") -> dict[str, Any]:
    return {"codec": {"rtc": {"id": name}, "codec": {"mime_type": mime, "sdp_fmtp_line": fmtp}}}


def inbound(
    received: int, lost: int, concealed: int = 0, total: int = 48000, codec_id: str = "CI", silent: int | None = None
) -> dict[str, Any]:
    """An inbound-rtp report as protobuf's JSON form writes it (64-bit integers as strings; an SDK that does not
    count silent concealment leaves the field out)."""
    report = {
        "inbound_rtp": {
            "stream": {"ssrc": 1, "kind": "audio", "codec_id": codec_id},
            "received": {"packets_received": str(received), "packets_lost": str(lost), "jitter": 0.004},
            "inbound": {"jitter_buffer_delay": 96.0, "jitter_buffer_emitted_count": "1920", "nack_count": 3,
                        "concealed_samples": str(concealed), "total_samples_received": str(total),
                        "concealment_events": 2},
        }
    }  # fmt: skip
    if silent is not None:
        report["inbound_rtp"]["inbound"]["silent_concealed_samples"] = str(silent)
    return report


def outbound(sent: int, lost_reported: int, nacks: int = 0, resent: int = 0) -> list[dict[str, Any]]:
    """Our outbound-rtp (with the NACKs the SFU sent us and what we resent), the SFU's receiver report of it."""
    return [
        {"outbound_rtp": {"stream": {"ssrc": 7, "kind": "audio", "codec_id": "CO"}, "sent": {"packets_sent": str(sent)},
                          "outbound": {"nack_count": nacks, "retransmitted_packets_sent": str(resent)}}},
        {"remote_inbound_rtp": {"stream": {"ssrc": 7, "kind": "audio"}, "received": {"packets_lost": str(lost_reported)},  # noqa: E501
                                "remote_inbound": {"round_trip_time": 0.001}}},
        codec("CO", "minptime=10;usedtx=1;useinbandfec=1"),
    ]  # fmt: skip


# ---------------------------------------------------------------- the scorer's formula


def test_mos_is_capped_at_4_5_and_floored_at_1() -> None:
    assert aq.mos_of(100.0) == aq.mos_of(150.0) == 4.5
    assert aq.mos_of(0.0) == aq.mos_of(-5.0) == 1.0


def test_mos_matches_the_scorer_at_known_points() -> None:
    """R 80 is the scorer's EXCELLENT/GOOD line (MOS ~4.02), R 40 its GOOD/POOR line (MOS ~2.27)."""
    assert aq.mos_of(80.0) == pytest.approx(1 + 2.8 + 7e-6 * 80 * 20 * 20)
    assert aq.mos_of(40.0) == pytest.approx(1 + 1.4 + 7e-6 * 40 * -20 * 60)


def test_delay_is_half_the_round_trip_plus_twice_the_jitter() -> None:
    assert aq.r_factor(0.0, 160.0, 0.0, 8.0) == pytest.approx(100 - 80 / 40)  # 80 ms: below the knee
    assert aq.r_factor(0.0, 400.0, 0.0, 8.0) == pytest.approx(100 - (200 - 120) / 10)  # above 160 ms
    assert aq.r_factor(0.0, 0.0, 10.0, 8.0) == pytest.approx(100 - 20 / 40)


def test_loss_weights_are_the_scorers() -> None:
    assert aq.scorer_weight("audio/opus", fec=False) == 8.0
    assert aq.scorer_weight("audio/opus", fec=True) == pytest.approx(8.0 / 1.5)
    assert aq.scorer_weight("audio/red", fec=False) == 4.0


def test_mos_strictly_decreases_with_loss() -> None:
    scores = [aq.mos(loss, 160.0, 0.0, fec=True) for loss in (0, 2, 5, 10)]
    assert scores == sorted(scores, reverse=True) and len(set(scores)) == 4
    assert scores[0] >= 4.2 and scores[2] < aq.WARN_MOS and scores[3] < aq.FAIL_MOS


# ---------------------------------------------------------------- reading the reports


def test_receiver_figures_from_an_inbound_report() -> None:
    rx = aq.Receiver.from_reports([inbound(950, 50, concealed=960), codec("CI")])
    assert rx is not None
    assert (rx.expected, rx.loss_pct, rx.concealed_pct) == (1000, 5.0, 2.0)
    assert rx.jitter_ms == 4.0 and rx.jitter_buffer_ms == 50.0 and rx.nack_count == 3 and rx.concealment_events == 2
    assert rx.codec.fec and not rx.codec.dtx and not rx.codec.red


def test_no_audio_report_no_figures() -> None:
    assert aq.Receiver.from_reports([codec("CI")]) is None and aq.SfuView.from_reports([]) is None
    assert aq.quality([], [], 150.0) == {"round_trip_ms": 150.0}


def test_both_directions_from_both_ends() -> None:
    """Upstream: the agent's receiver counts our loss (the SFU's receiver report beside it); downstream: ours."""
    own = [*outbound(1000, 40), inbound(600, 0, codec_id="CI"), codec("CI")]
    agent = [inbound(960, 40, concealed=480), codec("CI")]
    figures = aq.quality(own, agent, 160.0)
    up, down = figures["upstream"], figures["downstream"]
    assert (up["packets_lost"], up["loss_pct"], up["concealed_pct"]) == (40, 4.0, 1.0)
    assert up["counted_by"]["loss"] == up["counted_by"]["jitter_and_concealment"] == aq.AGENT_RX
    assert (up["sfu_packets_sent"], up["sfu_packets_lost"]) == (1000, 40)
    assert up["dtx"] and up["fec"] and down["loss_pct"] == 0.0 and down["counted_by"]["loss"] == aq.OWN_RX
    assert down["mos"] > up["mos"] and up["mos_after_repair"] > up["mos"]


def test_upstream_nacks_are_the_ones_the_sfu_sent_our_publisher() -> None:
    """The participant → SFU leg's repair is on our outbound-rtp (the SFU's NACKs to us, our retransmissions),
    counted between the snapshots; the agent's inbound NACKs (3 here) are the SFU → agent leg's, not ours."""
    before = ([*outbound(100, 0, nacks=1, resent=1), codec("CI")], [inbound(100, 0), codec("CI")])
    own = [*outbound(1100, 0, nacks=6, resent=5), inbound(1000, 0), codec("CI")]
    up = aq.quality(own, [inbound(1090, 10), codec("CI")], 160.0, since=before)["upstream"]
    assert (up["nack_count"], up["retransmitted"], up["counted_by"]["nacks"]) == (5, 4, aq.OWN_TX)
    alone = aq.quality([inbound(1000, 0), codec("CI")], [inbound(1090, 10), codec("CI")], 160.0)["upstream"]
    assert (alone["nack_count"], alone["retransmitted"]) == (None, None) and "nacks" not in alone["counted_by"]


def test_silent_concealment_is_not_loss_after_repair() -> None:
    """A speech pause concealed with silence (DTX) is no lost speech: 1,440 concealed of which 960 silent leave
    480 of 48,000 (1 %); an SDK that does not count silent concealment leaves all of it counted."""
    down = aq.quality([inbound(1000, 0, concealed=1440, silent=960), codec("CI")], [], 160.0)["downstream"]
    assert (down["concealed_samples"], down["silent_concealed_samples"], down["concealed_pct"]) == (480, 960, 1.0)
    plain = aq.quality([inbound(1000, 0, concealed=1440), codec("CI")], [], 160.0)["downstream"]
    assert (plain["concealed_samples"], plain["concealed_pct"]) == (1440, 3.0)


def test_figures_count_only_between_the_snapshots() -> None:
    """Set-up's loss and concealment (before the first snapshot) are not the path's."""
    before = ([inbound(50, 5, concealed=4800, total=48000), codec("CI")], [inbound(50, 0), codec("CI")])
    own = [inbound(1050, 55, concealed=4800, total=1008000), codec("CI")]
    figures = aq.quality(own, [inbound(1050, 10), codec("CI")], 160.0, since=before)
    down, up = figures["downstream"], figures["upstream"]
    assert (down["packets_expected"], down["loss_pct"], down["concealed_pct"]) == (1050, 4.76, 0.0)
    assert (up["packets_lost"], up["packets_expected"]) == (10, 1010) and "sfu_packets_lost" not in up


def test_an_agent_that_cannot_say_leaves_upstream_out() -> None:
    assert "upstream" not in aq.quality([inbound(100, 0), codec("CI")], [], 160.0)


# ---------------------------------------------------------------- the verdict


def side(mos: float, concealed: float, lost: int = 3, after: float = 4.5) -> dict[str, Any]:
    return {"mos": mos, "concealed_pct": concealed, "packets_lost": lost, "loss_pct": 1.0, "packets_expected": 100,
            "mos_after_repair": after}  # fmt: skip


@pytest.mark.parametrize(
    ("up", "status", "reason"),
    [
        (side(4.4, 0.0), Status.PASS, ""),
        (side(3.9, 0.1), Status.WARN, "upstream: MOS 3.90 < 4.0"),
        (side(4.4, 2.5), Status.WARN, "upstream: concealed 2.5 % > 2 %"),
        (side(2.5, 0.4, after=4.4), Status.WARN, "upstream: MOS 2.50 < 4.0"),  # 10 % random, repaired by FEC
        (side(3.6, 4.0, after=3.0), Status.FAIL, "upstream: MOS after repair 3.00 < 3.1"),
        (side(4.4, 11.0), Status.FAIL, "upstream: loss after repair 11.0 % > 10 %"),
    ],
)
def test_thresholds(up: dict[str, Any], status: Status, reason: str) -> None:
    assert aq.judge({"upstream": up, "downstream": side(4.5, 0.0, 0)}) == (status, reason)


def test_one_lost_packet_in_a_short_window_is_reported_not_warned_on() -> None:
    """1 lost of 30 (the default stage's count without its window) scores MOS 3.65 without FEC and, unrepaired,
    3.3 % concealed: too few packets to judge a rate by, so no WARN; two lost, or one of JUDGED_PACKETS, do."""
    one = {**side(3.65, 3.3, lost=1), "packets_expected": 30}
    assert aq.judge({"upstream": one}) == (Status.PASS, "")
    assert aq.judge({"upstream": {**one, "packets_lost": 2}})[0] is Status.WARN
    assert aq.judge({"upstream": {**one, "packets_expected": aq.JUDGED_PACKETS}})[0] is Status.WARN
    assert aq.judge({"upstream": {**one, "concealed_pct": 11.0}})[0] is Status.FAIL  # FAIL is never waived
    assert aq.judge({"upstream": one}, markers_lost=1)[0] is Status.WARN


def test_the_worst_direction_decides_and_lost_markers_warn() -> None:
    assert aq.judge({"upstream": side(3.9, 0.0), "downstream": side(3.0, 0.0, after=3.0)})[0] is Status.FAIL
    assert aq.judge({"upstream": side(4.5, 0.0, 0)}, markers_lost=2) == (Status.WARN, "2 audio markers lost")
    assert aq.lossy({"downstream": side(4.5, 0.0, 1)}) and not aq.lossy({"downstream": side(4.5, 0.0, 0)})


def test_describe_names_each_direction() -> None:
    """The stage's line: each direction's loss, concealment, jitter, jitter buffer, NACKs, codec repair, MOS."""
    up = {**side(3.88, 0.19), "loss_pct": 4.02, "packets_expected": 622, "jitter_ms": 1.04, "jitter_buffer_ms": 52.4,
          "nack_count": 3, "fec": True, "dtx": True, "red": False}  # fmt: skip
    down = {**side(4.49, 0.0, 0), "loss_pct": 0.0, "jitter_ms": 0.0, "jitter_buffer_ms": 40.0, "nack_count": None}
    assert aq.describe({"upstream": up, "downstream": down}) == (
        "up loss 4.0 % of 622, concealed 0.2 %, jitter 1.0 ms, buffer 52 ms, 3 NACKs, FEC+DTX, MOS 3.88 "
        "(after repair 4.50); down loss 0.0 % of 100, concealed 0.0 %, jitter 0.0 ms, buffer 40 ms, no FEC/DTX/RED, "
        "MOS 4.49 (after repair 4.50)"
    )


# ---------------------------------------------------------------- the impairment's spec and rules


def test_impairment_spec() -> None:
    assert Impairment.parse("loss=5%") == Impairment("loss", 5) and str(Impairment.parse("burst=10")) == "burst=10%"
    assert Impairment.parse("loss=0%").percent == 0  # a clean baseline with the counters
    for bad in ("loss=100%", "delay=50ms", "loss=5.5%", "jitter=10%"):
        with pytest.raises(ValueError, match="expected loss=N%"):
            Impairment.parse(bad)


def test_impairment_rules_drop_rtp_from_the_peer_in_input() -> None:
    random, burst = Impairment("loss", 5).rules("10.0.0.2"), Impairment("burst", 5).rules("10.0.0.2")
    assert "hook input" in random and "hook output" not in random
    assert "ip saddr 10.0.0.2 udp length > 20 @th,64,2 2 @th,73,7 != 72-78" in random
    assert "numgen random mod 100 < 5 counter drop" in random and "numgen inc mod 100 < 5 counter drop" in burst


# ---------------------------------------------------------------- the stages' use of the verdict


def test_a_drills_check_is_clean_only_with_every_marker_and_quality_under_warn() -> None:
    clean = {"upstream": side(4.4, 0.0, 0), "downstream": side(4.4, 0.0, 0)}
    audio = {"first_echo_s": 0.2, "lost_after_setup": 0, "quality": clean}
    assert audio_clean({"audio": audio})
    assert not audio_clean({"audio": {**audio, "lost_after_setup": 5}})
    assert not audio_clean({"audio": {**audio, "quality": {**clean, "downstream": side(3.9, 0.0)}}})
    assert not audio_clean({"audio": {**audio, "first_echo_s": None}}) and not audio_clean({})


def test_clean_again_means_clean_over_a_window_of_audio_in_a_row() -> None:
    """One fresh join's check times ~0.8 s of audio: clean again needs CLEAN_AUDIO_S (2 s) of clean checks in a
    row, a lossy check between them starting the count again; clean_s is when the first of them began."""
    assert audio_seconds({"audio": {"markers_sent": 16, "setup_lost": 3}}) == pytest.approx(0.78)
    streak = CleanStreak()
    checks = [(10.0, True), (11.0, False), (12.0, True), (13.0, True)]
    assert [streak.add(at, clean, 0.78) for at, clean in checks] == [False, False, False, False]
    assert streak.add(14.0, True, 0.78) and streak.began == 12.0
    assert CleanStreak().add(20.0, True, 2.04)  # the participant that stayed: its audio flows the whole window


async def test_the_media_stage_warns_on_a_lossy_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The stage's own verdict: markers all back, but 5 % lost on the wire each way scores MOS < 4.0: WARN, with
    the figures on the stage's line."""
    lossy = {d: {**side(3.7, 0.2), "loss_pct": 5.0, "packets_expected": 600} for d in ("upstream", "downstream")}

    windows = []

    async def run(probe: AudioProbe) -> AudioFigures:
        probe.figures.sent, probe.figures.echoed, probe.figures.quality = [0.0, 0.06], {0: 0.2, 1: 0.26}, lossy
        windows.append(probe.window_s)
        return probe.figures

    async def verdict(probe: AudioProbe) -> None:
        return None

    monkeypatch.setattr(AudioProbe, "run", run)
    monkeypatch.setattr(AudioProbe, "verdict", verdict)
    ctx = make_context()
    ctx.room, ctx.agent_identity = cast(rtc.Room, object()), "agent"
    with pytest.raises(StageWarning) as warned:
        await media_stage.run(ctx)
    assert warned.value.cause == "audio quality: upstream: MOS 3.70 < 4.0; downstream: MOS 3.70 < 4.0"
    assert "up loss 5.0 % of 600, concealed 0.2 %, jitter 0.0 ms" in warned.value.detail
    # The audio flows a window past the markers' ~0.6 s: ~60 packets each way are scored, not ~30.
    assert windows == [media_stage.AUDIO_WINDOW_S] and media_stage.AUDIO_WINDOW_S >= 1.0


def test_the_canary_exports_the_last_runs_quality_each_way() -> None:
    metrics = CanaryMetrics(["media"], 60)
    ctx = make_context()
    ctx.audio = AudioFigures(markers_after_setup=1, published_at=1.0, sent=[1.5], echoed={0: 1.7})
    ctx.audio.quality = {"round_trip_ms": 200.0, "upstream": {**side(3.7, 0.2), "loss_pct": 5.0},
                         "downstream": {**side(4.5, 0.0, 0), "loss_pct": 0.0}}  # fmt: skip
    record(metrics, RunResult([StageResult("media", Status.WARN, 1.0)], 1.0), RunFigures.of(ctx))
    value = metrics.registry.get_sample_value
    assert value("lkh_canary_audio_loss_ratio", {"direction": "upstream"}) == pytest.approx(0.05)
    assert value("lkh_canary_audio_concealed_ratio", {"direction": "upstream"}) == pytest.approx(0.002)
    assert value("lkh_canary_audio_mos", {"direction": "upstream"}) == 3.7
    assert value("lkh_canary_audio_mos", {"direction": "downstream"}) == 4.5
