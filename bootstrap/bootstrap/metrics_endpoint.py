"""`python -m bootstrap.metrics_endpoint HOST PORT INTERVAL PID`: the canary's /metrics, /healthz and /readyz, served
by a small process of its own (prometheus_client and the standard library only: ~0.1 s to start).

Why a process: served from a thread of the canary, a scrape waits for the GIL while a run keeps the interpreter busy
(the rtc SDK's callbacks, the audio probe): /metrics p95 was 16.6 ms during runs, 13 ms with a 1 ms switch
interval. Here it is the time to write bytes the canary rendered after its last run (bench/canary.py: docs/canary.md).

Protocol: it prints `ok PORT` (or `error WHY`, exit 2) once it listens; then reads one JSON object a line on stdin —
{"text": exposition, "openmetrics": exposition, "finished_at": Unix time of the last finished run (0: none),
"last_result": "pass"} — and exits when stdin closes. The canary's own process metrics (CPU, memory, start time) are
read from /proc/PID at each scrape, so they are never older than the scrape.

Why at the top of bootstrap though only the canary uses it (every other one-mode module lives in its mode's folder,
tests/test_layout.py, which lists this one as the exception): run as `python -m bootstrap.modes.canary.…`, Python
would first run bootstrap/modes/__init__.py, the registry, which imports every mode (~1.4 s here) before this
process could listen; from here it imports nothing of the project and listens ~0.1 s after it starts.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

EOF_LINE = b"# EOF\n"
TEXT = "text/plain; charset=utf-8"


def readiness(finished_at: float, interval: float, now: float) -> tuple[bool, str]:
    """/readyz: a run finished within two intervals (`finished_at` and `now` in Unix time)."""
    if not finished_at:
        return False, "no run has finished yet"
    age = now - finished_at
    if age > 2 * interval:
        return False, f"the last run finished {age:.0f}s ago, more than two intervals"
    return True, f"the last run finished {age:.0f}s ago"


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """No line per scrape."""


class Published:
    """What the canary last sent, swapped whole under a lock."""

    def __init__(self, pid: int, interval: float) -> None:
        self.pid, self.interval = pid, interval
        self.text, self.openmetrics = b"", EOF_LINE
        self.finished_at, self.last_result = 0.0, ""
        self.lock = threading.Lock()
        self.process = CollectorRegistry()
        ProcessCollector(pid=lambda: pid, registry=self.process)

    def update(self, line: str) -> None:
        data = json.loads(line)
        with self.lock:
            self.text, self.openmetrics = data["text"].encode(), data["openmetrics"].encode()
            self.finished_at, self.last_result = float(data["finished_at"]), str(data["last_result"])

    def app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == "/metrics":
            with self.lock:
                text, openmetrics = self.text, self.openmetrics
            if "application/openmetrics-text" in environ.get("HTTP_ACCEPT", ""):
                body = openmetrics.removesuffix(EOF_LINE) + generate_openmetrics(self.process)  # type: ignore[no-untyped-call]
                return _reply(start_response, "200 OK", body, OPENMETRICS)
            return _reply(start_response, "200 OK", text + generate_latest(self.process), CONTENT_TYPE_LATEST)
        if path == "/healthz":
            alive = _alive(self.pid)
            return _reply(start_response, "200 OK" if alive else "503 Service Unavailable",
                          b"alive\n" if alive else b"the canary process is gone\n")  # fmt: skip
        if path == "/readyz":
            with self.lock:
                ready, why = readiness(self.finished_at, self.interval, time.time())
            return _reply(start_response, "200 OK" if ready else "503 Service Unavailable", why.encode() + b"\n")
        return _reply(start_response, "404 Not Found", b"try /metrics, /healthz or /readyz\n")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _reply(start_response: Callable[..., Any], status: str, body: bytes, content_type: str = TEXT) -> list[bytes]:
    start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(body)))])
    return [body]


def main(argv: list[str]) -> int:
    host, port, interval, pid = argv[0], int(argv[1]), float(argv[2]), int(argv[3])
    published = Published(pid, interval)
    try:
        server = make_server(host, port, published.app, server_class=_Server, handler_class=_QuietHandler)
    except OSError as exc:
        print(f"error {exc}", flush=True)
        return 2
    print(f"ok {server.server_port}", flush=True)

    def read() -> None:
        for line in sys.stdin:
            published.update(line)
        server.shutdown()  # stdin closed: the canary stopped (or died)

    threading.Thread(target=read, name="updates", daemon=True).start()
    server.serve_forever()
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
