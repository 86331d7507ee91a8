"""Benchmark the bootstrap against the running stack and print figures (no pass/fail: figures).

    python -m bench.bench [--rooms 50] [--repeat 5]        (make bench)

1. Load: `python -m bootstrap --load N --json` (with its per-room audio and RPC round trips) vs
   `lk perf agent-load-test --rooms N --agent-name A` (with our echo worker registered first), each timed as a
   whole process; their ratio only when lk's run completed (bench/lk_output.py).
2. Warm single verdict: `python -m bootstrap --json` (whole process, its own in-run seconds, and its data-plane
   figures) vs the manual `lk token create` + `lk room join` + `lk room list` sequence.
3. The webhook receiver (`python -m backend`) under 200 senders stalled mid-body: /healthz latency.
`lk` comes from PATH, $LK, or `make lk`; without it the lk half is reported as unavailable.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

from bench.lk_output import parse_agent_load_test, ratio_or_reason
from bootstrap.stats import percentile, summary
from devstack.stack_env import REPO_ROOT as ROOT
from devstack.stack_env import load_stack

PY = str(ROOT / ".venv" / "bin" / "python")

STACK = load_stack()
STEP_TIMEOUT = 20.0  # any single lk command; the sequence is ~0.1 s when it works
REGISTER_TIMEOUT = 30.0  # our standalone worker, before lk's rooms need it


def media_figures(report: dict[str, Any]) -> dict[str, float]:
    """A single run's data-plane figures, by name, from its --json report."""
    audio, data = report["media"]["audio"], report["media"]["data"]
    stages = {s["name"]: s["seconds"] for s in report["stages"]}
    return {
        "time to first echo": audio["first_echo_s"],
        "audio round trip p50": audio["round_trip_s"]["p50"],
        "audio round trip p95": audio["round_trip_s"]["p95"],
        "RPC round trip p95": data["rpc_round_trip_s"]["p95"],
        "data + media stages": stages["data"] + stages["media"],
    }


def find_lk() -> str | None:
    if chosen := os.environ.get("LK"):
        if not os.access(chosen, os.X_OK):
            sys.exit(f"LK={chosen} is not an executable file: point LK at an lk binary, or unset it")
        return chosen
    pinned = ROOT / ".tools" / f"lk-{STACK.livekit_cli_version}" / "lk"
    return shutil.which("lk") or (str(pinned) if pinned.exists() else None)


def timed(cmd: list[str], **kwargs: object) -> tuple[float, subprocess.CompletedProcess[str]]:
    started = time.perf_counter()
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, **kwargs)  # type: ignore[call-overload]
    return time.perf_counter() - started, result


def spread(values: list[float]) -> str:
    """min / median / max, in milliseconds when all are under a second (RPCs take a few)."""
    in_ms = max(values) < 1

    def show(value: float) -> str:
        return f"{value * 1000:.1f} ms" if in_ms else f"{value:.2f}s"

    return f"min {show(min(values))}  median {show(statistics.median(values))}  max {show(max(values))}"


def lk_args(lk: str) -> list[str]:
    """lk takes the key pair from LIVEKIT_API_KEY / LIVEKIT_API_SECRET in its environment (set by main): a
    secret on a command line is visible to every local user in `ps`."""
    return [lk, "--url", STACK.livekit_http_url]


def bench_load(rooms: int, lk: str | None) -> None:
    print(f"== load: {rooms} rooms")
    ours_s, ours = timed([PY, "-m", "bootstrap", "--load", str(rooms), "--json", "--timeout", "300"])
    report = json.loads(ours.stdout)
    load = report.get("load", {})
    print(f"ours   {ours_s:6.2f}s whole process  verdict {report['status']}  "
          f"dispatched {load.get('dispatched')}/{rooms}  rooms/s {load.get('rooms_per_second')}  "
          f"join {load.get('join_latency')}  dispatch {load.get('dispatch_latency')}  "
          f"webhooks {load.get('webhooks')}  rooms left {load.get('rooms_left')}")  # fmt: skip
    media = load.get("media", {})
    print(f"ours   media checked in {media.get('checked')}/{rooms} rooms: audio round trip "
          f"{media.get('audio_round_trip_s')}  RPC round trip {media.get('rpc_round_trip_s')}")  # fmt: skip
    if lk is None:
        print("lk     unavailable: no lk binary (make lk / PATH / $LK); no ratio")
        return
    # lk opens its rooms one after another (about 3 s apart here) and runs for a fixed --duration, so
    # give it room: otherwise it stops before opening them all.
    duration = int(rooms * 3.2 + 10)
    # No job limit, as our --load's worker: lk holds its rooms open, and the standalone worker's own limit
    # (agent_runtime.agent.MAX_JOBS) would refuse all but that many (make bench-capacity runs lk against the limit).
    with registered_worker(max_jobs=0) as registered:
        if not registered:
            print(f"lk     skipped: our worker did not register within {REGISTER_TIMEOUT:.0f} s; no ratio")
            return
        lk_s, result = timed([*lk_args(lk), "perf", "agent-load-test", "--rooms", str(rooms),
                              "--agent-name", STACK.agent_name, "--duration", f"{duration}s"],
                             timeout=duration + 120)  # fmt: skip
    run = parse_agent_load_test(result.stdout)
    print(f"lk     {lk_s:6.2f}s whole process (--duration {duration}s)  exit {result.returncode}  "
          f"rooms opened {run.rooms_opened}/{rooms}  agent joined {run.agents_joined}/{rooms}  "
          f"agent-join latency {summary(run.join_delays) if run.join_delays else '-'}")  # fmt: skip
    print(ratio_or_reason(rooms, run, result.returncode, lk_s, ours_s))


@contextlib.contextmanager
def registered_worker(max_jobs: int) -> Iterator[bool]:
    """`python -m agent_runtime` for lk's rooms, taking at most `max_jobs` at once (0: no limit; AGENT_MAX_JOBS),
    waited for until it says it registered (its log line), not for a fixed time: lk dispatching before the worker
    registered opened 1 room of 50 on a slower machine."""
    env = {**os.environ, "LIVEKIT_URL": STACK.livekit_ws_url, "AGENT_MAX_JOBS": str(max_jobs)}
    worker = subprocess.Popen(
        [PY, "-m", "agent_runtime"], cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip
    try:
        registered = threading.Event()
        threading.Thread(target=_watch_for_registration, args=(worker, registered), daemon=True).start()
        yield registered.wait(REGISTER_TIMEOUT)
    finally:
        worker.send_signal(signal.SIGINT)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


def _watch_for_registration(worker: subprocess.Popen[str], registered: threading.Event) -> None:
    """Read the worker's output to its end (a full pipe would block it), noting its "registered" line."""
    assert worker.stdout is not None
    for line in worker.stdout:
        if "registered" in line and "AW_" in line:
            registered.set()


def bench_single(repeat: int, lk: str | None) -> None:
    print(f"== warm single verdict, {repeat} runs each")
    whole, inner = [], []
    media: dict[str, list[float]] = {}
    for _ in range(repeat):
        seconds, result = timed([PY, "-m", "bootstrap", "--json"])
        report = json.loads(result.stdout)
        assert report["status"] == "pass", report
        whole.append(seconds)
        inner.append(report["seconds"])
        for name, value in media_figures(report).items():
            media.setdefault(name, []).append(value)
    print(f"ours   whole process: {spread(whole)}")
    print(f"ours   verdict (in-run): {spread(inner)}")
    for name, values in media.items():
        print(f"ours   {name}: {spread(values)}")
    if lk is None:
        print("manual unavailable: no lk binary; no ratio")
        return
    manual = []
    for i in range(repeat):
        room = f"bench-manual-{os.getpid()}-{i}"
        started = time.perf_counter()
        token = subprocess.run(
            [
                *lk_args(lk),
                "token",
                "create",
                "--join",
                "--room",
                room,
                "--identity",
                "u",
                "--valid-for",
                "1h",
                "--token-only",
            ],
            capture_output=True,
            text=True,
            timeout=STEP_TIMEOUT,
        ).stdout
        # Its output is not read: DEVNULL, so a full pipe can never block it (or its shutdown).
        join = subprocess.Popen([*lk_args(lk), "room", "join", "--identity", "u", room],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            deadline = time.time() + STEP_TIMEOUT
            listed = ""
            while room not in listed and time.time() < deadline:
                listed = subprocess.run([*lk_args(lk), "room", "list"], capture_output=True, text=True,
                                        timeout=STEP_TIMEOUT).stdout  # fmt: skip
            manual.append(time.perf_counter() - started)
        finally:
            join.terminate()
            try:
                join.wait(timeout=STEP_TIMEOUT)
            except subprocess.TimeoutExpired:
                join.kill()
                join.wait()
        assert token.strip() and room in listed, f"lk never listed {room}"
    print(f"manual lk token create + room join + room list: {spread(manual)}")
    print(
        f"ratio  manual / ours (whole process, medians) = {statistics.median(manual) / statistics.median(whole):.2f}x"
    )


def bench_receiver(stalled: int, samples: int) -> None:
    """`python -m backend` under `stalled` senders that never finish their body: /healthz latency meanwhile."""
    print(f"== webhook receiver: /healthz with {stalled} stalled senders, {samples} samples")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([PY, "-m", "backend", "--port", str(port)], cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)  # fmt: skip
    conns: list[socket.socket] = []
    try:
        deadline = time.monotonic() + 15
        while _healthz(port) is None and time.monotonic() < deadline:
            time.sleep(0.1)
        head = "POST /api/webhooks/livekit HTTP/1.1\r\nHost: x\r\nAuthorization: x\r\nContent-Length: 100\r\n\r\n{"
        for _ in range(stalled):
            conns.append(socket.create_connection(("127.0.0.1", port)))
            conns[-1].sendall(head.encode())
        latencies = [t for _ in range(samples) if (t := _healthz(port)) is not None]
        shares = {"p50": 0.5, "p95": 0.95, "max": 1.0}
        figures = ", ".join(f"{name} {percentile(latencies, q) * 1000:.1f} ms" for name, q in shares.items())
        print(f"ours   /healthz answered {len(latencies)}/{samples}: {figures} (aim: p95 < 100 ms)")
    finally:
        for conn in conns:
            conn.close()
        server.terminate()
        server.wait(timeout=10)


def _healthz(port: int) -> float | None:
    started = time.monotonic()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
            return time.monotonic() - started if resp.status == 200 else None
    except OSError:
        return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rooms", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    os.environ.update(LIVEKIT_API_KEY=STACK.api_key, LIVEKIT_API_SECRET=STACK.api_secret)  # for lk, see lk_args
    lk = find_lk()
    print(f"livekit-server {STACK.livekit_version} at {STACK.livekit_http_url}; lk: {lk or 'not available'}")
    bench_load(args.rooms, lk)
    bench_single(args.repeat, lk)
    bench_receiver(stalled=200, samples=100)
    return 0


if __name__ == "__main__":
    sys.exit(main())
