"""vzdump: back one container up (config + private area) into DUMPDIR, in one of OpenVZ's modes.

* default: the private area is archived while the container runs (a crash-consistent-ish copy);
* ``--stop``: stopped (clean halt), archived, started again if it was running;
* ``--suspend``: rsync to a temporary copy while running, ``runc pause`` (freezer), a second rsync
  of what changed (``--modify-window=-1``: same-second rewrites are not skipped), ``runc resume`` —
  the freeze lasts only the second rsync — then the copy is archived;
* ``--snapshot``: refused (needs LVM).

The container's lock is held while its files are read live or its state changes, never while a
suspend copy is archived. Every line of the log goes to the caller's stream and, with ``run_log``,
is appended to DUMPDIR/run_log. A failure leaves no partial archive; the container is resumed or
started again whatever happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import shutil
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from agent import proc
from agent.backup import naming, writer
from agent.containers import ContainerManager
from agent.errors import Kind, VzError
from agent.storage import quota

log = logging.getLogger(__name__)

RSYNC = ["rsync", "-aHAXS", "--numeric-ids", "--delete"]
PROGRESS_EVERY_S = 0.5


@dataclass(frozen=True)
class Result:
    ctid: int
    archive: str
    size: int
    duration_s: float
    frozen_s: float
    removed: tuple[str, ...]
    mode: str
    files: int
    bytes: int


@dataclass(frozen=True)
class Progress:
    phase: str
    message: str = ""
    done: int = 0
    total: int = 0
    files: int = 0
    result: Result | None = None


@dataclass(frozen=True)
class DumpRequest:
    ref: str
    dumpdir: str = ""
    compress: bool = False
    mode: str = ""
    exclude_path: Sequence[str] = ()
    bwlimit_kbps: int = 0
    maxfiles: int = 0
    run_log: str = ""


@dataclass
class _Log:
    """OpenVZ-style log lines: to the stream and appended to the run log file, if any."""

    path: Path | None
    lines: list[Progress] = field(default_factory=list)

    def __call__(self, phase: str, text: str, level: str = "INFO") -> Progress:
        line = f"{level}: {text}"
        if self.path is not None:
            stamp = datetime.now().strftime("%b %d %H:%M:%S")
            try:
                with open(self.path, "a") as f:
                    f.write(f"{stamp} {line}\n")
            except OSError as e:
                log.warning("cannot append to %s: %s", self.path, e)
        (log.warning if level != "INFO" else log.info)("vzdump: %s", text)
        return Progress(phase=phase, message=line)


async def threaded(fn: Callable[..., Any], phase: str, box: list[Any], **kw: Any) -> AsyncIterator[Progress]:
    """Run fn(progress=..., stop=..., **kw) in a thread, yielding its progress (at most every
    PROGRESS_EVERY_S); fn's return value is appended to box. Cancelling stops fn."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Progress] = asyncio.Queue()
    stop = threading.Event()
    last = [0.0]

    def report(done: int, total: int, files: int) -> None:
        now = time.monotonic()
        if now - last[0] >= PROGRESS_EVERY_S:
            last[0] = now
            loop.call_soon_threadsafe(queue.put_nowait, Progress(phase=phase, done=done, total=total, files=files))

    fut = loop.run_in_executor(None, functools.partial(fn, progress=report, stop=stop, **kw))
    try:
        while not fut.done():
            getter = asyncio.ensure_future(queue.get())
            await asyncio.wait({getter, fut}, return_when=asyncio.FIRST_COMPLETED)
            if getter.done():
                yield getter.result()
            else:
                getter.cancel()
        while not queue.empty():
            yield queue.get_nowait()
        box.append(fut.result())
    finally:
        stop.set()
        # cancelled: the thread ends on its own (it removes its partial output); its outcome is moot
        fut.add_done_callback(lambda f: None if f.cancelled() else f.exception())


def _dumpdir(m: ContainerManager, text: str) -> Path:
    d = Path(text) if text else m.layout.dump_dir
    if not d.is_absolute():
        raise VzError(Kind.INVALID, f"--dumpdir {text!r} must be an absolute path on node {m.layout.node}")
    if d.exists() and not d.is_dir():
        raise VzError(Kind.INVALID, f"--dumpdir {d} is not a directory")
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    return d


def _archive_path(dumpdir: Path, ctid: int, compress: bool) -> Path:
    """A name no archive has yet: OpenVZ's time stamp, moved on by a second while taken."""
    t = datetime.now().replace(microsecond=0)
    while True:
        p = dumpdir / naming.archive_name(ctid, t, compress=compress)
        if not p.exists() and not p.with_name(f".{p.name}.part").exists():
            return p
        t = datetime.fromtimestamp(t.timestamp() + 1)


async def _rsync(src: Path, dst: Path, extra: Sequence[str] = ()) -> float:
    t0 = time.monotonic()
    res = await proc.run([*RSYNC, *extra, f"{src}/", f"{dst}/"], timeout=6 * 3600, check=False)
    if res.returncode not in (0, 24):  # 24: files vanished while copied (the container is running)
        raise VzError(Kind.FAILED, f"rsync of {src} failed (exit {res.returncode}): {res.err_tail()}")
    return time.monotonic() - t0


async def dump(m: ContainerManager, req: DumpRequest) -> AsyncIterator[Progress]:
    """Back container req.ref up; yields log lines and progress, the last item carries the Result."""
    mode = naming.check_mode(req.mode)
    excludes = naming.compile_excludes(list(req.exclude_path))
    if req.run_log and not naming.RUN_LOG_RE.match(req.run_log):
        raise VzError(Kind.INVALID, f"invalid run log name {req.run_log!r}")
    if req.bwlimit_kbps < 0 or req.maxfiles < 0:
        raise VzError(Kind.INVALID, "--bwlimit and --maxfiles must not be negative")
    ctid = m.resolve(req.ref)
    dumpdir = _dumpdir(m, req.dumpdir)
    say = _Log(dumpdir / req.run_log if req.run_log else None)
    t_start = time.monotonic()
    archive = _archive_path(dumpdir, ctid, req.compress)
    yield say("start", f"Starting Backup of VM {ctid} (openvz)")
    conf_text = m.layout.conf_file(ctid).read_text()
    private = m.layout.private(ctid)
    frozen = 0.0
    written: list[writer.Written] = []
    tmp: Path | None = None
    try:
        async with m._locked(ctid, "vzdump"):
            st = await m._state(ctid)
            running = st is not None and st.status in ("running", "paused")
            yield say("start", f"status = {'running' if running else 'stopped'}")
            effective = mode if running else ""
            yield say("start", f"backup mode: {effective or 'running copy' if running else 'stopped'}")
            if effective == "suspend":
                tmp = dumpdir / f".{archive.name}.tmp"
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir(mode=0o700)
                yield say("sync", f"starting first sync {private}/ to {tmp}")
                bw = [f"--bwlimit={req.bwlimit_kbps}"] if req.bwlimit_kbps else []
                secs = await _rsync(private, tmp, bw)
                yield say("sync", f"first sync finished ({secs:.1f} seconds)")
                paused_by_us = st is not None and st.status == "running"
                yield say("freeze", "suspend vm")
                t0 = time.monotonic()
                if paused_by_us:
                    await m.runc.pause(ctid)
                try:
                    await _rsync(private, tmp, ["--modify-window=-1"])
                finally:
                    if paused_by_us:
                        await asyncio.shield(m.runc.resume(ctid))
                    frozen = time.monotonic() - t0
                yield say("freeze", "resume vm")
                yield say("freeze", f"vm is online again after {frozen:.3f} seconds (frozen: final sync)")
            elif effective == "stop":
                yield say("stop", "stopping vm")
                t0 = time.monotonic()
                await m._stop(ctid, fast=False, timeout=0)
                try:
                    async for p in _archive_live(m, ctid, conf_text, archive, req, excludes, written, say):
                        yield p
                finally:  # started again whatever happened (no yield here: the stream may be gone)
                    await asyncio.shield(m._start(ctid, wait=False, force=False))
                    frozen = time.monotonic() - t0
                yield say("stop", f"restarted vm: online again after {frozen:.1f} seconds")
            else:
                async for p in _archive_live(m, ctid, conf_text, archive, req, excludes, written, say):
                    yield p
        if tmp is not None:
            async for p in _archive(tmp, conf_text, archive, req, excludes, written, say):
                yield p
    except BaseException as e:
        archive.unlink(missing_ok=True)
        if isinstance(e, Exception):
            yield say("error", f"Backup of VM {ctid} failed - {e}", level="ERROR")
        else:  # cancelled (the client went away): into the run log only, the stream is gone
            say("error", f"Backup of VM {ctid} interrupted", level="ERROR")
        raise
    finally:
        if tmp is not None:
            await asyncio.to_thread(shutil.rmtree, tmp, True)
    w = written[0]
    if w.warnings:
        yield say("archive", f"tar: {w.warnings.splitlines()[-1][:300]}", level="WARN")
    yield say("archive", f"archive file size: {naming.human_size(w.size)}")
    removed = []
    for old in naming.select_expired(os.listdir(dumpdir), ctid, req.maxfiles):
        with contextlib.suppress(FileNotFoundError):
            (dumpdir / old).unlink()
            removed.append(old)
            yield say("retention", f"delete old backup '{dumpdir / old}'")
    duration = time.monotonic() - t_start
    yield say("done", f"Finished Backup of VM {ctid} ({naming.duration_text(duration)}): {archive.name}, "
                      f"{naming.human_size(w.size)}" + (f", frozen {frozen:.3f} s" if frozen else ""))
    yield Progress(phase="done", result=Result(ctid=ctid, archive=str(archive), size=w.size, duration_s=duration,
                                               frozen_s=frozen, removed=tuple(removed), mode=mode, files=w.files,
                                               bytes=w.bytes))


async def _archive_live(m: ContainerManager, ctid: int, conf_text: str, archive: Path, req: DumpRequest,
                        excludes: Sequence[Any], written: list[writer.Written], say: _Log) -> AsyncIterator[Progress]:
    """Archive the private area itself (its disk image mounted for the time, when it is not)."""
    mounted = await quota.mount_private(m.layout, ctid)
    try:
        async for p in _archive(m.layout.private(ctid), conf_text, archive, req, excludes, written, say):
            yield p
    finally:
        if mounted:
            await asyncio.shield(quota.unmount_private(m.layout, ctid))


async def _archive(src: Path, conf_text: str, archive: Path, req: DumpRequest, excludes: Sequence[Any],
                   written: list[writer.Written], say: _Log) -> AsyncIterator[Progress]:
    yield say("archive", f"creating archive '{archive}'")
    t0 = time.monotonic()
    async for p in threaded(writer.write_archive, "archive", written, src=src, conf_text=conf_text, dest=archive,
                            compress=req.compress, excludes=excludes, bwlimit_kbps=req.bwlimit_kbps):
        yield p
    w = written[-1]
    secs = max(time.monotonic() - t0, 1e-6)
    yield say("archive", f"Total bytes written: {w.bytes} ({naming.human_size(w.bytes)}, "
                         f"{naming.human_size(w.bytes / secs)}/s)")
