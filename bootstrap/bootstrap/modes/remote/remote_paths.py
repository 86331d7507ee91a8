"""The remote mode's media paths from here: the join's ICE failure explained, and each path tried on its own.

  - join: the shared join, its ICE bounded (JOIN_ICE_TIMEOUT); when it never connects, the candidates the server
    offered are probed from here, and an offered address this machine cannot reach while the signalling answers
    elsewhere is named as the node_ip trap (livekit/livekit#3219), with the address;
  - path udp: the rtc SDK in a child process (bootstrap.participant_process, as the paths mode runs it, but as
    this user on this machine: nothing of devstack) joins the run's room; its own stats must show a UDP pair
    that is not relayed, else the server's UDP candidates never answered and the transport it fell back to is
    named;
  - path turn-udp: an Allocate to each TURN/UDP server offered (turn_probe, beside this module: answered or not),
    and a second child joining with relay forced: its pair must be relayed over UDP;
  - path turn-tls: the TURN/TLS domain resolves here, its port connects, its certificate verifies (--ca-file or
    the system store) and TURN answers an Allocate behind it; the relay itself PASSes only when the relay-forced
    join took it (TURN/UDP did not answer), else it is SKIPPED naming the rtc SDK's limit: it cannot be made to
    use one of the server's ICE servers alone, and libwebrtc checks TURN's certificate against its own roots.
Each path's evidence goes to the report's `target.paths`, the join's to `target.join`."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import socket
import ssl
import sys
import tempfile
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from typing import IO, Any
from urllib.parse import urlparse

from backend.tokens import participant_token
from bootstrap.context import RunContext
from bootstrap.ice import RTC_DEBUG_ENV, Candidate
from bootstrap.modes.remote import target_checks, turn_probe
from bootstrap.modes.remote.target_checks import RemoteState
from bootstrap.result import Kind, StageFailure, StageSkipped
from bootstrap.stages import Stage

JOIN_ICE_TIMEOUT = 10.0  # a reachable node connects ICE within a second or two; the SDK's own bound is 4 x 15 s
PATH_ICE_TIMEOUT = 6.0  # each path's child, as the paths mode bounds it
SDK_LOG_BATCH = 1.2  # the SDK forwards its log once a second (livekit-ffi logger.rs): the candidates come late
TCP_PROBE = 1.5
PATH_CAP = 20.0  # the children's start (~1.5 s), their ICE bound and a closing margin
TOKEN_TTL = timedelta(hours=1)  # as the run's own token: a clock behind still joins
SDK_CANNOT_FORCE = (
    "the rtc SDK cannot force TURN over TLS alone: it takes the server's ICE servers as one set and a relay "
    "prefers TURN/UDP (RtcConfiguration.ice_servers would replace them, the server's TURN credentials with them)"
)
SDK_PRIVATE_CA = (
    "and libwebrtc checks TURN's certificate against its own built-in roots only (webrtc-sys passes it no "
    "certificate verifier), so a certificate from a private CA (--ca-file) cannot work there"
)


# --- the join, its ICE failure explained ------------------------------------------------------------------------


async def run_join(ctx: RunContext, *, state: RemoteState) -> str:
    try:
        async with asyncio.timeout(JOIN_ICE_TIMEOUT):
            return await target_checks.run_join(ctx, state=state)
    except TimeoutError:
        if ctx.room is not None and ctx.room.isconnected():
            raise StageFailure(
                f"joined, but the server did not report {ctx.identity} ACTIVE within {JOIN_ICE_TIMEOUT:.0f} s",
                "see the server's log for the participant's state",
                Kind.TIMEOUT,
            ) from None
        await asyncio.sleep(SDK_LOG_BATCH)
        raise await explain_ice(state) from None


async def explain_ice(state: RemoteState) -> StageFailure:
    """ICE never connected: what the server offered, probed from here."""
    candidates = state.offered.candidates
    signal = list(state.evidence.get("endpoint", {}).get("addresses", []))
    evidence: dict[str, Any] = {"ice": f"never connected within {JOIN_ICE_TIMEOUT:.0f} s",
                                "offered": [str(c) for c in candidates], "signal_addresses": signal}  # fmt: skip
    state.evidence["join"] = evidence
    if not candidates:
        return StageFailure(
            f"the join did not complete within {JOIN_ICE_TIMEOUT:.0f} s and the server offered no ICE candidate "
            f"({'no JoinResponse seen' if not state.offered.ice_servers else 'a JoinResponse came'})",
            "see the server's log; a proxy in front of it must pass the WebSocket upgrade on /rtc",
            Kind.TIMEOUT,
        )
    probes = await _probe_addresses(state, candidates)
    evidence["reachability"] = probes
    unreachable = [a for a, said in probes.items() if said.split(" ")[0] in ("no", "loopback", "link-local")]
    addresses = sorted({c.address for c in candidates})
    listed = ", ".join(str(c) for c in candidates)
    if len(unreachable) == len(addresses) or (unreachable and not set(addresses) & set(signal)):
        how = "; ".join(f"{a}: {probes[a]}" for a in unreachable)
        where = signal[0] if signal else "the address its name resolves to"
        return StageFailure(
            f"ICE never connected within {JOIN_ICE_TIMEOUT:.0f} s: the server offered candidates at "
            f"{', '.join(addresses)} ({listed}), which this machine cannot reach ({how}), while its signalling "
            f"answers at {', '.join(signal) or state.host}: the node_ip trap (rtc.node_ip, or use_external_ip, "
            f"advertises an address clients have no route to)",
            f"set rtc.node_ip to the address clients reach the node at ({where}, where {state.host} resolves "
            f"here, unless media is served elsewhere), or rtc.use_external_ip: true behind NAT; under Docker, the "
            f"host's address, never the container's",
            Kind.CONFIG,
        )
    ports = ", ".join(f"{c.protocol.upper()} {c.address}:{c.port}" for c in candidates)
    return StageFailure(
        f"ICE never connected within {JOIN_ICE_TIMEOUT:.0f} s although the server's address answers from here "
        f"({'; '.join(f'{a}: {s}' for a, s in probes.items())}): none of its candidates ({ports}) answered ICE",
        "open the node's rtc.udp_port (or port range) and rtc.tcp_port to clients: its firewall, security group "
        "or load balancer",
        Kind.NETWORK,
    )


async def _probe_addresses(state: RemoteState, candidates: list[Candidate]) -> dict[str, str]:
    """Per offered address, whether this machine reaches it: a TCP connect to its ICE/TCP candidate (a refusal
    is an answer too), else whether a route exists."""
    tcp = {c.address: c.port for c in candidates if c.protocol == "tcp"}
    addresses = sorted({c.address for c in candidates})
    said = await asyncio.gather(*(_reach(state, a, tcp.get(a)) for a in addresses))
    return dict(zip(addresses, said, strict=True))


async def _reach(state: RemoteState, address: str, port: int | None) -> str:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return "unknown (not an address)"
    if ip.is_loopback and not target_checks.is_loopback(state.host):
        return "loopback: this machine's own, not the server's"
    if ip.is_link_local:
        return "link-local: only its own link reaches it"
    if port is None:
        return await asyncio.to_thread(_route, address)
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(address, port), TCP_PROBE)
    except TimeoutError:
        return f"no answer on TCP {port} in {TCP_PROBE} s"
    except ConnectionRefusedError:
        return f"answers (TCP {port} refused)"
    except OSError as exc:
        return f"no route ({exc.strerror or exc})"
    writer.close()
    return f"answers (TCP {port} connects)"


def _route(address: str) -> str:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect((address, 9))  # no packet: the kernel only picks a route
        except OSError as exc:
            return f"no route ({exc.strerror or exc})"
    return "unknown (routed; UDP only, not probed)"


# --- the paths --------------------------------------------------------------------------------------------------


@dataclass
class RemotePaths:
    """The two rtc SDK joins the paths share (direct and relay-forced), started together by the first path stage."""

    state: RemoteState
    joins: dict[str, asyncio.Task[dict[str, Any]]] = field(default_factory=dict)

    @property
    def evidence(self) -> dict[str, Any]:
        paths: dict[str, Any] = self.state.evidence.setdefault("paths", {})
        return paths

    def start(self, ctx: RunContext) -> None:
        """Both joins at once (each child takes ~0.4 s to start and its ICE up to PATH_ICE_TIMEOUT); the
        relay-forced one only when the server offers TURN."""
        if self.joins:
            return
        ice_servers = target_checks.offer_evidence(self.state)["ice_servers"]
        turn = any(ice_servers[kind] for kind in ("turn_udp", "turn_tcp", "turn_tls"))
        for kind, forced in (("direct", False), ("relay", True))[: 2 if turn else 1]:
            self.joins[kind] = asyncio.create_task(_sdk_join(ctx, forced, f"{ctx.identity}-path-{kind}"))
        ctx.finalizers.append(self._cancel)

    async def joined(self, ctx: RunContext, relay: bool) -> dict[str, Any]:
        self.start(ctx)
        return dict(await asyncio.shield(self.joins["relay" if relay else "direct"]))

    def finished(self, relay: bool) -> dict[str, Any] | None:
        """The join's answer if it is in already, else None (not waited for)."""
        task = self.joins.get("relay" if relay else "direct")
        if task is None or not task.done() or task.cancelled() or task.exception() is not None:
            return None
        return dict(task.result())

    async def _cancel(self) -> None:
        for task in self.joins.values():
            task.cancel()
        await asyncio.gather(*self.joins.values(), return_exceptions=True)


def stages(state: RemoteState) -> list[Stage]:
    paths = RemotePaths(state)
    return [
        Stage("path udp", partial(run_udp, paths=paths), PATH_CAP, independent=True),
        Stage("path turn-udp", partial(run_turn_udp, paths=paths), PATH_CAP, independent=True),
        Stage("path turn-tls", partial(run_turn_tls, paths=paths), PATH_CAP, independent=True),
    ]


async def run_udp(ctx: RunContext, *, paths: RemotePaths) -> str:
    offered = target_checks.offer_evidence(paths.state)
    udp = [c for c in paths.state.offered.candidates if c.protocol == "udp"]
    evidence = paths.evidence["udp"] = {"client": "rtc-sdk", "offered": [str(c) for c in udp]}
    result = await paths.joined(ctx, relay=False)
    evidence.update(_outcome(result))
    answered = ", ".join(f"{c.address}:{c.port}" for c in udp) or "none offered"
    if not result["joined"]:
        raise StageFailure(
            f"ICE from here never connected (the rtc SDK, every transport, {PATH_ICE_TIMEOUT:.0f} s): the server's "
            f"UDP candidates ({answered}) never answered, nor anything else ({result['error']})",
            "open the node's rtc.udp_port (or port range) to clients, and see the join stage's cause",
            Kind.NETWORK,
        )
    pairs = result["pairs"]
    if all(p["local"]["protocol"] == "udp" and p["local"]["type"] != "relay" for p in pairs.values()):
        return f"rtc-sdk: {_pair_text(pairs)}; joined in {result['join_s']:.2f} s"
    no_turn = not any(offered["ice_servers"][k] for k in ("turn_udp", "turn_tcp", "turn_tls"))
    turn_fix = "; or enable TURN (turn.enabled, with tls_port and a domain for networks that allow only TLS on 443)"
    raise StageFailure(
        f"UDP to the server's candidate{'s' if len(udp) > 1 else ''} {answered} never answered from here: ICE fell "
        f"back to {_pair_text(pairs)}" + (", and the server offers no TURN to relay through" if no_turn else ""),
        f"open UDP {', '.join(str(c.port) for c in udp) or 'rtc.udp_port'} (rtc.udp_port, or the port range) to the "
        "node from clients: its firewall, security group or load balancer must pass UDP"
        + (turn_fix if no_turn else ""),
        Kind.NETWORK,
    )


async def run_turn_udp(ctx: RunContext, *, paths: RemotePaths) -> str:
    urls = target_checks.offer_evidence(paths.state)["ice_servers"]["turn_udp"]
    evidence = paths.evidence["turn-udp"] = {"client": "rtc-sdk", "relay_forced": True, "offered": urls}
    if not urls:
        raise StageSkipped("the server offers no TURN over UDP (turn.enabled off, or no turn.udp_port): nothing to "
                           "relay through from a network that blocks the node's UDP ports")  # fmt: skip
    servers = [_host_port(url) for url in urls]
    paths.start(ctx)
    answers = await asyncio.gather(*(turn_probe.over_udp(host, port) for host, port in servers))
    said = [str(a) if a else "no answer" for a in answers]
    evidence["allocate"] = {f"{h}:{p}": s for (h, p), s in zip(servers, said, strict=True)}
    silent = [f"{h}:{p}" for (h, p), a in zip(servers, answers, strict=True) if a is None]
    # Nothing answered: the relay over UDP cannot work, and its join need not be waited for (it may go over TLS).
    result = paths.finished(relay=True) if len(silent) == len(servers) else await paths.joined(ctx, relay=True)
    if result is not None:
        evidence.update(_outcome(result))
    pairs = result["pairs"] if result else {}
    if result and result["joined"] and all(p["local"].get("relay_protocol") == "udp" for p in pairs.values()):
        return f"rtc-sdk, relay forced: {_pair_text(pairs)}; TURN answered an Allocate: {answers[0]}"
    if result is None:
        took = ""
    elif result["joined"]:
        took = f"the relay-forced join took {_pair_text(pairs)}"
    else:
        took = f"the relay-forced join never connected within {PATH_ICE_TIMEOUT:.0f} s"
    if silent:
        raise StageFailure(
            f"TURN over UDP at {', '.join(silent)} never answered from here (an Allocate request, "
            f"{turn_probe.UDP_TRIES} × {turn_probe.UDP_WAIT:.0f} s)" + (f"; {took}" if took else ""),
            f"open UDP {', '.join(s.rsplit(':', 1)[1] for s in silent)} (turn.udp_port) and TURN's relay ports "
            "(turn.relay_range_start–end) to clients",
            Kind.NETWORK,
        )
    raise StageFailure(
        f"TURN over UDP answers here ({', '.join(evidence['allocate'])}: {answers[0]}), but {took} "
        f"({(result or {}).get('error') or 'not over TURN/UDP'})",
        "the server's TURN must relay to its own candidates: a private address there needs "
        "turn.allow_restricted_peer_cidrs, and TURN's relay ports (turn.relay_range_start–end) must be open",
        Kind.NETWORK,
    )


async def run_turn_tls(ctx: RunContext, *, paths: RemotePaths) -> str:
    urls = target_checks.offer_evidence(paths.state)["ice_servers"]["turn_tls"]
    evidence = paths.evidence["turn-tls"] = {"offered": urls}
    if not urls:
        raise StageSkipped("the server offers no TURN over TLS (turn.tls_port and turn.domain unset): clients "
                           "whose network allows only TLS on 443 have no way in")  # fmt: skip
    checked = [await _turn_tls_reaches(paths.state, url, evidence.setdefault("checks", {})) for url in urls]
    # With a private CA the SDK cannot take TURN/TLS (SDK_PRIVATE_CA): its relay-forced join is not waited for.
    relay = paths.finished(relay=True) if paths.state.ca_file else await paths.joined(ctx, relay=True)
    pairs = relay["pairs"] if relay else {}
    if relay and relay["joined"] and pairs and all(p["local"].get("relay_protocol") == "tls" for p in pairs.values()):
        evidence.update(client="rtc-sdk", relay_forced=True, **_outcome(relay))
        return f"rtc-sdk, relay forced: {_pair_text(pairs)} (TURN/UDP did not answer); {'; '.join(checked)}"
    limit = SDK_CANNOT_FORCE + (f"; {SDK_PRIVATE_CA}" if paths.state.ca_file else "")
    evidence["relay"] = f"skipped: {limit}"
    raise StageSkipped(f"the relay over TURN/TLS itself not tried: {limit}; checked from here: {'; '.join(checked)}")


async def _turn_tls_reaches(state: RemoteState, url: str, checks: dict[str, Any]) -> str:
    """The TURN/TLS server at `url` as a client reaches it: its name resolves, its port connects, its certificate
    verifies, TURN answers behind the TLS. A FAIL names the first that does not."""
    host, port = _host_port(url)
    check: dict[str, Any] = {"host": host, "port": port}
    checks[url] = check
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        check["addresses"] = []
        raise StageFailure(
            f"the server offers TURN over TLS at {url}, but its domain {host} does not resolve here "
            f"({exc.strerror}): clients whose network allows only TLS on 443 cannot relay",
            f"give turn.domain ({host}) a DNS record pointing at TURN's TLS listener (the load balancer on 443), "
            "or set turn.domain to the name that has one",
            Kind.DNS,
        ) from None
    address = check["addresses"] = list(dict.fromkeys(str(info[4][0]) for info in infos))
    try:
        answer = await turn_probe.over_tls(address[0], port, state.ssl_context(), host)
    except ssl.SSLCertVerificationError as exc:
        check["tls"] = exc.verify_message
        raise StageFailure(
            f"TURN over TLS at {host} ({address[0]}:{port}): its certificate does not verify: {exc.verify_message}",
            f"serve TURN/TLS with a certificate for {host} from a CA clients trust (a public CA: libwebrtc "
            "checks TURN's certificate against its own roots)",
            Kind.TLS,
        ) from None
    except (OSError, TimeoutError, ssl.SSLError) as exc:
        check["tcp"] = "no answer" if isinstance(exc, TimeoutError) else str(exc)
        raise StageFailure(
            f"TURN over TLS at {host}: {address[0]}:{port} "
            f"{'never answered' if isinstance(exc, TimeoutError) else f'failed: {exc}'}",
            f"open TCP {port} to TURN's TLS listener (turn.tls_port, or the load balancer passing it on)",
            Kind.NETWORK,
        ) from None
    check["tls"] = "verified"
    check["allocate"] = str(answer) if answer else "no answer"
    if answer is None:
        raise StageFailure(
            f"TLS at {host} ({address[0]}:{port}) verifies, but no TURN answered behind it (an Allocate request "
            f"got nothing back within {turn_probe.TLS_WAIT:.0f} s)",
            "the TLS front must pass the stream to TURN's TCP port (turn.tls_port with external_tls: true)",
            Kind.NETWORK,
        )
    return f"{host} → {', '.join(address)}, TLS on {address[0]}:{port} verified, TURN answered an Allocate: {answer}"


def _host_port(url: str) -> tuple[str, int]:
    """`turn:10.0.0.1:3478?transport=udp` → ("10.0.0.1", 3478) (no //: urlparse alone does not split it)."""
    scheme, _, rest = url.partition(":")
    parsed = urlparse("//" + rest.split("?", 1)[0])
    return str(parsed.hostname or ""), int(parsed.port or (443 if scheme == "turns" else 3478))


def _pair_text(pairs: dict[str, Any]) -> str:
    texts = []
    for side, pair in pairs.items():
        local, remote = pair["local"], pair["remote"]
        via = f" (TURN over {local['relay_protocol']})" if local.get("relay_protocol") else ""
        texts.append(f"{side} {local['type']} {local['protocol']} {local['address']}{via} → {remote['type']} "
                     f"{remote['protocol']} {remote['address']}:{remote['port']}")  # fmt: skip
    return "; ".join(texts) or "no pair"


def _outcome(result: dict[str, Any]) -> dict[str, Any]:
    pairs = {side: _pair_text({side: pair}).split(" ", 1)[1] for side, pair in result["pairs"].items()}
    return {"joined": result["joined"], "join_s": result["join_s"], "error": result["error"], "pairs": pairs}


# --- the rtc SDK in a child process -----------------------------------------------------------------------------


async def _sdk_join(ctx: RunContext, relay: bool, identity: str) -> dict[str, Any]:
    """`python -m bootstrap.participant_process` on this machine, as this user, joining the run's room (no agent
    dispatched: the room has one); its JSON answer. It holds no API secret: its token comes from here."""
    token = participant_token(ctx.settings, identity=identity, room=ctx.room_name, ttl=TOKEN_TTL)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIVEKIT_")} | RTC_DEBUG_ENV
    with tempfile.TemporaryFile() as stderr:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bootstrap.participant_process", stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=stderr, env=env,
        )  # fmt: skip
        try:
            return await _ask(process, stderr, {"url": ctx.settings.ws_url, "token": token, "relay": relay,
                                                "ice_timeout": PATH_ICE_TIMEOUT})  # fmt: skip
        except asyncio.CancelledError:  # the run is ending (a join not waited for): no graceful leave mid-ICE
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            raise
        finally:
            await _close(process)


async def _ask(process: asyncio.subprocess.Process, stderr: IO[bytes], request: dict[str, Any]) -> dict[str, Any]:
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write(json.dumps(request).encode() + b"\n")
    await process.stdin.drain()
    line = await asyncio.wait_for(process.stdout.readline(), PATH_ICE_TIMEOUT + 10.0)
    if not line:
        stderr.seek(0)
        tail = " | ".join(stderr.read().decode(errors="replace").strip().splitlines()[-3:])
        raise StageFailure(f"the rtc SDK's child process exited before joining: {tail or 'nothing on stderr'}",
                           "run with --verbose; check the harness's installation (`make install`)")  # fmt: skip
    return dict(json.loads(line))


async def _close(process: asyncio.subprocess.Process) -> None:
    """Its stdin closed, it disconnects and exits; killed when it does not within 2 s."""
    if process.stdin is not None:
        process.stdin.close()
    try:
        await asyncio.wait_for(process.wait(), 2.0)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
