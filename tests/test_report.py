"""The report renderers: human table, one JSON object, JUnit XML."""

import json
import xml.etree.ElementTree as ET

import pytest

from bootstrap.report import render_json, render_junit, render_text
from bootstrap.result import RunResult, StageResult, Status
from bootstrap.stages import STAGES

STAGE_NAMES = [s.name for s in STAGES]
N = len(STAGE_NAMES)

pytestmark = pytest.mark.unit


def _result(fail_at: str | None = None) -> RunResult:
    stages, failed = [], False
    for name in STAGE_NAMES:
        if failed:
            stages.append(StageResult(name, Status.SKIPPED))
        elif name == fail_at:
            stages.append(StageResult(name, Status.FAIL, 1.5, "", "HTTP 401 from http://x", "fix the keys"))
            failed = True
        else:
            stages.append(StageResult(name, Status.PASS, 0.25, f"{name} ok"))
    return RunResult(stages, 2.0)


def test_text_pass() -> None:
    text = render_text(_result())
    assert text.splitlines()[-1] == f"PASS  {N}/{N} stages passed in 2.00s"
    assert text.count("✓") == N


def test_text_fail_shows_cause_fix_and_skips() -> None:
    lines = render_text(_result("worker")).splitlines()
    assert lines[-1] == f"FAIL  1/{N} stages passed in 2.00s"
    worker = next(i for i, line in enumerate(lines) if "✗ worker" in line)
    assert lines[worker + 1].strip() == "cause: HTTP 401 from http://x"
    assert lines[worker + 2].strip() == "fix:   fix the keys"
    assert sum("skipped" in line for line in lines) == N - 2


def test_json_shape() -> None:
    data = json.loads(render_json(_result("join")))
    assert data["status"] == "fail"
    assert [s["name"] for s in data["stages"]] == STAGE_NAMES
    assert [s["status"] for s in data["stages"]] == ["pass", "pass", "pass", "fail"] + ["skipped"] * (N - 4)
    assert set(data["stages"][0]) == {"name", "status", "seconds", "detail", "cause", "fix", "kind"}


def test_junit_counts_and_failure_text() -> None:
    suite = ET.fromstring(render_junit(_result("dispatch")).split("\n", 1)[1])
    skipped = N - STAGE_NAMES.index("dispatch") - 1
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == (str(N), "1", str(skipped))
    failure = suite.find("testcase[@name='dispatch']/failure")
    assert failure is not None and failure.get("message") == "HTTP 401 from http://x"
    assert "fix: fix the keys" in (failure.text or "")


def test_empty_run_is_not_a_pass() -> None:
    assert not RunResult([], 0.0).passed


def test_a_warning_passes_and_shows_its_cause_and_kind() -> None:
    """WARN (issue 25): the run passes (exit 0) and says so, the stage's cause, fix and kind shown, in JSON too."""
    stages = [
        StageResult("endpoint", Status.PASS, 0.1, "ok"),
        StageResult("keys", Status.WARN, 0.1, "clock 900 s behind", "tokens under 840 s fail", "sync", "clock"),
    ]
    result = RunResult(stages, 1.0)
    assert result.passed and result.status is Status.WARN
    text = render_text(result)
    assert "! keys" in text and "cause: tokens under 840 s fail  [clock]" in text
    assert text.splitlines()[-1] == "PASS with 1 warning  1/2 stages passed in 1.00s"
    data = json.loads(render_json(result))
    assert data["status"] == "warn" and data["stages"][1]["kind"] == "clock"
