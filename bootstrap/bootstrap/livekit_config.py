"""Checks on docker/livekit.yaml before any server starts, and the native runner's derived copy.

The server only says "could not parse config"; these checks name the file, the line and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bootstrap.stack import LIVEKIT_YAML

DOCKER_HOST = "host.docker.internal"
MIN_SECRET_LENGTH = 32


class ConfigError(ValueError):
    """docker/livekit.yaml cannot work; the message names file, line (when known) and fix."""


@dataclass(frozen=True)
class LiveKitConfig:
    path: Path
    data: dict[str, Any]

    @property
    def keys(self) -> dict[str, str]:
        return {str(k): str(v) for k, v in (self.data.get("keys") or {}).items()}

    @property
    def webhook_key(self) -> str:
        return str((self.data.get("webhook") or {}).get("api_key", ""))

    @property
    def webhook_urls(self) -> list[str]:
        return [str(u) for u in (self.data.get("webhook") or {}).get("urls", [])]


def load_config(path: Path = LIVEKIT_YAML) -> LiveKitConfig:
    """Parse and check the config; raise ConfigError naming file and line."""
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found; restore it with `git checkout {path.name}`") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: invalid YAML ({exc.problem}); fix the syntax at that line") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level")
    config = LiveKitConfig(path, data)
    _check(config)
    return config


def _check(config: LiveKitConfig) -> None:
    where = config.path
    if not config.keys:
        raise ConfigError(f"{where}: `keys` is empty; add `devkey: <secret of 32+ characters>`")
    if config.webhook_urls and config.webhook_key not in config.keys:
        known = ", ".join(config.keys)
        raise ConfigError(
            f"{where}: webhook.api_key {config.webhook_key!r} is not among `keys` ({known}); "
            "the server refuses to start: set webhook.api_key to one of them"
        )


def short_secrets(config: LiveKitConfig) -> list[str]:
    return [key for key, secret in config.keys.items() if len(secret) < MIN_SECRET_LENGTH]


def derive_native(config_text: str) -> str:
    """The native copy: the server runs on the host itself, so the webhook host is plain loopback."""
    return config_text.replace(DOCKER_HOST, "127.0.0.1")
