"""Pure: the arithmetic of the capacity and checking tools (vzsplit, vzcalc, vzmemcheck, vzcpucheck,
vzcfgvalidate) and their output, from plain data. Table-tested; the commands only fetch and print.

Formulas (docs/resources.md says the same for users):

- memory: RAM and RAM+swap of the node; "low memory" is 40 % of RAM, as OpenVZ counted kernel
  memory against it; an unlimited parameter promises the whole node (so commitments add up to
  more than 100 % when containers are unlimited: that is what overcommitment means);
- CPU: OpenVZ's "power of the node" in cpuunits is 25 x the node's BogoMIPS; a running container
  with U cpuunits is guaranteed U / power of the node while the running containers (plus the
  host's VE0CPUUNITS) add up to no more than the power.

The offline config reader (`read_conf`) exists because vzcfgvalidate must work without an agent and
the cli package cannot import the agent's config layer: it reads the shell-style KEY="value" lines
the agent writes, and nothing more.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

PAGE = 4096
MIB = 1 << 20
LONG_MAX = 2**63 - 1
LOWMEM_SHARE = 0.4  # of RAM, as OpenVZ's tools count kernel memory
HOST_RESERVE_MIN = 256 * MIB  # RAM vzsplit keeps for the host: at least this...
HOST_RESERVE_SHARE = 0.05  # ...or this share of RAM
HOST_DISK_RESERVE = 10 * (1 << 30)  # OpenVZ vzsplit: 10 GB of the private areas' disk for the host
HOST_INODES_RESERVE = 100_000
KERNEL_BUF = ("kmemsize", "tcpsndbuf", "tcprcvbuf", "othersockbuf", "dgramrcvbuf")

# config key -> unit of its plain numbers: pages (4 KiB), bytes, count, kblocks (1 KiB, disk)
PAIR_KEYS: dict[str, str] = {
    "PHYSPAGES": "pages", "SWAPPAGES": "pages", "PRIVVMPAGES": "pages", "SHMPAGES": "pages",
    "LOCKEDPAGES": "pages", "VMGUARPAGES": "pages", "OOMGUARPAGES": "pages",
    "KMEMSIZE": "bytes", "TCPSNDBUF": "bytes", "TCPRCVBUF": "bytes", "OTHERSOCKBUF": "bytes",
    "DGRAMRCVBUF": "bytes", "DCACHESIZE": "bytes",
    "NUMPROC": "count", "AVNUMPROC": "count", "NUMFILE": "count", "NUMFLOCK": "count", "NUMPTY": "count",
    "NUMSIGINFO": "count", "NUMTCPSOCK": "count", "NUMOTHERSOCK": "count", "NUMIPTENT": "count",
    "DISKSPACE": "kblocks", "DISKINODES": "count",
}
UNIT_BYTES = {"pages": PAGE, "bytes": 1, "count": 1, "kblocks": 1024}
NOT_ENFORCEABLE = ("KMEMSIZE", "TCPSNDBUF", "TCPRCVBUF", "OTHERSOCKBUF", "DGRAMRCVBUF", "DCACHESIZE",
                   "NUMTCPSOCK", "NUMOTHERSOCK", "NUMFLOCK", "NUMSIGINFO", "NUMIPTENT")

Pair = tuple[int | None, int | None]


# ---- plain data the commands fill from the agent's replies --------------------------------------


@dataclass(frozen=True)
class Node:
    """A node's capacity (ResourceService.Node)."""

    name: str = ""
    ram: int = 0
    swap: int = 0
    cpus: int = 1
    cpu_power: int = 100_000
    ve0_cpuunits: int = 1000
    threads_max: int = 32768
    pid_max: int = 32768
    disk_total: int = 0
    disk_free: int = 0
    inodes_total: int = 0
    inodes_free: int = 0
    nofile_hard: int = LONG_MAX
    memlock_hard: int = LONG_MAX
    conf_dir: str = ""
    private_dir: str = ""


@dataclass(frozen=True)
class BC:
    """One beancounter; amounts in its unit (pages, bytes or count); None = unlimited."""

    held: int = 0
    maxheld: int = 0
    barrier: int | None = None
    limit: int | None = None
    failcnt: int = 0
    unit: str = "count"


@dataclass(frozen=True)
class Container:
    ctid: int
    status: str = "running"
    bc: Mapping[str, BC] = field(default_factory=dict)
    cpuunits: int = 1000
    cpulimit: int = 0
    cpus: int = 0

    @property
    def running(self) -> bool:
        return self.status == "running"

    def get(self, name: str) -> BC:
        return self.bc.get(name, BC())


def _bytes(bc: BC, value: int | None) -> int | None:
    return None if value is None else value * (PAGE if bc.unit == "pages" else 1)


def held_bytes(c: Container, name: str) -> int:
    b = c.get(name)
    return (_bytes(b, b.held) or 0)


def limit_bytes(c: Container, name: str) -> int | None:
    b = c.get(name)
    return _bytes(b, b.limit)


def barrier_bytes(c: Container, name: str) -> int | None:
    b = c.get(name)
    return _bytes(b, b.barrier)


def _cap(value: int | None, whole: float) -> float:
    """An amount promised out of `whole`; unlimited promises all of it."""
    return whole if value is None else min(float(value), whole)


def _min_opt(*values: int | None) -> int | None:
    finite = [v for v in values if v is not None]
    return min(finite) if finite else None


def _sum_opt(values: Iterable[int | None]) -> int | None:
    total = 0
    for v in values:
        if v is None:
            return None
        total += v
    return total


# ---- vzmemcheck ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MemUse:
    """A container's memory use and commitment, in bytes (`as_fractions` divides by the node)."""

    lowmem_util: float
    lowmem_commit: float
    ram_util: float
    memswap_util: float
    memswap_commit: float
    alloc_util: float
    alloc_commit: float
    alloc_limit: float

    def values(self) -> tuple[float, ...]:
        return (self.lowmem_util, self.lowmem_commit, self.ram_util, self.memswap_util, self.memswap_commit,
                self.alloc_util, self.alloc_commit, self.alloc_limit)


def mem_use(c: Container, node: Node) -> MemUse:
    """Usage and commitment of one container in bytes, each capped at what the node has."""
    lowmem = node.ram * LOWMEM_SHARE
    total = float(node.ram + node.swap)
    kernel_held = sum(held_bytes(c, n) for n in KERNEL_BUF)
    ram_limit, swap_limit = limit_bytes(c, "physpages"), limit_bytes(c, "swappages")
    # kernel memory and socket buffers are charged to the container's RAM limit on mainline kernels
    kernel_limit = _min_opt(_sum_opt(limit_bytes(c, n) for n in KERNEL_BUF), ram_limit)
    memsw = None if ram_limit is None or swap_limit is None else ram_limit + swap_limit
    return MemUse(
        lowmem_util=float(kernel_held),
        lowmem_commit=_cap(kernel_limit, lowmem),
        ram_util=float(held_bytes(c, "physpages")),
        memswap_util=float(held_bytes(c, "physpages") + held_bytes(c, "swappages")),
        memswap_commit=_cap(memsw, total),
        alloc_util=float(held_bytes(c, "privvmpages")),
        # allocations are capped by privvmpages and by RAM + swap, whichever is lower
        alloc_commit=_cap(_min_opt(barrier_bytes(c, "privvmpages"), memsw), total),
        alloc_limit=_cap(_min_opt(limit_bytes(c, "privvmpages"), memsw), total),
    )


def as_percent(m: MemUse, node: Node) -> tuple[float, ...]:
    lowmem = node.ram * LOWMEM_SHARE or 1
    ram = node.ram or 1
    total = (node.ram + node.swap) or 1
    denominators = (lowmem, lowmem, ram, total, total, total, total, total)
    return tuple(100 * v / d for v, d in zip(m.values(), denominators, strict=True))


def as_mbytes(m: MemUse) -> tuple[float, ...]:
    return tuple(v / MIB for v in m.values())


def render_memcheck(cts: Sequence[Container], node: Node, *, verbose: bool, absolute: bool) -> str:
    """vzmemcheck's output: a header, a line per running container with -v, the summary."""
    lines = ["Output values in Mbytes" if absolute else "Output values in %"]
    pad = "CTID       " if verbose else ""
    lines.append(f"{pad} LowMem  LowMem     RAM MemSwap MemSwap   Alloc   Alloc   Alloc")
    lines.append(f"{' ' * len(pad)}   util  commit    util    util  commit    util  commit   limit")
    totals = [0.0] * 8

    def fmt(values: Sequence[float]) -> str:
        return " ".join(f"{v:7.2f}" for v in values)

    for c in cts:
        if not c.running:
            continue
        m = mem_use(c, node)
        vals = as_mbytes(m) if absolute else as_percent(m, node)
        totals = [t + v for t, v in zip(totals, vals, strict=True)]
        if verbose:
            lines.append(f"{c.ctid:<10} {fmt(vals)}")
    if verbose:
        lines.append("-" * 74)
    lines.append(("Summary:   " if verbose else "") + fmt(totals))
    if absolute:
        lowmem, ram, total = node.ram * LOWMEM_SHARE / MIB, node.ram / MIB, (node.ram + node.swap) / MIB
        lines.append((" " * 11 if verbose else "") + fmt((lowmem, lowmem, ram, total, total, total, total, total)))
    return "\n".join(lines) + "\n"


# ---- vzcalc ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CalcRow:
    name: str
    current: float | None  # percent; None = n/a
    promised: float | None
    max: float | None


def calc(c: Container, node: Node) -> list[CalcRow]:
    """vzcalc's rows: how much of the node the container uses now, is promised, may use at most."""
    m = mem_use(c, node)
    lowmem = node.ram * LOWMEM_SHARE or 1
    total = float(node.ram + node.swap) or 1
    ram = float(node.ram) or 1
    run = c.running
    nproc_limit = c.get("numproc").limit
    threads = float(node.threads_max) or 1
    np_max = 100 * _cap(nproc_limit, threads) / threads
    rows = [
        CalcRow("Low Mem", 100 * m.lowmem_util / lowmem if run else None, 100 * m.lowmem_commit / lowmem,
                100 * m.lowmem_commit / lowmem),
        CalcRow("Total RAM", 100 * m.ram_util / ram if run else None, None, None),
        CalcRow("Mem + Swap", 100 * m.memswap_util / total if run else None, 100 * m.memswap_commit / total, None),
        CalcRow("Alloc. Mem", 100 * m.alloc_util / total if run else None, 100 * m.alloc_commit / total,
                100 * m.alloc_limit / total),
        CalcRow("Num. Proc", 100 * c.get("numproc").held / threads if run else None, None, np_max),
    ]
    return rows


def render_calc(c: Container, node: Node, *, verbose: bool) -> str:
    rows = calc(c, node)

    def cell(v: float | None) -> str:
        return f"{'n/a':>10}" if v is None else f"{v:10.2f}"

    lines = ["Resource     Current(%)  Promised(%)  Max(%)"]
    if verbose:
        lines += [f"{r.name:<10} {cell(r.current)} {cell(r.promised)} {cell(r.max)}" for r in rows]
        lines.append("-" * 44)

    def top(values: Iterable[float | None]) -> float:
        return max((v for v in values if v is not None), default=0.0)

    current = top(r.current for r in rows) if c.running else None
    lines.append(f"{'Memory':<10} {cell(current)} {cell(top(r.promised for r in rows))} "
                 f"{cell(top(r.max for r in rows))}")
    return "\n".join(lines) + "\n"


# ---- vzcpucheck ------------------------------------------------------------------------------------


def cpu_utilization(cts: Sequence[Container], node: Node) -> int:
    """Sum of the cpuunits of the running containers and of the host (VE0CPUUNITS)."""
    return node.ve0_cpuunits + sum(c.cpuunits for c in cts if c.running)


def render_cpucheck(cts: Sequence[Container], node: Node, *, verbose: bool) -> str:
    lines = []
    if verbose:
        lines.append(f"{'CTID':<10}{'CPUUNITS':>10}")
        lines.append("-" * 25)
        lines.append(f"{0:<10}{node.ve0_cpuunits:>10}")
        lines += [f"{c.ctid:<10}{c.cpuunits:>10}" for c in cts if c.running]
    used = cpu_utilization(cts, node)
    lines.append(f"Current CPU utilization: {used}")
    lines.append(f"Power of the node: {node.cpu_power}")
    if used > node.cpu_power:
        lines.append("Warning: hardware node is overcommitted: containers are promised more CPU than it has")
    return "\n".join(lines) + "\n"


# ---- amounts in config files ---------------------------------------------------------------------

_AMOUNT = re.compile(r"([0-9]+)(?:\.([0-9]+))?([A-Za-z]*)")
_SUFFIX = {"b": 1}
for _i, _c in enumerate("kmgtp", start=1):
    for _form in (_c, _c + "b", _c + "ib"):
        _SUFFIX[_form] = 1024**_i


def parse_amount(text: str, unit: str) -> int | None:
    """An amount in bytes (or a count): plain numbers in `unit`, sizes with K/M/G/T/P suffixes
    (not for counts), ``unlimited`` (and LONG_MAX) -> None. Raises ValueError with a reason."""
    s = text.strip()
    if s.lower() == "unlimited":
        return None
    m = _AMOUNT.fullmatch(s)
    if m is None:
        raise ValueError(f"{text!r} is not a number, a size such as 512M, or unlimited")
    whole, frac, suffix = m.groups()
    if suffix:
        if unit == "count":
            raise ValueError(f"{text!r}: a count takes no size suffix")
        mult = _SUFFIX.get(suffix.lower())
        if mult is None:
            raise ValueError(f"{text!r}: unknown size suffix {suffix!r}")
    else:
        if frac is not None:
            raise ValueError(f"{text!r}: a fraction needs a size suffix")
        if int(whole) >= LONG_MAX:
            return None
        mult = UNIT_BYTES[unit]
    value = math.floor(Fraction(f"{whole}.{frac or 0}") * mult)
    return None if value >= LONG_MAX else value


def parse_pair(text: str, unit: str) -> Pair:
    parts = text.split(":")
    if len(parts) > 2:
        raise ValueError(f"{text!r}: expected barrier[:limit]")
    barrier = parse_amount(parts[0], unit)
    limit = barrier if len(parts) == 1 else parse_amount(parts[1], unit)
    return barrier, limit


def format_amount(value: int | None, unit: str) -> str:
    """How a repaired value is written back: sizes as whole MiB/GiB when exact, else in `unit`."""
    if value is None:
        return "unlimited"
    if unit == "count":
        return str(value)
    for power, letter in ((4, "T"), (3, "G"), (2, "M")):
        if value > 0 and value % (1024**power) == 0:
            return f"{value // 1024**power}{letter}"
    return str(-(-value // UNIT_BYTES[unit]))


def format_pair(pair: Pair, unit: str) -> str:
    if pair == (None, None):
        return "unlimited"
    return f"{format_amount(pair[0], unit)}:{format_amount(pair[1], unit)}"


# ---- config files --------------------------------------------------------------------------------

_LINE = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$")


def _unquote(raw: str) -> str:
    s = raw.strip()
    if len(s) >= 2 and s[0] == s[-1] and s[0] in "\"'":
        return s[1:-1]
    return s.split("#", 1)[0].strip()


def read_conf(text: str) -> dict[str, str]:
    """KEY -> value of a CTID.conf / sample (the last assignment wins, as the shell does)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        m = _LINE.match(line)
        if m:
            out[m.group(1)] = _unquote(m.group(2))
    return out


def set_conf(text: str, changes: Mapping[str, str]) -> str:
    """The config text with each KEY="value" of `changes` replaced in place (appended when absent);
    comments and every other line are kept."""
    lines = text.splitlines()
    done: set[str] = set()
    for i, line in enumerate(lines):
        m = _LINE.match(line)
        if m and m.group(1) in changes and not line.lstrip().startswith("#"):
            key = m.group(1)
            lines[i] = f'{key}="{changes[key]}"'
            done.add(key)
    lines += [f'{k}="{v}"' for k, v in changes.items() if k not in done]
    return "\n".join(lines) + "\n"


# ---- vzcfgvalidate ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    level: str  # "Error", "Warning", "Recommendation"
    message: str
    fix: tuple[str, str] | None = None  # (KEY, new value) that repairs it

    def __str__(self) -> str:
        return f"{self.level}: {self.message}"


def _mb(n: int) -> str:
    return f"{n / MIB:.0f} MB"


def _cpu_ids(text: str) -> list[int]:
    ids: list[int] = []
    for item in text.split(","):
        lo, _, hi = item.strip().partition("-")
        if lo.isdigit():
            ids += list(range(int(lo), int(hi) + 1)) if hi.isdigit() else [int(lo)]
    return ids


def validate(conf: Mapping[str, str], node: Node | None) -> list[Finding]:
    """Consistency of a container config with itself and, when `node` is given, with the node.

    Errors make the config invalid (vzcfgvalidate exits 2); warnings and recommendations do not.
    A finding with a `fix` can be repaired (-r / -i).
    """
    out: list[Finding] = []
    pairs: dict[str, Pair] = {}
    for key, unit in PAIR_KEYS.items():
        raw = conf.get(key)
        if raw is None or not raw.strip():
            continue
        try:
            pairs[key] = parse_pair(raw, unit)
        except ValueError as e:
            out.append(Finding("Error", f"invalid value for {key}: {e}"))

    def pair(key: str) -> Pair:
        return pairs.get(key, (None, None))

    def name(key: str) -> str:
        return key.lower()

    def show(key: str, p: Pair) -> str:
        return format_pair(p, PAIR_KEYS[key])

    def fix(key: str, p: Pair) -> tuple[str, str]:
        return key, show(key, p)

    # 1. each barrier:limit pair on its own
    for key, (b, lim) in pairs.items():
        if lim is not None and (b is None or b > lim):
            out.append(Finding("Error", f"barrier should be <= limit for {name(key)} "
                                        f"(currently, {show(key, (b, lim))})", fix(key, (b, b))))
    b, lim = pair("NUMPROC")
    if b != lim and lim is not None and b is not None and b <= lim:
        out.append(Finding("Warning", f"only the limit of numproc is enforced; barrier should be equal to limit "
                                      f"(currently, {show('NUMPROC', (b, lim))})", fix("NUMPROC", (lim, lim))))
    for key in ("VMGUARPAGES", "OOMGUARPAGES"):
        if key in pairs and pairs[key][1] is not None:
            out.append(Finding("Warning", f"limit should be unlimited for {name(key)} (currently, "
                                          f"{show(key, pairs[key])})", fix(key, (pairs[key][0], None))))
    phys_b, phys_l = pair("PHYSPAGES")
    if phys_b:
        out.append(Finding("Recommendation", f"the barrier of physpages is not used; set it to 0 (currently, "
                                             f"{show('PHYSPAGES', (phys_b, phys_l))})", fix("PHYSPAGES", (0, phys_l))))
    if phys_l is None:
        out.append(Finding("Recommendation", "physpages (RAM) is unlimited: the container may use all of the node's "
                                             "memory; set a limit with --ram"))

    # 2. parameters against each other
    priv_l = pair("PRIVVMPAGES")[1]
    if priv_l is not None and phys_l is not None and priv_l < phys_l:
        out.append(Finding("Warning", f"the privvmpages limit ({_mb(priv_l)}) is below the RAM limit "
                                      f"({_mb(phys_l)}): it caps memory+swap, so the container gets only "
                                      f"{_mb(priv_l)}"))
    shm_l = pair("SHMPAGES")[1]
    if shm_l is not None and phys_l is not None and shm_l > phys_l:
        out.append(Finding("Recommendation", f"the shmpages limit ({_mb(shm_l)}) is above the RAM limit "
                                             f"({_mb(phys_l)}); /dev/shm cannot be filled"))
    av = pair("AVNUMPROC")[0]
    nfile_b, nfile_l = pair("NUMFILE")
    if av is not None and nfile_b is not None and nfile_b < av * 32:
        want = av * 32  # OpenVZ: 32 files per average process
        out.append(Finding("Warning", f"numfile should be > {want} (currently, {nfile_b})",
                           fix("NUMFILE", (want, None if nfile_l is None else max(want, nfile_l)))))
    for key in NOT_ENFORCEABLE:
        if key in pairs and pairs[key] != (None, None):
            out.append(Finding("Recommendation", f"{name(key)} is not enforceable on mainline kernels "
                                                 f"(it is only accounted); consider unlimited"))

    # 3. scalars
    ints: dict[str, int] = {}
    for key in ("CPUUNITS", "CPULIMIT", "CPUS"):
        raw = conf.get(key, "").strip()
        if not raw:
            continue
        text = raw.removesuffix("%") if key == "CPULIMIT" else raw
        if text.lower() == "unlimited" and key == "CPUS":
            continue
        if not text.isdigit():
            out.append(Finding("Error", f"invalid value for {key}: {raw!r} is not a whole number"))
            continue
        ints[key] = int(text)
    units = ints.get("CPUUNITS")
    if units is not None and not 8 <= units <= 500_000:
        out.append(Finding("Error", f"cpuunits should be within 8..500000 (currently, {units})",
                           ("CPUUNITS", str(min(500_000, max(8, units))))))

    # 4. against the node
    if node is not None:
        if phys_l is not None and node.ram and phys_l > node.ram:
            out.append(Finding("Error", f"the physpages limit ({_mb(phys_l)}) exceeds the node's RAM "
                                        f"({_mb(node.ram)})", fix("PHYSPAGES", (phys_b or 0, node.ram))))
        swap_b, swap_l = pair("SWAPPAGES")
        if swap_l is not None and swap_l > node.swap:
            out.append(Finding("Warning", f"the swappages limit ({_mb(swap_l)}) exceeds the node's swap "
                                          f"({_mb(node.swap)}): the container cannot get it",
                               fix("SWAPPAGES", (min(swap_b or 0, node.swap), node.swap))))
        if priv_l is not None and priv_l > node.ram + node.swap:
            out.append(Finding("Warning", f"the privvmpages limit ({_mb(priv_l)}) exceeds the node's RAM + swap "
                                          f"({_mb(node.ram + node.swap)})"))
        cpulimit, cpus = ints.get("CPULIMIT"), ints.get("CPUS")
        if cpulimit is not None and cpulimit > node.cpus * 100:
            out.append(Finding("Error", f"cpulimit {cpulimit}% exceeds the node's {node.cpus} CPU(s) "
                                        f"({node.cpus * 100}%)", ("CPULIMIT", str(node.cpus * 100))))
        if cpus is not None and cpus > node.cpus:
            out.append(Finding("Error", f"cpus {cpus} exceeds the node's {node.cpus} CPU(s)",
                               ("CPUS", str(node.cpus))))
        mask = conf.get("CPUMASK", "").strip()
        if mask and mask.lower() != "all":
            missing = sorted(i for i in _cpu_ids(mask) if i >= node.cpus)
            if missing:
                out.append(Finding("Error", f"cpumask {mask} names CPU(s) the node does not have: "
                                            f"{','.join(map(str, missing))} (it has 0-{node.cpus - 1})",
                                   ("CPUMASK", "all")))
        if units is not None and units > node.cpu_power:
            out.append(Finding("Warning", f"cpuunits {units} exceed the power of the node ({node.cpu_power})"))
        nproc_l = pair("NUMPROC")[1]
        if nproc_l is not None and nproc_l > node.threads_max:
            out.append(Finding("Warning", f"the numproc limit ({nproc_l}) exceeds the node's threads-max "
                                          f"({node.threads_max})"))
        nfile_l = pair("NUMFILE")[1]
        if nfile_l is not None and nfile_l > node.nofile_hard:
            out.append(Finding("Warning", f"the numfile limit ({nfile_l}) is above what the agent can enforce; it "
                                          f"is capped at {node.nofile_hard} (the agent's hard RLIMIT_NOFILE)"))
        locked_l = pair("LOCKEDPAGES")[1]
        if locked_l is not None and locked_l > node.memlock_hard:
            out.append(Finding("Warning", f"the lockedpages limit ({_mb(locked_l)}) is above what the agent can "
                                          f"enforce; it is capped at {node.memlock_hard} bytes"))
        ds_b, ds_l = pair("DISKSPACE")
        if ds_l is not None and node.disk_total and ds_l > node.disk_total:
            out.append(Finding("Error", f"the diskspace limit ({_mb(ds_l)}) exceeds the size of the node's "
                                        f"private area filesystem ({_mb(node.disk_total)})",
                               fix("DISKSPACE", (min(ds_b or 0, node.disk_total), node.disk_total))))
        di_b, di_l = pair("DISKINODES")
        if di_l is not None and node.inodes_total and di_l > node.inodes_total:
            out.append(Finding("Error", f"the diskinodes limit ({di_l}) exceeds the inodes of the node's "
                                        f"private area filesystem ({node.inodes_total})",
                               fix("DISKINODES", (min(di_b or 0, node.inodes_total), node.inodes_total))))
    return out


def repair(text: str, findings: Sequence[Finding], accept: Callable[[Finding], bool]) -> tuple[str, list[Finding]]:
    """Apply the fixes `accept` agrees to (in order; a later fix of the same key wins)."""
    changes: dict[str, str] = {}
    applied = []
    for f in findings:
        if f.fix is not None and accept(f):
            changes[f.fix[0]] = f.fix[1]
            applied.append(f)
    return (set_conf(text, changes) if changes else text), applied


# ---- vzsplit ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Split:
    ram: int
    swap: int
    numproc: int
    diskspace: int | None  # bytes (hard); None: the disk is too small, OpenVZ's defaults are used
    diskinodes: int | None
    cpuunits: int
    cpus_each: float
    warnings: tuple[str, ...]


DEFAULT_DISKSPACE = 225_280 * 1024  # OpenVZ vzsplit's defaults when the disk cannot be split
DEFAULT_DISKINODES = 88_000


def split(node: Node, n: int) -> Split:
    """The share of each of `n` equal containers: RAM and swap after the host's reserve, tasks,
    disk space and inodes of the private areas' filesystem, and equal CPU weights."""
    if n < 1:
        raise ValueError("the number of containers must be at least 1")
    reserve = max(HOST_RESERVE_MIN, int(node.ram * HOST_RESERVE_SHARE))
    warnings: list[str] = []
    ram_free = node.ram - reserve
    if ram_free < n * 16 * MIB:
        raise ValueError(f"on a node with {_mb(node.ram)} of RAM ({_mb(reserve)} kept for the host) "
                         f"{n} containers cannot get 16 MB each; the maximum is {max(0, ram_free // (16 * MIB))}")
    ram = (ram_free // n) // MIB * MIB  # whole MiB: readable samples
    swap = (node.swap // n) // MIB * MIB
    numproc = max(64, min(32768, min(node.threads_max, node.pid_max) // (2 * n)))
    disk: int | None = None
    inodes: int | None = None
    if node.disk_total:
        usable = node.disk_total - HOST_DISK_RESERVE if node.disk_total > 2 * HOST_DISK_RESERVE \
            else node.disk_total // 2
        usable_inodes = node.inodes_total - HOST_INODES_RESERVE if node.inodes_total > 2 * HOST_INODES_RESERVE \
            else node.inodes_total // 2
        disk = (usable // n) // (1024 * 1024) * (1024 * 1024)
        inodes = usable_inodes // n
        if disk < DEFAULT_DISKSPACE or inodes < DEFAULT_DISKINODES // 10:
            warnings.append(f"the private areas' filesystem has no room for {n} containers; "
                            f"default disk space values are used")
            disk, inodes = None, None
    return Split(ram=ram, swap=swap, numproc=numproc, diskspace=disk, diskinodes=inodes, cpuunits=1000,
                 cpus_each=node.cpus / n, warnings=tuple(warnings))


def render_split(node: Node, n: int, s: Split) -> str:
    """The ve-NAME.conf-sample text (VSwap style: RAM and swap are the limits that matter)."""
    ds = s.diskspace if s.diskspace is not None else DEFAULT_DISKSPACE
    di = s.diskinodes if s.diskinodes is not None else DEFAULT_DISKINODES
    ds_soft = int(ds / 1.1) // MIB * MIB
    di_soft = int(di / 1.1)
    plural = "" if n == 1 else "s"
    return "\n".join([
        f"# Configuration file generated by vzsplit for {n} container{plural}",
        f"# on node {node.name or '?'} with {_mb(node.ram)} of RAM, {_mb(node.swap)} of swap, "
        f"{node.cpus} CPU(s), max threads {node.threads_max}.",
        "# Each container gets an equal share of RAM and swap (after the host's reserve), of the",
        "# private areas' disk, and an equal CPU weight (about "
        f"{s.cpus_each:.2f} CPU each when all are busy).",
        "",
        "ONBOOT=\"no\"",
        "",
        "# RAM and swap: the limits that matter (barrier:limit)",
        f"PHYSPAGES=\"0:{format_amount(s.ram, 'pages')}\"",
        f"SWAPPAGES=\"0:{format_amount(s.swap, 'pages')}\"",
        "",
        "# Tasks (processes and threads): keeps a fork bomb inside its container",
        f"NUMPROC=\"{s.numproc}:{s.numproc}\"",
        "",
        "# Not enforceable on mainline kernels, or per-process limits: left unlimited",
        *[f'{k}="unlimited"' for k in ("KMEMSIZE", "LOCKEDPAGES", "PRIVVMPAGES", "SHMPAGES", "NUMTCPSOCK",
                                        "NUMFLOCK", "NUMPTY", "NUMSIGINFO", "TCPSNDBUF", "TCPRCVBUF",
                                        "OTHERSOCKBUF", "DGRAMRCVBUF", "NUMOTHERSOCK", "DCACHESIZE",
                                        "NUMFILE", "NUMIPTENT")],
        "VMGUARPAGES=\"0:unlimited\"",
        "OOMGUARPAGES=\"0:unlimited\"",
        "",
        "# Disk quota (softlimit:hardlimit)",
        f"DISKSPACE=\"{format_amount(ds_soft, 'kblocks')}:{format_amount(ds, 'kblocks')}\"",
        f"DISKINODES=\"{di_soft}:{di}\"",
        "QUOTATIME=\"0\"",
        "",
        "# CPU: equal weights",
        f"CPUUNITS=\"{s.cpuunits}\"",
        "",
    ])


# ---- from the agent's replies (vzapi.resources_pb2 messages) --------------------------------------


def node_from_pb(msg: Any) -> Node:
    return Node(name=msg.node, ram=msg.ram_bytes, swap=msg.swap_bytes, cpus=msg.cpus or 1,
                cpu_power=msg.cpu_power, ve0_cpuunits=msg.ve0_cpuunits, threads_max=msg.threads_max,
                pid_max=msg.pid_max, disk_total=msg.disk_total_bytes, disk_free=msg.disk_free_bytes,
                inodes_total=msg.inodes_total, inodes_free=msg.inodes_free, nofile_hard=msg.nofile_hard,
                memlock_hard=msg.memlock_hard, conf_dir=msg.conf_dir, private_dir=msg.private_dir)


def container_from_pb(msg: Any) -> Container:
    bcs = {b.resource: BC(held=b.held, maxheld=b.maxheld, barrier=b.barrier if b.HasField("barrier") else None,
                          limit=b.limit if b.HasField("limit") else None, failcnt=b.failcnt, unit=b.unit)
           for b in msg.beancounters}
    return Container(ctid=msg.ctid, status=msg.status, bc=bcs, cpuunits=msg.cpuunits, cpulimit=msg.cpulimit,
                     cpus=msg.cpus)
