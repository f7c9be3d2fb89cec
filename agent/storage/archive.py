"""Safe extraction and creation of OS-template tar archives.

Decision (docs/decisions/0001-template-extraction.md): Python's ``tarfile`` is used ONLY as a
streaming parser (``mode='r|'`` over a file object); its extract functions are never called. Its
``data`` filter refuses the device nodes and absolute symlinks that real OS templates contain, and
its ``tar`` filter strips setuid bits, so neither fits a system-container rootfs. GNU tar would keep
everything, but then its own path checks are all we would have.

Instead every member is created by this module relative to an ``O_DIRECTORY`` descriptor of the
destination: each parent component is opened with ``O_DIRECTORY|O_NOFOLLOW`` (missing directories
are created with ``mkdir(dir_fd=)``), and the final entry is made with ``dir_fd`` calls (``open``
with ``O_CREAT|O_EXCL|O_NOFOLLOW``, ``symlink``, ``link``, ``mknod``). No host symlink is ever
followed, so symlink targets are stored verbatim (absolute ones included). Member names lose a
leading "/" like GNU tar does; ".." is refused. Device nodes come only from a fixed list of
harmless character devices. Ownership, modes (setuid included, applied after chown), mtimes and
``SCHILY.xattr.*`` attributes are restored; directory modes and mtimes are applied last, deepest
first. Limits bound total size, member count, name length, depth and header size. On any error the
partial destination is removed and nothing outside it has been touched.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import logging
import lzma
import math
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Protocol, cast

import zstandard

_log = logging.getLogger(__name__)

GiB = 1024**3
MiB = 1024**2

#: Compression names, as returned by :func:`detect_compression`, and the file suffix each one gets.
COMPRESSION_SUFFIXES: dict[str, str] = {"zst": ".tar.zst", "gz": ".tar.gz", "xz": ".tar.xz", "tar": ".tar"}

#: Character devices a template may contain (major, minor): null zero full random urandom tty
#: console ptmx. Everything else that is a device, block devices included, is refused.
ALLOWED_CHAR_DEVICES: frozenset[tuple[int, int]] = frozenset(
    {(1, 3), (1, 5), (1, 7), (1, 8), (1, 9), (5, 0), (5, 1), (5, 2)}
)

_MAGICS: tuple[tuple[int, bytes, str], ...] = (
    (0, b"\x1f\x8b", "gz"),
    (0, b"\xfd7zXZ\x00", "xz"),
    (0, b"\x28\xb5\x2f\xfd", "zst"),
    (257, b"ustar", "tar"),
)
_BLOCK = 512
_CHUNK = 1 * MiB
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_XATTR_PREFIX = "SCHILY.xattr."
_REGULAR_TYPES = frozenset({tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE, tarfile.GNUTYPE_SPARSE})


@dataclass(frozen=True)
class Limits:
    """Upper bounds for one extraction; exceeding any raises :class:`ArchiveLimitError`."""

    max_total_bytes: int = 16 * GiB
    max_members: int = 2_000_000
    max_name_length: int = 4096
    max_depth: int = 256
    #: pax / GNU long-name headers of one member (tarfile reads them into memory whole).
    max_header_bytes: int = 1 * MiB


@dataclass(frozen=True)
class ExtractStats:
    members: int
    bytes: int
    #: device nodes not created because mknod was not permitted (not root, no CAP_MKNOD).
    skipped_devices: int = 0
    #: xattrs the destination file system or our privileges did not accept.
    skipped_xattrs: int = 0


class ArchiveError(Exception):
    """A template archive was refused, is corrupt, or could not be written or created.

    ``member`` names the offending member when there is one; ``reason`` says why.
    """

    def __init__(self, reason: str, member: str | None = None, *, archive: Path | None = None) -> None:
        self.reason = reason
        self.member = member
        if member is not None:
            message = f"refused template archive member {member!r}: {reason}"
        elif archive is not None:
            message = f"refused template archive {str(archive)!r}: {reason}"
        else:
            message = reason
        super().__init__(message)


class ArchiveLimitError(ArchiveError):
    """A :class:`Limits` bound was exceeded; ``limit`` is the field name, e.g. ``max_total_bytes``."""

    def __init__(
        self, limit: str, value: int, detail: str, member: str | None = None, *, archive: Path | None = None
    ) -> None:
        self.limit = limit
        super().__init__(f"limit {limit}={value} exceeded: {detail}", member, archive=archive)


class UnsafePathError(OSError):
    """A path component inside a root is a symlink or not a directory, so it was not traversed."""

    def __init__(self, errno_: int, component: str, why: str) -> None:
        super().__init__(errno_, f"{component!r} {why}")
        self.component = component
        self.why = why


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...

    def close(self) -> None: ...


# --------------------------------------------------------------------------------------------------
# Path handling


def member_parts(name: str) -> tuple[str, ...]:
    """Normalise an archive member name into path components below the root.

    Leading "/" and "./" are stripped like GNU tar does, empty and "." components dropped; a name
    with a ".." component or a NUL byte raises :class:`ValueError`. The root itself is ``()``.
    """
    if "\0" in name:
        raise ValueError("name contains a NUL byte")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise ValueError("path escapes the root")
    return parts


def walk_beneath(
    root_fd: int,
    parts: Sequence[str],
    *,
    create: bool = False,
    on_mkdir: Callable[[tuple[str, ...]], None] | None = None,
) -> int:
    """Open the directory ``parts`` below ``root_fd`` without following any symlink.

    Returns a new descriptor (the caller closes it; for ``parts == ()`` it is a dup of root_fd).
    Missing directories are created (mode 0700) when ``create`` is set, and ``on_mkdir`` is told
    their path. A component that is a symlink or not a directory raises :class:`UnsafePathError`.
    """
    fd = os.dup(root_fd)
    try:
        for depth, component in enumerate(parts):
            try:
                next_fd = os.open(component, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                os.mkdir(component, 0o700, dir_fd=fd)
                if on_mkdir is not None:
                    on_mkdir(tuple(parts[: depth + 1]))
                next_fd = os.open(component, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                shown = "/".join(parts[: depth + 1])
                st = os.stat(component, dir_fd=fd, follow_symlinks=False)
                if stat.S_ISLNK(st.st_mode):
                    raise UnsafePathError(errno.ELOOP, shown, "is a symlink; refusing to follow it") from None
                raise UnsafePathError(errno.ENOTDIR, shown, "is not a directory") from None
            os.close(fd)
            fd = next_fd
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_beneath(root: Path, relpath: str, flags: int = os.O_RDONLY, mode: int = 0o644) -> int:
    """Open ``root/relpath`` without following a symlink in any component, the last one included.

    ``root`` itself is trusted. Returns a descriptor the caller closes. Raises
    :class:`UnsafePathError` (an OSError) for a symlink or non-directory on the way,
    ``FileNotFoundError`` for a missing component, and ``ValueError`` for a path with ".." or that
    names the root.
    """
    parts = member_parts(relpath)
    if not parts:
        raise ValueError(f"{relpath!r} names the root itself")
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        dir_fd = walk_beneath(root_fd, parts[:-1])
    finally:
        os.close(root_fd)
    try:
        try:
            return os.open(parts[-1], flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                raise
            raise UnsafePathError(errno.ELOOP, relpath, "is a symlink; refusing to follow it") from None
    finally:
        os.close(dir_fd)


# --------------------------------------------------------------------------------------------------
# Compression


def detect_compression(path: Path) -> str:
    """Return "gz", "xz", "zst" or "tar" from the file's magic bytes (the name is not consulted)."""
    try:
        with open(path, "rb") as f:
            head = f.read(_BLOCK)
    except OSError as exc:
        raise ArchiveError(f"cannot read it: {exc.strerror or exc}", archive=path) from exc
    for offset, magic, name in _MAGICS:
        if head[offset : offset + len(magic)] == magic:
            return name
    if not head:
        raise ArchiveError("the file is empty", archive=path)
    raise ArchiveError(
        f"not a tar archive nor a gzip, xz or zstd compressed one (starts with {head[:8].hex()})",
        archive=path,
    )


def _decompressed(raw: IO[bytes], compression: str) -> _Readable:
    if compression == "gz":
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if compression == "xz":
        return lzma.LZMAFile(raw, mode="rb")
    if compression == "zst":
        reader: _Readable = zstandard.ZstdDecompressor().stream_reader(
            raw, read_size=_CHUNK, read_across_frames=True, closefd=False
        )
        return reader
    return raw


class _StreamGuard:
    """The decompressed byte stream as tarfile sees it, with two protections tarfile lacks.

    * Header budget: between two members it lets through only the announced data of the current
      member plus ``max_header_bytes``, so a giant pax or long-name header is refused before
      tarfile has buffered it.
    * End check: it keeps a window of recent bytes, so the block where tarfile stopped can be
      inspected. tarfile ends silently on a truncated stream or a corrupt header; we require the
      end-of-archive zero block.

    Decompressor errors become :class:`ArchiveError`.
    """

    _WINDOW = 64 * 1024

    def __init__(self, inner: _Readable, header_bytes: int, archive: Path) -> None:
        self._inner = inner
        self._header_bytes = header_bytes
        self._archive = archive
        self._budget = header_bytes
        self._since_mark = 0
        self.total = 0
        self._window = bytearray()
        self._window_start = 0

    def read(self, size: int = -1, /) -> bytes:
        if size < 0:
            size = _CHUNK
        try:
            data = self._inner.read(size)
        except Exception as exc:
            raise ArchiveError(f"corrupt or truncated archive: {exc}", archive=self._archive) from exc
        self._since_mark += len(data)
        if self._since_mark > self._budget:
            raise ArchiveLimitError(
                "max_header_bytes",
                self._header_bytes,
                f"member headers near byte {self.total} are larger",
                archive=self._archive,
            )
        self.total += len(data)
        self._window += data
        if len(self._window) > 2 * self._WINDOW:
            drop = len(self._window) - self._WINDOW
            del self._window[:drop]
            self._window_start += drop
        return data

    def allow(self, data_size: int) -> None:
        """A member header was parsed: permit its data plus the next member's headers."""
        blocks = -(-max(data_size, 0) // _BLOCK)
        self._since_mark = 0
        self._budget = blocks * _BLOCK + self._header_bytes

    def block_at(self, offset: int) -> bytes:
        start = offset - self._window_start
        if start < 0:
            return b""
        return bytes(self._window[start : start + _BLOCK])

    def drain(self) -> None:
        while self.read(_CHUNK):
            pass


# --------------------------------------------------------------------------------------------------
# Extraction


@dataclass
class _DirMeta:
    mode: int
    uid: int | None = None
    gid: int | None = None
    mtime_ns: int | None = None
    xattrs: dict[str, bytes] = field(default_factory=dict)


_IMPLICIT_DIR = _DirMeta(mode=0o755)


def _mtime_ns(member: tarfile.TarInfo) -> int:
    mtime = member.mtime
    if isinstance(mtime, float) and not math.isfinite(mtime):
        raise ValueError("mtime is not a finite number")
    ns = int(mtime * 1_000_000_000) if isinstance(mtime, float) else int(mtime) * 1_000_000_000
    if not -(2**63) < ns < 2**63:
        raise ValueError(f"mtime {mtime} is out of range")
    return ns


def _xattrs(member: tarfile.TarInfo) -> dict[str, bytes]:
    # tarfile decodes pax values as UTF-8 with surrogateescape, so binary values (e.g.
    # security.capability) come back byte-exact from encode(..., "surrogateescape").
    return {
        key[len(_XATTR_PREFIX) :]: value.encode("utf-8", "surrogateescape")
        for key, value in member.pax_headers.items()
        if key.startswith(_XATTR_PREFIX) and len(key) > len(_XATTR_PREFIX)
    }


class _Refused(Exception):
    """Internal: a member is refused; turned into ArchiveError with the member's name."""


class _Extractor:
    def __init__(
        self,
        root_fd: int,
        limits: Limits,
        progress: Callable[[int, int], None] | None,
        root_default: _DirMeta | None,
    ) -> None:
        self._root_fd = root_fd
        self._limits = limits
        self._progress = progress
        self._same_owner = os.geteuid() == 0
        self._dirs: dict[tuple[str, ...], _DirMeta] = {}
        if root_default is not None:
            self._dirs[()] = root_default
        self._parent_key: tuple[str, ...] | None = None
        self._parent_fd = -1
        #: directories whose final mode is applied, in order (for cleanup after a failure)
        self.finished_dirs: list[tuple[str, ...]] = []
        self.members = 0
        self.bytes = 0
        self.skipped_devices = 0
        self.skipped_xattrs = 0

    def close(self) -> None:
        self._forget_parent()

    def stats(self) -> ExtractStats:
        return ExtractStats(self.members, self.bytes, self.skipped_devices, self.skipped_xattrs)

    # -- main loop ---------------------------------------------------------------------------------

    def run(self, tar: tarfile.TarFile, guard: _StreamGuard, archive: Path) -> None:
        while True:
            try:
                member = tar.next()
            except tarfile.TarError as exc:
                raise ArchiveError(f"corrupt or truncated archive: {exc}", archive=archive) from exc
            if member is None:
                break
            # Stream mode cannot seek back anyway; without this tarfile keeps every header in memory.
            # (`members` is not in the typeshed stubs; tolerate its absence in a future Python.)
            seen = getattr(tar, "members", None)
            if isinstance(seen, list):
                seen.clear()
            guard.allow(member.size)
            self._extract_member(tar, member)
            if self._progress is not None:
                self._progress(self.members, self.bytes)
        end = guard.block_at(tar.offset)
        if len(end) < _BLOCK:
            raise ArchiveError(
                f"truncated archive: it ends at byte {guard.total} without an end-of-archive marker",
                archive=archive,
            )
        if end.count(0) != _BLOCK:
            raise ArchiveError(f"corrupt member header at byte {tar.offset}", archive=archive)
        # Reading to the end makes gzip and xz verify their checksums and trailers.
        guard.drain()
        self._finish_dirs()

    def _extract_member(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        name = member.name
        limits = self._limits
        self.members += 1
        if self.members > limits.max_members:
            raise ArchiveLimitError("max_members", limits.max_members, "too many members", name)
        self.bytes += max(member.size, 0)
        if self.bytes > limits.max_total_bytes:
            raise ArchiveLimitError(
                "max_total_bytes", limits.max_total_bytes, f"content would reach {self.bytes} bytes", name
            )
        if len(os.fsencode(name)) > limits.max_name_length:
            raise ArchiveLimitError("max_name_length", limits.max_name_length, "name is too long", name)
        try:
            parts = member_parts(name)
            if len(parts) > limits.max_depth:
                raise ArchiveLimitError("max_depth", limits.max_depth, f"{len(parts)} levels deep", name)
            if not parts and not member.isdir():
                raise _Refused("the name is empty or names the root")
            self._create(tar, member, parts)
        except (_Refused, ValueError) as exc:
            raise ArchiveError(str(exc), name) from None
        except UnsafePathError as exc:
            raise ArchiveError(f"{exc.component!r} {exc.why}", name) from None
        except OSError as exc:
            raise ArchiveError(f"cannot create it: {exc.strerror or exc}", name) from exc

    def _create(self, tar: tarfile.TarFile, member: tarfile.TarInfo, parts: tuple[str, ...]) -> None:
        if member.isdir():
            self._create_dir(member, parts)
        elif member.type in _REGULAR_TYPES:
            self._create_file(tar, member, parts)
        elif member.issym():
            self._create_symlink(member, parts)
        elif member.islnk():
            self._create_hardlink(member, parts)
        elif member.ischr() or member.isblk() or member.isfifo():
            self._create_node(member, parts)
        else:
            raise _Refused(f"unsupported member type {member.type!r}")

    # -- parents -----------------------------------------------------------------------------------

    def _parent(self, dir_parts: tuple[str, ...]) -> int:
        # Members usually arrive grouped by directory: keep the last parent open.
        if self._parent_key == dir_parts:
            return self._parent_fd
        self._forget_parent()
        fd = walk_beneath(self._root_fd, dir_parts, create=True, on_mkdir=self._note_implicit_dir)
        self._parent_key, self._parent_fd = dir_parts, fd
        return fd

    def _forget_parent(self) -> None:
        if self._parent_key is not None:
            os.close(self._parent_fd)
        self._parent_key, self._parent_fd = None, -1

    def _note_implicit_dir(self, parts: tuple[str, ...]) -> None:
        self._dirs.setdefault(parts, _IMPLICIT_DIR)

    def _clear_entry(self, parent: int, leaf: str, parts: tuple[str, ...], *, keep_dir: bool) -> bool:
        """Make room for a new entry; returns True when an existing directory is kept."""
        try:
            st = os.stat(leaf, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if not stat.S_ISDIR(st.st_mode):
            os.unlink(leaf, dir_fd=parent)  # a symlink is removed, never followed
            return False
        if keep_dir:
            return True
        try:
            os.rmdir(leaf, dir_fd=parent)
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise _Refused("it would replace a non-empty directory") from None
            raise
        self._dirs.pop(parts, None)
        if self._parent_key is not None and self._parent_key[: len(parts)] == parts:
            self._forget_parent()
        return False

    # -- entries -----------------------------------------------------------------------------------

    def _create_dir(self, member: tarfile.TarInfo, parts: tuple[str, ...]) -> None:
        meta = _DirMeta(
            mode=member.mode & 0o7777,
            uid=member.uid,
            gid=member.gid,
            mtime_ns=_mtime_ns(member),
            xattrs=_xattrs(member),
        )
        if parts:
            parent = self._parent(parts[:-1])
            if not self._clear_entry(parent, parts[-1], parts, keep_dir=True):
                os.mkdir(parts[-1], 0o700, dir_fd=parent)
        self._dirs[parts] = meta

    def _create_file(self, tar: tarfile.TarFile, member: tarfile.TarInfo, parts: tuple[str, ...]) -> None:
        mtime_ns = _mtime_ns(member)
        parent = self._parent(parts[:-1])
        self._clear_entry(parent, parts[-1], parts, keep_dir=False)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(parts[-1], flags, 0o600, dir_fd=parent)
        try:
            self._copy_data(tar, member, fd)
            if self._same_owner:
                os.fchown(fd, member.uid, member.gid)
            os.fchmod(fd, member.mode & 0o7777)  # after chown, which clears setuid/setgid
            self._set_xattrs(fd, _xattrs(member), member.name)  # after chown, which drops capabilities
            os.utime(fd, ns=(mtime_ns, mtime_ns))
        finally:
            os.close(fd)

    def _copy_data(self, tar: tarfile.TarFile, member: tarfile.TarInfo, fd: int) -> None:
        src = tar.extractfile(member)
        if src is None:
            raise _Refused("tarfile returned no data for a regular file")
        written = 0
        with open(fd, "wb", closefd=False) as out:
            while True:
                try:
                    chunk = src.read(_CHUNK)
                except tarfile.TarError as exc:
                    raise _Refused(f"corrupt or truncated archive: {exc}") from exc
                if not chunk:
                    break
                out.write(chunk)
                written += len(chunk)
        if written != member.size:
            raise _Refused(f"truncated data: {written} of {member.size} bytes")

    def _create_symlink(self, member: tarfile.TarInfo, parts: tuple[str, ...]) -> None:
        target = member.linkname
        if not target:
            raise _Refused("symlink with an empty target")
        if "\0" in target:
            raise _Refused("symlink target contains a NUL byte")
        if len(os.fsencode(target)) > self._limits.max_name_length:
            raise ArchiveLimitError(
                "max_name_length", self._limits.max_name_length, "symlink target is too long", member.name
            )
        mtime_ns = _mtime_ns(member)
        parent, leaf = self._parent(parts[:-1]), parts[-1]
        self._clear_entry(parent, leaf, parts, keep_dir=False)
        # Stored verbatim: it is never followed on the host, so even "/etc/x" or "../../.." is harmless.
        os.symlink(target, leaf, dir_fd=parent)
        if self._same_owner:
            os.chown(leaf, member.uid, member.gid, dir_fd=parent, follow_symlinks=False)
        os.utime(leaf, ns=(mtime_ns, mtime_ns), dir_fd=parent, follow_symlinks=False)

    def _create_hardlink(self, member: tarfile.TarInfo, parts: tuple[str, ...]) -> None:
        target = member.linkname
        if len(os.fsencode(target)) > self._limits.max_name_length:
            raise ArchiveLimitError(
                "max_name_length", self._limits.max_name_length, "hardlink target is too long", member.name
            )
        try:
            source = member_parts(target)
        except ValueError as exc:
            raise _Refused(f"hardlink target {target!r}: {exc}") from None
        if not source:
            raise _Refused("hardlink to the root directory")
        if source == parts:
            raise _Refused("hardlink to itself")
        try:
            source_parent = walk_beneath(self._root_fd, source[:-1])
        except FileNotFoundError:
            raise _Refused(f"hardlink target {target!r} is not in the extracted tree") from None
        except UnsafePathError as exc:
            raise _Refused(f"hardlink target {target!r}: {exc.component!r} {exc.why}") from None
        try:
            try:
                st = os.stat(source[-1], dir_fd=source_parent, follow_symlinks=False)
            except FileNotFoundError:
                raise _Refused(f"hardlink target {target!r} is not in the extracted tree") from None
            if stat.S_ISDIR(st.st_mode):
                raise _Refused(f"hardlink target {target!r} is a directory")
            parent, leaf = self._parent(parts[:-1]), parts[-1]
            self._clear_entry(parent, leaf, parts, keep_dir=False)
            os.link(source[-1], leaf, src_dir_fd=source_parent, dst_dir_fd=parent, follow_symlinks=False)
        finally:
            os.close(source_parent)

    def _create_node(self, member: tarfile.TarInfo, parts: tuple[str, ...]) -> None:
        if member.isblk():
            raise _Refused(f"block device {member.devmajor}:{member.devminor} is not allowed")
        if member.ischr():
            device = (member.devmajor, member.devminor)
            if device not in ALLOWED_CHAR_DEVICES:
                raise _Refused(f"character device {device[0]}:{device[1]} is not on the allowed list")
            kind = stat.S_IFCHR
        else:
            device, kind = (0, 0), stat.S_IFIFO
        mtime_ns = _mtime_ns(member)
        parent, leaf = self._parent(parts[:-1]), parts[-1]
        self._clear_entry(parent, leaf, parts, keep_dir=False)
        try:
            os.mknod(leaf, kind | 0o600, os.makedev(*device), dir_fd=parent)
        except PermissionError:
            if kind != stat.S_IFCHR:
                raise
            # runc provides /dev in the container anyway; an unprivileged extraction just skips nodes.
            _log.warning("skipped device node %r: mknod not permitted", member.name)
            self.skipped_devices += 1
            return
        if self._same_owner:
            os.chown(leaf, member.uid, member.gid, dir_fd=parent, follow_symlinks=False)
        # follow_symlinks=False: fchmodat(AT_SYMLINK_NOFOLLOW); it raises instead of following.
        os.chmod(leaf, member.mode & 0o7777, dir_fd=parent, follow_symlinks=False)
        os.utime(leaf, ns=(mtime_ns, mtime_ns), dir_fd=parent, follow_symlinks=False)

    def _set_xattrs(self, fd: int, xattrs: dict[str, bytes], name: str) -> None:
        for key, value in xattrs.items():
            try:
                os.setxattr(fd, key, value)
            except OSError as exc:
                _log.debug("xattr %s of %r not restored: %s", key, name, exc.strerror)
                self.skipped_xattrs += 1

    # -- directories, last -------------------------------------------------------------------------

    def _finish_dirs(self) -> None:
        self._forget_parent()
        for parts in sorted(self._dirs, key=len, reverse=True):
            meta = self._dirs[parts]
            shown = "/".join(parts) or "."
            try:
                fd = walk_beneath(self._root_fd, parts)
                try:
                    if self._same_owner and meta.uid is not None and meta.gid is not None:
                        os.fchown(fd, meta.uid, meta.gid)
                    os.fchmod(fd, meta.mode)
                    self.finished_dirs.append(parts)
                    self._set_xattrs(fd, meta.xattrs, shown)
                    if meta.mtime_ns is not None:
                        os.utime(fd, ns=(meta.mtime_ns, meta.mtime_ns))
                finally:
                    os.close(fd)
            except UnsafePathError as exc:
                raise ArchiveError(f"{exc.component!r} {exc.why}", shown) from None
            except OSError as exc:
                raise ArchiveError(f"cannot set its metadata: {exc.strerror or exc}", shown) from exc


def _open_tar(guard: _StreamGuard, archive: Path) -> tarfile.TarFile:
    try:
        # mode "r|": tarfile only parses the stream; it never seeks and never extracts anything.
        return tarfile.open(fileobj=cast(IO[bytes], guard), mode="r|", encoding="utf-8", errors="surrogateescape")
    except tarfile.TarError as exc:
        raise ArchiveError(f"corrupt or truncated archive: {exc}", archive=archive) from exc


@dataclass(frozen=True)
class _Destination:
    path: Path
    root_fd: int
    created: bool
    saved: os.stat_result


def _prepare_destination(dest: Path) -> _Destination:
    shown = str(dest)
    try:
        try:
            st = os.lstat(dest)
        except FileNotFoundError:
            os.mkdir(dest, 0o700)
            created = True
        else:
            if stat.S_ISLNK(st.st_mode):
                raise ArchiveError(f"destination {shown!r} is a symlink")
            if not stat.S_ISDIR(st.st_mode):
                raise ArchiveError(f"destination {shown!r} exists and is not a directory")
            if os.listdir(dest):
                raise ArchiveError(f"destination {shown!r} is not empty")
            created = False
        root_fd = os.open(dest, _DIR_FLAGS)
    except OSError as exc:
        raise ArchiveError(f"cannot use destination {shown!r}: {exc.strerror or exc}") from exc
    return _Destination(dest, root_fd, created, os.fstat(root_fd))


def _discard(dest: _Destination, extractor: _Extractor) -> None:
    """Remove everything the failed extraction made. Must not raise (the original error matters)."""
    try:
        if not shutil.rmtree.avoids_symlink_attacks:  # pragma: no cover - always true on Linux
            raise RuntimeError("shutil.rmtree may follow symlinks on this platform; not removing")
        if os.geteuid() != 0:
            # Without CAP_DAC_OVERRIDE a read-only directory could not be emptied: shallowest first.
            for parts in reversed(extractor.finished_dirs):
                if parts:
                    parent = walk_beneath(dest.root_fd, parts[:-1])
                    try:
                        os.chmod(parts[-1], 0o700, dir_fd=parent, follow_symlinks=False)
                    finally:
                        os.close(parent)
                else:
                    os.fchmod(dest.root_fd, 0o700)
        now = os.lstat(dest.path)
        if (now.st_dev, now.st_ino) != (dest.saved.st_dev, dest.saved.st_ino):
            raise RuntimeError(f"{dest.path} was replaced during extraction; not removing it")
        if dest.created:
            shutil.rmtree(dest.path)
            return
        # The destination existed (empty, maybe a mount point): empty it again and restore it.
        for name in os.listdir(dest.root_fd):
            st = os.stat(name, dir_fd=dest.root_fd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                shutil.rmtree(dest.path / name)
            else:
                os.unlink(name, dir_fd=dest.root_fd)
        saved = dest.saved
        if os.geteuid() == 0:
            os.fchown(dest.root_fd, saved.st_uid, saved.st_gid)
        os.fchmod(dest.root_fd, stat.S_IMODE(saved.st_mode))
        os.utime(dest.root_fd, ns=(saved.st_atime_ns, saved.st_mtime_ns))
    except Exception:
        _log.exception("could not clean up the partial extraction in %s", dest.path)


def extract_archive(
    src: Path,
    dest: Path,
    limits: Limits = Limits(),
    progress: Callable[[int, int], None] | None = None,
) -> ExtractStats:
    """Extract the tar archive ``src`` (plain, gzip, xz or zstd) into ``dest``.

    ``dest`` must not exist or be an empty directory. All or nothing: on any error (refused
    member, corrupt archive, exceeded limit, I/O error, interruption) ``dest`` is removed again
    (emptied if it existed) and the error propagates; nothing outside ``dest`` is written.
    ``progress(members, bytes)`` is called after each member and must not block.
    Ownership is restored only when running as root; device nodes are skipped without CAP_MKNOD.
    """
    compression = detect_compression(src)
    destination = _prepare_destination(dest)
    root_default = _IMPLICIT_DIR if destination.created else None
    extractor = _Extractor(destination.root_fd, limits, progress, root_default)
    try:
        with contextlib.ExitStack() as stack:
            raw = stack.enter_context(open(src, "rb"))
            stream = _decompressed(raw, compression)
            if stream is not raw:
                stack.callback(stream.close)
            guard = _StreamGuard(stream, limits.max_header_bytes, src)
            tar = stack.enter_context(_open_tar(guard, src))
            extractor.run(tar, guard, src)
        return extractor.stats()
    except BaseException:
        extractor.close()
        _discard(destination, extractor)
        raise
    finally:
        extractor.close()
        os.close(destination.root_fd)


# --------------------------------------------------------------------------------------------------
# Creation


def _tail(path_or_file: IO[bytes], lines: int = 15) -> str:
    path_or_file.seek(0)
    text = path_or_file.read().decode("utf-8", "replace")
    return "\n".join(text.strip().splitlines()[-lines:])


def create_archive(
    src_dir: Path,
    dest_file: Path,
    compression: str = "zst",
    *,
    root_owner: bool = False,
) -> None:
    """Archive the rootfs ``src_dir`` into ``dest_file`` with GNU tar.

    Numeric owners, special files, symlinks, hardlinks and xattrs are kept (pax format).
    ``compression`` is "zst" (zstandard, level 3, all cores), "gz", "xz" or "tar".
    ``root_owner`` records every entry as owned by 0:0 (for a rootfs built unprivileged).
    The archive is written to a temporary name next to ``dest_file`` and renamed at the end, so
    ``dest_file`` is either the complete old file or the complete new one.
    """
    if compression not in COMPRESSION_SUFFIXES:
        raise ValueError(f"unknown compression {compression!r}; use one of {sorted(COMPRESSION_SUFFIXES)}")
    if not src_dir.is_dir():
        raise ArchiveError(f"cannot archive {str(src_dir)!r}: not a directory")
    cmd = [
        "tar",
        "--numeric-owner",
        "--xattrs",
        "--xattrs-include=*",
        "--format=posix",
        "--pax-option=delete=atime,delete=ctime",
        "--sort=name",
        "-C",
        str(src_dir),
    ]
    if root_owner:
        cmd += ["--owner=0", "--group=0"]
    cmd += {"zst": [], "gz": ["-z"], "xz": ["-J"], "tar": []}[compression]
    cmd += ["-cf", "-", "."]
    fd, tmp_name = tempfile.mkstemp(dir=dest_file.parent, prefix=f".{dest_file.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, tempfile.TemporaryFile() as err:
            if compression == "zst":
                proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err)
                assert proc.stdout is not None
                try:
                    zstandard.ZstdCompressor(level=3, threads=-1).copy_stream(proc.stdout, out)
                except BaseException:
                    proc.kill()
                    raise
                finally:
                    proc.stdout.close()
                    returncode = proc.wait()
            else:
                returncode = subprocess.run(cmd, stdout=out, stderr=err, check=False).returncode
            if returncode != 0:
                raise ArchiveError(
                    f"cannot create template archive {str(dest_file)!r}: "
                    f"`{' '.join(cmd)}` exited with {returncode}: {_tail(err)}"
                )
            out.flush()
            os.fchmod(out.fileno(), 0o644)
            os.fsync(out.fileno())
        os.replace(tmp, dest_file)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
