"""vzdump's pure parts: OpenVZ archive names, --maxfiles retention, --exclude-path, --bwlimit."""

from __future__ import annotations

import re
from datetime import datetime

import pytest

from agent.backup import naming
from agent.errors import Kind, VzError

WHEN = datetime(2009, 10, 1, 12, 3, 4)


def test_archive_names_are_openvzs() -> None:
    assert naming.archive_name(101, WHEN, compress=True) == "vzdump-openvz-101-2009_10_01-12_03_04.tar.zst"
    assert naming.archive_name(101, WHEN, compress=False) == "vzdump-openvz-101-2009_10_01-12_03_04.tar"


@pytest.mark.parametrize("name, expected", [
    ("vzdump-openvz-101-2009_10_01-12_03_04.tar.zst", (101, WHEN)),
    ("vzdump-openvz-101-2009_10_01-12_03_04.tgz", (101, WHEN)),  # made by OpenVZ's vzdump
    ("vzdump-openvz-2147483647-2009_10_01-12_03_04.tar", (2147483647, WHEN)),
    ("vzdump-openvz-101-2009_10_01-12_03_04.tar.zst.part", None),
    (".vzdump-openvz-101-2009_10_01-12_03_04.tar", None),
    ("vzdump-openvz-101-2009_13_01-12_03_04.tar", None),  # month 13
    ("vzdump-2009_10_01-12_03_04.log", None),
])
def test_archive_names_parse_back(name: str, expected: tuple[int, datetime] | None) -> None:
    assert naming.parse_archive_name(name) == expected


def stamp(day: int, ctid: int = 101, ext: str = "tar.zst") -> str:
    return f"vzdump-openvz-{ctid}-2009_10_{day:02d}-00_00_00.{ext}"


def test_retention_deletes_the_oldest_of_that_container_only() -> None:
    names = [stamp(3), stamp(1), stamp(2, ext="tgz"), stamp(1, ctid=102), "vzdump-2009_10_01-00_00_00.log",
             "notes.txt"]
    assert naming.select_expired(names, 101, 1) == [stamp(1), stamp(2, ext="tgz")]
    assert naming.select_expired(names, 101, 2) == [stamp(1)]
    assert naming.select_expired(names, 101, 3) == []


def test_maxfiles_zero_keeps_everything() -> None:
    assert naming.select_expired([stamp(1), stamp(2)], 101, 0) == []


@pytest.mark.parametrize("path, excluded", [
    ("tmp", False),          # '/tmp/.+' keeps the directory itself
    ("tmp/x", True),
    ("tmp/a/b", True),
    ("var/tmp/x", False),
    ("var/log/syslog", True),
    ("var/log", False),
    ("home/u/.cache", True),
])
def test_excludes_match_whole_paths_from_the_container_root(path: str, excluded: bool) -> None:
    patterns = naming.compile_excludes(["/tmp/.+", "/var/log/.+", ".*/\\.cache"])
    assert naming.is_excluded(path, patterns) is excluded


def test_a_bad_exclude_pattern_is_refused_by_name() -> None:
    with pytest.raises(VzError) as e:
        naming.compile_excludes(["/ok", "/tmp/(unclosed"])
    assert e.value.kind is Kind.INVALID and "/tmp/(unclosed" in str(e.value)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.now += s


def test_rate_limiter_holds_the_rate() -> None:
    c = FakeClock()
    lim = naming.RateLimiter(1024 * 1024, clock=c.clock, sleep=c.sleep)  # 1 MiB/s
    for _ in range(10):
        lim.consume(512 * 1024)
    assert c.now - 100.0 == pytest.approx(5.0)  # 5 MiB took 5 s


def test_rate_limiter_does_not_sleep_when_the_source_is_slower() -> None:
    c = FakeClock()
    lim = naming.RateLimiter(1024, clock=c.clock, sleep=c.sleep)
    lim.consume(1024)
    c.now += 10
    assert lim.consume(1024) == 0.0


def test_no_limit_never_sleeps() -> None:
    c = FakeClock()
    lim = naming.RateLimiter(0, clock=c.clock, sleep=c.sleep)
    lim.consume(1 << 30)
    assert c.slept == []


@pytest.mark.parametrize("n, text", [(0, "0B"), (1023, "1023B"), (1536, "1.5KiB"), (6 << 20, "6.0MiB")])
def test_human_size(n: int, text: str) -> None:
    assert naming.human_size(n) == text


def test_duration_is_hh_mm_ss() -> None:
    assert naming.duration_text(3725.4) == "01:02:05"


def test_snapshot_mode_is_refused_with_the_reason() -> None:
    with pytest.raises(VzError) as e:
        naming.check_mode("snapshot")
    assert e.value.kind is Kind.INVALID and "LVM" in str(e.value)
    assert naming.check_mode("suspend") == "suspend"


def test_run_log_names_are_plain_file_names() -> None:
    assert naming.RUN_LOG_RE.match("vzdump-2009_10_01-12_03_04.log")
    assert not naming.RUN_LOG_RE.match("../x.log")
    assert not naming.RUN_LOG_RE.match("a/b.log")
    assert re.compile(naming.RUN_LOG_RE.pattern)
