"""structlog set-up shared by every entry point: console on a terminal, JSON lines otherwise, on stderr."""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from collections.abc import MutableMapping
from typing import Any

import structlog

# A whole JWT (LiveKit access tokens, webhook signatures): servers echo them back in error messages.
JWT = re.compile(r"eyJ[\w-]+\.[\w-]+\.[\w-]+")
_secrets: set[str] = set()


def register_secret(secret: str) -> None:
    """Never let this value reach a log line (e.g. the API secret once settings are loaded)."""
    if secret:
        _secrets.add(secret)


def redact(text: str) -> str:
    """Replace whole JWTs by a short prefix and registered secrets by ***."""
    text = JWT.sub(lambda m: f"{m.group(0)[:10]}…({len(m.group(0))} chars)", text)
    for secret in _secrets:
        text = text.replace(secret, "***")
    return text


def redact_value(value: Any) -> Any:
    """`value` with every string inside it redacted: nested dicts (keys too), lists and tuples included."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {redact_value(key): redact_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(redact_value(item) for item in value)
    return value


def _redact_event(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in event.items():
        event[key] = redact_value(value)
    return event


class RepeatLimiter(logging.Filter):
    """One line per `interval` seconds for a message that can repeat without bound: asyncio logs
    "socket.accept() out of system resource" once per pending connection it cannot accept (and schedules a
    retry for each), which wrote 29,000 lines in 13 s when stalled senders used up the descriptors."""

    def __init__(self, needle: str, interval: float = 5.0) -> None:
        super().__init__()
        self.needle, self.interval = needle, interval
        self._last, self._suppressed = -interval, 0

    def filter(self, record: logging.LogRecord) -> bool:
        if self.needle not in record.getMessage():
            return True
        now = time.monotonic()
        if now - self._last < self.interval:
            self._suppressed += 1
            return False
        if self._suppressed:
            record.msg = f"{record.msg} ({self._suppressed} more in the last {self.interval:.0f} s)"
        self._last, self._suppressed = now, 0
        return True


def configure_logging(*, verbose: bool = False, json: bool | None = None) -> None:
    """Route structlog and stdlib logging (livekit-agents, aiohttp) to stderr through one renderer:
    JSON lines unless stderr is a terminal."""
    as_json = not sys.stderr.isatty() if json is None else json
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if as_json
        else structlog.dev.ConsoleRenderer(colors="NO_COLOR" not in os.environ and sys.stderr.isatty())
    )
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso"),
        # Exceptions become text before redaction: a formatted traceback repeats whatever its message held.
        structlog.processors.format_exc_info,
        _redact_event,
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,  # includes _redact_event: the SDKs' messages are redacted too
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                renderer,
            ],
        )
    )
    handler.addFilter(RepeatLimiter("out of system resource"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    # The libraries' own chatter stays out unless it is a warning; --verbose lets their INFO through.
    for noisy in ("livekit", "livekit.agents", "asyncio", "aiohttp"):
        logging.getLogger(noisy).setLevel(logging.INFO if verbose else logging.WARNING)
