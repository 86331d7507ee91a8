"""Tokens out of what devstack shows of a log: livekit-server quotes a refused token whole in its 401 warnings
(`"error": "invalid token: eyJhbGciOi…"`), and whoever holds a participant token can join its room."""

from __future__ import annotations

import re

# The same pattern as backend.logging.JWT (devstack cannot import backend: tests/test_layout.py; a drift test
# compares them): a whole JWT, three base64url parts, the first one a JSON object's.
JWT = re.compile(r"eyJ[\w-]+\.[\w-]+\.[\w-]+")


def redact_tokens(text: str) -> str:
    """Every whole JWT in `text` cut to a short prefix and its length, as backend.logging.redact does."""
    return JWT.sub(lambda m: f"{m.group(0)[:10]}…({len(m.group(0))} chars)", text)
