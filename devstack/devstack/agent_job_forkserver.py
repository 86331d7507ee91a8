"""Imported in livekit-agents' forkserver only (its preload list, devstack.agent_jobs): never serve jobs as root,
and give each job this interpreter's module path.

A job forked from the forkserver applies what its worker sent (multiprocessing.spawn.prepare): the worker's
sys.path (its interpreter's, under /root, which this account cannot read: a job's first import of a module not
already loaded would fail), its working directory (the checkout, .env and all) and its `__main__` (the whole
bootstrap CLI, imported again in every job). The job's target and arguments are pickled by reference to modules
of their own, so none of the three is needed: each job keeps the forkserver's path, working directory and main.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from multiprocessing import spawn
from typing import Any

if os.getuid() == 0 or os.geteuid() == 0:
    # Raised out of the preload, this ends the forkserver: every job start then fails, none runs as root.
    raise SystemExit("agent job processes must not run as root: the forkserver was not started as livekit-agent")

OWN_PATH = list(sys.path)
NOT_APPLIED = ("dir", "init_main_from_name", "init_main_from_path")
_prepare = spawn.prepare


def prepare(data: Mapping[str, Any]) -> None:
    kept = {key: value for key, value in data.items() if key not in NOT_APPLIED}
    _prepare({**kept, "sys_path": OWN_PATH})


spawn.prepare = prepare
