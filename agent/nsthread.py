"""Run a function in a fresh thread that first entered some namespace of another process.

setns(2) changes only the calling thread, so a short-lived thread that enters a namespace and
never leaves it is the safe way to work inside it from the asyncio agent (no fork, no signals).
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

CLONE_FS = 0x00000200
CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(None, use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def setns(path: Path | str, nstype: int) -> None:
    """Enter the namespace at path (/proc/PID/ns/..., /run/netns/NAME) in the calling thread."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if nstype == CLONE_NEWNS:
            # a thread that shares its filesystem attributes with others may not change mount ns
            _check(_libc.unshare(CLONE_FS), "unshare(CLONE_FS)")
        _check(_libc.setns(fd, nstype), f"setns({path})")
    finally:
        os.close(fd)


def _settle(fut: asyncio.Future[T], result: T | None, exc: BaseException | None) -> None:
    if fut.done():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(result)  # type: ignore[arg-type]


async def run_in(path: Path | str, nstype: int, fn: Callable[[], T], name: str = "nsthread") -> T:
    """fn() in a new thread inside the namespace at path; the thread never returns to ours."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[T] = loop.create_future()

    def worker() -> None:
        try:
            setns(path, nstype)
            result = fn()
        except BaseException as e:
            loop.call_soon_threadsafe(_settle, fut, None, e)
        else:
            loop.call_soon_threadsafe(_settle, fut, result, None)

    threading.Thread(target=worker, name=name, daemon=True).start()
    return await fut
