"""Network namespaces the agent creates and owns, one per running container (pyroute2)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from pyroute2 import AsyncIPRoute, netns

NETNS_DIR = Path("/run/netns")


def netns_path(name: str) -> Path:
    return NETNS_DIR / name


def exists(name: str) -> bool:
    return netns_path(name).exists()


async def create(name: str) -> Path:
    """Create the namespace (idempotent) with loopback up."""
    if not exists(name):
        await asyncio.to_thread(netns.create, name)
    async with AsyncIPRoute(netns=name) as ipr:
        await ipr.link("set", index=1, state="up")
    return netns_path(name)


async def remove(name: str) -> None:
    """Delete the namespace (idempotent)."""
    if exists(name):
        await asyncio.to_thread(netns.remove, name)


def list_names(prefix: str) -> list[str]:
    try:
        return sorted(p.name for p in NETNS_DIR.iterdir() if p.name.startswith(prefix))
    except FileNotFoundError:
        return []
