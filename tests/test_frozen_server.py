"""A server that stops answering in the middle of a run (frozen, not killed: SIGSTOP, so the kernel still accepts
its connections) is named with its address in the failing stage's cause (issue 25), against the stack's REAL
livekit-server. The stack is shared: it is always continued (SIGCONT) before the test ends, pass or fail
(tests/frozen_run.py); the cluster's node frozen the same way is in test_cluster_integration.py."""

from __future__ import annotations

import urllib.request

import pytest

from bootstrap import runner
from devstack import native
from devstack.stack_env import Stack
from tests.frozen_run import run_frozen_after_worker

pytestmark = pytest.mark.faults
# The run's --timeout: its stages end 5 s before it (the worker registers within about 0.5 s of the start), the
# explanation and the cleanup take the rest, and the cleanup may overrun it by runner.CLEANUP_MIN at most.
TIMEOUT = 8


def livekit_pid(stack: Stack) -> int:
    """The stack's livekit-server, as devstack's pid file records it (checked to be still that process)."""
    pid = next(s for s in native.services(stack) if s.name == "livekit").running_pid()
    assert pid is not None, "the stack's livekit-server is not one devstack started (Compose?)"
    return pid


def server_ready(stack: Stack) -> bool:
    with urllib.request.urlopen(f"{stack.livekit_http_url}/", timeout=2) as response:
        return bool(response.status == 200)


def test_a_server_frozen_mid_run_is_named_with_its_address(stack: Stack) -> None:
    url = {"LIVEKIT_URL": stack.livekit_ws_url}
    run = run_frozen_after_worker(livekit_pid(stack), "--timeout", str(TIMEOUT), env=url)
    failed = run.failed
    assert failed["name"] == "join", run.report["stages"]  # the first stage after the freeze that asks the server
    assert failed["cause"].startswith(
        f"the LiveKit server at 127.0.0.1:{stack.livekit_port} is not answering: it accepts connections"
    ), failed
    assert "(what the stage saw: join did not finish within" in failed["cause"]
    assert failed["kind"] == "network" and "kill -CONT" in failed["fix"] and "`make logs`" in failed["fix"]
    assert run.waited <= TIMEOUT + runner.CLEANUP_MIN, f"the run ended {run.waited:.1f} s after the freeze"
    assert server_ready(stack), "the stack's server did not answer again after SIGCONT"
