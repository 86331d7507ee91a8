"""The Docker Compose runner: the same stack from docker-compose.yml, with stack.env for interpolation.
Chosen when a Docker engine answers `docker info`; the native runner otherwise."""

from __future__ import annotations

import shutil
import subprocess

from devstack.stack_env import REPO_ROOT, STACK_ENV

WAIT_SECONDS = 120
ENGINE_PROBE_SECONDS = 10.0
CLUSTER_NODES = ["livekit-a", "livekit-b"]


def engine_answers() -> bool:
    """A Docker client alone is not enough (this project runs where `docker` is only a client)."""
    if not shutil.which("docker"):
        return False
    try:
        probe = subprocess.run(["docker", "info"], capture_output=True, timeout=ENGINE_PROBE_SECONDS)
    except subprocess.TimeoutExpired:
        return False
    return probe.returncode == 0


def compose(*args: str) -> int:
    """`docker compose --env-file stack.env ARGS` from the repository root; its exit code."""
    return subprocess.run(["docker", "compose", "--env-file", str(STACK_ENV), *args], cwd=REPO_ROOT).returncode


def up(services: list[str]) -> int:
    return compose("up", "--wait", "--wait-timeout", str(WAIT_SECONDS), *services)


def down(services: list[str]) -> int:
    return compose("stop", *services) if services else compose("down")


def cluster_up() -> int:
    return compose("--profile", "cluster", "up", "--wait", "--wait-timeout", str(WAIT_SECONDS), "redis", *CLUSTER_NODES)


def cluster_down() -> int:
    return compose("--profile", "cluster", "stop", *CLUSTER_NODES)


def status() -> int:
    return compose("ps")


def logs() -> int:
    return compose("logs", "--tail", "40")
