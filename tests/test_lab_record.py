"""A lab's record is only ever of what THIS checkout made: names that already exist are refused, never taken over
(a sweep would later remove another checkout's lab)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from devstack import lab_record, netns
from devstack.native import StackError

LAN = netns.Lan("probe", ipaddress.IPv4Network("10.213.79.0/24"))
pytestmark = pytest.mark.unit

HOSTS = [netns.LanHost(LAN, "client", 10), netns.LanHost(LAN, "node", 20, serves=True)]


@pytest.fixture
def record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> lab_record.LabRecord:
    monkeypatch.setattr(lab_record, "RUNTIME_DIR", tmp_path)
    return lab_record.LabRecord("probe")


def test_a_name_someone_else_made_is_refused_and_nothing_is_recorded(
    record: lab_record.LabRecord, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(netns, "namespaces", lambda: [])
    monkeypatch.setattr(netns, "links", lambda: [LAN.bridge, "lkh-other-br"])
    with pytest.raises(StackError) as refused:
        record.record(LAN, HOSTS)
    assert LAN.bridge in str(refused.value) and "make down" in str(refused.value)
    assert "lkh-other-br" not in str(refused.value)
    assert not record.record_file.exists()


def test_free_names_are_recorded_before_anything_is_made(
    record: lab_record.LabRecord, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(netns, "namespaces", lambda: ["lkh-other-client"])
    monkeypatch.setattr(netns, "links", lambda: ["lkh-other-br"])
    record.record(LAN, HOSTS)
    written = record.record_file.read_text()
    assert LAN.bridge in written and HOSTS[1].namespace in written
