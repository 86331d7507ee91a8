"""Who holds a port: so a taken port is reported with its owner, never silently reused."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess

_OWNER = re.compile(r'\("([^"]+)",pid=(\d+)')


def port_owner(port: int, *, udp: bool = False) -> str | None:
    """'program (pid N)' for the process listening on `port`, 'unknown process' if `ss` cannot tell,
    None if the port is free."""
    if not _in_use(port, udp=udp):
        return None
    if shutil.which("ss"):
        flag = "-lunpH" if udp else "-ltnpH"
        out = subprocess.run(["ss", flag, f"sport = :{port}"], capture_output=True, text=True).stdout
        if match := _OWNER.search(out):
            return f"{match.group(1)} (pid {match.group(2)})"
    return "unknown process"


def owner_pid(port: int, *, udp: bool = False) -> int | None:
    owner = port_owner(port, udp=udp) or ""
    match = re.search(r"pid (\d+)", owner)
    return int(match.group(1)) if match else None


def _in_use(port: int, *, udp: bool) -> bool:
    kind = socket.SOCK_DGRAM if udp else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, kind) as sock:
        if not udp:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False
