"""Limits -> cgroup file writes, for cgroup v1 and v2 (pure), and config -> limits (limits.py)."""

from __future__ import annotations

import pytest

from agent.cgroups.plan import (
    CgroupLimits,
    Device,
    Features,
    Write,
    ioprio_weight,
    plan,
    shares_to_weight,
)
from agent.config.conffile import ConfFile
from agent.config.params import ContainerConfig, apply_params
from agent.runtime import limits

MIB = 1 << 20
VDA = Device(254, 0)


def writes(lim: CgroupLimits, version: int, weight_file: str | None = None) -> dict[str, str]:
    return {f"{w.controller}/{w.file}": w.value for w in plan(lim, Features(version, weight_file))}


def agent_writes(lim: CgroupLimits, version: int, weight_file: str | None = None) -> list[Write]:
    return [w for w in plan(lim, Features(version, weight_file)) if not w.by_runc]


FULL = CgroupLimits(memory=64 * MIB, memory_swap=576 * MIB, cpu_shares=1024, cpu_quota_us=25_000,
                    cpuset_cpus="0-1", cpuset_mems="0", pids=64, io_weight=400, io_device=VDA,
                    io_bps=10 * MIB, io_iops=100)


@pytest.mark.parametrize(("version", "weight_file", "expected"), [
    (1, "blkio.bfq.weight", {
        "memory/memory.limit_in_bytes": str(64 * MIB),
        "memory/memory.memsw.limit_in_bytes": str(576 * MIB),
        "cpu/cpu.shares": "1024",
        "cpu/cpu.cfs_period_us": "100000",
        "cpu/cpu.cfs_quota_us": "25000",
        "cpuset/cpuset.cpus": "0-1",
        "cpuset/cpuset.mems": "0",
        "pids/pids.max": "64",
        "blkio/blkio.bfq.weight": "400",
        "blkio/blkio.throttle.read_bps_device": f"254:0 {10 * MIB}",
        "blkio/blkio.throttle.write_bps_device": f"254:0 {10 * MIB}",
        "blkio/blkio.throttle.read_iops_device": "254:0 100",
        "blkio/blkio.throttle.write_iops_device": "254:0 100",
    }),
    (2, "io.bfq.weight", {
        "memory/memory.max": str(64 * MIB),
        "memory/memory.swap.max": str(512 * MIB),  # v2 swap excludes memory
        "cpu/cpu.weight": "39",
        "cpu/cpu.max": "25000 100000",
        "cpuset/cpuset.cpus": "0-1",
        "cpuset/cpuset.mems": "0",
        "pids/pids.max": "64",
        "io/io.bfq.weight": "400",
        "io/io.max": f"254:0 rbps={10 * MIB} wbps={10 * MIB} riops=100 wiops=100",
    }),
    (2, "io.weight", {
        "memory/memory.max": str(64 * MIB),
        "memory/memory.swap.max": str(512 * MIB),
        "cpu/cpu.weight": "39",
        "cpu/cpu.max": "25000 100000",
        "cpuset/cpuset.cpus": "0-1",
        "cpuset/cpuset.mems": "0",
        "pids/pids.max": "64",
        "io/io.weight": "default 400",  # the iocost controller's syntax
        "io/io.max": f"254:0 rbps={10 * MIB} wbps={10 * MIB} riops=100 wiops=100",
    }),
])
def test_every_limit_maps_to_its_file_on_each_version(version: int, weight_file: str,
                                                      expected: dict[str, str]) -> None:
    assert writes(FULL, version, weight_file) == expected


@pytest.mark.parametrize(("version", "expected"), [
    (1, {"memory/memory.limit_in_bytes": "-1", "cpu/cpu.cfs_period_us": "100000", "cpu/cpu.cfs_quota_us": "-1",
         "pids/pids.max": "max"}),
    (2, {"memory/memory.max": "max", "cpu/cpu.max": "max 100000", "pids/pids.max": "max"}),
])
def test_unlimited_spells_the_kernels_no_limit(version: int, expected: dict[str, str]) -> None:
    assert writes(CgroupLimits(), version) == expected


def test_memory_without_swap_limit_leaves_swap_unlimited() -> None:
    assert writes(CgroupLimits(memory=MIB), 1)["memory/memory.memsw.limit_in_bytes"] == "-1"
    assert writes(CgroupLimits(memory=MIB), 2)["memory/memory.swap.max"] == "max"


@pytest.mark.parametrize("version", [1, 2])
def test_only_io_files_are_written_by_the_agent(version: int) -> None:
    """runc owns memory, CPU and pids (a later `runc update` would undo a write behind its back)."""
    weight = "blkio.bfq.weight" if version == 1 else "io.bfq.weight"
    mine = agent_writes(FULL, version, weight)
    assert {w.controller for w in mine} == ({"blkio"} if version == 1 else {"io"})
    assert all(w.by_runc for w in plan(FULL, Features(version, weight)) if w not in mine)


@pytest.mark.parametrize(("version", "expected"), [
    (1, {"blkio/blkio.throttle.read_bps_device": "254:0 0", "blkio/blkio.throttle.write_bps_device": "254:0 0",
         "blkio/blkio.throttle.read_iops_device": "254:0 0", "blkio/blkio.throttle.write_iops_device": "254:0 0"}),
    (2, {"io/io.max": "254:0 rbps=max wbps=max riops=max wiops=max"}),
])
def test_a_zero_io_limit_removes_the_devices_rule(version: int, expected: dict[str, str]) -> None:
    got = {f"{w.controller}/{w.file}": w.value for w in agent_writes(CgroupLimits(io_device=VDA), version)}
    assert got == expected


def test_no_weight_is_written_where_the_kernel_offers_none() -> None:
    assert agent_writes(CgroupLimits(io_weight=800), 1, None) == []
    assert agent_writes(CgroupLimits(io_weight=800), 2, None) == []


def test_legacy_blkio_weight_has_a_floor_of_10() -> None:
    assert writes(CgroupLimits(io_weight=6), 1, "blkio.weight")["blkio/blkio.weight"] == "10"
    assert writes(CgroupLimits(io_weight=6), 1, "blkio.bfq.weight")["blkio/blkio.bfq.weight"] == "6"


def test_ioprio_weights_double_per_step_around_the_kernel_default() -> None:
    assert [ioprio_weight(p) for p in range(8)] == [6, 13, 25, 50, 100, 200, 400, 800]
    with pytest.raises(ValueError):
        ioprio_weight(8)


@pytest.mark.parametrize(("shares", "weight"), [(2, 1), (1024, 39), (262_144, 10_000)])
def test_shares_convert_to_weight_as_runc_does(shares: int, weight: int) -> None:
    assert shares_to_weight(shares) == weight


def test_unknown_version_is_refused() -> None:
    with pytest.raises(ValueError):
        plan(CgroupLimits(), Features(3))


# ---- config -> limits -------------------------------------------------------------------------------


def cfg(*params: tuple[str, str], base: str = "") -> ContainerConfig:
    conf = ConfFile.parse(base)
    conf.update_values(apply_params(dict(conf.items()), list(params)))
    return ContainerConfig.from_conf(conf, "test.conf")


HOST = limits.Host(cpus="0-3", mems="0", swap_accounting=True)
NO = limits.NO_LIMIT


@pytest.mark.parametrize(("params", "memory", "memsw"), [
    ((("ram", "64M"),), 64 * MIB, NO),
    ((("ram", "64M"), ("swap", "32M")), 64 * MIB, 96 * MIB),
    # privvmpages caps memory + swap (the kernel cannot count untouched allocations)
    ((("ram", "64M"), ("swap", "32M"), ("privvmpages", "80M")), 64 * MIB, 80 * MIB),
    # no swap is one page of swap: with memsw == memory, cgroup v1 would count no RAM failure
    ((("ram", "64M"), ("swap", "0")), 64 * MIB, 64 * MIB + 4096),
    ((("ram", "64M"), ("privvmpages", "48M")), 48 * MIB, 48 * MIB + 4096),
    ((("privvmpages", "100M"),), 100 * MIB, 100 * MIB + 4096),
    ((("ram", "64M"), ("privvmpages", "unlimited")), 64 * MIB, NO),
    ((("ram", "unlimited"),), NO, None),  # runc lifts memory+swap along with memory
])
def test_memory_limits(params: tuple[tuple[str, str], ...], memory: int, memsw: int | None) -> None:
    res = limits.resources(cfg(*params), on=HOST)
    assert (res.memory_bytes, res.memory_swap_bytes) == (memory, memsw)


def test_no_limit_is_explicit_so_that_runc_update_lifts_an_old_one() -> None:
    """`runc update` keeps the old value of every limit it is not given."""
    res = limits.resources(cfg(("ram", "64M"), ("cpulimit", "0"), ("numproc", "unlimited"), ("cpumask", "all")),
                           on=HOST)
    assert (res.memory_swap_bytes, res.cpu_quota_us, res.pids_limit) == (NO, NO, NO)
    assert (res.cpuset_cpus, res.cpuset_mems) == ("0-3", "0")
    oci = res.to_oci()
    assert oci["memory"] == {"limit": 64 * MIB, "swap": -1}
    assert (oci["cpu"]["quota"], oci["cpu"]["cpus"], oci["pids"]["limit"]) == (-1, "0-3", -1)


def test_without_swap_accounting_swap_is_left_alone() -> None:
    res = limits.resources(cfg(("ram", "64M")), on=limits.Host("0", "0", swap_accounting=False))
    assert res.memory_swap_bytes is None


def test_cgroup_limits_carry_the_io_parameters() -> None:
    lim = limits.cgroup_limits(cfg(("ioprio", "6"), ("iolimit", "10"), ("iopslimit", "300"), ("numproc", "64"),
                                   ("cpulimit", "25")), VDA, on=HOST)
    assert (lim.io_weight, lim.io_device, lim.io_bps, lim.io_iops) == (400, VDA, 10 * MIB, 300)
    assert (lim.pids, lim.cpu_quota_us, lim.cpu_period_us) == (64, 25_000, 100_000)
    unlimited = limits.cgroup_limits(cfg(), on=HOST)
    assert (unlimited.memory, unlimited.cpu_quota_us, unlimited.pids, unlimited.cpuset_cpus) == \
        (None, None, None, "0-3")


def test_rlimits_follow_numfile_and_lockedpages_and_never_exceed_the_agents_hard_limits() -> None:
    caps = {"RLIMIT_NOFILE": 20_000, "RLIMIT_MEMLOCK": 8 * MIB}
    rl, notes = limits.rlimits(cfg(("numfile", "1000:2000"), ("lockedpages", "1024")), caps)
    assert [r.to_oci() for r in rl] == [
        {"type": "RLIMIT_NOFILE", "soft": 1000, "hard": 2000},
        {"type": "RLIMIT_MEMLOCK", "soft": 4 * MIB, "hard": 4 * MIB},  # 1024 pages
    ]
    assert notes == []
    rl, notes = limits.rlimits(cfg(("numfile", "50000")), caps)
    assert [r.to_oci() for r in rl] == [{"type": "RLIMIT_NOFILE", "soft": 20_000, "hard": 20_000}]
    assert "capped at 20000" in notes[0]
    assert limits.rlimits(cfg(("numfile", "unlimited")), caps) == ([], [])


def test_a_zero_barrier_does_not_leave_the_container_without_files() -> None:
    rl, _ = limits.rlimits(cfg(("numfile", "0:500")), {"RLIMIT_NOFILE": 20_000})
    assert (rl[0].soft, rl[0].hard) == (500, 500)


SPEC = {
    "process": {"args": ["/sbin/init"]},
    "mounts": [
        {"destination": "/dev/pts", "type": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
        {"destination": "/dev/shm", "type": "tmpfs",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
    ],
}


def test_amend_spec_adds_rlimits_and_mount_sizes_without_touching_its_input() -> None:
    caps = {"RLIMIT_NOFILE": 20_000, "RLIMIT_MEMLOCK": 8 * MIB}
    out = limits.amend_spec(SPEC, cfg(("numfile", "100"), ("shmpages", "16M"), ("numpty", "10")), caps)
    assert out["process"]["rlimits"] == [{"type": "RLIMIT_NOFILE", "soft": 100, "hard": 100}]
    assert out["mounts"][1]["options"] == ["nosuid", "noexec", "nodev", "mode=1777", f"size={16 * MIB}"]
    assert out["mounts"][0]["options"][-1] == "max=10"
    assert "rlimits" not in SPEC["process"] and SPEC["mounts"][1]["options"][-1] == "size=65536k"


def test_amend_spec_is_idempotent_and_removes_limits_that_became_unlimited() -> None:
    caps = {"RLIMIT_NOFILE": 20_000, "RLIMIT_MEMLOCK": 8 * MIB}
    limited = limits.amend_spec(SPEC, cfg(("numfile", "100"), ("numpty", "10"), ("shmpages", "16M")), caps)
    assert limits.amend_spec(limited, cfg(("numfile", "100"), ("numpty", "10"), ("shmpages", "16M")), caps) \
        == limited
    back = limits.amend_spec(limited, cfg(("numfile", "unlimited"), ("numpty", "unlimited"),
                                          ("shmpages", "unlimited")), caps)
    assert "rlimits" not in back["process"]
    assert not any(o.startswith("max=") for o in back["mounts"][0]["options"])
    assert f"size={limits.DEFAULT_SHM_BYTES}" in back["mounts"][1]["options"]


def test_not_enforceable_options_are_said_never_silently_ignored() -> None:
    notes = limits.not_enforceable_notes(["kmemsize", "ram", "numtcpsock"])
    assert len(notes) == 2
    assert notes[0].startswith("--kmemsize: stored, shown by vzubc, but not enforceable on this kernel")
    assert notes[1].startswith("--numtcpsock:")


def test_every_beancounter_option_is_either_enforced_or_declared_not_enforceable() -> None:
    from agent.beancounters import RESOURCES

    enforced = limits.LIVE_RESOURCE_OPTS
    for name, _unit in RESOURCES:
        assert name in enforced or name in limits.NOT_ENFORCEABLE, name
