"""The canary's logic without a server: its options, its plan (the single run's stages with its own worker), its
schedule (one run at a time, each a fresh context, SIGTERM within a bound, exit 0), its metrics (bounded labels, the
figures recorded), its endpoint and the server's counters read beside ours (deltas, resets, the gray failure)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client import generate_latest
from structlog.testing import capture_logs

from bootstrap import __main__ as cli
from bootstrap.audio_probe import AudioFigures
from bootstrap.context import RunContext
from bootstrap.modes import MODES
from bootstrap.modes.canary import loop
from bootstrap.modes.canary.kept_worker import CanaryWorker
from bootstrap.modes.canary.loop import Canary, Schedule, record
from bootstrap.modes.canary.metrics import CanaryMetrics, Endpoint
from bootstrap.modes.canary.server_view import ServerView, default_metrics_url, gray_failure, parse
from bootstrap.result import Kind, RunResult, StageResult, Status
from bootstrap.stages import STAGES, Stage
from tests.conftest import make_context

pytestmark = pytest.mark.unit


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- options and plan ---------------------------------------------------------------------------------------------


def test_canary_options_resolve_and_the_canary_is_selected() -> None:
    args = cli.parse_args(["--canary"])
    assert MODES.select(args).name == "canary" and MODES.wrapped(args).name == "single"
    assert (args.interval, args.metrics_port, args.metrics_host, args.jitter) == (60.0, 9464, "127.0.0.1", 15.0)
    assert args.timeout == MODES.get("single").timeout(args)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--interval", "5"], "--interval only with --canary"),
        (["--canary", "--load", "2"], "not --load"),
        (["--canary", "--json"], "no --json or --junit"),
        (["--canary", "--interval", "0.5"], "at least 1 second"),
    ],
)
def test_canary_usage_errors_exit_2(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.parse_args(argv)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_the_plan_is_the_single_runs_with_the_canarys_worker() -> None:
    mode = MODES.get("canary")
    plan = mode.plan(cli.parse_args(["--canary"]))
    assert [s.name for s in plan.stages] == [s.name for s in STAGES]
    worker = next(s for s in plan.stages if s.name == "worker")
    assert worker.run is not next(s for s in STAGES if s.name == "worker").run
    assert next(s for s in plan.stages if s.name == "services").cap == 2.0  # a down node is not waited for
    assert plan.serve is not None


def test_the_canarys_agent_name_is_its_own_and_stable() -> None:
    mode = MODES.get("canary")
    args = cli.parse_args(["--canary"])
    first, second = cli.build_context(args, mode), cli.build_context(args, mode)
    assert first.agent_name == second.agent_name != first.stack.agent_name
    assert first.agent_name.startswith(f"{first.stack.agent_name}-canary-")


# --- the schedule -------------------------------------------------------------------------------------------------


def quick_context() -> RunContext:
    ctx = make_context(timeout=8.0)
    ctx.webhook_port = free_port()  # never the stack's receiver port
    return ctx


def canary_with(stages: list[Stage], interval: float, runs: int = 0) -> Canary:
    return Canary(stages, Schedule(interval, 0.0, runs), CanaryWorker(), "127.0.0.1", 0, None)


def test_runs_never_overlap_and_each_gets_a_fresh_context() -> None:
    running, overlaps, contexts = 0, [], []

    async def slow(ctx: RunContext) -> str:  # longer than the interval: the next run must wait for it
        nonlocal running
        running += 1
        overlaps.append(running)
        await asyncio.sleep(0.3)
        running -= 1
        return "ok"

    def factory() -> RunContext:
        contexts.append(quick_context())
        return contexts[-1]

    canary = canary_with([Stage("slow", slow, 5.0)], interval=1.0, runs=3)
    canary.schedule.interval = 0.1  # below a run's length (CLI minimum is 1 s; the loop itself allows less)
    assert asyncio.run(canary.serve(factory)) == 0
    assert overlaps == [1, 1, 1] and len({id(c) for c in contexts}) == 3
    # Ready: the last run finished within two intervals. Judged at a 10 s interval: at the 0.1 s used above, the
    # time the event loop takes to close could already exceed two intervals on a loaded machine (seen in CI).
    canary.schedule.interval = 10.0
    assert canary.ready()[0]


def test_sigterm_lets_the_run_finish_within_the_grace_then_interrupts_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loop, "STOP_GRACE", 0.5)
    started = asyncio.Event()

    async def hangs(ctx: RunContext) -> str:
        started.set()
        await asyncio.sleep(60)
        return "never"

    async def main() -> tuple[int, float]:
        canary = canary_with([Stage("hangs", hangs, 30.0)], interval=60.0)
        serving = asyncio.create_task(canary.serve(quick_context))
        await asyncio.wait_for(started.wait(), 5)
        os.kill(os.getpid(), signal.SIGTERM)
        sent = time.monotonic()
        code = await asyncio.wait_for(serving, 10)
        return code, time.monotonic() - sent

    with capture_logs() as logs:
        code, seconds = asyncio.run(main())
    assert code == 0 and seconds < 3.0
    events = [e["event"] for e in logs]
    assert "stopping: letting the current run finish" in events and "canary run interrupted" in events


def test_a_taken_webhook_port_is_said(monkeypatch: pytest.MonkeyPatch) -> None:
    async def passes(ctx: RunContext) -> str:
        return "ok"

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]

        def factory() -> RunContext:
            ctx = quick_context()
            ctx.webhook_port = port
            return ctx

        with capture_logs() as logs:
            asyncio.run(canary_with([Stage("passes", passes, 5.0)], interval=1.0, runs=1).serve(factory))
    said = [e for e in logs if e["event"] == "canary webhooks not received"]
    assert said and f"webhook port {port} is already taken by" in said[0]["cause"]


def test_readiness_needs_a_run_within_two_intervals() -> None:
    canary = canary_with([], interval=10.0)
    assert canary.ready() == (False, "no run has finished yet")
    canary.finished_at, canary.last_result = time.time() - 15, "pass"
    assert canary.ready()[0]
    canary.finished_at = time.time() - 25
    assert not canary.ready()[0]


# --- metrics --------------------------------------------------------------------------------------------------------


def result_of(**statuses: tuple[Status, str]) -> RunResult:
    return RunResult([StageResult(name, status, 0.25, kind=kind) for name, (status, kind) in statuses.items()], 1.0)


def sample(metrics: CanaryMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    assert value is not None, (name, labels)
    return value


def test_stage_outcomes_and_runs_in_a_row() -> None:
    metrics = CanaryMetrics(["join", "media"], 60)
    ctx = quick_context()
    for _ in range(2):
        record(metrics, result_of(join=(Status.FAIL, "network"), media=(Status.SKIPPED, "")), ctx)
    assert sample(metrics, "lkh_canary_stage_success", stage="join") == 0
    assert sample(metrics, "lkh_canary_stage_failures_total", stage="join", kind="network") == 2
    assert sample(metrics, "lkh_canary_stage_failures_total", stage="join", kind="auth") == 0  # born at 0
    assert sample(metrics, "lkh_canary_stage_consecutive_failures", stage="join") == 2
    assert sample(metrics, "lkh_canary_stage_consecutive_failures", stage="media") == 2  # skipped: not passed
    assert sample(metrics, "lkh_canary_stage_failures_total", stage="media", kind="network") == 0
    record(metrics, result_of(join=(Status.PASS, ""), media=(Status.WARN, "clock")), ctx)
    assert sample(metrics, "lkh_canary_stage_consecutive_failures", stage="join") == 0
    assert sample(metrics, "lkh_canary_stage_success", stage="media") == 1
    assert sample(metrics, "lkh_canary_join_seconds_count") == 1  # only a passing join is a join time


def test_figures_fill_the_histograms() -> None:
    metrics = CanaryMetrics(["media"], 60)
    ctx = quick_context()
    ctx.audio = AudioFigures(markers_after_setup=3, published_at=10.0, sent=[10.5, 11.0, 11.5],
                             echoed={0: 10.7, 1: 11.2, 2: 12.1})  # fmt: skip
    record(metrics, result_of(media=(Status.PASS, "")), ctx)
    assert sample(metrics, "lkh_canary_audio_round_trip_seconds_count") == 3
    assert sample(metrics, "lkh_canary_audio_round_trip_seconds_bucket", le="0.25") == 2
    assert sample(metrics, "lkh_canary_first_echo_seconds_sum") == pytest.approx(0.7)


def test_labels_are_bounded_and_carry_no_run_specifics() -> None:
    metrics = CanaryMetrics([s.name for s in STAGES], 60)
    ctx = quick_context()
    record(metrics, result_of(join=(Status.FAIL, "network")), ctx)
    text = generate_latest(metrics.registry).decode()
    assert ctx.room_name not in text and ctx.identity not in text and ctx.settings.api_key not in text
    series = [line for line in text.splitlines() if line.startswith("lkh_canary_")]
    assert len(series) < 8 * len(Kind) + 200  # stages x kinds, plus fixed sets: nothing grows with runs


def test_the_endpoint_serves_metrics_health_and_readiness() -> None:
    """Served by a process of its own (a scrape never waits for the canary's interpreter), from what was published."""
    metrics = CanaryMetrics(["join"], 60)
    endpoint = Endpoint(metrics, 60, "127.0.0.1", 0)
    base = f"http://127.0.0.1:{endpoint.port}"
    try:
        request = urllib.request.Request(f"{base}/metrics", headers={"Accept": "application/openmetrics-text"})
        deadline = time.monotonic() + 5
        while True:  # the endpoint reads what was published on a thread of its own: it may lag a scrape
            with urllib.request.urlopen(request, timeout=2) as response:
                assert response.headers["Content-Type"].startswith("application/openmetrics-text")
                body = response.read().decode()
            if "lkh_canary_stage_success" in body or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert 'lkh_canary_stage_success{stage="join"} 0.0' in body and body.endswith("# EOF\n")
        assert body.count("# EOF") == 1 and "process_resident_memory_bytes" in body  # this process's, read live
        with urllib.request.urlopen(f"{base}/metrics", timeout=2) as response:  # Prometheus' text format
            assert "process_start_time_seconds" in response.read().decode()
        assert urllib.request.urlopen(f"{base}/healthz", timeout=2).status == 200
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{base}/readyz", timeout=2)
        assert refused.value.code == 503
        metrics.stage_success.labels("join").set(1)
        endpoint.publish(time.time(), "pass")
        deadline = time.monotonic() + 5
        while urllib.request.urlopen(f"{base}/metrics", timeout=2).read().count(b'stage="join"} 1.0') == 0:
            assert time.monotonic() < deadline, "the published metrics never arrived"
            time.sleep(0.05)
        assert urllib.request.urlopen(f"{base}/readyz", timeout=2).status == 200
    finally:
        endpoint.stop()


def test_a_taken_metrics_port_is_an_error_naming_it() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        with pytest.raises(OSError, match="Address already in use"):
            Endpoint(CanaryMetrics(["join"], 60), 60, "127.0.0.1", holder.getsockname()[1])


# --- the server's view ------------------------------------------------------------------------------------------------

SERVER_TEXT = """# TYPE livekit_participant_join_total counter
livekit_participant_join_total{node_id="ND_1",node_type="SERVER",state="signal_connected"} 4
livekit_participant_join_total{node_id="ND_1",node_type="SERVER",state="rtc_connected"} %s
livekit_participant_join_total{node_id="ND_1",node_type="SERVER",state="made_up"} 9
# TYPE livekit_webhook_dispatch_total counter
livekit_webhook_dispatch_total{node_id="ND_1",node_type="SERVER",reason="",status="success"} 7
livekit_webhook_dispatch_total{node_id="ND_1",node_type="SERVER",reason="queue full",status="drop"} 1
"""


def test_server_counters_are_parsed_summed_and_only_the_known_labels_kept() -> None:
    counts = parse(SERVER_TEXT % 3)
    assert counts == {("livekit_participant_join", "signal_connected"): 4,
                      ("livekit_participant_join", "rtc_connected"): 3,
                      ("livekit_webhook_dispatch", "success"): 7, ("livekit_webhook_dispatch", "drop"): 1}  # fmt: skip


def test_server_deltas_restarts_and_the_gray_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    metrics = CanaryMetrics(["join", "media"], 60)
    view = ServerView("http://127.0.0.1:1/metrics")
    readings = iter([parse(SERVER_TEXT % 3), parse(SERVER_TEXT % 5), parse(SERVER_TEXT % 1)])

    async def read() -> dict[tuple[str, str], float] | None:
        return next(readings)

    monkeypatch.setattr(view, "read", read)
    media_failed = result_of(join=(Status.PASS, ""), media=(Status.FAIL, "media"))
    asyncio.run(view.after_run(metrics, media_failed))  # the baseline: nothing known to have risen
    assert sample(metrics, "lkh_canary_gray_failure") == 0
    asyncio.run(view.after_run(metrics, media_failed))  # rtc_connected 3 -> 5 while our media failed
    assert sample(metrics, "lkh_canary_server_participant_joins_total", state="rtc_connected") == 2
    assert sample(metrics, "lkh_canary_gray_failure") == 1 and sample(metrics, "lkh_canary_gray_failures_total") == 1
    asyncio.run(view.after_run(metrics, result_of(join=(Status.PASS, ""))))  # restarted node: 5 -> 1 counts as 1
    assert sample(metrics, "lkh_canary_server_participant_joins_total", state="rtc_connected") == 3
    assert sample(metrics, "lkh_canary_gray_failure") == 0


def test_gray_failure_needs_our_failure_and_the_servers_connection() -> None:
    risen = {("livekit_participant_join", "rtc_connected"): 1.0}
    assert gray_failure(result_of(join=(Status.FAIL, "media")), risen)
    assert not gray_failure(result_of(join=(Status.FAIL, "media")), {})
    assert not gray_failure(result_of(webhooks=(Status.FAIL, "config")), risen)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("ws://localhost:7880", "http://127.0.0.1:7883/metrics"),
        ("ws://127.0.0.1:19880", "http://127.0.0.1:19883/metrics"),
        ("wss://lk.example.com", None),
    ],
)
def test_the_servers_endpoint_by_the_node_rule(url: str, expected: str | None) -> None:
    assert default_metrics_url(url) == expected


def test_an_unreachable_server_endpoint_is_said_in_a_gauge() -> None:
    metrics = CanaryMetrics(["join"], 60)
    view = ServerView(f"http://127.0.0.1:{free_port()}/metrics")
    asyncio.run(view.after_run(metrics, result_of(join=(Status.PASS, ""))))
    assert sample(metrics, "lkh_canary_server_metrics_up") == 0


def test_it_re_executes_itself_once_its_memory_grew(monkeypatch: pytest.MonkeyPatch) -> None:
    """The rtc SDK keeps a native thread per run's audio source (loop.RECYCLE_MB): past the bound, the canary
    re-executes its own command line, after its worker and endpoint are closed."""
    readings = iter([100.0, 100.0, 150.0, 400.0, 400.0])
    monkeypatch.setattr(loop, "rss_mb", lambda: next(readings))

    class Recycled(Exception):
        pass

    def reexecute() -> None:
        raise Recycled

    async def passes(ctx: RunContext) -> str:
        return "ok"

    canary = canary_with([Stage("passes", passes, 5.0)], interval=0.01)
    canary.schedule.recycle_mb = 256.0
    monkeypatch.setattr(canary, "reexecute", reexecute)
    with capture_logs() as logs, pytest.raises(Recycled):
        asyncio.run(canary.serve(quick_context))
    recycled = [e for e in logs if e["event"] == "recycling: re-executing after its memory grew"]
    assert recycled and recycled[0]["grown_mb"] == 300 and recycled[0]["runs"] == 3
    assert canary.worker.server is None  # closed before
