"""`python -m bootstrap`: prove the LiveKit stack end to end and print one pass/fail report.

Exit codes: 0 PASS, 1 FAIL, 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import signal
import sys
import time
from pathlib import Path
from typing import NoReturn
from urllib.parse import urlparse

import structlog

from agent_runtime.ffi_exit import exit_without_finalization
from backend.logging import configure_logging, redact, register_secret
from backend.settings import SettingsError, load_settings
from bootstrap import report, runner
from bootstrap.context import BrowserMode, ClusterMode, LoadMode, PathsMode, RunContext
from bootstrap.network_paths import DEFAULT_PATHS, FAULTS, PATHS
from bootstrap.result import RunResult
from bootstrap.stages import CLUSTER_STAGES, LOAD_STAGES, STAGES, Stage, browser_stage, drill_stages, paths_stages
from devstack.compose import webhook_bind_address
from devstack.nodes import lan, nodes
from devstack.server_config import ConfigError, load_config
from devstack.stack_env import LIVEKIT_YAML, StackEnvError, load_stack

DEFAULT_TIMEOUT = 60.0
DRILLS = ("node-loss", "redis-outage")
DRILL_TIMEOUT = 240.0  # a drill's default --timeout: redis-outage waits out 5 + 40 s of outage and each recovery
DEFAULT_CONCURRENCY = 4
# Load mode's default --timeout: a margin of about 3x over the ~7 rooms/s measured on 2 cores.
LOAD_TIMEOUT_BASE = 30.0
LOAD_TIMEOUT_PER_ROOM = 0.5


class ArgumentParser(argparse.ArgumentParser):
    """argparse's, but a usage error under --json is also the one JSON object the caller parses (exit 2)."""

    json_output = False

    def error(self, message: str) -> NoReturn:
        if self.json_output:
            print(error_json(message), flush=True)
        super().error(message)


def error_json(message: str) -> str:
    return json.dumps({"status": "error", "seconds": 0.0, "stages": [], "error": redact(message)})


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(
        prog="python -m bootstrap", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.json_output = "--json" in (sys.argv[1:] if argv is None else argv)
    parser.add_argument("--verbose", action="store_true", help="log each stage's progress (stderr)")
    parser.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    parser.add_argument("--junit", type=Path, metavar="PATH", help="also write the report as JUnit XML")
    parser.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help=f"bound for the whole run, cleanup included (default {DEFAULT_TIMEOUT:.0f}; with --load N: "
        f"{LOAD_TIMEOUT_BASE:.0f} + {LOAD_TIMEOUT_PER_ROOM} per room, if more)",
    )
    parser.add_argument("--env-file", type=Path, default=Path(".env"), help="settings file (default .env)")
    parser.add_argument(
        "--livekit-config",
        type=Path,
        default=LIVEKIT_YAML,
        metavar="PATH",
        help="the server's config, for the webhook port and checks (default docker/livekit.yaml)",
    )
    parser.add_argument(
        "--browser", action="store_true", help="add the browser stage: headless Chromium joins through frontend/"
    )
    parser.add_argument(
        "--frontend-env",
        type=Path,
        default=None,
        metavar="PATH",
        help="where the browser stage reads NEXT_PUBLIC_LIVEKIT_URL (default frontend/.env.local)",
    )
    parser.add_argument(
        "--webhook-host",
        default=None,
        help="address the receiver binds (default: 127.0.0.1 natively, the Docker bridge's gateway under Compose)",
    )
    parser.add_argument(
        "--load",
        type=int,
        default=0,
        metavar="N",
        help="load mode: N rooms, each joined, dispatched and its webhooks verified",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=DEFAULT_CONCURRENCY,
        metavar="C",
        help=f"rooms in flight at once in load mode (default {DEFAULT_CONCURRENCY}, for 2 cores)",
    )
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="cluster mode: two nodes sharing Redis (`make cluster-up`), checked across nodes",
    )
    parser.add_argument(
        "--paths",
        nargs="?",
        const="",
        default=None,
        metavar="NAMES",
        help=f"paths mode: a client on another host (a network namespace; needs root) over each network path: "
        f"comma-separated, of {', '.join(PATHS)} (default: {','.join(DEFAULT_PATHS)})",
    )
    parser.add_argument(
        "--fault",
        choices=list(FAULTS),
        help="with --paths: reproduce a misconfiguration users hit, to see its FAIL and fix ("
        + "; ".join(f"{f.name}: {f.description}" for f in FAULTS.values())
        + ")",
    )
    parser.add_argument(
        "--drill",
        choices=DRILLS,
        help="with --cluster: take a part of the cluster away on purpose and measure what recovers "
        "(node-loss: the room's node killed, then cut off; redis-outage: Redis stopped 5 s, then 40 s)",
    )
    args = parser.parse_args(argv)
    if args.drill and not args.cluster:
        parser.error("--drill needs --cluster: it runs against the cluster `make cluster-up` starts")
    if sum([bool(args.load), args.browser, args.cluster, args.paths is not None]) > 1:
        parser.error("--load, --browser, --cluster and --paths are separate modes: run them one at a time")
    if args.fault and args.paths is None:
        parser.error("--fault needs --paths: it reproduces a misconfiguration on the paths check's own node")
    if args.paths is not None:
        args.paths = _path_names(parser, args.paths, args.fault)
    if args.load < 0 or args.concurrency < 1:
        parser.error("--load must be >= 0 and --concurrency >= 1")
    if args.timeout is None and args.drill:
        args.timeout = DRILL_TIMEOUT
    if args.timeout is None:
        args.timeout = max(DEFAULT_TIMEOUT, LOAD_TIMEOUT_BASE + LOAD_TIMEOUT_PER_ROOM * args.load)
    if args.timeout <= runner.CLEANUP_RESERVE:
        parser.error(f"--timeout must be more than {runner.CLEANUP_RESERVE:.0f} seconds")
    if args.junit is not None and args.junit.is_dir():
        parser.error(f"--junit {args.junit} is a directory: give the report's file path, e.g. reports/bootstrap.xml")
    return args


def _path_names(parser: ArgumentParser, given: str, fault: str | None) -> list[str]:
    names = [n.strip() for n in given.split(",") if n.strip()]
    if not names:
        return list(FAULTS[fault].paths) if fault else list(DEFAULT_PATHS)
    if unknown := [n for n in names if n not in PATHS]:
        parser.error(f"--paths: unknown path {', '.join(unknown)}; known: {', '.join(PATHS)}")
    return list(dict.fromkeys(names))


def select_stages(args: argparse.Namespace) -> list[Stage]:
    if args.paths is not None:
        return paths_stages(args.paths)
    if args.drill:
        return drill_stages(args.drill)
    if args.cluster:
        return CLUSTER_STAGES
    if args.load:
        return LOAD_STAGES
    return [*STAGES, browser_stage()] if args.browser else STAGES


def _webhook_port(path: Path, urls: list[str]) -> int:
    """The receiver's port, from the first of webhook.urls: explicit and in range, or a ConfigError."""
    try:
        port = urlparse(urls[0]).port if urls else None
    except ValueError:  # urllib: "Port out of range 0-65535", or not a number
        port = -1
    if port is None:
        raise ConfigError(f"{path}: webhook.urls needs a URL with an explicit port, e.g. :8000")
    if not 0 < port < 65536:
        raise ConfigError(
            f"{path}: webhook.urls {urls[0]!r} has a port outside 1-65535; use the receiver's, e.g. :8000"
        )
    return port


def build_context(args: argparse.Namespace) -> RunContext:
    """Settings and config, validated before anything connects (errors here exit 2)."""
    settings = load_settings([args.env_file])
    config = load_config(args.livekit_config)
    stack = load_stack()
    webhook_port = _webhook_port(args.livekit_config, config.webhook_urls)
    register_secret(settings.api_secret)
    for warning in settings.warnings:
        structlog.get_logger("bootstrap").warning(warning)
    if args.cluster:  # the API calls and cleanup go to node a; the nodes post webhooks to us on the bridge
        settings = dataclasses.replace(settings, livekit_url=nodes(stack)[0].ws_url)
    ctx = RunContext(
        settings=settings,
        stack=stack,
        agent_name=stack.agent_name,
        webhook_host=args.webhook_host or (lan(stack).gateway if args.cluster else webhook_bind_address()),
        webhook_port=webhook_port,
        deadline=time.monotonic() + args.timeout,
    )
    if args.load:
        ctx.load = LoadMode(args.load, args.concurrency)
    if args.browser:
        ctx.browser = BrowserMode(args.frontend_env)
    if args.cluster:
        ctx.cluster = ClusterMode(drill_name=args.drill or "")
    if args.paths is not None:
        # The run's own node: the worker, the API calls and cleanup all go to it, not to the stack's.
        ctx.settings = dataclasses.replace(settings, livekit_url=f"ws://127.0.0.1:{stack.paths_node_port}")
        ctx.paths = PathsMode(args.paths, args.fault)
    return ctx


async def run_with_signals(ctx: RunContext, stages: list[Stage]) -> RunResult:
    """Ctrl-C and SIGTERM cancel the run; the runner turns that into a FAIL after cleaning up."""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    log = structlog.get_logger("bootstrap")

    def interrupt() -> None:
        # One cancel only: a second Ctrl-C must not break the cleanup the first one started.
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, lambda: log.warning("cleaning up, please wait"))
        task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, interrupt)
    return await runner.run(ctx, stages)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging(verbose=args.verbose)
    if not args.verbose:
        # The stage lines already say what arrived; a line per webhook or agent is --verbose detail (--load 50: 350).
        for chatty in ("backend.webhook_receiver", "agent_runtime"):
            logging.getLogger(chatty).setLevel(logging.WARNING)
    try:
        ctx = build_context(args)
    except (SettingsError, ConfigError, StackEnvError) as exc:
        print(f"configuration error: {redact(str(exc))}", file=sys.stderr)
        if args.json:
            print(error_json(str(exc)))
        return 2
    result = asyncio.run(run_with_signals(ctx, select_stages(args)))
    result.context.update(server=ctx.settings.livekit_url, pinned=ctx.stack.livekit_version)
    if ctx.load is not None and ctx.load.figures is not None:
        result.extra["load"] = ctx.load.figures.as_dict()
    if ctx.paths is not None:
        result.extra["paths"] = ctx.paths.figures
    if ctx.cluster is not None:
        result.extra["cluster"] = ctx.cluster.figures
        if ctx.cluster.drill_name:
            result.extra["drill"] = {"name": ctx.cluster.drill_name, **ctx.cluster.drill}
    if ctx.audio is not None or ctx.data is not None:
        result.extra["media"] = {
            "audio": ctx.audio.as_dict() if ctx.audio else None,
            "data": ctx.data.as_dict() if ctx.data else None,
        }
    print(report.render_json(result) if args.json else report.render_text(result), flush=True)
    if args.junit:  # after the report: a JUnit file that cannot be written must not cost the verdict
        try:
            args.junit.parent.mkdir(parents=True, exist_ok=True)
            args.junit.write_text(report.render_junit(result))
        except OSError as exc:
            print(f"cannot write the JUnit report to {args.junit}: {exc}", file=sys.stderr)
            return 2
    return 0 if result.passed else 1


if __name__ == "__main__":
    exit_without_finalization(main())
