"""devstack.safe_files on its own: what root writes, opens and makes in its directories is never written through a
link or a second hard link that someone planted there, and ends up private. In a scratch directory, as whoever
runs the tests (the integration tests plant the same links in the real stack's directories, as root)."""

from __future__ import annotations

import os
import pwd
import stat
from pathlib import Path

import pytest

from devstack.safe_files import (
    UnsafePathError,
    drop_others_access,
    ensure_dir,
    open_private_log,
    read_private,
    write_private,
)

pytestmark = pytest.mark.unit
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="only root gives files away (CI runs as root)")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A file someone wants written: it must keep its text and mode."""
    path = tmp_path / "victim"
    path.write_text("original\n")
    path.chmod(0o644)
    return path


def unchanged(victim: Path) -> bool:
    return victim.read_text() == "original\n" and mode(victim) == 0o644 and victim.stat().st_nlink == 1


def test_ensure_dir_makes_a_directory_with_its_mode(tmp_path: Path) -> None:
    made = ensure_dir(tmp_path / "d", mode=0o750)
    assert made.is_dir() and mode(made) == 0o750
    made.chmod(0o777)
    assert mode(ensure_dir(made, mode=0o700)) == 0o700


def test_ensure_dir_replaces_a_symlink_and_leaves_its_target_alone(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.mkdir(mode=0o755)
    target.chmod(0o755)
    (target / "kept").write_text("x")
    link = tmp_path / "d"
    link.symlink_to(target)
    ensure_dir(link, mode=0o700)
    assert link.is_dir() and not link.is_symlink() and mode(link) == 0o700 and list(link.iterdir()) == []
    assert mode(target) == 0o755 and (target / "kept").read_text() == "x"


def test_ensure_dir_says_it_replaced_a_symlink(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "d").symlink_to(tmp_path)
    ensure_dir(tmp_path / "d", mode=0o700)
    assert f"! {tmp_path / 'd'} was a symlink (to {tmp_path}): replaced by a directory" in capsys.readouterr().err


@needs_root
def test_ensure_dir_gives_the_directory_to_its_owner(tmp_path: Path) -> None:
    nobody = pwd.getpwnam("nobody")

    def owner(path: Path) -> tuple[int, int]:
        return path.lstat().st_uid, path.lstat().st_gid

    made = ensure_dir(tmp_path / "d", mode=0o700, uid=nobody.pw_uid, gid=nobody.pw_gid)
    assert owner(made) == (nobody.pw_uid, nobody.pw_gid)
    assert owner(ensure_dir(made, mode=0o700)) == (nobody.pw_uid, nobody.pw_gid)  # -1: left as it is
    assert owner(ensure_dir(made, mode=0o750, gid=0)) == (nobody.pw_uid, 0)
    assert owner(ensure_dir(made, mode=0o750, uid=0)) == (0, 0)


def test_ensure_dir_refuses_a_file_in_its_place(victim: Path) -> None:
    with pytest.raises(UnsafePathError, match="should be a directory"):
        ensure_dir(victim, mode=0o700)
    assert unchanged(victim)


def test_write_private_writes_a_private_file(tmp_path: Path) -> None:
    path = write_private(tmp_path / "f", "text")
    assert path.read_text() == "text" and mode(path) == 0o600
    assert mode(write_private(path, "more", mode=0o640)) == 0o640 and path.read_text() == "more"
    assert not (tmp_path / ".f.new").exists()


@needs_root
def test_write_private_gives_a_group_read_access(tmp_path: Path) -> None:
    nobody = pwd.getpwnam("nobody")
    path = write_private(tmp_path / "f", "config", mode=0o640, gid=nobody.pw_gid)
    info = path.lstat()
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (0, nobody.pw_gid, 0o640)


def test_write_private_replaces_a_symlink_never_writes_through_it(tmp_path: Path, victim: Path) -> None:
    link = tmp_path / "f"
    link.symlink_to(victim)
    write_private(link, "ours")
    assert not link.is_symlink() and link.read_text() == "ours" and unchanged(victim)


def test_write_private_replaces_a_hard_link(tmp_path: Path, victim: Path) -> None:
    linked = tmp_path / "f"
    os.link(victim, linked)
    write_private(linked, "ours")
    assert linked.read_text() == "ours" and unchanged(victim)


def test_write_private_never_writes_through_a_planted_temporary(tmp_path: Path, victim: Path) -> None:
    (tmp_path / ".f.new").symlink_to(victim)
    write_private(tmp_path / "f", "ours")
    assert (tmp_path / "f").read_text() == "ours" and unchanged(victim)


def test_open_private_log_appends_privately(tmp_path: Path) -> None:
    path = tmp_path / "log"
    path.write_text("before\n")
    path.chmod(0o644)
    fd = open_private_log(path)
    try:
        os.write(fd, b"after\n")
    finally:
        os.close(fd)
    assert path.read_text() == "before\nafter\n" and mode(path) == 0o600


@pytest.mark.parametrize("kind", ["symlink", "hard link"])
def test_open_private_log_replaces_a_planted_link(tmp_path: Path, victim: Path, kind: str) -> None:
    path = tmp_path / "log"
    if kind == "symlink":
        path.symlink_to(victim)
    else:
        os.link(victim, path)
    fd = open_private_log(path)
    try:
        os.write(fd, b"ours\n")
    finally:
        os.close(fd)
    assert not path.is_symlink() and path.read_text() == "ours\n" and mode(path) == 0o600
    assert unchanged(victim)


def test_open_private_log_refuses_a_directory(tmp_path: Path) -> None:
    (tmp_path / "log").mkdir()
    with pytest.raises(UnsafePathError, match="cannot open"):
        open_private_log(tmp_path / "log")


def test_read_private_reads_a_file_never_a_link(tmp_path: Path, victim: Path) -> None:
    assert read_private(victim) == "original\n"
    assert read_private(tmp_path / "missing") is None
    (tmp_path / "link").symlink_to(victim)
    assert read_private(tmp_path / "link") is None


def test_drop_others_access_below_a_root_only(tmp_path: Path, victim: Path) -> None:
    top = tmp_path / "top"
    (top / "sub").mkdir(parents=True)
    top.chmod(0o755)
    (top / "sub").chmod(0o757)
    inner = top / "sub" / "config"
    inner.write_text("secret")
    inner.chmod(0o666)
    (top / "link").symlink_to(victim)
    drop_others_access(top)
    assert mode(top) == 0o755  # `root` itself is left as it is
    assert mode(top / "sub") == 0o750 and mode(inner) == 0o660
    assert unchanged(victim)  # a link is not followed
