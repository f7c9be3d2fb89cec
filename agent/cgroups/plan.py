"""Pure: a container's cgroup limits -> the cgroup files to write, for cgroup v1 and for v2.

Every limit is planned, for both versions, so that the mapping is written down in one place and
table-tested. Who writes what (`Write.by_runc`): runc applies memory, swap, CPU and pids limits
(OCI resources at start, `runc update` live) and keeps them in its own state, so the agent must
never write those files behind runc's back (a later `runc update` would silently restore runc's
values). The I/O files runc does not manage — the weight for `--ioprio`, the throttles for
`--iolimit` / `--iopslimit` — are written by the agent (`agent.cgroups.apply`).
"""

from __future__ import annotations

from dataclasses import dataclass

# v1 writes "-1" for no limit; v2 writes "max"
V1_UNLIMITED = "-1"
V2_UNLIMITED = "max"

# files runc does not manage: the agent writes these
V1_WEIGHT_FILES = ("blkio.bfq.weight", "blkio.weight")
V2_WEIGHT_FILES = ("io.bfq.weight", "io.weight")

DEFAULT_IO_WEIGHT = 100  # the kernel's default weight (bfq and io.weight alike)
# OpenVZ --ioprio 0..7 (default 4) -> I/O weight: the default priority keeps the kernel's default
# weight, each step up doubles it, each step down halves it.
IOPRIO_WEIGHTS = (6, 13, 25, 50, 100, 200, 400, 800)


@dataclass(frozen=True, order=True)
class Device:
    """A block device by number (the whole disk holding a container's private area)."""

    major: int
    minor: int

    def __str__(self) -> str:
        return f"{self.major}:{self.minor}"


@dataclass(frozen=True)
class CgroupLimits:
    """Kernel-level limits of one container; None means unlimited (or the kernel default)."""

    memory: int | None = None  # bytes
    memory_swap: int | None = None  # memory + swap, bytes (v1 memsw; v2 gets swap = this - memory)
    cpu_shares: int | None = None  # v1 shares 2..262144 (v2 weight is derived as runc does)
    cpu_quota_us: int | None = None  # per period; None = no quota
    cpu_period_us: int = 100_000
    cpuset_cpus: str | None = None
    cpuset_mems: str | None = None
    pids: int | None = None
    io_weight: int | None = None  # 1..1000 (bfq scale, default 100); None = leave the default
    io_device: Device | None = None  # throttles apply to this device only
    io_bps: int = 0  # read and write bytes per second each; 0 = no limit
    io_iops: int = 0  # read and write operations per second each; 0 = no limit


@dataclass(frozen=True)
class Features:
    """What the kernel offers, as far as the plan depends on it."""

    version: int  # 1 or 2
    weight_file: str | None = None  # one of V1_WEIGHT_FILES / V2_WEIGHT_FILES; None: no I/O weight here


@dataclass(frozen=True)
class Write:
    """Write `value` to `file` in the container's cgroup of `controller` (v1 hierarchy name; on v2
    the controller the file belongs to, all in one directory)."""

    controller: str
    file: str
    value: str
    by_runc: bool

    def __str__(self) -> str:
        return f"{self.controller}/{self.file} = {self.value!r}"


def ioprio_weight(prio: int) -> int:
    """OpenVZ I/O priority 0..7 -> kernel I/O weight (4 -> 100, the kernel's default)."""
    if not 0 <= prio <= 7:
        raise ValueError(f"ioprio {prio} is outside 0..7")
    return IOPRIO_WEIGHTS[prio]


def shares_to_weight(shares: int) -> int:
    """v1 cpu.shares -> v2 cpu.weight, the conversion runc uses (1024 -> 39, 2 -> 1, 262144 -> 10000)."""
    return 1 + ((shares - 2) * 9999) // 262142


def _n(value: int | None, unlimited: str) -> str:
    return unlimited if value is None else str(value)


def plan(limits: CgroupLimits, features: Features) -> list[Write]:
    """The cgroup writes that give a container `limits`, in an order the kernel accepts."""
    if features.version == 1:
        return _plan_v1(limits, features)
    if features.version == 2:
        return _plan_v2(limits, features)
    raise ValueError(f"unknown cgroup version {features.version}")


def _plan_v1(lim: CgroupLimits, features: Features) -> list[Write]:
    out: list[Write] = []

    def w(controller: str, file: str, value: str, by_runc: bool = True) -> None:
        out.append(Write(controller, file, value, by_runc))

    # memsw must stay >= memory: runc orders these itself; the plan lists the final values
    w("memory", "memory.limit_in_bytes", _n(lim.memory, V1_UNLIMITED))
    if lim.memory is not None:
        w("memory", "memory.memsw.limit_in_bytes", _n(lim.memory_swap, V1_UNLIMITED))
    if lim.cpu_shares is not None:
        w("cpu", "cpu.shares", str(lim.cpu_shares))
    w("cpu", "cpu.cfs_period_us", str(lim.cpu_period_us))
    w("cpu", "cpu.cfs_quota_us", _n(lim.cpu_quota_us, V1_UNLIMITED))
    if lim.cpuset_cpus:
        w("cpuset", "cpuset.cpus", lim.cpuset_cpus)
    if lim.cpuset_mems:
        w("cpuset", "cpuset.mems", lim.cpuset_mems)
    w("pids", "pids.max", _n(lim.pids, V2_UNLIMITED))  # v1 pids also spells it "max"
    if lim.io_weight is not None and features.weight_file:
        weight = lim.io_weight if features.weight_file == "blkio.bfq.weight" else max(10, lim.io_weight)
        w("blkio", features.weight_file, str(weight), False)
    if lim.io_device is not None:
        dev = str(lim.io_device)
        # 0 removes the device's rule
        w("blkio", "blkio.throttle.read_bps_device", f"{dev} {lim.io_bps}", False)
        w("blkio", "blkio.throttle.write_bps_device", f"{dev} {lim.io_bps}", False)
        w("blkio", "blkio.throttle.read_iops_device", f"{dev} {lim.io_iops}", False)
        w("blkio", "blkio.throttle.write_iops_device", f"{dev} {lim.io_iops}", False)
    return out


def _plan_v2(lim: CgroupLimits, features: Features) -> list[Write]:
    out: list[Write] = []

    def w(controller: str, file: str, value: str, by_runc: bool = True) -> None:
        out.append(Write(controller, file, value, by_runc))

    w("memory", "memory.max", _n(lim.memory, V2_UNLIMITED))
    if lim.memory is not None:
        swap = None if lim.memory_swap is None else max(0, lim.memory_swap - lim.memory)
        w("memory", "memory.swap.max", _n(swap, V2_UNLIMITED))
    if lim.cpu_shares is not None:
        w("cpu", "cpu.weight", str(shares_to_weight(lim.cpu_shares)))
    w("cpu", "cpu.max", f"{_n(lim.cpu_quota_us, V2_UNLIMITED)} {lim.cpu_period_us}")
    if lim.cpuset_cpus:
        w("cpuset", "cpuset.cpus", lim.cpuset_cpus)
    if lim.cpuset_mems:
        w("cpuset", "cpuset.mems", lim.cpuset_mems)
    w("pids", "pids.max", _n(lim.pids, V2_UNLIMITED))
    if lim.io_weight is not None and features.weight_file:
        value = str(lim.io_weight) if features.weight_file == "io.bfq.weight" else f"default {lim.io_weight}"
        w("io", features.weight_file, value, False)
    if lim.io_device is not None:
        def v(n: int) -> str:
            return str(n) if n else V2_UNLIMITED

        bps, iops = v(lim.io_bps), v(lim.io_iops)
        w("io", "io.max", f"{lim.io_device} rbps={bps} wbps={bps} riops={iops} wiops={iops}", False)
    return out
