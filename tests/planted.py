"""The root-owned victim the privilege tests plant links to (test_chromium_profile_faults,
test_participant_home_faults): whatever a service account plants must leave it exactly as it was."""

from __future__ import annotations

import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Victim:
    """A root-owned directory (0755) with a root-owned file in it: what the service account wants."""

    directory: Path
    file: Path

    def snapshot(self) -> dict[str, Any]:
        def owner_mode(path: Path) -> tuple[int, int, int]:
            info = path.lstat()
            return info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)

        return {
            "directory": owner_mode(self.directory),
            "entries": sorted(p.name for p in self.directory.iterdir()),
            "file": owner_mode(self.file),
            "text": self.file.read_text(),
        }


@contextmanager
def victim(file_mode: int) -> Iterator[Victim]:
    """A fresh victim whose file has `file_mode`, removed afterwards."""
    directory = Path(tempfile.mkdtemp(prefix="victim-"))
    directory.chmod(0o755)
    file = directory / "precious"
    file.write_text("original\n")
    file.chmod(file_mode)
    try:
        yield Victim(directory, file)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
