"""`python -m devstack env` (make env): each missing `.env` created from its example, private (0600); an
existing one never overwritten, only made private if others could read it; the development passwords
generated into `.env.secrets` when missing."""

from __future__ import annotations

import os
import stat

from devstack.credentials import SECRETS_ENV, generate
from devstack.safe_files import write_private
from devstack.stack_env import REPO_ROOT

EXAMPLES = (".env.example", "backend/.env.example", "agent-runtime/.env.example", "frontend/.env.local.example")


def create_env_files() -> int:
    for example in EXAMPLES:
        target = REPO_ROOT / example.removesuffix(".example")
        if target.is_symlink() or target.exists():
            print(f"  kept    {target.relative_to(REPO_ROOT)} (exists){_made_private(target)}")
        else:
            write_private(target, (REPO_ROOT / example).read_text())
            print(f"  created {target.relative_to(REPO_ROOT)} from {example} (mode 0600)")
    name = SECRETS_ENV.relative_to(REPO_ROOT)
    print(f"  created {name}: new development passwords (mode 0600)" if generate() else f"  kept    {name} (exists)")
    return 0


def _made_private(path: os.PathLike[str]) -> str:
    """Take others' and the group's access away from a settings file that has it (it holds the API secret)."""
    info = os.stat(path)
    if not info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        return ""
    os.chmod(path, stat.S_IMODE(info.st_mode) & 0o700)
    return ", made private (0600): it was readable by others"
