"""Files the agent writes inside a container's rootfs (hostname, hosts) never escape it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.storage import rootfs


def test_write_then_read(tmp_path: Path) -> None:
    rootfs.write_file(tmp_path, "etc/hostname", b"web1\n")
    assert rootfs.read_file(tmp_path, "etc/hostname") == b"web1\n"
    assert (tmp_path / "etc/hostname").stat().st_mode & 0o777 == 0o644


def test_symlinked_directory_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    ct = tmp_path / "ct"
    ct.mkdir()
    os.symlink(str(outside), ct / "etc")
    with pytest.raises(rootfs.UnsafePath):
        rootfs.write_file(ct, "etc/hostname", b"x")
    assert list(outside.iterdir()) == []


def test_symlinked_file_is_replaced_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"host data")
    ct = tmp_path / "ct"
    (ct / "etc").mkdir(parents=True)
    os.symlink(str(victim), ct / "etc/hosts")
    rootfs.write_file(ct, "etc/hosts", b"127.0.0.1 localhost\n")
    assert victim.read_bytes() == b"host data"
    assert not (ct / "etc/hosts").is_symlink()
    assert rootfs.read_file(ct, "etc/hosts") == b"127.0.0.1 localhost\n"


def test_read_through_symlink_gives_nothing(tmp_path: Path) -> None:
    (tmp_path / "secret").write_bytes(b"s")
    ct = tmp_path / "ct"
    ct.mkdir()
    os.symlink(str(tmp_path / "secret"), ct / "link")
    assert rootfs.read_file(ct, "link") is None


@pytest.mark.parametrize("rel", ["../x", "etc/../../x", "", "/"])
def test_escaping_names_are_refused(tmp_path: Path, rel: str) -> None:
    with pytest.raises(rootfs.UnsafePath):
        rootfs.write_file(tmp_path, rel, b"x")
