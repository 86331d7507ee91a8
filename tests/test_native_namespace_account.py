"""A service on a host of its own (a network namespace) is entered as root by `ip netns exec`: devstack.native must
switch to its account there, and refuse to start it at all when it has none, naming the service, rather than
leave it root (the paths lab's and the cluster's livekit-server and Redis are such services)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from devstack import native, processes
from devstack.native import Service, StackError
from devstack.processes import Account

pytestmark = pytest.mark.unit


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The commands native would have started (nothing starts)."""
    commands: list[list[str]] = []

    def record(command: list[str], *_args: Any, **_options: Any) -> Any:
        commands.append(command)
        return processes.PidRecord(4242, "0", 0, "/bin/true")

    monkeypatch.setattr(processes, "start", record)
    return commands


def node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, account: Account) -> Service:
    service = Service("lab-node", [], "livekit", lambda: ["/bin/true"], namespace="lkh-test-host",
                      directory=tmp_path / "lab-node")  # fmt: skip
    monkeypatch.setattr(Service, "account", lambda _self: account)
    return service


def test_a_namespaced_service_without_an_account_is_refused_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, started: list[list[str]]
) -> None:
    with pytest.raises(StackError, match=r"^lab-node on host lkh-test-host: no account to run it as") as refused:
        native._start(node(tmp_path, monkeypatch, Account(None, 0, 0)))
    assert "livekit" in str(refused.value) and "never started as root" in str(refused.value)
    assert started == []


def test_a_namespaced_service_becomes_its_account_after_entering_the_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, started: list[list[str]]
) -> None:
    monkeypatch.setattr(native, "ensure_dir", lambda path, **_: path)  # no chown to a stand-in account
    monkeypatch.setattr(native, "check_reachable", lambda _path, _account: None)
    native._start(node(tmp_path, monkeypatch, Account("livekit", 4321, 4321)))
    assert started == [["ip", "netns", "exec", "lkh-test-host", *native.drop_to(Account("livekit", 4321, 4321)),
                        "/bin/true"]]  # fmt: skip
