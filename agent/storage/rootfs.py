"""Reading and writing files inside a container's root filesystem from the host, safely.

The container's root user controls every path inside its rootfs, so the host never follows a
symlink there: each path component is opened relative to its parent with O_NOFOLLOW.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from agent.storage.archive import UnsafePathError, member_parts, walk_beneath


class UnsafePath(Exception):
    pass


@contextmanager
def open_parent(rootfs: Path, rel: str, *, create_dirs: bool = False) -> Iterator[tuple[int, str]]:
    """Yield (fd of the parent directory, final name) of rel inside rootfs, symlinks refused."""
    try:
        parts = member_parts(rel)
    except ValueError as e:
        raise UnsafePath(f"refused path {rel!r} inside the container: {e}") from None
    if not parts:
        raise UnsafePath(f"refused path {rel!r} inside the container")
    root_fd = os.open(rootfs, os.O_DIRECTORY | os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        try:
            fd = walk_beneath(root_fd, parts[:-1], create=create_dirs)
        except UnsafePathError as e:
            raise UnsafePath(f"cannot open {rel!r} inside the container: {e}") from None
    finally:
        os.close(root_fd)
    try:
        yield fd, parts[-1]
    finally:
        os.close(fd)


def write_file(rootfs: Path, rel: str, data: bytes, mode: int = 0o644) -> None:
    """Replace rel inside rootfs atomically (temp file + rename), never following a symlink."""
    with open_parent(rootfs, rel, create_dirs=True) as (dfd, name):
        tmp = f".{name}.vzfleet-tmp"
        try:
            os.unlink(tmp, dir_fd=dfd)
        except FileNotFoundError:
            pass
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode, dir_fd=dfd)
        try:
            os.write(fd, data)
            os.fchmod(fd, mode)
        finally:
            os.close(fd)
        os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)


def read_file(rootfs: Path, rel: str, limit: int = 1 << 20) -> bytes | None:
    """Contents of a regular file rel inside rootfs, or None if it does not exist."""
    try:
        with open_parent(rootfs, rel) as (dfd, name):
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dfd)
            try:
                return os.read(fd, limit)
            finally:
                os.close(fd)
    except (FileNotFoundError, NotADirectoryError, UnsafePath):
        return None
    except OSError:
        return None
