"""Where a cgroup's files are: one hierarchy per controller (v1, possibly co-mounted, as on this
project's v1-hybrid development machines) or one unified hierarchy (v2, most users' hosts).

`parse_mountinfo` is pure (table-tested on both layouts); `detect()` reads /proc/self/mountinfo once.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from agent.mounts import unescape_mountinfo

# the v1 controllers the agent reads or writes
V1_CONTROLLERS = ("memory", "cpu", "cpuacct", "cpuset", "blkio", "pids", "freezer", "devices")
UNIFIED = ""  # key of the v2 root in CgroupFS.mounts


@dataclass(frozen=True)
class CgroupFS:
    """The cgroup hierarchies of this host: `version` 1 (controller -> mount point) or 2."""

    version: int
    mounts: Mapping[str, Path] = field(default_factory=dict)

    def dir(self, controller: str, cgpath: str) -> Path | None:
        """Directory of cgroup `cgpath` (``/vzfleet/NODE/CTID``) for `controller`; None when the
        host has no such controller mounted (v1) or no cgroup2 mount (v2)."""
        rel = cgpath.strip("/")
        base = self.mounts.get(UNIFIED if self.version == 2 else controller)
        return None if base is None else base / rel


def _preferred(old: Path | None, new: Path) -> Path:
    """The first mount under /sys/fs/cgroup wins (bind mounts elsewhere are copies)."""
    if old is None:
        return new
    if not str(old).startswith("/sys/fs/cgroup") and str(new).startswith("/sys/fs/cgroup"):
        return new
    return old


def parse_mountinfo(text: str) -> CgroupFS:
    """The cgroup layout described by a /proc/self/mountinfo text.

    v1 wins as soon as one v1 controller is mounted: on a hybrid host (v1 controllers plus a
    controller-less cgroup2 at /sys/fs/cgroup/unified) runc puts every limit in v1.
    """
    v1: dict[str, Path] = {}
    v2: Path | None = None
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        lf, rf = left.split(), right.split()
        if len(lf) < 5 or len(rf) < 3:
            continue
        mountpoint = Path(unescape_mountinfo(lf[4]))
        fstype, superopts = rf[0], rf[2]
        if fstype == "cgroup2":
            v2 = _preferred(v2, mountpoint)
        elif fstype == "cgroup":
            for opt in superopts.split(","):
                if opt in V1_CONTROLLERS:
                    v1[opt] = _preferred(v1.get(opt), mountpoint)
    if v1:
        return CgroupFS(1, v1)
    if v2 is not None:
        return CgroupFS(2, {UNIFIED: v2})
    return CgroupFS(2, {})


@functools.lru_cache(maxsize=1)
def detect() -> CgroupFS:
    """This host's cgroup layout (read once per process: mounts do not change under a running agent)."""
    try:
        return parse_mountinfo(Path("/proc/self/mountinfo").read_text())
    except OSError:
        return CgroupFS(2, {})
