"""A REAL Prometheus (Debian's package: its own port, 1 s scrape and evaluation, its own data directory, killed at
the end) scrapes a canary (`python -m bootstrap --canary`) at a short interval, with docs/prometheus/canary-rules.yml
loaded, against a livekit-server node of the test's own (never the session's stack, whose Redis and PostgreSQL the
services stage only reads): healthy, no alert; the node stopped, the stage alert fires within three intervals;
started again, it resolves within three. Then SIGTERM: the canary exits 0."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from devstack import install
from devstack.server_config import node_config, node_ports, render
from devstack.stack_env import REPO_ROOT, Stack, load_stack
from tests.conftest import PY, _livekit_ready

pytestmark = pytest.mark.integration

RULES = REPO_ROOT / "docs" / "prometheus" / "canary-rules.yml"
INTERVAL = 6.0  # a run against the stopped node fails at once (its port refused): two in a row fit three intervals
NODE_OFFSET = 12000  # the node's ports: the stack's + this (19880-19883), apart from extra_livekit's default
STAGE_ALERT = "LiveKitCanaryStageFailing"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=2) as response:
        return json.load(response)


@contextlib.contextmanager
def node(config: Path, port: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """The pinned livekit-server on `config`, ready (GET / 200) before yielding; stopped on exit."""
    with log.open("ab") as out:
        binary = install.livekit_server_binary(load_stack())
        process = subprocess.Popen(
            [str(binary), "--config", str(config), "--bind", "127.0.0.1"], stdout=out, stderr=out
        )
        try:
            deadline = time.monotonic() + 20
            while not _livekit_ready(port):
                assert process.poll() is None, log.read_text()[-2000:]
                assert time.monotonic() < deadline, "the test's livekit-server did not become ready"
                time.sleep(0.2)
            yield process
        finally:
            process.terminate()
            process.wait(10)


@contextlib.contextmanager
def prometheus(tmp_path: Path, canary_port: int) -> Iterator[str]:
    """Prometheus scraping the canary every second, evaluating the rules every second; its API URL."""
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "900ms"},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            {"job_name": "livekit-canary", "static_configs": [{"targets": [f"127.0.0.1:{canary_port}"]}]}
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    log = (tmp_path / "prometheus.log").open("wb")
    process = subprocess.Popen(
        ["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=log,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            assert process.poll() is None, (tmp_path / "prometheus.log").read_text()[-2000:]
            with contextlib.suppress(OSError):
                if urllib.request.urlopen(f"{url}/-/ready", timeout=1).status == 200:
                    break
            assert time.monotonic() < deadline, "Prometheus did not become ready"
            time.sleep(0.2)
        yield url
    finally:
        process.kill()
        process.wait(10)
        log.close()


def alerts(url: str, state: str = "firing") -> list[dict[str, str]]:
    return [a["labels"] for a in get_json(f"{url}/api/v1/alerts")["data"]["alerts"] if a["state"] == state]


def query(url: str, expr: str) -> list[dict[str, Any]]:
    return list(get_json(f"{url}/api/v1/query?query={urllib.parse.quote(expr)}")["data"]["result"])


def wait_for(what: str, check: Any, seconds: float) -> float:
    """Poll `check` every 0.25 s until true; the seconds it took (fails naming `what` after `seconds`)."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < seconds, f"{what}: not within {seconds:.0f}s"
        time.sleep(0.25)
    return time.monotonic() - started


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="needs Debian's prometheus package (make net-deps)")
def test_prometheus_fires_and_resolves_the_stage_alert(stack: Stack, tmp_path: Path) -> None:
    port = stack.livekit_port + NODE_OFFSET
    webhook_port = free_port()
    config = node_config(node_ports(port))
    config["webhook"]["urls"] = [f"http://127.0.0.1:{webhook_port}/api/webhooks/livekit"]
    config_path = tmp_path / "livekit.yaml"
    config_path.write_text(render(config))
    canary_port = free_port()
    env = {"LIVEKIT_URL": f"ws://localhost:{port}", "LIVEKIT_API_KEY": stack.api_key,
           "LIVEKIT_API_SECRET": stack.api_secret}  # fmt: skip
    command = [PY, "-m", "bootstrap", "--canary", "--interval", str(INTERVAL), "--jitter", "0", "--timeout", "12",
               "--metrics-port", str(canary_port), "--livekit-config", str(config_path)]  # fmt: skip
    node_log = tmp_path / "livekit.log"
    with node(config_path, port, node_log) as first, prometheus(tmp_path, canary_port) as prom:
        canary_log = (tmp_path / "canary.log").open("wb")
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("LIVEKIT_")}
        canary = subprocess.Popen(
            command, cwd=REPO_ROOT, env={**inherited, **env}, stdout=canary_log, stderr=canary_log
        )
        try:
            # Healthy: two passing runs scraped (the second gives the server's counters' first increase), no alert.
            wait_for(
                "two passing runs", lambda: _value(prom, 'lkh_canary_runs_total{result="pass"}') >= 2, 4 * INTERVAL
            )
            time.sleep(2)  # two more evaluations
            assert alerts(prom) == [] and alerts(prom, "pending") == []
            assert _value(prom, "lkh_canary_server_metrics_up") == 1
            assert _value(prom, 'lkh_canary_server_participant_joins_total{state="rtc_connected"}') >= 1
            assert _value(prom, "lkh_canary_gray_failure") == 0

            first.terminate()
            first.wait(10)
            fired = wait_for("the stage alert", lambda: any(a["alertname"] == STAGE_ALERT for a in alerts(prom)),
                             3 * INTERVAL)  # fmt: skip
            failing = {a["stage"] for a in alerts(prom) if a["alertname"] == STAGE_ALERT}
            assert "services" in failing, failing
            # A stopped node refuses its port: a network fault, not a timeout.
            assert _value(prom, 'lkh_canary_stage_failures_total{stage="services",kind="network"}') >= 2
            assert _value(prom, 'lkh_canary_stage_failures_total{stage="services",kind="timeout"}') == 0

            with node(config_path, port, node_log):
                resolved = wait_for("the stage alert resolved",
                                    lambda: not any(a["alertname"] == STAGE_ALERT for a in alerts(prom)),
                                    3 * INTERVAL)  # fmt: skip
                print(f"\ncanary at {INTERVAL:.0f}s: stage alert fired {fired:.1f}s after the node stopped, resolved "
                      f"{resolved:.1f}s after it was ready again")  # fmt: skip
                assert _value(prom, "lkh_canary_worker_registrations_total") >= 2  # the lost worker re-created
                canary.send_signal(signal.SIGTERM)
                stopped = time.monotonic()
                assert canary.wait(20) == 0
                print(f"SIGTERM to exit: {time.monotonic() - stopped:.1f}s")
        finally:
            if canary.poll() is None:
                canary.kill()
                canary.wait(10)
            canary_log.close()
    log = (tmp_path / "canary.log").read_text()
    # livekit-agents logs the lost worker's "failed to connect to livekit" with its traceback: that one is expected.
    assert stack.api_secret not in log
    assert log.count("Traceback") == log.count("RuntimeError: failed to connect to livekit"), log[-3000:]
    assert log.count('"event": "canary run"') >= 5


def _value(prom: str, expr: str) -> float:
    result = query(prom, expr)
    return float(result[0]["value"][1]) if result else 0.0
