"""Files and directories that a root process writes, made safe against the service accounts it runs.

As root, `make up` hands data directories to unprivileged users (postgres, redis, livekit). Whoever can act as
one of them could plant a symlink where root later writes, chowns or opens a log, and so reach any root file.
The rule here: everything root writes lives in a directory root owns (a service account can read it through its
group, never write it), is opened with O_NOFOLLOW (O_EXCL where new), and is private (0600) unless a service
must read it (0640, its group). Ownership changes use lchown on paths that lstat showed to be real directories.
"""

from __future__ import annotations

import contextlib
import os
import stat
import sys
from pathlib import Path


class UnsafePathError(RuntimeError):
    """A path that must be a directory or file of ours is something else; the message says what to do."""


def ensure_dir(path: Path, *, mode: int, uid: int = -1, gid: int = -1) -> Path:
    """`path` as a real directory (not a symlink) owned by uid:gid (-1: unchanged) with `mode`. A symlink
    found there is removed first: its parent is ours, so only an older layout can have left one behind."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode):
        print(f"! {path} was a symlink (to {os.readlink(path)}): replaced by a directory", file=sys.stderr)
        os.unlink(path)
        os.mkdir(path, 0o700)
        info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise UnsafePathError(f"{path} should be a directory but is not: move it away, then run `make up` again")
    if (uid, gid) != (-1, -1) and (info.st_uid, info.st_gid) != (_or(uid, info.st_uid), _or(gid, info.st_gid)):
        os.lchown(path, uid, gid)
    # chmod follows links, but lstat just showed a real directory, and only we can write its parent.
    os.chmod(path, mode)
    return path


def write_private(path: Path, text: str, *, mode: int = 0o600, gid: int = -1) -> Path:
    """Replace `path` with `text`: written to a new file (O_EXCL | O_NOFOLLOW) beside it, then renamed over it,
    so a symlink or hard link planted at `path` is replaced, never written through."""
    temporary = path.with_name(f".{path.name}.new")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temporary)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, text.encode())
        if gid != -1:
            os.fchown(fd, -1, gid)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)
    os.replace(temporary, path)
    return path


def open_private_log(path: Path) -> int:
    """An append-only descriptor for a log that only we can read; a symlink or a hard-linked file found at
    `path` is replaced by a new file first."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as exc:  # ELOOP: a symlink
        if not os.path.islink(path):
            raise UnsafePathError(f"cannot open {path}: {exc}") from None
        os.unlink(path)
        fd = os.open(path, flags | os.O_EXCL, 0o600)
    info = os.fstat(fd)
    if info.st_nlink > 1 or not stat.S_ISREG(info.st_mode):
        os.close(fd)
        os.unlink(path)
        fd = os.open(path, flags | os.O_EXCL, 0o600)
    os.fchmod(fd, 0o600)
    return fd


def read_private(path: Path) -> str | None:
    """The text of a file of ours, not following a symlink; None when there is none."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except (FileNotFoundError, OSError):
        return None
    with os.fdopen(fd) as file:
        return file.read()


def _or(value: int, current: int) -> int:
    return current if value == -1 else value


def drop_others_access(root: Path) -> None:
    """Take every access of others' away from what we own under `root` (not `root` itself), descending only
    into directories we own: files an older layout made world-readable (configs with secrets, logs) become
    private. A service's own data directories are its business, and left alone."""
    for entry in os.scandir(root):
        info = entry.stat(follow_symlinks=False)
        if stat.S_ISLNK(info.st_mode) or info.st_uid != os.geteuid():
            continue
        if info.st_mode & stat.S_IRWXO:
            os.chmod(entry.path, stat.S_IMODE(info.st_mode) & ~stat.S_IRWXO)  # lstat: not a link
        if stat.S_ISDIR(info.st_mode):
            drop_others_access(Path(entry.path))
