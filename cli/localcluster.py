"""A local cluster of simulated hardware nodes on this machine (`vzfleet up --nodes N`).

Topology (see docs/local-cluster.md): the LAN is a network namespace ``<prefix>lan`` holding bridge
``br0`` (fixed MAC, address ``<subnet>.254``) and a single-member etcd; node i is a network namespace
``<prefix>n<i>`` whose ``eth0`` (fixed MAC, address ``<subnet>.<10+i>``) is a veth to the bridge, with
its own agent process, state directory ``BASE/<node>`` and cgroup subtree ``/vzfleet/<node>``.

The planning (`plan_cluster`, `*_commands`, `*_argv`) is pure; `LocalCluster` applies a plan with
`ip`, `nsenter` and the agent binary as subprocesses, records it in ``BASE/cluster.json`` and takes
it down again - also after a crash, from the state file or by name prefix. Several clusters (the demo
one and test ones) coexist as long as their prefixes and node names differ.
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import http.client
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc

from cli import pki
from cli.client import (
    CLUSTER_STATE_FILE,
    DEFAULT_CLUSTER_BASE,
    EXIT_FAILED,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    NO_CLUSTER_HINT,
    Agent,
    CliError,
    read_cluster_state,
)
from vzapi import container_pb2 as pb

DEMO_PREFIX = "vzc-"
DEMO_SUBNET = "10.213.0.0/24"
MAX_NODES = 32
NETNS_DIR = Path("/run/netns")
LAN_BRIDGE = "br0"
NODE_IFNAME = "eth0"
ETCD_BIN = "/usr/bin/etcd"
ETCD_CLIENT_PORT = 2379
ETCD_PEER_PORT = 2380
BUSYBOX = "busybox"

AGENT_START_TIMEOUT_S = 30.0
ETCD_START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
PURGE_TIMEOUT_S = 120.0
COMMAND_TIMEOUT_S = 30.0

PREFIX_RE = re.compile(r"^[a-z][a-z0-9-]{0,15}$")
NODE_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")
UNIX_SOCKET_MAX = 107

T = TypeVar("T")


class ClusterError(CliError):
    """A local-cluster operation failed; the message says what to look at."""


# ---------------------------------------------------------------------------------------------------
# The plan (pure)


def fixed_mac(seed: str) -> str:
    """A stable, locally administered unicast MAC derived from seed.

    Bridges need a fixed MAC: a Linux bridge otherwise takes the lowest MAC of its ports, which
    changes as ports come and go and leaves stale ARP entries on the LAN.
    """
    digest = hashlib.sha256(seed.encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x02, *digest[:5]))


@dataclass(frozen=True)
class NodePlan:
    index: int
    name: str
    netns: str
    address: str
    mac: str
    port: str  # the bridge-side end of the node's veth, in the LAN namespace
    root: Path

    @property
    def socket(self) -> Path:
        return self.root / "run/vzfleet/agent.sock"

    @property
    def out_file(self) -> Path:
        return self.root / "agent.out"

    @property
    def run_dir(self) -> Path:
        return self.root / "run"


@dataclass(frozen=True)
class ClusterPlan:
    prefix: str
    node_prefix: str
    subnet: ipaddress.IPv4Network
    base: Path
    nodes: tuple[NodePlan, ...]

    @property
    def lan_netns(self) -> str:
        return f"{self.prefix}lan"

    @property
    def bridge_mac(self) -> str:
        return fixed_mac(f"{self.prefix}/{LAN_BRIDGE}")

    @property
    def lan_address(self) -> str:
        return str(self.subnet.network_address + 254)

    @property
    def etcd_name(self) -> str:
        return self.prefix.rstrip("-") or "vzfleet"

    @property
    def etcd_endpoint(self) -> str:
        return f"http://{self.lan_address}:{ETCD_CLIENT_PORT}"

    @property
    def etcd_data_dir(self) -> Path:
        return self.base / "etcd"

    @property
    def etcd_out_file(self) -> Path:
        return self.base / "etcd.out"

    @property
    def state_file(self) -> Path:
        return self.base / CLUSTER_STATE_FILE

    def node(self, name: str) -> NodePlan:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)


def parse_subnet(cidr: str) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.IPv4Network(cidr, strict=True)
    except ValueError as e:
        raise ClusterError(f"invalid subnet {cidr!r}: {e}", EXIT_USAGE) from None
    if net.prefixlen != 24:
        raise ClusterError(f"subnet {cidr}: give a /24 (nodes get .11.., the LAN .254)", EXIT_USAGE)
    return net


def check_prefix(prefix: str) -> str:
    if not PREFIX_RE.match(prefix):
        raise ClusterError(f"invalid cluster prefix {prefix!r}: 1-16 of a-z, 0-9, '-', starting with a letter",
                           EXIT_USAGE)
    return prefix


def plan_node(prefix: str, node_prefix: str, subnet: ipaddress.IPv4Network, base: Path, index: int) -> NodePlan:
    if not 1 <= index <= MAX_NODES:
        raise ClusterError(f"node index {index}: a local cluster has 1 to {MAX_NODES} nodes", EXIT_USAGE)
    name = f"{node_prefix}n{index}"
    if not NODE_NAME_RE.match(name):
        raise ClusterError(f"invalid node name {name!r}: use 1-32 of a-z, 0-9 and '-'", EXIT_USAGE)
    node = NodePlan(index=index, name=name, netns=f"{prefix}n{index}",
                    address=str(subnet.network_address + 10 + index),
                    mac=fixed_mac(f"{prefix}/n{index}/{NODE_IFNAME}"), port=f"port{index}",
                    root=base / name)
    if len(str(node.socket)) > UNIX_SOCKET_MAX:
        raise ClusterError(f"base directory {base} is too long for a unix socket path ({node.socket})",
                           EXIT_USAGE)
    return node


def plan_cluster(nodes: int, *, prefix: str = DEMO_PREFIX, node_prefix: str = "",
                 subnet: str = DEMO_SUBNET, base: Path = DEFAULT_CLUSTER_BASE) -> ClusterPlan:
    """The names, addresses and paths of an N-node cluster. Pure: touches nothing."""
    check_prefix(prefix)
    if not 1 <= nodes <= MAX_NODES:
        raise ClusterError(f"--nodes {nodes}: a local cluster has 1 to {MAX_NODES} nodes", EXIT_USAGE)
    net = parse_subnet(subnet)
    base = Path(os.path.abspath(base))
    return ClusterPlan(prefix=prefix, node_prefix=node_prefix, subnet=net, base=base,
                       nodes=tuple(plan_node(prefix, node_prefix, net, base, i) for i in range(1, nodes + 1)))


def lan_commands(plan: ClusterPlan) -> list[list[str]]:
    """Create the LAN: its namespace, the bridge with its fixed MAC and the .254 address."""
    ns = plan.lan_netns
    return [
        ["ip", "netns", "add", ns],
        ["ip", "-n", ns, "link", "set", "lo", "up"],
        ["ip", "-n", ns, "link", "add", LAN_BRIDGE, "address", plan.bridge_mac, "type", "bridge"],
        ["ip", "-n", ns, "addr", "add", f"{plan.lan_address}/{plan.subnet.prefixlen}", "dev", LAN_BRIDGE],
        ["ip", "-n", ns, "link", "set", LAN_BRIDGE, "up"],
    ]


def node_commands(plan: ClusterPlan, node: NodePlan) -> list[list[str]]:
    """Create node's namespace and plug its eth0 into the LAN. No default route; forwarding on inside."""
    lan, ns = plan.lan_netns, node.netns
    return [
        ["ip", "netns", "add", ns],
        # the pair is created inside the LAN namespace, so no name is ever taken in the host's namespace
        ["ip", "-n", lan, "link", "add", node.port, "type", "veth", "peer", "name", NODE_IFNAME, "netns", ns],
        ["ip", "-n", ns, "link", "set", NODE_IFNAME, "address", node.mac],
        ["ip", "-n", lan, "link", "set", node.port, "master", LAN_BRIDGE, "up"],
        ["ip", "-n", ns, "link", "set", "lo", "up"],
        ["ip", "-n", ns, "addr", "add", f"{node.address}/{plan.subnet.prefixlen}", "dev", NODE_IFNAME],
        ["ip", "-n", ns, "link", "set", NODE_IFNAME, "up"],
        # inside the node's namespace only: the host's own sysctls are never changed
        ["ip", "netns", "exec", ns, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1",
         "net.ipv6.conf.all.forwarding=1"],
    ]


def nsenter_argv(netns: str, argv: list[str]) -> list[str]:
    """argv run in network namespace netns and nothing else.

    nsenter with --net only: the program stays in the host's mount namespace, so the mounts and
    /run/netns entries an agent creates are visible to everyone (`ip netns exec` would unshare the
    mount namespace). Without --fork nsenter execs the program, which keeps nsenter's PID.
    """
    return ["nsenter", f"--net={NETNS_DIR / netns}", "--", *argv]


PEER_PORT = 7779  # agent-to-agent gRPC (migrations), mutual TLS


def tls_dir(node: NodePlan) -> Path:
    return node.root / "etc/vz/tls"


def agent_argv(node: NodePlan, agent_bin: str) -> list[str]:
    return nsenter_argv(node.netns, [agent_bin, "--root", str(node.root), "--node", node.name,
                                     "--listen", f"{node.address}:{PEER_PORT}", "--tls-dir", str(tls_dir(node))])


def purge_argv(node: NodePlan, agent_bin: str, netns_present: bool) -> list[str]:
    # In the node's namespace (or a fresh empty one once it is gone) so that whatever the purge
    # does to network interfaces can never reach the host's.
    argv = [agent_bin, "--root", str(node.root), "--node", node.name, "--purge"]
    return nsenter_argv(node.netns, argv) if netns_present else ["unshare", "--net", "--", *argv]


def etcd_argv(plan: ClusterPlan, etcd_bin: str = ETCD_BIN) -> list[str]:
    """etcd's own argv (run it inside the LAN namespace: `nsenter_argv(plan.lan_netns, ...)`)."""
    ip = plan.lan_address
    peer = f"http://{ip}:{ETCD_PEER_PORT}"
    return [etcd_bin, "--name", plan.etcd_name, "--data-dir", str(plan.etcd_data_dir),
            "--listen-client-urls", f"{plan.etcd_endpoint},http://127.0.0.1:{ETCD_CLIENT_PORT}",
            "--advertise-client-urls", plan.etcd_endpoint,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"{plan.etcd_name}={peer}", "--initial-cluster-state", "new"]


def is_agent_cmdline(argv: list[str], node: NodePlan) -> bool:
    """True for the argv of the serving agent of node (never its `--purge` run)."""
    return (any(Path(a).name == "vzfleet-agent" for a in argv) and "--purge" not in argv
            and _has_pair(argv, "--root", str(node.root)) and _has_pair(argv, "--node", node.name))


def is_etcd_cmdline(argv: list[str], plan: ClusterPlan) -> bool:
    return bool(argv) and Path(argv[0]).name == "etcd" and _has_pair(argv, "--data-dir", str(plan.etcd_data_dir))


def _has_pair(argv: list[str], flag: str, value: str) -> bool:
    return any(argv[i] == flag and argv[i + 1] == value for i in range(len(argv) - 1))


# ---------------------------------------------------------------------------------------------------
# Small system helpers


_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000


def setns_net(netns: str) -> None:
    """Move the calling thread (only it) into network namespace netns."""
    fd = os.open(NETNS_DIR / netns, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {netns}: {os.strerror(err)}")
    finally:
        os.close(fd)


def in_netns(netns: str, fn: Callable[[], T], timeout: float = 10.0) -> T:
    """Run fn in a fresh thread that entered network namespace netns (setns affects that thread only)."""
    box: dict[str, Any] = {}

    def worker() -> None:
        try:
            setns_net(netns)
            box["result"] = fn()
        except BaseException as e:
            box["error"] = e

    thread = threading.Thread(target=worker, name=f"netns-{netns}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"no answer within {timeout:g} s in netns {netns}")
    if "error" in box:
        raise box["error"]
    result: T = box["result"]
    return result


def http_get(host: str, port: int, path: str, timeout: float = 2.0) -> tuple[int, str]:
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read(4096).decode(errors="replace")
    finally:
        conn.close()


def cmdline(pid: int) -> list[str]:
    """argv of a live process; [] when it is gone or a zombie."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0")[:-1]]


def all_pids() -> Iterator[int]:
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            yield int(entry.name)


def netns_names() -> list[str]:
    try:
        return sorted(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return []


def mount_points() -> list[str]:
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        raw = line.split()[4]
        points.append(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), raw))
    return points


def cgroup_dirs(cgpath: str) -> list[Path]:
    """Where cgroup cgpath exists, in every hierarchy (v1 controllers and the v2 tree)."""
    root = Path("/sys/fs/cgroup")
    rel = cgpath.strip("/")
    bases = [root] if (root / "cgroup.controllers").exists() else [p for p in root.iterdir() if p.is_dir()]
    return [b / rel for b in bases if (b / rel).is_dir()]


def agent_binary() -> str:
    beside = Path(sys.executable).parent / "vzfleet-agent"
    if beside.exists():
        return str(beside)
    found = shutil.which("vzfleet-agent")
    if not found:
        raise ClusterError("vzfleet-agent not found; run `make install`")
    return found


def agent_info(sock: Path, timeout: float = 2.0) -> pb.AgentInfo | None:
    """The agent's Info if it answers on sock, else None."""
    if not sock.exists():
        return None
    try:
        agent = Agent(sock)
    except CliError:
        return None
    try:
        info: pb.AgentInfo = agent.agent.Info(pb.Empty(), timeout=timeout)
        return info
    except grpc.RpcError:
        return None
    finally:
        agent.close()


def _tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " / ".join(text[-lines:])


# ---------------------------------------------------------------------------------------------------
# Status values


@dataclass
class NodeStatus:
    name: str
    address: str
    netns: str
    socket: str
    pid: int
    netns_present: bool
    agent_alive: bool
    containers_running: int = 0
    containers_total: int = 0
    error: str = ""


@dataclass
class ClusterStatus:
    base: str
    prefix: str
    subnet: str
    lan_netns: str
    lan_address: str
    etcd_endpoint: str
    etcd_pid: int
    etcd_alive: bool
    etcd_health: str
    nodes: list[NodeStatus] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return self.etcd_health == "healthy" and all(n.agent_alive for n in self.nodes)


# ---------------------------------------------------------------------------------------------------
# Applying a plan


class LocalCluster:
    """N simulated hardware nodes plus a single-member etcd, named from prefix, recorded in base.

    `up()` and `down()` are idempotent; `down()` also cleans what a killed run left behind.
    `progress` receives one line per long step (the CLI prints them on stderr).
    """

    def __init__(self, *, prefix: str = DEMO_PREFIX, node_prefix: str = "", subnet: str = DEMO_SUBNET,
                 base: Path = DEFAULT_CLUSTER_BASE, progress: Callable[[str], None] | None = None) -> None:
        self.prefix = check_prefix(prefix)
        self.node_prefix = node_prefix
        self.subnet = str(parse_subnet(subnet))
        self.base = Path(os.path.abspath(base))
        self.progress = progress or (lambda _line: None)
        self._procs: dict[int, subprocess.Popen[bytes]] = {}

    @classmethod
    def at(cls, base: Path, progress: Callable[[str], None] | None = None) -> LocalCluster:
        """The cluster recorded at base, or the demo cluster's naming when base holds no state."""
        state = read_cluster_state(base)
        if state is None:
            return cls(base=base, progress=progress)
        return cls(prefix=str(state["prefix"]), node_prefix=str(state.get("node_prefix", "")),
                   subnet=str(state["subnet"]), base=base, progress=progress)

    # --- planning -----------------------------------------------------------------------------------

    def plan(self, nodes: int) -> ClusterPlan:
        return plan_cluster(nodes, prefix=self.prefix, node_prefix=self.node_prefix, subnet=self.subnet,
                            base=self.base)

    def state(self) -> dict[str, Any] | None:
        return read_cluster_state(self.base)

    def _known_indices(self) -> set[int]:
        """Nodes of this cluster: recorded in the state file, or left behind as netns or node roots."""
        found: set[int] = set()
        if (state := self.state()) is not None:
            found.update(int(n["index"]) for n in state["nodes"])
        ns_re = re.compile(rf"^{re.escape(self.prefix)}n(\d+)$")
        for name in netns_names():
            if m := ns_re.match(name):
                found.add(int(m.group(1)))
        dir_re = re.compile(rf"^{re.escape(self.node_prefix)}n(\d+)$")
        if self.base.is_dir():
            for entry in self.base.iterdir():
                if (m := dir_re.match(entry.name)) and entry.is_dir():
                    found.add(int(m.group(1)))
        return {i for i in found if 1 <= i <= MAX_NODES}

    def _current_plan(self) -> ClusterPlan:
        indices = self._known_indices()
        net = parse_subnet(self.subnet)
        return ClusterPlan(prefix=self.prefix, node_prefix=self.node_prefix, subnet=net, base=self.base,
                           nodes=tuple(plan_node(self.prefix, self.node_prefix, net, self.base, i)
                                       for i in sorted(indices)))

    def has_leftovers(self) -> bool:
        """Anything a crashed run left: our namespaces, processes or a node's runtime directory."""
        plan = self._current_plan()
        return bool(self._our_netns() or any(n.run_dir.exists() for n in plan.nodes)
                    or self._our_processes(plan, None))

    def _our_netns(self) -> list[str]:
        ours = re.compile(rf"^{re.escape(self.prefix)}(lan|n\d+)$")
        return [n for n in netns_names() if ours.match(n)]

    # --- state file ---------------------------------------------------------------------------------

    def _write_state(self, plan: ClusterPlan, agent_pids: dict[str, int], etcd_pid: int) -> None:
        state = {
            "prefix": plan.prefix, "node_prefix": plan.node_prefix, "subnet": str(plan.subnet),
            "base": str(plan.base),
            "lan": {"netns": plan.lan_netns, "bridge": LAN_BRIDGE, "address": plan.lan_address,
                    "mac": plan.bridge_mac},
            "nodes": [{"index": n.index, "name": n.name, "netns": n.netns, "address": n.address,
                       "mac": n.mac, "root": str(n.root), "socket": str(n.socket),
                       "pid": agent_pids.get(n.name, 0)} for n in plan.nodes],
            "etcd": {"pid": etcd_pid, "endpoint": plan.etcd_endpoint, "name": plan.etcd_name,
                     "data_dir": str(plan.etcd_data_dir)},
        }
        tmp = plan.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        os.replace(tmp, plan.state_file)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """One `up`/`down` at a time per base."""
        self.base.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.base / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            deadline = time.monotonic() + 300
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise ClusterError(f"another vzfleet up/down holds {self.base / '.lock'}") from None
                    time.sleep(0.2)
            yield
        finally:
            os.close(fd)

    # --- up -----------------------------------------------------------------------------------------

    def up(self, nodes: int) -> ClusterStatus:
        """Bring an N-node cluster up; if it already runs, leave it be. Returns its status.

        A cluster whose agents or etcd died is repaired: the dead processes are started again in the
        existing namespaces, and the agents re-adopt their running containers. When its namespaces
        are gone too it is taken down and started afresh (containers' configs and private areas
        stay; the containers come back stopped).
        """
        plan = self.plan(nodes)
        with self._locked():
            if (state := self.state()) is not None:
                current = self.status()
                same = len(current.nodes) == nodes and current.subnet == str(plan.subnet)
                if current.healthy and same:
                    return current
                if current.healthy:
                    raise ClusterError(f"a {len(current.nodes)}-node cluster on {current.subnet} is already up at "
                                       f"{self.base}; run `vzfleet down` first to change it", EXIT_USAGE)
                try:
                    if same and self._repair(plan, state):
                        return self.status()
                except ClusterError as e:
                    self.progress(f"repair failed ({e})")
                self.progress("the previous local cluster cannot be repaired: taking it down first")
                self._down()
            elif self.has_leftovers():
                self.progress(f"cleaning what a previous run left under prefix {self.prefix!r}")
                self._down()
            try:
                self._up(plan)
            except BaseException:
                self.progress("start failed: removing what was set up")
                try:
                    self._down()
                except CliError as e:
                    self.progress(f"cleanup after the failed start: {e}")
                raise
        return self.status()

    def _up(self, plan: ClusterPlan) -> None:
        t0 = time.monotonic()
        for path in (plan.base, plan.etcd_data_dir, *(n.root for n in plan.nodes)):
            path.mkdir(parents=True, exist_ok=True)
        plan.etcd_data_dir.chmod(0o700)
        self._check_etcd_member(plan)
        self.progress(f"creating the LAN {plan.lan_netns} ({plan.lan_address}) and {len(plan.nodes)} node "
                      f"namespace(s) on {plan.subnet}")
        for argv in lan_commands(plan):
            self._run(argv)
        for node in plan.nodes:
            for argv in node_commands(plan, node):
                self._run(argv)
        self._ensure_pki(plan)
        agent_pids: dict[str, int] = {}
        etcd_pid = self._start(nsenter_argv(plan.lan_netns, etcd_argv(plan)), plan.etcd_out_file)
        self._write_state(plan, agent_pids, etcd_pid)
        agent_bin = agent_binary()
        for node in plan.nodes:
            agent_pids[node.name] = self._start(agent_argv(node, agent_bin), node.out_file)
            self._write_state(plan, agent_pids, etcd_pid)
        self.progress(f"waiting for etcd and {len(plan.nodes)} agent(s)")
        self._wait_etcd(plan, etcd_pid)
        for node in plan.nodes:
            self._wait_agent(node, agent_pids[node.name])
        self.progress(f"cluster up in {time.monotonic() - t0:.1f} s")

    def _ensure_pki(self, plan: ClusterPlan) -> None:
        """A cluster CA and a certificate per node, for the agents' mutual TLS (idempotent)."""
        try:
            ca = pki.ensure_ca(plan.base / "pki", f"vzfleet cluster {self.prefix}")
            for node in plan.nodes:
                pki.issue_node_cert(ca, node.name, node.address, tls_dir(node))
        except pki.PkiError as e:
            raise ClusterError(f"cannot make the cluster's certificates: {e}") from None

    def _repair(self, plan: ClusterPlan, state: dict[str, Any]) -> bool:
        """Start the dead agents and etcd again in the namespaces that still exist; False if some are gone."""
        if set(self._our_netns()) != {plan.lan_netns, *(n.netns for n in plan.nodes)}:
            return False
        alive = {desc: pid for pid, desc in self._our_processes(plan, state).items()}
        etcd_pid = alive.get("etcd", 0)
        agent_pids = {n.name: alive.get(f"agent {n.name}", 0) for n in plan.nodes}
        dead = [d for d in ("etcd", *(f"agent {n.name}" for n in plan.nodes)) if d not in alive]
        self.progress(f"restarting {', '.join(dead) or 'nothing'} (running containers are re-adopted)")
        if not etcd_pid:
            etcd_pid = self._start(nsenter_argv(plan.lan_netns, etcd_argv(plan)), plan.etcd_out_file)
        agent_bin = agent_binary()
        self._ensure_pki(plan)
        for node in plan.nodes:
            if not agent_pids[node.name]:
                agent_pids[node.name] = self._start(agent_argv(node, agent_bin), node.out_file)
        self._write_state(plan, agent_pids, etcd_pid)
        self._wait_etcd(plan, etcd_pid)
        for node in plan.nodes:
            self._wait_agent(node, agent_pids[node.name])
        return True

    def _check_etcd_member(self, plan: ClusterPlan) -> None:
        """etcd keeps its member's peer URL in its data: start afresh when the subnet changed."""
        marker = plan.base / "etcd.member"
        want = " ".join(etcd_argv(plan)[1:5]) + f" {plan.lan_address}"
        if marker.exists() and marker.read_text().strip() != want:
            self.progress(f"the LAN address changed: starting etcd with an empty data dir {plan.etcd_data_dir}")
            shutil.rmtree(plan.etcd_data_dir, ignore_errors=True)
            plan.etcd_data_dir.mkdir(mode=0o700)
        marker.write_text(want + "\n")

    def _run(self, argv: list[str], timeout: float = COMMAND_TIMEOUT_S) -> str:
        try:
            done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout,
                                  check=False)
        except subprocess.TimeoutExpired:
            raise ClusterError(f"`{' '.join(argv)}` did not finish within {timeout:g} s") from None
        except FileNotFoundError:
            raise ClusterError(f"{argv[0]}: command not found") from None
        if done.returncode != 0:
            err = done.stderr.decode(errors="replace").strip() or f"exit code {done.returncode}"
            raise ClusterError(f"`{' '.join(argv)}` failed: {err}")
        return done.stdout.decode(errors="replace")

    def _start(self, argv: list[str], out_file: Path) -> int:
        """Start a long-lived process in its own session, output appended to out_file; its PID."""
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("VZFLEET_", "ETCD_", "ETCDCTL_"))}
        with open(out_file, "ab") as out:
            out.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(argv)}\n".encode())
            out.flush()
            try:
                proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env,
                                        start_new_session=True, close_fds=True)
            except FileNotFoundError:
                raise ClusterError(f"{argv[0]}: command not found") from None
        self._procs[proc.pid] = proc
        return proc.pid

    def _exited(self, pid: int) -> int | None:
        proc = self._procs.get(pid)
        return proc.poll() if proc is not None else None

    def _wait_etcd(self, plan: ClusterPlan, pid: int) -> None:
        deadline = time.monotonic() + ETCD_START_TIMEOUT_S
        last = ""
        while time.monotonic() < deadline:
            if (code := self._exited(pid)) is not None:
                raise ClusterError(f"etcd exited at start (code {code}): {_tail(plan.etcd_out_file)}")
            try:
                status, _body = in_netns(plan.lan_netns, lambda: http_get(plan.lan_address, ETCD_CLIENT_PORT,
                                                                          "/version", timeout=1.0), 5.0)
                if status == 200:
                    return
                last = f"HTTP {status}"
            except (OSError, TimeoutError, http.client.HTTPException) as e:
                last = str(e)
            time.sleep(0.1)
        raise ClusterError(f"etcd did not answer on {plan.etcd_endpoint} within {ETCD_START_TIMEOUT_S:g} s "
                           f"({last}); see {plan.etcd_out_file}")

    def _wait_agent(self, node: NodePlan, pid: int) -> None:
        deadline = time.monotonic() + AGENT_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if (code := self._exited(pid)) is not None:
                raise ClusterError(f"the agent of node {node.name} exited at start (code {code}): "
                                   f"{_tail(node.out_file)}")
            if agent_info(node.socket, timeout=1.0) is not None:
                return
            time.sleep(0.1)
        raise ClusterError(f"the agent of node {node.name} did not answer within {AGENT_START_TIMEOUT_S:g} s; "
                           f"see {node.out_file}")

    # --- templates ----------------------------------------------------------------------------------

    def ensure_template(self, name: str = BUSYBOX) -> list[str]:
        """Make sure every node's cache has the busybox template: built once, imported by the others."""
        state = self.state()
        if state is None:
            raise ClusterError("no local cluster is up", EXIT_FAILED)
        done: list[str] = []
        source: str | None = None
        missing: list[str] = []
        for entry in state["nodes"]:
            with _agent(Path(entry["socket"])) as agent:
                have = {t.name: t.path for t in agent.templates.ListTemplates(pb.Empty(), timeout=30).templates}
            if name in have:
                source = source or have[name]
            else:
                missing.append(entry["socket"])
        for sock in missing:
            with _agent(Path(sock)) as agent:
                if source is None:
                    self.progress(f"building the {name} template")
                    t = agent.templates.BuildTemplate(pb.TemplateBuildRequest(kind="busybox", name=name),
                                                      timeout=600)
                    source = t.path
                else:
                    t = agent.templates.ImportTemplate(pb.TemplateImportRequest(path=source, name=name),
                                                       timeout=600)
                done.append(f"template {name} -> {t.path}")
        return done

    # --- status -------------------------------------------------------------------------------------

    def status(self) -> ClusterStatus:
        state = self.state()
        if state is None:
            raise ClusterError(NO_CLUSTER_HINT, EXIT_UNAVAILABLE)
        etcd = state.get("etcd", {})
        lan = state.get("lan", {})
        plan = self._current_plan()
        present = set(netns_names())
        etcd_pid = int(etcd.get("pid", 0))
        etcd_alive = etcd_pid > 0 and is_etcd_cmdline(cmdline(etcd_pid), plan)
        st = ClusterStatus(base=str(self.base), prefix=self.prefix, subnet=str(state["subnet"]),
                           lan_netns=str(lan.get("netns", "")), lan_address=str(lan.get("address", "")),
                           etcd_endpoint=str(etcd.get("endpoint", "")), etcd_pid=etcd_pid, etcd_alive=etcd_alive,
                           etcd_health=self._etcd_health(str(lan.get("netns", "")), str(lan.get("address", ""))))
        for entry in state["nodes"]:
            ns = NodeStatus(name=entry["name"], address=entry["address"], netns=entry["netns"],
                            socket=entry["socket"], pid=int(entry.get("pid", 0)),
                            netns_present=entry["netns"] in present, agent_alive=False)
            info = agent_info(Path(ns.socket))
            if info is not None:
                ns.agent_alive = True
                try:
                    with _agent(Path(ns.socket)) as agent:
                        lst = agent.containers.List(pb.ListRequest(all=True), timeout=10)
                    ns.containers_total = len(lst.containers)
                    ns.containers_running = sum(1 for c in lst.containers if c.status != "stopped")
                except (grpc.RpcError, CliError) as e:
                    ns.error = str(e)
            else:
                ns.error = "agent not answering"
            st.nodes.append(ns)
        return st

    @staticmethod
    def _etcd_health(lan_netns: str, address: str) -> str:
        if not lan_netns or not (NETNS_DIR / lan_netns).exists():
            return "down (no LAN namespace)"
        try:
            status, body = in_netns(lan_netns, lambda: http_get(address, ETCD_CLIENT_PORT, "/health"), 5.0)
        except (OSError, TimeoutError, http.client.HTTPException) as e:
            return f"down ({e})"
        try:
            healthy = status == 200 and json.loads(body).get("health") == "true"
        except ValueError:
            healthy = False
        return "healthy" if healthy else f"unhealthy (HTTP {status}: {body.strip()[:80]})"

    # --- down ---------------------------------------------------------------------------------------

    def down(self) -> list[str]:
        """Stop everything and leave nothing behind; idempotent, and works after a crash.

        Stops only processes this cluster started (checked against their command line), purges
        every node (containers, their namespaces, mounts, cgroups, runc state), deletes the node
        and LAN namespaces and each node's run/ directory. Configs, private areas, templates, logs and
        etcd's data stay. Raises ClusterError listing anything that could not be removed.
        """
        if not self.base.exists() and not self._our_netns():
            return []
        with self._locked():
            return self._down()

    def _down(self) -> list[str]:
        t0 = time.monotonic()
        done: list[str] = []
        problems: list[str] = []
        plan = self._current_plan()
        state = self.state()

        pids = self._our_processes(plan, state)
        if pids:
            self.progress(f"stopping {len(pids)} process(es): " + " ".join(f"{d} ({p})" for p, d in pids.items()))
            done += self._stop(plan, pids, problems)

        present = set(netns_names())
        roots = [n for n in plan.nodes if self._needs_purge(n, present)]
        if roots:
            self.progress(f"purging {len(roots)} node(s)")
            done += self._purge(roots, present, problems)

        for ns in sorted(self._our_netns(), key=lambda n: n.endswith("lan")):
            try:
                self._run(["ip", "netns", "delete", ns])
                done.append(f"netns {ns} deleted")
            except ClusterError as e:
                problems.append(str(e))
        for node in plan.nodes:
            if node.run_dir.exists():
                shutil.rmtree(node.run_dir, ignore_errors=True)
                done.append(f"{node.run_dir} removed")
        problems += self.leftovers(plan)
        if problems:  # the state file stays: `vzfleet status` shows what is left, `down` tries again
            raise ClusterError("local cluster not fully removed:\n  " + "\n  ".join(problems))
        plan.state_file.unlink(missing_ok=True)
        if done:
            self.progress(f"cluster down in {time.monotonic() - t0:.1f} s")
        return done

    @staticmethod
    def _needs_purge(node: NodePlan, present: set[str]) -> bool:
        """A node may still hold containers: its runtime dir, container namespaces or cgroup exist."""
        return (node.run_dir.exists() or any(ns.startswith(f"vz-{node.name}-") for ns in present)
                or bool(cgroup_dirs(f"/vzfleet/{node.name}")))

    def _our_processes(self, plan: ClusterPlan, state: dict[str, Any] | None) -> dict[int, str]:
        """PID -> description of every live process this cluster started, by its command line.

        The PIDs recorded in the state file come first; after a crash (no or stale state file) the
        process table is searched for our agents and etcd, identified by their own root / data dir.
        """
        candidates: set[int] = set()
        if state is not None:
            candidates.update(int(n.get("pid", 0)) for n in state["nodes"])
            candidates.add(int(state.get("etcd", {}).get("pid", 0)))
        candidates.update(all_pids())
        found: dict[int, str] = {}
        for pid in sorted(candidates - {0, os.getpid()}):
            argv = cmdline(pid)
            if not argv:
                continue
            if is_etcd_cmdline(argv, plan):
                found[pid] = "etcd"
            for node in plan.nodes:
                if is_agent_cmdline(argv, node):
                    found[pid] = f"agent {node.name}"
        return found

    def _stop(self, plan: ClusterPlan, pids: dict[int, str], problems: list[str]) -> list[str]:
        def still_ours(pid: int) -> bool:
            argv = cmdline(pid)
            return bool(argv) and (is_etcd_cmdline(argv, plan) or any(is_agent_cmdline(argv, n) for n in plan.nodes))

        done: list[str] = []
        for sig, wait_s in ((signal.SIGTERM, STOP_TIMEOUT_S), (signal.SIGKILL, 5.0)):
            alive = [p for p in pids if still_ours(p)]
            if not alive:
                break
            for pid in alive:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline and any(still_ours(p) for p in alive):
                self._reap(alive)
                time.sleep(0.05)
            self._reap(alive)
            if sig == signal.SIGKILL:
                stuck = [p for p in alive if still_ours(p)]
                problems += [f"{pids[p]} (pid {p}) did not stop" for p in stuck]
        done += [f"{d} (pid {p}) stopped" for p, d in pids.items() if not still_ours(p)]
        return done

    def _reap(self, pids: list[int]) -> None:
        """Collect our own children (when up() ran in this process) so they do not linger as zombies."""
        for pid in pids:
            proc = self._procs.get(pid)
            if proc is not None:
                proc.poll()
                continue
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass

    def _purge(self, nodes: list[NodePlan], present: set[str], problems: list[str]) -> list[str]:
        agent_bin = agent_binary()
        running = [(n, subprocess.Popen(purge_argv(n, agent_bin, n.netns in present), stdin=subprocess.DEVNULL,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE))
                   for n in nodes]
        done: list[str] = []
        deadline = time.monotonic() + PURGE_TIMEOUT_S
        for node, proc in running:
            try:
                out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                problems.append(f"purge of node {node.name} did not finish within {PURGE_TIMEOUT_S:g} s")
                continue
            lines = [ln for ln in out.decode(errors="replace").splitlines() if ln.strip()]
            done += [f"{node.name}: {ln}" for ln in lines]
            if proc.returncode != 0:
                problems.append(f"purge of node {node.name} failed (exit {proc.returncode}): "
                                f"{err.decode(errors='replace').strip()[-400:]}")
        return done

    def leftovers(self, plan: ClusterPlan | None = None) -> list[str]:
        """What of this cluster is still on the machine: namespaces, processes, mounts, cgroups, runc state."""
        plan = plan or self._current_plan()
        found = [f"netns {ns} still exists" for ns in self._our_netns()]
        found += [f"{desc} (pid {pid}) still running" for pid, desc in self._our_processes(plan, None).items()]
        base_prefix = str(self.base) + "/"
        found += [f"mount {mp} still mounted" for mp in mount_points() if mp.startswith(base_prefix)]
        for node in plan.nodes:
            found += [f"cgroup {d} still exists" for d in cgroup_dirs(f"/vzfleet/{node.name}")]
            runc_root = node.root / "run/vzfleet/runc"
            if runc_root.is_dir() and any(runc_root.iterdir()):
                found.append(f"runc state {runc_root} still exists")
            found += [f"netns {ns} still exists" for ns in netns_names() if ns.startswith(f"vz-{node.name}-")]
        return found


@contextmanager
def _agent(sock: Path) -> Iterator[Agent]:
    """An agent connection whose RPC errors become ClusterError naming the socket."""
    agent = Agent(sock)
    try:
        yield agent
    except grpc.RpcError as e:
        details = e.details() if isinstance(e, grpc.Call) else str(e)
        raise ClusterError(f"agent at {sock}: {details}") from None
    finally:
        agent.close()
