"""Which block device holds a path: the device that `--iolimit` / `--iopslimit` throttle.

I/O throttles are per device, and partitions are not throttled on their own: the rule goes on
the whole disk (vda for vda1). Device-mapper and loop devices are devices of their own and are
used as they are.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from agent.cgroups.plan import Device

SYS_DEV_BLOCK = Path("/sys/dev/block")


def whole_disk(major: int, minor: int, sys_dev_block: Path = SYS_DEV_BLOCK) -> Device | None:
    """The disk of block device major:minor (itself unless it is a partition); None if it is not
    a block device (anonymous devices of btrfs, overlayfs, tmpfs...)."""
    node = sys_dev_block / f"{major}:{minor}"
    try:
        real = node.resolve(strict=True)
    except OSError:
        return None
    if (real / "partition").exists():
        try:
            text = (real.parent / "dev").read_text().strip()
            maj, _, mnr = text.partition(":")
            return Device(int(maj), int(mnr))
        except (OSError, ValueError):
            return None
    return Device(major, minor)


def _mount_source(path: Path, mountinfo: str) -> str | None:
    """The source of the mount holding path (the longest mount point that is a prefix of it)."""
    target = str(path)
    best: tuple[int, str] | None = None
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        lf, rf = left.split(), right.split()
        if len(lf) < 5 or len(rf) < 2:
            continue
        mp = lf[4]
        inside = target == mp or target.startswith(mp.rstrip("/") + "/")
        if inside and (best is None or len(mp) >= best[0]):
            best = (len(mp), rf[1])
    return None if best is None else best[1]


def device_of(path: Path) -> Device | None:
    """The whole disk holding `path`, or None when it is on no block device."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    dev = whole_disk(os.major(st.st_dev), os.minor(st.st_dev))
    if dev is not None:
        return dev
    # btrfs and friends report an anonymous st_dev: fall back to the mount's source device
    try:
        source = _mount_source(path.resolve(), Path("/proc/self/mountinfo").read_text())
        if source is None or not source.startswith("/dev/"):
            return None
        sst = os.stat(source)
    except OSError:
        return None
    if not stat.S_ISBLK(sst.st_mode):
        return None
    return whole_disk(os.major(sst.st_rdev), os.minor(sst.st_rdev))


def scheduler(dev: Device, sys_dev_block: Path = SYS_DEV_BLOCK) -> str | None:
    """The I/O scheduler in use on `dev` ("bfq", "mq-deadline", "none"...); None if unknown."""
    try:
        text = (sys_dev_block / str(dev) / "queue" / "scheduler").read_text()
    except OSError:
        return None
    for word in text.split():
        if word.startswith("[") and word.endswith("]"):
            return word[1:-1]
    words = text.split()
    return words[0] if len(words) == 1 else None
