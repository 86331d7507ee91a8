"""The cluster is a lab like the others (devstack.lab_record): its sweep removes only what its record names, never
what merely shares its `lkh-c-` prefix (another checkout's cluster, a neighbour's link); it refuses to take over a
name it did not record; and its lifecycle calls take one lock, so two never interleave.

Unit tests: `ip` answers from a fake machine (FakeMachine), the services are never really stopped and the root
guard never written: nothing on this machine is touched."""

from __future__ import annotations

import itertools
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from devstack import install, lab_record, native, native_cluster, netns, nodes, root_guard
from devstack.native import StackError
from devstack.stack_env import Stack, load_stack

pytestmark = pytest.mark.unit
STACK = load_stack()
STRANGERS = {"lkh-c-other"}  # a namespace named like the cluster's, made by someone else
STRANGER_LINKS = {"lkh-c-other-h", "lkh-c-br2"}
HOLD = 0.3  # s each lifecycle call holds what it does: long enough to overlap when nothing serialises them


class FakeMachine:
    """The namespaces and links `ip` reports, and what it deletes; any other command fails as `ip` would."""

    def __init__(self) -> None:
        self.namespaces: set[str] = set()
        self.links: set[str] = set()

    def run(self, argv: list[str], stdin: str | None = None) -> str:
        match argv:
            case ["ip", "netns", "list"]:
                return "".join(f"{name} (id: 0)\n" for name in sorted(self.namespaces))
            case ["ip", "-o", "link", "show"]:
                return "".join(f"{i}: {name}: <BROADCAST,UP> mtu 1500\n" for i, name in enumerate(sorted(self.links)))
            case ["ip", "link", "delete", name] if name in self.links:
                self.links.remove(name)
                return ""
        raise netns.NetnsError(f"`{' '.join(argv)}` failed: not on the fake machine")

    def remove_namespace(self, namespace: str) -> None:
        self.namespaces.discard(namespace)

    def add_cluster(self, stack: Stack) -> None:
        """The cluster's own namespaces and links, as cluster-up made them."""
        hosts = native_cluster._hosts(stack)
        self.namespaces |= {host.namespace for host in hosts}
        self.links |= {nodes.lan(stack).bridge, *(f"{host.namespace}-h" for host in hosts)}


@pytest.fixture
def machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeMachine:
    fake = FakeMachine()
    monkeypatch.setattr(lab_record, "RUNTIME_DIR", tmp_path)
    monkeypatch.setattr(netns, "_run", fake.run)
    monkeypatch.setattr(netns, "_remove_namespace", fake.remove_namespace)  # never the real /etc/netns
    monkeypatch.setattr(netns, "missing_capability", lambda *_: None)
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/sbin/{name}")
    monkeypatch.setattr(native, "stop_services", lambda *_, **__: None)  # never this checkout's real services
    monkeypatch.setattr(root_guard, "update", lambda _: [])
    monkeypatch.setattr(install, "ensure_packages", lambda **_: None)
    monkeypatch.setattr(install, "ensure_livekit_server", lambda _: None)
    return fake


def test_the_sweep_leaves_alone_a_name_it_did_not_record(machine: FakeMachine) -> None:
    native_cluster.LAB.record(nodes.lan(STACK), native_cluster._hosts(STACK))
    machine.add_cluster(STACK)
    machine.namespaces |= STRANGERS
    machine.links |= STRANGER_LINKS
    native_cluster.down(STACK, quiet=True)
    assert machine.namespaces == STRANGERS and machine.links == STRANGER_LINKS
    assert not native_cluster.LAB.record_file.exists()


def test_up_refuses_a_name_it_did_not_record_naming_it_and_the_fix(machine: FakeMachine) -> None:
    """Another checkout's cluster is up (its names are the cluster's, and this checkout has no record of them)."""
    machine.add_cluster(STACK)
    before = (set(machine.namespaces), set(machine.links))
    with pytest.raises(StackError) as refused:
        native_cluster.up(STACK)
    message = str(refused.value)
    assert nodes.lan(STACK).bridge in message and nodes.redis_host(STACK).namespace in message
    assert "make down" in message and "ip netns del" in message
    assert (machine.namespaces, machine.links) == before


def held(spans: list[tuple[float, float]]) -> Callable[..., None]:
    """A stand-in for what a lifecycle call does under the lock: it takes HOLD s, its span kept in `spans`."""

    def hold(*_: object, **__: object) -> None:
        start = time.monotonic()
        time.sleep(HOLD)
        spans.append((start, time.monotonic()))

    return hold


@pytest.mark.parametrize("first", ["up", "down"])
def test_two_lifecycle_calls_never_interleave(
    machine: FakeMachine, monkeypatch: pytest.MonkeyPatch, first: str
) -> None:
    spans: list[tuple[float, float]] = []
    monkeypatch.setattr(native_cluster, "_create", held(spans))  # up: what it makes
    monkeypatch.setattr(native, "stop_services", held(spans))  # down (and up's own sweep): what it stops
    calls = {"up": lambda: native_cluster.up(STACK), "down": lambda: native_cluster.down(STACK, quiet=True)}
    threads = [threading.Thread(target=calls[first]), threading.Thread(target=calls["down"])]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    spans.sort()
    assert len(spans) == (3 if first == "up" else 2), spans  # up sweeps, then makes
    overlaps = [(a, b) for a, b in itertools.pairwise(spans) if b[0] < a[1]]
    assert overlaps == [], "two lifecycle calls ran at once"
