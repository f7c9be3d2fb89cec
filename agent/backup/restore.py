"""vzdump --restore: a container from a backup archive, extracted as safely as an OS template.

The archive is only ever parsed by agent/storage/archive.py (no tar binary, no tarfile extract):
its first member must be the config, ``etc/vzdump/vps.conf``, read without extracting anything;
the config says whether the private area is a disk image (VE_LAYOUT=image, limits from
DISKSPACE/DISKINODES). The files are extracted into a new area beside the real one (an image
mounted there, or a directory) and moved into place only when everything succeeded; an existing
container is replaced only with --force (and only when stopped), after the new area is complete.
Archives of OpenVZ's vzdump (config somewhere inside) restore into a plain directory.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import tarfile
import time
from collections.abc import AsyncIterator
from contextlib import ExitStack
from pathlib import Path
from typing import IO, cast

from agent.backup import naming
from agent.backup.dump import Progress, Result, threaded
from agent.config.conffile import ConfFile, ConfigError
from agent.config.params import ContainerConfig
from agent.containers import ContainerManager, parse_ctid
from agent.errors import Kind, VzError
from agent.layout import NodeLayout
from agent.storage import archive as tar_archive
from agent.storage import quota, rootfs

log = logging.getLogger(__name__)

MAX_CONF_BYTES = 1 << 20


def read_first_conf(path: Path) -> str | None:
    """The config of a vzdump archive made by us: its first member, etc/vzdump/vps.conf; None when
    the archive does not start with it. Raises VzError(INVALID) for a corrupt archive."""
    try:
        compression = tar_archive.detect_compression(path)
        with ExitStack() as stack:
            raw = stack.enter_context(open(path, "rb"))
            stream = tar_archive._decompressed(raw, compression)
            if stream is not raw:
                stack.callback(stream.close)
            tar = stack.enter_context(tarfile.open(fileobj=cast(IO[bytes], stream), mode="r|",
                                                   encoding="utf-8", errors="surrogateescape"))
            member = tar.next()
            if member is None:
                raise VzError(Kind.INVALID, f"refused backup archive {path}: it is empty")
            try:
                parts = tar_archive.member_parts(member.name)
            except ValueError:
                return None
            if "/".join(parts) != naming.CONF_MEMBER or not member.isreg():
                return None
            if member.size > MAX_CONF_BYTES:
                raise VzError(Kind.INVALID, f"refused backup archive {path}: its config is larger than "
                                            f"{MAX_CONF_BYTES} bytes")
            f = tar.extractfile(member)
            data = f.read() if f is not None else b""
    except tar_archive.ArchiveError as e:
        raise VzError(Kind.INVALID, f"refused backup archive: {e}") from None
    except (tarfile.TarError, OSError, EOFError) as e:
        raise VzError(Kind.INVALID, f"refused backup archive {path}: corrupt or not a tar archive ({e})") from None
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise VzError(Kind.INVALID, f"refused backup archive {path}: its config is not UTF-8 text") from None


def restored_config(text: str, where: str, layout: NodeLayout, ctid: int, *, image: bool) -> ConfFile:
    """The archived config as container ctid's on this node: its paths, and VE_LAYOUT as restored.

    Pure apart from validation; INVALID when the archived config does not parse."""
    try:
        conf = ConfFile.parse(text, where)
        conf.update_values({"VE_ROOT": str(layout.ve_root(ctid)), "VE_PRIVATE": str(layout.private(ctid)),
                            quota.LAYOUT_KEY: quota.IMAGE_LAYOUT if image else None})
        ContainerConfig.from_conf(conf, where)
    except ConfigError as e:
        raise VzError(Kind.INVALID, f"refused backup archive: its config is broken: {e}") from None
    return conf


def _take_conf(staging: Path) -> str | None:
    """Read and remove etc/vzdump/vps.conf from the extracted tree (symlinks never followed)."""
    data = rootfs.read_file(staging, naming.CONF_MEMBER, limit=MAX_CONF_BYTES + 1)
    if data is None:
        return None
    if len(data) > MAX_CONF_BYTES:
        raise VzError(Kind.INVALID, f"refused backup archive: its config is larger than {MAX_CONF_BYTES} bytes")
    with rootfs.open_parent(staging, naming.CONF_MEMBER) as (dfd, name):
        os.unlink(name, dir_fd=dfd)
    with rootfs.open_parent(staging, "etc/vzdump") as (dfd, name):
        try:
            os.rmdir(name, dir_fd=dfd)  # only if empty: the container may keep files of its own there
        except OSError as e:
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT, errno.ENOTDIR):
                raise
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise VzError(Kind.INVALID, "refused backup archive: its config is not UTF-8 text") from None


def _extract(progress: object = None, stop: object = None, *, src: Path, dest: Path,
             limits: tar_archive.Limits) -> tar_archive.ExtractStats:
    def each(members: int, nbytes: int) -> None:
        if callable(progress):
            progress(nbytes, 0, members)
    return tar_archive.extract_archive(src, dest, limits, progress=each)


async def restore(m: ContainerManager, archive_text: str, ctid_text: str, *, force: bool) -> AsyncIterator[Progress]:
    """Restore container ctid_text from archive_text; yields log lines and progress, the last item
    carries the Result. Nothing changes unless everything succeeds."""
    ctid = parse_ctid(ctid_text)
    src = Path(archive_text)
    if not src.is_absolute() or not src.is_file():
        raise VzError(Kind.INVALID, f"backup archive {archive_text!r} is not an existing file on node "
                                    f"{m.layout.node} (give an absolute path)")
    lay = m.layout
    t0 = time.monotonic()
    exists = lay.conf_file(ctid).exists()
    if exists and not force:
        raise VzError(Kind.EXISTS, f"container {ctid} exists; add --force to replace it (it must be stopped), "
                                   f"or restore into a free CTID")
    if exists:
        state = await m._state(ctid)
        if state is not None and state.status in ("running", "paused"):
            raise VzError(Kind.STATE, f"container {ctid} is running: stop it (`vzctl stop {ctid}`) before "
                                      f"replacing it with --force")
    conf_text = await asyncio.to_thread(read_first_conf, src)
    yield Progress(phase="check", message=f"INFO: restore {src} as container {ctid}"
                   + ("" if conf_text is not None else " (an OpenVZ archive: into a plain directory)"))
    if conf_text is not None:
        archived = restored_config(conf_text, f"{src}:{naming.CONF_MEMBER}", lay, ctid, image=False)
        image = quota.wants_image(ConfFile.parse(conf_text, str(src)))
        conf = restored_config(conf_text, f"{src}:{naming.CONF_MEMBER}", lay, ctid, image=image) if image \
            else archived
    else:
        image = False
    staging = lay.private_dir / f".{ctid}.restore"
    lay.private_dir.mkdir(parents=True, exist_ok=True)
    await quota.discard_area(lay, ctid, staging)
    moved = False
    try:
        if image:
            limits = quota.limits_of(conf, str(src))
            yield Progress(phase="check", message=f"INFO: into a disk image of {limits.hard_kb // 1024}M "
                                                  f"(DISKSPACE)")
            await quota.new_area(lay, ctid, conf, staging)
            bound = limits.hard_kb * 1024
        else:
            vfs = os.statvfs(lay.private_dir)
            bound = vfs.f_bavail * vfs.f_frsize
        box: list[tar_archive.ExtractStats] = []
        try:
            async for p in threaded(_extract, "extract", box, src=src, dest=staging,
                                    limits=tar_archive.Limits(max_total_bytes=max(bound, 1 << 20))):
                yield p
        except tar_archive.ArchiveError as e:
            cause = e.__cause__
            if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT):
                raise VzError(Kind.FAILED, f"the archive does not fit{' its DISKSPACE' if image else ''}: "
                                           f"{e}") from None
            raise VzError(Kind.INVALID, f"refused backup archive: {e}") from None
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise VzError(Kind.FAILED, f"the archive does not fit: {e.strerror}") from None
            raise
        stats = box[0]
        found = _take_conf(staging)
        if conf_text is None:
            if found is None:
                raise VzError(Kind.INVALID, f"refused backup archive {src}: it holds no {naming.CONF_MEMBER}")
            conf = restored_config(found, f"{src}:{naming.CONF_MEMBER}", lay, ctid, image=False)
        yield Progress(phase="extract", message=f"INFO: extracted {stats.members} files, "
                                                f"{naming.human_size(stats.bytes)}", done=stats.bytes,
                       files=stats.members)
        if exists:
            yield Progress(phase="replace", message=f"INFO: destroying the existing container {ctid} (--force)")
            await m.destroy(str(ctid))
        async with m._locked(ctid, "restore"):
            if lay.conf_file(ctid).exists() or lay.private(ctid).exists():
                raise VzError(Kind.EXISTS, f"container {ctid} appeared while restoring; nothing was changed")
            cfg = ContainerConfig.from_conf(conf, str(lay.conf_file(ctid)))
            if cfg.name and (other := m._name_taken(cfg.name, ctid)) is not None:
                conf.update_values({"NAME": None})
                yield Progress(phase="install", message=f"WARN: name {cfg.name!r} is used by container {other}; "
                                                        f"restored without a name")
            if not await quota.close_area(lay, ctid, staging):
                os.rename(staging, lay.private(ctid))
            moved = True
            lay.conf_dir.mkdir(parents=True, exist_ok=True)
            conf.save(lay.conf_file(ctid))
    except BaseException:
        await quota.discard_area(lay, ctid, staging)
        if moved and not lay.conf_file(ctid).exists():
            await quota.discard_private(lay, ctid)
        elif not moved and not lay.conf_file(ctid).exists():
            quota.remove_image(lay, ctid)  # close_area may have named it already
        raise
    duration = time.monotonic() - t0
    log.info("restored container %d from %s in %.1f s", ctid, src, duration)
    yield Progress(phase="done", message=f"INFO: restored container {ctid} ({naming.duration_text(duration)})")
    yield Progress(phase="done", result=Result(ctid=ctid, archive=str(src), size=src.stat().st_size,
                                               duration_s=duration, frozen_s=0.0, removed=(), mode="restore",
                                               files=stats.members, bytes=stats.bytes))
