"""Every configuration error is an exit 2 with one JSON object under --json (#15), and a report is printed
before any JUnit file is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from devstack.stack_env import LIVEKIT_YAML
from tests.conftest import run_module

pytestmark = pytest.mark.faults


def error_report(*args: str) -> tuple[int, dict[str, object], str]:
    result = run_module("bootstrap", "--json", *args, timeout=60)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout
    return result.returncode, json.loads(lines[0]), result.stderr


def test_an_out_of_range_webhook_port_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "livekit.yaml"
    config.write_text(LIVEKIT_YAML.read_text().replace("host.docker.internal:8000", "host.docker.internal:70000"))
    code, report, stderr = error_report("--livekit-config", str(config))
    assert (code, report["status"]) == (2, "error")
    assert "70000" in str(report["error"]) and "1-65535" in stderr


def test_junit_pointing_at_a_directory_exits_2_before_anything_runs(tmp_path: Path) -> None:
    code, report, stderr = error_report("--junit", str(tmp_path))
    assert (code, report["status"]) == (2, "error")
    assert "is a directory" in stderr


def test_a_usage_error_under_json_is_one_json_object_too() -> None:
    code, report, stderr = error_report("--load", "-1")
    assert (code, report["status"]) == (2, "error")
    assert "--load must be >= 0" in str(report["error"]) and "usage:" in stderr


def test_a_broken_stack_env_exits_2_with_one_json_object(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from bootstrap import __main__ as cli
    from devstack.stack_env import StackEnvError

    def broken() -> None:
        raise StackEnvError("stack.env: LIVEKIT_PORT='x' is not a port (1-65535); restore it from git")

    monkeypatch.setattr(cli, "load_stack", broken)
    assert cli.main(["--json"]) == 2
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and json.loads(out[0])["error"].startswith("stack.env: LIVEKIT_PORT='x' is not a port")
