"""The post-pre-copy filesystem delta: when files may travel with the images, and how they land."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.migration import fsdelta


@pytest.mark.parametrize(("records", "files", "why"), [
    ([], (), "0 file"),
    ([b"f 1 10 tmp/count"], ("tmp/count",), "1 file"),
    ([b"f 1 10 a", b"l 1 3 b"], ("a", "b"), "2 file"),
    ([b"d 2 4096 tmp"], None, "directory tmp"),
    ([b"d 2 4096 "], None, "directory /"),
    ([b"p 1 0 fifo"], None, "special file"),
    ([b"f 2 10 linked"], None, "hard-linked"),
    ([b"f 1 %d big" % (fsdelta.MAX_BYTES + 1)], None, "too many"),
])
def test_classify(records: list[bytes], files: tuple[str, ...] | None, why: str) -> None:
    d = fsdelta.classify(records)
    assert d.files == files
    assert why in d.reason


def test_stage_then_apply_lands_files_with_their_metadata(tmp_path: Path) -> None:
    src, dst, img = tmp_path / "src", tmp_path / "dst", tmp_path / "img"
    for root in (src, dst):
        (root / "etc").mkdir(parents=True)
    (src / "etc/app.conf").write_text("new")
    os.chmod(src / "etc/app.conf", 0o640)
    os.utime(src / "etc/app.conf", ns=(1_000_000_000, 2_000_000_000))
    os.symlink("app.conf", src / "etc/link")
    (dst / "etc/app.conf").write_text("old")
    img.mkdir()

    fsdelta.stage(src, ["etc/app.conf", "etc/link"], img)
    assert fsdelta.apply(img, dst) == 2

    assert (dst / "etc/app.conf").read_text() == "new"
    st = os.stat(dst / "etc/app.conf")
    assert st.st_mode & 0o777 == 0o640 and st.st_mtime_ns == 2_000_000_000
    assert os.readlink(dst / "etc/link") == "app.conf"
    assert not (img / fsdelta.DELTA_DIR).exists()


def test_apply_never_follows_a_symlink_in_the_private_area(tmp_path: Path) -> None:
    outside, dst, img = tmp_path / "outside", tmp_path / "dst", tmp_path / "img"
    outside.mkdir()
    dst.mkdir()
    os.symlink(str(outside), dst / "etc")  # planted by the container
    (img / fsdelta.DELTA_DIR / "etc").mkdir(parents=True)
    (img / fsdelta.DELTA_DIR / "etc/x").write_text("x")
    with pytest.raises(Exception):  # noqa: B017 - UnsafePath, whatever its exact type
        fsdelta.apply(img, dst)
    assert list(outside.iterdir()) == []


def test_timestamp_margin_is_one_tick_on_fine_filesystems_and_a_second_on_coarse_ones(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("x")
    assert fsdelta.timestamp_margin(tmp_path) == fsdelta.FINE_MARGIN_S  # pytest's tmp: ns timestamps
    assert fsdelta.timestamp_margin(tmp_path / "missing") == fsdelta.COARSE_MARGIN_S
