"""`python -m agent_runtime` on its own: registers with the real server, and Ctrl-C ends it (no leftover)."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from bootstrap.stack import REPO_ROOT, Stack
from tests.conftest import PY

pytestmark = pytest.mark.integration


def test_standalone_worker_registers_and_stops_on_ctrl_c(stack: Stack) -> None:
    env = {**os.environ, "LIVEKIT_URL": stack.livekit_ws_url, "LIVEKIT_API_KEY": stack.api_key,
           "LIVEKIT_API_SECRET": stack.api_secret, "PYTHONUNBUFFERED": "1"}  # fmt: skip
    worker = subprocess.Popen([PY, "-m", "agent_runtime"], cwd=REPO_ROOT, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        assert worker.stdout is not None
        deadline = time.monotonic() + 30
        for line in worker.stdout:
            if "registered" in line and "AW_" in line:
                break
            assert time.monotonic() < deadline, "worker did not register"
        worker.send_signal(signal.SIGINT)
        assert worker.wait(timeout=15) == 0
    finally:
        if worker.poll() is None:
            worker.kill()


def test_missing_settings_are_named() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIVEKIT_")}
    result = subprocess.run([PY, "-m", "agent_runtime"], cwd="/", env=env, capture_output=True, text=True)
    assert result.returncode == 2
    assert "missing LIVEKIT_URL, LIVEKIT_API_KEY, LIVEKIT_API_SECRET" in result.stderr
