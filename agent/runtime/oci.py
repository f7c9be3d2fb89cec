"""Pure: a container's settings -> the OCI runtime spec (config.json) that runc runs.

System containers: process 1 is the template's init, with its own pid, mount, uts and ipc
namespaces, joining a network namespace the agent created. No user namespace yet (root inside is
root outside, minus the capabilities below) — see docs/architecture.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# Capabilities a system container gets by default (OpenVZ-like: enough to run an OS, not enough to
# touch the node). CAP_SYS_ADMIN, CAP_SYS_MODULE, CAP_SYS_RAWIO, CAP_SYS_TIME, CAP_MAC_* are off.
DEFAULT_CAPS: tuple[str, ...] = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE", "CAP_SYS_BOOT", "CAP_SYS_NICE", "CAP_LEASE", "CAP_AUDIT_WRITE",
    "CAP_SETFCAP", "CAP_MKNOD",
)

# every capability name the kernel knows, for --capability validation
ALL_CAPS: frozenset[str] = frozenset(DEFAULT_CAPS) | {
    "CAP_SYS_ADMIN", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_PACCT", "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_LINUX_IMMUTABLE", "CAP_AUDIT_CONTROL",
    "CAP_AUDIT_READ", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
}

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

MASKED_PATHS = (
    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware",
)
READONLY_PATHS = (
    "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
)


@dataclass(frozen=True)
class Resources:
    """Limits runc applies at start and by `runc update`; None = unlimited / kernel default."""

    memory_bytes: int | None = None
    memory_swap_bytes: int | None = None  # memory + swap, as cgroup v1 memsw / OCI "swap"
    cpu_shares: int | None = None
    cpu_quota_us: int | None = None
    cpu_period_us: int = 100_000
    cpuset_cpus: str | None = None
    cpuset_mems: str | None = None
    pids_limit: int | None = None

    def to_oci(self) -> dict[str, Any]:
        res: dict[str, Any] = {"devices": [{"allow": False, "access": "rwm"}]}
        mem: dict[str, int] = {}
        if self.memory_bytes is not None:
            mem["limit"] = self.memory_bytes
            if self.memory_swap_bytes is not None:
                mem["swap"] = self.memory_swap_bytes
        if mem:
            res["memory"] = mem
        cpu: dict[str, Any] = {}
        if self.cpu_shares is not None:
            cpu["shares"] = self.cpu_shares
        if self.cpu_quota_us is not None:
            cpu["quota"] = self.cpu_quota_us
            cpu["period"] = self.cpu_period_us
        if self.cpuset_cpus:
            cpu["cpus"] = self.cpuset_cpus
        if self.cpuset_mems:
            cpu["mems"] = self.cpuset_mems
        if cpu:
            res["cpu"] = cpu
        if self.pids_limit is not None:
            res["pids"] = {"limit": self.pids_limit}
        return res


@dataclass(frozen=True)
class ContainerSpec:
    ctid: int
    rootfs: str
    hostname: str
    netns_path: str
    cgroups_path: str
    init: Sequence[str] = ("/sbin/init",)
    caps: Sequence[str] = DEFAULT_CAPS
    resources: Resources = field(default_factory=Resources)
    env: Mapping[str, str] = field(default_factory=dict)


def _mounts() -> list[dict[str, Any]]:
    return [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs",
         "options": ["nosuid", "noexec", "nodev", "ro"]},
        {"destination": "/run", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "nodev", "mode=755", "size=65536k"]},
    ]


def build_spec(spec: ContainerSpec) -> dict[str, Any]:
    """The OCI config.json for a system container. Pure and deterministic."""
    caps = sorted(set(spec.caps))
    env = {"PATH": DEFAULT_PATH, "container": "vzfleet", "HOME": "/root", **spec.env}
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": list(spec.init),
            "env": [f"{k}={v}" for k, v in env.items()],
            "cwd": "/",
            "capabilities": {
                "bounding": caps, "effective": caps, "permitted": caps,
                "inheritable": [], "ambient": [],
            },
            "noNewPrivileges": False,
            # no rlimits: the agent lacks CAP_SYS_RESOURCE on some hosts and runc would fail
            # raising a limit above the agent's own hard limit (runc-checkpoint-notes.md #1)
        },
        "root": {"path": spec.rootfs, "readonly": False},
        "hostname": spec.hostname,
        "mounts": _mounts(),
        "linux": {
            "namespaces": [
                {"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"},
                {"type": "network", "path": spec.netns_path},
            ],
            "cgroupsPath": spec.cgroups_path,
            "resources": spec.resources.to_oci(),
            "maskedPaths": list(MASKED_PATHS),
            "readonlyPaths": list(READONLY_PATHS),
            "rootfsPropagation": "rprivate",
        },
        "annotations": {"org.vzfleet.ctid": str(spec.ctid)},
    }
