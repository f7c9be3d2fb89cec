"""Safe template extraction: hostile archives are refused or contained, real ones round-trip."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
from collections.abc import Iterable
from pathlib import Path

import pytest
import zstandard

from agent.storage.archive import (
    ArchiveError,
    ArchiveLimitError,
    Limits,
    create_archive,
    detect_compression,
    extract_archive,
    member_parts,
    open_beneath,
)

IS_ROOT = os.geteuid() == 0
MTIME = 1_700_000_000

Member = tuple[tarfile.TarInfo, bytes | None]


# -- archive builders ------------------------------------------------------------------------------


def _info(name: str, kind: bytes, mode: int, **extra: object) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.mtime = MTIME
    info.uid = info.gid = 0
    for key, value in extra.items():
        setattr(info, key, value)
    return info


def reg(name: str, data: bytes = b"data\n", mode: int = 0o644, **extra: object) -> Member:
    return _info(name, tarfile.REGTYPE, mode, size=len(data), **extra), data


def directory(name: str, mode: int = 0o755) -> Member:
    return _info(name, tarfile.DIRTYPE, mode), None


def symlink(name: str, target: str) -> Member:
    return _info(name, tarfile.SYMTYPE, 0o777, linkname=target), None


def hardlink(name: str, target: str) -> Member:
    return _info(name, tarfile.LNKTYPE, 0o644, linkname=target), None


def device(name: str, kind: bytes, major: int, minor: int) -> Member:
    return _info(name, kind, 0o666, devmajor=major, devminor=minor), None


def tar_bytes(members: Iterable[Member]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def compress(raw: bytes, compression: str) -> bytes:
    if compression == "gz":
        import gzip

        return gzip.compress(raw)
    if compression == "xz":
        import lzma

        return lzma.compress(raw)
    if compression == "zst":
        return bytes(zstandard.ZstdCompressor(level=3).compress(raw))
    return raw


def write_archive(path: Path, members: Iterable[Member], compression: str = "tar") -> Path:
    path.write_bytes(compress(tar_bytes(members), compression))
    return path


def snapshot(root: Path) -> dict[str, tuple[object, ...]]:
    """Everything extraction promises to keep, per path, without following symlinks."""
    result: dict[str, tuple[object, ...]] = {}
    inodes: dict[int, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            st = path.lstat()
            rel = str(path.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                result[rel] = ("link", os.readlink(path), st.st_mtime_ns)
            elif stat.S_ISREG(st.st_mode):
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                first = inodes.setdefault(st.st_ino, rel)
                result[rel] = ("file", oct(st.st_mode), digest, st.st_mtime_ns, first)
            else:
                result[rel] = ("other", oct(st.st_mode), st.st_rdev, st.st_mtime_ns)
    return result


# -- hostile names and links -----------------------------------------------------------------------


def test_dotdot_member_is_refused_and_nothing_is_left(tmp_path: Path) -> None:
    # given an archive whose second member climbs out of the root
    archive = write_archive(tmp_path / "a.tar", [reg("ok"), reg("../etc/passwd")])
    dest = tmp_path / "dest"
    # when it is extracted
    with pytest.raises(ArchiveError) as caught:
        extract_archive(archive, dest)
    # then the member is named with the reason, and neither dest nor the target exist
    assert str(caught.value) == "refused template archive member '../etc/passwd': path escapes the root"
    assert caught.value.member == "../etc/passwd"
    assert not dest.exists()
    assert not (tmp_path / "etc").exists()


def test_absolute_member_is_stripped_and_stays_inside(tmp_path: Path) -> None:
    archive = write_archive(tmp_path / "a.tar", [reg("/etc/x", b"inside")])
    extract_archive(archive, tmp_path / "dest")
    assert (tmp_path / "dest/etc/x").read_bytes() == b"inside"


@pytest.mark.parametrize("name", [".", "./", "/", ""])
def test_file_member_naming_the_root_is_refused(tmp_path: Path, name: str) -> None:
    info, data = reg("placeholder")
    info.name = name
    archive = write_archive(tmp_path / "a.tar", [(info, data)])
    with pytest.raises(ArchiveError, match="names the root"):
        extract_archive(archive, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


def test_root_directory_member_sets_the_root_metadata(tmp_path: Path) -> None:
    # GNU tar's `-C dir -cf - .` starts with a "./" directory member: it describes the root itself
    archive = write_archive(tmp_path / "a.tar", [directory("./", 0o750), reg("./f")])
    extract_archive(archive, tmp_path / "dest")
    st = (tmp_path / "dest").stat()
    assert stat.S_IMODE(st.st_mode) == 0o750
    assert st.st_mtime == MTIME


def test_member_parts_normalises_like_gnu_tar() -> None:
    assert member_parts("./a//b/./c") == ("a", "b", "c")
    assert member_parts("//etc/x") == ("etc", "x")
    assert member_parts("./") == ()
    for bad in ("a/../../b", "..", "a\0b"):
        with pytest.raises(ValueError):
            member_parts(bad)


def test_write_through_symlink_to_outside_dir_is_refused(tmp_path: Path) -> None:
    # given a symlink to a directory outside the destination, then a member below it
    outside = tmp_path / "outside"
    outside.mkdir()
    archive = write_archive(tmp_path / "a.tar", [symlink("evil", str(outside)), reg("evil/pwned")])
    # when extracted, then it is refused and the outside directory stays empty
    with pytest.raises(ArchiveError, match="'evil' is a symlink; refusing to follow it"):
        extract_archive(archive, tmp_path / "dest")
    assert list(outside.iterdir()) == []
    assert not (tmp_path / "dest").exists()


def test_write_through_relative_symlink_upwards_is_refused(tmp_path: Path) -> None:
    base = tmp_path / "a" / "b"
    base.mkdir(parents=True)
    archive = write_archive(tmp_path / "x.tar", [symlink("up", "../../.."), reg("up/x"), reg("up/a/x")])
    with pytest.raises(ArchiveError, match="'up' is a symlink"):
        extract_archive(archive, base / "dest")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "x.tar"]
    assert list(base.iterdir()) == []


def test_symlinks_with_absolute_targets_are_stored_verbatim(tmp_path: Path) -> None:
    archive = write_archive(tmp_path / "a.tar", [symlink("bin/sh", "/bin/busybox"), symlink("up", "../../..")])
    extract_archive(archive, tmp_path / "dest")
    assert os.readlink(tmp_path / "dest/bin/sh") == "/bin/busybox"
    assert os.readlink(tmp_path / "dest/up") == "../../.."


def test_file_member_replacing_a_symlink_does_not_follow_it(tmp_path: Path) -> None:
    # given a symlink to an outside file, then a regular file of the same name
    target = tmp_path / "victim"
    target.write_bytes(b"original")
    archive = write_archive(tmp_path / "a.tar", [symlink("link", str(target)), reg("link", b"replaced")])
    # when extracted
    extract_archive(archive, tmp_path / "dest")
    # then the symlink was replaced, the outside file untouched
    assert target.read_bytes() == b"original"
    link = tmp_path / "dest/link"
    assert not link.is_symlink()
    assert link.read_bytes() == b"replaced"


def test_directory_member_replacing_a_symlink_does_not_follow_it(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    archive = write_archive(tmp_path / "a.tar", [symlink("d", str(outside)), directory("d"), reg("d/f")])
    extract_archive(archive, tmp_path / "dest")
    assert list(outside.iterdir()) == []
    assert not (tmp_path / "dest/d").is_symlink()
    assert (tmp_path / "dest/d/f").is_file()


def test_non_empty_directory_is_not_replaced_by_a_file(tmp_path: Path) -> None:
    archive = write_archive(tmp_path / "a.tar", [reg("d/f"), reg("d")])
    with pytest.raises(ArchiveError, match="non-empty directory"):
        extract_archive(archive, tmp_path / "dest")


@pytest.mark.parametrize(
    ("target", "reason"),
    [("/etc/passwd", "not in the extracted tree"), ("../x", "path escapes the root")],
)
def test_hardlink_out_of_the_tree_is_refused(tmp_path: Path, target: str, reason: str) -> None:
    (tmp_path / "x").write_bytes(b"outside")
    archive = write_archive(tmp_path / "a.tar", [hardlink("h", target)])
    with pytest.raises(ArchiveError, match=reason):
        extract_archive(archive, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()
    assert (tmp_path / "x").stat().st_nlink == 1


def test_hardlink_through_a_symlink_is_refused(tmp_path: Path) -> None:
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside/f").write_bytes(b"secret")
    archive = write_archive(tmp_path / "a.tar", [symlink("s", str(tmp_path / "outside")), hardlink("h", "s/f")])
    with pytest.raises(ArchiveError, match="'s' is a symlink"):
        extract_archive(archive, tmp_path / "dest")
    assert (tmp_path / "outside/f").stat().st_nlink == 1


def test_hardlink_to_an_extracted_member_shares_its_inode(tmp_path: Path) -> None:
    archive = write_archive(tmp_path / "a.tar", [reg("bin/busybox", b"elf"), hardlink("bin/sh", "./bin/busybox")])
    extract_archive(archive, tmp_path / "dest")
    a, b = (tmp_path / "dest/bin/busybox").stat(), (tmp_path / "dest/bin/sh").stat()
    assert (a.st_ino, a.st_nlink) == (b.st_ino, 2)


# -- devices, modes, metadata ----------------------------------------------------------------------


def test_block_device_is_refused(tmp_path: Path) -> None:
    archive = write_archive(tmp_path / "a.tar", [device("dev/sda", tarfile.BLKTYPE, 8, 0)])
    with pytest.raises(ArchiveError, match="block device 8:0 is not allowed"):
        extract_archive(archive, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


def test_char_device_not_on_the_list_is_refused(tmp_path: Path) -> None:
    archive = write_archive(tmp_path / "a.tar", [device("dev/mem", tarfile.CHRTYPE, 1, 1)])
    with pytest.raises(ArchiveError, match="character device 1:1 is not on the allowed list"):
        extract_archive(archive, tmp_path / "dest")


def test_dev_null_is_allowed(tmp_path: Path) -> None:
    archive = write_archive(tmp_path / "a.tar", [device("dev/null", tarfile.CHRTYPE, 1, 3)])
    stats = extract_archive(archive, tmp_path / "dest")
    if not IS_ROOT:
        assert stats.skipped_devices == 1
        return
    st = (tmp_path / "dest/dev/null").lstat()
    assert stat.S_ISCHR(st.st_mode)
    assert (os.major(st.st_rdev), os.minor(st.st_rdev)) == (1, 3)
    assert stat.S_IMODE(st.st_mode) == 0o666


def test_fifo_is_allowed(tmp_path: Path) -> None:
    archive = write_archive(tmp_path / "a.tar", [(_info("run/initctl", tarfile.FIFOTYPE, 0o600), None)])
    extract_archive(archive, tmp_path / "dest")
    assert stat.S_ISFIFO((tmp_path / "dest/run/initctl").lstat().st_mode)


def test_setuid_and_sticky_modes_are_kept(tmp_path: Path) -> None:
    archive = write_archive(
        tmp_path / "a.tar",
        [reg("bin/su", b"elf", mode=0o4755), directory("tmp", 0o1777), directory("ro", 0o555), reg("ro/f")],
    )
    extract_archive(archive, tmp_path / "dest")
    assert stat.S_IMODE((tmp_path / "dest/bin/su").stat().st_mode) == 0o4755
    assert stat.S_IMODE((tmp_path / "dest/tmp").stat().st_mode) == 0o1777
    # a read-only directory still received its file: directory modes are applied last
    assert stat.S_IMODE((tmp_path / "dest/ro").stat().st_mode) == 0o555
    assert (tmp_path / "dest/ro/f").is_file()


def test_mtimes_are_restored_on_files_directories_and_symlinks(tmp_path: Path) -> None:
    archive = write_archive(tmp_path / "a.tar", [directory("d"), reg("d/f"), symlink("d/l", "f")])
    extract_archive(archive, tmp_path / "dest")
    for rel in ("d", "d/f", "d/l"):
        assert (tmp_path / "dest" / rel).lstat().st_mtime == MTIME, rel


@pytest.mark.skipif(not IS_ROOT, reason="chown needs root")
def test_numeric_ownership_is_restored(tmp_path: Path) -> None:
    archive = write_archive(tmp_path / "a.tar", [reg("f", uid=1234, gid=5678), symlink("l", "f")])
    extract_archive(archive, tmp_path / "dest")
    st = (tmp_path / "dest/f").stat()
    assert (st.st_uid, st.st_gid) == (1234, 5678)


def test_pax_xattrs_are_restored(tmp_path: Path) -> None:
    info, data = reg("f")
    info.pax_headers = {"SCHILY.xattr.user.vzfleet": "yes"}
    archive = write_archive(tmp_path / "a.tar", [(info, data)])
    stats = extract_archive(archive, tmp_path / "dest")
    if stats.skipped_xattrs:
        pytest.skip("the file system of tmp_path does not take user xattrs")
    assert os.getxattr(tmp_path / "dest/f", "user.vzfleet") == b"yes"


@pytest.mark.skipif(not IS_ROOT, reason="security.capability needs root")
def test_file_capabilities_survive_chown(tmp_path: Path) -> None:
    # given a ping-like binary with cap_net_raw=ep as a binary pax xattr (v2 vfs_cap_data)
    cap = bytes.fromhex("0100000200200000000000000000000000000000")
    info, data = reg("bin/ping", b"elf", mode=0o755)
    info.pax_headers = {"SCHILY.xattr.security.capability": cap.decode("utf-8", "surrogateescape")}
    archive = write_archive(tmp_path / "a.tar", [(info, data)])
    extract_archive(archive, tmp_path / "dest")
    assert os.getxattr(tmp_path / "dest/bin/ping", "security.capability") == cap


# -- limits ----------------------------------------------------------------------------------------


def test_total_size_limit_refuses_and_removes_dest(tmp_path: Path) -> None:
    archive = write_archive(tmp_path / "a.tar", [reg("a", b"x" * 600), reg("b", b"y" * 600)])
    with pytest.raises(ArchiveLimitError) as caught:
        extract_archive(archive, tmp_path / "dest", Limits(max_total_bytes=1000))
    assert caught.value.limit == "max_total_bytes"
    assert "max_total_bytes=1000" in str(caught.value)
    assert caught.value.member == "b"
    assert not (tmp_path / "dest").exists()


@pytest.mark.parametrize(
    ("limits", "members", "limit"),
    [
        (Limits(max_members=3), [reg(f"f{i}") for i in range(4)], "max_members"),
        (Limits(max_name_length=20), [reg("d/" + "n" * 30)], "max_name_length"),
        (Limits(max_name_length=20), [symlink("l", "t" * 30)], "max_name_length"),
        (Limits(max_depth=3), [reg("a/b/c/d")], "max_depth"),
    ],
)
def test_limits_are_enforced(tmp_path: Path, limits: Limits, members: list[Member], limit: str) -> None:
    archive = write_archive(tmp_path / "a.tar", members)
    with pytest.raises(ArchiveLimitError) as caught:
        extract_archive(archive, tmp_path / "dest", limits)
    assert caught.value.limit == limit
    assert not (tmp_path / "dest").exists()


def test_oversized_pax_header_is_refused_before_it_is_buffered(tmp_path: Path) -> None:
    info, data = reg("f")
    info.pax_headers = {"SCHILY.xattr.user.big": "v" * 300_000}
    archive = write_archive(tmp_path / "a.tar.zst", [(info, data)], "zst")
    with pytest.raises(ArchiveLimitError) as caught:
        extract_archive(archive, tmp_path / "dest", Limits(max_header_bytes=64 * 1024))
    assert caught.value.limit == "max_header_bytes"


# -- formats and corruption ------------------------------------------------------------------------


def sample_members() -> list[Member]:
    return [
        directory("./"),
        directory("etc"),
        reg("etc/hostname", b"ct\n"),
        directory("bin"),
        directory("sbin"),
        reg("bin/busybox", os.urandom(70_000), mode=0o755),
        hardlink("bin/sh", "bin/busybox"),
        symlink("sbin/init", "/bin/busybox"),
        directory("tmp", 0o1777),
        reg("empty", b""),
    ]


def test_compressions_are_detected_by_magic_and_extract_identically(tmp_path: Path) -> None:
    raw = tar_bytes(sample_members())
    trees = {}
    for compression in ("tar", "gz", "xz", "zst"):
        # a misleading name: detection must look at the bytes
        archive = tmp_path / f"{compression}.bin.tar.gz"
        archive.write_bytes(compress(raw, compression))
        assert detect_compression(archive) == compression
        stats = extract_archive(archive, tmp_path / compression)
        assert (stats.members, stats.bytes) == (10, 70_003)
        trees[compression] = snapshot(tmp_path / compression)
    assert trees["tar"] == trees["gz"] == trees["xz"] == trees["zst"]
    assert trees["tar"]["bin/sh"][4] == "bin/busybox"  # the hardlink kept its inode


@pytest.mark.parametrize("compression", ["tar", "gz", "xz", "zst"])
@pytest.mark.parametrize("keep", [0.3, 0.7])
def test_truncated_archive_is_refused_and_leaves_no_dest(tmp_path: Path, compression: str, keep: float) -> None:
    whole = compress(tar_bytes(sample_members()), compression)
    archive = tmp_path / "t.tar"
    archive.write_bytes(whole[: int(len(whole) * keep)])
    with pytest.raises(ArchiveError):
        extract_archive(archive, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


def test_archive_cut_at_a_member_boundary_is_refused(tmp_path: Path) -> None:
    # tarfile alone would take a stream that ends between two members for a complete archive
    raw = tar_bytes([reg("a", b"x" * 512), reg("b", b"y" * 512)])
    boundary = raw.index(b"x" * 512) + 512  # end of a's data, start of b's header
    archive = tmp_path / "t.tar.zst"
    archive.write_bytes(compress(raw[:boundary], "zst"))
    with pytest.raises(ArchiveError, match="without an end-of-archive marker"):
        extract_archive(archive, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


def test_archive_cut_before_its_end_marker_is_refused(tmp_path: Path) -> None:
    raw = tar_bytes([reg("a", b"x" * 512)])
    archive = tmp_path / "t.tar"
    archive.write_bytes(raw[: raw.index(b"x" * 512) + 512])
    with pytest.raises(ArchiveError, match="without an end-of-archive marker"):
        extract_archive(archive, tmp_path / "dest")


def test_corrupt_member_header_is_refused(tmp_path: Path) -> None:
    # tarfile alone stops silently at a header with a bad checksum, dropping the rest
    raw = bytearray(tar_bytes([reg("a", b"x" * 512), reg("b", b"y" * 512), reg("c")]))
    header_of_b = raw.index(b"y" * 512) - 512
    raw[header_of_b + 10] ^= 0xFF
    archive = tmp_path / "t.tar"
    archive.write_bytes(bytes(raw))
    with pytest.raises(ArchiveError):
        extract_archive(archive, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


def test_not_an_archive_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar.zst"
    junk.write_bytes(b"this is not a tar file" * 40)
    with pytest.raises(ArchiveError, match="not a tar archive"):
        detect_compression(junk)
    with pytest.raises(ArchiveError):
        extract_archive(junk, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


def test_corrupt_gzip_payload_is_refused(tmp_path: Path) -> None:
    data = bytearray(compress(tar_bytes(sample_members()), "gz"))
    data[len(data) // 2] ^= 0xFF
    archive = tmp_path / "t.tar.gz"
    archive.write_bytes(bytes(data))
    with pytest.raises(ArchiveError):
        extract_archive(archive, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


# -- destination handling --------------------------------------------------------------------------


def test_non_empty_destination_is_refused_untouched(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "keep").write_bytes(b"mine")
    archive = write_archive(tmp_path / "a.tar", [reg("f")])
    with pytest.raises(ArchiveError, match="is not empty"):
        extract_archive(archive, dest)
    assert [p.name for p in dest.iterdir()] == ["keep"]


def test_existing_empty_destination_is_emptied_again_on_error(tmp_path: Path) -> None:
    # e.g. a mount point: it must stay, empty and with its own mode
    dest = tmp_path / "dest"
    dest.mkdir(mode=0o711)
    os.chmod(dest, 0o711)
    archive = write_archive(tmp_path / "a.tar", [directory("./", 0o755), reg("d/f"), reg("../x")])
    with pytest.raises(ArchiveError):
        extract_archive(archive, dest)
    assert list(dest.iterdir()) == []
    assert stat.S_IMODE(dest.stat().st_mode) == 0o711


def test_destination_that_is_a_symlink_is_refused(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "dest").symlink_to(tmp_path / "real")
    archive = write_archive(tmp_path / "a.tar", [reg("f")])
    with pytest.raises(ArchiveError, match="is a symlink"):
        extract_archive(archive, tmp_path / "dest")
    assert list((tmp_path / "real").iterdir()) == []


def test_progress_reports_members_and_bytes(tmp_path: Path) -> None:
    archive = write_archive(tmp_path / "a.tar", [reg("a", b"12"), reg("b", b"345")])
    seen: list[tuple[int, int]] = []
    extract_archive(archive, tmp_path / "dest", progress=lambda m, b: seen.append((m, b)))
    assert seen == [(1, 2), (2, 5)]


def test_error_in_progress_callback_also_cleans_up(tmp_path: Path) -> None:
    archive = write_archive(tmp_path / "a.tar", [reg("a"), reg("b")])

    def stop(members: int, _bytes: int) -> None:
        if members == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        extract_archive(archive, tmp_path / "dest", progress=stop)
    assert not (tmp_path / "dest").exists()


def test_open_beneath_refuses_symlinks_anywhere(tmp_path: Path) -> None:
    (tmp_path / "root/etc").mkdir(parents=True)
    (tmp_path / "root/etc/link").symlink_to("/etc/passwd")
    (tmp_path / "root/up").symlink_to("..")
    for rel in ("etc/link", "up/root/etc/hostname"):
        with pytest.raises(OSError, match="is a symlink"):
            open_beneath(tmp_path / "root", rel)


# -- creation round trip ---------------------------------------------------------------------------


def _make_rootfs(root: Path) -> None:
    (root / "bin").mkdir(parents=True)
    (root / "bin/busybox").write_bytes(os.urandom(4096))
    os.chmod(root / "bin/busybox", 0o4755)
    os.link(root / "bin/busybox", root / "bin/sh")
    (root / "sbin").mkdir()
    (root / "sbin/init").symlink_to("/bin/busybox")
    (root / "secret").mkdir(mode=0o700)
    os.chmod(root / "secret", 0o700)
    os.mkfifo(root / "fifo")
    (root / "tmp").mkdir()
    os.chmod(root / "tmp", 0o1777)
    if IS_ROOT:
        (root / "dev").mkdir()
        os.mknod(root / "dev/null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        os.chmod(root / "dev/null", 0o666)
    for path in [*root.rglob("*"), root]:
        os.utime(path, (MTIME, MTIME), follow_symlinks=False)


@pytest.mark.parametrize("compression", ["zst", "gz", "xz", "tar"])
def test_create_archive_round_trips_a_rootfs(tmp_path: Path, compression: str) -> None:
    src = tmp_path / "src"
    _make_rootfs(src)
    archive = tmp_path / f"t{compression}"
    create_archive(src, archive, compression)
    assert detect_compression(archive) == compression
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file left
    extract_archive(archive, tmp_path / "dest")
    assert snapshot(tmp_path / "dest") == snapshot(src)


def test_create_archive_of_a_missing_directory_fails_cleanly(tmp_path: Path) -> None:
    with pytest.raises(ArchiveError, match="not a directory"):
        create_archive(tmp_path / "missing", tmp_path / "t.tar.zst")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(IS_ROOT, reason="root can read the unreadable directory")
def test_create_archive_tar_failure_leaves_no_file(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "unreadable").mkdir(parents=True)
    os.chmod(src / "unreadable", 0)
    try:
        with pytest.raises(ArchiveError, match="exited with"):
            create_archive(src, tmp_path / "t.tar.zst")
    finally:
        os.chmod(src / "unreadable", 0o755)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]
