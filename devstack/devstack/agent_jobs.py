"""livekit-agents' job processes as the agent's service account when the process that holds the worker is root.

A worker with jobs in processes (load mode's, the canary's kept worker) lives in the bootstrap's own process,
which may run as root (here, and in CI). Its job processes come from multiprocessing's forkserver, a child of that
process started with multiprocessing's executable. `unprivileged_jobs()` points that executable at a wrapper that
execs the service interpreter as `livekit-agent` (service_python.become: no groups, no capabilities, no new
privileges), so the forkserver, and every job forked from it, is never root. The forkserver preloads
devstack.agent_job_forkserver, which refuses to serve as root and gives each job the service interpreter's own
module path (the worker's points under /root, which the account cannot read).
"""

from __future__ import annotations

import multiprocessing
import os
import pwd
import shlex
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from devstack.service_python import AGENT_ACCOUNT, account, become, interpreter_for

FORKSERVER_PRELOAD = "devstack.agent_job_forkserver"
# Imported once in the forkserver, after it has refused root, so each job forks with the echo agent and
# livekit-agents loaded rather than importing them at its start, on CPU the other rooms' audio needs: measured in
# `--load 12 --concurrency 4` runs on 2 cores, a room lost an audio marker in 4 runs of 11 without it, 1 of 8 with
# it (0 of 8 before jobs left root; that residue is noted in docs/scaling.md).
AGENT_PRELOAD = "agent_runtime.agent"


@dataclass(frozen=True)
class UnprivilegedJobs:
    """What a worker needs for job processes that are not root: `preload` for its forkserver (empty when this
    process is not root: its jobs run as ourselves, as they always did), and the wrapper's directory to remove
    once the worker is closed (a forkserver already started keeps running without it)."""

    preload: tuple[str, ...] = ()
    wrapper_dir: Path | None = None
    ca_dir: Path | None = None  # the jobs' readable copy of SSL_CERT_FILE, when this process trusts one

    def remove(self) -> None:
        for directory in (self.wrapper_dir, self.ca_dir):
            if directory is not None:
                shutil.rmtree(directory, ignore_errors=True)


def unprivileged_jobs(account_name: str = AGENT_ACCOUNT) -> UnprivilegedJobs:
    """When root: multiprocessing's executable set to a wrapper running the service interpreter as
    `account_name` (ServicePythonError, naming `make install`, when it cannot run it). Call it before the worker
    starts its first job process: the forkserver is started once, with the executable set at that moment."""
    if os.geteuid() != 0:
        return UnprivilegedJobs()
    user = account(account_name)
    python = interpreter_for(user)
    # Root runs the wrapper: a directory of root's own (0700), never one the account could write to.
    wrapper_dir = Path(tempfile.mkdtemp(prefix="agent-jobs-"))
    wrapper = wrapper_dir / "python"
    # `cd /` and the account's own HOME: no checkout of ours (.env) as the jobs' working directory.
    home = shlex.quote(pwd.getpwuid(user.uid).pw_dir)
    ca_dir, trust = _readable_ca()
    script = f'#!/bin/sh\ncd / && HOME={home} {trust}exec {shlex.join([*become(user), str(python)])} "$@"\n'
    fd = os.open(wrapper, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o700)
    with os.fdopen(fd, "w") as out:
        out.write(script)
    multiprocessing.set_executable(str(wrapper))
    return UnprivilegedJobs((FORKSERVER_PRELOAD, AGENT_PRELOAD), wrapper_dir, ca_dir)


def _readable_ca() -> tuple[Path | None, str]:
    """The CA this process trusts through SSL_CERT_FILE (remote mode's --ca-file), copied where the account can
    read it (its own path may sit in a directory only root enters, e.g. pytest's): the copy's directory and the
    wrapper's assignment pointing the jobs at it. Root writes the copy into a directory of its own before
    opening that directory to others: nothing in it is ever the account's."""
    original = os.environ.get("SSL_CERT_FILE")
    if not original:
        return None, ""
    ca_dir = Path(tempfile.mkdtemp(prefix="agent-jobs-ca-"))
    copy = ca_dir / "ca.pem"
    fd = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(Path(original).read_bytes())
        os.fchmod(out.fileno(), 0o644)  # whatever the umask
    ca_dir.chmod(0o755)
    return ca_dir, f"SSL_CERT_FILE={shlex.quote(str(copy))} "
