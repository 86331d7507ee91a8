"""The interpreter the service accounts run Python with, and the way a process becomes one of them.

The project's own `.venv` links to whatever Python uv found, which on this kind of machine is pyenv's under
/root (0700): no service account can execute it. `make install` therefore also builds `.venv-services`, the
same lock installed for Debian's /usr/bin/python3 (uv cannot download a Python here), root-owned and 0755
under the checkout. Every participant, agent and browser a run starts in a process of its own runs as an
unprivileged account with it; where it cannot be had, the run says so and fails — never a silent root.
"""

from __future__ import annotations

import os
import pwd
import shutil
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from devstack.install import ensure_service_user
from devstack.native import StackError, check_reachable
from devstack.processes import Account
from devstack.stack_env import REPO_ROOT

SERVICE_VENV = REPO_ROOT / ".venv-services"
INTERPRETER = SERVICE_VENV / "bin" / "python"
AGENT_ACCOUNT = "livekit-agent"  # a worker on a host of its own: it holds the API secret, nothing else
CLIENT_ACCOUNT = "livekit-client"  # a participant on a client host: it holds a participant token, nothing else


class ServicePythonError(RuntimeError):
    """No interpreter the account can run; the message names what is missing and the fix."""


def account(name: str) -> Account:
    """The service account `name` (created when missing; needs root)."""
    entry = pwd.getpwnam(ensure_service_user(name))
    return Account(entry.pw_name, entry.pw_uid, entry.pw_gid)


def interpreter_for(user: Account) -> Path:
    """The service interpreter, after checking `user` can reach and run it."""
    if not INTERPRETER.exists():
        raise ServicePythonError(
            f"{INTERPRETER} is missing, so no service account can run Python: run `make install` (it builds it "
            f"from Debian's python3)"
        )
    try:
        check_reachable(INTERPRETER, user)
    except StackError as exc:
        raise ServicePythonError(str(exc)) from None
    return INTERPRETER


def become(user: Account) -> list[str]:
    """The argv prefix that runs a command as `user` from root (one pid: setpriv execs it): no supplementary
    groups, no capabilities it could inherit or regain, and no new privileges through setuid binaries."""
    return [
        "setpriv", f"--reuid={user.uid}", f"--regid={user.gid}", "--clear-groups",
        "--no-new-privs", "--inh-caps=-all", "--bounding-set=-all", "--",
    ]  # fmt: skip


@dataclass(frozen=True)
class Unprivileged:
    """A Python process of its own for `user` (None: this process is not root, so it runs as ourselves): the
    interpreter it can run, and a scratch HOME and working directory of its own (no .env of ours to read),
    removed by `remove()` when the process has ended."""

    user: Account | None
    python: Path
    home: Path

    def argv(self, module: str) -> list[str]:
        prefix = become(self.user) if self.user is not None else []
        return [*prefix, str(self.python), "-m", module]

    def remove(self) -> None:
        # rmtree neither follows a symlink in HOME nor HOME itself replaced by one (it refuses that).
        shutil.rmtree(self.home, ignore_errors=True)


def unprivileged(account_name: str, purpose: str, files: Mapping[str, Path] | None = None) -> Unprivileged:
    """Set up a process of its own as `account_name` (ServicePythonError when it cannot run Python), with
    `files` (name in its HOME → the file to copy there, readable by all) placed before the hand-over: from the
    chown on, whoever acts as that account may replace anything in HOME, HOME itself included, so root writes
    no path in it any more."""
    user = account(account_name) if os.geteuid() == 0 else None
    python = interpreter_for(user) if user is not None else Path(sys.executable)
    home = Path(tempfile.mkdtemp(prefix=f"{purpose}-"))  # ours, 0700, until the hand-over below
    try:
        _place(home, files or {})
    except OSError:
        shutil.rmtree(home, ignore_errors=True)
        raise
    if user is not None:
        os.chown(home, user.uid, user.gid, follow_symlinks=False)
    return Unprivileged(user, python, home)


def _place(home: Path, files: Mapping[str, Path]) -> None:
    """Each file copied into `home` as a new file (O_EXCL | O_NOFOLLOW: never through something already there),
    0644 whatever our umask; root keeps owning it."""
    for name, source in files.items():
        data = source.read_bytes()
        fd = os.open(home / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as copy:
            copy.write(data)
            os.fchmod(fd, 0o644)
