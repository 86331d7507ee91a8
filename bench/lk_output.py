"""Reading `lk perf agent-load-test`'s closing table, and the rule for comparing with it: a ratio only when
lk's own run completed (every room opened, every agent joined). A run that opened 1 room of 50 is no peer."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# Go's time.Duration.String(): "2.991234567s", "812.3ms", "1m2.5s", "950µs".
_GO_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(h|m(?!s)|s|ms|µs|us|ns)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "µs": 1e-6, "us": 1e-6, "ns": 1e-9}


@dataclass
class LkLoadRun:
    rooms_opened: int = 0
    agents_joined: int = 0
    join_delays: list[float] = field(default_factory=list)  # seconds, for the rooms whose agent joined


def parse_go_duration(text: str) -> float | None:
    parts = _GO_DURATION_PART.findall(text.strip())
    if not parts or "".join(n + u for n, u in parts) != text.strip():
        return None
    return sum(float(number) * _UNIT_SECONDS[unit] for number, unit in parts)


def parse_agent_load_test(stdout: str) -> LkLoadRun:
    """The rows of its "Test Statistics" table (pkg/loadtester/agentloadtester.go, printStats): #, Room,
    Agent Dispatched At, Agent Joined (✓/✗), Agent Join Delay, Agent Track Subscribed, Echo Track Published."""
    run = LkLoadRun()
    for line in stdout.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("│").split("│")]
        if len(cells) != 7 or not cells[0].isdigit():
            continue  # borders, the header, log lines
        run.rooms_opened += 1
        if cells[3] == "✓":
            run.agents_joined += 1
            if (delay := parse_go_duration(cells[4])) is not None:
                run.join_delays.append(delay)
    return run


def ratio_or_reason(rooms: int, run: LkLoadRun, returncode: int, lk_seconds: float, ours_seconds: float) -> str:
    """The line `make bench` prints: the ratio, or why there is none."""
    if returncode != 0:
        return f"no ratio: lk exited with {returncode}"
    if run.rooms_opened < rooms or run.agents_joined < rooms:
        return (f"no ratio: lk's run did not complete (rooms opened {run.rooms_opened}/{rooms}, agents joined "
                f"{run.agents_joined}/{rooms}), so its time measures something else")  # fmt: skip
    return f"ratio  lk / ours (whole process) = {lk_seconds / ours_seconds:.2f}x"
