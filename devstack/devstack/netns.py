"""Hosts on one machine: network namespaces on a bridge of their own (a Lan), on the project's private test range.

This machine takes the range's first address on the bridge; each host is a namespace with a veth into it, its
default route via this machine (without one, libwebrtc gathers no candidate and ICE never connects). Its packet
filter (nft table `lkh_guard`, inside the namespace) lets nothing out but to the test range, so no traffic ever
leaves this machine (TURN on a server host included: it cannot relay anywhere else). In, a client host takes
only replies, as a client behind a stateful firewall (every client behind NAT): the server cannot open a path the
client's own ICE checks did not; a server host (`serves`) takes anything from the range. `restrict` adds one
path's firewall on a client host (no UDP out: the corporate firewall; nothing to some addresses).

Everything is named with PREFIX and a Lan's own prefix; a lab removes what an earlier run could not (SIGKILL
cannot be trapped) from its record of what it made (devstack.lab_record), never by the prefix: another checkout's
lab, or a neighbour's link, may share it. A namespace lives while a process holds it: removing it kills its
processes first.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

PREFIX = "lkh-"  # "livekit harness": every namespace and link this project creates starts with it
GUARD_TABLE = "lkh_guard"
PATH_TABLE = "lkh_path"
CAP_NET_ADMIN = 12
KILL_WAIT = 2.0


class NetnsError(RuntimeError):
    """A namespace could not be set up; the message names the command and its error."""


def missing_capability(make_target: str = "paths") -> str | None:
    """Why this process cannot create hosts (None when it can): namespaces need CAP_NET_ADMIN."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:") and int(line.split()[1], 16) >> CAP_NET_ADMIN & 1:
            return None
    return f"creating a network namespace needs CAP_NET_ADMIN: run as root (`sudo make {make_target}`)"


def _run(argv: list[str], stdin: str | None = None) -> str:
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=10, check=False)
    if done.returncode != 0:
        raise NetnsError(f"`{' '.join(argv)}` failed: {done.stderr.strip() or done.returncode}")
    return done.stdout


def guard_rules(subnet: ipaddress.IPv4Network, *, serves: bool = False) -> str:
    """A host's firewall, in nft syntax: nothing out but to `subnet`; in, only replies (a client behind NAT),
    or with `serves`, anything from `subnet` too (a server on the network)."""
    inbound = f"ip saddr {subnet} accept" if serves else ""
    return f"""
table inet {GUARD_TABLE} {{
  chain output {{
    type filter hook output priority 0; policy drop;
    oifname "lo" accept
    ip daddr {subnet} accept
  }}
  chain input {{
    type filter hook input priority 0; policy drop;
    iifname "lo" accept
    ct state established,related accept
    {inbound}
  }}
}}
"""


@dataclass(frozen=True)
class Lan:
    """A network of hosts on this machine: a bridge (this machine's own address on it is the range's first),
    each host a namespace with a veth into it. Named PREFIX + name: its hosts are `<prefix><name>-<host>`."""

    name: str
    subnet: ipaddress.IPv4Network

    @property
    def prefix(self) -> str:
        return f"{PREFIX}{self.name}-"

    @property
    def bridge(self) -> str:
        return f"{self.prefix}br"

    @property
    def gateway(self) -> str:
        return str(self.subnet.network_address + 1)

    def host(self, name: str, offset: int, *, serves: bool = False) -> LanHost:
        return LanHost(self, name, offset, serves)


@dataclass(frozen=True)
class LanHost:
    """A host on a Lan at the range's address number `offset`; `serves`: it accepts connections (a server)."""

    lan: Lan
    name: str
    offset: int
    serves: bool = False

    @property
    def namespace(self) -> str:
        return f"{self.lan.prefix}{self.name}"

    @property
    def address(self) -> str:
        return str(self.lan.subnet.network_address + self.offset)

    @property
    def link(self) -> str:
        """Its veth's end on this machine (on the bridge); the other end, inside, is `<namespace>-c`."""
        return f"{self.namespace}-h"

    def exec_argv(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.namespace, *argv]


def create_lan(lan: Lan, hosts: list[LanHost]) -> None:
    """The bridge and every host on it (addresses, default route via this machine, firewall); half-made is
    undone: exactly these hosts and this bridge (the caller has made sure no one else's carry their names)."""
    prefix = lan.subnet.prefixlen
    try:
        _run(["ip", "link", "add", lan.bridge, "type", "bridge"])
        _run(["ip", "addr", "add", f"{lan.gateway}/{prefix}", "dev", lan.bridge])
        _run(["ip", "link", "set", lan.bridge, "up"])
        for host in hosts:
            outside, inside = host.link, f"{host.namespace}-c"
            _attach(host.namespace, outside, inside, [["ip", "link", "set", outside, "master", lan.bridge, "up"]],
                    f"{host.address}/{prefix}", lan.gateway, guard_rules(lan.subnet, serves=host.serves))  # fmt: skip
    except (NetnsError, subprocess.TimeoutExpired):
        for host in hosts:
            _remove_namespace(host.namespace)
            remove_link(host.link)
        remove_link(lan.bridge)
        raise


def add_address(host: LanHost, address: str) -> None:
    """A second address for `host` on its link (a second service on the same port)."""
    _run(["ip", "-n", host.namespace, "addr", "add", f"{address}/{host.lan.subnet.prefixlen}", "dev",
          f"{host.namespace}-c"])  # fmt: skip


def write_hosts_file(namespace: str, names: dict[str, str]) -> Path:
    """`names` (name → address) in what `namespace` sees as /etc/hosts (`ip netns exec` mounts it there)."""
    path = Path("/etc/netns", namespace, "hosts")
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["127.0.0.1 localhost", *(f"{address} {name}" for name, address in names.items())]
    path.write_text("\n".join(lines) + "\n")
    return path


def _attach(
    namespace: str, outside: str, inside: str, this_side: list[list[str]], address: str, gateway: str, guard: str
) -> None:
    """A namespace joined to this machine by a veth pair (`outside` stays here, set up by `this_side`;
    `inside` goes in with `address`), its loopback up, its default route via `gateway`, its firewall `guard`."""
    steps = [
        ["ip", "netns", "add", namespace],
        ["ip", "link", "add", outside, "type", "veth", "peer", "name", inside],
        ["ip", "link", "set", inside, "netns", namespace],
        *this_side,
        ["ip", "-n", namespace, "addr", "add", address, "dev", inside],
        ["ip", "-n", namespace, "link", "set", inside, "up"],
        ["ip", "-n", namespace, "link", "set", "lo", "up"],
        ["ip", "-n", namespace, "route", "add", "default", "via", gateway],
    ]
    for step in steps:
        _run(step)
    _run(["ip", "netns", "exec", namespace, "nft", "-f", "-"], stdin=guard)


def restrict(host: LanHost, *, block_udp: bool = False, unreachable: tuple[str, ...] = ()) -> None:
    """One path's firewall on top of the guard, replacing the last path's: no UDP out at all (a firewall that
    allows TCP only), and/or nothing to the `unreachable` addresses."""
    with contextlib.suppress(NetnsError):
        _run(host.exec_argv(["nft", "delete", "table", "inet", PATH_TABLE]))
    drops = (['oifname != "lo" meta l4proto udp drop'] if block_udp else []) + [
        f"ip daddr {address} drop" for address in unreachable
    ]
    if drops:
        rules = f"""
table inet {PATH_TABLE} {{
  chain output {{
    type filter hook output priority -10; policy accept;
    {chr(10).join(drops)}
  }}
}}
"""
        _run(host.exec_argv(["nft", "-f", "-"]), stdin=rules)


OPENING = "lkh-opening"  # the comment that marks a port opened in a host's guard (and all `close_ports` removes)


def open_port(host: LanHost, source: str, port: int) -> None:
    """`host`'s guard accepts TCP from `source` to `port` (a client host that also receives: a deployment's
    webhooks), until `close_ports`. In the guard's own chain: another table's accept cannot undo its drop."""
    rule = f'ip saddr {source} tcp dport {port} accept comment "{OPENING}"'
    _run(host.exec_argv(["nft", "insert", "rule", "inet", GUARD_TABLE, "input", *rule.split()]))


def close_ports(host: LanHost) -> None:
    """Every port `open_port` opened in `host`'s guard, closed (by rule handle); none opened: nothing to do."""
    listing = _run(host.exec_argv(["nft", "-a", "list", "chain", "inet", GUARD_TABLE, "input"]))
    for line in listing.splitlines():
        if f'comment "{OPENING}"' in line and "# handle " in line:
            handle = line.rsplit("# handle ", 1)[1].strip()
            _run(host.exec_argv(["nft", "delete", "rule", "inet", GUARD_TABLE, "input", "handle", handle]))


ISOLATE_TABLE = "lkh_cut"


def isolate(host: LanHost, cut: bool) -> None:
    """Drop everything `host` sends or receives except on its own loopback, before its firewall sees it (a host
    that vanished: no reset, no reply); `cut=False` ends it."""
    with contextlib.suppress(NetnsError):
        _run(host.exec_argv(["nft", "delete", "table", "inet", ISOLATE_TABLE]))
    if cut:
        rules = f"""
table inet {ISOLATE_TABLE} {{
  chain input {{ type filter hook input priority -20; policy drop; iifname "lo" accept; }}
  chain output {{ type filter hook output priority -20; policy drop; oifname "lo" accept; }}
}}
"""
        _run(host.exec_argv(["nft", "-f", "-"]), stdin=rules)


def namespaces() -> list[str]:
    listing = _run(["ip", "netns", "list"])
    return [line.split()[0] for line in listing.splitlines() if line.startswith(PREFIX)]


def links() -> list[str]:
    listing = _run(["ip", "-o", "link", "show"])
    names = (line.split(":")[1].strip().split("@")[0] for line in listing.splitlines() if ":" in line)
    return [name for name in names if name.startswith(PREFIX)]


def pids_in(namespace: str, uid: int | None = None) -> list[int]:
    """The processes inside `namespace` (only those whose real uid is `uid`, if given); none if it is gone."""
    try:
        pids = [int(p) for p in _run(["ip", "netns", "pids", namespace]).split()]
    except NetnsError:
        return []
    return pids if uid is None else [pid for pid in pids if _real_uid(pid) == uid]


def _real_uid(pid: int) -> int | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text().splitlines()
        return int(next(line for line in status if line.startswith("Uid:")).split()[1])
    except (OSError, StopIteration, ValueError):
        return None  # gone meanwhile


def kill_processes_in(namespace: str, uid: int | None = None) -> None:
    """SIGKILL everything inside `namespace` (only what runs as `uid`, if given), and wait until it is gone:
    until then the namespace lives."""
    deadline = time.monotonic() + KILL_WAIT
    while time.monotonic() < deadline:
        pids = pids_in(namespace, uid)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)


def remove_namespace(namespace: str) -> None:
    """The namespace's processes, the namespace (its links and firewall with it) and its /etc files."""
    _remove_namespace(namespace)


def remove_link(link: str) -> None:
    """A link on this machine, if it exists."""
    with contextlib.suppress(NetnsError):
        _run(["ip", "link", "delete", link])


def _remove_namespace(namespace: str) -> None:
    kill_processes_in(namespace)
    with contextlib.suppress(NetnsError):
        _run(["ip", "netns", "delete", namespace])
    with contextlib.suppress(OSError):  # per-namespace files `ip netns exec` bind-mounts over /etc
        for leftover in sorted(Path("/etc/netns", namespace).glob("*")):
            leftover.unlink()
        Path("/etc/netns", namespace).rmdir()
