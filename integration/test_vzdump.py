"""vzdump end to end: back real busybox containers up, destroy them, restore them, compare every file."""

from __future__ import annotations

import io
import re
import subprocess
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard

from integration.harness import Containers, Node, describe

pytestmark = [pytest.mark.privileged, pytest.mark.integration]

ARCHIVE_RE = re.compile(r"^vzdump-openvz-(\d+)-\d{4}_\d{2}_\d{2}-\d{2}_\d{2}_\d{2}\.tar(\.zst)?$")
CHECKSUMS = "find / -xdev -type f ! -path '/proc/*' ! -path '/tmp/*' ! -name utmp | sort | xargs sha256sum; " \
            "find / -xdev ! -path '/proc/*' ! -path '/tmp/*' | sort | xargs ls -ld --full-time | " \
            "grep -v ' /$' | awk '{print $1, $3, $4, $NF}'"


def expect_exit(node: Node, code: int, *argv: str) -> subprocess.CompletedProcess[str]:
    res = node.cli(*argv, check=False)
    assert res.returncode == code, f"expected exit {code}; " + describe(res, node.root)
    return res


def inside(node: Node, ctid: int, script: str) -> str:
    return node.cli("vzctl", "exec", str(ctid), script).stdout


def archives(dumpdir: Path, ctid: int) -> list[Path]:
    return sorted(p for p in dumpdir.iterdir() if (m := ARCHIVE_RE.match(p.name)) and m.group(1) == str(ctid))


def members(archive: Path) -> list[str]:
    with open(archive, "rb") as raw:
        head = raw.read(4)
        raw.seek(0)
        stream = zstandard.ZstdDecompressor().stream_reader(raw) if head == b"\x28\xb5\x2f\xfd" else raw
        with tarfile.open(fileobj=stream, mode="r|") as t:
            return [m.name for m in t]


def populate(node: Node, ctid: int) -> None:
    inside(node, ctid, "mkdir -p /root/d/e; echo hello > /root/a; dd if=/dev/urandom of=/root/b bs=64k count=16 "
                       "2>/dev/null; ln -s /root/a /root/link; ln /root/a /root/hard; chmod 4711 /root/b; "
                       "mkfifo /root/fifo; touch -d '2001-02-03 04:05:06' /root/d/e; echo skip > /root/skip.me")


def test_suspend_backup_destroy_restore_brings_back_identical_files(node: Node, cts: Containers,
                                                                    tmp_path: Path) -> None:
    dumpdir = tmp_path / "dump"
    ct = cts.create("--diskspace", "64M:64M", "--hostname", "bk1", start=True)
    populate(node, ct)
    before = inside(node, ct, CHECKSUMS)
    assert "/root/b" in before and "/bin/busybox" in before

    # when it is backed up with a short freeze
    out = node.cli("vzdump", "--suspend", "--compress", "--dumpdir", str(dumpdir), str(ct), timeout=120).stdout
    # then one zstd archive named like OpenVZ's, a log line with size and duration, a short freeze
    [archive] = archives(dumpdir, ct)
    assert archive.name.endswith(".tar.zst") and members(archive)[0] == "./etc/vzdump/vps.conf"
    finished = next(line for line in out.splitlines() if "Finished Backup of VM" in line)
    assert re.search(r"\(\d\d:\d\d:\d\d\): \S+\.tar\.zst, [\d.]+[KM]iB, frozen ([\d.]+) s", finished), out
    frozen = float(re.findall(r"frozen ([\d.]+) s", finished)[0])
    print(f"\nvzdump --suspend froze container {ct} for {frozen:.3f} s")
    assert frozen < 1.0
    logs = [p for p in dumpdir.iterdir() if p.name.startswith("vzdump-") and p.suffix == ".log"]
    assert len(logs) == 1 and "Finished Backup of VM" in logs[0].read_text()
    assert inside(node, ct, "hostname").strip() == "bk1"  # it runs on

    # when the container is destroyed and restored from the archive
    node.cli("vzctl", "stop", "--fast", str(ct))
    node.cli("vzctl", "destroy", str(ct))
    node.cli("vzdump", "--restore", str(archive), str(ct), timeout=120)
    conf = node.conf_file(ct).read_text()
    assert 'VE_LAYOUT="image"' in conf and 'DISKSPACE="64M:64M"' in conf
    node.cli("vzctl", "start", str(ct))
    # then every file is back, with its content, mode, owner and link
    assert inside(node, ct, CHECKSUMS) == before
    assert inside(node, ct, "readlink /root/link").strip() == "/root/a"
    assert inside(node, ct, "test ! -e /etc/vzdump/vps.conf && echo clean").strip() == "clean"
    assert node.cli("vzquota", "stat", str(ct)).returncode == 0


def test_restore_onto_an_existing_container_needs_force(node: Node, cts: Containers, tmp_path: Path) -> None:
    dumpdir = tmp_path / "dump"
    ct = cts.create(start=True)
    populate(node, ct)
    node.cli("vzdump", "--dumpdir", str(dumpdir), str(ct))
    [archive] = archives(dumpdir, ct)
    inside(node, ct, "echo changed > /root/a")
    conf_before = node.conf_file(ct).read_bytes()

    res = expect_exit(node, 5, "vzdump", "--restore", str(archive), str(ct))
    assert "--force" in res.stderr
    assert node.conf_file(ct).read_bytes() == conf_before
    assert inside(node, ct, "cat /root/a").strip() == "changed"
    assert [p.name for p in node.private_dir.iterdir() if p.name.startswith(".")] == []

    expect_exit(node, 6, "vzdump", "--restore", str(archive), str(ct), "--force")  # still running
    node.cli("vzctl", "stop", "--fast", str(ct))
    node.cli("vzdump", "--restore", str(archive), str(ct), "--force")
    node.cli("vzctl", "start", str(ct))
    assert inside(node, ct, "cat /root/a").strip() == "hello"


def _hostile(tmp_path: Path, build: Callable[[tarfile.TarFile], None], conf: bytes) -> Path:
    path = tmp_path / "vzdump-openvz-999-2020_01_01-00_00_00.tar"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as t:
        info = tarfile.TarInfo("./etc/vzdump/vps.conf")
        info.size = len(conf)
        t.addfile(info, io.BytesIO(conf))
        build(t)
    return path


def _escape(t: tarfile.TarFile) -> None:
    info = tarfile.TarInfo("./../../../escaped")
    info.size = 4
    t.addfile(info, io.BytesIO(b"evil"))


def _through_symlink(t: tarfile.TarFile) -> None:
    link = tarfile.TarInfo("./etc/vzdump/out")
    link.type = tarfile.SYMTYPE
    link.linkname = "/"
    t.addfile(link)
    info = tarfile.TarInfo("./etc/vzdump/out/escaped")
    info.size = 4
    t.addfile(info, io.BytesIO(b"evil"))


def _block_device(t: tarfile.TarFile) -> None:
    dev = tarfile.TarInfo("./dev/sda")
    dev.type = tarfile.BLKTYPE
    dev.devmajor, dev.devminor = 8, 0
    t.addfile(dev)


PLAIN = b'HOSTNAME="evil"\n'
IMAGE = b'HOSTNAME="evil"\nDISKSPACE="32M:32M"\nVE_LAYOUT="image"\n'


@pytest.mark.parametrize("build, conf", [(_escape, PLAIN), (_through_symlink, PLAIN), (_block_device, PLAIN),
                                         (_through_symlink, IMAGE)],
                         ids=["dotdot", "symlink", "blockdev", "symlink-into-disk-image"])
def test_a_hostile_archive_is_refused_and_leaves_nothing(node: Node, cts: Containers, tmp_path: Path,
                                                         build: Callable[[tarfile.TarFile], None],
                                                         conf: bytes) -> None:
    archive = _hostile(tmp_path, build, conf)
    ct = cts.new_ctid()
    res = expect_exit(node, 2, "vzdump", "--restore", str(archive), str(ct))
    assert "refused backup archive" in res.stderr
    assert not node.conf_file(ct).exists()
    assert [p.name for p in node.private_dir.iterdir() if str(ct) in p.name] == []
    images = node.root / "var/lib/vz/images"
    assert not images.exists() or [p.name for p in images.iterdir() if str(ct) in p.name] == []
    with open("/proc/self/mountinfo") as f:
        assert str(node.private_dir) not in f.read()
    for where in (Path("/escaped"), node.root / "escaped", node.root / "var/lib/escaped",
                  node.root / "var/lib/vz/escaped"):
        assert not where.exists()


def test_stop_mode_restarts_and_old_archives_and_excluded_paths_go(node: Node, cts: Containers,
                                                                   tmp_path: Path) -> None:
    dumpdir = tmp_path / "dump"
    ct = cts.create(start=True)
    populate(node, ct)
    node.cli("vzdump", "--dumpdir", str(dumpdir), str(ct))
    res = node.cli("vzdump", "--stop", "--maxfiles", "1", "--exclude-path", "/root/skip.*", "--dumpdir",
                   str(dumpdir), str(ct), timeout=120)
    assert "delete old backup" in res.stdout
    [archive] = archives(dumpdir, ct)
    names = members(archive)
    assert "./root/a" in names and "./root/skip.me" not in names
    assert node.cli("vzctl", "status", str(ct)).stdout.split()[-1] == "running"


def test_bwlimit_slows_the_archive_down(node: Node, cts: Containers, tmp_path: Path) -> None:
    ct = cts.create(start=True)
    inside(node, ct, "dd if=/dev/urandom of=/root/r bs=1M count=3 2>/dev/null")
    t0 = time.monotonic()
    node.cli("vzdump", "--bwlimit", "2048", "--dumpdir", str(tmp_path), str(ct))  # 2 MiB/s, ~4 MiB to read
    assert time.monotonic() - t0 > 1.4


def test_snapshot_mode_is_refused_with_the_reason(node: Node, cts: Containers) -> None:
    res = expect_exit(node, 2, "vzdump", "--snapshot", "101")
    assert "not supported" in res.stderr and "LVM" in res.stderr
