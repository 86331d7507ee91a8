"""The paths check's own logic, without a network: reading what a client was offered, telling the causes of a
failed join apart, checking the selected pair, the runner's independent stages and the CLI's path options."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from bootstrap import runner
from bootstrap.__main__ import parse_args
from bootstrap.ice import Candidate, Offered, OfferRecorder, parse_candidate
from bootstrap.modes.paths.network_paths import PATHS
from bootstrap.modes.paths.path_diagnosis import check_pair, explain_no_join
from bootstrap.result import StageSkipped, Status
from bootstrap.stages import Stage
from devstack.paths_lab import hosts
from devstack.stack_env import load_stack
from tests.conftest import make_context

pytestmark = pytest.mark.unit
HOST = hosts(load_stack())  # the paths lab's layout: node 10.213.70.11, client 10.213.70.2
SIGNAL = "10.213.70.11:7960"
NODE_UDP = Candidate("host", "udp", "10.213.70.11", 7962)
NODE_TCP = Candidate("host", "tcp", "10.213.70.11", 7961)
TURN = "turn:10.213.70.11:3478?transport=udp"
TURN_ON = {
    "rtc": {"node_ip": "10.213.70.11"},
    "turn": {"enabled": True, "allow_restricted_peer_cidrs": ["10.213.70.0/24"]},
}


def test_a_candidate_is_read_from_its_sdp_line() -> None:
    line = 'IceCandidate { candidate: "candidate:375738803 1 tcp 1671430143 127.0.0.1 7961 typ host tcptype passive" }'
    assert parse_candidate(line) == Candidate("host", "tcp", "127.0.0.1", 7961)
    assert parse_candidate("no candidate here") is None


def test_the_offer_recorder_keeps_server_urls_never_the_turn_credentials() -> None:
    recorder = OfferRecorder()
    join = ('received JoinResponse: JoinResponse { ice_servers: [IceServer { urls: '
            '["turn:10.0.0.1:3478?transport=udp"], username: "1795:PA_x", credential: "s3cret-credential" }], '
            'turn_password: "hunter2" }')  # fmt: skip
    trickle = 'remote ice_candidate IceCandidate { candidate: "candidate:1 1 udp 1 10.0.0.1 7962 typ host" }'
    for message in (join, trickle):
        recorder.emit(logging.LogRecord("livekit", logging.DEBUG, "", 0, message, None, None))
    assert recorder.offered.ice_servers == ["turn:10.0.0.1:3478?transport=udp"]
    assert recorder.offered.candidates == [Candidate("host", "udp", "10.0.0.1", 7962)]
    assert "s3cret" not in repr(recorder.offered.as_dict()) and "hunter2" not in repr(recorder.offered.as_dict())


def test_an_advertised_address_the_client_cannot_reach_names_node_ip() -> None:
    offered = Offered([Candidate("host", "udp", "127.0.0.1", 7962)], ["turn:127.0.0.1:3478?transport=udp"])
    failure = explain_no_join(PATHS["udp"], offered, "timed out", HOST, SIGNAL, {"rtc": {"node_ip": "127.0.0.1"}}, "")
    assert "127.0.0.1" in failure.cause and "cannot reach" in failure.cause and SIGNAL in failure.cause
    assert "rtc.node_ip" in failure.fix and "10.213.70.11" in failure.fix and "use_external_ip" in failure.fix


def test_node_ip_is_named_even_when_turns_front_is_reachable() -> None:
    """TURN over TLS reached through its front (here by address) relays at node_ip too: node_ip is the cause."""
    turns = "turns:10.213.70.12:443?transport=tcp"
    offered = Offered([Candidate("host", "udp", "127.0.0.1", 7962)], ["turn:127.0.0.1:3478?transport=udp", turns])
    failure = explain_no_join(PATHS["udp"], offered, "timed out", HOST, SIGNAL, {"rtc": {"node_ip": "127.0.0.1"}}, "")
    assert "candidates at 127.0.0.1 only" in failure.cause and "TURN's front answers" in failure.cause
    assert "rtc.node_ip" in failure.fix and "10.213.70.11" in failure.fix


def test_reachable_candidates_no_connection_and_no_turn_name_the_udp_port() -> None:
    offered = Offered([NODE_UDP, NODE_TCP], ["stun:127.0.0.1:3478"])
    failure = explain_no_join(PATHS["udp"], offered, "timed out", HOST, SIGNAL, {"turn": {"enabled": False}}, "")
    assert "UDP between the client host and the node is blocked" in failure.cause and "no TURN" in failure.cause
    assert "open UDP 7962" in failure.fix and "enable TURN" in failure.fix


def test_a_refused_relay_is_named_from_the_nodes_log() -> None:
    log = "… permission denied for client 10.213.70.2:41000 to peer 10.213.70.11 …"
    config = {"turn": {"enabled": True}}
    failure = explain_no_join(PATHS["turn-udp"], Offered([NODE_UDP], [TURN]), "timed out", HOST, SIGNAL, config, log)
    assert "its log: 'permission denied" in failure.cause and "lists nothing" in failure.cause
    assert "turn.allow_restricted_peer_cidrs" in failure.fix and "10.213.70.0/24" in failure.fix


def test_a_relay_that_fails_with_the_range_allowed_is_not_blamed_on_the_allow_list() -> None:
    failure = explain_no_join(PATHS["turn-udp"], Offered([NODE_UDP], [TURN]), "timed out", HOST, SIGNAL, TURN_ON, "")
    assert "allow_restricted_peer_cidrs" not in failure.cause
    assert "never connected" in failure.cause


def test_forced_relay_without_turn_offered_says_turn_is_off() -> None:
    failure = explain_no_join(PATHS["turn-udp"], Offered([NODE_UDP], []), "timed out", HOST, SIGNAL, {}, "")
    assert "no TURN server" in failure.cause and "turn.enabled" in failure.fix


def pair(local: Candidate, remote: Candidate) -> dict[str, dict[str, dict[str, Any]]]:
    return {"publisher": {"local": vars(local), "remote": vars(remote)}}


def test_the_expected_pair_passes_and_a_tcp_fallback_names_blocked_udp() -> None:
    client_udp = Candidate("host", "udp", "10.213.70.2", 40000)
    assert check_pair(PATHS["udp"], pair(client_udp, NODE_UDP), Offered([NODE_UDP])) is None
    fallback = check_pair(
        PATHS["udp"], pair(Candidate("prflx", "tcp", "10.213.70.2", 0), NODE_TCP), Offered([NODE_UDP])
    )
    assert (
        fallback is not None and "10.213.70.11:7962 is blocked" in fallback.cause and "ICE over TCP" in fallback.cause
    )
    assert "open UDP 7962" in fallback.fix
    relay_expected = check_pair(PATHS["turn-udp"], pair(client_udp, NODE_UDP), Offered([NODE_UDP], [TURN]))
    assert relay_expected is not None and "not the relay udp through TURN over udp pair" in relay_expected.cause
    assert check_pair(PATHS["udp"], {}, Offered()) is not None


async def passing(_ctx: object) -> str:
    return "ok"


async def failing(_ctx: object) -> str:
    raise RuntimeError("broken path")


async def skipped(_ctx: object) -> str:
    raise StageSkipped("not on this machine")


async def test_independent_stages_run_after_one_fails_but_not_after_a_prerequisite() -> None:
    stages = [
        Stage("setup", passing, 5.0),
        Stage("path a", failing, 5.0, independent=True),
        Stage("path b", passing, 5.0, independent=True),
    ]
    result = await runner.run(make_context(), stages)
    assert [s.status for s in result.stages] == [Status.PASS, Status.FAIL, Status.PASS]
    assert not result.passed
    result = await runner.run(make_context(), [Stage("setup", failing, 5.0), *stages[1:]])
    assert [s.status for s in result.stages] == [Status.FAIL, Status.SKIPPED, Status.SKIPPED]
    assert result.stages[1].cause == "setup did not pass"


async def test_a_skip_with_a_reason_passes_the_run_only_when_something_else_passed() -> None:
    some = await runner.run(make_context(), [Stage("a", skipped, 5.0, independent=True), Stage("b", passing, 5.0)])
    assert some.passed and some.stages[0].cause == "not on this machine"
    nothing = await runner.run(make_context(), [Stage("a", skipped, 5.0, independent=True)])
    assert not nothing.passed


def test_path_options_are_checked(capsys: pytest.CaptureFixture[str]) -> None:
    assert parse_args(["--paths"]).paths == ["udp", "turn-udp", "tcp", "turn-tls", "wss"]
    assert parse_args(["--paths", "--fault", "turn-peers"]).paths == ["turn-udp"]
    assert parse_args(["--paths", "turn-udp,udp,udp"]).paths == ["turn-udp", "udp"]
    for bad, says in [(["--paths", "carrier-pigeon"], "unknown path carrier-pigeon"),
                      (["--fault", "node-ip"], "--fault needs --paths"),
                      (["--paths", "--cluster"], "separate modes")]:  # fmt: skip
        with pytest.raises(SystemExit) as exit_info:
            parse_args(bad)
        assert exit_info.value.code == 2 and says in capsys.readouterr().err
