"""What a run changes in the paths lab goes through the lab's one lock (devstack.paths_lab), as configure_node and
restore do: a path's firewall (`restrict`), injected loss (`impair`, `clear_impairment`) and a run's start
(`start_run`), never taken twice (the lock is flock on a file: taken again by the same process, it waits for
itself). No namespace is touched: the lab's firewall and nft calls are recorded instead."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from devstack import impairment, netns, paths_lab
from devstack.impairment import Impairment
from devstack.stack_env import load_stack

pytestmark = pytest.mark.unit


class FakeLock:
    """The lab's lock as a flag: a change made while it is not held, or a second taking, is recorded."""

    def __init__(self) -> None:
        self.held = False
        self.calls: list[tuple[str, bool]] = []

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        assert not self.held, "the lab's lock taken while already held: it would wait for itself"
        self.held = True
        try:
            yield
        finally:
            self.held = False

    def record(self, name: str, result: Any = None) -> Callable[..., Any]:
        def change(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((name, self.held))
            return result

        return change


@pytest.fixture
def lock(monkeypatch: pytest.MonkeyPatch) -> FakeLock:
    fake = FakeLock()
    monkeypatch.setattr(paths_lab, "LAB", fake)
    monkeypatch.setattr(netns, "restrict", fake.record("restrict"))
    monkeypatch.setattr(impairment, "apply", fake.record("apply"))
    monkeypatch.setattr(impairment, "clear", fake.record("clear", True))
    monkeypatch.setattr(paths_lab, "_ensure_node", fake.record("node", False))
    return fake


@pytest.mark.parametrize(
    ("change", "calls"),
    [
        (lambda stack: paths_lab.restrict(stack, block_udp=True), ["restrict"]),
        (lambda stack: paths_lab.impair(stack, Impairment("loss", 5)), ["apply", "apply"]),
        (paths_lab.clear_impairment, ["clear", "clear"]),
        (paths_lab.start_run, ["restrict", "clear", "clear"]),
        (paths_lab.restore, ["restrict", "clear", "clear", "node"]),
    ],
    ids=["restrict", "impair", "clear_impairment", "start_run", "restore"],
)
def test_each_change_to_the_lab_holds_its_lock_once(
    lock: FakeLock, change: Callable[[Any], object], calls: list[str]
) -> None:
    change(load_stack())
    assert lock.calls == [(name, True) for name in calls]


def test_a_runs_start_names_the_hosts_it_removed_an_impairment_from(lock: FakeLock) -> None:
    lab = paths_lab.hosts(load_stack())
    assert paths_lab.start_run(load_stack()) == [lab.client.namespace, lab.node.namespace]
