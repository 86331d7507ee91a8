"""The docs cannot lie: the compatibility matrix matches the pins (stack.env) and the lock file (uv.lock)."""

from __future__ import annotations

import re
import tomllib

import pytest
from dotenv import dotenv_values

from devstack.stack_env import REPO_ROOT, STACK_ENV
from tests.conftest import run_module

pytestmark = pytest.mark.unit
SETUP = REPO_ROOT / "docs" / "livekit-setup.md"


def matrix() -> dict[str, str]:
    """component → version, from the '## Compatibility matrix' table."""
    section = SETUP.read_text().split("## Compatibility matrix", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| ([^|]+?) \| ([^|]+?) \|", section, flags=re.MULTILINE)
    return {name: version for name, version in rows if name not in ("component", "---")}


def locked() -> dict[str, str]:
    lock = tomllib.loads((REPO_ROOT / "uv.lock").read_text())
    return {p["name"]: p["version"] for p in lock["package"] if "version" in p}


def test_python_sdk_versions_match_the_lock_file() -> None:
    docs, lock = matrix(), locked()
    assert docs["livekit-api (Python, backend)"] == lock["livekit-api"]
    assert docs["livekit-agents (Python, agent-runtime)"] == lock["livekit-agents"]
    assert docs["livekit (Python rtc)"] == lock["livekit"]


def test_server_cli_and_js_versions_match_the_pins() -> None:
    docs, pins = matrix(), dotenv_values(STACK_ENV)
    assert docs["livekit-server"] == pins["LIVEKIT_VERSION"]
    assert docs["lk (livekit-cli)"] == pins["LIVEKIT_CLI_VERSION"]
    assert docs["livekit-client (JS, frontend epic)"] == pins["LIVEKIT_CLIENT_JS_VERSION"]


def test_troubleshooting_covers_the_known_failure_modes() -> None:
    section = SETUP.read_text().split("## Troubleshooting", 1)[1]
    entries = re.findall(r"^\*\*(.+?)\*\*", section, flags=re.MULTILINE)
    assert len(entries) >= 6
    for topic in ("Port already in use", "not starting", "401", "Webhooks not arriving", "ICE", "Secret too short"):
        assert any(topic in entry for entry in entries), topic


def test_readme_links_the_docs() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    assert "docs/livekit-setup.md" in readme and "docs/bootstrap.md" in readme


def test_every_bootstrap_option_is_documented() -> None:
    help_text = run_module("bootstrap", "--help").stdout
    options = set(re.findall(r"(--[a-z][a-z-]+)", help_text)) - {"--help"}
    documented = (REPO_ROOT / "docs" / "bootstrap.md").read_text()
    assert options, help_text
    assert not {o for o in options if f"`{o}" not in documented}, "add them to docs/bootstrap.md's option table"
