"""Freezing a cgroup directly (the migration's freeze) and reading the freezer's answer."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator

import pytest

from agent import cgroups
from agent.cgroups.hierarchy import detect


@pytest.mark.parametrize(("text", "version", "expected"), [
    ("FROZEN\n", 1, True),
    ("FREEZING\n", 1, False),
    ("THAWED\n", 1, False),
    ("populated 1\nfrozen 1\n", 2, True),
    ("populated 1\nfrozen 0\n", 2, False),
    ("", 2, False),
])
def test_frozen_reads_both_freezers(text: str, version: int, expected: bool) -> None:
    assert cgroups.frozen(text, version) is expected


@pytest.fixture
def sleeper_cgroup() -> Iterator[tuple[str, int]]:
    if os.geteuid() != 0:
        pytest.skip("needs root to make a cgroup")
    cgpath = f"/vzfleet-test-freeze-{os.getpid()}"
    fs = detect()
    dirs = {c: fs.dir(c, cgpath) for c in ("freezer", "pids")}
    if dirs["freezer"] is None:
        pytest.skip("no freezer on this host")
    made = []
    for d in dict.fromkeys(d for d in dirs.values() if d is not None):
        d.mkdir()
        made.append(d)
    proc = subprocess.Popen(["sleep", "60"])
    try:
        for d in made:
            (d / "cgroup.procs").write_text(str(proc.pid))
        yield cgpath, proc.pid
    finally:
        cgroups.thaw(cgpath)
        proc.kill()
        proc.wait()
        for d in made:
            for _ in range(50):
                try:
                    d.rmdir()
                    break
                except OSError:
                    time.sleep(0.02)


def state_of(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def test_freeze_waits_for_the_kernel_and_thaw_undoes_it(sleeper_cgroup: tuple[str, int]) -> None:
    cgpath, pid = sleeper_cgroup
    fs = detect()
    d = fs.dir("freezer", cgpath)
    assert d is not None
    cgroups.freeze(cgpath)
    status = d / ("cgroup.events" if fs.version == 2 else "freezer.state")
    assert cgroups.frozen(status.read_text(), fs.version)
    cgroups.thaw(cgpath)
    assert not cgroups.frozen(status.read_text(), fs.version)
    assert state_of(pid) in ("S", "R")


def test_freeze_of_a_missing_cgroup_raises() -> None:
    if detect().dir("freezer", "/x") is None:
        pytest.skip("no freezer on this host")
    with pytest.raises(OSError):
        cgroups.freeze(f"/vzfleet-test-missing-{os.getpid()}", timeout=0.2)
