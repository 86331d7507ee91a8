"""The remote lab's layout (its lifecycle is devstack.remote_lab): a bridge of its own (devstack.netns.Lan `lkh-r-br`,
REMOTE_LAB_SUBNET in stack.env), this machine the range's first address on it, and two hosts:

  - the client host (.2): where `python -m bootstrap --url` runs; its own /etc/hosts (/etc/netns/<ns>/hosts) names
    the deployment, as a user's DNS would: SIGNAL_NAME → the node host, TURN_NAME → its TURN front;
  - the node host (.11, and .12 for the TURN-over-TLS front: both fronts are on 443): the deployment — its own
    Redis, livekit-server on the hand-written config tests/remote_lab/livekit.yaml, and the TLS front (nginx).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from devstack.netns import Lan, LanHost
from devstack.stack_env import REPO_ROOT, RUNTIME_DIR, Stack

LAB_DIR = RUNTIME_DIR / "remote-lab"
CONFIG = REPO_ROOT / "tests" / "remote_lab" / "livekit.yaml"  # the deployment's own config, written by hand
SIGNAL_NAME = "lk.remote.test"  # wss://lk.remote.test → the front on the node host → the node's 127.0.0.1:7880
TURN_NAME = "turn.remote.test"  # turns:turn.remote.test:443 → the front on the TURN address → TURN over TCP
OTHER_NAME = "other.remote.test"  # what the certificate "for another name" is for
NODE_PORT, TURN_TLS_PORT = 7880, 5349  # as the hand-written config says (tests/test_remote_lab.py checks it)
CLIENT_OFFSET, NODE_OFFSET, TURN_OFFSET = 2, 11, 12


def lan(stack: Stack) -> Lan:
    return Lan("r", stack.remote_lab_subnet)  # namespaces lkh-r-client and lkh-r-node, bridge lkh-r-br


@dataclass(frozen=True)
class RemoteLabHosts:
    lan: Lan
    client: LanHost
    node: LanHost

    @property
    def turn_address(self) -> str:
        return str(self.lan.subnet.network_address + TURN_OFFSET)

    @property
    def hosts_file(self) -> Path:
        return Path("/etc/netns", self.client.namespace, "hosts")

    def names(self) -> dict[str, str]:
        """What the client host's /etc/hosts says: the deployment's names (OTHER_NAME among them: the certificate
        for another name is served by the same front)."""
        return {SIGNAL_NAME: self.node.address, TURN_NAME: self.turn_address, OTHER_NAME: self.node.address}


def hosts(stack: Stack) -> RemoteLabHosts:
    network = lan(stack)
    return RemoteLabHosts(
        network, network.host("client", CLIENT_OFFSET), network.host("node", NODE_OFFSET, serves=True)
    )
