"""A server that stops answering in the middle of a run (frozen, not killed: SIGSTOP, so the kernel still accepts
its connections) is named with its address in the failing stage's cause (issue 25), against REAL livekit-servers:
the stack's (the default run) and the paths lab's node (--paths). Both are shared: each is always continued
(SIGCONT) before the test ends, pass or fail (tests/frozen_run.py); a cluster node frozen the same way is in
test_cluster_integration.py."""

from __future__ import annotations

import os
import urllib.request

import pytest

from bootstrap import runner
from devstack import native, paths_lab, paths_node
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


@pytest.mark.skipif(os.geteuid() != 0, reason="the paths lab's hosts are network namespaces: needs root (as CI runs)")
def test_the_paths_lab_node_frozen_mid_run_is_named_with_its_address(paths_lab_up: Stack) -> None:
    """--paths: its lab's node (not the stack's) frozen once the worker registered with it, the path named."""
    pid = paths_node.service(paths_lab_up, {}).running_pid()
    assert pid is not None
    run = run_frozen_after_worker(pid, "--paths", "udp", "--timeout", str(TIMEOUT))  # registered ~0.2 s in
    node = f"{paths_lab.hosts(paths_lab_up).node_address}:{paths_lab_up.paths_node_port}"
    failed = run.failed
    assert failed["name"] == "path udp", run.report["stages"]
    assert failed["cause"].startswith(f"the paths lab's node at {node} is not answering: it accepts"), failed
    assert failed["kind"] == "network" and str(paths_lab.node_log()) in failed["fix"]
    assert run.waited <= TIMEOUT + runner.CLEANUP_MIN, f"the run ended {run.waited:.1f} s after the freeze"
