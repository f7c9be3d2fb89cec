"""Progress on a terminal: sizes for people, and one status line rewritten in place."""

from __future__ import annotations

import sys
import time
from typing import TextIO

NOT_LIVE_EVERY_S = 10.0  # without a terminal, a progress line at most this often


def human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return f"{n:.1f}TiB"


def meter_text(stage: str, message: str, done: int, total: int, elapsed: float) -> str:
    """Pure: '  presync: copying the filesystem  45% 1.2GiB of 2.6GiB, 98.0MiB/s'."""
    done = min(done, total)
    rate = f", {human_size(done / elapsed)}/s" if elapsed > 0 and done else ""
    return f"{stage:>9}: {message} {done * 100 // max(total, 1):3d}% {human_size(done)} of {human_size(total)}{rate}"


class StageLines:
    """Stage messages as lines on err; meters (done < total) as one line rewritten in place on a
    terminal, or a line at most every NOT_LIVE_EVERY_S elsewhere (logs stay short)."""

    def __init__(self, err: TextIO = sys.stderr) -> None:
        self.err = err
        self.live = err.isatty()
        self.shown = False
        self.stage = ""
        self.stage_started = time.monotonic()
        self.last_meter = 0.0

    def event(self, stage: str, message: str, done: int = 0, total: int = 0) -> None:
        now = time.monotonic()
        if stage != self.stage:
            self.stage, self.stage_started = stage, now
        if total and done < total:
            text = meter_text(stage, message, done, total, now - self.stage_started)
            if self.live:
                self.err.write("\r" + text[:self._width()] + "\x1b[K")
                self.err.flush()
                self.shown = True
            elif now - self.last_meter >= NOT_LIVE_EVERY_S:
                self.last_meter = now
                print(text, file=self.err)
            return
        self.clear()
        size = f" [{human_size(done)} of {human_size(total)}]" if total else ""
        print(f"{stage:>9}: {message}{size}", file=self.err)

    def clear(self) -> None:
        if self.shown:
            self.err.write("\r\x1b[K")
            self.err.flush()
            self.shown = False

    @staticmethod
    def _width() -> int:
        import shutil

        return max(40, shutil.get_terminal_size((80, 24)).columns - 1)
