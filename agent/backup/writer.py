"""The archive of one backup: GNU tar of the private area, zstd (all cores), rate-limited, with progress.

Same tar options as the template archives (agent/storage/archive.py create_archive: numeric owners,
xattrs, pax format), plus what a backup needs and templates do not: the container's config as the
archive's first member (``etc/vzdump/vps.conf``, where OpenVZ's vzdump puts it, so that a restore
reads it without extracting anything), an explicit file list (``--exclude-path``), a bandwidth
limit and byte progress. Blocking: run it in a thread.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import zstandard

from agent.backup.naming import CONF_MEMBER, RateLimiter, is_excluded
from agent.errors import Kind, VzError

CHUNK = 1 << 20
TAR_OPTIONS = ["--numeric-owner", "--xattrs", "--xattrs-include=*", "--format=posix",
               "--pax-option=delete=atime,delete=ctime", "--ignore-failed-read", "--no-recursion"]


class Cancelled(Exception):
    pass


@dataclass(frozen=True)
class Written:
    size: int  # bytes of the archive file
    files: int
    bytes: int  # bytes of file data (sizes of the regular files archived)
    warnings: str  # tar's complaints about files that changed or vanished while read


def file_list(src: Path, excludes: Sequence[re.Pattern[str]]) -> tuple[list[str], int]:
    """Archive member names ('.', './etc', ...) of the tree src, excluded paths pruned, symlinks
    not followed, sorted for a stable archive; and the total size of its regular files."""
    names, total = ["."], 0
    for dirpath, dirnames, filenames in os.walk(src):
        rel = os.path.relpath(dirpath, src)
        rel = "" if rel == "." else rel
        keep_dirs = []
        for d in sorted(dirnames):
            path = f"{rel}/{d}" if rel else d
            if is_excluded(path, excludes):
                continue
            keep_dirs.append(d)
            names.append(f"./{path}")
        dirnames[:] = keep_dirs  # os.walk descends only into these (and never into symlinks)
        for f in sorted(filenames):
            path = f"{rel}/{f}" if rel else f
            if path == CONF_MEMBER or is_excluded(path, excludes):
                continue
            names.append(f"./{path}")
            try:
                st = os.lstat(os.path.join(dirpath, f))
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
    return names, total


def write_archive(src: Path, conf_text: str, dest: Path, *, compress: bool,
                  excludes: Sequence[re.Pattern[str]] = (), bwlimit_kbps: int = 0,
                  progress: Callable[[int, int, int], None] | None = None,
                  stop: threading.Event | None = None) -> Written:
    """Archive the tree src (with conf_text as etc/vzdump/vps.conf, first) into dest.

    dest appears complete or not at all (written as a hidden .part, fsynced, renamed; mode 0600).
    progress(bytes_read, bytes_total, files_total) is called about every MiB and must not block;
    `stop` set from another thread cancels (raises Cancelled). Errors raise VzError.
    """
    names, total = file_list(src, excludes)
    work = Path(tempfile.mkdtemp(prefix=".vzdump-", dir=dest.parent))
    part = dest.with_name(f".{dest.name}.part")
    try:
        conf_dir = work / "conf"
        (conf_dir / os.path.dirname(CONF_MEMBER)).mkdir(parents=True)
        conf_file = conf_dir / CONF_MEMBER
        conf_file.write_text(conf_text)
        conf_file.chmod(0o644)
        (work / "first").write_bytes(b"./" + CONF_MEMBER.encode() + b"\0")
        (work / "tree").write_bytes(b"\0".join(os.fsencode(n) for n in names) + b"\0")
        cmd = ["tar", *TAR_OPTIONS, "--null", "-C", str(conf_dir), "-T", str(work / "first"),
               "-C", str(src), "-T", str(work / "tree"), "-cf", "-"]
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as out, open(work / "stderr", "w+b") as err:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL)
            assert proc.stdout is not None
            try:
                _pump(proc.stdout, out, compress=compress, total=total, files=len(names),
                      limiter=RateLimiter(bwlimit_kbps * 1024), progress=progress, stop=stop)
            except BaseException:
                proc.kill()
                raise
            finally:
                proc.stdout.close()
                rc = proc.wait()
            err.seek(0)
            tail = err.read().decode(errors="replace").strip()
            if rc not in (0, 1):  # 1: some files changed or vanished while read (a live copy)
                raise VzError(Kind.FAILED, f"tar failed (exit {rc}): {tail[-600:]}")
            out.flush()
            os.fsync(out.fileno())
        os.replace(part, dest)
        return Written(size=dest.stat().st_size, files=len(names), bytes=total, warnings=tail if rc else "")
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _pump(src: IO[bytes], out: IO[bytes], *, compress: bool, total: int, files: int, limiter: RateLimiter,
          progress: Callable[[int, int, int], None] | None, stop: threading.Event | None) -> None:
    done = reported = 0
    sink = zstandard.ZstdCompressor(level=3, threads=-1).stream_writer(out, closefd=False) if compress else out
    while chunk := src.read(CHUNK):
        if stop is not None and stop.is_set():
            raise Cancelled("backup cancelled")
        sink.write(chunk)
        done += len(chunk)
        limiter.consume(len(chunk))
        if progress is not None and done - reported >= CHUNK:
            progress(done, total, files)
            reported = done
    if compress:
        sink.close()  # ends the zstd frame; `out` stays open (closefd=False)
    if progress is not None:
        progress(done, total, files)
