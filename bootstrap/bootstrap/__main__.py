"""`python -m bootstrap`: prove the LiveKit stack end to end and print one pass/fail report.

Exit codes: 0 PASS, 1 FAIL, 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import asyncio
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
from backend.settings import Settings, SettingsError, load_settings, read_env, validate
from bootstrap import report, runner
from bootstrap.context import RunContext
from bootstrap.modes import DEFAULT_TIMEOUT, MODES, Mode, Plan
from bootstrap.result import RunResult
from bootstrap.stages import Stage
from devstack.compose import webhook_bind_address
from devstack.server_config import ConfigError, load_config
from devstack.stack_env import LIVEKIT_YAML, StackEnvError, load_stack


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
    """The common flags here, each mode's own from the registry; what they imply is filled in (exit 2 on a
    usage error)."""
    parser = ArgumentParser(
        prog="python -m bootstrap", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.json_output = "--json" in (sys.argv[1:] if argv is None else argv)
    _add_common_arguments(parser)
    MODES.add_arguments(parser)
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # a mode that starts itself again (the canary's runs)
    if error := MODES.resolve(args):
        parser.error(error)
    if args.timeout is None:
        args.timeout = MODES.select(args).timeout(args)
    if args.timeout <= runner.CLEANUP_RESERVE:
        parser.error(f"--timeout must be more than {runner.CLEANUP_RESERVE:.0f} seconds")
    if args.junit is not None and args.junit.is_dir():
        parser.error(f"--junit {args.junit} is a directory: give the report's file path, e.g. reports/bootstrap.xml")
    return args


def _add_common_arguments(parser: ArgumentParser) -> None:
    parser.add_argument("--verbose", action="store_true", help="log each stage's progress (stderr)")
    parser.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    parser.add_argument("--junit", type=Path, metavar="PATH", help="also write the report as JUnit XML")
    parser.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help=f"bound for the whole run, cleanup included (default {DEFAULT_TIMEOUT:.0f}; {MODES.timeout_notes()})",
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
        "--webhook-host",
        default=None,
        help="address the receiver binds (default: 127.0.0.1 natively, the Docker bridge's gateway under Compose)",
    )


def plan(args: argparse.Namespace) -> tuple[Mode, Plan]:
    mode = MODES.select(args)
    return mode, mode.plan(args)


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


def build_context(args: argparse.Namespace, mode: Mode | None = None) -> RunContext:
    """Settings and config, validated before anything connects (errors here exit 2); the server and webhook
    host are the mode's target."""
    stack = load_stack()
    target = (mode or MODES.select(args)).target(args, stack)
    settings = _settings(args.env_file, target.livekit_url)
    if target.webhook_port is None:  # the stack's server posts them: its config says where
        config = load_config(args.livekit_config)
        webhook_port = _webhook_port(args.livekit_config, config.webhook_urls)
    else:
        webhook_port = target.webhook_port
    register_secret(settings.api_secret)
    for warning in settings.warnings:
        structlog.get_logger("bootstrap").warning(warning)
    return RunContext(
        settings=settings,
        stack=stack,
        agent_name=target.agent_name or stack.agent_name,
        webhook_host=args.webhook_host or target.webhook_host or webhook_bind_address(),
        webhook_port=webhook_port,
        deadline=time.monotonic() + args.timeout,
        servers=list(target.servers),
    )


def _settings(env_file: Path, target_url: str | None) -> Settings:
    """The key and secret (and, without a target URL, LIVEKIT_URL) from the environment and the env file."""
    if target_url is None:
        return load_settings([env_file])
    files = [env_file] if env_file.is_file() else []
    return validate({**read_env(files), "LIVEKIT_URL": target_url}, files or [env_file])


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
    mode, run = plan(args)
    try:
        ctx = build_context(args, mode)
    except (SettingsError, ConfigError, StackEnvError) as exc:
        print(f"configuration error: {redact(str(exc))}", file=sys.stderr)
        if args.json:
            print(error_json(str(exc)))
        return 2
    if run.serve is not None:  # a mode on a schedule of its own: a fresh context for each of its runs
        return asyncio.run(run.serve(lambda: build_context(args, mode)))
    result = asyncio.run(run_with_signals(ctx, run.stages))
    header = run.header(ctx) if run.header else {"pinned": ctx.stack.livekit_version}
    result.context.update(server=ctx.settings.livekit_url, **header)
    result.extra.update(run.figures(ctx))
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
