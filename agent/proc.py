"""The one subprocess runner of the agent: logged, with timeouts, never through a shell."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from agent.errors import Kind, VzError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Result:
    argv: tuple[str, ...]
    returncode: int
    stdout: bytes
    stderr: bytes

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def err_tail(self, limit: int = 400) -> str:
        text = (self.stderr or self.stdout or b"").decode(errors="replace").strip()
        return text[-limit:] if text else f"exit code {self.returncode}"


async def run(
    argv: Sequence[str],
    *,
    timeout: float = 60.0,
    input: bytes | None = None,
    check: bool = True,
    env: Mapping[str, str] | None = None,
    what: str | None = None,
    capture: bool = True,
) -> Result:
    """Run argv to completion; raise VzError(FAILED) on failure when check is true.

    The child gets no inherited file descriptors besides stdio, and its own session so that a
    timeout can kill it without touching the agent. capture=False gives the child /dev/null as
    stdout/stderr: needed for commands that leave a daemon holding them (`runc run --detach`).
    """
    cmd = tuple(argv)
    log.debug("run: %s", shlex.join(cmd))
    full_env = None if env is None else {**os.environ, **env}
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        stdin=asyncio.subprocess.PIPE if input is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE if capture else asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE if capture else asyncio.subprocess.DEVNULL,
        start_new_session=True,
        env=full_env,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(input), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise VzError(Kind.FAILED, f"{what or cmd[0]} timed out after {timeout:g} s") from None
    except asyncio.CancelledError:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    res = Result(cmd, proc.returncode if proc.returncode is not None else -1, out or b"", err or b"")
    if res.returncode != 0:
        log.debug("run: %s -> %d: %s", cmd[0], res.returncode, res.err_tail())
    if check and not res.ok:
        raise VzError(Kind.FAILED, f"{what or shlex.join(cmd[:3])} failed: {res.err_tail()}")
    return res


STREAM_KEEP = 64 << 10  # bytes of stdout a streamed run keeps for its Result (the tail)


async def run_streaming(argv: Sequence[str], on_line: Callable[[str], None], *, timeout: float = 60.0,
                        env: Mapping[str, str] | None = None, what: str | None = None) -> Result:
    """Like run(check=False), but every stdout line (ended by \\n or \\r, as progress meters write
    them) goes to on_line as it arrives; the Result keeps the last STREAM_KEEP bytes of stdout."""
    cmd = tuple(argv)
    full_env = None if env is None else {**os.environ, **env}
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, start_new_session=True, env=full_env)
    assert proc.stdout is not None and proc.stderr is not None
    stdout, stderr = proc.stdout, proc.stderr
    kept = bytearray()

    async def pump() -> None:
        pending = b""
        while chunk := await stdout.read(4096):
            kept.extend(chunk)
            del kept[:-STREAM_KEEP]
            pending += chunk
            *lines, pending = re.split(rb"[\r\n]", pending)
            for line in lines:
                if line.strip():
                    on_line(line.decode(errors="replace"))

    try:
        _, err = await asyncio.wait_for(asyncio.gather(pump(), stderr.read()), timeout)
        await asyncio.wait_for(proc.wait(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise VzError(Kind.FAILED, f"{what or cmd[0]} timed out after {timeout:g} s") from None
    except BaseException:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    return Result(cmd, proc.returncode if proc.returncode is not None else -1, bytes(kept), err)
