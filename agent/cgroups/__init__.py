"""cgroup v1 / v2 differences live here and nowhere else."""

from __future__ import annotations

import os
import time
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def is_unified() -> bool:
    """True on a pure cgroup v2 host (cgroup2 mounted at /sys/fs/cgroup)."""
    return (CGROUP_ROOT / "cgroup.controllers").exists()


def _pids_dir(cgpath: str) -> Path:
    rel = cgpath.lstrip("/")
    return CGROUP_ROOT / rel if is_unified() else CGROUP_ROOT / "pids" / rel


def procs(cgpath: str) -> list[int]:
    """PIDs of every process in the cgroup (host PIDs); [] if it does not exist."""
    try:
        text = (_pids_dir(cgpath) / "cgroup.procs").read_text()
    except OSError:
        return []
    return [int(x) for x in text.split()]


def remove_tree(cgpath: str) -> None:
    """rmdir cgpath and its empty children in every hierarchy (deepest first); ignores busy dirs."""
    rel = cgpath.strip("/")
    bases = [CGROUP_ROOT] if is_unified() else [p for p in CGROUP_ROOT.iterdir() if p.is_dir()]
    for base in bases:
        top = base / rel
        if not top.is_dir():
            continue
        for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda t: -len(t[0])):
            try:
                os.rmdir(dirpath)
            except OSError:
                pass


def remove_if_empty(cgpath: str) -> None:
    """rmdir cgpath in every hierarchy where it has no children and no tasks."""
    rel = cgpath.strip("/")
    bases = [CGROUP_ROOT] if is_unified() else [p for p in CGROUP_ROOT.iterdir() if p.is_dir()]
    for base in bases:
        try:
            os.rmdir(base / rel)
        except OSError:
            pass


def thaw(cgpath: str) -> None:
    """Thaw a frozen cgroup (v1 freezer.state, v2 cgroup.freeze); no-op when it does not exist."""
    from agent.cgroups.hierarchy import detect

    fs = detect()
    d = fs.dir("freezer", cgpath)
    if d is None:
        return
    target, value = (d / "cgroup.freeze", "0") if fs.version == 2 else (d / "freezer.state", "THAWED")
    try:
        target.write_text(value)
    except FileNotFoundError:
        pass


def frozen(text: str, version: int) -> bool:
    """Pure: does freezer.state (v1) or cgroup.events (v2) say the whole cgroup is frozen?"""
    if version == 2:
        return any(line.split() == ["frozen", "1"] for line in text.splitlines())
    return text.strip() == "FROZEN"


def freeze(cgpath: str, timeout: float = 10.0) -> None:
    """Freeze every task of the cgroup and wait until the kernel says all are frozen (what
    `runc pause` does, without its process start-up). On timeout the cgroup is thawed again
    and OSError raised. runc reads the freezer, so it shows the container as paused."""
    from agent.cgroups.hierarchy import detect

    fs = detect()
    d = fs.dir("freezer", cgpath)
    if d is None:
        raise FileNotFoundError(f"no freezer cgroup {cgpath}")
    control, value, status = ((d / "cgroup.freeze", "1", d / "cgroup.events") if fs.version == 2
                              else (d / "freezer.state", "FROZEN", d / "freezer.state"))
    deadline = time.monotonic() + timeout
    next_write = 0.0
    while True:
        now = time.monotonic()
        if now >= next_write:  # v1 may stay FREEZING while a task is busy in the kernel: ask again
            control.write_text(value)
            next_write = now + 0.05
        if frozen(status.read_text(), fs.version):
            return
        if now > deadline:
            thaw(cgpath)
            raise OSError(f"cgroup {cgpath} did not freeze within {timeout:.0f} s")
        time.sleep(0.0005)
