"""Processes run inside a container for a client: streamed exec, and pty sessions (enter)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import struct
import termios
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from agent.errors import Kind, VzError

MAX_STDIN = 16 << 20
CHUNK = 64 << 10


@dataclass(frozen=True)
class Chunk:
    stream: str  # "stdout" | "stderr"
    data: bytes


async def run_streaming(argv: Sequence[str], stdin: bytes | None) -> AsyncIterator[Chunk | int]:
    """Run argv; yield its output as it comes, then its exit code (an int) last.

    If the consumer stops early (client gone), the process is killed.
    """
    if stdin is not None and len(stdin) > MAX_STDIN:
        raise VzError(Kind.INVALID, f"stdin too large ({len(stdin)} bytes; limit {MAX_STDIN})")
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    queue: asyncio.Queue[Chunk | None] = asyncio.Queue(maxsize=64)

    async def pump(reader: asyncio.StreamReader | None, name: str) -> None:
        assert reader is not None
        while data := await reader.read(CHUNK):
            await queue.put(Chunk(name, data))
        await queue.put(None)

    async def feed() -> None:
        if stdin and proc.stdin is not None:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                proc.stdin.write(stdin)
                await proc.stdin.drain()
            proc.stdin.close()

    tasks = [asyncio.create_task(pump(proc.stdout, "stdout")),
             asyncio.create_task(pump(proc.stderr, "stderr")),
             asyncio.create_task(feed())]
    try:
        open_streams = 2
        while open_streams:
            item = await queue.get()
            if item is None:
                open_streams -= 1
            else:
                yield item
        yield await proc.wait()
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def set_winsize(fd: int, rows: int, cols: int) -> None:
    rows = max(1, min(rows or 24, 1000))
    cols = max(1, min(cols or 80, 1000))
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


class PtySession:
    """A process on a pty inside the container: runc creates the pty and hands us its master."""

    def __init__(self, proc: asyncio.subprocess.Process, master: int) -> None:
        self.proc = proc
        self.master = master
        self._queue: asyncio.Queue[bytes] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        os.set_blocking(master, False)
        loop.add_reader(master, self._on_readable)
        self._eof = False

    @classmethod
    async def start(cls, exec_argv: Sequence[str], rows: int, cols: int) -> PtySession:
        """Start `runc exec --tty` with a host pty as its terminal.

        runc allocates the pty inside the container and copies between it and its own terminal
        (our pty's slave side). runc's console socket mode cannot be used: it requires --detach,
        which loses the exit code. Window size changes reach runc as SIGWINCH because the slave is
        its controlling terminal (`setsid --ctty`).
        """
        master, slave = os.openpty()
        try:
            set_winsize(master, rows, cols)
            proc = await asyncio.create_subprocess_exec(
                "setsid", "--ctty", "--wait", *exec_argv, stdin=slave, stdout=slave, stderr=slave)
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)
        return cls(proc, master)

    def _on_readable(self) -> None:
        try:
            data = os.read(self.master, CHUNK)
        except BlockingIOError:
            return
        except OSError as e:
            if e.errno != errno.EIO:
                raise
            data = b""
        if not data:
            asyncio.get_running_loop().remove_reader(self.master)
            self._eof = True
        self._queue.put_nowait(data)

    async def read(self) -> bytes:
        """Output of the session; b"" once every process on the pty has gone."""
        return await self._queue.get()

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                n = os.write(self.master, view)
            except BlockingIOError:
                continue
            view = view[n:]

    def resize(self, rows: int, cols: int) -> None:
        set_winsize(self.master, rows, cols)

    async def wait(self) -> int:
        return await self.proc.wait()

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        if not self._eof:
            loop.remove_reader(self.master)
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()
        with contextlib.suppress(OSError):
            os.close(self.master)
