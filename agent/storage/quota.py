"""Per-container disk limits: a sparse ext4 image per private area (docs/decisions/0003-disk-quotas.md).

A container created with ``--diskspace`` keeps its files in ``ROOT/var/lib/vz/images/CTID.img``, a
sparse file holding an ext4 file system that is loop-mounted on its private area
(``private/CTID``) whenever the container is mounted; ``VE_LAYOUT="image"`` in CTID.conf says so.
Every other container keeps today's plain directory (``VE_LAYOUT`` absent or ``simfs``).

How the limits hold (this machine's kernel has no quota format and the agent lacks
CAP_SYS_RESOURCE, so neither in-image quotas nor online resizing are available):

* the file system is made ``HEADROOM`` times as large as the hard limit (sparse: the host pays only
  for what is written), and ext4's own metadata reserve, ``/sys/fs/ext4/<loop>/reserved_clusters``,
  is set after every mount to hold back everything above the hard limit. Unlike reserved blocks or
  quotas it applies to every writer, root and CAP_SYS_RESOURCE included: writes past the limit fail
  with ENOSPC inside the container, and the host can never lose more than the image size;
* raising or lowering the hard limit live only moves that reserve; raising it beyond what the image
  was made for resizes the file system (online needs CAP_SYS_RESOURCE, offline always works);
* the inode limit is the file system's inode count, fixed when the image is made: changing it
  rebuilds the image (files copied), which needs a stopped container;
* the block soft limit: once usage has stayed above it past QUOTATIME, the agent (checking every
  few seconds) holds the container at its current usage until it is back under the soft limit;
  inode soft limits are reported by ``vzquota stat`` (with the grace clock), not enforced.

The pure part (limits, image sizes, change plans, grace) comes first and is table-tested; the thin
layer below it runs mkfs.ext4, mount, resize2fs and rsync through :mod:`agent.proc`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from agent import mounts, proc
from agent.config.conffile import ConfFile, ConfigError
from agent.config.params import ContainerConfig
from agent.errors import Kind, VzError
from agent.layout import NodeLayout

log = logging.getLogger(__name__)

LAYOUT_KEY = "VE_LAYOUT"
IMAGE_LAYOUT = "image"
PLAIN_LAYOUT = "simfs"
#: the container options this module enforces (agent/containers.py routes them here)
OPTIONS = frozenset({"diskspace", "diskinodes", "quotatime"})

FS_BLOCK = 4096
KIB = 1024
MIB = 1024 * KIB
BLOCKS_PER_GROUP = 8 * FS_BLOCK  # one block bitmap per group
MAX_INODES_PER_GROUP = 8 * FS_BLOCK
#: the file system is this many times the hard limit: room for raising the limit live
HEADROOM = 4
MIN_HARD_KB = 16 * 1024
#: inodes when DISKINODES is unlimited: one per 16 KiB of the file system (ext4's default ratio)
BYTES_PER_INODE = 16384
#: ext4 marks inodes 1..10 used in every file system (root directory, journal, resize inode...)
EXT4_RESERVED_INODES = 10
CAP_SYS_RESOURCE = 24
MOUNT_OPTIONS = "loop,discard"  # discard: deleted files give their space back to the host


# ---- pure: limits, image geometry, change plans, grace -----------------------------------------


@dataclass(frozen=True)
class DiskLimits:
    """A container's disk limits: 1 KiB blocks and inodes, soft <= hard; None = unlimited."""

    hard_kb: int
    soft_kb: int
    inodes_hard: int | None = None
    inodes_soft: int | None = None
    quotatime: int = 0

    @classmethod
    def from_config(cls, cfg: ContainerConfig) -> DiskLimits | None:
        """None when DISKSPACE has no hard limit (a disk image cannot be unlimited)."""
        if cfg.diskspace_bytes is None:
            return None
        soft_b, hard_b = cfg.diskspace_bytes
        if hard_b is None:
            return None
        hard_kb = -(-hard_b // KIB)
        soft_kb = hard_kb if soft_b is None else min(hard_kb, -(-soft_b // KIB))
        isoft, ihard = cfg.diskinodes if cfg.diskinodes is not None else (None, None)
        return cls(hard_kb=hard_kb, soft_kb=soft_kb, inodes_hard=ihard,
                   inodes_soft=ihard if isoft is None else isoft, quotatime=cfg.quotatime or 0)

    @property
    def hard_blocks(self) -> int:
        """The hard limit in file system blocks (rounded up)."""
        return -(-self.hard_kb * KIB // FS_BLOCK)


@dataclass(frozen=True)
class ImageSpec:
    size: int  # bytes of the image file = of the file system
    inodes: int  # mkfs.ext4 -N (ext4 rounds it up to fill whole inode table blocks)


def image_spec(limits: DiskLimits) -> ImageSpec:
    """The image that holds `limits`, with room to raise the hard limit live; INVALID if too small."""
    if limits.hard_kb < MIN_HARD_KB:
        raise VzError(Kind.INVALID, f"--diskspace hard limit {limits.hard_kb} KiB is too small for a disk "
                                    f"image: use at least {MIN_HARD_KB // 1024}M")
    size = -(-limits.hard_kb * KIB * HEADROOM // MIB) * MIB
    groups = -(-size // (FS_BLOCK * BLOCKS_PER_GROUP))
    inodes = limits.inodes_hard if limits.inodes_hard is not None else max(1024, size // BYTES_PER_INODE)
    # at least one inode table block per group; at most one inode bitmap block's worth (ext4): a
    # DISKINODES above that (e.g. the sample's, on a small disk) is capped, and vzquota stat says so
    inodes = min(max(inodes, 16 * groups), groups * MAX_INODES_PER_GROUP)
    return ImageSpec(size=size, inodes=inodes)


def mkfs_argv(path: Path, spec: ImageSpec, label: str) -> list[str]:
    """mkfs.ext4 for a container image: no root reserve (-m 0: the limit is the reserve we set), a
    journal left sparse (the file is new, hence zero), inode tables not wiped (a regular file
    discards to zeros, which mke2fs detects)."""
    return ["mkfs.ext4", "-q", "-F", "-b", str(FS_BLOCK), "-m", "0", "-N", str(spec.inodes), "-L", label[:16],
            "-E", "lazy_journal_init=1,root_owner=0:0", str(path)]


def default_reserve(block_count: int) -> int:
    """ext4's own metadata reserve of a file system of block_count blocks: 2 %, at most 4096."""
    return min(block_count // 50, 4096)


@dataclass(frozen=True)
class FsUsage:
    """What an image's file system holds, in file system blocks and inodes."""

    block_count: int  # size of the file system
    fs_blocks: int  # blocks for data: the size minus metadata (statfs f_blocks)
    free_blocks: int
    inodes: int
    free_inodes: int
    reserve: int | None = None  # the reserve now in force (None: not mounted)

    @property
    def used_kb(self) -> int:
        return max(0, self.fs_blocks - self.free_blocks) * FS_BLOCK // KIB

    @property
    def used_inodes(self) -> int:
        return max(0, self.inodes - self.free_inodes)

    @property
    def capacity_kb(self) -> int:
        """The largest hard limit this file system holds without a resize."""
        return max(0, self.fs_blocks - default_reserve(self.block_count)) * FS_BLOCK // KIB

    def reserve_for(self, limits: DiskLimits) -> int:
        """The reserve that leaves exactly the hard limit to the container (never below ext4's own)."""
        return max(default_reserve(self.block_count), self.fs_blocks - limits.hard_blocks)

    def effective_hard_kb(self, limits: DiskLimits) -> int:
        reserve = self.reserve if self.reserve is not None else self.reserve_for(limits)
        return max(0, self.fs_blocks - reserve) * FS_BLOCK // KIB


@dataclass(frozen=True)
class Plan:
    """What a change of disk options needs: set the reserve live, resize, or rebuild the image."""

    limit: bool = False
    grow: bool = False
    rebuild: bool = False
    notes: tuple[str, ...] = ()


def _inodes_slack(usage: FsUsage) -> int:
    # mkfs rounds the inode count up to whole inode table blocks in every block group
    return 16 * -(-usage.block_count // BLOCKS_PER_GROUP)


def plan_change(ctid: int, old: DiskLimits | None, new: DiskLimits | None, usage: FsUsage | None,
                opts: frozenset[str] | set[str], *, running: bool, online_resize: bool) -> Plan:
    """Decide how to apply new disk options. `usage` is None for a plain-directory private area.

    Raises VzError (nothing changed) for what cannot be done in the container's state.
    """
    if usage is None:
        if "diskspace" not in opts or new is None:
            return Plan(notes=(f"disk limits stored, not enforced: container {ctid} keeps its files in a plain "
                               f"directory; `vzctl set {ctid} --diskspace SOFT:HARD --save` while it is stopped "
                               f"moves them into a disk image",))
        if running:
            raise VzError(Kind.STATE, f"container {ctid} keeps its files in a plain directory, and a disk limit "
                                      f"needs a disk image: stop it (`vzctl stop {ctid}`) and repeat the command "
                                      f"with --save to copy its files into one")
        image_spec(new)
        return Plan(rebuild=True, notes=(f"files of container {ctid} copied into a disk image of "
                                         f"{new.hard_kb // 1024}M (VE_LAYOUT=image)",))
    if new is None:
        raise VzError(Kind.INVALID, f"container {ctid} has a disk image, which needs a hard limit: give "
                                    f"--diskspace a size, not unlimited")
    spec = image_spec(new)
    notes: list[str] = []
    rebuild = grow = False
    if (old is None or new.inodes_hard != old.inodes_hard) and "diskinodes" in opts:
        want = new.inodes_hard if new.inodes_hard is not None else spec.inodes
        if want > usage.inodes or want + _inodes_slack(usage) < usage.inodes:
            if running:
                raise VzError(Kind.STATE, f"the inode limit of running container {ctid} cannot change: ext4 fixes "
                                          f"the inode count ({usage.inodes}) when a disk image is made; stop it and "
                                          f"repeat the command with --save to rebuild the image (files are copied)")
            if usage.used_inodes > want:
                raise VzError(Kind.INVALID, f"container {ctid} uses {usage.used_inodes} inodes, more than the new "
                                            f"limit {want}: remove files first")
            rebuild = True
            notes.append(f"disk image of container {ctid} rebuilt with {want} inodes (files copied)")
    if rebuild:
        if usage.used_kb > new.hard_kb:
            raise VzError(Kind.INVALID, f"container {ctid} uses {usage.used_kb} KiB, more than the new hard limit "
                                        f"{new.hard_kb} KiB: remove files first")
        return Plan(rebuild=True, notes=tuple(notes))
    if new.hard_kb > usage.capacity_kb:
        if running and not online_resize:
            raise VzError(Kind.STATE, f"{new.hard_kb // 1024}M is beyond what the disk image of container {ctid} "
                                      f"holds without a resize ({usage.capacity_kb // 1024}M), and resizing a "
                                      f"mounted ext4 needs CAP_SYS_RESOURCE, which this agent lacks: stop the "
                                      f"container and repeat the command with --save")
        grow = True
        notes.append(f"disk image of container {ctid} resized to {spec.size // MIB}M")
    if old is None or new.hard_kb != old.hard_kb:
        notes.append(f"disk space hard limit {new.hard_kb} KiB" + (" (live)" if usage.reserve is not None else ""))
        if usage.used_kb > new.hard_kb:
            notes.append(f"usage {usage.used_kb} KiB is above the new hard limit: writes fail until files are "
                         f"removed")
    changed = old is None or (new.inodes_soft, new.quotatime) != (old.inodes_soft, old.quotatime)
    if changed and new.inodes_soft is not None and new.inodes_soft != new.inodes_hard:
        notes.append("the inode soft limit is reported by `vzquota stat`, not enforced")
    return Plan(limit=usage.reserve is not None, grow=grow, notes=tuple(notes))


def grace_since(since: int, usage: int, soft: int | None, now: int) -> int:
    """When the soft limit was first seen exceeded (0: it is not exceeded now)."""
    if soft is None or usage <= soft:
        return 0
    return since or now


def grace_expires(since: int, quotatime: int) -> int:
    """Unix time at which the grace period ends (0: soft limit not exceeded)."""
    return since + quotatime if since else 0


def block_limit_now(limits: DiskLimits, used_kb: int, since: int, now: int) -> int:
    """The disk space (KiB) to hold a container to at this moment: its hard limit, or, once its
    usage has stayed above the soft limit past the grace period, its current usage (no more
    growth until it is back under the soft limit: the soft limit became a hard one)."""
    if limits.soft_kb >= limits.hard_kb or used_kb <= limits.soft_kb or not since:
        return limits.hard_kb
    if now < grace_expires(since, limits.quotatime):
        return limits.hard_kb
    return min(limits.hard_kb, used_kb)


def parse_dumpe2fs(text: str) -> dict[str, str]:
    """`dumpe2fs -h` output -> {"Block count": "25600", ...}."""
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key and not key.startswith(" "):
            out[key.strip()] = value.strip()
    return out


def usage_from_dumpe2fs(fields: Mapping[str, str]) -> FsUsage:
    try:
        count = int(fields["Block count"])
        return FsUsage(block_count=count, fs_blocks=count - int(fields.get("Overhead clusters", "0")),
                       free_blocks=int(fields["Free blocks"]), inodes=int(fields["Inode count"]),
                       free_inodes=int(fields["Free inodes"]))
    except (KeyError, ValueError) as e:
        raise VzError(Kind.FAILED, f"cannot read the disk image's superblock: missing or bad {e}") from None


def has_capability(bit: int, status_text: str) -> bool:
    """True if the CapEff line of a /proc/PID/status text has capability `bit`."""
    for line in status_text.splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> bit & 1)
    return False


# ---- where things are ---------------------------------------------------------------------------


def images_dir(layout: NodeLayout) -> Path:
    return layout.vz_dir / "images"


def image_path(layout: NodeLayout, ctid: int) -> Path:
    return images_dir(layout) / f"{ctid}.img"


def _partial_image(layout: NodeLayout, ctid: int) -> Path:
    return images_dir(layout) / f".{ctid}.img.partial"


def _grace_file(layout: NodeLayout, ctid: int) -> Path:
    return images_dir(layout) / f"{ctid}.grace"


def wants_image(values: Mapping[str, str]) -> bool:
    """True if a config (CTID.conf values) asks for a disk image."""
    return (values.get(LAYOUT_KEY) or "").strip() == IMAGE_LAYOUT


def limits_of(values: Mapping[str, str], where: str) -> DiskLimits:
    """The disk limits of a config that asks for a disk image; INVALID if it has no hard limit."""
    try:
        cfg = ContainerConfig.from_conf(values, where)
    except ConfigError as e:
        raise VzError(Kind.INVALID, f"broken config: {e}") from None
    limits = DiskLimits.from_config(cfg)
    if limits is None:
        raise VzError(Kind.INVALID, f"{where}: VE_LAYOUT=image needs a DISKSPACE hard limit")
    return limits


def choose_layout(conf: ConfFile, params: Sequence[tuple[str, str]]) -> None:
    """At create: an explicit --diskspace with a hard limit asks for a disk image (VE_LAYOUT=image).

    A DISKSPACE that comes only from the sample config keeps the plain directory, as before.
    """
    if not any(name.replace("_", "-") == "diskspace" for name, _ in params):
        return
    try:
        cfg = ContainerConfig.from_conf(conf, "<new config>")
    except ConfigError as e:
        raise VzError(Kind.INVALID, str(e)) from None
    limits = DiskLimits.from_config(cfg)
    if limits is not None:
        image_spec(limits)  # refuse what cannot be made before anything is written
        conf.update_values({LAYOUT_KEY: IMAGE_LAYOUT})


def _load_values(layout: NodeLayout, ctid: int) -> ConfFile | None:
    try:
        return ConfFile.load(layout.conf_file(ctid))
    except FileNotFoundError:
        return None
    except ConfigError as e:
        raise VzError(Kind.INVALID, f"broken config: {e}") from None


# ---- loop devices and mounts --------------------------------------------------------------------


@dataclass(frozen=True)
class _Loop:
    name: str
    back_file: str
    back_dev: tuple[int, int] | None
    back_ino: int | None


async def _loops() -> list[_Loop]:
    res = await proc.run(["losetup", "--list", "--json", "--output", "NAME,BACK-FILE,BACK-INO,BACK-MAJ:MIN"],
                         check=False, timeout=30)
    if not res.ok or not res.stdout.strip():
        return []
    out = []
    for d in json.loads(res.stdout).get("loopdevices", []):
        majmin = str(d.get("back-maj:min") or "").strip()
        dev = None
        if ":" in majmin:
            with contextlib.suppress(ValueError):
                dev = (int(majmin.split(":")[0]), int(majmin.split(":")[1]))
        ino = d.get("back-ino")
        out.append(_Loop(str(d.get("name")), str(d.get("back-file") or ""), dev,
                         int(ino) if isinstance(ino, int | str) and str(ino).isdigit() else None))
    return out


async def _loops_of(image: Path) -> list[str]:
    """Loop devices attached to this very file (by device and inode, whatever its name now)."""
    try:
        st = os.stat(image)
    except FileNotFoundError:
        return []
    ident = ((os.major(st.st_dev), os.minor(st.st_dev)), st.st_ino)
    return [lo.name for lo in await _loops() if (lo.back_dev, lo.back_ino) == ident]


async def _mount_source(where: Path) -> str | None:
    res = await proc.run(["findmnt", "-n", "-o", "SOURCE", "--mountpoint", str(where)], check=False, timeout=30)
    return res.stdout.decode().strip().splitlines()[-1] if res.ok and res.stdout.strip() else None


def _sysfs_reserve(dev: str) -> Path:
    return Path("/sys/fs/ext4") / Path(dev).name / "reserved_clusters"


def _statfs_usage(where: Path, block_count: int, reserve: int | None) -> FsUsage:
    s = os.statvfs(where)
    return FsUsage(block_count=block_count, fs_blocks=s.f_blocks, free_blocks=s.f_bfree, inodes=s.f_files,
                   free_inodes=s.f_ffree, reserve=reserve)


async def _set_limit(image: Path, where: Path, limits: DiskLimits) -> FsUsage:
    """Hold the mounted file system at `where` to the hard limit (ext4's reserve, in blocks)."""
    dev = await _mount_source(where)
    if dev is None or not dev.startswith("/dev/loop"):
        raise VzError(Kind.FAILED, f"{where} is not a mounted disk image")
    usage = _statfs_usage(where, os.stat(image).st_size // FS_BLOCK, None)
    if limits.hard_kb > usage.capacity_kb:
        raise VzError(Kind.FAILED, f"disk image {image} holds at most {usage.capacity_kb} KiB, less than the hard "
                                   f"limit {limits.hard_kb} KiB")
    reserve = usage.reserve_for(limits)
    try:
        _sysfs_reserve(dev).write_text(f"{reserve}\n")
    except OSError as e:
        raise VzError(Kind.FAILED, f"cannot set the disk limit of {where} ({_sysfs_reserve(dev)}): "
                                   f"{e.strerror or e}") from None
    log.debug("disk limit of %s: %d KiB (reserve %d blocks)", where, limits.hard_kb, reserve)
    return _statfs_usage(where, usage.block_count, reserve)


async def _umount(where: Path) -> None:
    """Unmount a disk image; its loop device goes with it (mount -o loop sets autoclear)."""
    dev = await _mount_source(where)
    await mounts.unmount(where)
    if dev and dev.startswith("/dev/loop"):
        for _ in range(50):
            if not any(lo.name == dev for lo in await _loops()):
                return
            await asyncio.sleep(0.02)
        log.warning("%s still attached after unmounting %s: something else still holds the file system", dev, where)


async def _umount_private(private: Path) -> None:
    """Unmount a private area's image and remove the mount point: while the image is not mounted,
    private/CTID does not exist, so that nothing can take the empty mount point for the files."""
    await _umount(private)
    with contextlib.suppress(OSError):
        private.rmdir()


async def _mount_image(image: Path, where: Path, limits: DiskLimits) -> None:
    """Loop-mount image on the directory `where` (private propagation) and apply the hard limit."""
    for dev in await _loops_of(image):
        # a leftover attachment: detach if unused; never mount one file system twice
        await proc.run(["losetup", "-d", dev], check=False, timeout=30)
    if busy := await _loops_of(image):
        raise VzError(Kind.STATE, f"disk image {image} is still attached to {', '.join(busy)} (a process or mount "
                                  f"namespace still uses its file system); not mounting it twice")
    await proc.run(["mount", "-t", "ext4", "-o", MOUNT_OPTIONS, str(image), str(where)], timeout=60,
                   what=f"mounting disk image {image}")
    try:
        await proc.run(["mount", "--make-private", str(where)], what=f"making {where} private")
        await _set_limit(image, where, limits)
    except BaseException:
        with contextlib.suppress(Exception):
            await _umount(where)
        raise


async def _make_image(image: Path, spec: ImageSpec, label: str) -> None:
    image.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(image, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.ftruncate(fd, spec.size)
    finally:
        os.close(fd)
    try:
        await proc.run(mkfs_argv(image, spec, label), timeout=300, what=f"making the file system of {image}")
    except BaseException:
        image.unlink(missing_ok=True)
        raise


async def _new_image(image: Path, limits: DiskLimits, where: Path, ctid: int) -> None:
    """A fresh, empty image mounted on the (new, empty) directory `where`; nothing left on failure."""
    await _make_image(image, image_spec(limits), f"ct{ctid}")
    try:
        where.mkdir(mode=0o755, exist_ok=True)
        await _mount_image(image, where, limits)
        try:
            # an empty root: extraction and rsync want one, and ext4 recreates lost+found on fsck
            os.rmdir(where / "lost+found")
        except BaseException:
            await _umount(where)
            raise
    except BaseException:
        image.unlink(missing_ok=True)
        raise


async def _fsck(image: Path) -> None:
    res = await proc.run(["e2fsck", "-f", "-p", str(image)], check=False, timeout=600)
    if res.returncode not in (0, 1):  # 1: errors corrected
        raise VzError(Kind.FAILED, f"e2fsck of disk image {image} failed: {res.err_tail()}")


async def _refresh_superblock(image: Path, limits: DiskLimits) -> None:
    """Mount and unmount an unmounted image once: resize2fs clears the superblock's overhead count,
    which the kernel recomputes and writes back at mount (vzquota stat of a stopped container
    reads the superblock)."""
    where = image.parent / f".{image.name}.mnt"
    where.mkdir(mode=0o700, exist_ok=True)
    try:
        await _mount_image(image, where, limits)
        await _umount(where)
    finally:
        with contextlib.suppress(OSError):
            where.rmdir()


async def _grow(image: Path, where: Path | None, spec: ImageSpec, limits: DiskLimits) -> None:
    """Resize the file system of image to spec.size: online when mounted at `where`, else offline."""
    if os.stat(image).st_size >= spec.size:
        return
    if where is not None:
        dev = await _mount_source(where)
        if dev is None:
            raise VzError(Kind.FAILED, f"{where} is not mounted")
        os.truncate(image, spec.size)
        await proc.run(["losetup", "-c", dev], what=f"updating the size of {dev}")
        await proc.run(["resize2fs", dev], timeout=600, what=f"growing the file system of {image}")
    else:
        await _fsck(image)
        os.truncate(image, spec.size)
        await proc.run(["resize2fs", str(image)], timeout=600, what=f"growing the file system of {image}")
        await _refresh_superblock(image, limits)
    log.info("disk image %s grown to %d MiB", image, spec.size // MIB)


def _online_resize_possible() -> bool:
    try:
        return has_capability(CAP_SYS_RESOURCE, Path("/proc/self/status").read_text())
    except OSError:
        return False


# ---- the private area's lifecycle (hooks of agent/containers.py) --------------------------------


async def mount_private(layout: NodeLayout, ctid: int) -> bool:
    """Mount the container's disk image on its private area; True if this call mounted it.

    No-op (False) for a plain-directory private area or when already mounted. Idempotent.
    """
    image = image_path(layout, ctid)
    private = layout.private(ctid)
    values = _load_values(layout, ctid)
    if not image.exists():
        if values is not None and wants_image(values):
            if private.is_dir() and any(private.iterdir()):
                # e.g. received by a node that did not prepare an image: run it, but say so
                log.warning("container %d: VE_LAYOUT=image but no disk image %s; its files are in the plain "
                            "directory %s, without disk limits", ctid, image, private)
                return False
            raise VzError(Kind.STATE, f"disk image {image} of container {ctid} is missing (its config says "
                                      f"VE_LAYOUT=image)")
        return False
    if mounts.is_mountpoint(private):
        return False
    if values is None:
        raise VzError(Kind.NOT_FOUND, f"container {ctid} does not exist (disk image {image} without a config)")
    limits = limits_of(values, str(layout.conf_file(ctid)))
    private.mkdir(mode=0o755, exist_ok=True)
    if any(private.iterdir()):
        raise VzError(Kind.STATE, f"{private} is not empty, but container {ctid} keeps its files in the disk "
                                  f"image {image}; move those files away first")
    spec = image_spec(limits)
    if os.stat(image).st_size < spec.size:  # the config was raised while the image was not mounted
        await _grow(image, None, spec, limits)
    await _mount_image(image, private, limits)
    return True


async def unmount_private(layout: NodeLayout, ctid: int) -> bool:
    """Unmount the container's disk image (after its root); True if this call unmounted it. Idempotent."""
    private = layout.private(ctid)
    if not image_path(layout, ctid).exists() or not mounts.is_mountpoint(private):
        return False
    await _umount_private(private)
    return True


async def new_area(layout: NodeLayout, ctid: int, values: Mapping[str, str], staging: Path) -> bool:
    """For a config with VE_LAYOUT=image: a new disk image mounted on `staging` (which must not
    exist), to be filled and then moved into place by :func:`close_area` (replacing the image of
    an existing container only then). False (nothing done) for a plain area. Undo with
    :func:`discard_area`."""
    if not wants_image(values):
        return False
    limits = limits_of(values, f"<config of {ctid}>")
    image = image_path(layout, ctid)
    if image.exists() and not layout.conf_file(ctid).exists():
        raise VzError(Kind.EXISTS, f"disk image {image} exists although container {ctid} does not; remove it "
                                   f"or choose another CTID")
    await _new_image(_partial_image(layout, ctid), limits, staging, ctid)
    return True


async def close_area(layout: NodeLayout, ctid: int, staging: Path) -> bool:
    """Put a filled new area in place. A disk image: unmounted from `staging` (which goes away) and
    given its final name; returns True. A plain area: nothing done, returns False (the caller
    renames staging to the private area)."""
    partial = _partial_image(layout, ctid)
    if not partial.exists():
        return False
    await _umount_private(staging)
    os.rename(partial, image_path(layout, ctid))
    return True


async def discard_area(layout: NodeLayout, ctid: int, staging: Path) -> None:
    """Remove what new_area / an interrupted fill left: staging (unmounted first) and the partial
    image. Idempotent; never raises for a missing piece."""
    if mounts.is_mountpoint(staging):
        try:
            await _umount(staging)
        except VzError as e:
            log.error("cannot unmount %s: %s", staging, e)
            return
    _partial_image(layout, ctid).unlink(missing_ok=True)
    await asyncio.to_thread(shutil.rmtree, staging, True)


def remove_image(layout: NodeLayout, ctid: int) -> None:
    """Delete the container's disk image (unmounted) and its grace record. Idempotent."""
    image_path(layout, ctid).unlink(missing_ok=True)
    _grace_file(layout, ctid).unlink(missing_ok=True)


async def prepare_private(layout: NodeLayout, ctid: int, values: Mapping[str, str]) -> bool:
    """An empty private area for container ctid with the disk limits of `values` (its CTID.conf),
    ready to receive its files before the container resumes here (live migration, restore).

    With VE_LAYOUT=image: a new disk image of the same geometry, mounted on private/CTID with the
    hard limit in force, returns True. Otherwise an empty directory, returns False. The private area
    must not exist yet (or be an empty directory). Undo with :func:`discard_private`.
    """
    private = layout.private(ctid)
    if private.exists() and (not private.is_dir() or any(private.iterdir())):
        raise VzError(Kind.EXISTS, f"private area {private} already exists and is not empty")
    if not wants_image(values):
        private.mkdir(parents=True, mode=0o755, exist_ok=True)
        return False
    limits = limits_of(values, f"<config of {ctid}>")
    image = image_path(layout, ctid)
    if image.exists():
        raise VzError(Kind.EXISTS, f"disk image {image} already exists")
    private.parent.mkdir(parents=True, exist_ok=True)
    await _new_image(image, limits, private, ctid)
    return True


async def discard_private(layout: NodeLayout, ctid: int) -> None:
    """Undo prepare_private (or remove any private area of a container without config): unmount,
    delete the image and the directory. Idempotent."""
    private = layout.private(ctid)
    if mounts.is_mountpoint(private):
        await _umount_private(private)
    remove_image(layout, ctid)
    await asyncio.to_thread(shutil.rmtree, private, True)


async def purge(layout: NodeLayout) -> list[str]:
    """Unmount every disk image of the node and detach their loop devices (images stay). Idempotent."""
    done = []
    prefixes = (str(layout.private_dir) + "/", str(images_dir(layout)) + "/")
    for mp in sorted(mounts.mount_points(), key=len, reverse=True):
        if mp.startswith(prefixes):
            try:
                await _umount_private(Path(mp))
                done.append(f"unmounted {mp}")
            except VzError as e:
                done.append(f"could not unmount {mp}: {e}")
    images = str(images_dir(layout)) + "/"
    for lo in await _loops():
        if lo.back_file.startswith(images):
            res = await proc.run(["losetup", "-d", lo.name], check=False, timeout=30)
            done.append(f"detached {lo.name} ({lo.back_file})" if res.ok else
                        f"could not detach {lo.name}: {res.err_tail()}")
    return done


# ---- live changes (vzctl set) -------------------------------------------------------------------


async def _usage(layout: NodeLayout, ctid: int) -> FsUsage:
    image = image_path(layout, ctid)
    private = layout.private(ctid)
    block_count = os.stat(image).st_size // FS_BLOCK
    if mounts.is_mountpoint(private):
        dev = await _mount_source(private)
        reserve = None
        if dev is not None:
            with contextlib.suppress(OSError, ValueError):
                reserve = int(_sysfs_reserve(dev).read_text().strip())
        return _statfs_usage(private, block_count, reserve)
    res = await proc.run(["dumpe2fs", "-h", str(image)], timeout=60, what=f"reading disk image {image}")
    fields = parse_dumpe2fs(res.stdout.decode(errors="replace"))
    if "Overhead clusters" not in fields:  # resized by hand: let the kernel count the metadata again
        values = _load_values(layout, ctid)
        if values is not None:
            await _refresh_superblock(image, limits_of(values, str(layout.conf_file(ctid))))
            res = await proc.run(["dumpe2fs", "-h", str(image)], timeout=60, what=f"reading disk image {image}")
            fields = parse_dumpe2fs(res.stdout.decode(errors="replace"))
    return usage_from_dumpe2fs(fields)


def _tree_usage(top: Path) -> tuple[int, int]:
    """(KiB allocated, inodes) of a directory tree, symlinks not followed, hard links counted once."""
    st = os.lstat(top)
    kb, seen = st.st_blocks // 2, {(st.st_dev, st.st_ino)}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in (*dirnames, *filenames):
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                kb += st.st_blocks // 2
    return kb, len(seen)


async def _rebuild(layout: NodeLayout, ctid: int, limits: DiskLimits, *, convert: bool) -> None:
    """Copy the stopped container's files into a new disk image made for `limits`, then swap it in.

    convert: the private area is a plain directory today. On failure nothing changed.
    """
    private = layout.private(ctid)
    image = image_path(layout, ctid)
    staging = layout.private_dir / f".{ctid}.rebuild"
    partial = _partial_image(layout, ctid)
    await discard_area(layout, ctid, staging)
    src_mounted = False if convert else await mount_private(layout, ctid)
    try:
        kb, inodes = await asyncio.to_thread(_tree_usage, private)
        if kb > limits.hard_kb or (limits.inodes_hard is not None and inodes + EXT4_RESERVED_INODES
                                   > limits.inodes_hard):
            raise VzError(Kind.INVALID, f"container {ctid} holds {kb} KiB in {inodes} inodes, more than the new "
                                        f"limits: remove files first")
        await _new_image(partial, limits, staging, ctid)
        await proc.run(["rsync", "-aHAXS", "--numeric-ids", f"{private}/", f"{staging}/"], timeout=6 * 3600,
                       what=f"copying the files of container {ctid} into its new disk image")
        await _umount_private(staging)
        if convert:
            trash = layout.private_dir / f".{ctid}.converted"
            os.rename(private, trash)
            os.rename(partial, image)
            await asyncio.to_thread(shutil.rmtree, trash, True)
        else:
            await _umount_private(private)
            src_mounted = False
            os.replace(partial, image)
    except BaseException:
        await discard_area(layout, ctid, staging)
        raise
    finally:
        if src_mounted:
            with contextlib.suppress(VzError):
                await _umount_private(private)


async def apply_change(layout: NodeLayout, ctid: int, conf: ConfFile, old: ContainerConfig,
                       new: ContainerConfig, opts: set[str] | frozenset[str], *, running: bool) -> list[str]:
    """Apply changed --diskspace/--diskinodes/--quotatime to container ctid (its lock is held).

    Validates first (raises VzError with nothing changed), then sets the limit live, grows or
    rebuilds the image. A plain container converted to a disk image gets VE_LAYOUT=image in `conf`
    (the caller saves it). Returns notes for the user.
    """
    image = image_path(layout, ctid)
    usage = await _usage(layout, ctid) if image.exists() else None
    new_limits = DiskLimits.from_config(new)
    plan = plan_change(ctid, DiskLimits.from_config(old), new_limits, usage, opts, running=running,
                       online_resize=_online_resize_possible())
    if new_limits is None or (usage is None and not plan.rebuild):
        return list(plan.notes)
    private = layout.private(ctid)
    if plan.rebuild:
        await _rebuild(layout, ctid, new_limits, convert=usage is None)
        conf.update_values({LAYOUT_KEY: IMAGE_LAYOUT})
    elif plan.grow:
        await _grow(image, private if mounts.is_mountpoint(private) else None, image_spec(new_limits), new_limits)
    if (plan.limit or plan.grow) and mounts.is_mountpoint(private):
        await _set_limit(image, private, new_limits)
    _grace_file(layout, ctid).unlink(missing_ok=True)
    return list(plan.notes)


# ---- vzquota stat --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Resource:
    usage: int
    soft: int
    hard: int | None  # None: unlimited in the config
    effective_hard: int
    grace_expires: int  # unix time; 0: soft limit not exceeded


@dataclass(frozen=True)
class QuotaStat:
    ctid: int
    mounted: bool
    image: Path
    image_size: int
    blocks: Resource  # 1 KiB blocks
    inodes: Resource
    quotatime: int
    notes: tuple[str, ...]
    now: int


def grace_clock(layout: NodeLayout, ctid: int) -> tuple[int, int]:
    """(since when blocks, inodes have been above their soft limits; 0: not) as last recorded."""
    try:
        seen = json.loads(_grace_file(layout, ctid).read_text())
        return int(seen.get("blocks", 0)), int(seen.get("inodes", 0))
    except (OSError, ValueError, AttributeError, TypeError):
        return 0, 0


def set_grace_clock(layout: NodeLayout, ctid: int, blocks_since: int, inodes_since: int, now: int) -> None:
    """Take over grace clocks from elsewhere (a migration's source); times in the future or
    before 2000 are not believed (0: the clock starts again here)."""
    def sane(t: int) -> int:
        return t if 946684800 <= t <= now + 60 else 0
    clock = {"blocks": sane(blocks_since), "inodes": sane(inodes_since)}
    if clock == {"blocks": 0, "inodes": 0}:
        return
    grace = _grace_file(layout, ctid)
    tmp = grace.with_suffix(".tmp")
    tmp.write_text(json.dumps(clock))
    os.replace(tmp, grace)


def _track_grace(layout: NodeLayout, ctid: int, usage: FsUsage, limits: DiskLimits, now: int) -> tuple[int, int]:
    """(since when blocks, inodes have been above their soft limits; 0: not above), kept in a file
    beside the image so that the clock survives agent restarts."""
    grace = _grace_file(layout, ctid)
    b_since, i_since = grace_clock(layout, ctid)
    isoft = limits.inodes_soft if limits.inodes_soft is not None else usage.inodes
    new = (grace_since(b_since, usage.used_kb, limits.soft_kb, now),
           grace_since(i_since, usage.used_inodes, isoft, now))
    if new != (b_since, i_since) or not grace.exists():
        with contextlib.suppress(OSError):
            tmp = grace.with_suffix(".tmp")
            tmp.write_text(json.dumps({"blocks": new[0], "inodes": new[1]}))
            os.replace(tmp, grace)
    return new


async def enforce_soft_limit(layout: NodeLayout, ctid: int, now: int | None = None) -> str | None:
    """Hold a mounted disk image to its soft block limit once the grace period has run out, and
    give the hard limit back when usage is under the soft limit again. Returns what changed."""
    image = image_path(layout, ctid)
    private = layout.private(ctid)
    if not image.exists() or not mounts.is_mountpoint(private):
        return None
    values = _load_values(layout, ctid)
    if values is None:
        return None
    limits = limits_of(values, str(layout.conf_file(ctid)))
    if limits.soft_kb >= limits.hard_kb:
        return None
    now = int(time.time()) if now is None else now
    usage = await _usage(layout, ctid)
    b_since, _ = _track_grace(layout, ctid, usage, limits, now)
    want = block_limit_now(limits, usage.used_kb, b_since, now)
    if usage.reserve is not None and usage.effective_hard_kb(limits) == want:
        return None
    await _set_limit(image, private, dataclasses.replace(limits, hard_kb=want, soft_kb=min(want, limits.soft_kb)))
    if want < limits.hard_kb:
        return (f"container {ctid}: {usage.used_kb} KiB used, above the soft limit {limits.soft_kb} KiB for longer "
                f"than the grace period ({limits.quotatime} s): held at its usage")
    return f"container {ctid}: hard limit {limits.hard_kb} KiB in force again"


async def stat(layout: NodeLayout, ctid: int) -> QuotaStat:
    """Usage and limits of container ctid's disk image; STATE error for a plain private area."""
    values = _load_values(layout, ctid)
    if values is None:
        raise VzError(Kind.NOT_FOUND, f"container {ctid} does not exist")
    image = image_path(layout, ctid)
    if not image.exists():
        raise VzError(Kind.STATE, f"container {ctid} has no disk quota: its private area is a plain directory "
                                  f"(VE_LAYOUT={values.get(LAYOUT_KEY) or PLAIN_LAYOUT}); `vzctl set {ctid} "
                                  f"--diskspace SOFT:HARD --save` on the stopped container gives it a disk image")
    limits = limits_of(values, str(layout.conf_file(ctid)))
    usage = await _usage(layout, ctid)
    now = int(time.time())
    inode_cap = usage.inodes
    isoft = limits.inodes_soft if limits.inodes_soft is not None else inode_cap
    b_since, i_since = _track_grace(layout, ctid, usage, limits, now)
    notes = ["the block hard limit is enforced by the container's file system; past the grace period the "
             "block soft limit is enforced too (checked every few seconds); inode soft limits are reported only"]
    if limits.inodes_hard is not None and inode_cap > limits.inodes_hard:
        notes.append(f"the file system has {inode_cap} inodes (ext4 rounds the count up)")
    return QuotaStat(
        ctid=ctid, mounted=mounts.is_mountpoint(layout.private(ctid)), image=image,
        image_size=os.stat(image).st_size,
        blocks=Resource(usage.used_kb, limits.soft_kb, limits.hard_kb, usage.effective_hard_kb(limits),
                        grace_expires(b_since, limits.quotatime)),
        inodes=Resource(usage.used_inodes, isoft, limits.inodes_hard, inode_cap,
                        grace_expires(i_since, limits.quotatime)),
        quotatime=limits.quotatime, notes=tuple(notes), now=now)
