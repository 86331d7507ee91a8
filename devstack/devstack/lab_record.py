"""What every lab this checkout makes on this machine (the cluster, the paths lab, the remote lab) keeps the same
way: one lock, held by whatever changes the lab, and a record of the namespaces and links it created, written
before any of them exists, which is all its sweep ever removes (never a wildcard: another lab's, or a
neighbour's, link may share the prefix)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from devstack import local_ca, netns, root_guard
from devstack.native import StackError
from devstack.safe_files import ensure_dir, read_private, write_private
from devstack.stack_env import RUNTIME_DIR, Stack

LOCK_WAIT = 60.0  # making a lab takes about 1 s, restarting its node under 1 s: longer means a stuck holder
# What making a lab can fail with, said as the lab's own StackError (anything else is a bug: raised as it is).
SETUP_ERRORS = (netns.NetnsError, root_guard.RootGuardError, local_ca.LocalCaError, OSError)


@dataclass(frozen=True)
class LabRecord:
    """The lab `name`'s lock (.runtime/NAME-lab.lock) and record (.runtime/NAME-lab.json)."""

    name: str

    @property
    def lock_file(self) -> Path:
        return RUNTIME_DIR / f"{self.name}-lab.lock"

    @property
    def record_file(self) -> Path:
        return RUNTIME_DIR / f"{self.name}-lab.json"

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """The lab's one lock, waited for up to LOCK_WAIT; released however the process ends."""
        ensure_dir(RUNTIME_DIR, mode=0o755, uid=os.geteuid(), gid=os.getegid())
        with open(self.lock_file, "a") as handle:
            deadline = time.monotonic() + LOCK_WAIT
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise StackError(
                            f"another up or down of the {self.name} lab holds {self.lock_file} for over "
                            f"{LOCK_WAIT:.0f}s"
                        ) from None
                    time.sleep(0.1)
            yield  # closing the file releases the lock

    def record(self, lan: netns.Lan, hosts: list[netns.LanHost]) -> None:
        """Before anything exists: a run killed half-way through making the lab is swept all the same. Names that
        already exist were made by someone else (this checkout's sweep has just run): refused, never taken over."""
        created = {
            "namespaces": [host.namespace for host in hosts],
            "links": [lan.bridge, *(host.link for host in hosts)],
        }
        if taken := sorted(set(created["namespaces"]) & set(netns.namespaces())
                           | set(created["links"]) & set(netns.links())):  # fmt: skip
            raise StackError(
                f"the {self.name} lab's {', '.join(taken)} already exist(s) and {self.record_file} does not name "
                "them: another checkout's lab is up on this machine (run `make down` there), or a run of an older "
                f"version left them (remove them with `ip netns del` / `ip link del`)"
            )
        write_private(self.record_file, json.dumps(created) + "\n")

    def remove_recorded(self, stack: Stack) -> list[str]:
        """Exactly the namespaces and links the record names, whichever of them exist; then the record, and the
        root guard rewritten for the labs still up. Returns what it removed (a host's own link goes unsaid)."""
        try:
            record = json.loads(read_private(self.record_file) or "{}")
        except ValueError:
            record = {}
        removed = []
        namespaces, links = netns.namespaces(), netns.links()
        for namespace in record.get("namespaces", []):
            if namespace in namespaces:
                removed.append(namespace)
            netns.remove_namespace(namespace)
        for link in record.get("links", []):
            if link in links:
                netns.remove_link(link)
                removed.append(link)
        self.record_file.unlink(missing_ok=True)
        if shutil.which("nft"):
            root_guard.update(stack)
        return [name for name in removed if not name.endswith("-h")]

    def made_afresh(self, sweep: Callable[[], list[str]], create: Callable[[], None]) -> list[str]:
        """What an earlier, incomplete lab left swept, then the lab made; half-made is swept again. Returns what
        the first sweep removed."""
        removed = sweep()
        try:
            create()
        except BaseException as exc:
            sweep()
            if isinstance(exc, SETUP_ERRORS):
                raise StackError(f"the {self.name} lab could not be made: {exc}") from exc
            raise
        return removed

    def down(self, sweep: Callable[[], list[str]], *, quiet: bool, left_up: str) -> None:
        """`sweep` under the lab's lock, saying what it removed; without root (its hosts are network namespaces)
        nothing is removed and, if the lab is recorded, `left_up` is said with the record's path."""
        if netns.missing_capability() is not None or not shutil.which("ip"):
            if self.record_file.exists() and not quiet:
                print(f"  {left_up} left up: removing it needs root ({self.record_file})", file=sys.stderr)
            return
        with self.locked():
            for removed in sweep():
                if not quiet:
                    print(f"  removed   {removed}", file=sys.stderr)
