"""OpenVZ user beancounters rebuilt on mainline kernels: held, maxheld, barrier, limit and failcnt
of every resource of a container, from its cgroup counters, /proc and its configuration.

- `compute` is pure: (config, counters, process stats, baseline) -> rows. Table-tested.
- Fail counters only grow in the kernel. `--reset_ub` zeroes those the kernel lets us zero (cgroup
  v1 memory, memsw and kmem failcnt) and records a baseline for the others (pids.events, OOM kills,
  v2 memory.events...), persisted per container under the node's run directory and subtracted
  from then on. The same file keeps the sampled maxheld of resources the kernel has no peak for.
  Both are tied to one run of the container (its init's PID and start time): a restart starts
  from zero, as the kernel's own counters do.
- `Accountant` binds it to a node (layout, cgroup hierarchies); the agent installs one at start.
- `read_node_facts` gives the node's capacity (RAM, swap, CPUs, disk) to the capacity tools.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from agent import cgroups
from agent.cgroups import apply as cgapply
from agent.cgroups import counters as cgcounters
from agent.cgroups.counters import Counters
from agent.cgroups.hierarchy import CgroupFS, detect
from agent.config.conffile import ConfFile, ConfigError
from agent.config.params import PAGE_SIZE, ContainerConfig
from agent.layout import NodeLayout
from agent.runtime.limits import agent_hard_limits

log = logging.getLogger(__name__)

LONG_MAX = 2**63 - 1  # how /proc/user_beancounters shows "unlimited"

# OpenVZ's /proc/user_beancounters order (VSwap kernels), with each resource's unit
RESOURCES: tuple[tuple[str, str], ...] = (
    ("kmemsize", "bytes"), ("lockedpages", "pages"), ("privvmpages", "pages"), ("shmpages", "pages"),
    ("numproc", "count"), ("physpages", "pages"), ("vmguarpages", "pages"), ("oomguarpages", "pages"),
    ("numtcpsock", "count"), ("numflock", "count"), ("numpty", "count"), ("numsiginfo", "count"),
    ("tcpsndbuf", "bytes"), ("tcprcvbuf", "bytes"), ("othersockbuf", "bytes"), ("dgramrcvbuf", "bytes"),
    ("numothersock", "count"), ("dcachesize", "bytes"), ("numfile", "count"), ("numiptent", "count"),
    ("swappages", "pages"),
)
UNITS: dict[str, str] = dict(RESOURCES)


@dataclass(frozen=True)
class Beancounter:
    """One line of /proc/user_beancounters. Amounts in the resource's unit (pages, bytes or a
    count); barrier / limit None = unlimited."""

    resource: str
    held: int
    maxheld: int
    barrier: int | None
    limit: int | None
    failcnt: int
    unit: str


@dataclass(frozen=True)
class ProcessStats:
    """What /proc tells about the container's processes and network namespace."""

    numfile: int = 0  # open file descriptors
    privvm_bytes: int = 0  # private writable memory (VmData + VmStk)
    locked_bytes: int = 0  # mlock()ed memory (VmLck)
    numtcpsock: int = 0  # TCP sockets, TIME_WAIT excluded
    numothersock: int = 0  # UDP, raw and unix sockets
    tcp_tx: int = 0  # bytes queued to send on TCP sockets
    tcp_rx: int = 0  # bytes queued to read on TCP sockets
    other_tx: int = 0  # bytes queued on other sockets
    dgram_rx: int = 0  # bytes queued to read on UDP sockets
    numpty: int = 0
    numflock: int = 0


@dataclass(frozen=True)
class Baseline:
    """Per container run: fail counter baselines (subtracted) and sampled maxheld values."""

    instance: str = ""
    failcnt: Mapping[str, int] = field(default_factory=dict)
    maxheld: Mapping[str, int] = field(default_factory=dict)


def _pages(n: int | None) -> int:
    return 0 if n is None else -(-n // PAGE_SIZE)


def _config_pair(cfg: ContainerConfig, resource: str) -> tuple[int | None, int | None]:
    """(barrier, limit) in the resource's unit; (None, None) when unset (unlimited)."""
    pair = cfg.beancounters.get(resource)
    if pair is None:
        return None, None
    if UNITS[resource] == "pages":
        return tuple(None if v is None else _pages(v) for v in pair)  # type: ignore[return-value]
    return pair


def _held(resource: str, c: Counters | None, s: ProcessStats | None) -> int:
    if c is None or s is None:
        return 0
    values: dict[str, int | None] = {
        "kmemsize": c.kmem,
        "lockedpages": _pages(s.locked_bytes),
        "privvmpages": _pages(s.privvm_bytes),
        "shmpages": _pages(c.shmem),
        "numproc": c.pids,
        "physpages": _pages(c.memory),
        "vmguarpages": 0,  # a guarantee: OpenVZ shows 0 held too
        "oomguarpages": _pages((c.memory or 0) + (c.swap or 0)),
        "numtcpsock": s.numtcpsock,
        "numflock": s.numflock,
        "numpty": s.numpty,
        "numsiginfo": 0,
        "tcpsndbuf": s.tcp_tx,
        "tcprcvbuf": s.tcp_rx,
        "othersockbuf": s.other_tx,
        "dgramrcvbuf": s.dgram_rx,
        "numothersock": s.numothersock,
        "dcachesize": c.slab_reclaimable,
        "numfile": s.numfile,
        "numiptent": 0,
        "swappages": _pages(c.swap),
    }
    return values.get(resource) or 0


def _kernel_peak(resource: str, c: Counters | None) -> int | None:
    if c is None:
        return None
    return {
        "physpages": None if c.memory_peak is None else _pages(c.memory_peak),
        "kmemsize": c.kmem_peak,
        "numproc": c.pids_peak,
        "swappages": None if c.swap_peak is None else _pages(c.swap_peak),
    }.get(resource)


def raw_failcnts(c: Counters | None) -> dict[str, int]:
    """The kernel's fail counters by resource (those it keeps; the others are 0)."""
    if c is None:
        return {}
    raw = {"physpages": c.memory_failcnt, "swappages": c.swap_failcnt, "kmemsize": c.kmem_failcnt,
           "numproc": c.pids_failcnt, "oomguarpages": c.oom_kills}
    return {k: v for k, v in raw.items() if v is not None}


def compute(cfg: ContainerConfig, c: Counters | None, s: ProcessStats | None,
            base: Baseline) -> tuple[list[Beancounter], Baseline]:
    """Every beancounter of a container (held etc. are 0 when it is not running: `c` None), and
    the baseline updated with the maxheld values sampled now."""
    raw = raw_failcnts(c)
    rows = []
    sampled = dict(base.maxheld)
    for resource, unit in RESOURCES:
        held = _held(resource, c, s)
        peak = _kernel_peak(resource, c)
        if peak is None:
            peak = max(sampled.get(resource, 0), held)
            if c is not None and peak:
                sampled[resource] = peak
        barrier, limit = _config_pair(cfg, resource)
        if c is not None and resource in ("numproc", "physpages"):
            # the kernel's limit is the truth (a `vzctl set` without --save changes only the kernel)
            limit = c.pids_limit if resource == "numproc" else \
                (None if c.memory_limit is None else _pages(c.memory_limit))
            if limit is not None and (barrier is None or barrier > limit):
                barrier = limit
        failcnt = max(0, raw.get(resource, 0) - base.failcnt.get(resource, 0))
        rows.append(Beancounter(resource, held, max(peak, held), barrier, limit, failcnt, unit))
    return rows, replace(base, maxheld=sampled)


def reset_baseline(c: Counters | None, zeroed: Iterable[str], instance: str, old: Baseline) -> Baseline:
    """The baseline after `--reset_ub`: the current kernel counters (0 for those just zeroed)."""
    raw = raw_failcnts(c)
    zero = set(zeroed)
    resettable = {"physpages": "memory.failcnt", "swappages": "memory.memsw.failcnt",
                  "kmemsize": "memory.kmem.failcnt"}
    failcnt = {r: (0 if resettable.get(r) in zero else v) for r, v in raw.items()}
    maxheld = dict(old.maxheld) if old.instance == instance else {}
    return Baseline(instance, failcnt, maxheld)


# ---- /proc -----------------------------------------------------------------------------------------


def _status_kb(text: str, key: str) -> int:
    for line in text.splitlines():
        if line.startswith(key + ":"):
            parts = line.split()
            with contextlib.suppress(IndexError, ValueError):
                return int(parts[1]) * 1024
    return 0


def parse_net_table(text: str, tcp: bool) -> tuple[int, int, int]:
    """(sockets, tx queued, rx queued) from /proc/net/{tcp,tcp6,udp,udp6,raw,raw6}; TCP sockets in
    TIME_WAIT (state 06) belong to no process and are not counted."""
    n = tx = rx = 0
    for line in text.splitlines()[1:]:
        parts = line.split()
        if len(parts) < 5:
            continue
        if tcp and parts[3] == "06":
            continue
        n += 1
        t, _, r = parts[4].partition(":")
        with contextlib.suppress(ValueError):
            tx += int(t, 16)
            rx += int(r, 16)
    return n, tx, rx


def parse_locks(text: str, pids: set[int]) -> int:
    """File locks held (not waited for) by `pids`, from /proc/locks."""
    n = 0
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 5 or parts[1] == "->":
            continue
        with contextlib.suppress(ValueError):
            if int(parts[4]) in pids:
                n += 1
    return n


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def scan_processes(pids: list[int], init_pid: int) -> ProcessStats:
    """Per-process and network-namespace statistics of a running container (host PIDs)."""
    numfile = privvm = locked = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            numfile += len(os.listdir(f"/proc/{pid}/fd"))
        status = _read(f"/proc/{pid}/status")
        privvm += _status_kb(status, "VmData") + _status_kb(status, "VmStk")
        locked += _status_kb(status, "VmLck")
    net = f"/proc/{init_pid}/net"
    tcp = [parse_net_table(_read(f"{net}/{t}"), True) for t in ("tcp", "tcp6")]
    udp = [parse_net_table(_read(f"{net}/{t}"), False) for t in ("udp", "udp6")]
    raw = [parse_net_table(_read(f"{net}/{t}"), False) for t in ("raw", "raw6")]
    unix = max(0, len(_read(f"{net}/unix").splitlines()) - 1)
    try:
        numpty = len([e for e in os.listdir(f"/proc/{init_pid}/root/dev/pts") if e.isdigit()])
    except OSError:
        numpty = 0
    return ProcessStats(
        numfile=numfile,
        privvm_bytes=privvm,
        locked_bytes=locked,
        numtcpsock=sum(t[0] for t in tcp),
        numothersock=sum(u[0] for u in udp) + sum(r[0] for r in raw) + unix,
        tcp_tx=sum(t[1] for t in tcp),
        tcp_rx=sum(t[2] for t in tcp),
        other_tx=sum(u[1] for u in udp) + sum(r[1] for r in raw),
        dgram_rx=sum(u[2] for u in udp),
        numpty=numpty,
        numflock=parse_locks(_read("/proc/locks"), set(pids)),
    )


def instance_of(init_pid: int) -> str:
    """Identifies one run of a container: its init's PID and start time (PIDs are reused)."""
    fields = _read(f"/proc/{init_pid}/stat").rsplit(")", 1)[-1].split()
    start = fields[19] if len(fields) > 19 else "?"
    return f"{init_pid}:{start}"


# ---- persistence and the node's accountant -----------------------------------------------------------


class BaselineStore:
    """One small JSON file per container under RUN_DIR/beancounters (gone after a reboot, with
    the containers' runs it describes)."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory

    def _path(self, ctid: int) -> Path:
        return self.dir / f"{ctid}.json"

    def load(self, ctid: int, instance: str) -> Baseline:
        """The container's baseline for this run (an empty one for a new run)."""
        try:
            data = json.loads(self._path(ctid).read_text())
        except (OSError, ValueError):
            return Baseline(instance)
        if not isinstance(data, dict) or data.get("instance") != instance:
            return Baseline(instance)

        def ints(key: str) -> dict[str, int]:
            value = data.get(key)
            if not isinstance(value, dict):
                return {}
            return {k: v for k, v in value.items() if isinstance(k, str) and isinstance(v, int)}

        return Baseline(instance, ints("failcnt"), ints("maxheld"))

    def save(self, ctid: int, base: Baseline) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self._path(ctid)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps({"instance": base.instance, "failcnt": dict(base.failcnt),
                                   "maxheld": dict(base.maxheld)}))
        os.replace(tmp, path)


class Accountant:
    """The beancounters of one node's containers."""

    def __init__(self, layout: NodeLayout, fs: CgroupFS | None = None) -> None:
        self.layout = layout
        self.fs = fs or detect()
        self.store = BaselineStore(layout.run_dir / "beancounters")

    def beancounters(self, ctid: int, cfg: ContainerConfig, init_pid: int) -> list[Beancounter]:
        """Every beancounter of container ctid; `init_pid` 0 = not running (limits only)."""
        if not init_pid:
            return compute(cfg, None, None, Baseline())[0]
        cgpath = self.layout.cgroup_path(ctid)
        counters = cgcounters.read(self.fs, cgpath)
        if counters is None:
            return compute(cfg, None, None, Baseline())[0]
        stats = scan_processes(cgroups.procs(cgpath), init_pid)
        instance = instance_of(init_pid)
        base = self.store.load(ctid, instance)
        rows, new = compute(cfg, counters, stats, base)
        if new != base:
            try:
                self.store.save(ctid, new)
            except OSError as e:  # accounting must never break a listing
                log.warning("cannot save beancounter state of %d: %s", ctid, e)
        return rows

    def reset(self, ctid: int, init_pid: int) -> list[str]:
        """`vzctl set --reset_ub`: fail counters read 0 from now on. Returns what was done."""
        cgpath = self.layout.cgroup_path(ctid)
        zeroed = cgapply.reset_failcnt(self.fs, cgpath)
        counters = cgcounters.read(self.fs, cgpath)
        instance = instance_of(init_pid)
        old = self.store.load(ctid, instance)
        self.store.save(ctid, reset_baseline(counters, zeroed, instance, old))
        done = [f"zeroed {', '.join(zeroed)}"] if zeroed else []
        return [*done, "fail counters reset (the kernel's own counters are kept as a baseline)"]


_installed: dict[str, Accountant] = {}


def install(accountant: Accountant) -> None:
    """Make `accountant` the one of its node (done once by the agent at start)."""
    _installed[accountant.layout.node] = accountant


def for_node(node: str) -> Accountant | None:
    return _installed.get(node)


# ---- the node's capacity -------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeFacts:
    """What the capacity tools (vzsplit, vzcalc, vzmemcheck, vzcpucheck, vzcfgvalidate) need."""

    node: str
    ram_bytes: int
    swap_bytes: int
    cpus: int
    bogomips: float
    cpu_power: int  # OpenVZ's "power of the node" in cpuunits: 25 x total BogoMIPS
    ve0_cpuunits: int  # the host's own share (vz.conf VE0CPUUNITS)
    threads_max: int
    pid_max: int
    disk_total_bytes: int  # the filesystem of the private areas
    disk_free_bytes: int
    inodes_total: int
    inodes_free: int
    private_dir: str
    conf_dir: str
    cgroup_version: int
    nofile_hard: int
    memlock_hard: int


def parse_meminfo(text: str) -> tuple[int, int]:
    """(MemTotal, SwapTotal) in bytes."""
    values = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            values[key.strip()] = int(parts[0]) * 1024
    return values.get("MemTotal", 0), values.get("SwapTotal", 0)


def parse_bogomips(text: str) -> float:
    """Total BogoMIPS of /proc/cpuinfo (x86 "bogomips", arm "BogoMIPS")."""
    total = 0.0
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() == "bogomips":
            with contextlib.suppress(ValueError):
                total += float(value)
    return total


def cpu_power(bogomips: float, cpus: int) -> int:
    """OpenVZ's node power in cpuunits (vzsplit used 25 x BogoMIPS); 100000 per CPU without BogoMIPS."""
    return round(bogomips * 25) if bogomips > 0 else cpus * 100_000


def _int_file(path: str, default: int) -> int:
    try:
        return int(_read(path).split()[0])
    except (IndexError, ValueError):
        return default


def read_node_facts(layout: NodeLayout) -> NodeFacts:
    ram, swap = parse_meminfo(_read("/proc/meminfo"))
    cpus = os.cpu_count() or 1
    bogo = parse_bogomips(_read("/proc/cpuinfo"))
    ve0 = 1000
    with contextlib.suppress(OSError, ConfigError, ValueError, TypeError):
        ve0 = int(ConfFile.load(layout.vz_conf).get("VE0CPUUNITS") or 1000)
    try:
        st = os.statvfs(layout.private_dir)
        disk = (st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize, st.f_files, st.f_favail)
    except OSError:
        disk = (0, 0, 0, 0)
    hard = agent_hard_limits()
    return NodeFacts(
        node=layout.node, ram_bytes=ram, swap_bytes=swap, cpus=cpus, bogomips=bogo,
        cpu_power=cpu_power(bogo, cpus), ve0_cpuunits=ve0,
        threads_max=_int_file("/proc/sys/kernel/threads-max", 32768),
        pid_max=_int_file("/proc/sys/kernel/pid_max", 32768),
        disk_total_bytes=disk[0], disk_free_bytes=disk[1], inodes_total=disk[2], inodes_free=disk[3],
        private_dir=str(layout.private_dir), conf_dir=str(layout.conf_dir),
        cgroup_version=detect().version,
        nofile_hard=hard["RLIMIT_NOFILE"], memlock_hard=hard["RLIMIT_MEMLOCK"],
    )


RESET_UB = "reset-ub"


def split_reset_ub(params: Iterable[tuple[str, str]]) -> tuple[list[tuple[str, str]], bool]:
    """`vzctl set --reset_ub` arrives as a parameter: (the other parameters, whether it was there)."""
    given = list(params)
    rest = [(n, v) for n, v in given if n.replace("_", "-").lstrip("-") != RESET_UB]
    return rest, len(rest) != len(given)
