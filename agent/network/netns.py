"""Network namespaces the agent creates and owns, one per running container (pyroute2).

Namespaces are created with iproute2 (see create()).
pyroute2's netns-aware sockets (``AsyncIPRoute(netns=...)``) fork a helper process and stop it with
SIGTERM; a forked child shares asyncio's signal wakeup fd with the agent, so the agent itself would
see that SIGTERM and shut down. We therefore configure a namespace from a short-lived thread that
has entered it with setns(2) (which affects only that thread) and talks netlink with a plain
``IPRoute`` there: no fork, no signals.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from pyroute2 import IPRoute

from agent import nsthread, proc

NETNS_DIR = Path("/run/netns")
T = TypeVar("T")

def netns_path(name: str) -> Path:
    return NETNS_DIR / name


def exists(name: str) -> bool:
    return netns_path(name).exists()


async def run_in(name: str, fn: Callable[[], T]) -> T:
    """Run fn in a fresh thread inside network namespace `name`; the thread never leaves it."""
    return await nsthread.run_in(netns_path(name), nsthread.CLONE_NEWNET, fn, name=f"netns-{name}")


def _lo_up() -> None:
    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname="lo")[0]
        ipr.link("set", index=idx, state="up")


async def create(name: str) -> Path:
    """Create the namespace (idempotent) with loopback up.

    `ip netns add` rather than pyroute2's netns.create: the latter forks the agent (a process with
    gRPC threads) and runs Python in the child, which can crash there (seen: SIGSEGV).
    """
    if not exists(name):
        await proc.run(["ip", "netns", "add", name], timeout=30, what=f"creating netns {name}")
    await run_in(name, _lo_up)
    return netns_path(name)


async def remove(name: str) -> None:
    """Delete the namespace (idempotent)."""
    if exists(name):
        await proc.run(["ip", "netns", "delete", name], timeout=30, what=f"deleting netns {name}")


def list_names(prefix: str) -> list[str]:
    try:
        return sorted(p.name for p in NETNS_DIR.iterdir() if p.name.startswith(prefix))
    except FileNotFoundError:
        return []
