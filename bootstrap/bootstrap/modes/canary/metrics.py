"""The canary's OpenMetrics (prometheus_client, its own registry), and the process that serves them (/metrics,
/healthz: the canary is alive, /readyz: a run finished within two intervals; bootstrap.metrics_endpoint).

Labels are bounded: a stage's name (the wrapped mode's stages, about ten), a cause kind (bootstrap.result.Kind,
ten), a run's result (four), the server's join states and webhook statuses (a fixed list each). Never a room name,
an identity, a worker id, a URL or free text: those live in the logs.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import sys
from collections.abc import Iterable

import structlog
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from bootstrap.result import Kind

PREFIX = "lkh_canary"
START_TIMEOUT = 10.0  # the endpoint's process listening (it starts in ~0.1 s)
STOP_TIMEOUT = 3.0
log = structlog.get_logger("bootstrap.canary")
RESULTS = ("pass", "warn", "fail", "interrupted")
# What livekit-server's own counters say, exported beside ours (bootstrap.modes.canary.server_view).
SERVER_JOIN_STATES = ("signal_connected", "signal_failed", "rtc_init", "rtc_connected", "rtc_active")
SERVER_WEBHOOK_STATUSES = ("success", "failure", "drop")
AUDIO_DIRECTIONS = ("upstream", "downstream")  # the last run's audio quality, each way (bootstrap.audio_quality)

# Buckets chosen for what each figure measures here and what a deployment elsewhere adds (docs/canary.md):
# - join: 0.07 s on this machine's stack, a few hundred ms across a WAN; the join stage's cap is 15 s.
JOIN_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 15.0)
# - dispatch (join returned -> agent listed): 0.3 s measured; LiveKit documents < 150 ms and users report 15-50 s
#   when idle-process or load-threshold settings are wrong (livekit/agents #3202): 15 s is the stage's cap.
DISPATCH_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 15.0)
# - first echo (published -> first marker back): 0.12-0.95 s measured; the media stage's cap is 8 s.
FIRST_ECHO_BUCKETS = (0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 4.0, 8.0)
# - audio round trip, per marker: 150-310 ms measured here, p95 - p50 <= 15 ms within a run. Fine steps where the
#   figures live, and 0.5 s (the rules' p95 threshold) a bucket boundary, so histogram_quantile is exact there.
AUDIO_ROUND_TRIP_BUCKETS = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 2.0)
# - RPC round trip, per call: 3 ms p50 locally, tens of ms over a WAN, up to the RPC's 1 s response timeout.
RPC_ROUND_TRIP_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
# - webhook delivery (join returned -> participant_joined verified here): milliseconds locally; the server retries
#   failed posts with backoff for up to 30 s, so seconds mean retries.
WEBHOOK_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class CanaryMetrics:
    """Every series the canary exports, declared once with its labels' values known up front (a counter born at
    1 shows no increase() to Prometheus, so each label combination starts at 0)."""

    def __init__(self, stages: Iterable[str], interval: float) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]  # no `_created` series: they double a scrape
        self.registry = CollectorRegistry()
        r = self.registry
        self.stages = list(stages)
        self.stage_success = Gauge(
            f"{PREFIX}_stage_success",
            "1 if the stage passed (or warned) in the last run, 0 if it failed or was skipped",
            ["stage"],
            registry=r,
        )
        self.stage_failures = Counter(
            f"{PREFIX}_stage_failures", "Runs in which the stage failed, by cause kind", ["stage", "kind"], registry=r
        )
        self.stage_consecutive_failures = Gauge(
            f"{PREFIX}_stage_consecutive_failures",
            "Runs in a row the stage did not pass (0 once it passes)",
            ["stage"],
            registry=r,
        )
        self.runs = Counter(f"{PREFIX}_runs", "Finished runs by result", ["result"], registry=r)
        self.run_duration = Histogram(
            f"{PREFIX}_run_duration_seconds",
            "A run's wall time, cleanup included",
            buckets=(1, 2, 3, 5, 10, 20, 30, 60, 120),
            registry=r,
        )
        self.join = Histogram(
            f"{PREFIX}_join_seconds", "Participant join (connect returned)", buckets=JOIN_BUCKETS, registry=r
        )
        self.dispatch = Histogram(
            f"{PREFIX}_dispatch_seconds",
            "Join returned to the agent listed in the room",
            buckets=DISPATCH_BUCKETS,
            registry=r,
        )
        self.first_echo = Histogram(
            f"{PREFIX}_first_echo_seconds", "Audio published to its first echo", buckets=FIRST_ECHO_BUCKETS, registry=r
        )
        self.audio_round_trip = Histogram(
            f"{PREFIX}_audio_round_trip_seconds",
            "Each audio marker's round trip through the echo agent",
            buckets=AUDIO_ROUND_TRIP_BUCKETS,
            registry=r,
        )
        self.rpc_round_trip = Histogram(
            f"{PREFIX}_rpc_round_trip_seconds",
            "Each RPC call's round trip to the agent",
            buckets=RPC_ROUND_TRIP_BUCKETS,
            registry=r,
        )
        self.webhook_delivery = Histogram(
            f"{PREFIX}_webhook_delivery_seconds",
            "Join returned to its participant_joined webhook verified",
            buckets=WEBHOOK_BUCKETS,
            registry=r,
        )
        self.last_run = Gauge(
            f"{PREFIX}_last_run_timestamp_seconds", "When the last run finished (Unix time)", registry=r
        )
        self.last_success = Gauge(
            f"{PREFIX}_last_success_timestamp_seconds",
            "When the last passing run finished (Unix time; 0 before the first)",
            registry=r,
        )
        self.interval = Gauge(f"{PREFIX}_interval_seconds", "The canary's --interval", registry=r)
        self.worker_registrations = Counter(
            f"{PREFIX}_worker_registrations", "Times the canary's worker was (re-)created and registered", registry=r
        )
        self.server_metrics_up = Gauge(
            f"{PREFIX}_server_metrics_up",
            "1 if the server's Prometheus endpoint answered after the last run",
            registry=r,
        )
        self.server_joins = Counter(
            f"{PREFIX}_server_participant_joins",
            "livekit-server's own livekit_participant_join_total, its increase read after each run (per node)",
            ["state"],
            registry=r,
        )
        self.server_webhooks = Counter(
            f"{PREFIX}_server_webhook_dispatches",
            "livekit-server's own livekit_webhook_dispatch_total, its increase read after each run (per node)",
            ["status"],
            registry=r,
        )
        self.gray_failure = Gauge(
            f"{PREFIX}_gray_failure",
            "1 if in the last run our join or media failed while "
            "the server counted a participant's media connected (rtc_connected rose)",
            registry=r,
        )
        self.gray_failures = Counter(f"{PREFIX}_gray_failures", "Runs that were gray failures", registry=r)
        self.audio_loss = Gauge(f"{PREFIX}_audio_loss_ratio", "The last run's audio packets lost on the wire",
                                ["direction"], registry=r)  # fmt: skip
        self.audio_concealed = Gauge(f"{PREFIX}_audio_concealed_ratio",
                                     "The last run's audio concealed by the receiver (loss after repair)",
                                     ["direction"], registry=r)  # fmt: skip
        self.audio_mos = Gauge(f"{PREFIX}_audio_mos", "The last run's audio MOS (livekit-server's E-model scorer)",
                               ["direction"], registry=r)  # fmt: skip
        self.interval.set(interval)
        for stage in self.stages:
            self.stage_success.labels(stage)
            self.stage_consecutive_failures.labels(stage)
            for kind in Kind:
                self.stage_failures.labels(stage, kind.value)
        for result in RESULTS:
            self.runs.labels(result)
        for state in SERVER_JOIN_STATES:
            self.server_joins.labels(state)
        for status in SERVER_WEBHOOK_STATUSES:
            self.server_webhooks.labels(status)


class Endpoint:
    """/metrics, /healthz and /readyz, served by a process of their own (bootstrap.metrics_endpoint), so a scrape
    never waits for this interpreter while a run keeps it busy. `publish` sends it the exposition rendered here."""

    def __init__(self, metrics: CanaryMetrics, interval: float, host: str, port: int) -> None:
        self._metrics = metrics
        command = [sys.executable, "-m", "bootstrap.metrics_endpoint", host, str(port), str(interval), str(os.getpid())]
        self._process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self._process.stdin is not None and self._process.stdout is not None
        ready, _, _ = select.select([self._process.stdout], [], [], START_TIMEOUT)
        first = self._process.stdout.readline().strip() if ready else "error it did not start in time"
        if not first.startswith("ok "):
            self.stop()
            raise OSError(first.removeprefix("error "))
        self.port = int(first.split()[1])
        self.publish(0.0, "")

    def publish(self, finished_at: float, last_result: str) -> None:
        """The current metrics and readiness to the endpoint (after each run)."""
        registry = self._metrics.registry
        openmetrics = generate_openmetrics(registry).decode()  # type: ignore[no-untyped-call]
        text = generate_latest(registry).decode()
        line = json.dumps(
            {"text": text, "openmetrics": openmetrics, "finished_at": finished_at, "last_result": last_result}
        )
        assert self._process.stdin is not None
        try:
            self._process.stdin.write(line + "\n")
            self._process.stdin.flush()
        except (BrokenPipeError, ValueError):
            log.error("the metrics endpoint is gone", code=self._process.poll())

    def stop(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            if self._process.stdin is not None:
                self._process.stdin.close()  # its end of file: it stops serving and exits
        try:
            self._process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(STOP_TIMEOUT)
