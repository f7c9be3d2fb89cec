"""A vzdump archive: the config first, the private area after it, excludes honoured; restore reads
the config without extracting and rewrites it for the new CTID."""

from __future__ import annotations

import io
import os
import tarfile
from datetime import datetime
from pathlib import Path

import pytest

from agent.backup import naming, restore, writer
from agent.errors import Kind, VzError
from agent.layout import NodeLayout
from agent.storage import archive
from cli import vzdump
from vzapi import storage_pb2 as pb

CONF = 'HOSTNAME="web1"\nDISKSPACE="100M:100M"\nVE_LAYOUT="image"\nVE_ROOT="/old/root/101"\n' \
       'VE_PRIVATE="/old/private/101"\n'


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    src = tmp_path / "private"
    for d in ("bin", "etc/vzdump", "tmp/cache", "root"):
        (src / d).mkdir(parents=True)
    (src / "bin/busybox").write_bytes(b"\x7fELF" + b"x" * 1000)
    os.symlink("busybox", src / "bin/sh")
    os.symlink("/etc/passwd", src / "root/abs-link")  # absolute: stored verbatim, never followed
    (src / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    (src / "etc/vzdump/vps.conf").write_text("stale config left inside the container\n")
    (src / "tmp/cache/big").write_bytes(b"0" * 5000)
    os.link(src / "etc/passwd", src / "root/hard")
    return src


def test_file_list_prunes_excluded_paths_and_the_containers_own_vps_conf(tree: Path) -> None:
    names, total = writer.file_list(tree, naming.compile_excludes(["/tmp/.+"]))
    assert names[0] == "."
    assert "./tmp" in names and not any(n.startswith("./tmp/") for n in names)
    assert "./etc/vzdump/vps.conf" not in names and "./etc/vzdump" in names
    assert "./bin/sh" in names and "./root/abs-link" in names
    assert total == 1004 + 2 * len("root:x:0:0::/root:/bin/sh\n")


@pytest.mark.parametrize("compress", [True, False])
def test_archive_starts_with_the_config_and_extracts_safely(tree: Path, tmp_path: Path, compress: bool) -> None:
    dest = tmp_path / naming.archive_name(101, datetime(2020, 1, 2, 3, 4, 5), compress=compress)
    seen: list[tuple[int, int, int]] = []
    w = writer.write_archive(tree, CONF, dest, compress=compress, excludes=naming.compile_excludes(["/tmp/.+"]),
                             progress=lambda *a: seen.append(a))
    assert dest.exists() and w.size == dest.stat().st_size and w.warnings == ""
    assert oct(dest.stat().st_mode & 0o777) == oct(0o600)
    assert seen and seen[-1][0] > 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no .part, no work dir left
    assert archive.detect_compression(dest) == ("zst" if compress else "tar")
    assert restore.read_first_conf(dest) == CONF
    out = tmp_path / "out"
    archive.extract_archive(dest, out)
    assert (out / naming.CONF_MEMBER).read_text() == CONF
    assert os.readlink(out / "root/abs-link") == "/etc/passwd"
    assert (out / "root/hard").stat().st_ino == (out / "etc/passwd").stat().st_ino
    assert (out / "tmp").is_dir() and not (out / "tmp/cache").exists()


def test_a_failed_archive_leaves_nothing(tmp_path: Path) -> None:
    dest = tmp_path / "vzdump-openvz-101-2020_01_02-03_04_05.tar"
    with pytest.raises(VzError) as e:
        writer.write_archive(tmp_path / "missing", CONF, dest, compress=False)
    assert e.value.kind is Kind.FAILED and "Cannot open" in str(e.value)
    assert list(tmp_path.iterdir()) == []


def _tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as t:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return path


def test_an_openvz_archive_has_its_config_elsewhere(tmp_path: Path) -> None:
    a = _tar(tmp_path / "ovz.tar", [("./etc/passwd", b"x"), ("./etc/vzdump/vps.conf", CONF.encode())])
    assert restore.read_first_conf(a) is None


def test_a_non_archive_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"this is no tar archive at all" * 40)
    with pytest.raises(VzError) as e:
        restore.read_first_conf(junk)
    assert e.value.kind is Kind.INVALID


def test_an_oversized_config_is_refused(tmp_path: Path) -> None:
    a = _tar(tmp_path / "big.tar", [(naming.CONF_MEMBER, b"#" * (restore.MAX_CONF_BYTES + 1))])
    with pytest.raises(VzError):
        restore.read_first_conf(a)


def test_restored_config_gets_this_nodes_paths_and_layout(tmp_path: Path) -> None:
    lay = NodeLayout.at(tmp_path, "n1")
    conf = restore.restored_config(CONF, "<archive>", lay, 202, image=True)
    assert conf.get("VE_PRIVATE") == str(lay.private(202)) and conf.get("VE_ROOT") == str(lay.ve_root(202))
    assert conf.get("VE_LAYOUT") == "image" and conf.get("HOSTNAME") == "web1"
    plain = restore.restored_config(CONF, "<archive>", lay, 202, image=False)
    assert plain.get("VE_LAYOUT") is None


def test_a_broken_archived_config_is_refused(tmp_path: Path) -> None:
    with pytest.raises(VzError) as e:
        restore.restored_config('CPUUNITS="lots"\n', "<archive>", NodeLayout.at(tmp_path, "n1"), 202, image=False)
    assert e.value.kind is Kind.INVALID


def test_config_is_taken_out_of_the_restored_tree(tmp_path: Path) -> None:
    (tmp_path / "etc/vzdump").mkdir(parents=True)
    (tmp_path / naming.CONF_MEMBER).write_text(CONF)
    assert restore._take_conf(tmp_path) == CONF
    assert not (tmp_path / "etc/vzdump").exists() and (tmp_path / "etc").is_dir()


def test_a_symlinked_config_is_not_followed(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("host secret")
    ct = tmp_path / "ct"
    (ct / "etc").mkdir(parents=True)
    os.symlink(secret, ct / "etc/vzdump")
    assert restore._take_conf(ct) is None
    assert secret.read_text() == "host secret"


@pytest.mark.parametrize("done, total, files, text", [
    (50 << 20, 100 << 20, 10, "  archive:  50% 50.0MiB of 100.0MiB, 25.0MiB/s"),
    (3 << 20, 0, 42, "  archive: 3.0MiB, 42 files, 1.5MiB/s"),
])
def test_progress_line(done: int, total: int, files: int, text: str) -> None:
    msg = pb.BackupProgress(phase="archive", bytes_done=done, bytes_total=total, files_done=files)
    assert vzdump.progress_text(msg, 2.0) == text
