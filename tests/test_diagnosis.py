"""bootstrap.diagnosis: each kind of exception a stage can raise becomes a cause naming what was seen and
a fix naming what to change, with tokens and secrets redacted; a server of the run's that stopped answering is
named as the cause (sockets on loopback stand in for a frozen server: one that accepts and never answers, one
whose listen queue is full so that even the connection hangs)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import aiohttp
import pytest
from livekit import api, rtc

from backend.logging import register_secret
from bootstrap import diagnosis, runner
from bootstrap.__main__ import parse_args
from bootstrap.context import RunContext, Server
from bootstrap.diagnosis import ICE_FIX, KEY_FIX, Silence, diagnose, name_silent, silent_servers
from bootstrap.modes import MODES
from bootstrap.result import Kind, StageFailure, Status
from bootstrap.stages import Stage
from devstack.nodes import nodes
from devstack.stack_env import load_stack
from tests.conftest import make_context

pytestmark = pytest.mark.unit
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJib290c3RyYXAtdXNlciJ9.c2lnbmF0dXJlLXNpZ25hdHVyZQ"


def test_a_stage_failure_passes_through() -> None:
    failure = diagnose("join", StageFailure("the cause", "the fix"), make_context(), 1.0)
    assert (failure.cause, failure.fix) == ("the cause", "the fix")


@pytest.mark.parametrize("status", [401, 403])
def test_refused_keys_point_at_the_key_pair(status: int) -> None:
    ctx = make_context()
    failure = diagnose("worker", api.TwirpError("unauthenticated", "no", status=status), ctx, 1.0)
    assert failure.cause.startswith(f"HTTP {status} from {ctx.settings.http_url}")
    assert failure.fix == KEY_FIX


def test_unreachable_server_says_start_the_stack() -> None:
    error = aiohttp.ClientConnectorError(
        aiohttp.client_reqrep.ConnectionKey("127.0.0.1", 1, False, True, None, None, None), OSError(111, "refused")
    )
    failure = diagnose("worker", error, make_context(), 1.0)
    assert failure.cause.startswith("cannot reach LiveKit at")
    assert "`make up`" in failure.fix


def test_refused_token_is_redacted_and_names_the_keys() -> None:
    failure = diagnose("join", rtc.ConnectError(f"401 Unauthorized: invalid token {JWT}"), make_context(), 1.0)
    assert "refused the token" in failure.cause
    assert JWT not in failure.cause and JWT[:10] + "…" in failure.cause
    assert failure.fix.startswith(KEY_FIX)


def test_other_connect_errors_point_at_ice() -> None:
    failure = diagnose("join", rtc.ConnectError("wait_pc_connection timed out"), make_context(), 1.0)
    assert "wait_pc_connection timed out" in failure.cause
    assert failure.fix == ICE_FIX


@pytest.mark.parametrize(("stage", "fix"), [("join", ICE_FIX), ("webhooks", "raise --timeout, or see `make logs`")])
def test_timeouts_say_how_long_and_what_to_check(stage: str, fix: str) -> None:
    failure = diagnose(stage, TimeoutError(), make_context(), 4.25)
    assert failure.cause == f"{stage} did not finish within 4.2s"
    assert failure.fix.startswith(fix)


def test_unknown_errors_name_their_type_and_redact_secrets() -> None:
    register_secret("a-registered-secret-value-0123456789")
    failure = diagnose("token", ValueError("bad a-registered-secret-value-0123456789"), make_context(), 1.0)
    assert failure.cause == "ValueError: bad ***"
    assert "--verbose" in failure.fix


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        ("invalid token: x, error: token has invalid claims: token is not valid yet", "clock"),
        ("invalid token: x, error: token has invalid claims: token is expired", "clock"),
        ("invalid token: x, error: token signature is invalid: signature is invalid", "auth"),
        ("invalid API key: nobody", "auth"),
    ],
)
def test_a_refused_token_is_named_clock_or_auth_from_what_the_server_said(message: str, kind: str) -> None:
    """Issue 25: a clock ahead is named as the clock, not as a key mismatch, in every mode (the local run too)."""
    failure = diagnose("worker", api.TwirpError("unauthenticated", message, status=401), make_context(), 1.0)
    assert failure.kind == kind
    assert ("clock" in failure.fix) == (kind == "clock")


def test_every_diagnosed_failure_carries_a_kind() -> None:
    ctx = make_context()
    assert diagnose("join", TimeoutError(), ctx, 1.0).kind == "timeout"
    assert diagnose("media", StageFailure("no echo", "fix"), ctx, 1.0).kind == "media"
    assert diagnose("path udp", StageFailure("no pair", "fix"), ctx, 1.0).kind == "media"
    assert diagnose("dispatch", RuntimeError("odd"), ctx, 1.0).kind == "config"


# ---------------------------------------------------------------- a server that stops answering (issue 25)

WAIT = 0.3  # diagnosis.SILENT_WAIT in these tests: silence is proven by waiting it out


@pytest.fixture(autouse=True)
def short_silence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(diagnosis, "SILENT_WAIT", WAIT)


@contextlib.contextmanager
def frozen_server(name: str) -> Iterator[Server]:
    """Listening, never accepting: the kernel completes the handshake, as for a SIGSTOPped livekit-server."""
    with socket.create_server(("127.0.0.1", 0), backlog=8) as listener:
        yield Server(f"node {name}", f"http://127.0.0.1:{listener.getsockname()[1]}", f"see its log {name}.log")


@pytest.fixture
def frozen() -> Iterator[Server]:
    with frozen_server("f") as server:
        yield server


@pytest.fixture
def unreachable() -> Iterator[Server]:
    """A listen queue of one, already taken: the kernel drops the next SYN, so the connection itself hangs."""
    with socket.create_server(("127.0.0.1", 0), backlog=0) as listener:
        port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)):
            yield Server("node u", f"http://127.0.0.1:{port}", "see its log u.log")


@pytest.fixture
async def answering() -> AsyncIterator[Server]:
    """Answers GET / at once, not ready (406): an answer all the same."""

    async def reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 406 Not Acceptable\r\ncontent-length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(reply, "127.0.0.1", 0)
    async with server:
        yield Server("node r", f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")


def refused() -> Server:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
    return Server("node x", f"http://127.0.0.1:{port}")  # closed again: nothing listens there


async def test_a_server_that_accepts_but_never_answers_is_named_with_its_address(frozen: Server) -> None:
    [silence] = await silent_servers([frozen])
    assert silence == Silence(frozen, connected=True)
    assert silence.cause.startswith(f"node f at {frozen.address} is not answering: it accepts connections")
    assert "frozen or hung" in silence.cause and f"within {WAIT:g} s" in silence.cause
    assert "kill -CONT" in silence.fix and silence.fix.endswith("see its log f.log")


async def test_a_server_that_does_not_even_accept_is_named_as_unreachable(unreachable: Server) -> None:
    [silence] = await silent_servers([unreachable])
    assert silence == Silence(unreachable, connected=False)
    assert silence.cause.startswith(f"node u at {unreachable.address} is not answering: no connection within")
    assert "reachable" in silence.fix and "see its log u.log" in silence.fix


async def test_only_the_silent_servers_are_named_and_answers_of_any_kind_are_not_silence(
    frozen: Server, answering: Server
) -> None:
    """A 406 and a refused connection are answers (other diagnoses name them); all are asked at once, so two
    silent servers cost one wait, not two."""
    with frozen_server("g") as other:
        started = asyncio.get_running_loop().time()
        silent = await silent_servers([answering, frozen, refused(), other])
        assert asyncio.get_running_loop().time() - started < 1.5 * WAIT
    assert [s.server for s in silent] == [frozen, other]


def test_a_silent_server_becomes_the_cause_and_what_the_stage_saw_follows(frozen: Server) -> None:
    seen = StageFailure("join did not finish within 5.0s", "the ICE fix", Kind.TIMEOUT)
    assert name_silent(seen, []) is seen
    named = name_silent(seen, [Silence(frozen, connected=True)])
    assert named.cause.startswith(f"node f at {frozen.address} is not answering")
    assert named.cause.endswith("(what the stage saw: join did not finish within 5.0s)")
    assert named.kind == Kind.NETWORK and "the ICE fix" not in named.fix


async def timing_out(_ctx: RunContext) -> str:
    await asyncio.sleep(60)
    return ""


async def raising(_ctx: RunContext) -> str:
    raise RuntimeError("the connection was reset")


@pytest.mark.parametrize("stage_run", [timing_out, raising], ids=["timeout", "error"])
async def test_the_runner_names_the_frozen_server_whatever_the_stage_failed_of(
    stage_run: Callable[[RunContext], Awaitable[str]], frozen: Server, answering: Server
) -> None:
    ctx = make_context()
    ctx.servers = [answering, frozen]
    result = await runner.run(ctx, [Stage("join", stage_run, 0.2)])
    [stage] = result.stages
    assert stage.status is Status.FAIL and stage.kind == "network"
    assert stage.cause.startswith(f"node f at {frozen.address} is not answering")
    assert "node r" not in stage.cause


async def test_the_runner_leaves_a_failure_alone_when_every_server_answers(answering: Server) -> None:
    ctx = make_context()
    ctx.servers = [answering]
    [stage] = (await runner.run(ctx, [Stage("join", timing_out, 0.2)])).stages
    assert (stage.cause, stage.kind) == ("join did not finish within 0.2s", "timeout")


def target_servers(argv: list[str]) -> list[tuple[str, str]]:
    args = parse_args(argv)
    return [(s.name, s.address) for s in MODES.select(args).target(args, load_stack()).servers]


def test_each_mode_names_the_servers_it_talks_to() -> None:
    """A cluster names both nodes, the paths mode its lab's node, --url the deployment (its canary too); the
    default run, unnamed, the one at LIVEKIT_URL."""
    cluster = [(f"node {n.name}", f"{n.address}:{n.port}") for n in nodes(load_stack())]
    assert target_servers(["--cluster"]) == cluster
    [(name, address)] = target_servers(["--paths"])
    assert name == "the paths lab's node" and address.endswith(f":{load_stack().paths_node_port}")
    remote = [("the deployment", "lk.example.com:443")]
    assert target_servers(["--url", "wss://lk.example.com"]) == remote
    assert target_servers(["--canary", "--url", "wss://lk.example.com"]) == remote
    assert target_servers([]) == []
    ctx = make_context(LIVEKIT_URL="wss://lk.example.com")
    assert [(s.name, s.address) for s in ctx.servers_talked_to()] == [("the LiveKit server", "lk.example.com:443")]


def test_a_lab_node_whose_host_does_not_exist_is_never_asked() -> None:
    """With no lab host on the test range's bridge its addresses route off this machine: no probe may go there."""
    ctx = make_context()
    gone = Server("node a", "http://10.213.71.11:7980", namespace="lkh-no-such-host")
    here = Server("the LiveKit server", "http://127.0.0.1:7880")
    ctx.servers = [gone, here]
    assert not gone.reachable_here and here.reachable_here
    assert ctx.servers_talked_to() == [here]
