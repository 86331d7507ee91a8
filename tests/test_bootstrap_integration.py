"""The bootstrap against the REAL stack: a full PASS, and the failures a user will meet, each at the
right stage with its cause."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from bootstrap import runner
from bootstrap.context import RunContext
from bootstrap.result import Status
from bootstrap.stages import STAGES
from devstack.stack_env import Stack
from tests.conftest import bootstrap_report, extra_livekit, make_context, run_module, stages_with

pytestmark = pytest.mark.integration


def stage(report: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in report["stages"] if s["name"] == name)


def test_full_pass_with_json_and_junit(stack: Stack, tmp_path: Path) -> None:
    junit = tmp_path / "bootstrap.xml"
    code, report = bootstrap_report("--junit", str(junit))
    assert code == 0, report
    assert report["status"] == "pass"
    assert [(s["name"], s["status"]) for s in report["stages"]] == [(s.name, "pass") for s in STAGES]
    assert stage(report, "worker")["detail"].startswith("registered AW_")
    assert "agent-AJ_" in stage(report, "dispatch")["detail"]
    suite = ET.parse(junit).getroot()
    assert (suite.get("tests"), suite.get("failures")) == (str(len(STAGES)), "0")
    media = report["media"]
    assert media["data"]["reliable_back"] == media["data"]["reliable_sent"] == 100
    assert media["data"]["reliable_in_order"] is True
    assert media["audio"]["lost_after_setup"] == 0 and media["audio"]["timed_markers"] >= 10
    assert media["audio"]["agent_heard"]["peak_rms"] > 0


def test_human_report_passes_and_says_so(stack: Stack) -> None:
    result = run_module("bootstrap", "--verbose", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1].startswith(f"PASS  {len(STAGES)}/{len(STAGES)} stages passed in ")
    assert "stage passed" in result.stderr  # --verbose logs each stage


def test_wrong_api_secret_fails_at_worker_with_key_mismatch(stack: Stack) -> None:
    code, report = bootstrap_report(env={"LIVEKIT_API_SECRET": "wrong-secret-" + "x" * 30})
    assert code == 1
    worker = stage(report, "worker")
    assert worker["status"] == "fail"
    assert worker["cause"] == (
        "HTTP 401 from http://localhost:7880: the API key/secret in .env do not match `keys` in docker/livekit.yaml"
    )
    assert [s["status"] for s in report["stages"][2:]] == ["skipped"] * (len(STAGES) - 2)


def test_config_error_exits_2_listing_every_problem(stack: Stack) -> None:
    result = run_module("bootstrap", env={"LIVEKIT_URL": "localhost:7880", "LIVEKIT_API_KEY": " "}, timeout=60)
    assert result.returncode == 2
    assert "LIVEKIT_API_KEY is not set" in result.stderr
    assert "has no ws://, wss://, http:// or https:// scheme" in result.stderr


async def test_worker_not_running_fails_dispatch(stack: Stack) -> None:
    async def no_worker(ctx: RunContext) -> str:
        return "worker deliberately not started"

    ctx = make_context(timeout=15)
    result = await runner.run(ctx, stages_with(worker=no_worker))
    dispatch = next(s for s in result.stages if s.name == "dispatch")
    assert dispatch.status is Status.FAIL
    assert dispatch.cause == f"dispatch of {ctx.agent_name!r} is pending but no worker is running to take it"
    assert result.stages[-1].status is Status.SKIPPED


def test_wrong_webhook_url_fails_webhooks(stack: Stack, tmp_path: Path) -> None:
    def point_webhooks_elsewhere(config: dict[str, Any]) -> None:
        config["webhook"]["urls"] = ["http://127.0.0.1:9/api/webhooks/livekit"]  # discard port: nobody there

    with extra_livekit(tmp_path, point_webhooks_elsewhere) as url:
        code, report = bootstrap_report("--timeout", "12", env={"LIVEKIT_URL": url})
    assert code == 1
    webhooks = stage(report, "webhooks")
    assert webhooks["status"] == "fail", report
    assert webhooks["cause"].startswith("missing verified webhooks for bootstrap-")
    assert "(:8000 verified 0 event(s) for this room" in webhooks["cause"]
    assert "webhook.urls in docker/livekit.yaml" in webhooks["fix"]
    assert [s["status"] for s in report["stages"][:-1]] == ["pass"] * (len(STAGES) - 1)
