"""With the cluster's hosts gone, the test range's addresses route off this machine: the nodes stage must fail
naming the missing hosts without sending anything to a node."""

from __future__ import annotations

import pytest

from bootstrap.modes.cluster import cluster_stages
from bootstrap.result import StageFailure
from devstack import netns
from tests.conftest import make_context

pytestmark = pytest.mark.unit


async def test_no_node_is_asked_when_its_host_does_not_exist(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[str] = []

    async def probe(address: str, port: int, name: str) -> object:
        asked.append(f"{address}:{port}")
        raise AssertionError("a node was probed")

    monkeypatch.setattr(netns, "missing_capability", lambda *_: None)
    monkeypatch.setattr(netns, "namespaces", lambda: ["lkh-p-node"])  # another lab's host only
    monkeypatch.setattr(cluster_stages, "probe_livekit", probe)
    with pytest.raises(StageFailure) as failed:
        await cluster_stages.run_nodes(make_context())
    assert "lkh-c-a, lkh-c-b do not exist" in failed.value.cause and "make cluster-up" in failed.value.fix
    assert asked == []
