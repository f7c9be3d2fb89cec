"""Thin: apply what `limits` plans and runc does not apply — I/O weight and throttles (cgroup
files), rlimits of running processes, /dev/shm and devpts sizes — to a running container.

Each function is idempotent and returns notes for the user (`vzctl set` prints them); a limit
that cannot be applied is reported in a note, never raised: the rest still applies.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import json
import logging
import os
import resource
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from agent import cgroups, nsthread
from agent.cgroups import apply as cgapply
from agent.cgroups.device import device_of, scheduler
from agent.cgroups.hierarchy import detect
from agent.cgroups.plan import plan
from agent.config.params import ContainerConfig
from agent.layout import NodeLayout
from agent.runtime import limits

log = logging.getLogger(__name__)
T = TypeVar("T")

MS_REMOUNT = 32
MOUNT_FLAG_BITS = {"ro": 1, "nosuid": 2, "nodev": 4, "noexec": 8, "sync": 16, "noatime": 1024,
                   "nodiratime": 2048, "relatime": 1 << 21, "strictatime": 1 << 24}
_libc = ctypes.CDLL(None, use_errno=True)


def io_configured(cfg: ContainerConfig) -> bool:
    return cfg.ioprio is not None or bool(cfg.iolimit_bytes) or bool(cfg.iopslimit)


def apply_io(layout: NodeLayout, ctid: int, cfg: ContainerConfig) -> list[str]:
    """Write the I/O weight and throttles of the container's cgroup; notes say what they do here."""
    fs = detect()
    cgpath = layout.cgroup_path(ctid)
    private = layout.private(ctid)
    dev = device_of(private)
    lim = limits.cgroup_limits(cfg, dev)
    feats = cgapply.features(fs, cgpath)
    writes = [w for w in plan(lim, feats) if not w.by_runc]
    notes = [f"could not apply {p}" for p in cgapply.write(fs, cgpath, writes)]
    if cfg.ioprio is not None:
        if feats.weight_file is None:
            notes.append("--ioprio: this kernel offers no I/O weight for the container (no bfq or io "
                         "weight file); stored only")
        else:
            sched = scheduler(dev) if dev is not None else None
            note = f"--ioprio {cfg.ioprio}: I/O weight {lim.io_weight} ({feats.weight_file})"
            if "bfq" in feats.weight_file and sched != "bfq":
                note += (f"; it acts only on disks using the bfq I/O scheduler "
                         f"(the private area's disk {dev or '?'} uses {sched or 'an unknown scheduler'})")
            notes.append(note)
    if cfg.iolimit_bytes or cfg.iopslimit:
        if dev is None:
            notes.append(f"--iolimit/--iopslimit: the private area {private} is on no block device; "
                         "not applied")
        else:
            note = (f"I/O throttle on disk {dev}: {cfg.iolimit_bytes or 'unlimited'} bytes/s, "
                    f"{cfg.iopslimit or 'unlimited'} operations/s, reads and writes each")
            if fs.version == 1:
                note += " (cgroup v1 throttles reads and direct or synchronous writes, not buffered writeback)"
            notes.append(note)
    return notes


# ---- rlimits of running processes ----------------------------------------------------------------


def _prlimit(pid: int, rtype: str, soft: int, hard: int) -> str | None:
    """Set one process's limit; a hard limit above the process's current one is kept at the
    current one (raising it needs CAP_SYS_RESOURCE). Returns a problem or None."""
    res = getattr(resource, rtype)
    try:
        _soft, cur_hard = resource.prlimit(pid, res)
        if cur_hard != resource.RLIM_INFINITY and hard > cur_hard:
            hard = cur_hard
        resource.prlimit(pid, res, (min(soft, hard), hard))
    except ProcessLookupError:
        return None
    except (OSError, ValueError) as e:
        return f"pid {pid}: {e}"
    return None


def apply_rlimits(layout: NodeLayout, ctid: int, cfg: ContainerConfig, options: set[str]) -> list[str]:
    """RLIMIT_NOFILE / RLIMIT_MEMLOCK on every process of the container (they are per process:
    new processes inherit them, and `runc exec` takes them from the bundle's config.json)."""
    rl, notes = limits.rlimits(cfg, limits.agent_hard_limits())
    chosen = {t for p, t in limits.RLIMITS if p in options}
    pids = cgroups.procs(layout.cgroup_path(ctid))
    wanted = {r.type: r for r in rl}
    inherited = limits.agent_hard_limits()
    problems: list[str] = []
    for rtype in sorted(chosen):
        r = wanted.get(rtype)
        # unlimited: back to the agent's own limits (what a fresh container inherits)
        soft, hard = (r.soft, r.hard) if r is not None else (resource.getrlimit(getattr(resource, rtype))[0],
                                                              inherited[rtype])
        for pid in pids:
            if (p := _prlimit(pid, rtype, soft, hard)) is not None:
                problems.append(p)
        param = next(p for p, t in limits.RLIMITS if t == rtype)
        notes.append(f"--{param}: {rtype} {soft}:{hard} on {len(pids)} process(es) of the container "
                     "(a per-process limit)")
    if problems:
        notes.append("could not set rlimits on: " + "; ".join(problems[:5]))
    return notes


# ---- mounts inside the container -----------------------------------------------------------------


async def in_mount_ns(pid: int, fn: Callable[[], T]) -> T:
    """Run fn in a fresh thread inside the mount namespace of process pid (the thread first stops
    sharing its filesystem attributes, which setns(CLONE_NEWNS) requires; it never leaves)."""
    return await nsthread.run_in(f"/proc/{pid}/ns/mnt", nsthread.CLONE_NEWNS, fn, name=f"mntns-{pid}")


def _remount(target: str, options: Sequence[str]) -> None:
    flags = MS_REMOUNT
    data = []
    for o in options:
        if o in MOUNT_FLAG_BITS:
            flags |= MOUNT_FLAG_BITS[o]
        elif o not in limits.MOUNT_FLAGS:
            data.append(o)
    if _libc.mount(b"none", target.encode(), None, ctypes.c_ulong(flags), ",".join(data).encode()) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"remount {target}: {os.strerror(err)}")


def _load_spec(layout: NodeLayout, ctid: int) -> dict[str, Any] | None:
    try:
        data = json.loads((layout.bundle(ctid) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


async def apply_mounts(layout: NodeLayout, ctid: int, pid: int, cfg: ContainerConfig,
                       options: set[str]) -> list[str]:
    """Resize the container's /dev/shm (shmpages) and devpts (numpty) by remounting them inside
    its mount namespace, with the spec's other options unchanged."""
    spec = limits.amend_spec(_load_spec(layout, ctid) or {}, cfg, limits.agent_hard_limits())
    notes = []
    todo = []
    if "shmpages" in options:
        todo.append(("/dev/shm", "shmpages", "size", limits.shm_bytes(cfg) or limits.DEFAULT_SHM_BYTES))
    if "numpty" in options:
        # devpts has no "unlimited" spelling: the kernel's own maximum is NR_UNIX98_PTY_MAX
        todo.append(("/dev/pts", "numpty", "max", limits.pty_max(cfg) or (1 << 20)))
    for target, param, key, value in todo:
        opts = limits.mount_options(spec, target)
        if opts is None:
            notes.append(f"--{param}: the container has no {target} mount; not applied")
            continue
        opts = limits.with_option(opts, key, str(value))
        try:
            await in_mount_ns(pid, functools.partial(_remount, target, opts))
        except OSError as e:
            notes.append(f"--{param}: {e}")
        else:
            notes.append(f"--{param}: {target} remounted with {key}={value}")
    return notes


def update_bundle(layout: NodeLayout, ctid: int, cfg: ContainerConfig) -> None:
    """Rewrite the bundle's config.json with the current per-process limits, so that the next
    `runc exec` (and a restore) uses them too."""
    spec = _load_spec(layout, ctid)
    if spec is None:
        return
    path = layout.bundle(ctid) / "config.json"
    tmp = path.with_name("config.json.limits.tmp")
    tmp.write_text(json.dumps(limits.amend_spec(spec, cfg, limits.agent_hard_limits()), indent=2))
    os.replace(tmp, path)


# ---- entry points --------------------------------------------------------------------------------


async def at_start(layout: NodeLayout, ctid: int, cfg: ContainerConfig) -> list[str]:
    """Right after runc started the container: the I/O limits (everything else is in the spec)."""
    if not io_configured(cfg):
        return []
    notes = await asyncio.to_thread(apply_io, layout, ctid, cfg)
    for n in notes:
        log.info("container %d: %s", ctid, n)
    return notes


async def live(layout: NodeLayout, ctid: int, pid: int, cfg: ContainerConfig, options: set[str]) -> list[str]:
    """`vzctl set` on a running container: apply the changed options runc does not handle."""
    notes: list[str] = []
    if options & limits.IO_OPTS:
        notes += await asyncio.to_thread(apply_io, layout, ctid, cfg)
    if options & {"numfile", "lockedpages"}:
        notes += await asyncio.to_thread(apply_rlimits, layout, ctid, cfg, options)
    if options & {"shmpages", "numpty"}:
        notes += await apply_mounts(layout, ctid, pid, cfg, options)
    if options & limits.PROCESS_LIMITS:
        await asyncio.to_thread(update_bundle, layout, ctid, cfg)
    return notes
