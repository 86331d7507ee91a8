"""Why a client on another host did not connect, from evidence: the candidates and ICE servers the client itself
was offered (its SDK's log), the address it reached the signalling at, the node's config and the node's log.

The causes users hit, in the order they are told apart:
  1. the node advertises an address the client cannot reach (rtc.node_ip: the Docker trap, livekit/livekit#3219);
  2. UDP is blocked between client and node, and there is no TURN to fall back on;
  3. TURN refuses to relay to the node (turn.allow_restricted_peer_cidrs).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlparse

from bootstrap.ice import Candidate, Offered
from bootstrap.modes.paths.network_paths import NetworkPath
from bootstrap.result import StageFailure
from devstack.paths_lab import PathsHosts

PERMISSION_DENIED = re.compile(r"permission denied for client (\S+) to peer (\S+)")
# The rtc SDK's words when the signalling WebSocket itself failed (rust-sdks: EngineError::Signal), and the
# browser's (livekit-client: ConnectionError), before any ICE.
SIGNAL_FAILURE = re.compile(r"signal failure|could not establish signal connection|websocket", re.IGNORECASE)
UNTRUSTED = re.compile(r"certificate|UnknownIssuer|unknown ca", re.IGNORECASE)
# The TLS front's log (nginx, at info) when a client refused its certificate during the handshake.
REFUSED = r"SSL_do_handshake\(\) failed \(SSL: [^)]*(alert unknown ca|alert certificate unknown|alert bad certificate)"


def turn_urls(offered: Offered) -> list[str]:
    return [url for url in offered.ice_servers if url.startswith(("turn:", "turns:"))]


def _over_udp(url: str) -> bool:
    return url.startswith("turn:") and "transport=tcp" not in url


def _url_host(url: str) -> str:
    """The host of `turn:10.0.0.1:3478?transport=udp` (no //, so urlparse alone does not split it)."""
    return urlparse("//" + url.split(":", 1)[1]).hostname or ""


def _reachable(address: str, host: PathsHosts) -> bool:
    """Whether the client host can reach `address` (a name: as its own /etc/hosts resolves it): its one
    network is the test range (its own loopback is itself, not the node)."""
    try:
        return ipaddress.ip_address(_resolve(address, host)) in host.subnet
    except ValueError:
        return False  # a name the client host cannot resolve


def _resolve(name: str, host: PathsHosts) -> str:
    try:
        lines = host.hosts_file.read_text().splitlines()
    except OSError:
        return name
    return next((line.split()[0] for line in lines if name in line.split()[1:]), name)


def _listed(candidates: list[Candidate]) -> str:
    return ", ".join(str(c) for c in candidates)


def explain_no_join(
    path: NetworkPath,
    offered: Offered | None,
    error: str,
    host: PathsHosts,
    signal: str,
    node_config: Mapping[str, Any],
    node_log: str,
) -> StageFailure:
    """The client reached the signalling at `signal` but its media transport never connected (`error`).
    `offered` is None for a client whose offer cannot be read (a browser): its own error is all there is."""
    node_ip = (node_config.get("rtc") or {}).get("node_ip", "")
    if SIGNAL_FAILURE.search(error):
        return _signal_failed(path, error)
    # The front this path's TLS goes to: TURN's (the node host's second address) or the signalling's.
    front = host.turn_address if path.relay_protocol == "tls" else host.node_address
    if path.needs_tls and (refused := re.search(REFUSED + rf".*server: {re.escape(front)}:443", node_log)):
        return StageFailure(
            f"the {path.client} client refused the TLS front's certificate (its log: '{refused.group(1)}'), so "
            f"the {path.name} path never connected: {error}",
            "serve TLS (TURN's turn.domain, the wss:// name) with a certificate from a CA the clients trust: a "
            "public CA in production",
        )
    if offered is None:
        return StageFailure(f"the {path.client} client did not connect over the {path.name} path: {error}",
                            f"see the node's log; the path needs {path.expected} to reach the node")  # fmt: skip
    if not offered.candidates:
        return StageFailure(
            f"the client reached the signalling at {signal} but was offered no ICE candidate ({error})",
            "see the node's log for why it could not gather candidates (rtc.ips, rtc.node_ip)",
        )
    turns = turn_urls(offered)
    reachable = [c for c in offered.candidates if _reachable(c.address, host)]
    reachable_turn = [u for u in turns if _reachable(_url_host(u), host)]
    # A node_ip the client cannot reach spoils TURN too (its relayed candidates are node_ip's), even when TURN's
    # own front answers by name (turns:<turn.domain>:443).
    if not reachable and (not reachable_turn or (node_ip and not _reachable(node_ip, host))):
        return _unreachable_address(offered, turns, host, signal, node_ip)
    # Of those, what this path's firewall lets through: no UDP on a path that blocks it.
    usable = [c for c in reachable if not (path.block_udp and c.udp)]
    usable_turn = [u for u in reachable_turn if not (path.block_udp and _over_udp(u))]
    if path.relay:
        return _relay_failed(offered, usable_turn or turns, usable, host, node_config, node_log, error)
    udp = [c for c in usable if c.protocol == "udp"]
    if not turns:
        return StageFailure(
            f"ICE to the node's candidates ({_listed(usable)}) never connected, although the client reached the "
            f"node's signalling at {signal} over TCP: UDP between the client host and the node is blocked, and the "
            "node offers no TURN server to relay through (turn.enabled is off)",
            f"open UDP {udp[0].port if udp else 'rtc.udp_port'} (rtc.udp_port) from clients to the node, or enable "
            "TURN (turn.enabled; with tls_port behind 443 for clients whose firewall allows TLS only)",
        )
    return StageFailure(
        f"ICE never connected: neither the node's candidates ({_listed(usable)}) nor TURN ({', '.join(turns)}) "
        f"answered the client ({error})",
        f"open UDP {udp[0].port if udp else 'rtc.udp_port'} and TURN's port from clients to the node; see its log",
    )


def _signal_failed(path: NetworkPath, error: str) -> StageFailure:
    if UNTRUSTED.search(error):
        return StageFailure(
            f"the {path.client} client refused the signalling's TLS certificate: {error}",
            "serve wss:// with a certificate from a CA the clients trust (a public CA in production; the rtc SDK "
            "also honours SSL_CERT_FILE), for the name in the URL, with its chain",
        )
    return StageFailure(f"the {path.client} client could not open the signalling connection: {error}",
                        "check the URL, the proxy in front of the node and its WebSocket upgrade headers")  # fmt: skip


def _unreachable_address(
    offered: Offered, turns: list[str], host: PathsHosts, signal: str, node_ip: str
) -> StageFailure:
    addresses = sorted({c.address for c in offered.candidates} | {_url_host(u) for u in turns})
    unreachable = [a for a in addresses if not _reachable(a, host)]
    # TURN's front may answer by name, but what it relays to and from is node_ip's: say so rather than hide it.
    relayed = "; TURN's front answers, but relays at rtc.node_ip too" if len(unreachable) < len(addresses) else ""
    return StageFailure(
        f"the node offered the client ICE candidates at {', '.join(unreachable)} only ({_listed(offered.candidates)}"
        f"{'; TURN ' + ', '.join(turns) if turns else ''}), which the client host {host.client_address} cannot "
        f"reach{relayed}; it reached the node's signalling at {signal}"
        + (f" (rtc.node_ip is {node_ip})" if node_ip else ""),
        f"set rtc.node_ip to the address clients reach the node at ({signal.rsplit(':', 1)[0]} here), or "
        "rtc.use_external_ip: true when clients come from the internet through NAT; under Docker, the host's "
        "address, never the container's",
    )


def _relay_failed(
    offered: Offered,
    turns: list[str],
    peers: list[Candidate],
    host: PathsHosts,
    node_config: Mapping[str, Any],
    node_log: str,
    error: str,
) -> StageFailure:
    if not turns:
        return StageFailure(
            "relay was forced but the node offered the client no TURN server (turn.enabled is off)",
            "enable the node's TURN (turn.enabled with udp_port, and tls_port for TLS-only networks)",
        )
    turn = node_config.get("turn") or {}
    allowed = [str(c) for c in turn.get("allow_restricted_peer_cidrs") or []]
    denied = PERMISSION_DENIED.findall(node_log)
    restricted = [c for c in peers if ipaddress.ip_address(c.address).is_private and not _covered(c.address, allowed)]
    if denied or restricted:
        peer = denied[-1][1] if denied else restricted[0].address
        evidence = "its log: 'permission denied for client … to peer …'" if denied else "its config"
        return StageFailure(
            f"the node's TURN ({', '.join(turns)}) refused to relay to the node's own candidate at {peer} "
            f"({evidence}): {peer} is a private address, which the embedded TURN refuses unless "
            f"turn.allow_restricted_peer_cidrs lists it (it lists {', '.join(allowed) or 'nothing'})",
            f"add the nodes' private range ({host.subnet} here) to turn.allow_restricted_peer_cidrs",
        )
    if all(url.startswith("turns:") for url in turns):
        return StageFailure(
            f"the relay through TURN over TLS ({', '.join(turns)}) never connected ({error})",
            "TURN/TLS needs a certificate the client trusts for turn.domain, on port 443. LiveKit's Rust SDK (the "
            "Python, Node and Unity SDKs) verifies TURN's certificate against libwebrtc's built-in roots only "
            "(webrtc-sys passes no certificate verifier): a private CA cannot work there, use a public one",
        )
    return StageFailure(
        f"the relay through {', '.join(turns)} never connected ({error})",
        "check that clients reach TURN's port (turn.udp_port, turn.tls_port) and see the node's log",
    )


def _covered(address: str, cidrs: list[str]) -> bool:
    ip = ipaddress.ip_address(address)
    for cidr in cidrs:
        try:
            if ip in ipaddress.ip_network(cidr, strict=False):
                return True
        except ValueError:
            continue
    return False


def check_pair(
    path: NetworkPath, pairs: Mapping[str, Mapping[str, Mapping[str, Any]]], offered: Offered
) -> StageFailure | None:
    """The path's expected pair on every connected transport, from the client's own stats."""
    if not pairs:
        return StageFailure("the client connected but its stats show no selected candidate pair",
                            "report this: the rtc SDK's stats changed shape")  # fmt: skip
    for side, pair in pairs.items():
        local, remote = pair["local"], pair["remote"]
        relay_protocol = local.get("relay_protocol") or ""
        expected = local["type"] in path.local_types and local["protocol"] == path.protocol
        if expected and relay_protocol == path.relay_protocol:
            continue
        took = (f"{local['type']} {local['protocol']} {local['address']}"
                + (f" (TURN over {relay_protocol})" if relay_protocol else "")
                + f" → {remote['type']} {remote['protocol']} {remote['address']}:{remote['port']}")  # fmt: skip
        udp = [c for c in offered.candidates if c.protocol == "udp"]
        if path.protocol == "udp" and local["protocol"] == "tcp" and udp:
            no_turn = not turn_urls(offered)
            return StageFailure(
                f"UDP to the node's candidate {udp[0].address}:{udp[0].port} is blocked between the client host and "
                f"the node: the {side} transport fell back to ICE over TCP ({took})"
                + (", and the node offers no TURN server" if no_turn else ""),
                f"open UDP {udp[0].port} (rtc.udp_port) from clients to the node"
                + (
                    ", or enable TURN (turn.enabled; tls_port on 443 for firewalls that allow TLS only)"
                    if no_turn
                    else ""
                )
                + f"; ICE/TCP on {remote['port']} is the slow fallback (head-of-line blocking under loss), and "
                "firewalls that allow only 443 block it too",
            )
        return StageFailure(
            f"the {side} transport connected over {took}, not the {path.expected} pair the {path.name} path needs",
            "the client took another path than the one forced: check its firewall and ICE transport policy",
        )
    return None
