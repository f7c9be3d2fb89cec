"""Disk quota arithmetic: limits from configs, image geometry, the ext4 reserve, change plans, grace.

The thin layer that runs mkfs/mount/resize2fs is covered by integration/test_quota.py.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from agent.config.conffile import ConfFile
from agent.config.params import ContainerConfig
from agent.errors import Kind, VzError
from agent.layout import NodeLayout
from agent.storage import quota
from agent.storage.quota import DiskLimits, FsUsage

MIB_KB = 1024


def limits(hard_mb: int = 100, soft_mb: int | None = None, inodes: int | None = None,
           isoft: int | None = None, quotatime: int = 0) -> DiskLimits:
    return DiskLimits(hard_kb=hard_mb * MIB_KB, soft_kb=(soft_mb or hard_mb) * MIB_KB, inodes_hard=inodes,
                      inodes_soft=isoft if isoft is not None else inodes, quotatime=quotatime)


def config(text: str) -> ContainerConfig:
    return ContainerConfig.from_conf(ConfFile.parse(text, "<test>"), "<test>")


# a mounted 400 MiB image (made for a 100 MiB hard limit), as statfs and sysfs show it
USAGE = FsUsage(block_count=102400, fs_blocks=98000, free_blocks=97000, inodes=25600, free_inodes=25300,
                reserve=72400)


# ---- limits from a config ---------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ('DISKSPACE="100M:120M"\n', DiskLimits(hard_kb=120 * 1024, soft_kb=100 * 1024)),
    ('DISKSPACE="102400"\n', DiskLimits(hard_kb=102400, soft_kb=102400)),  # 1 KiB blocks, soft = hard
    ('DISKSPACE="1G:1G"\nDISKINODES="1000:2000"\nQUOTATIME="600"\n',
     DiskLimits(hard_kb=1 << 20, soft_kb=1 << 20, inodes_hard=2000, inodes_soft=1000, quotatime=600)),
    ('DISKSPACE="unlimited"\n', None),
    ("", None),
])
def test_limits_come_from_the_config(text: str, expected: DiskLimits | None) -> None:
    assert DiskLimits.from_config(config(text)) == expected


def test_hard_blocks_round_up_to_file_system_blocks() -> None:
    assert DiskLimits(hard_kb=5, soft_kb=5).hard_blocks == 2  # 5 KiB -> two 4 KiB blocks


# ---- the image ----------------------------------------------------------------------------------


def test_image_is_headroom_times_the_hard_limit_and_sparse_inodes_follow_ext4_ratio() -> None:
    spec = quota.image_spec(limits(100))
    assert spec.size == 400 * 1024 * 1024
    assert spec.inodes == spec.size // quota.BYTES_PER_INODE


def test_configured_inodes_are_used_as_the_inode_count() -> None:
    assert quota.image_spec(limits(100, inodes=5000)).inodes == 5000


def test_inodes_beyond_what_ext4_can_hold_are_capped() -> None:
    # 400 MiB = 4 block groups of 128 MiB, at most 32768 inodes each (the sample's 144179 does not fit)
    assert quota.image_spec(limits(100, inodes=144179)).inodes == 4 * 32768


def test_every_block_group_gets_at_least_one_inode_table_block() -> None:
    assert quota.image_spec(limits(100, inodes=10)).inodes == 4 * 16


def test_a_tiny_hard_limit_is_refused() -> None:
    with pytest.raises(VzError) as e:
        quota.image_spec(limits(8))
    assert e.value.kind is Kind.INVALID and "at least 16M" in str(e.value)


def test_mkfs_leaves_no_root_reserve_and_sets_the_inode_count() -> None:
    argv = quota.mkfs_argv(Path("/x/101.img"), quota.ImageSpec(size=1 << 30, inodes=777), "ct101")
    assert argv[0] == "mkfs.ext4" and argv[-1] == "/x/101.img"
    assert argv[argv.index("-m") + 1] == "0"
    assert argv[argv.index("-N") + 1] == "777"
    assert argv[argv.index("-b") + 1] == "4096"


@pytest.mark.parametrize("blocks, reserve", [(102400, 2048), (1 << 20, 4096), (1000, 20)])
def test_default_reserve_is_ext4s_two_percent_capped_at_4096(blocks: int, reserve: int) -> None:
    assert quota.default_reserve(blocks) == reserve


# ---- the reserve: what leaves exactly the hard limit to the container ----------------------------


def test_reserve_leaves_exactly_the_hard_limit() -> None:
    lim = limits(100)
    reserve = USAGE.reserve_for(lim)
    assert (USAGE.fs_blocks - reserve) * 4 == 100 * 1024
    assert USAGE.effective_hard_kb(lim) == (USAGE.fs_blocks - 72400) * 4  # the reserve in force now


def test_reserve_never_drops_below_ext4s_own() -> None:
    huge = DiskLimits(hard_kb=USAGE.fs_blocks * 4, soft_kb=1)
    assert USAGE.reserve_for(huge) == quota.default_reserve(USAGE.block_count)


def test_usage_and_capacity() -> None:
    assert USAGE.used_kb == 1000 * 4
    assert USAGE.used_inodes == 300
    assert USAGE.capacity_kb == (98000 - 2048) * 4


def test_unmounted_effective_limit_is_what_the_next_mount_applies() -> None:
    unmounted = replace(USAGE, reserve=None)
    assert unmounted.effective_hard_kb(limits(100)) == 100 * 1024


# ---- change plans -------------------------------------------------------------------------------


def plan(old: DiskLimits | None, new: DiskLimits | None, usage: FsUsage | None = USAGE, *opts: str,
         running: bool = True, online: bool = False) -> quota.Plan:
    return quota.plan_change(101, old, new, usage, set(opts) or {"diskspace"}, running=running,
                             online_resize=online)


def test_raising_within_the_image_moves_the_reserve_live() -> None:
    p = plan(limits(100), limits(300))
    assert (p.limit, p.grow, p.rebuild) == (True, False, False)
    assert any("307200 KiB (live)" in n for n in p.notes)


def test_lowering_is_live_too_and_warns_when_usage_is_above() -> None:
    full = replace(USAGE, free_blocks=98000 - 40 * 256)  # 40 MiB used
    p = plan(limits(100), limits(20), full)
    assert p.limit and not p.grow
    assert any("writes fail until files are removed" in n for n in p.notes)


def test_raising_beyond_the_image_of_a_running_container_needs_cap_sys_resource() -> None:
    with pytest.raises(VzError) as e:
        plan(limits(100), limits(1000))
    assert e.value.kind is Kind.STATE and "CAP_SYS_RESOURCE" in str(e.value)
    assert plan(limits(100), limits(1000), online=True).grow


def test_raising_beyond_the_image_of_a_stopped_container_resizes_offline() -> None:
    stopped = replace(USAGE, reserve=None)
    p = plan(limits(100), limits(1000), stopped, running=False)
    assert p.grow and not p.limit


def test_inode_change_of_a_running_container_is_refused() -> None:
    with pytest.raises(VzError) as e:
        plan(limits(100, inodes=25600), limits(100, inodes=50000), USAGE, "diskinodes")
    assert e.value.kind is Kind.STATE and "--save" in str(e.value)


def test_inode_change_of_a_stopped_container_rebuilds() -> None:
    assert plan(limits(100, inodes=25600), limits(100, inodes=1000), USAGE, "diskinodes", running=False).rebuild


def test_inode_limit_within_ext4_rounding_changes_nothing() -> None:
    p = plan(limits(100, inodes=25600), limits(100, inodes=25590), USAGE, "diskinodes")
    assert not p.rebuild


def test_inode_limit_below_usage_is_refused() -> None:
    with pytest.raises(VzError) as e:
        plan(limits(100, inodes=25600), limits(100, inodes=100), USAGE, "diskinodes", running=False)
    assert e.value.kind is Kind.INVALID and "300 inodes" in str(e.value)


def test_a_disk_image_cannot_become_unlimited() -> None:
    with pytest.raises(VzError) as e:
        plan(limits(100), None)
    assert e.value.kind is Kind.INVALID


def test_plain_container_keeps_stored_limits_unless_diskspace_is_given() -> None:
    p = plan(None, limits(100), None, "quotatime")
    assert not (p.limit or p.grow or p.rebuild)
    assert "plain directory" in p.notes[0]


def test_plain_running_container_is_not_converted() -> None:
    with pytest.raises(VzError) as e:
        plan(None, limits(100), None)
    assert e.value.kind is Kind.STATE and "stop it" in str(e.value)


def test_plain_stopped_container_is_converted() -> None:
    assert plan(None, limits(100), None, running=False).rebuild


def test_the_inode_soft_limit_is_said_to_be_reported_only_and_the_block_one_is_not() -> None:
    p = plan(limits(100, inodes=5000), limits(100, soft_mb=80, inodes=5000, isoft=4000), USAGE)
    assert any("inode soft limit" in n and "not enforced" in n for n in p.notes)
    p = plan(limits(100), limits(100, soft_mb=80), USAGE)
    assert not any("not enforced" in n for n in p.notes)


# ---- grace --------------------------------------------------------------------------------------


@pytest.mark.parametrize("since, usage, soft, now, expected", [
    (0, 10, 20, 1000, 0),      # below the soft limit
    (0, 30, 20, 1000, 1000),   # first seen above it
    (900, 30, 20, 1000, 900),  # still above: the clock keeps running
    (900, 10, 20, 1000, 0),    # back below: reset
    (0, 30, None, 1000, 0),    # no soft limit
])
def test_grace_clock(since: int, usage: int, soft: int | None, now: int, expected: int) -> None:
    assert quota.grace_since(since, usage, soft, now) == expected


def test_grace_expiry() -> None:
    assert quota.grace_expires(1000, 600) == 1600
    assert quota.grace_expires(0, 600) == 0


# ---- reading the kernel and tools ----------------------------------------------------------------


DUMPE2FS = """dumpe2fs 1.47.0 (5-Feb-2023)
Filesystem volume name:   ct101
Inode count:              25600
Block count:              102400
Reserved block count:     0
Overhead clusters:        4400
Free blocks:              97000
Free inodes:              25300
"""


def test_unmounted_usage_comes_from_the_superblock() -> None:
    u = quota.usage_from_dumpe2fs(quota.parse_dumpe2fs(DUMPE2FS))
    assert (u.block_count, u.fs_blocks, u.free_blocks, u.inodes, u.free_inodes) == (102400, 98000, 97000, 25600,
                                                                                     25300)
    assert u.reserve is None


def test_a_superblock_without_counts_is_an_error() -> None:
    with pytest.raises(VzError):
        quota.usage_from_dumpe2fs(quota.parse_dumpe2fs("Inode count: 5\n"))


@pytest.mark.parametrize("capeff, expected", [("000001fffeffffff", False), ("000001ffffffffff", True)])
def test_cap_sys_resource_detection(capeff: str, expected: bool) -> None:
    status = f"Name:\tpython\nCapInh:\t0000000000000000\nCapEff:\t{capeff}\n"
    assert quota.has_capability(quota.CAP_SYS_RESOURCE, status) is expected


# ---- layout choice -------------------------------------------------------------------------------


def test_explicit_diskspace_at_create_asks_for_a_disk_image() -> None:
    conf = ConfFile.parse('DISKSPACE="100M:100M"\n', "<t>")
    quota.choose_layout(conf, [("diskspace", "100M:100M")])
    assert quota.wants_image(conf)


def test_diskspace_from_the_sample_keeps_the_plain_directory() -> None:
    conf = ConfFile.parse('DISKSPACE="2G:2.2G"\n', "<t>")
    quota.choose_layout(conf, [("hostname", "x")])
    assert not quota.wants_image(conf)


def test_unlimited_diskspace_keeps_the_plain_directory() -> None:
    conf = ConfFile.parse('DISKSPACE="unlimited"\n', "<t>")
    quota.choose_layout(conf, [("diskspace", "unlimited")])
    assert not quota.wants_image(conf)


def test_a_disk_image_config_without_hard_limit_is_invalid() -> None:
    with pytest.raises(VzError) as e:
        quota.limits_of(ConfFile.parse('VE_LAYOUT="image"\n', "<t>"), "<t>")
    assert e.value.kind is Kind.INVALID


@pytest.mark.parametrize("used_mb, since, now, expected_mb", [
    (70, 0, 1000, 100),      # under the soft limit (80): the hard limit holds
    (90, 1000, 1000, 100),   # above it, the grace period (60 s) just started
    (90, 1000, 1059, 100),   # ... and has not run out
    (90, 1000, 1060, 90),    # ran out: held at its usage
    (95, 1000, 2000, 95),    # it grew in between (the check is periodic): held there
    (79, 1000, 2000, 100),   # back under the soft limit: the hard limit again
])
def test_block_limit_now(used_mb: int, since: int, now: int, expected_mb: int) -> None:
    lim = limits(100, soft_mb=80, quotatime=60)
    assert quota.block_limit_now(lim, used_mb * MIB_KB, since, now) == expected_mb * MIB_KB


def test_block_limit_now_without_a_soft_limit_is_the_hard_limit() -> None:
    assert quota.block_limit_now(limits(100), 200 * MIB_KB, 1, 10**9) == 100 * MIB_KB


def test_grace_clocks_taken_over_from_a_migration_source(tmp_path: Path) -> None:
    lay = NodeLayout.at(tmp_path, "n1")
    quota.images_dir(lay).mkdir(parents=True)
    assert quota.grace_clock(lay, 101) == (0, 0)
    now = 1_800_000_000
    quota.set_grace_clock(lay, 101, now - 300, 0, now=now)
    assert quota.grace_clock(lay, 101) == (now - 300, 0)
    quota.set_grace_clock(lay, 102, now + 3600, 5, now=now)  # the future and nonsense are not believed
    assert quota.grace_clock(lay, 102) == (0, 0)
