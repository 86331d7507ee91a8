"""The root namespace's guard, as nft text: each lab's range accepted on its own bridge only, named exactly;
every other packet to or from a test range dropped on input and forward (tests/test_lab_isolation_integration.py
proves it on the wire)."""

from __future__ import annotations

import ipaddress

import pytest

from devstack.root_guard import TABLE, LabLink, labs, rules
from devstack.stack_env import load_stack

pytestmark = pytest.mark.unit
PATHS, CLUSTER = ipaddress.IPv4Network("10.213.70.0/24"), ipaddress.IPv4Network("10.213.71.0/24")


def test_each_range_is_accepted_on_its_own_bridge_named_exactly() -> None:
    text = rules([LabLink("lkh-p-br", PATHS)], [PATHS, CLUSTER])
    assert 'iifname "lkh-p-br" ip saddr 10.213.70.0/24 ip daddr 10.213.70.0/24 accept' in text
    assert 'iifname "lkh-p-br" oifname "lkh-p-br" accept' in text
    assert "lkh-c-br" not in text, "a lab that is down is not let in"
    assert "*" not in text, "no wildcard link name: a neighbour's link may be named lkh-anything"


def test_every_test_range_is_dropped_on_input_and_forward() -> None:
    text = rules([], [PATHS, CLUSTER])
    assert f"table inet {TABLE}" in text and "elements = { 10.213.70.0/24, 10.213.71.0/24 }" in text
    for chain in ("input", "forward"):
        body = text.split(f"chain {chain} {{", 1)[1].split("}", 1)[0]
        assert f"hook {chain}" in body
        assert "ip saddr @test_ranges drop" in body and "ip daddr @test_ranges drop" in body


def test_the_labs_include_the_cluster_and_the_paths_lab_on_their_bridges() -> None:
    stack = load_stack()
    assert {(lab.bridge, lab.subnet) for lab in labs(stack)} >= {
        ("lkh-c-br", stack.cluster_subnet),
        ("lkh-p-br", stack.paths_subnet),
    }
