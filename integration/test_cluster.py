"""The local cluster of simulated hardware nodes (`vzfleet up --nodes N`), end to end.

Given a 3-node cluster (three network namespaces on one bridge, an agent each, one etcd), the
nodes answer, reach each other and etcd across the LAN, and `vzctl/vzlist --node` drive one node's
containers and no other's. `down()` leaves nothing behind, also after the agents and etcd were
SIGKILLed. Traffic goes only to addresses inside the namespaces these tests create.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cli.localcluster import LocalCluster, fixed_mac
from integration.cluster import (
    TEST_SUBNET,
    clean_stale_clusters,
    cli,
    in_netns,
    leftovers,
    new_cluster,
    ping_argv,
    record,
    remove,
)
from integration.harness import pid_alive

pytestmark = [
    pytest.mark.privileged,
    pytest.mark.integration,
    pytest.mark.skipif(not Path("/usr/bin/etcd").exists(), reason="etcd-server is not installed (`make install`)"),
]

CRASH_SUBNET = "10.214.1.0/24"


def _host_sysctl(name: str) -> str:
    return Path("/proc/sys", *name.split(".")).read_text().strip()


@pytest.fixture(scope="module")
def cluster3() -> Iterator[LocalCluster]:
    """A 3-node cluster with the busybox template on every node, for this module.

    Teardown: down(), then nothing of it may remain (namespaces, processes, runc state, cgroups, mounts).
    """
    stale = clean_stale_clusters()
    if stale:
        pytest.fail("test clusters left by an earlier run could not be removed:\n  " + "\n  ".join(stale),
                    pytrace=False)
    host_forwarding = _host_sysctl("net.ipv4.ip_forward")
    cluster = new_cluster(TEST_SUBNET)
    rec = None
    try:
        t0 = time.monotonic()
        cluster.up(3)
        print(f"3-node cluster up in {time.monotonic() - t0:.2f} s")
        rec = record(cluster)
        cluster.ensure_template()
        yield cluster
    finally:
        t0 = time.monotonic()
        remove(cluster)
        print(f"3-node cluster down in {time.monotonic() - t0:.2f} s")
        left = leftovers(rec) if rec else []
        if left:
            pytest.fail(f"cluster {cluster.prefix} left behind:\n  " + "\n  ".join(left), pytrace=False)
        assert _host_sysctl("net.ipv4.ip_forward") == host_forwarding, "the host's ip_forward was changed"


def _nodes(cluster: LocalCluster) -> list[dict[str, Any]]:
    state = cluster.state()
    assert state is not None
    return list(state["nodes"])


def _ok(res: Any) -> str:
    assert res.returncode == 0, f"`{' '.join(res.args)}` exited {res.returncode}\n{res.stdout}\n{res.stderr}"
    return str(res.stdout)


def test_every_node_answers_status_and_up_is_idempotent(cluster3: LocalCluster) -> None:
    before = [n["pid"] for n in _nodes(cluster3)]

    data = json.loads(_ok(cli(cluster3.base, "vzfleet", "status", "-j")))
    text = _ok(cli(cluster3.base, "vzfleet", "status"))

    assert data["healthy"] is True
    assert data["etcd_health"] == "healthy"
    assert [n["name"] for n in data["nodes"]] == [n["name"] for n in _nodes(cluster3)]
    assert all(n["agent_alive"] for n in data["nodes"]), data["nodes"]
    for n in _nodes(cluster3):
        assert n["name"] in text and n["address"] in text
    cluster3.up(3)  # already up: nothing restarts
    assert [n["pid"] for n in _nodes(cluster3)] == before


def test_nodes_reach_each_other_across_the_lan(cluster3: LocalCluster) -> None:
    nodes = _nodes(cluster3)
    for a in nodes:
        for b in nodes:
            if a is not b:
                _ok(in_netns(a["netns"], ping_argv(b["address"])))


def test_node_namespaces_are_planned_as_documented(cluster3: LocalCluster) -> None:
    state = cluster3.state()
    assert state is not None
    lan = state["lan"]
    br = _ok(in_netns(lan["netns"], ["ip", "-o", "link", "show", "br0"]))
    assert fixed_mac(f"{cluster3.prefix}/br0") in br
    for i, n in enumerate(_nodes(cluster3), start=1):
        assert n["address"] == f"10.214.0.{10 + i}"
        eth0 = _ok(in_netns(n["netns"], ["ip", "-o", "addr", "show", "eth0"]))
        assert f"{n['address']}/24" in eth0
        assert _ok(in_netns(n["netns"], ["ip", "route", "show", "default"])).strip() == ""
        forwarding = _ok(in_netns(n["netns"], ["sysctl", "-n", "net.ipv4.ip_forward",
                                               "net.ipv6.conf.all.forwarding"]))
        assert forwarding.split() == ["1", "1"]


def test_etcd_answers_from_node3(cluster3: LocalCluster) -> None:
    state = cluster3.state()
    assert state is not None
    endpoint = state["etcd"]["endpoint"]
    n3 = _nodes(cluster3)[2]["netns"]

    version = json.loads(_ok(in_netns(n3, ["curl", "-sS", "-m", "5", f"{endpoint}/version"])))
    key, value = base64.b64encode(b"vzfleet/test").decode(), base64.b64encode(b"hello").decode()
    _ok(in_netns(n3, ["curl", "-sS", "-m", "5", "-X", "POST", "-d", json.dumps({"key": key, "value": value}),
                      f"{endpoint}/v3/kv/put"]))
    got = json.loads(_ok(in_netns(n3, ["curl", "-sS", "-m", "5", "-X", "POST", "-d", json.dumps({"key": key}),
                                       f"{endpoint}/v3/kv/range"])))

    assert version["etcdserver"].startswith("3.")
    assert base64.b64decode(got["kvs"][0]["value"]) == b"hello"


def test_vzctl_and_vzlist_drive_one_node(cluster3: LocalCluster) -> None:
    n1, n2 = _nodes(cluster3)[0]["name"], _nodes(cluster3)[1]["name"]
    try:
        _ok(cli(cluster3.base, "vzctl", "--node", n2, "create", "101", "--ostemplate", "busybox"))
        started = _ok(cli(cluster3.base, "vzctl", "--node", n2, "start", "101"))
        init_pid = int(re.search(r"init pid (\d+)", started).group(1))  # type: ignore[union-attr]

        out = _ok(cli(cluster3.base, "vzctl", "--node", n2, "exec", "101", "echo hello from $(hostname)"))
        on_n2 = _ok(cli(cluster3.base, "vzlist", "--node", n2, "-H", "-o", "ctid"))
        on_n1 = _ok(cli(cluster3.base, "vzlist", "--node", n1, "-a", "-H", "-o", "ctid"))
        cgroup = Path(f"/proc/{init_pid}/cgroup").read_text()

        assert out.startswith("hello from")
        assert on_n2.split() == ["101"]
        assert on_n1.split() == []
        assert f"/vzfleet/{n2}/101" in cgroup

        _ok(cli(cluster3.base, "vzctl", "--node", n2, "stop", "101", "--fast"))
        _ok(cli(cluster3.base, "vzctl", "--node", n2, "destroy", "101"))
        assert _ok(cli(cluster3.base, "vzlist", "--node", n2, "-a", "-H", "-o", "ctid")).split() == []
    finally:
        cli(cluster3.base, "vzctl", "--node", n2, "stop", "101", "--fast")
        cli(cluster3.base, "vzctl", "--node", n2, "destroy", "101")


def test_up_restarts_a_killed_agent_which_readopts_its_containers(cluster3: LocalCluster) -> None:
    nodes = _nodes(cluster3)
    n3 = nodes[2]
    try:
        _ok(cli(cluster3.base, "vzctl", "--node", n3["name"], "create", "102", "--ostemplate", "busybox"))
        started = _ok(cli(cluster3.base, "vzctl", "--node", n3["name"], "start", "102"))
        init_pid = int(re.search(r"init pid (\d+)", started).group(1))  # type: ignore[union-attr]
        os.kill(n3["pid"], signal.SIGKILL)
        _wait_dead([n3["pid"]])

        cluster3.up(3)

        after = _nodes(cluster3)
        assert [n["pid"] for n in after[:2]] == [n["pid"] for n in nodes[:2]]
        assert after[2]["pid"] != n3["pid"]
        assert pid_alive(init_pid)
        listed = _ok(cli(cluster3.base, "vzlist", "--node", n3["name"], "-H", "-o", "ctid,status"))
        assert listed.split() == ["102", "running"]
    finally:
        cli(cluster3.base, "vzctl", "--node", n3["name"], "stop", "102", "--fast")
        cli(cluster3.base, "vzctl", "--node", n3["name"], "destroy", "102")


def test_unknown_node_exits_2_and_names_the_nodes(cluster3: LocalCluster) -> None:
    res = cli(cluster3.base, "vzctl", "--node", "nosuch", "status", "101")

    assert res.returncode == 2
    assert all(n["name"] in res.stderr for n in _nodes(cluster3))
    assert cli(cluster3.base, "vzlist", "--node", "nosuch").returncode == 2


def test_no_cluster_exits_3(tmp_path: Path) -> None:
    res = cli(tmp_path, "vzlist", "--node", "n1")  # a base without a cluster in it

    assert res.returncode == 3
    assert "vzfleet up --nodes" in res.stderr


def _wait_dead(pids: list[int], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in pids:
            try:
                os.waitpid(pid, os.WNOHANG)  # ours when up() ran in this process
            except ChildProcessError:
                pass
        if not any(pid_alive(p) for p in pids):
            return
        time.sleep(0.05)
    raise AssertionError(f"processes {pids} still alive after SIGKILL")


@pytest.mark.parametrize("state_file", ["kept", "lost"])
def test_down_after_a_crash_removes_everything(state_file: str) -> None:
    cluster = new_cluster(CRASH_SUBNET)
    try:
        cluster.up(1)
        cluster.ensure_template()
        rec = record(cluster)
        node = _nodes(cluster)[0]["name"]
        _ok(cli(cluster.base, "vzctl", "--node", node, "create", "101", "--ostemplate", "busybox"))
        started = _ok(cli(cluster.base, "vzctl", "--node", node, "start", "101"))
        init_pid = int(re.search(r"init pid (\d+)", started).group(1))  # type: ignore[union-attr]

        # the crash: agent and etcd die at once; the container keeps running
        for pid in rec.pids:
            os.kill(pid, signal.SIGKILL)
        _wait_dead(list(rec.pids))
        if state_file == "lost":
            (cluster.base / "cluster.json").unlink()
        survivor = (LocalCluster.at(cluster.base) if state_file == "kept" else
                    LocalCluster(prefix=cluster.prefix, node_prefix=cluster.prefix, base=cluster.base))
        t0 = time.monotonic()
        done = survivor.down()
        print(f"down after a crash ({state_file} state file) in {time.monotonic() - t0:.2f} s")

        assert leftovers(rec) == []
        assert not pid_alive(init_pid), "the container's init survived down()"
        assert any("container 101 killed" in line for line in done), done
        assert survivor.down() == []  # idempotent
    finally:
        remove(cluster)
