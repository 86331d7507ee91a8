"""LiveKit connection settings, loaded from the environment and `.env` files with python-dotenv.

Every problem is collected before anything is raised, so a user fixes their `.env` in one pass.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from dotenv import dotenv_values

MIN_SECRET_LENGTH = 32
URL_SCHEMES = ("ws", "wss", "http", "https")
REQUIRED = ("LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET")
# The agent name a worker registers under when LIVEKIT_AGENT_NAME is unset (tests/test_drift.py: = stack.env's).
DEFAULT_AGENT_NAME = "bootstrap-noop"


class SettingsError(ValueError):
    """One or more settings are missing or invalid; `problems` lists each of them."""

    def __init__(self, problems: Sequence[str], sources: Sequence[Path]) -> None:
        self.problems = list(problems)
        where = ", ".join(str(p) for p in sources) or "the environment"
        lines = [f"invalid LiveKit settings (set them in {where}):", *(f"  - {p}" for p in problems)]
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class Settings:
    livekit_url: str
    api_key: str
    api_secret: str
    environment: str = "development"
    warnings: tuple[str, ...] = ()
    agent_name: str = DEFAULT_AGENT_NAME  # LIVEKIT_AGENT_NAME: what the standalone worker registers as

    @property
    def http_url(self) -> str:
        """The server's HTTP base URL (the API clients and `GET /` health use http, not ws)."""
        return self.livekit_url.replace("wss://", "https://", 1).replace("ws://", "http://", 1)

    @property
    def ws_url(self) -> str:
        return self.livekit_url.replace("https://", "wss://", 1).replace("http://", "ws://", 1)

    def __repr__(self) -> str:  # never print the secret
        return f"Settings(livekit_url={self.livekit_url!r}, api_key={self.api_key!r}, api_secret='***')"


def read_env(env_files: Sequence[Path]) -> dict[str, str]:
    """Merge `.env` files (earlier files win) under the process environment (which wins over all)."""
    merged: dict[str, str] = {}
    for path in reversed(env_files):
        merged.update({k: v for k, v in dotenv_values(path).items() if v is not None})
    merged.update(os.environ)
    return merged


def validate(env: Mapping[str, str], sources: Sequence[Path] = ()) -> Settings:
    """Build Settings from `env`, or raise SettingsError listing every problem at once."""
    problems = [f"{name} is not set" for name in REQUIRED if not env.get(name, "").strip()]
    url, key, secret = (env.get(name, "").strip() for name in REQUIRED)
    environment = env.get("APP_ENV", "development").strip() or "development"
    if url and urlparse(url).scheme not in URL_SCHEMES:
        problems.append(f"LIVEKIT_URL={url!r} has no ws://, wss://, http:// or https:// scheme")
    warnings: list[str] = []
    if secret and len(secret) < MIN_SECRET_LENGTH:
        message = f"LIVEKIT_API_SECRET is {len(secret)} characters; LiveKit expects at least {MIN_SECRET_LENGTH}"
        if environment == "development":
            warnings.append(message)
        else:
            problems.append(f"{message} (refused because APP_ENV={environment!r})")
    if problems:
        raise SettingsError(problems, sources)
    agent_name = env.get("LIVEKIT_AGENT_NAME", "").strip() or DEFAULT_AGENT_NAME
    return Settings(url, key, secret, environment, tuple(warnings), agent_name)


def load_settings(env_files: Sequence[Path] | None = None) -> Settings:
    """Load settings from `env_files` (default: `.env` in the working directory) and the environment."""
    files = [Path(".env")] if env_files is None else list(env_files)
    existing = [p for p in files if p.is_file()]
    return validate(read_env(existing), existing or files)
