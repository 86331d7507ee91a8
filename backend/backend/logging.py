"""structlog set-up shared by every entry point: console on a terminal, JSON lines otherwise, on stderr."""

from __future__ import annotations

import logging
import os
import sys

import structlog


def configure_logging(*, verbose: bool = False, json: bool | None = None) -> None:
    """Route structlog and stdlib logging to stderr; JSON unless stderr is a terminal."""
    level = logging.DEBUG if verbose else logging.INFO
    as_json = not sys.stderr.isatty() if json is None else json
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if as_json
        else structlog.dev.ConsoleRenderer(colors="NO_COLOR" not in os.environ and sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )
    # Libraries (livekit-agents, aiohttp) log through stdlib logging: keep them on stderr, quieter.
    logging.basicConfig(stream=sys.stderr, level=logging.DEBUG if verbose else logging.WARNING, force=True)
