"""Disk quotas end to end: real busybox containers whose private area is an ext4 disk image
(`vzctl create --diskspace`), driven through vzctl and vzquota as a user runs them."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from agent.layout import NodeLayout
from agent.storage import quota
from integration.harness import Containers, Node, describe

pytestmark = [pytest.mark.privileged, pytest.mark.integration]

MIB = 1 << 20


def expect_exit(node: Node, code: int, *argv: str) -> subprocess.CompletedProcess[str]:
    res = node.cli(*argv, check=False)
    assert res.returncode == code, f"expected exit {code}; " + describe(res, node.root)
    return res


def images_dir(node: Node) -> Path:
    return node.root / "var/lib/vz/images"


def loops_of(node: Node) -> list[str]:
    """Loop devices whose backing file lies under the node's root."""
    res = subprocess.run(["losetup", "--list", "--json", "--output", "NAME,BACK-FILE"], capture_output=True,
                         text=True, timeout=30, check=True)
    devs = json.loads(res.stdout or '{"loopdevices": []}')["loopdevices"]
    return [d["name"] for d in devs if str(d.get("back-file") or "").startswith(str(node.root) + "/")]


def quota_stat(node: Node, ctid: int) -> dict[str, dict[str, int]]:
    out = node.cli("vzquota", "stat", str(ctid), "-j").stdout
    res: dict[str, dict[str, int]] = json.loads(out)["resources"]
    return res


def inside(node: Node, ctid: int, script: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run a shell script in the container; its exit code is returned, not checked."""
    return node.cli("vzctl", "exec2", str(ctid), "/bin/sh", "-c", script, check=False, timeout=timeout)


def test_writes_stop_at_the_hard_limit_and_a_live_raise_lets_them_continue(node: Node, cts: Containers) -> None:
    # given a running container with 100 MiB of disk
    ct = cts.create("--diskspace", "100M:100M", start=True)
    assert 'VE_LAYOUT="image"' in node.conf_file(ct).read_text()
    # when it writes 200 MB
    res = inside(node, ct, "dd if=/dev/zero of=/big bs=1M count=200")
    # then the write fails near 100 MB with "no space", inside the container only
    assert res.returncode != 0 and "No space left on device" in res.stderr, describe(res)
    size = int(inside(node, ct, "stat -c %s /big").stdout)
    assert 90 * MIB < size <= 100 * MIB
    image = images_dir(node) / f"{ct}.img"
    assert image.stat().st_blocks * 512 < 120 * MIB  # the host paid for what was written, no more
    blocks = quota_stat(node, ct)["1k-blocks"]
    assert blocks["hardlimit"] == 102400 and blocks["effective_hardlimit"] == 102400
    assert 90 * 1024 < blocks["usage"] <= 102400
    table = node.cli("vzquota", "stat", str(ct)).stdout.splitlines()
    assert table[0].split() == ["resource", "usage", "softlimit", "hardlimit", "grace"]
    assert table[1].split()[0] == "1k-blocks" and table[2].split()[0] == "inodes"

    # when the limit is raised live (and saved)
    out = node.cli("vzctl", "set", str(ct), "--diskspace", "300M:300M", "--save").stdout
    assert "307200 KiB (live)" in out
    # then the write continues to 200 MB without a restart
    res = inside(node, ct, "dd if=/dev/zero of=/big bs=1M count=100 oflag=append conv=notrunc")
    assert res.returncode == 0, describe(res)
    assert int(inside(node, ct, "stat -c %s /big").stdout) > 190 * MIB
    assert quota_stat(node, ct)["1k-blocks"]["hardlimit"] == 307200
    assert 'DISKSPACE="300M:300M"' in node.conf_file(ct).read_text()

    # when it is lowered below its usage, new writes fail at once (usage stays)
    node.cli("vzctl", "set", str(ct), "--diskspace", "150M:150M")
    res = inside(node, ct, "dd if=/dev/zero of=/more bs=1M count=5")
    assert res.returncode != 0 and "No space left" in res.stderr

    # destroy removes the image and its loop device
    node.destroy_ct(ct)
    assert not image.exists() and loops_of(node) == []


def test_the_soft_limit_holds_after_the_grace_period_until_usage_is_under_it(node: Node, cts: Containers) -> None:
    # given a running container with 40M soft, 100M hard and a 3 s grace period
    ct = cts.create("--diskspace", "40M:100M", "--quotatime", "3", start=True)
    # when it writes past the soft limit, it may (the grace period runs)
    res = inside(node, ct, "dd if=/dev/zero of=/a bs=1M count=50 && sync")
    assert res.returncode == 0, describe(res)
    blocks = quota_stat(node, ct)["1k-blocks"]
    assert blocks["usage"] > 40 * 1024 and blocks["grace_expires"] > 0, blocks
    # then, once the grace period is over (and the agent has looked: every 2 s), no more growth
    deadline = time.monotonic() + 15
    while quota_stat(node, ct)["1k-blocks"]["effective_hardlimit"] >= 100 * 1024:
        assert time.monotonic() < deadline, quota_stat(node, ct)
        time.sleep(0.5)
    res = inside(node, ct, "dd if=/dev/zero of=/b bs=1M count=5")
    assert res.returncode != 0 and "No space left on device" in res.stderr, describe(res)
    # when it gets back under the soft limit, the hard limit is in force again
    assert inside(node, ct, "rm -f /a /b && sync").returncode == 0
    deadline = time.monotonic() + 15
    while quota_stat(node, ct)["1k-blocks"]["effective_hardlimit"] < 100 * 1024:
        assert time.monotonic() < deadline, quota_stat(node, ct)
        time.sleep(0.5)
    res = inside(node, ct, "dd if=/dev/zero of=/c bs=1M count=60")
    assert res.returncode == 0, describe(res)


def test_diskinodes_limits_file_creation_and_changes_when_stopped(node: Node, cts: Containers) -> None:
    ct = cts.create("--diskspace", "64M:64M", "--diskinodes", "600:600", start=True)
    inodes = quota_stat(node, ct)["inodes"]
    assert inodes["hardlimit"] == 600 and 600 <= inodes["effective_hardlimit"] < 700
    # creating files stops with "no space" once the file system's inodes are used up
    res = inside(node, ct, "i=0; while [ $i -lt 2000 ] && touch /f$i; do i=$((i+1)); done; echo $i")
    created = int(res.stdout.split()[-1])
    assert "No space left on device" in res.stderr and 100 < created < 600, describe(res)
    assert quota_stat(node, ct)["inodes"]["usage"] >= inodes["effective_hardlimit"] - 1

    # the inode count of a running container's image cannot change
    res = expect_exit(node, 6, "vzctl", "set", str(ct), "--diskinodes", "3000:3000", "--save")
    assert "stop it" in res.stderr
    # stopped: the image is rebuilt with the new count, files kept
    node.cli("vzctl", "stop", "--fast", str(ct))
    out = node.cli("vzctl", "set", str(ct), "--diskinodes", "3000:3000", "--save").stdout
    assert "rebuilt with 3000 inodes" in out
    node.cli("vzctl", "start", str(ct))
    assert inside(node, ct, f"test -e /f{created - 1} && touch /g1 /g2 /g3").returncode == 0
    assert quota_stat(node, ct)["inodes"]["effective_hardlimit"] >= 3000


def test_plain_container_has_no_quota_until_converted_while_stopped(node: Node, cts: Containers) -> None:
    ct = cts.create(start=True)  # the sample's DISKSPACE alone keeps the plain directory
    assert "VE_LAYOUT" not in node.conf_file(ct).read_text()
    res = expect_exit(node, 6, "vzquota", "stat", str(ct))
    assert "plain directory" in res.stderr
    res = expect_exit(node, 6, "vzctl", "set", str(ct), "--diskspace", "64M:64M", "--save")
    assert "stop it" in res.stderr
    inside(node, ct, "echo kept > /root/note")
    node.cli("vzctl", "stop", "--fast", str(ct))
    node.cli("vzctl", "set", str(ct), "--diskspace", "64M:64M", "--save")
    assert 'VE_LAYOUT="image"' in node.conf_file(ct).read_text()
    node.cli("vzctl", "start", str(ct))
    assert inside(node, ct, "cat /root/note").stdout.strip() == "kept"
    assert quota_stat(node, ct)["1k-blocks"]["hardlimit"] == 65536
    res = inside(node, ct, "dd if=/dev/zero of=/big bs=1M count=100")
    assert "No space left" in res.stderr


def test_a_failed_create_leaves_no_image_loop_device_or_mount(node: Node, cts: Containers, tmp_path: Path) -> None:
    # a template that does not fit in the disk asked for
    fat = tmp_path / "fat.tar"
    with tarfile.open(fat, "w") as t:
        info = tarfile.TarInfo("./big")
        info.size = 40 * MIB
        t.addfile(info, io.BytesIO(os.urandom(info.size)))
    node.cli("vzfleet", "--root", str(node.root), "template", "import", str(fat), "--name", "fat-quota-test")
    try:
        ct = cts.new_ctid()
        res = expect_exit(node, 8, "vzctl", "create", str(ct), "--ostemplate", "fat-quota-test",
                          "--diskspace", "16M:16M")
        assert "No space left" in res.stderr or "space" in res.stderr, describe(res)
        assert not node.conf_file(ct).exists()
        assert [p.name for p in node.private_dir.iterdir() if str(ct) in p.name] == []
        assert [p.name for p in images_dir(node).iterdir() if str(ct) in p.name] == []
        assert loops_of(node) == []
        with open("/proc/self/mountinfo") as f:
            assert str(node.private_dir) not in f.read()
    finally:
        for p in (node.template_cache).glob("fat-quota-test.*"):
            p.unlink()


def test_a_too_small_disk_is_refused_before_anything_is_made(node: Node, cts: Containers) -> None:
    ct = cts.new_ctid()
    res = expect_exit(node, 2, "vzctl", "create", str(ct), "--ostemplate", "busybox", "--diskspace", "8M")
    assert "at least 16M" in res.stderr
    assert not node.conf_file(ct).exists() and not (images_dir(node) / f"{ct}.img").exists()


def test_raising_beyond_the_image_resizes_it_while_stopped(node: Node, cts: Containers) -> None:
    ct = cts.create("--diskspace", "32M:32M")  # an image of 4 x 32M
    out = node.cli("vzctl", "set", str(ct), "--diskspace", "256M:256M", "--save").stdout
    assert "resized to 1024M" in out
    blocks = quota_stat(node, ct)["1k-blocks"]  # read from the unmounted image's superblock
    assert blocks["hardlimit"] == 262144 and blocks["usage"] < 10 * 1024
    node.cli("vzctl", "start", str(ct))
    avail_kb = int(inside(node, ct, "df -k / | tail -1").stdout.split()[3])
    assert 250 * 1024 < avail_kb <= 256 * 1024


def test_prepare_private_makes_the_same_empty_limited_area_for_an_incoming_container(tmp_path: Path) -> None:
    """What a migration destination (or a restore) calls before any file arrives."""
    layout = NodeLayout.at(tmp_path / "dst", "vztprep")
    conf = {"DISKSPACE": "20M:20M", "DISKINODES": "500:500", "VE_LAYOUT": "image"}
    private = layout.private(4242)
    try:
        assert asyncio.run(quota.prepare_private(layout, 4242, conf)) is True
        assert os.path.ismount(private) and os.listdir(private) == []
        # the limit holds before the container exists: even the host's root stops at 20 MiB
        res = subprocess.run(["dd", "if=/dev/zero", f"of={private}/fill", "bs=1M", "count=40"],
                             capture_output=True, text=True, timeout=60)
        assert res.returncode != 0 and "No space left" in res.stderr
        assert 18 * MIB < (private / "fill").stat().st_size <= 20 * MIB
        assert os.statvfs(private).f_files >= 500
        assert asyncio.run(quota.prepare_private(layout, 4243, {"DISKSPACE": "2G:2G"})) is False  # plain
        assert layout.private(4243).is_dir()
    finally:
        asyncio.run(quota.discard_private(layout, 4242))
        asyncio.run(quota.discard_private(layout, 4243))
    assert not private.exists() and not quota.image_path(layout, 4242).exists()
    res = subprocess.run(["losetup", "--list", "--json", "--output", "BACK-FILE"], capture_output=True, text=True,
                         timeout=30)
    assert str(tmp_path) not in res.stdout
