"""The canary's logic without a server: its options, its plan (the single run's stages with its own worker), its
schedule (one run at a time, each a fresh context, SIGTERM within a bound, exit 0), its metrics (bounded labels, the
figures recorded), its endpoint and the server's counters read beside ours (deltas, resets, the gray failure)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest
from structlog.testing import capture_logs

from bootstrap import __main__ as cli
from bootstrap import runner
from bootstrap.audio_probe import AudioFigures
from bootstrap.context import RunContext
from bootstrap.modes import MODES
from bootstrap.modes.canary import canary_stages, loop
from bootstrap.modes.canary.isolated import Outcome, RunFigures, check_worker
from bootstrap.modes.canary.kept_worker import CanaryWorker
from bootstrap.modes.canary.loop import Canary, Schedule, record
from bootstrap.modes.canary.metrics import CanaryMetrics, Endpoint
from bootstrap.modes.canary.server_view import ServerView, default_metrics_url, gray_failure, parse
from bootstrap.result import Kind, RunResult, StageResult, Status
from bootstrap.stages import STAGES, Stage, stage_named
from devstack.stack_env import LIVEKIT_YAML, REPO_ROOT
from tests.conftest import PY, make_context

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
        record(metrics, result_of(join=(Status.FAIL, "network"), media=(Status.SKIPPED, "")), RunFigures.of(ctx))
    assert sample(metrics, "lkh_canary_stage_success", stage="join") == 0
    assert sample(metrics, "lkh_canary_stage_failures_total", stage="join", kind="network") == 2
    assert sample(metrics, "lkh_canary_stage_failures_total", stage="join", kind="auth") == 0  # born at 0
    assert sample(metrics, "lkh_canary_stage_consecutive_failures", stage="join") == 2
    assert sample(metrics, "lkh_canary_stage_consecutive_failures", stage="media") == 2  # skipped: not passed
    assert sample(metrics, "lkh_canary_stage_failures_total", stage="media", kind="network") == 0
    record(metrics, result_of(join=(Status.PASS, ""), media=(Status.WARN, "clock")), RunFigures.of(ctx))
    assert sample(metrics, "lkh_canary_stage_consecutive_failures", stage="join") == 0
    assert sample(metrics, "lkh_canary_stage_success", stage="media") == 1
    assert sample(metrics, "lkh_canary_join_seconds_count") == 1  # only a passing join is a join time


def test_figures_fill_the_histograms() -> None:
    metrics = CanaryMetrics(["media"], 60)
    ctx = quick_context()
    ctx.audio = AudioFigures(markers_after_setup=3, published_at=10.0, sent=[10.5, 11.0, 11.5],
                             echoed={0: 10.7, 1: 11.2, 2: 12.1})  # fmt: skip
    record(metrics, result_of(media=(Status.PASS, "")), RunFigures.of(ctx))
    assert sample(metrics, "lkh_canary_audio_round_trip_seconds_count") == 3
    assert sample(metrics, "lkh_canary_audio_round_trip_seconds_bucket", le="0.25") == 2
    assert sample(metrics, "lkh_canary_first_echo_seconds_sum") == pytest.approx(0.7)


def test_labels_are_bounded_and_carry_no_run_specifics() -> None:
    metrics = CanaryMetrics([s.name for s in STAGES], 60)
    ctx = quick_context()
    record(metrics, result_of(join=(Status.FAIL, "network")), RunFigures.of(ctx))
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


# --- a refused port ---------------------------------------------------------------------------------------------------


def refusing_context(timeout: float = 8.0) -> RunContext:
    """A run whose LiveKit, PostgreSQL and Redis are all at ports nothing listens on."""
    ctx = make_context(timeout=timeout, LIVEKIT_URL=f"ws://127.0.0.1:{free_port()}")
    ctx.stack = dataclasses.replace(ctx.stack, postgres_port=free_port(), redis_port=free_port())
    ctx.webhook_port = free_port()
    return ctx


def test_a_refused_port_fails_the_canarys_services_at_once_as_a_network_fault_naming_it() -> None:
    ctx = refusing_context()
    (services,) = canary_stages([stage_named("services")], CanaryWorker().check)
    started = time.monotonic()
    result = asyncio.run(runner.run(ctx, [services]))
    (stage,) = result.stages
    assert (stage.status, stage.kind) == (Status.FAIL, Kind.NETWORK)
    assert f"livekit at 127.0.0.1:{ctx.settings.http_url.rsplit(':', 1)[1]}: connection refused" in stage.cause
    assert time.monotonic() - started < services.cap  # named at once, not when its time ran out


def test_a_port_refused_until_the_deadline_is_a_network_fault_in_the_single_run_too() -> None:
    """The single run waits for a starting stack (its ports refuse until they listen); when its time runs out, a
    refusal is still named as the network fault it is, not as a timeout."""
    ctx = refusing_context()
    services = dataclasses.replace(stage_named("services"), cap=1.0)
    (stage,) = asyncio.run(runner.run(ctx, [services])).stages
    assert (stage.status, stage.kind) == (Status.FAIL, Kind.NETWORK)
    assert "not healthy before the deadline" in stage.cause and "connection refused" in stage.cause


def test_the_canarys_metrics_label_a_refused_port_network(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[CanaryMetrics] = []

    class Kept(CanaryMetrics):
        def __init__(self, *args: object) -> None:
            super().__init__(*args)  # type: ignore[arg-type]
            made.append(self)

    monkeypatch.setattr(loop, "CanaryMetrics", Kept)
    worker = CanaryWorker()
    canary = Canary(canary_stages(list(STAGES), worker.check), Schedule(1.0, 0.0, 1), worker, "127.0.0.1", 0, None)
    assert asyncio.run(canary.serve(refusing_context)) == 0
    (metrics,) = made
    assert sample(metrics, "lkh_canary_stage_failures_total", stage="services", kind="network") == 1
    assert sample(metrics, "lkh_canary_stage_failures_total", stage="services", kind="timeout") == 0


# --- each run in a process of its own -----------------------------------------------------------------------------


def test_a_run_outcome_crosses_the_process_boundary_intact() -> None:
    result = RunResult([StageResult("join", Status.PASS, 0.1, "ok"),
                        StageResult("media", Status.FAIL, 0.2, cause="c", fix="f", kind=Kind.MEDIA)], 1.5)  # fmt: skip
    figures = RunFigures(0.12, [0.15, 0.16], {"upstream": {"loss_pct": 1.0, "mos": 4.3}}, [0.002], 0.01)
    sent = Outcome(result, figures, "port taken")
    back = Outcome.from_json(json.loads(json.dumps(sent.as_json())))
    assert back.result == result and back.figures == figures and back.sink_error == "port taken"
    assert back.result is not None and back.result.stages[1].status is Status.FAIL
    assert Outcome.from_json(Outcome(None).as_json()).result is None


def test_the_worker_stage_answered_for_a_run_elsewhere_carries_its_failure() -> None:
    """A run's process asks the canary about the kept worker: a worker that cannot register is the stage's failure,
    kind and all, as if the stage had run there."""

    async def ask() -> dict[str, Any]:
        worker = CanaryWorker()
        try:
            return await check_worker(refusing_context(), worker, 10.0)
        finally:
            await worker.end()

    failure = asyncio.run(ask())["failure"]
    assert failure["kind"] == Kind.NETWORK
    assert "worker stopped before registering at ws://127.0.0.1:" in failure["cause"]


def test_each_run_is_a_process_of_its_own_forked_by_the_canary(tmp_path: Path) -> None:
    """The CLI's canary: each run in a child process (what the rtc SDK keeps of a run ends with it), the result
    back in the canary's metrics and log; exit 0 after --runs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIVEKIT_")}
    env["LIVEKIT_URL"] = f"ws://127.0.0.1:{free_port()}"
    config = yaml.safe_load(LIVEKIT_YAML.read_text())
    config["webhook"]["urls"] = [f"http://127.0.0.1:{free_port()}/api/webhooks/livekit"]  # never the stack's
    (tmp_path / "livekit.yaml").write_text(yaml.safe_dump(config))
    command = [PY, "-m", "bootstrap", "--canary", "--runs", "2", "--interval", "1", "--jitter", "0",
               "--metrics-port", "0", "--livekit-config", str(tmp_path / "livekit.yaml")]  # fmt: skip
    done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    runs = [line for line in lines if line.get("event") == "canary run"]
    assert [r["failed"].get("services") for r in runs] == ["network", "network"], done.stderr[-3000:]
    pids = {r["pid"] for r in runs}
    assert len(pids) == 2, runs  # a process each
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists()  # gone with its run
