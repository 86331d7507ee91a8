"""The canary against the remote lab (make remote-lab-up: a deployment this code did not configure, reached only as
wss://lk.remote.test through a TLS front): `--canary --url` on the lab's client host runs the remote mode's
verification on a schedule with its own kept worker, and SIGTERM-free `--runs 2` ends it with exit 0."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack import remote_lab
from devstack.stack_env import load_stack
from tests.conftest import PY, run_module

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab's hosts are network namespaces: needs root (as CI runs)"),
]
STACK = load_stack()


@pytest.fixture(scope="module")
def remote_lab_up() -> Iterator[None]:
    """`make remote-lab-up` once (reused when it is up already); down afterwards if this made it."""
    started_here = remote_lab.why_down(STACK) is not None
    result = run_module("devstack", "remote-lab-up", timeout=300)
    assert result.returncode == 0, f"the remote lab did not come up:\n{result.stderr}"
    yield
    if started_here:
        run_module("devstack", "remote-lab-down")


def test_the_canary_runs_against_the_remote_lab(remote_lab_up: None, tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_bytes(remote_lab.ca_cert("healthy").read_bytes())
    key, secret = remote_lab.credentials()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIVEKIT_")}
    env |= {"LIVEKIT_API_KEY": key, "LIVEKIT_API_SECRET": secret}
    argv = ["timeout", "-k", "5", "90", PY, "-m", "bootstrap", "--canary", "--url", remote_lab.url(), "--ca-file",
            str(ca), "--env-file", "/nonexistent/.env", "--interval", "3", "--jitter", "0", "--runs", "2",
            "--metrics-port", "0"]  # fmt: skip
    done = subprocess.run(remote_lab.client_argv(STACK, argv), capture_output=True, text=True, env=env, timeout=110)
    assert done.returncode == 0, done.stderr[-3000:]
    assert secret not in done.stdout + done.stderr
    lines = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    runs = [line for line in lines if line.get("event") == "canary run"]
    assert [r["result"] for r in runs] == ["pass", "pass"], done.stderr[-3000:]
    workers = [line["detail"] for line in lines if line.get("event") == "stage passed" and line["stage"] == "worker"]
    assert workers[0].startswith("registered ") and workers[1].startswith("AW_") and "still registered" in workers[1]
    assert "-canary-" in workers[1]  # its own agent name, kept between runs
