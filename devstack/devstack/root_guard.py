"""The root namespace's guard: what stays on this machine's own network stack and binds a test-range address (the
receiver the cluster's nodes post webhooks to, on the cluster bridge's gateway; the page the paths lab's browser
loads, on its bridge's gateway) answers only the labs' own links.

Without it, a neighbour on this machine's LAN reaches those addresses with one static route (`ip route add
10.213.71.0/24 via <this machine>`): Linux accepts a packet for any of its addresses on any interface, and, where
forwarding is on (Docker turns it on), routes it on to the labs' hosts. The guard is one nft table in the root
namespace (TABLE), its input and forward hooks dropping every packet to or from a test range that does not come
in on that range's own bridge, named exactly (never by the `lkh-` prefix: a neighbour's link could be named so).
It is (re)written whenever a lab comes up or goes down, for the labs whose bridges exist then, and removed with
the last one. `ip_forward` is left as found: the labs' hosts talk across their bridge, never through a route.
"""

from __future__ import annotations

import ipaddress
import subprocess
from dataclasses import dataclass

from devstack import nodes, paths_node, remote_lab_hosts
from devstack.stack_env import Stack

TABLE = "lkh_root_guard"


class RootGuardError(RuntimeError):
    """nft failed; the message carries its error."""


@dataclass(frozen=True)
class LabLink:
    """A lab's bridge on this machine and the test range its hosts use."""

    bridge: str
    subnet: ipaddress.IPv4Network


def labs(stack: Stack) -> list[LabLink]:
    """Every lab this checkout can bring up: the cluster (make cluster-up), the paths lab (make paths-up) and the
    remote lab (make remote-lab-up)."""
    return [
        LabLink(nodes.lan(stack).bridge, stack.cluster_subnet),
        LabLink(paths_node.lan(stack).bridge, stack.paths_subnet),
        LabLink(remote_lab_hosts.lan(stack).bridge, stack.remote_lab_subnet),
    ]


def rules(labs: list[LabLink], ranges: list[ipaddress.IPv4Network]) -> str:
    """The guard in nft syntax: each lab's range only on its own bridge (its hosts, and this machine's own
    address there); on loopback, this machine talking to itself; any other test-range packet dropped."""
    elements = ", ".join(str(r) for r in ranges)
    own = "\n    ".join(f'iifname "{lab.bridge}" ip saddr {lab.subnet} ip daddr {lab.subnet} accept' for lab in labs)
    # Bridged frames cross the forward hook too (br_netfilter), in and out on the same bridge.
    bridged = "\n    ".join(f'iifname "{lab.bridge}" oifname "{lab.bridge}" accept' for lab in labs)
    return f"""
table inet {TABLE} {{
  set test_ranges {{ type ipv4_addr; flags interval; elements = {{ {elements} }}; }}
  chain input {{
    type filter hook input priority filter - 10; policy accept;
    iifname "lo" accept
    {own}
    ip saddr @test_ranges drop
    ip daddr @test_ranges drop
  }}
  chain forward {{
    type filter hook forward priority filter - 10; policy accept;
    {bridged}
    ip saddr @test_ranges drop
    ip daddr @test_ranges drop
  }}
}}
"""


def _nft(script: str) -> None:
    done = subprocess.run(["nft", "-f", "-"], input=script, capture_output=True, text=True, timeout=10, check=False)
    if done.returncode != 0:
        raise RootGuardError(f"nft failed: {done.stderr.strip() or done.returncode}")


def _bridge_exists(name: str) -> bool:
    done = subprocess.run(["ip", "link", "show", "dev", name], capture_output=True, timeout=10, check=False)
    return done.returncode == 0


def present() -> bool:
    done = subprocess.run(["nft", "list", "table", "inet", TABLE], capture_output=True, timeout=10, check=False)
    return done.returncode == 0


def update(stack: Stack) -> list[LabLink]:
    """The guard for the labs whose bridge exists now (one transaction: no moment unguarded), or none when no
    lab is up. Returns the labs it guards. Call it after a lab came up or went down."""
    every = labs(stack)
    live = [lab for lab in every if _bridge_exists(lab.bridge)]
    ranges = sorted({lab.subnet for lab in every})
    reset = f"table inet {TABLE}\ndelete table inet {TABLE}\n"  # creating first makes deleting never fail
    _nft(reset + (rules(live, ranges) if live else ""))
    return live
