"""Resource control end to end with real busybox containers: live limits on cgroups, OOM and fork
bombs kept inside their container, beancounters (vzubc, vzlist fields, --reset_ub), the I/O and
per-process limits, and the capacity tools against a real node agent."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.cgroups import apply as cgapply
from agent.cgroups.device import device_of
from agent.cgroups.hierarchy import detect
from agent.cgroups.plan import plan
from agent.config.conffile import ConfFile
from agent.config.params import ContainerConfig
from agent.runtime import limits
from integration.harness import Containers, Node, describe

pytestmark = [pytest.mark.privileged, pytest.mark.integration]

MIB = 1 << 20
V1_UNLIMITED_MIN = 1 << 62


def cgroup(node: Node, ctid: int) -> str:
    return f"/vzfleet/{node.name}/{ctid}"


def kernel_value(node: Node, ctid: int, controller: str, file: str) -> str:
    value = cgapply.read_value(detect(), cgroup(node, ctid), controller, file)
    assert value is not None, f"{controller}/{file} of {ctid} is not readable"
    return value


def ubc(node: Node, ctid: int) -> dict[str, dict[str, int | None]]:
    """vzubc -j of one container: resource -> its values."""
    data = json.loads(node.cli("vzubc", "-j", str(ctid)).stdout)
    assert [c["ctid"] for c in data] == [ctid]
    return {b["resource"]: b for b in data[0]["beancounters"]}


def vzlist_fields(node: Node, ctid: int, *fields: str) -> list[str]:
    out = node.cli("vzlist", "-H", "-o", ",".join(fields), str(ctid)).stdout.split()
    assert len(out) == len(fields), out
    return out


def config_of(node: Node, ctid: int) -> ContainerConfig:
    return ContainerConfig.from_conf(ConfFile.load(node.conf_file(ctid)), str(node.conf_file(ctid)))


def normalise(value: str) -> str:
    """Kernel spellings of "no limit" -> the plan's (v1 prints huge page-aligned numbers)."""
    v = value.strip()
    if v.isdigit() and int(v) >= V1_UNLIMITED_MIN:
        return "-1"
    return v


def assert_kernel_matches_plan(node: Node, ctid: int) -> None:
    """Every cgroup file the plan says (runc's and the agent's) holds the planned value."""
    cfg = config_of(node, ctid)
    fs = detect()
    dev = device_of(node.private(ctid))
    writes = plan(limits.cgroup_limits(cfg, dev), cgapply.features(fs, cgroup(node, ctid)))
    for w in writes:
        got = normalise(kernel_value(node, ctid, w.controller, w.file))
        if w.file.startswith("blkio.throttle"):
            want = "" if w.value.endswith(" 0") else w.value  # a removed rule is not listed
        elif w.file == "io.max":
            want = "" if "rbps=max wbps=max riops=max wiops=max" in w.value else w.value
        elif w.file == "io.weight":
            want = w.value  # "default N"
        else:
            want = w.value
        assert got == want, f"{w}: kernel has {got!r}"


@pytest.fixture(scope="module")
def other(node: Node) -> Iterator[int]:
    """A running bystander container for the whole module: what one container does must not reach it."""
    bystander = Containers(node)
    try:
        yield bystander.create(start=True)
    finally:
        if problems := bystander.destroy_all():
            pytest.fail("cleanup of the bystander failed:\n" + "\n".join(problems), pytrace=False)


# ---- memory -------------------------------------------------------------------------------------------


def test_ram_set_live_and_saved_an_oom_stays_inside_its_container(node: Node, cts: Containers,
                                                                   other: int) -> None:
    a = cts.create(start=True)
    res = node.cli("vzctl", "set", str(a), "--ram", "64M", "--swap", "0", "--save")
    assert "resource limits applied" in res.stdout
    conf = node.conf_file(a).read_text()
    assert 'PHYSPAGES="0:64M"' in conf and 'SWAPPAGES="0:0"' in conf
    assert_kernel_matches_plan(node, a)
    before = ubc(node, a)
    assert before["physpages"]["limit"] == 64 * MIB // 4096

    # dd's 200 MB buffer is anonymous memory it fills from /dev/zero: more than the container has
    hog = node.cli("vzctl", "exec2", str(a), "dd if=/dev/zero of=/dev/null bs=200M count=1", check=False,
                   timeout=60)
    assert hog.returncode == 137, "the memory hog was not OOM-killed: " + describe(hog, node.root)

    assert node.agent_running
    assert node.cli("vzctl", "status", str(a)).stdout.split()[-1] == "running"
    assert node.cli("vzctl", "exec2", str(other), "echo alive").stdout.strip() == "alive"
    after = ubc(node, a)
    assert after["physpages"]["failcnt"] > before["physpages"]["failcnt"]
    assert after["oomguarpages"]["failcnt"] >= 1  # the OOM kill
    assert after["physpages"]["maxheld"] >= 60 * MIB // 4096
    assert ubc(node, other)["oomguarpages"]["failcnt"] == 0

    # --reset_ub: counters the kernel can zero are zeroed, the others get a baseline
    node.cli("vzctl", "set", str(a), "--reset_ub", "yes")
    reset = ubc(node, a)
    assert (reset["physpages"]["failcnt"], reset["oomguarpages"]["failcnt"]) == (0, 0)


# ---- processes ------------------------------------------------------------------------------------------


def test_a_fork_bomb_stays_at_numproc_and_other_containers_work(node: Node, cts: Containers,
                                                                 other: int) -> None:
    a = cts.create(start=True)
    node.cli("vzctl", "set", str(a), "--numproc", "64")
    assert kernel_value(node, a, "pids", "pids.max") == "64"
    # bounded: at most 200 forks of a 30 s sleep (detached from the exec's output, so that the exec
    # returns); the shell gives up at the first refused fork; the sleeps die with the container
    bomb = node.cli("vzctl", "exec", str(a),
                    "i=0; while [ $i -lt 200 ]; do sleep 30 </dev/null >/dev/null 2>&1 & i=$((i+1)); done",
                    check=False, timeout=30)
    assert "can't fork" in bomb.stderr
    tasks = int(kernel_value(node, a, "pids", "pids.current"))
    assert 32 < tasks <= 64
    assert node.cli("vzctl", "exec2", str(other), "echo alive").stdout.strip() == "alive"
    # a new process in the full container is refused too (and counted)
    node.cli("vzctl", "exec", str(a), "true", check=False, timeout=30)
    numproc, limit, failcnt = vzlist_fields(node, a, "numproc", "numproc.l", "numproc.f")
    assert int(numproc) <= 64 and limit == "64" and int(failcnt) >= 1


# ---- CPU, I/O, per-process limits -------------------------------------------------------------------


def test_cpu_limits_are_in_the_cgroup_files_and_accounting_agrees(node: Node, cts: Containers) -> None:
    a = cts.create("--cpuunits", "3000", "--numproc", "100", start=True)
    node.cli("vzctl", "set", str(a), "--cpulimit", "25", "--cpus", "1", "--save")
    assert_kernel_matches_plan(node, a)
    if detect().version == 1:
        assert kernel_value(node, a, "cpu", "cpu.cfs_quota_us") == "25000"
        assert kernel_value(node, a, "cpu", "cpu.shares") == "3072"
    else:
        assert kernel_value(node, a, "cpu", "cpu.max") == "25000 100000"

    table = node.cli("vzubc", str(a)).stdout.splitlines()
    assert table[0] == "Version: 2.5" and table[2].split()[0] == f"{a}:"
    assert len(table) == 2 + 21
    numproc_l, physpages, init = vzlist_fields(node, a, "numproc.l", "physpages", "initpid")
    assert numproc_l == "100" and int(physpages) > 0
    rows = node.cli("vzpid", init).stdout.splitlines()
    assert rows[0] == "Pid\tCTID\tName\tNode"
    assert rows[1].split("\t") == [init, str(a), "init", node.name]

    # lifting limits live works too (runc update keeps every limit it is not given)
    node.cli("vzctl", "set", str(a), "--cpulimit", "0", "--cpus", "unlimited", "--numproc", "unlimited", "--save")
    assert_kernel_matches_plan(node, a)
    assert kernel_value(node, a, "pids", "pids.max") == "max"
    if detect().version == 1:
        assert kernel_value(node, a, "cpu", "cpu.cfs_quota_us") == "-1"


def test_io_and_per_process_limits_apply_live(node: Node, cts: Containers) -> None:
    a = cts.create(start=True)
    res = node.cli("vzctl", "set", str(a), "--ioprio", "6", "--iolimit", "10M", "--iopslimit", "300",
                   "--numfile", "100", "--shmpages", "16M", "--numpty", "10", "--kmemsize", "10M", "--save")
    notes = res.stdout
    assert "--kmemsize: stored, shown by vzubc, but not enforceable on this kernel" in notes
    assert "--numfile: RLIMIT_NOFILE 100:100" in notes
    assert_kernel_matches_plan(node, a)
    dev = device_of(node.private(a))
    if dev is not None and detect().version == 1:
        assert kernel_value(node, a, "blkio", "blkio.throttle.read_bps_device") == f"{dev} {10 * MIB}"
        assert kernel_value(node, a, "blkio", "blkio.throttle.write_iops_device") == f"{dev} 300"
    # processes started later (vzctl exec) get the rlimit too; /dev/shm and devpts were remounted
    assert node.cli("vzctl", "exec2", str(a), "ulimit -n").stdout.strip() == "100"
    shm = node.cli("vzctl", "exec2", str(a), "df -k /dev/shm").stdout.splitlines()[-1].split()
    assert shm[1] == str(16 * 1024)
    assert "max=10" in node.cli("vzctl", "exec2", str(a), "grep devpts /proc/mounts").stdout
    # and after a restart they come from the spec
    node.cli("vzctl", "--quiet", "restart", "--fast", str(a))
    assert node.cli("vzctl", "exec2", str(a), "ulimit -n").stdout.strip() == "100"
    assert_kernel_matches_plan(node, a)
    # back to unlimited: the I/O rules are removed
    node.cli("vzctl", "set", str(a), "--iolimit", "0", "--iopslimit", "0", "--numfile", "unlimited", "--save")
    assert_kernel_matches_plan(node, a)


# ---- accounting and capacity tools -------------------------------------------------------------------


def test_memcheck_cpucheck_calc_and_split(node: Node, cts: Containers, other: int) -> None:
    a = cts.create("--cpuunits", "1500", "--ram", "128M", start=True)
    stopped = cts.create("--numproc", "77")

    mem = node.cli("vzmemcheck", "-v").stdout.splitlines()
    assert mem[0] == "Output values in %"
    listed = {line.split()[0] for line in mem[3:] if line[:1].isdigit()}
    assert {str(a), str(other)} <= listed and str(stopped) not in listed
    assert mem[-1].startswith("Summary:") and len(mem[-1].split()) == 9

    cpu = node.cli("vzcpucheck", "-v").stdout.splitlines()
    units = {line.split()[0]: int(line.split()[1]) for line in cpu if re.fullmatch(r"\d+\s+\d+", line.strip())}
    assert (units[str(a)], units[str(other)]) == (1500, 1000) and str(stopped) not in units
    used = next(int(line.split(":")[1]) for line in cpu if line.startswith("Current CPU utilization:"))
    assert used == sum(units.values())  # the host's VE0CPUUNITS is the "0" line
    assert any(line.startswith("Power of the node: ") for line in cpu)

    calc = node.cli("vzcalc", "-v", str(a)).stdout.splitlines()
    assert calc[0].split() == ["Resource", "Current(%)", "Promised(%)", "Max(%)"]
    assert calc[-1].split()[0] == "Memory" and calc[-1].split()[1] != "n/a"
    assert node.cli("vzcalc", str(stopped)).stdout.splitlines()[-1].split()[1] == "n/a"

    # a stopped container has limits but no usage
    assert vzlist_fields(node, stopped, "numproc.l", "numproc.f") == ["77", "-"]
    res = node.cli("vzubc", str(stopped), check=False)
    assert res.returncode == 6 and "stopped" in res.stderr

    sample = node.conf_dir / "ve-vzt-split4.conf-sample"
    try:
        node.cli("vzsplit", "-n", "4", "-f", "vzt-split4")
        text = sample.read_text()
        assert text.startswith("# Configuration file generated by vzsplit for 4 containers")
        again = node.cli("vzsplit", "-n", "4", "-f", "vzt-split4", check=False)
        assert again.returncode == 5 and "already exists" in again.stderr
        assert node.cli("vzcfgvalidate", str(sample)).returncode == 0
    finally:
        sample.unlink(missing_ok=True)


def test_vzcfgvalidate_flags_limits_beyond_the_node_and_repairs_them(node: Node, tmp_path: Path) -> None:
    conf = tmp_path / "999.conf"
    conf.write_text('# too big for any test machine\nPHYSPAGES="0:64T"\nNUMPROC="100:100"\nCPUS="4096"\n')
    res = node.cli("vzcfgvalidate", str(conf), check=False)
    assert res.returncode == 2, describe(res, node.root)
    assert "Error: the physpages limit" in res.stdout and "exceeds the node's RAM" in res.stdout
    assert "Error: cpus 4096 exceeds the node's" in res.stdout
    # without an agent only the file itself is checked
    alone = node.cli("vzcfgvalidate", "--socket", str(tmp_path / "none.sock"), str(conf), check=False)
    assert alone.returncode == 0 and "node limits not checked" in alone.stderr
    fixed = node.cli("vzcfgvalidate", "-r", str(conf), check=False)
    assert fixed.returncode == 0, describe(fixed, node.root)
    text = conf.read_text()
    assert text.startswith("# too big for any test machine\n") and 'PHYSPAGES="0:64T"' not in text
    assert node.cli("vzcfgvalidate", str(conf), check=False).returncode == 0
