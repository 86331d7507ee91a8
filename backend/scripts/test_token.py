"""Print a participant token minted by backend.tokens (seed task 2.5).

Usage: python backend/scripts/test_token.py [--room test-room] [--identity test-user] [--agent NAME]
"""

from __future__ import annotations

import argparse
import sys
from datetime import timedelta
from pathlib import Path

from backend.settings import SettingsError, load_settings
from backend.tokens import participant_token


def main() -> int:
    parser = argparse.ArgumentParser(description="Print a LiveKit participant token")
    parser.add_argument("--room", default="test-room")
    parser.add_argument("--identity", default="test-user")
    parser.add_argument("--agent", help="agent name to dispatch when this join creates the room")
    parser.add_argument("--hours", type=float, default=24.0, help="validity in hours")
    args = parser.parse_args()
    try:
        settings = load_settings([Path("backend/.env"), Path(".env")])
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        return 2
    ttl = timedelta(hours=args.hours)
    print(participant_token(settings, identity=args.identity, room=args.room, ttl=ttl, agent_name=args.agent))
    return 0


if __name__ == "__main__":
    sys.exit(main())
