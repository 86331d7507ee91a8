"""A server that stops answering in the middle of a run (frozen, not killed: SIGSTOP, so the kernel still accepts
its connections) is named with its address in the failing stage's cause (issue 25), against REAL livekit-servers:
the stack's (the default run), the paths lab's node (--paths), the remote lab's (--url, behind its TLS front). All
are shared: each is always continued (SIGCONT) before the test ends, pass or fail (tests/frozen_run.py); a cluster
node frozen the same way is in test_cluster_integration.py."""

from __future__ import annotations

import os
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from bootstrap import runner
from devstack import native, paths_lab, paths_node, remote_lab
from devstack.stack_env import Stack, load_stack
from tests.conftest import run_module
from tests.frozen_run import run_frozen_after_worker

pytestmark = pytest.mark.faults
# The run's --timeout: its stages end 5 s before it (the worker registers within about 0.5 s of the start), the
# explanation and the cleanup take the rest, and the cleanup may overrun it by runner.CLEANUP_MIN at most.
TIMEOUT = 8
PATHS_TIMEOUT = TIMEOUT + 3  # a --paths run's worker registers ~2.5 s in, not ~0.5 s (it is a process of its own)


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
    # Its worker starts in a process of its own on the node host (bootstrap.hosted_worker): registered ~2.5 s in.
    run = run_frozen_after_worker(pid, "--paths", "udp", "--timeout", str(PATHS_TIMEOUT))
    node = f"{paths_lab.hosts(paths_lab_up).node_address}:{paths_lab_up.paths_node_port}"
    failed = run.failed
    assert failed["name"] == "path udp", run.report["stages"]
    assert failed["cause"].startswith(f"the paths lab's node at {node} is not answering: it accepts"), failed
    assert failed["kind"] == "network" and str(paths_lab.node_log()) in failed["fix"]
    assert run.waited <= PATHS_TIMEOUT + runner.CLEANUP_MIN, f"the run ended {run.waited:.1f} s after the freeze"


@pytest.fixture(scope="module")
def remote_lab_ca(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The remote lab up (made here when it was down, and then taken down again), its CA as a user gets it."""
    started_here = remote_lab.why_down(load_stack()) is not None
    result = run_module("devstack", "remote-lab-up", timeout=300)
    assert result.returncode == 0, f"the remote lab did not come up:\n{result.stderr}"
    copy = tmp_path_factory.mktemp("ca") / "ca.pem"
    copy.write_bytes(remote_lab.ca_cert().read_bytes())
    yield copy
    if started_here:
        run_module("devstack", "remote-lab-down")


@pytest.mark.skipif(os.geteuid() != 0, reason="the remote lab's hosts are network namespaces: needs root (as CI runs)")
def test_the_deployment_frozen_mid_run_is_named_with_its_address(remote_lab_ca: Path) -> None:
    """--url: the deployment's livekit-server (behind its TLS front, which still answers TLS) frozen once the
    worker registered with it: named by the URL's host and port, from the lab's client host."""
    stack = load_stack()
    pid = remote_lab._node(stack).running_pid()  # the lab's own node service (private: tests only read its pid)
    assert pid is not None
    key, secret = remote_lab.credentials()
    url = remote_lab.url()
    run = run_frozen_after_worker(pid, "--env-file", "/nonexistent/.env", "--url", url, "--ca-file", str(remote_lab_ca),
                                  "--timeout", str(TIMEOUT), on_host=lambda argv: remote_lab.client_argv(stack, argv),
                                  env={"LIVEKIT_API_KEY": key, "LIVEKIT_API_SECRET": secret})  # fmt: skip
    failed = run.failed
    assert failed["name"] == "join", run.report["stages"]
    host = url.removeprefix("wss://")
    assert failed["cause"].startswith(f"the deployment at {host}:443 is not answering: it accepts"), failed
    assert failed["kind"] == "network" and "kubectl logs" in failed["fix"]
    assert run.waited <= TIMEOUT + runner.CLEANUP_MIN, f"the run ended {run.waited:.1f} s after the freeze"
