"""Pure: a container's configuration -> the limits and capabilities the kernel enforces.

What goes where (docs/resources.md has the user's view):

- memory, swap, privvmpages, CPU and pids limits -> OCI resources, applied by runc at start and by
  `runc update` live (`resources`);
- `--ioprio`, `--iolimit`, `--iopslimit` -> cgroup I/O files that runc does not manage
  (`cgroup_limits`, planned by `agent.cgroups.plan`, written by `agent.runtime.apply_limits`);
- `--numfile` / `--lockedpages` -> RLIMIT_NOFILE / RLIMIT_MEMLOCK of the container's processes,
  `--shmpages` -> size of the container's /dev/shm, `--numpty` -> max ptys of its devpts
  (`amend_spec` at start; `apply_limits` live);
- the other beancounters have no mainline mechanism: accepted, stored, shown by vzubc, and
  reported as not enforceable (`NOT_ENFORCEABLE`) instead of being silently ignored.
"""

from __future__ import annotations

import copy
import os
import resource
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agent.cgroups.hierarchy import detect
from agent.cgroups.plan import CgroupLimits, Device, ioprio_weight
from agent.config.params import PAGE_SIZE, ContainerConfig
from agent.runtime.oci import DEFAULT_CAPS, Resources

PERIOD_US = 100_000
DEFAULT_SHM_BYTES = 64 << 20  # the OCI spec's /dev/shm size when --shmpages is unlimited

# beancounters with no mechanism on a mainline kernel, and why (said by `vzctl set`, listed in docs)
NOT_ENFORCEABLE: dict[str, str] = {
    "kmemsize": "kernel memory has no limit of its own on mainline kernels; it is charged to --ram",
    "tcpsndbuf": "socket buffers have no per-container limit; they are charged to --ram",
    "tcprcvbuf": "socket buffers have no per-container limit; they are charged to --ram",
    "othersockbuf": "socket buffers have no per-container limit; they are charged to --ram",
    "dgramrcvbuf": "socket buffers have no per-container limit; they are charged to --ram",
    "dcachesize": "dentry and inode caches have no limit of their own; they are charged to --ram",
    "numtcpsock": "no per-container socket count limit exists on mainline kernels",
    "numothersock": "no per-container socket count limit exists on mainline kernels",
    "numflock": "Linux does not enforce RLIMIT_LOCKS and no cgroup counts file locks",
    "numsiginfo": "RLIMIT_SIGPENDING counts per user, and containers share the host's root user",
    "numiptent": "no limit on netfilter rules per network namespace",
    "vmguarpages": "memory guarantees are not enforced (use --ram for a limit)",
    "oomguarpages": "OOM guarantees are not enforced (the OOM killer stays inside the container's --ram)",
    "avnumproc": "a sizing hint for vzcfgvalidate and vzsplit, nothing to enforce",
}
# mapped onto per-process rlimits and mount options: live, with caveats said in the notes
PROCESS_LIMITS = frozenset({"numfile", "lockedpages", "shmpages", "numpty"})
IO_OPTS = frozenset({"ioprio", "iolimit", "iopslimit"})
# every option this module turns into a kernel limit (containers.py: LIVE / RESOURCE_OPTS)
LIVE_RESOURCE_OPTS = frozenset({"ram", "swap", "physpages", "swappages", "privvmpages", "cpuunits", "cpulimit",
                                "cpus", "cpumask", "nodemask", "numproc"}) | IO_OPTS | PROCESS_LIMITS


def not_enforceable_notes(options: Sequence[str]) -> list[str]:
    """One note per option that is stored but cannot be enforced here (never silently ignored)."""
    return [f"--{o}: stored, shown by vzubc, but not enforceable on this kernel: {NOT_ENFORCEABLE[o]}"
            for o in sorted(set(options)) if o in NOT_ENFORCEABLE]


def _limit_of(cfg: ContainerConfig, name: str) -> int | None:
    pair = cfg.beancounters.get(name)
    return None if pair is None else pair[1]


NO_LIMIT = -1  # "no limit" in OCI resources: a limit left out would keep its old value on `runc update`


@dataclass(frozen=True)
class Host:
    """What "all" and "unlimited" mean on this host."""

    cpus: str  # online CPUs, e.g. "0-1"
    mems: str  # online memory nodes, e.g. "0"
    swap_accounting: bool  # the memory controller counts swap (v1 memsw files exist)


def _sysfs_list(path: str, default: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip() or default
    except OSError:
        return default


def host() -> Host:
    """This host's online CPUs and memory nodes, and whether swap is accounted."""
    fs = detect()
    memory_root = fs.dir("memory", "/")
    swap = fs.version == 2 or (memory_root is not None and (memory_root / "memory.memsw.limit_in_bytes").exists())
    return Host(cpus=_sysfs_list("/sys/devices/system/cpu/online", f"0-{(os.cpu_count() or 1) - 1}"),
                mems=_sysfs_list("/sys/devices/system/node/online", "0"), swap_accounting=swap)


def resources(cfg: ContainerConfig, ncpu: int | None = None, on: Host | None = None) -> Resources:
    """OpenVZ parameters mapped to the cgroup limits runc applies (docs/resources.md lists the mapping).

    Memory: `--ram` is the memory limit, `--ram` + `--swap` the memory+swap limit. `--privvmpages`
    (allocated memory in OpenVZ) caps memory+swap too: the kernel cannot count allocations that
    were never touched, so the nearest mechanism limits what the container really uses.

    Every limit is explicit, "no limit" included (NO_LIMIT, all CPUs, all memory nodes): the same
    resources serve `runc update`, which keeps the old value of a limit that is left out, so
    `vzctl set --cpulimit 0` or `--ram unlimited` would otherwise change nothing.
    """
    h = on or host()
    mem = cfg.ram_bytes
    swap_total = None
    if mem is not None and cfg.swap_bytes is not None:
        swap_total = mem + cfg.swap_bytes
    privvm = _limit_of(cfg, "privvmpages")
    if privvm is not None:
        swap_total = privvm if swap_total is None else min(swap_total, privvm)
        mem = privvm if mem is None else min(mem, privvm)
    if mem is not None and swap_total is not None and swap_total < mem + PAGE_SIZE:
        # no swap: one page of it anyway. Linux no longer keeps memsw's fail counter, and with
        # memsw == memory the kernel hits memsw first, so cgroup v1 would count no RAM failure.
        swap_total = mem + PAGE_SIZE
    shares = None
    if cfg.cpuunits is not None:
        # OpenVZ's default 1000 cpuunits = the kernel's default 1024 shares
        shares = max(2, min(262_144, cfg.cpuunits * 1024 // 1000))
    quota = None
    pct = cfg.cpulimit_percent
    if pct:
        quota = max(1000, pct * PERIOD_US // 100)
    if cfg.cpus:
        cap = cfg.cpus * PERIOD_US
        quota = cap if quota is None else min(quota, cap)
    pids = cfg.numproc[1] if cfg.numproc is not None else None
    if mem is None:
        swap = None  # runc lifts memory+swap itself along with memory (where swap is accounted)
    elif swap_total is None:
        swap = NO_LIMIT if h.swap_accounting else None
    else:
        swap = swap_total
    return Resources(
        memory_bytes=NO_LIMIT if mem is None else mem,
        memory_swap_bytes=swap,
        cpu_shares=shares,
        cpu_quota_us=NO_LIMIT if quota is None else quota,
        cpu_period_us=PERIOD_US,
        cpuset_cpus=cfg.cpumask or h.cpus,
        cpuset_mems=cfg.nodemask or h.mems,
        pids_limit=NO_LIMIT if pids is None else pids,
    )


def _limited(value: int | None) -> int | None:
    return None if value is None or value < 0 else value


def cgroup_limits(cfg: ContainerConfig, io_device: Device | None = None, on: Host | None = None) -> CgroupLimits:
    """Every cgroup limit of the container (what runc applies plus the I/O limits the agent writes).

    `io_device` is the disk holding the private area; without one the throttles are left out.
    """
    res = resources(cfg, on=on)
    memory = _limited(res.memory_bytes)
    return CgroupLimits(
        memory=memory,
        memory_swap=_limited(res.memory_swap_bytes) if memory is not None else None,
        cpu_shares=res.cpu_shares,
        cpu_quota_us=_limited(res.cpu_quota_us),
        cpu_period_us=res.cpu_period_us,
        cpuset_cpus=res.cpuset_cpus,
        cpuset_mems=res.cpuset_mems,
        pids=_limited(res.pids_limit),
        io_weight=None if cfg.ioprio is None else ioprio_weight(cfg.ioprio),
        io_device=io_device,
        io_bps=cfg.iolimit_bytes,
        io_iops=cfg.iopslimit,
    )


# ---- per-process limits and mount options -------------------------------------------------------

RLIMITS = (("numfile", "RLIMIT_NOFILE"), ("lockedpages", "RLIMIT_MEMLOCK"))


@dataclass(frozen=True)
class Rlimit:
    type: str  # OCI name: RLIMIT_NOFILE
    soft: int
    hard: int

    def to_oci(self) -> dict[str, Any]:
        return {"type": self.type, "soft": self.soft, "hard": self.hard}


def agent_hard_limits() -> dict[str, int]:
    """The agent's own hard limits: runc (and prlimit) cannot go above them without
    CAP_SYS_RESOURCE, which root lacks on some hosts (runc-checkpoint-notes.md, pitfall 1)."""
    out = {}
    for name in ("RLIMIT_NOFILE", "RLIMIT_MEMLOCK"):
        hard = resource.getrlimit(getattr(resource, name))[1]
        out[name] = (1 << 63) - 1 if hard == resource.RLIM_INFINITY else hard
    return out


def rlimits(cfg: ContainerConfig, hard_caps: Mapping[str, int]) -> tuple[list[Rlimit], list[str]]:
    """RLIMIT_NOFILE from `--numfile` (barrier = soft, limit = hard) and RLIMIT_MEMLOCK from
    `--lockedpages`, never above `hard_caps` (the agent's own hard limits). Unlimited parameters
    give no rlimit (the container inherits the agent's). Returns the limits and a note per cap."""
    out: list[Rlimit] = []
    notes: list[str] = []
    for param, rtype in RLIMITS:
        pair = cfg.beancounters.get(param)
        if pair is None or pair[1] is None:
            continue
        barrier = pair[0] or pair[1]  # a 0 barrier would leave no soft limit at all
        cap = hard_caps.get(rtype)
        hard = pair[1]
        if cap is not None and hard > cap:
            notes.append(f"--{param}: limit {hard} capped at {cap}, the agent's own hard {rtype} "
                         f"(raising it needs CAP_SYS_RESOURCE)")
            hard = cap
        out.append(Rlimit(rtype, min(barrier, hard), hard))
    return out, notes


def shm_bytes(cfg: ContainerConfig) -> int | None:
    """Size of /dev/shm from the `--shmpages` limit (whole pages); None when unlimited."""
    limit = _limit_of(cfg, "shmpages")
    if limit is None:
        return None
    return max(PAGE_SIZE, -(-limit // PAGE_SIZE) * PAGE_SIZE)


def pty_max(cfg: ContainerConfig) -> int | None:
    """The container devpts instance's `max=` from the `--numpty` limit; None when unlimited."""
    limit = _limit_of(cfg, "numpty")
    return None if limit is None else max(1, limit)


# mount(8) words that are flags, not filesystem data (the rest goes to the filesystem as data)
MOUNT_FLAGS = frozenset({"ro", "rw", "nosuid", "suid", "nodev", "dev", "noexec", "exec", "strictatime",
                         "relatime", "noatime", "nodiratime", "sync", "async"})


def mount_options(spec: Mapping[str, Any], destination: str) -> list[str] | None:
    """The options of the spec's mount at `destination` (None when the spec has no such mount)."""
    for m in spec.get("mounts", []):
        if m.get("destination") == destination:
            return list(m.get("options", []))
    return None


def with_option(options: Sequence[str], key: str, value: str) -> list[str]:
    """`options` with ``key=value`` replacing any earlier ``key=...`` (appended otherwise)."""
    out = [o for o in options if not o.startswith(key + "=")]
    return [*out, f"{key}={value}"]


def amend_spec(spec: Mapping[str, Any], cfg: ContainerConfig, hard_caps: Mapping[str, int]) -> dict[str, Any]:
    """The OCI spec with this module's per-process limits and mount options added: process.rlimits
    (numfile, lockedpages), /dev/shm size (shmpages), devpts max (numpty). Pure; returns a copy.

    runc applies process.rlimits to the container's init and to every `runc exec` (it reads the
    bundle's config.json again), so exec'd processes get the same limits.
    """
    out: dict[str, Any] = copy.deepcopy(dict(spec))
    rl, _ = rlimits(cfg, hard_caps)
    process = out.setdefault("process", {})
    # idempotent: the limits this module manages are replaced, including by "no limit"
    managed = {rtype for _, rtype in RLIMITS}
    others = [r for r in process.get("rlimits", []) if r.get("type") not in managed]
    if rl or others:
        process["rlimits"] = others + [r.to_oci() for r in rl]
    else:
        process.pop("rlimits", None)
    shm, pts = shm_bytes(cfg), pty_max(cfg)
    for m in out.get("mounts", []):
        options = m.get("options", [])
        if m.get("destination") == "/dev/shm":
            m["options"] = with_option(options, "size", str(shm or DEFAULT_SHM_BYTES))
        elif m.get("destination") == "/dev/pts":
            m["options"] = (with_option(options, "max", str(pts)) if pts is not None
                            else [o for o in options if not o.startswith("max=")])
    return out


def capabilities(cfg: ContainerConfig) -> tuple[str, ...]:
    caps = set(DEFAULT_CAPS)
    if cfg.netfilter == "disabled":
        # OpenVZ's "disabled": the container cannot manage netfilter in its namespace at all
        caps.discard("CAP_NET_ADMIN")
    for name, on in cfg.capabilities.items():
        cap = "CAP_" + name.upper().removeprefix("CAP_")
        if on:
            caps.add(cap)
        else:
            caps.discard(cap)
    return tuple(sorted(caps))
