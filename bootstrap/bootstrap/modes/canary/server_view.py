"""The server's view beside ours: a few of livekit-server's own Prometheus counters, read after each run, their
increase exported, and the gray-failure signal.

livekit-server (v1.13.5, `prometheus.port` in its config) counts `livekit_participant_join_total{state}` and
`livekit_webhook_dispatch_total{status,reason}` per node (labels node_id, node_type). The counters are the node's,
not the canary's participant's: a gray failure — our join or media failed while the server counted a participant's
media connected (rtc_connected rose during the run) — is a sound reading on a node the canary has to itself (its
participant and its agent are then the only ones); on a busy node other clients' joins count too. Point the canary
at each node (its own URL) to watch each node.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlparse

import aiohttp
import structlog
from prometheus_client.parser import text_string_to_metric_families

from bootstrap.modes.canary.metrics import SERVER_JOIN_STATES, SERVER_WEBHOOK_STATUSES, CanaryMetrics
from bootstrap.result import RunResult, Status

READ_TIMEOUT = 2.0
PROMETHEUS_PORT_OFFSET = 3  # the project's node rule (stack.env): a node's Prometheus endpoint on its port + 3
LOOPBACK = ("localhost", "127.0.0.1", "::1")
log = structlog.get_logger("bootstrap.canary")


def default_metrics_url(livekit_url: str) -> str | None:
    """A node on this machine follows the project's rule; a server elsewhere needs --server-metrics (its endpoint
    should not be public), so none by default."""
    url = urlparse(livekit_url)
    if url.hostname not in LOOPBACK or url.port is None:
        return None
    return f"http://127.0.0.1:{url.port + PROMETHEUS_PORT_OFFSET}/metrics"


def parse(text: str) -> dict[tuple[str, str], float]:
    """(metric, label value) -> value, summed over nodes: joins by state, webhook dispatches by status."""
    wanted = {
        "livekit_participant_join": ("state", SERVER_JOIN_STATES),
        "livekit_webhook_dispatch": ("status", SERVER_WEBHOOK_STATUSES),
    }
    counts: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        if family.name not in wanted:
            continue
        label, values = wanted[family.name]
        for sample in family.samples:
            if sample.name.endswith("_total") and sample.labels.get(label) in values:
                key = (family.name, sample.labels[label])
                counts[key] = counts.get(key, 0.0) + sample.value
    return counts


@dataclass
class ServerView:
    url: str
    previous: dict[tuple[str, str], float] | None = None  # the last reading (None: none yet, or unreachable)
    delta: dict[tuple[str, str], float] = field(default_factory=dict)

    async def read(self) -> dict[tuple[str, str], float] | None:
        try:
            timeout = aiohttp.ClientTimeout(total=READ_TIMEOUT)
            async with aiohttp.ClientSession(timeout=timeout) as session, session.get(self.url) as response:
                if response.status != 200:
                    return None
                return parse(await response.text())
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            log.debug("server metrics unreachable", error=type(exc).__name__)
            return None

    async def after_run(self, metrics: CanaryMetrics, result: RunResult | None) -> None:
        """Read the counters, export their increase since the last reading (a restarted node's counters start
        again at 0: its whole value is the increase), and set the gray-failure signal for `result`."""
        current = await self.read()
        metrics.server_metrics_up.set(1 if current is not None else 0)
        if current is None:
            self.previous, self.delta = None, {}
            metrics.gray_failure.set(0)
            return
        if self.previous is None:  # the baseline: no increase known yet
            self.delta = {}
        else:
            before = self.previous
            self.delta = {k: v - before.get(k, 0.0) if v >= before.get(k, 0.0) else v for k, v in current.items()}
        self.previous = current
        for (name, value), increase in self.delta.items():
            if increase > 0:
                counter = metrics.server_joins if name == "livekit_participant_join" else metrics.server_webhooks
                counter.labels(value).inc(increase)
        gray = result is not None and gray_failure(result, self.delta)
        metrics.gray_failure.set(1 if gray else 0)
        if gray:
            metrics.gray_failures.inc()
            log.warning(
                "gray failure: the server counted a participant connected while our join or media failed",
                rtc_connected=self.delta.get(("livekit_participant_join", "rtc_connected"), 0),
            )


def gray_failure(result: RunResult, delta: dict[tuple[str, str], float]) -> bool:
    """Our join or media failed, and the node counted a participant's media connected during the run."""
    failed = {s.name for s in result.stages if s.status is Status.FAIL}
    return bool(failed & {"join", "media"}) and delta.get(("livekit_participant_join", "rtc_connected"), 0) > 0
