"""Pure: a container's configuration -> the limits and capabilities runc applies."""

from __future__ import annotations

import os

from agent.config.params import ContainerConfig
from agent.runtime.oci import DEFAULT_CAPS, Resources

PERIOD_US = 100_000


def resources(cfg: ContainerConfig, ncpu: int | None = None) -> Resources:
    """OpenVZ parameters mapped to cgroup limits (docs/resources.md lists the mapping)."""
    ncpu = ncpu or os.cpu_count() or 1
    mem = cfg.ram_bytes
    swap_total = None
    if mem is not None and cfg.swap_bytes is not None:
        swap_total = mem + cfg.swap_bytes
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
    return Resources(
        memory_bytes=mem,
        memory_swap_bytes=swap_total,
        cpu_shares=shares,
        cpu_quota_us=quota,
        cpu_period_us=PERIOD_US,
        cpuset_cpus=cfg.cpumask,
        cpuset_mems=cfg.nodemask,
        pids_limit=pids,
    )


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
