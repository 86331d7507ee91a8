"""The `lk` CLI commands docs/livekit-setup.md documents, run against the real stack, and the token
script. Where no `lk` binary can be had (`make lk` failed), the command tests skip and say so."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
from dotenv import dotenv_values

from devstack.stack_env import REPO_ROOT, STACK_ENV, Stack

pytestmark = pytest.mark.integration
LK_VERSION = dotenv_values(STACK_ENV)["LIVEKIT_CLI_VERSION"]
PINNED_LK = REPO_ROOT / ".tools" / f"lk-{LK_VERSION}" / "lk"
LK = shutil.which("lk") or (str(PINNED_LK) if PINNED_LK.exists() else None)
needs_lk = pytest.mark.skipif(LK is None, reason="no lk binary: `make lk` could not build it here")


def token_script(*args: str, env: dict[str, str], path: str | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **env}
    if path is not None:
        full_env["PATH"] = path
    return subprocess.run(
        ["scripts/livekit-token.sh", *args], cwd=REPO_ROOT, capture_output=True, text=True, env=full_env, timeout=30
    )


def test_token_script_names_a_missing_variable(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("LIVEKIT_URL=ws://localhost:7880\n")
    env = {"LIVEKIT_API_KEY": "", "LIVEKIT_API_SECRET": "", "LIVEKIT_ENV_FILE": str(env_file)}
    result = token_script(env=env, path="/usr/bin:/bin")
    assert result.returncode == 2
    assert f"LIVEKIT_API_KEY LIVEKIT_API_SECRET not set: add them to {env_file}" in result.stderr


@pytest.mark.skipif(LK is not None, reason="lk is installed here")
def test_token_script_explains_a_missing_lk() -> None:
    result = token_script(env={"LIVEKIT_API_KEY": "k", "LIVEKIT_API_SECRET": "s" * 32}, path="/usr/bin:/bin")
    assert result.returncode == 2
    assert "the lk CLI is not installed: run `make lk`" in result.stderr


@pytest.fixture
def lk(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    assert LK is not None
    # The key pair goes in through the environment, as the docs say: never the secret on a command line.
    monkeypatch.setenv("LIVEKIT_API_KEY", stack.api_key)
    monkeypatch.setenv("LIVEKIT_API_SECRET", stack.api_secret)
    return [LK, "--url", stack.livekit_http_url]


@needs_lk
def test_documented_room_commands(lk: list[str]) -> None:
    room = f"lk-test-{uuid.uuid4().hex[:6]}"
    created = subprocess.run([*lk, "room", "create", room], capture_output=True, text=True, timeout=30)
    assert created.returncode == 0, created.stderr
    listed = subprocess.run([*lk, "room", "list"], capture_output=True, text=True, timeout=30)
    assert room in listed.stdout
    participants = subprocess.run([*lk, "room", "participants", "list", room], capture_output=True, text=True)
    assert participants.returncode == 0, participants.stderr
    dispatch = subprocess.run(
        [*lk, "dispatch", "create", "--room", room, "--agent-name", "bootstrap-noop"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert dispatch.returncode == 0, dispatch.stderr
    listed_dispatch = subprocess.run([*lk, "dispatch", "list", room], capture_output=True, text=True, timeout=30)
    assert "bootstrap-noop" in listed_dispatch.stdout
    subprocess.run([*lk, "room", "delete", room], capture_output=True, timeout=30)


@needs_lk
def test_token_script_token_joins_a_room(stack: Stack) -> None:
    import asyncio

    from livekit import rtc

    room_name = f"lk-token-{uuid.uuid4().hex[:6]}"
    result = token_script(room_name, "script-user", env={})
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()

    async def join() -> str:
        room = rtc.Room()
        await room.connect(stack.livekit_ws_url, token)
        name = room.name
        await room.disconnect()
        return name

    assert asyncio.run(join()) == room_name
