"""A container's usage counters from its cgroup, the same shape on cgroup v1 and v2.

`parse_v1` / `parse_v2` are pure (table-tested with real file contents of both versions); `read`
collects the files. None means "this kernel does not tell" — callers decide what to show then.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from agent.cgroups.hierarchy import CgroupFS

# memory sizes at or above this are the kernel's "no limit" (v1 shows PAGE_COUNTER_MAX in bytes)
V1_UNLIMITED_MIN = 1 << 62

# (controller, file) read on each version
V1_FILES: tuple[tuple[str, str], ...] = (
    ("memory", "memory.usage_in_bytes"),
    ("memory", "memory.max_usage_in_bytes"),
    ("memory", "memory.limit_in_bytes"),
    ("memory", "memory.failcnt"),
    ("memory", "memory.memsw.usage_in_bytes"),
    ("memory", "memory.memsw.max_usage_in_bytes"),
    ("memory", "memory.memsw.limit_in_bytes"),
    ("memory", "memory.memsw.failcnt"),
    ("memory", "memory.kmem.usage_in_bytes"),
    ("memory", "memory.kmem.max_usage_in_bytes"),
    ("memory", "memory.kmem.failcnt"),
    ("memory", "memory.oom_control"),
    ("memory", "memory.stat"),
    ("pids", "pids.current"),
    ("pids", "pids.peak"),
    ("pids", "pids.max"),
    ("pids", "pids.events"),
    ("cpuacct", "cpuacct.usage"),
)
V2_FILES: tuple[tuple[str, str], ...] = (
    ("memory", "memory.current"),
    ("memory", "memory.peak"),
    ("memory", "memory.max"),
    ("memory", "memory.events"),
    ("memory", "memory.swap.current"),
    ("memory", "memory.swap.peak"),
    ("memory", "memory.swap.max"),
    ("memory", "memory.swap.events"),
    ("memory", "memory.stat"),
    ("pids", "pids.current"),
    ("pids", "pids.peak"),
    ("pids", "pids.max"),
    ("pids", "pids.events"),
    ("cpu", "cpu.stat"),
)
# v1 fail counters the kernel lets us reset by writing 0 (the others need a baseline)
V1_RESETTABLE: tuple[tuple[str, str], ...] = (
    ("memory", "memory.failcnt"),
    ("memory", "memory.memsw.failcnt"),
    ("memory", "memory.kmem.failcnt"),
)


@dataclass(frozen=True)
class Counters:
    """Usage of one cgroup. Sizes in bytes, counts as counts; None = not reported by this kernel.

    `*_failcnt`: how often the limit refused an allocation (v1 failcnt, v2 "max" events);
    `memory_failcnt_resettable`: whether the kernel can zero it (v1) or a baseline is needed (v2).
    """

    version: int
    memory: int | None = None
    memory_peak: int | None = None
    memory_limit: int | None = None  # None also when unlimited
    memory_failcnt: int | None = None
    memory_failcnt_resettable: bool = False
    oom_kills: int | None = None
    swap: int | None = None
    swap_peak: int | None = None
    swap_failcnt: int | None = None
    kmem: int | None = None
    kmem_peak: int | None = None
    kmem_failcnt: int | None = None
    shmem: int | None = None
    sock: int | None = None
    slab_reclaimable: int | None = None
    pids: int | None = None
    pids_peak: int | None = None
    pids_limit: int | None = None
    pids_failcnt: int | None = None
    cpu_usage_ns: int | None = None


def _int(text: str | None) -> int | None:
    if text is None:
        return None
    s = text.strip()
    try:
        return int(s)
    except ValueError:
        return None


def _limit(text: str | None) -> int | None:
    """A limit file: None for "max" / v1's huge values / unreadable."""
    if text is None or text.strip() == "max":
        return None
    n = _int(text)
    return None if n is None or n >= V1_UNLIMITED_MIN else n


def flat_keyed(text: str | None) -> dict[str, int]:
    """``key value`` lines (memory.stat, memory.events, pids.events, cpu.stat, oom_control)."""
    out: dict[str, int] = {}
    for line in (text or "").splitlines():
        parts = line.split()
        if len(parts) == 2:
            try:
                out[parts[0]] = int(parts[1])
            except ValueError:
                continue
    return out


def _minus(a: int | None, b: int | None) -> int | None:
    return None if a is None or b is None else max(0, a - b)


def parse_v1(files: Mapping[str, str]) -> Counters:
    """Counters from v1 files, keyed by file name (names are unique across v1 controllers)."""
    g = files.get
    stat = flat_keyed(g("memory.stat"))
    memory = _int(g("memory.usage_in_bytes"))
    memory_limit = _limit(g("memory.limit_in_bytes"))
    memsw_limit = _limit(g("memory.memsw.limit_in_bytes"))
    memory_failcnt = _int(g("memory.failcnt"))
    swap_failcnt = _int(g("memory.memsw.failcnt"))
    if memsw_limit is not None and (memory_limit is None or memsw_limit <= memory_limit):
        # no swap allowed: the kernel charges memory+swap first, so running out of RAM is
        # counted on memsw's failcnt, not on memory's
        memory_failcnt = (memory_failcnt or 0) + (swap_failcnt or 0)
        swap_failcnt = 0
    return Counters(
        version=1,
        memory=memory,
        memory_peak=_int(g("memory.max_usage_in_bytes")),
        memory_limit=memory_limit,
        memory_failcnt=memory_failcnt,
        memory_failcnt_resettable=True,
        oom_kills=flat_keyed(g("memory.oom_control")).get("oom_kill"),
        # memsw counts memory + swap; the swap part is the difference
        swap=_minus(_int(g("memory.memsw.usage_in_bytes")), memory),
        swap_peak=None,
        swap_failcnt=swap_failcnt,
        kmem=_int(g("memory.kmem.usage_in_bytes")),
        kmem_peak=_int(g("memory.kmem.max_usage_in_bytes")),
        kmem_failcnt=_int(g("memory.kmem.failcnt")),
        shmem=stat.get("total_shmem", stat.get("shmem")),
        sock=None,
        slab_reclaimable=None,
        pids=_int(g("pids.current")),
        pids_peak=_int(g("pids.peak")),
        pids_limit=_limit(g("pids.max")),
        pids_failcnt=flat_keyed(g("pids.events")).get("max"),
        cpu_usage_ns=_int(g("cpuacct.usage")),
    )


def _kernel_memory_v2(stat: Mapping[str, int]) -> int | None:
    if "kernel" in stat:  # Linux >= 5.18
        return stat["kernel"]
    parts = [stat[k] for k in ("kernel_stack", "pagetables", "percpu", "sock", "slab") if k in stat]
    return sum(parts) if parts else None


def parse_v2(files: Mapping[str, str]) -> Counters:
    """Counters from v2 files, keyed by file name."""
    g = files.get
    stat = flat_keyed(g("memory.stat"))
    events = flat_keyed(g("memory.events"))
    swap_events = flat_keyed(g("memory.swap.events"))
    usage_usec = flat_keyed(g("cpu.stat")).get("usage_usec")
    return Counters(
        version=2,
        memory=_int(g("memory.current")),
        memory_peak=_int(g("memory.peak")),
        memory_limit=_limit(g("memory.max")),
        memory_failcnt=events.get("max"),
        memory_failcnt_resettable=False,
        oom_kills=events.get("oom_kill"),
        swap=_int(g("memory.swap.current")),
        swap_peak=_int(g("memory.swap.peak")),
        # "fail": a swap allocation refused by swap.max; "max": swap usage hit swap.max
        swap_failcnt=(swap_events.get("fail", 0) + swap_events.get("max", 0)) if swap_events else None,
        kmem=_kernel_memory_v2(stat),
        kmem_peak=None,
        kmem_failcnt=None,
        shmem=stat.get("shmem"),
        sock=stat.get("sock"),
        slab_reclaimable=stat.get("slab_reclaimable"),
        pids=_int(g("pids.current")),
        pids_peak=_int(g("pids.peak")),
        pids_limit=_limit(g("pids.max")),
        pids_failcnt=flat_keyed(g("pids.events")).get("max"),
        cpu_usage_ns=None if usage_usec is None else usage_usec * 1000,
    )


def read_files(fs: CgroupFS, cgpath: str, wanted: tuple[tuple[str, str], ...]) -> dict[str, str]:
    """The readable files among `wanted` of cgroup `cgpath`, by file name."""
    out: dict[str, str] = {}
    for controller, name in wanted:
        d = fs.dir(controller, cgpath)
        if d is None:
            continue
        try:
            out[name] = (d / name).read_text()
        except OSError:
            continue
    return out


def read(fs: CgroupFS, cgpath: str) -> Counters | None:
    """The counters of cgroup `cgpath`; None when it does not exist (container not running)."""
    probes = [fs.dir(c, cgpath) for c in ("pids", "memory")]
    if not any(p is not None and p.is_dir() for p in probes):
        return None
    if fs.version == 1:
        return parse_v1(read_files(fs, cgpath, V1_FILES))
    return parse_v2(read_files(fs, cgpath, V2_FILES))
