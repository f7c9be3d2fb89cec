"""Container networking on a 3-node test cluster (issue 4, point 6), end to end through `vzctl --node`.

Given a private 3-node cluster (its own prefix and LAN 10.217.0.0/24) and busybox containers whose init
runs `httpd` on port 80 serving "ct CTID on NODE": a venet container answers on its IP from another node
and from the LAN; its address moves to another node with a gratuitous ARP that re-points the LAN's
neighbour entry at once; duplicate addresses are refused and change nothing; live `--ipadd/--ipdel`
work and `stop` leaves no proxy neighbour entry or host route; a bridged veth (`--netif_add`) has stable
MACs; `--netfilter disabled` takes CAP_NET_ADMIN away and no container sees the node's interfaces.
The module's fixture takes the cluster down and fails if any namespace, runc state, mount, cgroup or
process of it is left.

Traffic goes only to addresses inside this module's namespaces: the nodes', the LAN's, the
containers' (10.217.0.0/24) and a bridge subnet inside node 1 (10.217.5.0/24). Every wait is bounded.
"""

from __future__ import annotations

import json
import os
import re
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.network.plan import bridge_mac, derived_mac
from cli.localcluster import LocalCluster, http_get
from cli.localcluster import in_netns as in_netns_thread
from integration.cluster import (
    clean_stale_clusters,
    cli,
    in_netns,
    leftovers,
    new_cluster,
    record,
    remove,
    stray_processes,
)

pytestmark = [
    pytest.mark.privileged,
    pytest.mark.integration,
    pytest.mark.skipif(not Path("/usr/bin/etcd").exists(), reason="etcd-server is not installed (`make install`)"),
]

SUBNET = "10.217.0.0/24"
NET = "10.217.0"
BRIDGE_NET = "10.217.5"  # addresses on a veth bridge inside node 1 and its container only
EXIT_EXISTS = 5
MOVE_ANSWER_WITHIN_S = 1.0
POLL_S = 0.05

INITTAB = """\
::sysinit:/etc/init.d/rcS
::respawn:/bin/busybox httpd -f -p 80 -h /www
::shutdown:/bin/umount -a -r
"""
CAP_NET_ADMIN = 12
MARK = "@@vzfleet-test "


# ---- the cluster ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Node:
    name: str
    netns: str
    address: str
    mac: str
    root: Path

    def conf(self, ctid: int) -> Path:
        return self.root / "etc/vz/conf" / f"{ctid}.conf"

    def private(self, ctid: int) -> Path:
        return self.root / "var/lib/vz/private" / str(ctid)

    def partial(self, ctid: int) -> Path:
        return self.root / "var/lib/vz/private" / f".{ctid}.partial"

    def ct_netns(self, ctid: int) -> str:
        return f"vz-{self.name}-{ctid}"

    @property
    def agent_log(self) -> Path:
        return self.root / "var/log/vzfleet/agent.log"


class Cluster3:
    """The module's 3-node cluster as the tests use it."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        state = cluster.state()
        assert state is not None
        self.lan = str(state["lan"]["netns"])
        self.lan_address = str(state["lan"]["address"])
        self.nodes = tuple(Node(name=str(n["name"]), netns=str(n["netns"]), address=str(n["address"]),
                                mac=str(n["mac"]).lower(), root=Path(n["root"])) for n in state["nodes"])
        self.n1, self.n2, self.n3 = self.nodes

    def vzctl(self, node: Node, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return cli(self.cluster.base, "vzctl", "--node", node.name, *args, timeout=timeout)

    def ok(self, node: Node, *args: str) -> str:
        res = self.vzctl(node, *args)
        assert res.returncode == 0, describe(res, node)
        return res.stdout

    def sh(self, node: Node, ctid: int, command: str) -> subprocess.CompletedProcess[str]:
        """command through /bin/sh inside the container; the result carries the command's exit code."""
        return self.vzctl(node, "exec2", str(ctid), command, timeout=30)

    def sh_ok(self, node: Node, ctid: int, command: str) -> str:
        res = self.sh(node, ctid, command)
        assert res.returncode == 0, describe(res, node)
        return res.stdout

    def inside(self, node: Node, ctid: int, **commands: str) -> dict[str, Out]:
        """Several shell commands run inside the container by one `vzctl exec2`: name -> (exit code,
        stdout and stderr). One exec per check would cost a CLI start and an agent round trip each."""
        script = "".join(f"echo '{MARK}{name}'; ( {cmd} ) 2>&1; echo \"{MARK}rc $?\"; "
                         for name, cmd in commands.items())
        res = self.sh(node, ctid, script)
        assert res.returncode == 0, describe(res, node)
        found: dict[str, Out] = {}
        name, lines = "", list[str]()
        for line in res.stdout.splitlines():
            if (at := line.find(f"{MARK}rc ")) >= 0:  # after output without a final newline too
                lines += [line[:at]] if at else []
                found[name] = Out(int(line[at + len(MARK) + 3:]), "\n".join(lines) + ("\n" if lines else ""))
            elif line.startswith(MARK):
                name, lines = line[len(MARK):], []
            else:
                lines.append(line)
        assert found.keys() == commands.keys(), describe(res, node)
        return found


@dataclass(frozen=True)
class Out:
    rc: int
    text: str

    def ok(self) -> str:
        assert self.rc == 0, f"exit {self.rc}: {self.text}"
        return self.text


def describe(res: subprocess.CompletedProcess[str], node: Node | None = None) -> str:
    text = (f"`{' '.join(str(a) for a in res.args)}` exited {res.returncode}\n"
            f"--- stdout\n{res.stdout}--- stderr\n{res.stderr}---")
    if node is not None:
        text += f"\n--- tail of {node.agent_log}\n{_tail(node.agent_log)}"
    return text


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@pytest.fixture(scope="module")
def nc() -> Iterator[Cluster3]:
    """A 3-node cluster with the busybox template on every node; torn down with leftover checks."""
    stale = clean_stale_clusters()
    if stale:
        pytest.fail("test clusters left by an earlier run could not be removed:\n  " + "\n  ".join(stale),
                    pytrace=False)
    cluster = new_cluster(SUBNET)
    rec = None
    try:
        t0 = time.monotonic()
        cluster.up(3)
        rec = record(cluster)
        cluster.ensure_template()
        print(f"3-node cluster up with its template in {time.monotonic() - t0:.2f} s")
        yield Cluster3(cluster)
    finally:
        t0 = time.monotonic()
        remove(cluster)
        print(f"3-node cluster down in {time.monotonic() - t0:.2f} s")
    left = leftovers(rec) if rec else []
    left += [f"process {pid}: {' '.join(argv)}" for pid, argv in stray_processes(cluster.base).items()]
    if left:
        pytest.fail(f"cluster {cluster.prefix} left behind:\n  " + "\n  ".join(left), pytrace=False)


# ---- containers -------------------------------------------------------------------------------


def ip_of(ctid: int) -> str:
    return f"{NET}.{ctid}"


def page(ctid: int, node: Node) -> str:
    return f"ct {ctid} on {node.name}"


class Cts:
    """The containers of one test: made (busybox whose init serves page(ctid, node) over HTTP on port 80)
    or merely tracked (a create that should be refused); all are destroyed after the test."""

    def __init__(self, nc: Cluster3) -> None:
        self.nc = nc
        self.where: list[tuple[Node, int]] = []

    def track(self, node: Node, *ctids: int) -> None:
        self.where += [(node, c) for c in ctids if (node, c) not in self.where]

    def make(self, node: Node, ctid: int, *params: str, start: bool = True) -> int:
        self.track(node, ctid)
        self.nc.ok(node, "create", str(ctid), "--ostemplate", "busybox", *params)
        priv = node.private(ctid)
        (priv / "etc/inittab").write_text(INITTAB)
        (priv / "www/index.html").write_text(page(ctid, node) + "\n")
        if start:
            self.nc.ok(node, "start", str(ctid))
        return ctid

    def _destroy(self, node: Node, ctid: int) -> str | None:
        self.nc.vzctl(node, "stop", str(ctid), "--fast")
        res = self.nc.vzctl(node, "destroy", str(ctid))
        return None if res.returncode in (0, 4) else f"destroy {ctid} on {node.name}: {res.stderr.strip()}"

    def destroy_all(self) -> list[str]:
        """Stop and destroy them all, in parallel (each container has its own lock in the agent)."""
        with ThreadPoolExecutor(max_workers=4) as pool:
            done = list(pool.map(lambda w: self._destroy(*w), self.where))
        return [p for p in done if p]


@pytest.fixture
def cts(nc: Cluster3) -> Iterator[Cts]:
    c = Cts(nc)
    try:
        yield c
    finally:
        problems = c.destroy_all()
        if problems:
            pytest.fail("cleanup of the test's containers failed:\n  " + "\n  ".join(problems), pytrace=False)


# ---- probes (from inside the module's namespaces only) ------------------------------------------


def busybox_ping(netns: str, address: str) -> subprocess.CompletedProcess[str]:
    return in_netns(netns, ["busybox", "ping", "-c", "1", "-W", "1", address], timeout=10)


def busybox_wget(netns: str, address: str) -> subprocess.CompletedProcess[str]:
    # no -T: busybox-static 1.35 wget segfaults with it (Debian 12); the subprocess timeout bounds it
    return in_netns(netns, ["busybox", "wget", "-q", "-O", "-", f"http://{address}/"], timeout=10)


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = int(sum(struct.unpack(f"!{len(data) // 2}H", data)))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


_seq = 0


def icmp_echo(address: str, timeout: float) -> bool:
    """One ICMP echo from the calling thread's network namespace: True if address replied in time."""
    global _seq
    _seq = (_seq + 1) & 0xFFFF
    ident, seq = os.getpid() & 0xFFFF, _seq
    header = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
    payload = b"vzfleet-test"
    packet = struct.pack("!BBHHH", 8, 0, _checksum(header + payload), ident, seq) + payload
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as s:
        deadline = time.monotonic() + timeout
        try:
            s.sendto(packet, (address, 0))
            while (left := deadline - time.monotonic()) > 0:
                s.settimeout(left)
                data, (src, _) = s.recvfrom(2048)
                icmp = data[(data[0] & 0x0F) * 4:]
                if src == address and len(icmp) >= 8 and icmp[0] == 0 and struct.unpack("!HH", icmp[4:8]) == (ident,
                                                                                                           seq):
                    return True
        except OSError:  # timeout, or EHOSTUNREACH while the neighbour is unresolved
            return False
    return False


def echo_from(netns: str, address: str, timeout: float = 0.1) -> bool:
    return in_netns_thread(netns, lambda: icmp_echo(address, timeout), timeout + 2.0)


def wait_echo(netns: str, address: str, *, answers: bool, within: float) -> float | None:
    """Poll every POLL_S until address does (answers=True) or does not answer; seconds taken, or None."""
    t0 = time.monotonic()
    while True:
        if echo_from(netns, address) == answers:
            return time.monotonic() - t0
        if time.monotonic() - t0 > within:
            return None
        time.sleep(POLL_S)


def wait_http(netns: str, address: str, within: float = 5.0) -> str:
    """The body of GET http://address/ fetched by a thread inside netns (retried while httpd starts)."""
    deadline = time.monotonic() + within
    last = ""
    while time.monotonic() < deadline:
        try:
            status, body = in_netns_thread(netns, lambda: http_get(address, 80, "/", timeout=1.0), 5.0)
            if status == 200:
                return body.strip()
            last = f"HTTP {status}"
        except (OSError, TimeoutError) as e:
            last = str(e)
        time.sleep(0.1)
    raise AssertionError(f"no HTTP answer from {address} in {netns} within {within:g} s ({last})")


def ip_json(*args: str) -> list[dict[str, Any]]:
    res = subprocess.run(["ip", "-j", *args], capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL)
    assert res.returncode == 0, describe(res)
    out: list[dict[str, Any]] = json.loads(res.stdout or "[]")
    return out


def neighbour_mac(netns: str, address: str) -> str | None:
    """The MAC netns's neighbour cache holds for address, if any."""
    for entry in ip_json("-n", netns, "neigh", "show", address):
        if entry.get("dst") == address and "lladdr" in entry:
            return str(entry["lladdr"]).lower()
    return None


def proxy_entries(node: Node) -> set[str]:
    return {str(e["dst"]) for e in ip_json("-n", node.netns, "neigh", "show", "proxy")}


def host_routes(node: Node) -> dict[str, str]:
    """address -> device of the node's /32 host routes."""
    return {str(r["dst"]): str(r.get("dev", "")) for r in ip_json("-n", node.netns, "-4", "route", "show")
            if "/" not in str(r["dst"]) and r["dst"] != "default"}


def has_net_admin(proc_status: str) -> bool:
    """CAP_NET_ADMIN in the effective set of a /proc/PID/status text."""
    m = re.search(r"^CapEff:\s*([0-9a-f]+)$", proc_status, re.M)
    assert m, proc_status
    return bool(int(m.group(1), 16) & (1 << CAP_NET_ADMIN))


def link_names(ip_o_link: str) -> list[str]:
    """Interface names of `ip -o link show` output ("2: venet0@if5: <...") ."""
    return sorted(re.sub(r"@.*", "", line.split(":")[1].strip()) for line in ip_o_link.splitlines() if line.strip())


def _link(netns: str, name: str) -> dict[str, Any]:
    links = ip_json("-n", netns, "link", "show", "dev", name)
    assert len(links) == 1, links
    return links[0]


def bridge_ports(node: Node, bridge: str) -> list[dict[str, Any]]:
    return ip_json("-n", node.netns, "link", "show", "master", bridge)


# ---- 1. a venet container answers on its IP ------------------------------------------------------


def test_venet_container_answers_from_another_node_and_the_lan(nc: Cluster3, cts: Cts) -> None:
    # given: a container on n1 with an address of the LAN, a hostname, a nameserver and a search domain
    n1, n2 = nc.n1, nc.n2
    ip = ip_of(101)
    cts.make(n1, 101, "--ipadd", ip, "--hostname", "web101.vz.test", "--nameserver", f"{NET}.53",
             "--searchdomain", "vz.test")

    # when: node n2 and the LAN ping it and fetch its page (busybox wget from n2, a Python socket in a
    # thread that entered the LAN's namespace)
    body_lan = wait_http(nc.lan, ip)  # (retried until init has started httpd)
    body_n2 = busybox_wget(n2.netns, ip)
    pings = {ns: busybox_ping(ns, ip) for ns in (n2.netns, nc.lan)}
    seen = nc.inside(n1, 101, addr="ip -o -4 addr show dev venet0", routes="ip -4 route show",
                     hosts="cat /etc/hosts", resolv="cat /etc/resolv.conf")

    # then: it answers both, with its own page
    for ns, res in pings.items():
        assert res.returncode == 0 and "1 packets received" in res.stdout, f"from {ns}: {describe(res)}"
    assert body_n2.returncode == 0 and body_n2.stdout.strip() == page(101, n1), describe(body_n2)
    assert body_lan == page(101, n1)
    # and inside: the address on venet0 as /32, the default route through venet0, hosts and resolv.conf
    assert re.search(rf"inet {re.escape(ip)}/32\b", seen["addr"].ok()), seen["addr"]
    routes = seen["routes"].ok().splitlines()
    assert any(re.fullmatch(r"default dev venet0( .*)?", r.strip()) for r in routes), routes
    hosts = seen["hosts"].ok().splitlines()
    assert any(line.split() == [ip, "web101.vz.test", "web101"] for line in hosts), hosts
    resolv = seen["resolv"].ok().splitlines()
    assert "search vz.test" in resolv and f"nameserver {NET}.53" in resolv, resolv
    # and n1 answers for it on the LAN with its own MAC (proxy ARP), through a host route to venet101
    assert neighbour_mac(nc.lan, ip) == n1.mac
    assert ip in proxy_entries(n1)
    assert host_routes(n1).get(ip) == "venet101"


# ---- 2. the same IP moves to another node ---------------------------------------------------------


def test_address_recreated_on_another_node_answers_within_1s(nc: Cluster3, cts: Cts) -> None:
    # given: 102 on n1, and the LAN has talked to it, so its neighbour cache points the address at n1
    n1, n2 = nc.n1, nc.n2
    ip = ip_of(102)
    cts.make(n1, 102, "--ipadd", ip)
    assert wait_http(nc.lan, ip) == page(102, n1)
    assert neighbour_mac(nc.lan, ip) == n1.mac
    nc.ok(n1, "stop", "102", "--fast")
    nc.ok(n1, "destroy", "102")
    assert ip not in proxy_entries(n1) and ip not in host_routes(n1)
    assert neighbour_mac(nc.lan, ip) == n1.mac, "the LAN forgot n1's entry: the test would prove nothing"

    # when: the same address is created and started on n2
    cts.make(n2, 102, "--ipadd", ip, start=False)
    t0 = time.monotonic()
    nc.ok(n2, "start", "102")
    returned = time.monotonic()
    mac_at_return = neighbour_mac(nc.lan, ip)
    took = wait_echo(nc.lan, ip, answers=True, within=3.0)
    print(f"start on n2 took {returned - t0:.2f} s; first echo reply {took} s after it returned")

    # then: the announcement re-pointed the LAN's entry at n2 at once (before any traffic: without it
    # n1 would still relay the packets), and the address answers within 1 s, from n2
    assert mac_at_return == n2.mac, f"after start the LAN still maps {ip} to {mac_at_return} (n1 is {n1.mac})"
    assert took is not None and took <= MOVE_ANSWER_WITHIN_S, f"first reply after {took} s"
    assert wait_http(nc.lan, ip) == page(102, n2)


# ---- 3. duplicate addresses ------------------------------------------------------------------------


def test_duplicate_addresses_are_refused_and_change_nothing(nc: Cluster3, cts: Cts) -> None:
    # given: 103 running on n1, and 104 (stopped) on n1 with an address of its own
    n1, n2 = nc.n1, nc.n2
    taken = ip_of(103)
    cts.make(n1, 103, "--ipadd", taken)
    cts.make(n1, 104, "--ipadd", ip_of(104), start=False)
    conf104 = n1.conf(104).read_text()
    before = {n.name: (proxy_entries(n), host_routes(n)) for n in nc.nodes}
    cts.track(n2, 113)
    cts.track(n1, 115)

    # when: n2 creates a container with 103's address (seen only on the LAN: n1 answers ARP for it)
    other_node = nc.vzctl(n2, "create", "113", "--ostemplate", "busybox", "--ipadd", taken)
    # then: refused, naming the address, and nothing of 113 exists on n2
    assert other_node.returncode == EXIT_EXISTS and taken in other_node.stderr, describe(other_node, n2)
    assert not n2.conf(113).exists() and not n2.private(113).exists() and not n2.partial(113).exists()

    # when: 104 asks for 103's address on the same node
    same_node = nc.vzctl(n1, "set", "104", "--ipadd", taken, "--save")
    # then: refused, naming container 103; 104's config is unchanged
    assert same_node.returncode == EXIT_EXISTS, describe(same_node, n1)
    assert "container 103" in same_node.stderr, describe(same_node, n1)
    assert n1.conf(104).read_text() == conf104

    # when: a node's own LAN address is asked for (this node's, other nodes', the LAN bridge's)
    refused = {
        n1.address: nc.vzctl(n1, "create", "115", "--ostemplate", "busybox", "--ipadd", n1.address),
        n2.address: nc.vzctl(n1, "create", "115", "--ostemplate", "busybox", "--ipadd", n2.address),
        nc.lan_address: nc.vzctl(n1, "create", "115", "--ostemplate", "busybox", "--ipadd", nc.lan_address),
        nc.n3.address: nc.vzctl(n1, "set", "104", "--ipadd", nc.n3.address, "--save"),
    }
    # then: each is refused naming the address, and nothing changed anywhere
    for addr, res in refused.items():
        assert res.returncode == EXIT_EXISTS and addr in res.stderr, describe(res, n1)
    assert not n1.conf(115).exists() and not n1.private(115).exists() and not n1.partial(115).exists()
    assert n1.conf(104).read_text() == conf104
    assert {n.name: (proxy_entries(n), host_routes(n)) for n in nc.nodes} == before
    assert wait_http(nc.lan, taken) == page(103, n1)  # the owner still answers


# ---- 4. live --ipadd / --ipdel, and stop cleans the node -----------------------------------------


def test_ipadd_and_ipdel_on_a_running_container_and_stop_leaves_no_routes(nc: Cluster3, cts: Cts) -> None:
    # given: 106 running on n1 with one address
    n1 = nc.n1
    base, extra = ip_of(106), ip_of(126)
    cts.make(n1, 106, "--ipadd", base)

    # when: an address is added to the running container with --save
    nc.ok(n1, "set", "106", "--ipadd", extra, "--save")
    # then: it answers from the LAN (the page is 106's) and is stored
    assert wait_echo(nc.lan, extra, answers=True, within=2.0) is not None, f"{extra} does not answer"
    assert wait_http(nc.lan, extra) == page(106, n1)
    assert extra in n1.conf(106).read_text()

    # when: it is removed again
    nc.ok(n1, "set", "106", "--ipdel", extra, "--save")
    # then: it stops answering and is gone inside, from n1's proxy entries and from the config
    # (n1's host route for it: test_ipdel_frees_the_address_on_the_node); the first address still answers
    assert wait_echo(nc.lan, extra, answers=False, within=2.0) is not None, f"{extra} still answers"
    assert extra not in nc.sh_ok(n1, 106, "ip -o -4 addr show dev venet0")
    assert extra not in proxy_entries(n1)
    assert extra not in n1.conf(106).read_text()
    assert wait_echo(nc.lan, base, answers=True, within=2.0) is not None

    # when: the container stops
    assert base in proxy_entries(n1) and host_routes(n1).get(base) == "venet106"
    nc.ok(n1, "stop", "106")
    # then: n1 keeps no proxy neighbour entry or host route of its addresses
    assert not {base, extra} & proxy_entries(n1), ip_json("-n", n1.netns, "neigh", "show", "proxy")
    assert not {base, extra} & host_routes(n1).keys(), ip_json("-n", n1.netns, "-4", "route", "show")


def test_ipdel_frees_the_address_on_the_node(nc: Cluster3, cts: Cts) -> None:
    # given: 110 running on n1, given an address with --save and then without it again
    n1 = nc.n1
    freed = ip_of(120)
    cts.make(n1, 110, "--ipadd", ip_of(110))
    nc.ok(n1, "set", "110", "--ipadd", freed, "--save")
    nc.ok(n1, "set", "110", "--ipdel", freed, "--save")
    cts.track(n1, 111)

    # when: another container of the node asks for that address
    res = nc.vzctl(n1, "create", "111", "--ostemplate", "busybox", "--ipadd", freed)
    routes = host_routes(n1)

    # then: n1 kept no host route for it, and the address is free to take
    assert freed not in routes, f"host route left after --ipdel: {freed} dev {routes.get(freed)}"
    assert res.returncode == 0, describe(res, n1)


def test_address_added_without_save_is_gone_from_the_node_after_stop(nc: Cluster3, cts: Cts) -> None:
    # given: 107 running on n1 with one address, and a second one added live (without --save)
    n1, n2 = nc.n1, nc.n2
    base, live = ip_of(107), ip_of(117)
    cts.make(n1, 107, "--ipadd", base)
    nc.ok(n1, "set", "107", "--ipadd", live)
    assert wait_http(nc.lan, live) == page(107, n1)  # it works while the container runs
    assert live not in n1.conf(107).read_text()

    # when: the container stops
    nc.ok(n1, "stop", "107")

    # then: no proxy neighbour entry or host route is left for any of its addresses
    left = {a for a in (base, live) if a in proxy_entries(n1) or a in host_routes(n1)}
    assert not left, (f"left on {n1.name} after stop: {sorted(left)}; proxy entries: "
                      f"{ip_json('-n', n1.netns, 'neigh', 'show', 'proxy')}")
    # and another node may take the address (n1 does not answer ARP for it any more)
    cts.track(n2, 117)
    res = nc.vzctl(n2, "create", "117", "--ostemplate", "busybox", "--ipadd", live)
    assert res.returncode == 0, describe(res, n2)


# ---- 5. veth mode ---------------------------------------------------------------------------------


def test_bridged_veth_has_stable_macs_and_reaches_the_node(nc: Cluster3, cts: Cts) -> None:
    # given: 105 on n1 with a bridged veth eth0 on vzbr0, which n1 does not have yet
    n1 = nc.n1
    ct_mac, host_mac = derived_mac(105, 0), derived_mac(105, 0, host_side=True)
    assert not ip_json("-n", n1.netns, "link", "show", "type", "bridge"), "n1 already has a bridge"
    cts.make(n1, 105, start=False)
    nc.ok(n1, "set", "105", "--netif_add", "eth0,,,,vzbr0", "--save")
    try:
        # when: it starts
        nc.ok(n1, "start", "105")
        eth0 = nc.sh_ok(n1, 105, "ip -o link show dev eth0")

        # then: eth0 inside carries the MAC derived from the CTID, locally administered unicast
        assert f"link/ether {ct_mac} " in eth0, eth0
        assert int(ct_mac.split(":")[0], 16) & 0x03 == 0x02
        # and the node end is enslaved to vzbr0, which got a fixed locally administered MAC
        ports = bridge_ports(n1, "vzbr0")
        assert [(p["address"], p.get("master")) for p in ports] == [(host_mac, "vzbr0")], ports
        br_mac = str(_link(n1.netns, "vzbr0")["address"])
        assert br_mac == bridge_mac("vzbr0") and int(br_mac.split(":")[0], 16) & 0x03 == 0x02

        # when: the bridge gets an address on the node and eth0 one inside (container's own business)
        subprocess.run(["ip", "-n", n1.netns, "addr", "add", f"{BRIDGE_NET}.1/24", "dev", "vzbr0"], check=True,
                       timeout=10)
        nc.sh_ok(n1, 105, f"ip addr add {BRIDGE_NET}.2/24 dev eth0 && ip link set eth0 up")
        ping = busybox_ping(n1.netns, f"{BRIDGE_NET}.2")
        # then: the node pings the container over the bridge, and sees eth0's MAC
        assert ping.returncode == 0, describe(ping, n1)
        assert neighbour_mac(n1.netns, f"{BRIDGE_NET}.2") == ct_mac

        # when: the container stops (its port leaves the bridge) and starts again
        nc.ok(n1, "stop", "105", "--fast")
        assert bridge_ports(n1, "vzbr0") == []
        nc.ok(n1, "start", "105")
        eth0_again = nc.sh_ok(n1, 105, "ip -o link show dev eth0")
        # then: the same MACs, inside, on the node end and on the bridge
        assert f"link/ether {ct_mac} " in eth0_again, eth0_again
        assert [p["address"] for p in bridge_ports(n1, "vzbr0")] == [host_mac]
        assert str(_link(n1.netns, "vzbr0")["address"]) == br_mac
    finally:
        nc.vzctl(n1, "stop", "105", "--fast")
        subprocess.run(["ip", "-n", n1.netns, "link", "del", "vzbr0"], capture_output=True, timeout=10)


# ---- 6. netfilter / CAP_NET_ADMIN --------------------------------------------------------------


def test_netfilter_disabled_drops_net_admin_and_no_container_sees_the_node(nc: Cluster3, cts: Cts) -> None:
    # given: 108 with the default netfilter setting and 109 with --netfilter disabled, both on n3
    n3 = nc.n3
    cts.make(n3, 108, "--ipadd", ip_of(108))
    cts.make(n3, 109, "--ipadd", ip_of(109), "--netfilter", "disabled")
    node_links = ip_json("-n", n3.netns, "link", "show")

    # when: each looks around and tries to change its own network namespace
    seen = {ctid: nc.inside(n3, ctid, caps="cat /proc/self/status", links="ip -o link show",
                            addrs="ip -o addr show", dev="cat /proc/net/dev",
                            lo_down="ip link set lo down && ip link set lo up",
                            addr_add=f"ip addr add {NET}.{ctid + 100}/32 dev lo",
                            lo_up="ip -o link show up dev lo")
            for ctid in (108, 109)}
    default, disabled = seen[108], seen[109]

    # then: by default the container keeps CAP_NET_ADMIN and may change its own namespace
    assert has_net_admin(default["caps"].ok())
    assert default["lo_down"].rc == 0 and default["addr_add"].rc == 0, default
    assert "lo" in default["lo_up"].ok()
    # and with --netfilter disabled it has no CAP_NET_ADMIN and may not (its loopback stays up)
    assert not has_net_admin(disabled["caps"].ok())
    for what in ("lo_down", "addr_add"):
        assert disabled[what].rc != 0 and "not permitted" in disabled[what].text.lower(), disabled[what]
    assert "lo" in disabled["lo_up"].ok()
    # and neither sees the node's interfaces or addresses: only lo and venet0
    for out in seen.values():
        assert link_names(out["links"].ok()) == ["lo", "venet0"], out["links"]
        assert n3.address not in out["addrs"].ok() and "eth0" not in out["dev"].ok(), out
    # and what 108 changed stayed in its namespace: n3's interfaces are as they were
    assert ip_json("-n", n3.netns, "link", "show") == node_links
    assert f"{NET}.208" not in json.dumps(ip_json("-n", n3.netns, "addr", "show"))
    # and both still answer on their addresses
    for ctid in (108, 109):
        assert wait_http(nc.lan, ip_of(ctid)) == page(ctid, n3)
