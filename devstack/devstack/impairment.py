"""Packet loss injected into a lab host's media, with nftables (the paths lab's `impair`): what this machine can
do. Delay and jitter cannot be injected here: the kernel has no netem qdisc (`tc … netem` fails), so only loss.

The drop sits in the receiving host's INPUT hook (an output hook makes the sender's sendto fail with EPERM,
which is not what a lossy network does) and matches RTP only: UDP from the peer whose first two bits are
version 2 and whose payload type is not RTCP's (200-206, 72-78 without the marker bit). STUN, DTLS (the data
channel) and RTCP pass, so ICE and the data plane stay up and the rule's counters count media packets alone:
`seen` every RTP packet from the peer, `dropped` those it dropped, the injected truth to compare the receivers'
figures with.

  loss=N%   random loss: each packet dropped with probability N/100 (`numgen random mod 100 < N`)
  burst=N%  the same average in bursts: N packets in a row out of every 100 (`numgen inc mod 100 < N`)

N may be 0: nothing dropped, the counters and the run's longer audio window kept (a clean baseline).
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass

TABLE = "lkh_impair"
KINDS = {"loss": "random", "burst": "inc"}  # the spec's name -> numgen's mode
SPEC = re.compile(r"^(loss|burst)=(\d{1,2})%?$")
RTP = "udp length > 20 @th,64,2 2 @th,73,7 != 72-78"  # RTP version 2, payload type not RTCP's


class ImpairmentError(Exception):
    pass


@dataclass(frozen=True)
class Impairment:
    kind: str  # a KINDS key
    percent: int  # 0..99

    @classmethod
    def parse(cls, text: str) -> Impairment:
        """`loss=5%` or `burst=5%`; ValueError naming what is accepted."""
        found = SPEC.match(text.strip())
        if found is None:
            raise ValueError(
                f"{text!r}: expected loss=N% (random) or burst=N% (N in a row of every 100), N 0-99; delay and "
                "jitter cannot be injected here (no netem)"
            )
        return cls(found.group(1), int(found.group(2)))

    def __str__(self) -> str:
        return f"{self.kind}={self.percent}%"

    def rules(self, peer: str) -> str:
        """The table for a host receiving from `peer` (nft syntax)."""
        match = f"ip saddr {peer} {RTP}"
        return f"""
table inet {TABLE} {{
  chain input {{
    type filter hook input priority -30; policy accept;
    {match} counter comment "seen"
    {match} numgen {KINDS[self.kind]} mod 100 < {self.percent} counter drop comment "dropped"
  }}
}}
"""


def _nft(exec_argv: list[str], args: list[str], stdin: str | None = None) -> str:
    done = subprocess.run([*exec_argv, "nft", *args], input=stdin, capture_output=True, text=True, timeout=10,
                          check=False)  # fmt: skip
    if done.returncode != 0:
        raise ImpairmentError(f"nft {' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return done.stdout


def apply(exec_argv: list[str], impairment: Impairment, peer: str) -> None:
    """Drop `impairment` of the RTP from `peer` arriving on the host `exec_argv` runs in (replacing any)."""
    clear(exec_argv)
    _nft(exec_argv, ["-f", "-"], impairment.rules(peer))


def clear(exec_argv: list[str]) -> bool:
    """Remove the table if there; whether it was."""
    try:
        _nft(exec_argv, ["delete", "table", "inet", TABLE])
    except ImpairmentError:
        return False
    return True


def counters(exec_argv: list[str]) -> dict[str, int]:
    """The rules' own counters: {"seen": RTP packets from the peer, "dropped": those dropped}, {} when no table."""
    try:
        listing = json.loads(_nft(exec_argv, ["-j", "list", "table", "inet", TABLE]))
    except ImpairmentError:
        return {}
    found: dict[str, int] = {}
    for item in listing.get("nftables", []):
        rule = item.get("rule")
        if not rule:
            continue
        packets = next((e["counter"]["packets"] for e in rule.get("expr", []) if "counter" in e), None)
        if packets is not None and rule.get("comment") in ("seen", "dropped"):
            found[rule["comment"]] = int(packets)
    return found
