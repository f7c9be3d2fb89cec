"""The filesystem changes made after the pre-copy, carried with the images instead of a second rsync.

While the container is frozen, every millisecond counts: a final rsync pays its start-up, the
daemon handshake and a full scan. When the only changes since the pre-copy started are to regular
files and symlinks (no directory changed, so nothing was created, removed or renamed), those files
travel inside the image stream and the destination writes them in place. Anything else (or a
large delta) falls back to the final rsync.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from agent import proc
from agent.storage import rootfs

MAX_FILES = 2000
MAX_BYTES = 64 << 20
DELTA_DIR = "fsdelta"


FINE_MARGIN_S = 0.05  # the kernel stamps files with a coarse clock: up to a tick (<= 10 ms) behind
COARSE_MARGIN_S = 1.0  # filesystems with whole-second timestamps (e.g. ext4 with 128-byte inodes)


def timestamp_margin(private: Path) -> float:
    """How far before the pre-copy's start the change scan must look: one timestamp tick.

    Whole-second timestamps show as zero nanoseconds on every entry; finer ones almost never do.
    """
    try:
        entries = [private, *sorted(private.iterdir())[:16]]
        if any(os.lstat(e).st_ctime_ns % 1_000_000_000 for e in entries):
            return FINE_MARGIN_S
    except OSError:
        pass
    return COARSE_MARGIN_S


@dataclass(frozen=True)
class Delta:
    """What changed since the pre-copy: files to carry, or None when a full sync is needed."""

    files: tuple[str, ...] | None
    reason: str


async def changed_since(private: Path, since: float) -> Delta:
    """Paths under private modified or changed (mtime or ctime) after `since` (wall clock)."""
    stamp = f"@{since:.6f}"
    res = await proc.run(["find", str(private), "(", "-newermt", stamp, "-o", "-newerct", stamp, ")",
                          "-printf", r"%y %n %s %P\0"], timeout=120, check=False, what="find")
    if not res.ok:
        return Delta(None, f"scan failed: {res.err_tail()}")
    return classify(res.stdout.split(b"\0"))


def classify(records: Sequence[bytes]) -> Delta:
    """Pure: find's records "TYPE LINKS SIZE PATH" -> the delta decision."""
    files: list[str] = []
    total = 0
    for rec in records:
        if not rec:
            continue
        kind, links, size, path = rec.split(b" ", 3)
        name = path.decode(errors="surrogateescape")
        if kind == b"d" or not name:
            return Delta(None, f"directory {name or '/'} changed")
        if kind not in (b"f", b"l"):
            return Delta(None, f"special file {name} changed")
        if kind == b"f" and int(links) > 1:
            return Delta(None, f"hard-linked file {name} changed")
        files.append(name)
        total += int(size)
        if len(files) > MAX_FILES or total > MAX_BYTES:
            return Delta(None, "too many changes to carry with the images")
    return Delta(tuple(files), f"{len(files)} file(s), {total >> 10} KiB changed")


def stage(private: Path, files: Sequence[str], image_dir: Path) -> None:
    """Copy the changed files (no-follow) into image_dir/fsdelta, keeping owner, mode and times."""
    for rel in files:
        dst = image_dir / DELTA_DIR / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        src = private / rel
        st = os.lstat(src)
        if stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(src), dst)
        elif stat.S_ISREG(st.st_mode):
            shutil.copy2(src, dst, follow_symlinks=False)
        else:
            continue
        os.chown(dst, st.st_uid, st.st_gid, follow_symlinks=False)
        if not stat.S_ISLNK(st.st_mode):
            os.chmod(dst, stat.S_IMODE(st.st_mode))
        os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def apply(image_dir: Path, private: Path) -> int:
    """Write the carried files into the private area (never following a symlink there)."""
    root = image_dir / DELTA_DIR
    if not root.is_dir():
        return 0
    count = 0
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            src = Path(dirpath) / name
            rel = str(src.relative_to(root))
            st = os.lstat(src)
            with rootfs.open_parent(private, rel, create_dirs=False) as (dfd, base):
                tmp = f".{base}.vzfleet-delta"
                try:
                    os.unlink(tmp, dir_fd=dfd)
                except FileNotFoundError:
                    pass
                if stat.S_ISLNK(st.st_mode):
                    os.symlink(os.readlink(src), tmp, dir_fd=dfd)
                else:
                    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=dfd)
                    try:
                        with open(src, "rb") as f:
                            while chunk := f.read(1 << 20):
                                os.write(fd, chunk)
                        os.fchown(fd, st.st_uid, st.st_gid)
                        os.fchmod(fd, stat.S_IMODE(st.st_mode))
                    finally:
                        os.close(fd)
                os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=dfd, follow_symlinks=False)
                os.rename(tmp, base, src_dir_fd=dfd, dst_dir_fd=dfd)
            count += 1
    shutil.rmtree(root, ignore_errors=True)
    return count
