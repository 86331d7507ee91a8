"""The Docker Compose runner: the same stack from docker-compose.yml, with stack.env and the generated
.env.secrets for interpolation. Chosen when a Docker engine answers `docker info`; the native runner otherwise.
Every port is published on 127.0.0.1 only; a receiver for the stack's webhooks binds the Docker bridge's
gateway (webhook_bind_address), the one address the containers reach the host at."""

from __future__ import annotations

import shutil
import subprocess
import sys

from devstack.credentials import SECRETS_ENV
from devstack.redaction import redact_tokens
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
    """`docker compose --env-file stack.env --env-file .env.secrets ARGS` from the repository root; its exit
    code. The passwords reach the containers through their environment, never a command line."""
    env_files = ["--env-file", str(STACK_ENV), "--env-file", str(SECRETS_ENV)]
    return subprocess.run(["docker", "compose", *env_files, *args], cwd=REPO_ROOT).returncode


def _docker_output(*args: str) -> str:
    try:
        result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=ENGINE_PROBE_SECONDS)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return result.stdout.strip() if result.returncode == 0 else ""


def stack_running() -> bool:
    """The Compose stack is what runs here: an engine answers and the project's livekit container exists."""
    return engine_answers() and bool(_docker_output("ps", "-q", "--filter", "label=com.docker.compose.service=livekit"))


def webhook_bind_address() -> str:
    """Where a receiver on this host listens for the stack's webhooks, and no wider: under Compose the Docker
    bridge's gateway (what `host-gateway`, and so host.docker.internal, resolves to in the container),
    natively loopback."""
    if stack_running():
        return (
            _docker_output("network", "inspect", "bridge", "--format", "{{(index .IPAM.Config 0).Gateway}}")
            or "127.0.0.1"
        )
    return "127.0.0.1"


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
    """The last lines of each container's log, tokens redacted (livekit-server quotes refused tokens whole)."""
    env_files = ["--env-file", str(STACK_ENV), "--env-file", str(SECRETS_ENV)]
    command = ["docker", "compose", *env_files, "logs", "--no-color", "--tail", "40"]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, errors="replace")
    print(redact_tokens(result.stdout), end="")
    print(redact_tokens(result.stderr), end="", file=sys.stderr)
    return result.returncode
