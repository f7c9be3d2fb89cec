"""The template cache: builds, imports (hostile ones refused), listing and metadata."""

from __future__ import annotations

import io
import os
import shutil
import stat
import struct
import tarfile
from pathlib import Path

import pytest
import zstandard

from agent.storage.archive import ArchiveError, extract_archive
from agent.storage.templates import (
    InvalidTemplateName,
    TemplateCache,
    TemplateError,
    TemplateImportError,
    TemplateNotFound,
    debian_mirror_from_apt,
    elf_is_static,
    find_static_busybox,
    strip_getty_lines,
    template_metadata,
)

BUSYBOX = find_static_busybox()
needs_busybox = pytest.mark.skipif(BUSYBOX is None, reason="no static busybox (apt-get install busybox-static)")


def small_archive(path: Path, members: dict[str, bytes], *, zstd: bool = False) -> Path:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()
    path.write_bytes(zstandard.ZstdCompressor().compress(raw) if zstd else raw)
    return path


def cache_entries(cache: TemplateCache) -> list[str]:
    """Every entry of the cache dir, hidden work files included."""
    return sorted(os.listdir(cache.cache_dir))


# -- busybox ---------------------------------------------------------------------------------------


@needs_busybox
def test_build_busybox_makes_a_bootable_looking_rootfs(tmp_path: Path) -> None:
    # given an empty cache
    cache = TemplateCache(tmp_path / "cache")
    # when the busybox template is built
    info = cache.build_busybox()
    # then it is listed and found, and nothing else is left in the cache dir
    assert info.name == "busybox"
    assert info.path == tmp_path / "cache/busybox.tar.zst"
    assert cache.list() == [info]
    assert cache.find("busybox") == info.path
    assert cache_entries(cache) == ["busybox.tar.zst"]
    # and its rootfs has busybox init, no getty, the metadata, sane modes
    root = tmp_path / "root"
    extract_archive(info.path, root)
    assert os.readlink(root / "sbin/init") == "/bin/busybox"
    for applet in ("bin/sh", "sbin/halt", "sbin/poweroff", "sbin/reboot"):
        assert (root / applet).is_symlink(), applet
    assert elf_is_static(root / "bin/busybox")
    entries = [line for line in (root / "etc/inittab").read_text().splitlines() if not line.startswith("#")]
    assert entries == ["::sysinit:/etc/init.d/rcS", "::shutdown:/bin/umount -a -r"]
    assert os.access(root / "etc/init.d/rcS", os.X_OK)
    assert stat.S_IMODE((root / "tmp").stat().st_mode) == 0o1777
    assert (root / "etc/shadow").read_text().startswith("root:*:")
    assert template_metadata(root) == {"NAME": "busybox", "INIT": "/sbin/init"}
    if os.geteuid() == 0:
        assert {(p.lstat().st_uid, p.lstat().st_gid) for p in root.rglob("*")} == {(0, 0)}


@needs_busybox
def test_a_built_template_imports_into_another_cache(tmp_path: Path) -> None:
    built = TemplateCache(tmp_path / "a").build_busybox("bb")
    other = TemplateCache(tmp_path / "b")
    info = other.import_file(built.path)
    assert (info.name, info.size) == ("bb", built.size)
    assert cache_entries(other) == ["bb.tar.zst"]


# -- import ----------------------------------------------------------------------------------------


def test_import_detects_compression_by_content_and_replaces_other_suffixes(tmp_path: Path) -> None:
    cache = TemplateCache(tmp_path / "cache")
    first = cache.import_file(small_archive(tmp_path / "plain.tar", {"etc/hostname": b"a\n"}), "demo")
    assert first.path.name == "demo.tar"
    # given a zstd archive with a misleading name, imported under the same template name
    misnamed = small_archive(tmp_path / "demo.tar.gz", {"etc/hostname": b"b\n"}, zstd=True)
    info = cache.import_file(misnamed)
    # then it is stored by what it is, and the old variant is gone
    assert info.path.name == "demo.tar.zst"
    assert cache_entries(cache) == ["demo.tar.zst"]
    assert cache.find("demo") == info.path


@pytest.mark.parametrize(
    "members",
    [
        {"ok": b"x", "../escape": b"x"},
        {"ok": b"x", "a/../../escape": b"x"},
    ],
)
def test_import_of_a_hostile_archive_is_refused_and_the_cache_is_unchanged(
    tmp_path: Path, members: dict[str, bytes]
) -> None:
    # given a cache that already has a template
    cache = TemplateCache(tmp_path / "cache")
    cache.import_file(small_archive(tmp_path / "good.tar", {"etc/hostname": b"ct\n"}))
    before = cache.list()
    # when a hostile archive is imported
    hostile = small_archive(tmp_path / "hostile.tar", members)
    with pytest.raises(TemplateImportError) as caught:
        cache.import_file(hostile, "good")
    # then it says which member and why, is also an ArchiveError, and nothing changed
    assert "escape" in str(caught.value) and "path escapes the root" in str(caught.value)
    assert isinstance(caught.value, ArchiveError)
    assert cache.list() == before
    assert cache_entries(cache) == ["good.tar"]
    assert not (tmp_path / "escape").exists()


def test_import_of_a_symlink_escape_is_refused(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        link = tarfile.TarInfo("evil")
        link.type, link.linkname = tarfile.SYMTYPE, str(tmp_path / "outside")
        tar.addfile(link)
        info = tarfile.TarInfo("evil/pwned")
        tar.addfile(info, io.BytesIO(b""))
    (tmp_path / "outside").mkdir()
    (tmp_path / "evil.tar").write_bytes(buf.getvalue())
    cache = TemplateCache(tmp_path / "cache")
    with pytest.raises(TemplateImportError, match="is a symlink"):
        cache.import_file(tmp_path / "evil.tar")
    assert list((tmp_path / "outside").iterdir()) == []
    assert cache.list() == []
    assert cache_entries(cache) == []


def test_import_refuses_a_file_that_is_no_archive(tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar.zst"
    junk.write_bytes(b"\x00garbage" * 100)
    cache = TemplateCache(tmp_path / "cache")
    with pytest.raises(TemplateImportError, match="not a tar archive"):
        cache.import_file(junk)
    assert cache_entries(cache) == []


@pytest.mark.parametrize("name", ["../x", "a/b", ".hidden", "", "x" * 200])
def test_invalid_template_names_are_refused(tmp_path: Path, name: str) -> None:
    cache = TemplateCache(tmp_path / "cache")
    with pytest.raises(InvalidTemplateName):
        cache.import_file(small_archive(tmp_path / "ok.tar", {"f": b""}), name)
    assert not (tmp_path / "x").exists()


def test_import_needs_a_name_when_the_file_name_has_no_template_suffix(tmp_path: Path) -> None:
    archive = small_archive(tmp_path / "rootfs.bin", {"f": b""})
    with pytest.raises(ValueError, match="pass a name"):
        TemplateCache(tmp_path / "cache").import_file(archive)


# -- listing ---------------------------------------------------------------------------------------


def test_template_not_found_lists_the_available_names_and_how_to_build_one(tmp_path: Path) -> None:
    cache = TemplateCache(tmp_path / "cache")
    cache.import_file(small_archive(tmp_path / "alpha.tar", {"f": b""}))
    cache.import_file(small_archive(tmp_path / "beta.tar", {"f": b""}))
    with pytest.raises(TemplateNotFound) as caught:
        cache.find("gamma")
    message = str(caught.value)
    assert "'gamma'" in message and "alpha, beta" in message
    assert "vzfleet template build busybox" in message
    assert caught.value.available == ["alpha", "beta"]


def test_an_empty_or_missing_cache_lists_nothing(tmp_path: Path) -> None:
    cache = TemplateCache(tmp_path / "nowhere")
    assert cache.list() == []
    with pytest.raises(TemplateNotFound, match="available templates: none"):
        cache.find("busybox")


def test_listing_ignores_work_files_symlinks_and_foreign_files(tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    (cache_dir / ".busybox.tar.zst.abc.part").write_bytes(b"")
    (cache_dir / "notes.txt").write_bytes(b"")
    (cache_dir / "link.tar.zst").symlink_to("/etc/passwd")
    (cache_dir / "real.tar.xz").write_bytes(b"")
    assert [t.name for t in TemplateCache(cache_dir).list()] == ["real"]


# -- metadata --------------------------------------------------------------------------------------


def test_template_metadata_reads_key_value_lines(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/vzfleet-template").write_text('# comment\nNAME=deb\n\nINIT="/sbin/init"\nbogus\n')
    assert template_metadata(tmp_path) == {"NAME": "deb", "INIT": "/sbin/init"}
    assert template_metadata(tmp_path / "etc") == {}  # no such file


@pytest.mark.parametrize("escape", ["file", "dir"])
def test_template_metadata_never_follows_a_symlink(tmp_path: Path, escape: str) -> None:
    # given a rootfs whose metadata file (or its /etc) is a symlink to host data
    host = tmp_path / "host"
    (host / "etc").mkdir(parents=True)
    (host / "etc/vzfleet-template").write_text("NAME=host-secret\n")
    rootfs = tmp_path / "rootfs"
    if escape == "file":
        (rootfs / "etc").mkdir(parents=True)
        (rootfs / "etc/vzfleet-template").symlink_to(host / "etc/vzfleet-template")
    else:
        rootfs.mkdir()
        (rootfs / "etc").symlink_to(host / "etc")
    # then it is not read
    with pytest.raises(TemplateError, match="symlink"):
        template_metadata(rootfs)


def test_template_metadata_does_not_block_on_a_fifo(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    os.mkfifo(tmp_path / "etc/vzfleet-template")
    with pytest.raises(TemplateError, match="not a regular file"):
        template_metadata(tmp_path)


# -- host discovery helpers ------------------------------------------------------------------------


def _elf64(program_header_types: list[int]) -> bytes:
    ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    phoff, phentsize = 64, 56
    header = struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, 0, phoff, 0, 0, 64, phentsize, len(program_header_types), 0, 0, 0)
    table = b"".join(struct.pack("<II", t, 0) + bytes(phentsize - 8) for t in program_header_types)
    return ident + header + table


def test_elf_is_static_looks_for_an_interpreter(tmp_path: Path) -> None:
    (tmp_path / "static").write_bytes(_elf64([1, 1]))
    (tmp_path / "dynamic").write_bytes(_elf64([6, 3, 1]))
    (tmp_path / "script").write_bytes(b"#!/bin/sh\n")
    assert elf_is_static(tmp_path / "static")
    assert not elf_is_static(tmp_path / "dynamic")
    with pytest.raises(ValueError):
        elf_is_static(tmp_path / "script")
    assert find_static_busybox([tmp_path / "dynamic", tmp_path / "script", tmp_path / "static"]) == (
        tmp_path / "static"
    )
    assert find_static_busybox([tmp_path / "missing"]) is None


def test_debian_mirror_is_read_from_deb822_sources(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d/debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.invalid/debian-security\nSuites: bookworm-security\n"
        "Components: main\n\n"
        "Types: deb-src\nURIs: http://src.invalid/debian\nSuites: bookworm\n\n"
        "Types: deb\n# a comment\nURIs: http://mirror.invalid/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main\n"
    )
    assert debian_mirror_from_apt(tmp_path) == "http://mirror.invalid/debian"


def test_debian_mirror_falls_back_to_sources_list(tmp_path: Path) -> None:
    (tmp_path / "sources.list").write_text(
        "# deb http://commented.invalid/debian bookworm main\n"
        "deb http://security.invalid/debian-security bookworm-security main\n"
        "deb [signed-by=/usr/share/keyrings/k.gpg] http://mirror.invalid/debian bookworm main\n"
    )
    assert debian_mirror_from_apt(tmp_path) == "http://mirror.invalid/debian"
    assert debian_mirror_from_apt(tmp_path / "nothing") is None


def test_getty_lines_are_dropped_from_a_sysvinit_inittab() -> None:
    inittab = (
        "id:2:initdefault:\nsi::sysinit:/etc/init.d/rcS\n"
        "1:2345:respawn:/sbin/getty --noclear 38400 tty1\n"
        "#T0:23:respawn:/sbin/getty -L ttyS0 9600 vt100\n"
        "l2:2:wait:/etc/init.d/rc 2\n"
    )
    assert strip_getty_lines(inittab) == (
        "id:2:initdefault:\nsi::sysinit:/etc/init.d/rcS\n"
        "#T0:23:respawn:/sbin/getty -L ttyS0 9600 vt100\n"
        "l2:2:wait:/etc/init.d/rc 2\n"
    )


# -- debian (slow, needs the mirror) ---------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("mmdebstrap") is None or os.environ.get("VZFLEET_TEST_DEBIAN") != "1",
    reason="needs mmdebstrap, root and the Debian mirror; set VZFLEET_TEST_DEBIAN=1",
)
def test_build_debian_makes_a_sysvinit_template(tmp_path: Path) -> None:
    cache = TemplateCache(tmp_path / "cache")
    info = cache.build_debian()
    assert cache_entries(cache) == ["debian-12-minimal.tar.zst"]
    root = tmp_path / "root"
    extract_archive(info.path, root)
    assert template_metadata(root)["INIT"] == "/sbin/init"
    assert (root / "sbin/init").exists() or (root / "sbin/init").is_symlink()
    inittab = (root / "etc/inittab").read_text()
    assert not [line for line in inittab.splitlines() if "getty" in line and not line.startswith("#")]
    assert (root / "usr/bin/ps").exists() and (root / "usr/bin/ping").exists()
