"""Thin: write planned cgroup files into the kernel, read features, reset fail counters."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from agent.cgroups.counters import V1_RESETTABLE
from agent.cgroups.hierarchy import CgroupFS
from agent.cgroups.plan import V1_WEIGHT_FILES, V2_WEIGHT_FILES, Features, Write

log = logging.getLogger(__name__)


def write_existing(path: Path, value: str) -> None:
    """Write to a kernel file that must already exist (never create one by mistake)."""
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)  # as `echo >` does
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def features(fs: CgroupFS, cgpath: str) -> Features:
    """What the container's cgroup offers: its version and the I/O weight file, if any
    (bfq's weight is preferred; it only acts on disks whose scheduler is bfq)."""
    if fs.version == 1:
        d, names = fs.dir("blkio", cgpath), V1_WEIGHT_FILES
    else:
        d, names = fs.dir("io", cgpath), V2_WEIGHT_FILES
    weight = None
    if d is not None:
        weight = next((n for n in names if (d / n).exists()), None)
    return Features(fs.version, weight)


def write(fs: CgroupFS, cgpath: str, writes: list[Write]) -> list[str]:
    """Write each planned file of cgroup `cgpath`; returns a problem line per write that failed
    (missing controller or file, or the kernel refused the value). Never raises for those."""
    problems: list[str] = []
    for w in writes:
        d = fs.dir(w.controller, cgpath)
        if d is None:
            problems.append(f"{w.file}: no {w.controller} controller on this host")
            continue
        path = d / w.file
        try:
            write_existing(path, w.value)
        except FileNotFoundError:
            problems.append(f"{w.file}: not offered by this kernel")
        except OSError as e:
            problems.append(f"{w.file} = {w.value!r}: {e.strerror or e}")
        else:
            log.debug("cgroup %s: %s", cgpath, w)
    return problems


def read_value(fs: CgroupFS, cgpath: str, controller: str, file: str) -> str | None:
    d = fs.dir(controller, cgpath)
    if d is None:
        return None
    try:
        return (d / file).read_text().strip()
    except OSError:
        return None


def reset_failcnt(fs: CgroupFS, cgpath: str) -> list[str]:
    """Zero the fail counters the kernel lets us reset (v1 memory, memsw and kmem failcnt).
    Returns the files reset; the others need a baseline (agent.beancounters)."""
    done: list[str] = []
    if fs.version != 1:
        return done
    for controller, name in V1_RESETTABLE:
        d = fs.dir(controller, cgpath)
        if d is None:
            continue
        try:
            write_existing(d / name, "0")
        except OSError:
            continue
        done.append(name)
    return done
