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
