"""The kerndat cache directory is root's own 0700 directory, whatever was there before."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from agent.runtime.criu_cache import ensure_kdat_dir, trusted


def mode(p: Path) -> int:
    return stat.S_IMODE(os.lstat(p).st_mode)


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the directory must belong to root")


@needs_root
def test_missing_directory_is_created_root_only(tmp_path: Path) -> None:
    d = tmp_path / "kdat"
    old = os.umask(0o077 ^ 0o777)  # a umask that would make it wide open
    try:
        assert ensure_kdat_dir(d) is None
    finally:
        os.umask(old)
    assert trusted(os.lstat(d)) and mode(d) == 0o700


@needs_root
def test_a_good_directory_and_its_cache_stay(tmp_path: Path) -> None:
    d = tmp_path / "kdat"
    d.mkdir(mode=0o700)
    (d / "criu.kdat").write_bytes(b"x")
    assert ensure_kdat_dir(d) is None
    assert (d / "criu.kdat").read_bytes() == b"x"


@needs_root
@pytest.mark.parametrize("plant", ["open_dir", "foreign_owner", "file", "symlink"])
def test_anything_else_is_moved_aside(tmp_path: Path, plant: str) -> None:
    d = tmp_path / "kdat"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    if plant == "open_dir":
        d.mkdir()
        d.chmod(0o777)
        (d / "criu.kdat").write_bytes(b"planted")
    elif plant == "foreign_owner":
        d.mkdir(mode=0o700)
        os.chown(d, 65534, 65534)
    elif plant == "file":
        d.write_bytes(b"planted")
    else:
        d.symlink_to(elsewhere)
    assert ensure_kdat_dir(d) is None
    assert trusted(os.lstat(d)) and not (d / "criu.kdat").exists()
    assert len(list(tmp_path.glob("kdat.untrusted.*"))) == 1
    assert elsewhere.is_dir()  # a symlink's target is not touched


def test_an_impossible_place_is_reported_not_raised(tmp_path: Path) -> None:
    assert "cannot create" in (ensure_kdat_dir(tmp_path / "missing" / "kdat") or "")
