"""Where cgroup files are (v1 / v2 / co-mounted), what their counters say, and the thin apply layer
against a cgroup tree in a temporary directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.cgroups import apply, counters
from agent.cgroups.device import _mount_source, scheduler, whole_disk
from agent.cgroups.hierarchy import CgroupFS, parse_mountinfo
from agent.cgroups.plan import Device, Write

HYBRID = """\
25 30 0:23 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
26 25 0:24 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
28 25 0:26 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:12 - cgroup cgroup rw,memory
29 25 0:27 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:13 - cgroup cgroup rw,cpu,cpuacct
30 25 0:28 / /sys/fs/cgroup/pids rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,pids
31 25 0:29 / /sys/fs/cgroup/blkio rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,blkio
32 25 0:30 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime - cgroup cgroup rw,xattr,name=systemd
900 55 0:26 / /tmp/elsewhere/memory rw,relatime - cgroup cgroup rw,memory
"""
PURE_V2 = """\
35 30 0:31 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate
36 30 0:5 / /dev rw,nosuid - devtmpfs udev rw,size=10k
"""


def test_hybrid_host_uses_v1_with_co_mounted_controllers() -> None:
    fs = parse_mountinfo(HYBRID)
    assert fs.version == 1
    assert fs.dir("memory", "/vzfleet/n1/101") == Path("/sys/fs/cgroup/memory/vzfleet/n1/101")
    assert fs.dir("cpuacct", "vzfleet/n1/101") == Path("/sys/fs/cgroup/cpu,cpuacct/vzfleet/n1/101")
    assert fs.dir("cpuset", "/vzfleet/n1/101") is None  # not mounted on this host


def test_pure_v2_host_has_one_directory_for_every_controller() -> None:
    fs = parse_mountinfo(PURE_V2)
    assert fs.version == 2
    assert fs.dir("memory", "/vzfleet/n1/101") == fs.dir("io", "/vzfleet/n1/101") == \
        Path("/sys/fs/cgroup/vzfleet/n1/101")


def test_no_cgroup_mounts_at_all() -> None:
    fs = parse_mountinfo("36 30 0:5 / /dev rw - devtmpfs udev rw\n")
    assert fs.dir("memory", "/x") is None


# ---- counters ---------------------------------------------------------------------------------------

V1 = {
    "memory.usage_in_bytes": "512000\n",
    "memory.max_usage_in_bytes": "67108864\n",
    "memory.limit_in_bytes": "67108864\n",
    "memory.failcnt": "60\n",
    "memory.memsw.usage_in_bytes": "614400\n",
    "memory.memsw.limit_in_bytes": "9223372036854771712\n",
    "memory.memsw.failcnt": "2\n",
    "memory.kmem.usage_in_bytes": "122880\n",
    "memory.kmem.max_usage_in_bytes": "6008832\n",
    "memory.kmem.failcnt": "0\n",
    "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n",
    "memory.stat": "cache 0\nrss 61440\nshmem 4096\ntotal_shmem 8192\n",
    "pids.current": "3\n",
    "pids.peak": "64\n",
    "pids.max": "64\n",
    "pids.events": "max 7\n",
    "cpuacct.usage": "123456789\n",
}
V2 = {
    "memory.current": "512000\n",
    "memory.peak": "67108864\n",
    "memory.max": "max\n",
    "memory.events": "low 0\nhigh 0\nmax 42\noom 1\noom_kill 1\noom_group_kill 0\n",
    "memory.swap.current": "4096\n",
    "memory.swap.peak": "8192\n",
    "memory.swap.events": "high 0\nmax 3\nfail 1\n",
    "memory.stat": "anon 61440\nkernel 122880\nsock 4096\nshmem 8192\nslab_reclaimable 2048\n",
    "pids.current": "3\n",
    "pids.peak": "64\n",
    "pids.max": "max\n",
    "pids.events": "max 7\n",
    "cpu.stat": "usage_usec 123456\nuser_usec 100000\nsystem_usec 23456\n",
}


def test_v1_counters() -> None:
    c = counters.parse_v1(V1)
    assert (c.memory, c.memory_peak, c.memory_limit, c.memory_failcnt, c.oom_kills) == \
        (512000, 67108864, 67108864, 60, 1)
    assert c.memory_failcnt_resettable
    assert (c.swap, c.swap_peak, c.swap_failcnt) == (102400, None, 2)  # memsw minus memory
    assert (c.kmem, c.kmem_peak, c.kmem_failcnt, c.shmem) == (122880, 6008832, 0, 8192)
    assert (c.pids, c.pids_peak, c.pids_limit, c.pids_failcnt) == (3, 64, 64, 7)
    assert c.cpu_usage_ns == 123456789


def test_v1_without_swap_counts_ram_failures_on_memsw() -> None:
    """memsw limit == memory limit: the kernel hits memsw first; that is running out of RAM."""
    c = counters.parse_v1({**V1, "memory.memsw.limit_in_bytes": "67108864\n"})
    assert (c.memory_failcnt, c.swap_failcnt) == (62, 0)


def test_v2_counters() -> None:
    c = counters.parse_v2(V2)
    assert (c.memory, c.memory_peak, c.memory_limit, c.memory_failcnt, c.oom_kills) == \
        (512000, 67108864, None, 42, 1)
    assert not c.memory_failcnt_resettable
    assert (c.swap, c.swap_peak, c.swap_failcnt) == (4096, 8192, 4)
    assert (c.kmem, c.sock, c.shmem, c.slab_reclaimable) == (122880, 4096, 8192, 2048)
    assert (c.pids, c.pids_peak, c.pids_limit, c.pids_failcnt) == (3, 64, None, 7)
    assert c.cpu_usage_ns == 123456000


def test_v2_kernel_memory_before_linux_5_18_is_the_sum_of_its_parts() -> None:
    c = counters.parse_v2({"memory.stat": "kernel_stack 100\npagetables 200\npercpu 3\nsock 4\nslab 50\n"})
    assert c.kmem == 357


def test_missing_files_mean_unknown_not_zero() -> None:
    c = counters.parse_v1({})
    assert c.memory is None and c.pids_failcnt is None and c.oom_kills is None


def fake_fs(tmp_path: Path, version: int, files: dict[str, str], cgpath: str = "/vzfleet/n1/101") -> CgroupFS:
    if version == 1:
        mounts = {c: tmp_path / c for c in ("memory", "pids", "cpuacct", "blkio")}
        where = {"memory": "memory", "pids": "pids", "cpuacct": "cpuacct", "blkio": "blkio"}
        for name, text in files.items():
            d = mounts[where[name.split(".")[0]]] / cgpath.strip("/")
            d.mkdir(parents=True, exist_ok=True)
            (d / name).write_text(text)
        for m in mounts.values():
            (m / cgpath.strip("/")).mkdir(parents=True, exist_ok=True)
        return CgroupFS(1, mounts)
    d = tmp_path / "unified" / cgpath.strip("/")
    d.mkdir(parents=True)
    for name, text in files.items():
        (d / name).write_text(text)
    return CgroupFS(2, {"": tmp_path / "unified"})


@pytest.mark.parametrize(("version", "files"), [(1, V1), (2, V2)])
def test_read_collects_the_files_of_each_version(tmp_path: Path, version: int, files: dict[str, str]) -> None:
    fs = fake_fs(tmp_path, version, files)
    c = counters.read(fs, "/vzfleet/n1/101")
    assert c is not None and c.version == version and c.pids_failcnt == 7 and c.memory == 512000
    assert counters.read(fs, "/vzfleet/n1/999") is None  # not running: no cgroup


# ---- apply ------------------------------------------------------------------------------------------


def test_write_reports_missing_files_and_refused_values_but_goes_on(tmp_path: Path) -> None:
    fs = fake_fs(tmp_path, 1, {"blkio.bfq.weight": "100"})
    problems = apply.write(fs, "/vzfleet/n1/101", [
        Write("blkio", "blkio.throttle.read_bps_device", "254:0 100", False),
        Write("blkio", "blkio.bfq.weight", "400", False),
        Write("cpuset", "cpuset.cpus", "0", True),
    ])
    assert (tmp_path / "blkio/vzfleet/n1/101/blkio.bfq.weight").read_text() == "400"
    assert problems == ["blkio.throttle.read_bps_device: not offered by this kernel",
                        "cpuset.cpus: no cpuset controller on this host"]


@pytest.mark.parametrize(("version", "present", "expected"), [
    (1, ["blkio.bfq.weight"], "blkio.bfq.weight"),
    (1, ["blkio.weight", "blkio.bfq.weight"], "blkio.bfq.weight"),
    (1, ["blkio.weight"], "blkio.weight"),
    (1, [], None),
    (2, ["io.weight", "io.bfq.weight"], "io.bfq.weight"),
    (2, ["io.weight"], "io.weight"),
])
def test_features_pick_the_weight_file_the_kernel_offers(tmp_path: Path, version: int, present: list[str],
                                                         expected: str | None) -> None:
    fs = fake_fs(tmp_path, version, {n: "100" for n in present})
    assert apply.features(fs, "/vzfleet/n1/101").weight_file == expected


def test_reset_zeroes_the_v1_fail_counters_the_kernel_lets_us(tmp_path: Path) -> None:
    fs = fake_fs(tmp_path, 1, {"memory.failcnt": "60", "memory.memsw.failcnt": "2", "pids.events": "max 7"})
    assert apply.reset_failcnt(fs, "/vzfleet/n1/101") == ["memory.failcnt", "memory.memsw.failcnt"]
    assert (tmp_path / "memory/vzfleet/n1/101/memory.failcnt").read_text() == "0"
    assert (tmp_path / "pids/vzfleet/n1/101/pids.events").read_text() == "max 7"


def test_v2_has_nothing_to_zero(tmp_path: Path) -> None:
    fs = fake_fs(tmp_path, 2, V2)
    assert apply.reset_failcnt(fs, "/vzfleet/n1/101") == []


# ---- the disk under a private area ------------------------------------------------------------------


def fake_sysfs(tmp_path: Path) -> Path:
    devices = tmp_path / "devices/pci/vda"
    (devices / "vda1").mkdir(parents=True)
    (devices / "dev").write_text("254:0\n")
    (devices / "vda1" / "partition").write_text("1\n")
    (devices / "vda1" / "dev").write_text("254:1\n")
    (devices / "queue").mkdir()
    (devices / "queue" / "scheduler").write_text("none [mq-deadline] kyber bfq\n")
    block = tmp_path / "dev/block"
    block.mkdir(parents=True)
    (block / "254:0").symlink_to(devices)
    (block / "254:1").symlink_to(devices / "vda1")
    return block


def test_a_partition_is_throttled_on_its_whole_disk(tmp_path: Path) -> None:
    block = fake_sysfs(tmp_path)
    assert whole_disk(254, 1, block) == Device(254, 0)
    assert whole_disk(254, 0, block) == Device(254, 0)
    assert whole_disk(0, 45, block) is None  # btrfs / overlay anonymous device
    assert scheduler(Device(254, 0), block) == "mq-deadline"
    assert scheduler(Device(8, 0), block) is None


def test_mount_source_is_the_longest_mount_point_holding_the_path() -> None:
    info = ("22 1 0:21 / / rw - ext4 /dev/vda1 rw\n"
            "40 22 0:45 / /var/lib/vz rw - btrfs /dev/sdb rw\n"
            "41 22 0:46 / /var/lib/vzother rw - tmpfs tmpfs rw\n")
    assert _mount_source(Path("/var/lib/vz/private/101"), info) == "/dev/sdb"
    assert _mount_source(Path("/var/lib/vzother"), info) == "tmpfs"
    assert _mount_source(Path("/etc"), info) == "/dev/vda1"
