"""The labs answer nobody but themselves: a neighbour on this machine's LAN, with a route to the test ranges
through this machine (one `ip route add`, all it takes), reaches nothing the project started, on any address.

The neighbour is a network namespace attached to this machine by a veth on a private /30 that overlaps no route
here (NEIGHBOUR_NET), its link named with the project's own `lkh-` prefix on purpose: the root namespace's guard
must trust the labs' links by their exact names, not by the prefix. It is tried twice: with its own address,
outside the test ranges, and claiming an address inside each range (with this machine routing replies to those
back to it, as it would to a neighbour that owns them: the worst case).

While the cluster (make cluster-up) and the paths lab (make paths-up) are up, the neighbour is attached (first, as
a LAN is there before any run), then a real `python -m bootstrap --paths` run starts (PATHS_RUN, a browser path
first: its page is served from this machine's address on the paths bridge until the run ends; the run's agent, on
the lab's node host, gathers ICE candidates on that host's address, behind the lab's firewall). Once both are up
and the agent is in its room, the neighbour probes every TCP and UDP port the project's processes listen on
(livekit-server, Redis, PostgreSQL, nginx, the run and every process it started: read from `ss` in this machine's
namespace and in every lab host's) at every address they bind, at this machine's address on the neighbour's link,
and at every test-range address; then the run is interrupted with Ctrl-C (it cleans up as it always does). One
listener stands in for a run: the receiver the cluster's nodes post webhooks to, on the cluster bridge's gateway,
which only a --cluster run binds (a --paths run has none there; a --cluster run as well would add ~10 s for one
socket). Nothing may answer, except ICE/TCP: the stack's livekit-server's port (LIVEKIT_RTC_TCP_PORT, 7881) at
this machine's own address (livekit-server opens its rtc.tcp_port on every address, whatever --bind says:
docs/livekit-setup.md). The run's agent is no exception: it runs on the lab's node host, not in this machine's
namespace (bootstrap.hosted_worker), so its ICE candidates are on a test-range address, and silent.
And no packet of the neighbour's may reach a lab's host at all: counted on each host before its own firewall.

Forwarding: this machine may route (Docker sets ip_forward=1). The test turns forwarding on for the neighbour's
link and the labs' bridges only (net.ipv4.conf.<link>.forwarding; ip_forward itself untouched) and puts each back.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import re
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from backend.settings import validate
from bootstrap.webhook_sink import WebhookSink
from devstack import nodes, paths_lab, root_guard
from devstack.stack_env import REPO_ROOT, RUNTIME_DIR, Stack
from tests.conftest import PY, native_cluster

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="labs and the neighbour are network namespaces: needs root"),
]
NEIGHBOUR = "lkh-nb"  # the lkh- prefix on purpose: a neighbour's link may be named anything
HOST_LINK, NEIGHBOUR_LINK = f"{NEIGHBOUR}-h", f"{NEIGHBOUR}-c"
NEIGHBOUR_NET = ipaddress.IPv4Network("172.31.213.0/30")  # private, and overlapping no route on this machine
HOST_SIDE, NEIGHBOUR_SIDE = str(NEIGHBOUR_NET.network_address + 1), str(NEIGHBOUR_NET.network_address + 2)
CLAIMED_HOST = 250  # the address number the neighbour claims in each test range
COUNTER_TABLE = "lkh_neighbour_count"  # the test's own, on each lab host: packets from the neighbour
USERS = re.compile(r'\("([^"]+)",pid=(\d+)')
# A browser path first: its page server listens from its join until the run ends, while the paths after it run
# (about 10 s here; the probe takes about 2 s, then the run is interrupted).
PATHS_RUN = ("tcp", "turn-tls", "udp", "wss", "turn-udp")
PAGE_WAIT = 10.0  # s for the run to serve its first page (about 2 s here), and then to be in its room


def ip(*args: str) -> str:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=True, timeout=10).stdout


def nft_in(namespace: str, *args: str, script: str | None = None) -> str:
    """nft in `namespace`: `args`, or `script` read by `nft -f -`."""
    argv = ["ip", "netns", "exec", namespace, "nft", *(args or ("-f", "-"))]
    return subprocess.run(argv, input=script, capture_output=True, text=True, check=True, timeout=10).stdout


def lab_namespaces(stack: Stack) -> list[str]:
    prefixes = tuple(lab.bridge.removesuffix("br") for lab in root_guard.labs(stack))  # lkh-c-, lkh-p-, …
    return [line.split()[0] for line in ip("netns", "list").splitlines() if line.startswith(prefixes)]


def lab_addresses(stack: Stack) -> list[str]:
    """Every address the labs use: this machine's on each bridge and each host's (the paths node's two)."""
    found = set()
    for namespace in lab_namespaces(stack):
        found |= set(re.findall(r"inet (\S+)/", ip("-n", namespace, "-4", "addr", "show")))
    found |= {nodes.lan(stack).gateway, paths_lab.hosts(stack).gateway}
    ranges = [lab.subnet for lab in root_guard.labs(stack)]
    return sorted(a for a in found if any(ipaddress.ip_address(a) in r for r in ranges))


def project_pids(run: int) -> set[int]:
    """What the project started on this machine's own stack: each pid file and record under .runtime/ (the
    stack's services, the labs' nodes, nginx), this process (the receiver below) and the --paths run `run` with
    every process it started."""
    pids = {os.getpid(), *process_tree(run)}
    for path in [*RUNTIME_DIR.rglob("*.pid"), *RUNTIME_DIR.rglob("*.record")]:
        with contextlib.suppress(OSError, ValueError, IndexError):
            pids.add(int(path.read_text().split()[0]))
    return pids


def process_tree(pid: int) -> set[int]:
    """`pid` and its descendants, from each process's parent in /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError):
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(stat.parent.name))
    tree, todo = set(), [pid]
    while todo:
        tree.add(current := todo.pop())
        todo += children.get(current, [])
    return tree


def listeners(namespace: str | None, pids: set[int] | None) -> list[tuple[str, str, int, str]]:
    """(protocol, bound address, port, process) for each listening socket in `namespace` (None: this machine's),
    of `pids` only (None: every one: a lab host runs nothing but the project's)."""
    found = []
    for protocol, flag in (("tcp", "-ltnpH"), ("udp", "-lunpH")):
        argv = ["ss", flag] if namespace is None else ["ip", "netns", "exec", namespace, "ss", flag]
        for line in subprocess.run(argv, capture_output=True, text=True, check=True, timeout=10).stdout.splitlines():
            fields = line.split()
            local = fields[3]
            users = USERS.findall(line)
            if not users or (pids is not None and not any(int(pid) in pids for _, pid in users)):
                continue
            address, port = local.rsplit(":", 1)
            found.append((protocol, address.strip("[]").split("%")[0], int(port), users[0][0]))
    return found


def targets(stack: Stack, run: int) -> tuple[dict[str, set[tuple[str, int]]], list[tuple[str, str, int, str]]]:
    """Every (address, port) to probe, by protocol: each port anything the project started (the --paths run `run`
    included) listens on, at every specific address it binds, at this machine's address on the neighbour's link and
    at every test-range address."""
    found = listeners(None, project_pids(run))
    for namespace in lab_namespaces(stack):
        found += listeners(namespace, None)
    addresses = [HOST_SIDE, *lab_addresses(stack)]
    probes: dict[str, set[tuple[str, int]]] = {"tcp": set(), "udp": set()}
    for protocol, bound, port, _ in found:
        specific = [bound] if bound not in ("*", "0.0.0.0", "::") and not bound.startswith(("127.", "::")) else []
        probes[protocol] |= {(address, port) for address in [*addresses, *specific] if ":" not in address}
    return probes, found


class Loop:
    """An event loop in a thread of its own, for servers that must keep answering while the test waits."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(10)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@dataclass(frozen=True)
class PathsRun:
    """A `python -m bootstrap --paths` run in progress, and where its page server listens."""

    process: subprocess.Popen[bytes]
    page: tuple[str, int]

    def page_listening(self) -> bool:
        return self.process.poll() is None and self.page[1] in pages(self.process.pid, self.page[0])


def pages(pid: int, address: str) -> list[int]:
    """The ports process `pid` listens on at `address` over TCP: each browser path's page server so far (each
    serves until the run ends)."""
    return [port for protocol, bound, port, _ in listeners(None, {pid}) if (protocol, bound) == ("tcp", address)]


@contextlib.contextmanager
def paths_run(stack: Stack) -> Iterator[PathsRun]:
    """A real --paths run, yielded once its first browser path serves its page; interrupted with Ctrl-C afterwards
    (the run then cleans up as it does for any Ctrl-C: the lab restored, its page server and clients closed)."""
    gateway = paths_lab.hosts(stack).gateway
    command = [PY, "-m", "bootstrap", "--paths", ",".join(PATHS_RUN), "--json", "--timeout", "120"]
    with tempfile.TemporaryFile() as output:  # a file, not a pipe: a pipe nobody reads would stall the run
        run = subprocess.Popen(command, cwd=REPO_ROOT, stdout=output, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: bool(pages(run.pid, gateway)) or run.poll() is not None, "page served by the --paths run")
            if not (served := pages(run.pid, gateway)):
                output.seek(0)
                raise AssertionError(f"the --paths run ended before it served a page:\n{output.read().decode()}")
            yield PathsRun(run, (gateway, served[0]))
        finally:
            if run.poll() is None:
                run.send_signal(signal.SIGINT)
            try:
                run.wait(timeout=10)  # its cleanup takes about 1.5 s here
            except subprocess.TimeoutExpired:
                run.kill()
                run.wait()


def wait_for(ready: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + PAGE_WAIT
    while not ready():
        assert time.monotonic() < deadline, f"no {what} within {PAGE_WAIT:.0f} s"
        time.sleep(0.1)


def agent_in_room(stack: Stack, run: PathsRun) -> bool:
    """Whether the run's agent holds its ICE candidates: a socket of the run's (its worker, on the lab's node host,
    and the job processes under it) at the node host's own address (its worker's own health port is on loopback)."""
    node = paths_lab.hosts(stack).node
    return any(bound == node.address for _, bound, _, _ in listeners(node.namespace, process_tree(run.process.pid)))


@pytest.fixture(scope="module")
def labs_up(paths_lab_up: Stack) -> Iterator[Stack]:
    """The cluster and the paths lab up, and the receiver the cluster's nodes post webhooks to listening on the
    cluster bridge's gateway (as a --cluster run binds it)."""
    stack = paths_lab_up
    with native_cluster():
        loop = Loop()
        settings = validate({"LIVEKIT_URL": stack.livekit_ws_url, "LIVEKIT_API_KEY": stack.api_key,
                             "LIVEKIT_API_SECRET": stack.api_secret})  # fmt: skip
        sink = WebhookSink(settings, nodes.lan(stack).gateway, stack.webhook_port)
        try:
            loop.run(sink.start())
            yield stack
        finally:
            with contextlib.suppress(Exception):
                loop.run(sink.stop())
            loop.close()


@contextlib.contextmanager
def forwarding(links: list[str]) -> Iterator[None]:
    """Forwarding on for `links` only (ip_forward untouched), each put back as found."""
    found = {}
    try:
        for link in links:
            setting = Path(f"/proc/sys/net/ipv4/conf/{link}/forwarding")
            found[setting] = setting.read_text()
            setting.write_text("1\n")
        yield
    finally:
        for setting, value in found.items():
            with contextlib.suppress(OSError):
                setting.write_text(value)


@contextlib.contextmanager
def neighbour(stack: Stack, *, claims_test_range: bool) -> Iterator[list[str]]:
    """The neighbour's namespace and link, its routes to the test ranges through this machine; with
    `claims_test_range`, an address of its own in each range (and this machine routing replies to them back to
    it). Yields the source addresses it uses. Everything removed however the test ends."""
    ranges = [lab.subnet for lab in root_guard.labs(stack)]
    claimed = [str(r.network_address + CLAIMED_HOST) for r in ranges] if claims_test_range else []
    try:
        ip("netns", "add", NEIGHBOUR)
        ip("link", "add", HOST_LINK, "type", "veth", "peer", "name", NEIGHBOUR_LINK)
        ip("link", "set", NEIGHBOUR_LINK, "netns", NEIGHBOUR)
        ip("addr", "add", f"{HOST_SIDE}/{NEIGHBOUR_NET.prefixlen}", "dev", HOST_LINK)
        ip("link", "set", HOST_LINK, "up")
        ip("-n", NEIGHBOUR, "addr", "add", f"{NEIGHBOUR_SIDE}/{NEIGHBOUR_NET.prefixlen}", "dev", NEIGHBOUR_LINK)
        ip("-n", NEIGHBOUR, "link", "set", NEIGHBOUR_LINK, "up")
        ip("-n", NEIGHBOUR, "link", "set", "lo", "up")
        for index, subnet in enumerate(ranges):
            source = ["src", claimed[index]] if claimed else []
            if claimed:
                ip("-n", NEIGHBOUR, "addr", "add", f"{claimed[index]}/32", "dev", NEIGHBOUR_LINK)
                ip("route", "add", f"{claimed[index]}/32", "via", NEIGHBOUR_SIDE, "dev", HOST_LINK)
            ip("-n", NEIGHBOUR, "route", "add", str(subnet), "via", HOST_SIDE, *source)
        yield [NEIGHBOUR_SIDE, *claimed]
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            ip("link", "delete", HOST_LINK)  # its peer and the routes through it go with it
        with contextlib.suppress(subprocess.CalledProcessError):
            ip("netns", "delete", NEIGHBOUR)


@contextlib.contextmanager
def counted_on_lab_hosts(stack: Stack, sources: list[str]) -> Iterator[dict[str, int]]:
    """A counter on each lab host, before its own firewall, of packets from `sources`; read when the block ends."""
    counts: dict[str, int] = {}
    namespaces = lab_namespaces(stack)
    rules = f"""
table inet {COUNTER_TABLE} {{
  chain prerouting {{ type filter hook prerouting priority raw - 10; policy accept; ip saddr {{ {", ".join(sources)} }} counter; }}
}}
"""  # noqa: E501 (nft syntax, one rule)
    try:
        for namespace in namespaces:
            nft_in(namespace, script=rules)
        yield counts
        for namespace in namespaces:
            listing = nft_in(namespace, "list", "table", "inet", COUNTER_TABLE)
            counts[namespace] = int(re.search(r"counter packets (\d+)", listing).group(1))  # type: ignore[union-attr]
    finally:
        for namespace in namespaces:
            with contextlib.suppress(subprocess.CalledProcessError):
                nft_in(namespace, "delete", "table", "inet", COUNTER_TABLE)


def probe_from_neighbour(probes: dict[str, set[tuple[str, int]]]) -> dict[str, dict[str, str]]:
    payload = json.dumps({protocol: sorted(found) for protocol, found in probes.items()})
    argv = ["ip", "netns", "exec", NEIGHBOUR, PY, str(REPO_ROOT / "tests" / "neighbour_probe.py")]
    done = subprocess.run(argv, input=payload, capture_output=True, text=True, timeout=30, check=True)
    results: dict[str, dict[str, str]] = json.loads(done.stdout)
    return results


@pytest.mark.parametrize("claims_test_range", [False, True], ids=["own-address", "claims-test-range-address"])
def test_a_lan_neighbour_reaches_nothing_the_project_started(labs_up: Stack, claims_test_range: bool) -> None:
    stack = labs_up
    # The neighbour first, as a LAN is there before any run (an agent of the run's in this machine's namespace would
    # gather candidates on its link: the run's is on the lab's node host).
    with neighbour(stack, claims_test_range=claims_test_range) as sources, paths_run(stack) as run:
        wait_for(lambda: agent_in_room(stack, run), "--paths run's agent's ICE candidate on the lab's node host")
        probes, found = targets(stack, run.process.pid)
        assert {process for _, _, _, process in found} >= {"server", "redis-server", "postgres", "nginx"}, found
        assert (nodes.lan(stack).gateway, stack.webhook_port) in probes["tcp"], "the webhook receiver is not listening"
        assert run.page in probes["tcp"], "the --paths run's page server is not among the targets"
        assert root_guard.present()
        bridges = [lab.bridge for lab in root_guard.labs(stack) if Path("/sys/class/net", lab.bridge).exists()]
        with forwarding([HOST_LINK, *bridges]), counted_on_lab_hosts(stack, sources) as reached:
            results = probe_from_neighbour(probes)
        assert run.page_listening(), f"the --paths run ended during the probe: make PATHS_RUN longer than {PATHS_RUN}"
    answered = [f"tcp {target}" for target, result in results["tcp"].items() if result == "connected"]
    answered += [f"udp {target}" for target, result in results["udp"].items() if result == "answered"]
    # The one exclusion, ICE/TCP: the stack's livekit-server's rtc.tcp_port opens on every address whatever --bind
    # says (docs/livekit-setup.md).
    allowed = {f"tcp {HOST_SIDE}:{stack.rtc_tcp_port}"}
    assert sorted(set(answered) - allowed) == [], f"answered a LAN neighbour from {sources}"
    in_range = [t for t, r in results["tcp"].items() if r != "silent" and not t.startswith(f"{HOST_SIDE}:")]
    assert in_range == [], "a test-range address answered (even a reset tells the neighbour it is there)"
    assert {namespace: n for namespace, n in reached.items() if n} == {}, "the neighbour's packets reached lab hosts"
    assert len(results["tcp"]) >= 100 and reached, "probed too little to mean anything"
