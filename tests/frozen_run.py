"""A bootstrap run whose server is frozen in the middle (tests/test_frozen_server.py, test_cluster_integration.py):
`python -m bootstrap --json --verbose ARGS` started, the server SIGSTOPped as soon as its log says the worker
registered (from then on the kernel still accepts the server's connections, but nothing answers), and ALWAYS
continued again (SIGCONT) before this returns or raises: the stack and the cluster are shared."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from devstack.stack_env import REPO_ROOT
from tests.conftest import PY


@dataclass(frozen=True)
class FrozenRun:
    report: dict[str, Any]
    waited: float  # seconds from the freeze until the run ended

    @property
    def failed(self) -> dict[str, Any]:
        """The one stage that failed (the others passed before the freeze, or were skipped after it)."""
        failed: list[dict[str, Any]] = [s for s in self.report["stages"] if s["status"] == "fail"]
        assert len(failed) == 1, self.report["stages"]
        return failed[0]


def worker_registered(line: str) -> bool:
    """A --verbose log line (JSON: stderr is a pipe) saying the worker stage passed."""
    try:
        record = json.loads(line)
    except ValueError:
        return False
    return bool(record.get("event") == "stage passed" and record.get("stage") == "worker")


def run_frozen_after_worker(
    pid: int, *args: str, env: dict[str, str] | None = None, on_host: Callable[[list[str]], list[str]] = list
) -> FrozenRun:
    """The run (its command line wrapped by `on_host`: e.g. run on a lab's client host), with process `pid`
    frozen once the worker registered; raises if it never got that far."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("LIVEKIT_")}
    argv = on_host([PY, "-m", "bootstrap", "--json", "--verbose", *args])
    run = subprocess.Popen(argv, cwd=REPO_ROOT, text=True,
                           env={**inherited, "PYTHONUNBUFFERED": "1", **(env or {})},
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    frozen_at = 0.0
    try:
        assert run.stderr is not None
        for line in run.stderr:
            if worker_registered(line):
                os.kill(pid, signal.SIGSTOP)
                frozen_at = time.monotonic()
                break
        out, err = run.communicate(timeout=60)
    finally:
        os.kill(pid, signal.SIGCONT)  # harmless when it was never stopped
        if run.poll() is None:
            run.kill()
            run.communicate()
    assert frozen_at, f"the worker never registered: the run did not get as far as the fault\n{out}\n{err}"
    return FrozenRun(json.loads(out), time.monotonic() - frozen_at)
