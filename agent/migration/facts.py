"""What a node offers for migration: CRIU version and features, CPU flags, free disk and memory."""

from __future__ import annotations

import os
import platform
import shutil
from pathlib import Path

from agent import proc

FEATURES = ("mem_dirty_track", "uffd-noncoop", "uffd")
_cache: dict[str, object] = {}


def criu_binary() -> str | None:
    for cand in ("/usr/local/sbin/criu", shutil.which("criu")):
        if cand and os.access(cand, os.X_OK):
            return cand
    return None


async def criu_info() -> tuple[str, list[str]]:
    """(version, features available); cached for the agent's lifetime."""
    if "criu" in _cache:
        return _cache["criu"]  # type: ignore[return-value]
    binary = criu_binary()
    if binary is None:
        info: tuple[str, list[str]] = ("", [])
    else:
        res = await proc.run([binary, "--version"], check=False, timeout=10)
        version = ""
        for line in res.stdout.decode(errors="replace").splitlines():
            if line.startswith("Version:"):
                version = line.split(":", 1)[1].strip()
        feats = []
        for feat in FEATURES:
            r = await proc.run([binary, "check", "--feature", feat], check=False, timeout=20)
            if r.ok:
                feats.append(feat)
        info = (version, feats)
    _cache["criu"] = info
    return info


def version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for p in text.split("."):
        digits = "".join(ch for ch in p if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return sorted(set(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return []


def free_disk(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def free_memory() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def kernel() -> str:
    return platform.release()


def container_memory(cgpath: str) -> int:
    """Memory the container's cgroup uses now, in bytes (0 if unknown)."""
    rel = cgpath.strip("/")
    for f in (Path("/sys/fs/cgroup") / rel / "memory.current",
              Path("/sys/fs/cgroup/memory") / rel / "memory.usage_in_bytes"):
        try:
            return int(f.read_text().strip())
        except (OSError, ValueError):
            continue
    return 0


PIPE_MAX = 4 << 20


def ensure_pipe_max_size() -> str | None:
    """CRIU's lazy pages need pipes of ~4 MiB; root without CAP_SYS_RESOURCE is bound by
    fs.pipe-max-size (1 MiB by default). Raise it when needed; returns a note saying so."""
    path = Path("/proc/sys/fs/pipe-max-size")
    try:
        if int(path.read_text()) >= PIPE_MAX:
            return None
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:") and int(line.split()[1], 16) & (1 << 24):
                return None  # CAP_SYS_RESOURCE: CRIU may exceed the limit itself
        path.write_text(str(PIPE_MAX))
    except (OSError, ValueError) as e:
        return f"could not raise fs.pipe-max-size for CRIU lazy pages: {e}"
    return f"raised fs.pipe-max-size to {PIPE_MAX} for CRIU lazy pages (no CAP_SYS_RESOURCE here)"


def free_port(host: str) -> int:
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
