"""Remote mode (`--url wss://host[:port]`): prove a deployment this code did not start or configure.

The key and secret come from the environment or --env-file under LiveKit's names (LIVEKIT_API_KEY,
LIVEKIT_API_SECRET); --ca-file trusts a private CA; --webhook-listen HOST:PORT receives the deployment's webhooks
(without it the webhooks stage is skipped, saying how to enable it). Nothing local is needed: no stack, no
docker/livekit.yaml. The echo agent runs here and registers with the target outbound, as real workers do, under a
run-unique agent name (it can never take a production agent's jobs); the participant joins from here. The run
creates one uniquely named room and deletes it, whatever the outcome; it lists, touches and dispatches nothing
else (its only listing asks for its own room's name). Every check's evidence is in --json under `target`.

This mode imports nothing of devstack (tests/test_layout.py): it must work where only the harness is installed.
"""

from __future__ import annotations

import argparse
import os
import secrets
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from bootstrap.context import RunContext, Server
from bootstrap.modes.base import Mode, Plan, Target
from bootstrap.modes.remote import remote_load, remote_paths, target_checks
from bootstrap.modes.remote.target_checks import RemoteState
from bootstrap.result import Kind, StageSkipped
from bootstrap.stages import Stage, stage_named, token, webhooks, worker

JOIN_TOKEN_TTL = timedelta(hours=1)  # as users' tokens live: a clock minutes behind still joins (and is warned)
TIMEOUT = 45.0  # the healthy lab's whole run takes ~10 s; every fault is named well inside this
SCHEMES = ("wss", "ws", "https", "http")
WEBHOOKS_FIX = (
    "one of the deployment's webhook.urls must be http://<this machine, as the deployment reaches it>:{port}"
    "/api/webhooks/livekit, its webhook.api_key the key this run was given; see the deployment's log for "
    "delivery errors"
)
DEPLOYMENT_LOGS = "see its own logs (e.g. `kubectl logs`, `journalctl -u livekit-server`) and its load balancer's"
PROXY_UPGRADE_FIX = "the load balancer or proxy must pass the WebSocket upgrade on /agent as it does on /rtc"


class RemoteMode(Mode):
    name = "remote"
    flag = "--url"
    absorbs = ("load",)  # --load N against the target (remote_load: refused unless it is yours)

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("remote mode (a deployment elsewhere)")
        group.add_argument(
            "--url",
            metavar="URL",
            help="remote mode: verify the LiveKit deployment at URL (wss://host[:port]); the key and secret from "
            "LIVEKIT_API_KEY / LIVEKIT_API_SECRET (environment or --env-file); creates one room and deletes it",
        )
        group.add_argument("--ca-file", type=Path, metavar="PEM", help="with --url: trust this CA (a private CA)")
        group.add_argument(
            "--webhook-listen",
            metavar="HOST:PORT",
            help="with --url: receive the deployment's webhooks here (its webhook.urls must point at this "
            "address); without it the webhooks stage is skipped",
        )
        group.add_argument(
            "--own-deployment",
            action="store_true",
            help="with --url and --load N: the deployment is yours to load (needed for a host not on this machine; "
            "LiveKit Cloud is always refused)",
        )

    def selected(self, args: argparse.Namespace) -> bool:
        return args.url is not None

    def resolve(self, args: argparse.Namespace) -> str | None:
        if args.url is None:
            if args.ca_file is not None or args.webhook_listen is not None or args.own_deployment:
                return (
                    "--ca-file, --webhook-listen and --own-deployment need --url: they describe a deployment elsewhere"
                )
            return None
        parsed = urlparse(args.url)
        if parsed.scheme not in SCHEMES or not parsed.hostname:
            return f"--url {args.url!r}: give the deployment's URL, e.g. wss://livekit.example.com"
        try:
            parsed.port  # noqa: B018 (urllib checks the port only when asked)
        except ValueError:
            return f"--url {args.url!r}: the port is not a number in 1-65535"
        if args.ca_file is not None and not args.ca_file.is_file():
            return f"--ca-file {args.ca_file}: no such file"
        if args.webhook_listen is not None and _listen_address(args.webhook_listen) is None:
            return f"--webhook-listen {args.webhook_listen!r}: give HOST:PORT, e.g. 0.0.0.0:8000"
        return remote_load.refusal(args)

    def timeout(self, args: argparse.Namespace) -> float:
        return TIMEOUT + (remote_load.timeout(args) if args.load else 0.0)

    def timeout_note(self) -> str:
        return f"--url: {TIMEOUT:.0f}"

    def target(self, args: argparse.Namespace, stack: object) -> Target:  # the stack is not this mode's concern
        listen = _listen_address(args.webhook_listen) if args.webhook_listen else None
        return Target(
            livekit_url=args.url,
            webhook_host=listen[0] if listen else None,
            webhook_port=listen[1] if listen else 0,  # 0: no receiver at all
            agent_name=f"bootstrap-remote-{secrets.token_hex(4)}",
            servers=(Server("the deployment", _http_url(args.url), DEPLOYMENT_LOGS),),
        )

    def plan(self, args: argparse.Namespace) -> Plan:
        state = RemoteState(args.url, args.ca_file)
        header = lambda ctx: {"version": state.server_info.get("version") or "not seen"}  # noqa: E731
        if args.ca_file is not None:
            # The rtc SDK's TLS and the agents worker's read it (each builds its context from it); the run's own
            # HTTP session is given the CA explicitly (target_checks).
            os.environ["SSL_CERT_FILE"] = str(args.ca_file.resolve())
        checks = [
            Stage("endpoint", partial(target_checks.run_endpoint, state=state), 12.0),
            Stage("keys", partial(target_checks.run_keys, state=state), 8.0),
        ]
        if args.load:  # the load's rooms take the single run's place (their webhooks counted with --webhook-listen)
            stages, figures = remote_load.load_stages(args, _register_worker)
            return Plan(checks + stages, lambda ctx: {**_figures(ctx, state), **figures(ctx)}, header=header)
        receive = Stage("webhooks", _no_webhooks, 1.0)
        if args.webhook_listen:
            on_timeout = partial(webhooks.on_timeout, fix=WEBHOOKS_FIX)
            receive = Stage("webhooks", webhooks.run, stage_named("webhooks").cap, on_timeout)
        return Plan(
            [
                *checks,
                Stage("worker", _register_worker, 15.0),
                Stage("token", partial(token.run, ttl=JOIN_TOKEN_TTL), 5.0),
                Stage("join", partial(remote_paths.run_join, state=state), 15.0),
                stage_named("dispatch"),
                stage_named("data"),
                stage_named("media"),
                Stage("offer", partial(target_checks.run_offer, state=state), 2.0),
                *remote_paths.stages(state),  # path udp, path turn-udp, path turn-tls
                receive,
            ],
            lambda ctx: _figures(ctx, state),
            header=header,
        )


def _http_url(url: str) -> str:
    return url.replace("wss://", "https://", 1).replace("ws://", "http://", 1)


def _listen_address(text: str) -> tuple[str, int] | None:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return host.strip("[]"), int(port)


async def _no_webhooks(ctx: RunContext) -> str:
    raise StageSkipped(
        "no --webhook-listen: the deployment posts its webhooks to its own webhook.urls; to check them, point "
        "one of those at this machine and pass --webhook-listen HOST:PORT (e.g. 0.0.0.0:8000)"
    )


async def _register_worker(ctx: RunContext, **settings: int) -> str:
    """The echo worker registers with the target under this run's own agent name (`settings`: the load's job
    processes). Unlike the local run's worker stage, no room listing first: the keys stage proved the key without
    listing anything but this run's room."""
    registered = await worker.register(ctx, fix=PROXY_UPGRADE_FIX, kind=Kind.NETWORK, **settings)
    return f"{registered} (this run's own name)"


def _figures(ctx: RunContext, state: RemoteState) -> dict[str, Any]:
    state.evidence["offer"] = target_checks.offer_evidence(state)  # also when a stage before the offer's failed
    state.evidence["room"] = ctx.room_name
    state.evidence["agent_name"] = ctx.agent_name
    return {"target": state.evidence, **ctx.data_plane_figures()}
