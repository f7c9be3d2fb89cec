"""Pure parts of vzdump: archive names, retention, exclude patterns, rate limiting, log text.

Archive names are OpenVZ's: ``vzdump-openvz-CTID-YYYY_MM_DD-HH_MM_SS.tar`` (``.tar.zst`` with
--compress; OpenVZ's own ``.tgz`` / ``.tar.gz`` / ``.tar.lzo`` are recognised for retention).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from agent.errors import Kind, VzError

PREFIX = "vzdump-openvz-"
STAMP = "%Y_%m_%d-%H_%M_%S"
ARCHIVE_RE = re.compile(r"^vzdump-openvz-(\d+)-(\d{4}_\d{2}_\d{2}-\d{2}_\d{2}_\d{2})"
                        r"\.(tar|tar\.zst|tgz|tar\.gz|tar\.lzo)$")
RUN_LOG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}\.log$")
#: where the container's config travels inside the archive (OpenVZ's vzdump puts it there too)
CONF_MEMBER = "etc/vzdump/vps.conf"
MODES = ("", "stop", "suspend", "snapshot")
MAX_EXCLUDES = 256


def archive_name(ctid: int, when: datetime, *, compress: bool) -> str:
    return f"{PREFIX}{ctid}-{when.strftime(STAMP)}.{'tar.zst' if compress else 'tar'}"


def parse_archive_name(name: str) -> tuple[int, datetime] | None:
    """(CTID, time) of an archive file name, None for anything else."""
    m = ARCHIVE_RE.match(name)
    if m is None:
        return None
    try:
        return int(m.group(1)), datetime.strptime(m.group(2), STAMP)
    except ValueError:
        return None


def select_expired(names: Iterable[str], ctid: int, maxfiles: int) -> list[str]:
    """Archives of ctid beyond the newest `maxfiles` (oldest first); none when maxfiles is 0."""
    if maxfiles <= 0:
        return []
    mine = []
    for name in names:
        parsed = parse_archive_name(name)
        if parsed is not None and parsed[0] == ctid:
            mine.append((parsed[1], name))
    mine.sort()
    return [name for _, name in mine[: max(0, len(mine) - maxfiles)]]


def compile_excludes(patterns: Sequence[str]) -> list[re.Pattern[str]]:
    """--exclude-path regular expressions; INVALID naming the bad one."""
    if len(patterns) > MAX_EXCLUDES:
        raise VzError(Kind.INVALID, f"too many --exclude-path patterns (at most {MAX_EXCLUDES})")
    out = []
    for p in patterns:
        try:
            out.append(re.compile(p))
        except re.error as e:
            raise VzError(Kind.INVALID, f"invalid --exclude-path {p!r}: {e}") from None
    return out


def is_excluded(relpath: str, patterns: Sequence[re.Pattern[str]]) -> bool:
    """OpenVZ's vzdump matches each pattern against the whole path from the container root, e.g.
    '/tmp/.+' excludes what is in /tmp but keeps /tmp itself. relpath has no leading '/'."""
    path = "/" + relpath.strip("/")
    return any(p.fullmatch(path) for p in patterns)


@dataclass
class RateLimiter:
    """Token bucket: `consume(n)` sleeps as needed to hold `rate` bytes per second (0: no limit).

    The clock and sleep are injectable so that the arithmetic is tested without waiting.
    """

    rate: int
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    _start: float | None = field(default=None, init=False)
    _sent: int = field(default=0, init=False)

    def consume(self, n: int) -> float:
        """Account n bytes; returns the seconds slept."""
        if self.rate <= 0:
            return 0.0
        now = self.clock()
        if self._start is None:
            self._start = now
        self._sent += n
        due = self._start + self._sent / self.rate
        if due > now:
            self.sleep(due - now)
            return due - now
        return 0.0


def human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    raise AssertionError("unreachable")


def duration_text(seconds: float) -> str:
    """OpenVZ's HH:MM:SS."""
    s = round(seconds)
    return f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}"


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise VzError(Kind.INVALID, f"unknown vzdump mode {mode!r}: use --stop, --suspend or none")
    if mode == "snapshot":
        raise VzError(Kind.INVALID, "vzdump --snapshot is not supported: it needs an LVM snapshot of the private "
                                    "area, and vzfleet keeps private areas on plain file systems (no LVM); use "
                                    "--suspend (a short freeze) or --stop")
    return mode
