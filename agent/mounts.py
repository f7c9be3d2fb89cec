"""Host mounts the agent makes: the private area bound on the container root (OpenVZ simfs)."""

from __future__ import annotations

import os
from pathlib import Path

from agent import proc


def unescape_mountinfo(field: str) -> str:
    """A path field of /proc/self/mountinfo, which escapes space, tab, newline and backslash as \\ooo."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mount_points() -> set[str]:
    with open("/proc/self/mountinfo") as f:
        return {unescape_mountinfo(line.split()[4]) for line in f}


def is_mountpoint(path: Path) -> bool:
    return os.path.realpath(path) in mount_points() if path.exists() else False


async def bind(src: Path, dst: Path) -> None:
    await proc.run(["mount", "--bind", str(src), str(dst)], what=f"mounting {src} on {dst}")
    # private: container mounts must not propagate back to the host, nor host mounts into it
    await proc.run(["mount", "--make-private", str(dst)], what=f"making {dst} private")


async def unmount(path: Path) -> None:
    await proc.run(["umount", str(path)], what=f"unmounting {path}")
