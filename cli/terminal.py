"""vzctl enter: the local terminal in raw mode, relayed to a pty inside the container."""

from __future__ import annotations

import os
import queue
import select
import signal
import sys
import termios
import threading
import tty
from collections.abc import Iterator
from types import FrameType

import grpc

from cli.client import Agent, error_from_rpc
from vzapi import container_pb2 as pb


def _size() -> pb.WindowSize:
    """The real size of our terminal (not $COLUMNS/$LINES, which may be stale)."""
    for fd in (0, 1, 2):
        try:
            size = os.get_terminal_size(fd)
            return pb.WindowSize(rows=size.lines, cols=size.columns)
        except OSError:
            continue
    return pb.WindowSize(rows=24, cols=80)


def enter(agent: Agent, ref: str, argv: list[str], *, quiet: bool = False) -> int:
    fd = sys.stdin.fileno()
    is_tty = os.isatty(fd)
    outbox: queue.Queue[pb.EnterInput | None] = queue.Queue()
    stop = threading.Event()
    outbox.put(pb.EnterInput(start=pb.EnterStart(ct=pb.CtRef(ctid=ref), argv=argv, size=_size(),
                                                 term=os.environ.get("TERM", "xterm"))))

    def requests() -> Iterator[pb.EnterInput]:
        while True:
            item = outbox.get()
            if item is None:
                return
            yield item

    def read_stdin() -> None:
        while not stop.is_set():
            ready, _, _ = select.select([fd], [], [], 0.2)
            if not ready:
                continue
            data = os.read(fd, 4096)
            if not data:
                return  # EOF: keep the session open until the remote side ends it
            outbox.put(pb.EnterInput(data=data))

    def on_winch(_sig: int, _frame: FrameType | None) -> None:
        outbox.put(pb.EnterInput(resize=_size()))

    saved = termios.tcgetattr(fd) if is_tty else None
    old_winch = signal.signal(signal.SIGWINCH, on_winch) if is_tty else None
    reader = threading.Thread(target=read_stdin, daemon=True)
    code = 1
    try:
        stream = agent.containers.Enter(requests())
        if saved is not None:
            tty.setraw(fd)
        if not quiet and is_tty:
            sys.stderr.write(f"entered into container {ref}\r\n")
        reader.start()
        out = sys.stdout.buffer
        for msg in stream:
            if msg.data:
                out.write(msg.data)
                out.flush()
            if msg.exited:
                code = msg.exit_code
    except grpc.RpcError as e:
        raise error_from_rpc(e) from None
    finally:
        stop.set()
        outbox.put(None)
        if saved is not None:
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        if old_winch is not None:
            signal.signal(signal.SIGWINCH, old_winch)
    if not quiet and is_tty:
        sys.stderr.write(f"exited from container {ref}\n")
    return code
