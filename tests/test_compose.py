"""docker-compose.yml validated by compose-go (the parser Docker Compose uses), not by eye."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from devstack.stack_env import REPO_ROOT
from tests.conftest import composecheck

pytestmark = pytest.mark.unit


def _check(compose_file: Path) -> subprocess.CompletedProcess[str]:
    return composecheck(compose_file)


def test_compose_file_is_valid_and_complete() -> None:
    result = _check(REPO_ROOT / "docker-compose.yml")
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    assert set(services) == {"livekit", "redis", "postgres"}
    livekit = services["livekit"]
    assert "--dev" not in livekit["command"]
    assert livekit["command"][:2] == ["--config", "/etc/livekit.yaml"]
    assert livekit["extra_hosts"] == {"host.docker.internal": ["host-gateway"]} or livekit["extra_hosts"] == [
        "host.docker.internal=host-gateway"
    ]
    assert livekit["healthcheck"]["test"][-1] == "http://127.0.0.1:7880/"
    assert services["redis"]["healthcheck"]["test"][-2:] == ["redis-cli", "ping"]
    assert "pg_isready" in services["postgres"]["healthcheck"]["test"][-1]


def test_the_checker_rejects_an_invalid_file(tmp_path: Path) -> None:
    broken = tmp_path / "docker-compose.yml"
    broken.write_text('services:\n  livekit:\n    image: x\n    ports: ["not-a-port:abc"]\n')
    result = _check(broken)
    assert result.returncode == 1
    assert "invalid compose file" in result.stderr


@pytest.mark.skipif(not shutil.which("docker"), reason="no docker client")
def test_docker_compose_config_accepts_it_where_the_plugin_exists() -> None:
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("the Docker Compose plugin is not installed; compose-go validated the file above")
    result = subprocess.run(
        ["docker", "compose", "--env-file", "stack.env", "--env-file", ".env.secrets", "config", "--quiet"],
        cwd=REPO_ROOT,
        capture_output=True,
    )
    assert result.returncode == 0, result.stderr
