"""Migration decisions and data handling that need no kernel: mode choice, preflight comparison,
image streams with their manifest, journals."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.errors import VzError
from agent.migration import images, journal, source
from agent.migration.destination import Facts, check_compat
from agent.migration.source import POSTCOPY_MIN_BYTES, choose_mode


def facts(node: str = "n1", *, version: str = "4.2.1", features: tuple[str, ...] = ("uffd", "uffd-noncoop"),
          flags: tuple[str, ...] = ("sse2", "avx2"), free_disk: int = 10 << 30) -> Facts:
    return Facts(node=node, criu_version=version, criu_features=features, cpu_flags=flags, free_disk=free_disk,
                 free_memory=8 << 30, kernel="6.18")


@pytest.mark.parametrize(("requested", "online", "memory", "dst_features", "expected"), [
    ("auto", False, 0, ("uffd-noncoop",), "offline"),
    ("auto", True, 1 << 20, ("uffd-noncoop",), "stopcopy"),
    ("auto", True, POSTCOPY_MIN_BYTES, ("uffd-noncoop",), "postcopy"),
    ("auto", True, 1 << 30, (), "stopcopy"),
    ("stopcopy", True, 1 << 30, ("uffd-noncoop",), "stopcopy"),
    ("postcopy", True, 1 << 20, ("uffd-noncoop",), "postcopy"),
])
def test_mode_choice(requested: str, online: bool, memory: int, dst_features: tuple[str, ...],
                     expected: str) -> None:
    mode, reason = choose_mode(requested, online, facts(), facts("n2", features=dst_features), memory)
    assert mode == expected
    assert reason


@pytest.mark.parametrize(("requested", "dst_features", "match"), [
    ("precopy", ("uffd-noncoop",), "dirty-page tracking"),
    ("postcopy", (), "userfaultfd"),
    ("bogus", (), "unknown mode"),
])
def test_impossible_modes_are_refused_with_the_reason(requested: str, dst_features: tuple[str, ...],
                                                     match: str) -> None:
    with pytest.raises(VzError, match=match):
        choose_mode(requested, True, facts(), facts("n2", features=dst_features))


def test_compatible_nodes_pass_every_check() -> None:
    out = check_compat(facts(), facts("n2"), online=True, private_bytes=1 << 20, skip=())
    assert out and all(line.startswith("ok:") for line in out)


def test_missing_cpu_features_old_criu_and_full_disk_are_named() -> None:
    out = check_compat(facts(flags=("sse2", "avx512f")), facts("n2", version="3.17", free_disk=1 << 20),
                       online=True, private_bytes=1 << 30, skip=())
    failed = " ".join(line for line in out if line.startswith("FAILED"))
    assert "avx512f" in failed and "3.17" in failed and "disk" in failed


def test_skipped_checks_do_not_run() -> None:
    out = check_compat(facts(flags=("x",)), facts("n2", flags=()), online=True, private_bytes=0,
                       skip=("cpu", "criu", "disk"))
    assert out == []


def test_offline_moves_need_no_criu_or_cpu_match() -> None:
    out = check_compat(facts(version=""), facts("n2", version="", flags=()), online=False, private_bytes=0, skip=())
    assert [line.split(":")[1].strip() for line in out] == ["disk"]


@pytest.mark.parametrize(("rate", "level"), [(None, 1), (1e9, 1), (100e6, 3), (10e6, 6)])
def test_zstd_level_follows_the_link(rate: float | None, level: int) -> None:
    assert images.zstd_level_for(rate) == level


def _image_dir(tmp_path: Path) -> Path:
    d = tmp_path / "img"
    d.mkdir()
    (d / "pages-1.img").write_bytes(os.urandom(100_000) + bytes(300_000))
    (d / "core-1.img").write_bytes(b"core")
    return d


def test_image_stream_round_trip(tmp_path: Path) -> None:
    blob, manifest, _ = images.pack(_image_dir(tmp_path), level=1)
    stream = tmp_path / "s.tar.zst"
    stream.write_bytes(blob)
    out = tmp_path / "out"
    images.unpack(stream, out, manifest)
    assert images.manifest(out) == manifest


def test_corrupt_stream_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    blob, manifest, _ = images.pack(_image_dir(tmp_path), level=1)
    bad = bytearray(blob)
    bad[len(bad) // 2] ^= 0xFF
    stream = tmp_path / "s.tar.zst"
    stream.write_bytes(bytes(bad))
    with pytest.raises(VzError, match="image stream"):
        images.unpack(stream, tmp_path / "out", manifest)
    assert not (tmp_path / "out").exists()


def test_truncated_stream_or_missing_manifest_is_refused(tmp_path: Path) -> None:
    blob, manifest, _ = images.pack(_image_dir(tmp_path), level=1)
    stream = tmp_path / "s.tar.zst"
    stream.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(VzError):
        images.unpack(stream, tmp_path / "out", manifest)
    stream.write_bytes(blob)
    with pytest.raises(VzError, match="manifest"):
        images.unpack(stream, tmp_path / "out", {})


def test_manifest_mismatch_is_refused(tmp_path: Path) -> None:
    blob, manifest, _ = images.pack(_image_dir(tmp_path), level=1)
    stream = tmp_path / "s.tar.zst"
    stream.write_bytes(blob)
    forged = dict(manifest, **{"core-1.img": "0" * 64})
    with pytest.raises(VzError, match="checksum mismatch"):
        images.unpack(stream, tmp_path / "out", forged)


def test_journal_round_trip_and_pending(tmp_path: Path) -> None:
    j = journal.Journal(id="abc", ctid=101, direction="out", state=journal.OUT_FROZEN, peer="10.0.0.2:7779")
    journal.save(tmp_path, j)
    assert journal.load(tmp_path, "out", 101) == j
    assert journal.pending(tmp_path, "out") == [j]
    assert journal.pending(tmp_path, "in") == []
    journal.remove(tmp_path, "out", 101)
    assert journal.load(tmp_path, "out", 101) is None


@pytest.mark.parametrize(("line", "expected"), [
    ("    32,768 100%   31.25MB/s    0:00:00 (xfr#1, to-chk=0/3)", 100),
    ("  1,234,567,890  45%  112.30MB/s    0:00:10", 45),
    ("          0   0%    0.00kB/s    0:00:00", 0),
    ("sending incremental file list", None),
    ("Total bytes sent: 1,234", None),
])
def test_rsync_percent(line: str, expected: int | None) -> None:
    assert source.rsync_percent(line) == expected
