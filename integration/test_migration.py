"""Migration between two simulated nodes (issue 5), end to end, through `vzmigrate` as a user runs it.

Given a 2-node test cluster and busybox containers that serve HTTP (a CGI counter a shell loop
increments every 0.1 s) and TCP echo on their venet IP, when a container is moved online, offline,
checked only, or moved while a failpoint breaks the pipeline, then it ends up running on exactly one
node, answering on its IP, and the other node keeps nothing of it. Every migration runs under a
`CopyWatch`: both nodes' runc state is polled every ~20 ms and at no sample may two copies of the
container run (a paused, i.e. frozen, copy does not count as running).

Failpoints (VZFLEET_FAILPOINTS) reach an agent only through its environment: the test restarts that
node's agent with it (integration/cluster.py `restart_agent`) and restarts it clean afterwards.
Traffic goes only to the namespaces of this module's cluster (the LAN namespace is the client).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.cgroups.apply import read_value
from agent.cgroups.hierarchy import detect
from agent.layout import NodeLayout
from cli.localcluster import LocalCluster, http_get, in_netns
from integration.cluster import (
    agent_environ,
    agent_pid,
    clean_stale_clusters,
    cli,
    leftovers,
    new_cluster,
    record,
    remove,
    restart_agent,
    stray_processes,
    wait_dead,
)

pytestmark = [
    pytest.mark.privileged,
    pytest.mark.integration,
    pytest.mark.skipif(not Path("/usr/bin/etcd").exists(), reason="etcd-server is not installed (`make install`)"),
]

SUBNET = "10.214.20.0/24"
NET = "10.214.20"
HTTP_PORT = 80
ECHO_PORT = 7000
POLL_PERIOD_S = 0.02
ANSWER_WITHIN_S = 2.0  # the source answers again this soon after a failed migration returned
SETTLE_WITHIN_S = 15.0  # an unsettled source asks the destination every 5 s (RECONCILE_PERIOD_S)
MIGRATE_TIMEOUT_S = 120.0

# The container's services, run by its busybox init (children of init: nothing exec'ed from outside,
# which CRIU would refuse to dump).
INITTAB = """\
::sysinit:/etc/init.d/rcS
::respawn:/bin/busybox httpd -f -p 80 -h /www
::respawn:/bin/busybox nc -ll -p 7000 -e /bin/cat
::respawn:/bin/counter
::shutdown:/bin/umount -a -r
"""
# the count lives in the shell's memory: a container that was restarted instead of restored starts over
COUNTER = """\
#!/bin/sh
i=0
while true; do i=$((i+1)); echo $i > /tmp/counter.new; mv /tmp/counter.new /tmp/counter; sleep 0.1; done
"""
CGI = """\
#!/bin/sh
echo "Content-Type: text/plain"
echo
cat /tmp/counter
"""


# ---- the cluster ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Node:
    """One node of the test cluster; the paths of its state are the product's (agent/layout.py)."""

    name: str
    netns: str
    address: str
    root: Path

    @property
    def layout(self) -> NodeLayout:
        return NodeLayout(node=self.name, root=self.root)

    @property
    def runc_root(self) -> Path:
        return self.layout.runc_root

    @property
    def agent_log(self) -> Path:
        return self.layout.log_file

    @property
    def private_dir(self) -> Path:
        return self.layout.private_dir

    def conf(self, ctid: int, suffix: str = "") -> Path:
        return self.layout.conf_dir / f"{ctid}.conf{suffix}"

    def private(self, ctid: int) -> Path:
        return self.layout.private(ctid)

    def incoming(self, ctid: int) -> Path:
        return self.private_dir / f".{ctid}.incoming"

    def ve_root(self, ctid: int) -> Path:
        return self.layout.ve_root(ctid)

    def bundle(self, ctid: int) -> Path:
        return self.layout.bundle(ctid)

    def journal(self, direction: str, ctid: int) -> Path:
        return self.layout.run_dir / "migrations" / f"{direction}-{ctid}.json"

    def ct_netns(self, ctid: int) -> str:
        return self.layout.netns_name(ctid)


@dataclass
class Run:
    """A finished vzmigrate: its result and when it returned (time.monotonic())."""

    res: subprocess.CompletedProcess[str]
    returned_at: float
    seconds: float

    @property
    def output(self) -> str:
        return self.res.stdout + self.res.stderr

    def describe(self) -> str:
        return (f"`{' '.join(str(a) for a in self.res.args)}` exited {self.res.returncode} after "
                f"{self.seconds:.2f} s\n--- stdout\n{self.res.stdout}--- stderr\n{self.res.stderr}---")


class Cluster2:
    """The module's 2-node cluster, as the tests use it."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        state = cluster.state()
        assert state is not None
        self.lan = str(state["lan"]["netns"])
        n1, n2 = (Node(name=str(n["name"]), netns=str(n["netns"]), address=str(n["address"]), root=Path(n["root"]))
                  for n in state["nodes"])
        self.n1, self.n2 = n1, n2

    @property
    def nodes(self) -> tuple[Node, Node]:
        return self.n1, self.n2

    def cli(self, tool: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return cli(self.cluster.base, tool, *args, timeout=timeout)

    def ok(self, tool: str, *args: str) -> str:
        res = self.cli(tool, *args)
        assert res.returncode == 0, f"`{tool} {' '.join(args)}` exited {res.returncode}\n{res.stdout}{res.stderr}"
        return res.stdout

    def vzmigrate(self, *args: str) -> Run:
        t0 = time.monotonic()
        res = self.cli("vzmigrate", *args, timeout=MIGRATE_TIMEOUT_S)
        now = time.monotonic()
        print(f"vzmigrate {' '.join(args)}: exit {res.returncode} in {now - t0:.2f} s")
        return Run(res, now, now - t0)

    def listed(self, node: Node) -> dict[int, str]:
        """CTID -> status of every container vzlist shows on node."""
        out = self.ok("vzlist", "--node", node.name, "-a", "-H", "-o", "ctid,status")
        return {int(row.split()[0]): row.split()[1] for row in out.splitlines() if row.strip()}

    # ---- agents ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def failpoints(self, node: Node, spec: str) -> Iterator[int]:
        """node's agent restarted with VZFLEET_FAILPOINTS=spec for the block; clean again after it."""
        t0 = time.monotonic()
        pid = restart_agent(self.cluster, node.name, {"VZFLEET_FAILPOINTS": spec})
        print(f"agent of {node.name} restarted with failpoints {spec!r} in {time.monotonic() - t0:.2f} s")
        try:
            yield pid
        finally:
            self.heal()

    def heal(self) -> None:
        """Both agents alive (up() repairs dead ones) and none with failpoints armed."""
        if not all(agent_pid(self.cluster, n.name) for n in self.nodes):
            self.cluster.up(2)
        for n in self.nodes:
            if "VZFLEET_FAILPOINTS" in agent_environ(agent_pid(self.cluster, n.name)):
                restart_agent(self.cluster, n.name)

    def agent_pids(self) -> list[int]:
        state = self.cluster.state()
        assert state is not None
        return [int(n["pid"]) for n in state["nodes"]] + [int(state["etcd"]["pid"])]

    def reap_strays(self) -> list[str]:
        """SIGKILL processes (other than the agents and etcd) whose command line names the cluster's
        base: what an agent started and left behind. Returns what was found."""
        found = stray_processes(self.cluster.base, self.agent_pids())
        for pid in found:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return [f"pid {pid}: {' '.join(argv)}" for pid, argv in found.items()]


@pytest.fixture(scope="module")
def mc() -> Iterator[Cluster2]:
    """A 2-node cluster with the busybox template, for this module; torn down completely at the end."""
    stale = clean_stale_clusters()
    if stale:
        pytest.fail("test clusters left by an earlier run could not be removed:\n  " + "\n  ".join(stale),
                    pytrace=False)
    cluster = new_cluster(SUBNET)
    recs = []
    strays: list[str] = []
    try:
        t0 = time.monotonic()
        cluster.up(2)
        recs.append(record(cluster))
        cluster.ensure_template()
        print(f"2-node cluster up with its template in {time.monotonic() - t0:.2f} s")
        c2 = Cluster2(cluster)
        yield c2
        c2.heal()
        strays = c2.reap_strays()
    finally:
        with contextlib.suppress(AssertionError):
            recs.append(record(cluster))  # agents restarted by the tests have new pids
        t0 = time.monotonic()
        remove(cluster)
        print(f"2-node cluster down in {time.monotonic() - t0:.2f} s")
    left = [x for rec in recs for x in leftovers(rec)]
    left += [f"process {pid}: {' '.join(argv)}" for pid, argv in stray_processes(cluster.base).items()]
    left += [f"stray process at the end of the module: {s}" for s in strays]
    if left:
        pytest.fail(f"cluster {cluster.prefix} left behind:\n  " + "\n  ".join(left), pytrace=False)


# ---- containers -------------------------------------------------------------------------------


def ip_of(ctid: int) -> str:
    return f"{NET}.{ctid}"


MakeCt = Callable[..., int]


@pytest.fixture
def make_ct(mc: Cluster2) -> Iterator[MakeCt]:
    """make_ct(node, ctid, ip=..., start=True): a busybox container serving the counter and TCP echo.

    At the end every container the test named is destroyed on both nodes, whatever state the test
    left it in, after the agents were healed; the test fails if any trace of them remains.
    """
    ctids: list[int] = []

    def make(node: Node, ctid: int, *, ip: str | None = "auto", start: bool = True, services: bool = True) -> int:
        ctids.append(ctid)
        args = ["--node", node.name, "create", str(ctid), "--ostemplate", "busybox"]
        if ip is not None:
            args += ["--ipadd", ip_of(ctid) if ip == "auto" else ip]
        mc.ok("vzctl", *args)
        if services:
            priv = node.private(ctid)
            (priv / "etc/inittab").write_text(INITTAB)
            (priv / "bin/counter").write_text(COUNTER)
            (priv / "www/cgi-bin").mkdir(parents=True, exist_ok=True)
            (priv / "www/cgi-bin/counter").write_text(CGI)
            for f in (priv / "bin/counter", priv / "www/cgi-bin/counter"):
                f.chmod(0o755)
        if start:
            mc.ok("vzctl", "--node", node.name, "start", str(ctid))
        return ctid

    try:
        yield make
    finally:
        mc.heal()
        problems = []
        for ctid in ctids:
            for node in mc.nodes:
                mc.cli("vzctl", "--node", node.name, "stop", str(ctid), "--fast")
                res = mc.cli("vzctl", "--node", node.name, "destroy", str(ctid))
                if res.returncode not in (0, 4):
                    problems.append(f"destroy {ctid} on {node.name}: {res.stderr.strip()}")
                node.conf(ctid, ".migrated").unlink(missing_ok=True)
                shutil.rmtree(node.incoming(ctid), ignore_errors=True)
                if not node.conf(ctid).exists():
                    shutil.rmtree(node.bundle(ctid), ignore_errors=True)
                problems += [f"{node.name}: {p}" for p in traces(node, ctid)]
        if problems:
            pytest.fail("cleanup of the test's containers failed:\n  " + "\n  ".join(problems), pytrace=False)


def traces(node: Node, ctid: int, *, kept_partial: bool = False, bundle: bool = True) -> list[str]:
    """Everything of container ctid on node (files, runc state, namespace, mounts, journals); the OCI
    bundle directory only with bundle=True."""
    paths = [node.conf(ctid), node.private(ctid), node.runc_root / str(ctid), node.journal("in", ctid),
             node.journal("out", ctid)]
    found = [f"{p} exists" for p in [*paths, *([node.bundle(ctid)] if bundle else [])] if p.exists()]
    if node.incoming(ctid).exists() != kept_partial:
        found.append(f"{node.incoming(ctid)} {'exists' if not kept_partial else 'is missing'}")
    if (st := runc_status(node, ctid)) is not None:
        found.append(f"runc knows container {ctid} ({st})")
    if (Path("/run/netns") / node.ct_netns(ctid)).exists():
        found.append(f"netns {node.ct_netns(ctid)} exists")
    ve_root = str(node.ve_root(ctid))
    found += [f"mount {mp}" for mp in _mount_points() if mp == ve_root or mp.startswith(ve_root + "/")]
    return found


def _mount_points() -> list[str]:
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        points.append(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4]))
    return points


def _runc_list_argv(node: Node) -> list[str]:
    return ["runc", "--root", str(node.runc_root), "list", "-f", "json"]


def _status_in(out: str, ctid: int) -> str | None:
    items: list[dict[str, Any]] = json.loads(out or "null") or []
    return next((str(i.get("status")) for i in items if i.get("id") == str(ctid)), None)


def runc_status(node: Node, ctid: int) -> str | None:
    res = subprocess.run(_runc_list_argv(node), capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL)
    assert res.returncode == 0, f"runc list on {node.name}: {res.stderr}"
    return _status_in(res.stdout, ctid)


class CopyWatch:
    """Polls the runc state of ctid on every node every ~20 ms while the block runs.

    Both nodes are read at the same moment (two `runc list` processes at once), so a sample shows
    what ran at one instant (give or take a few ms). A copy counts as running when runc says
    "running" (a frozen copy is "paused"). Note: while CRIU dumps a frozen container runc says
    "running": CRIU thaws the freezer cgroup once it holds every task with ptrace and freezes it
    again before letting go (criu/seize.c); the tasks do not run then, and no other copy exists yet.
    """

    def __init__(self, nodes: Sequence[Node], ctid: int) -> None:
        self.nodes = list(nodes)
        self.ctid = ctid
        self.samples: list[tuple[float, tuple[str | None, ...]]] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"copywatch-{ctid}", daemon=True)

    def __enter__(self) -> CopyWatch:
        self._sample()  # one sample before the block starts
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(15)
        self._sample()

    def _loop(self) -> None:
        deadline = time.monotonic() + 600  # bounded even if the block never ends
        while not self._stop.is_set() and time.monotonic() < deadline:
            self._sample()
            self._stop.wait(POLL_PERIOD_S)

    def _sample(self) -> None:
        t = time.monotonic()
        procs = [subprocess.Popen(_runc_list_argv(n), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for n in self.nodes]
        states: list[str | None] = []
        for node, proc in zip(self.nodes, procs, strict=True):
            try:
                out, err = proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                self.errors.append(f"{node.name}: runc list timed out")
                states.append("?")
                continue
            if proc.returncode != 0:
                self.errors.append(f"{node.name}: runc list exited {proc.returncode}: {err.strip()}")
                states.append("?")
                continue
            states.append(_status_in(out, self.ctid))
        self.samples.append((t, tuple(states)))

    def running(self, sample: tuple[str | None, ...]) -> int:
        return sum(1 for s in sample if s == "running")

    @property
    def max_running(self) -> int:
        return max((self.running(s) for _, s in self.samples), default=0)

    def statuses(self, node: Node) -> set[str | None]:
        i = self.nodes.index(node)
        return {s[i] for _, s in self.samples}

    def history(self) -> str:
        """The samples where something changed, for failure messages."""
        out, last = [], None
        t0 = self.samples[0][0] if self.samples else 0.0
        for t, s in self.samples:
            if s != last:
                out.append(f"  +{t - t0:6.3f} s " + " ".join(f"{n.name}={st}" for n, st in zip(self.nodes, s,
                                                                                             strict=True)))
                last = s
        return "\n".join(out)

    def assert_never_two(self) -> None:
        assert len(self.samples) >= 3, f"the watcher took only {len(self.samples)} samples"
        bad = [s for s in self.samples if s[1].count("?") == len(self.nodes)]
        assert len(bad) < len(self.samples) / 2, f"runc list failed too often: {self.errors[:3]}"
        assert self.max_running <= 1, (f"two running copies of {self.ctid} were seen "
                                       f"({len(self.samples)} samples):\n{self.history()}")
        span = self.samples[-1][0] - self.samples[0][0]
        print(f"copy watch of {self.ctid}: {len(self.samples)} samples over {span:.2f} s, "
              f"at most {self.max_running} running\n{self.history()}")


# ---- clients on the LAN -----------------------------------------------------------------------


class EchoClient:
    """One TCP connection from the LAN namespace to the container's echo server, sending a numbered
    line every 50 ms and checking each echo; never reconnects. Bounded to max_s seconds."""

    def __init__(self, lan: str, ip: str, port: int = ECHO_PORT, period: float = 0.05, max_s: float = 100) -> None:
        self.lan, self.ip, self.port, self.period, self.max_s = lan, ip, port, period, max_s
        self.round_trips = 0
        self.max_gap = 0.0
        self.error: str | None = None
        self.local: tuple[str, int] | None = None
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._thread = threading.Thread(target=self._main, name=f"echo-{ip}", daemon=True)

    def start(self, timeout: float = 10.0) -> EchoClient:
        self._thread.start()
        if not self._connected.wait(timeout):
            raise AssertionError(f"no TCP connection to {self.ip}:{self.port} within {timeout:g} s: {self.error}")
        self.wait_round_trips(5)
        return self

    def _main(self) -> None:
        try:
            in_netns(self.lan, self._loop, timeout=self.max_s + 30)
        except BaseException as e:
            self.error = self.error or f"{type(e).__name__}: {e}"
        finally:
            self._connected.set()

    def _loop(self) -> None:
        with socket.create_connection((self.ip, self.port), timeout=5) as s:
            s.settimeout(15)
            self.local = s.getsockname()
            self._connected.set()
            buf = b""
            last = time.monotonic()
            end = last + self.max_s
            seq = 0
            while not self._stop.is_set() and time.monotonic() < end:
                want = f"{seq}\n".encode()
                s.sendall(want)
                while b"\n" not in buf:
                    chunk = s.recv(4096)
                    if not chunk:
                        raise ConnectionError(f"the container closed the connection after {seq} round trips")
                    buf += chunk
                line, _, buf = buf.partition(b"\n")
                if line + b"\n" != want:
                    raise AssertionError(f"echo {line!r} for {want!r}")
                now = time.monotonic()
                self.max_gap = max(self.max_gap, now - last)
                last = now
                seq += 1
                self.round_trips = seq
                self._stop.wait(self.period)

    def wait_round_trips(self, n: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self.round_trips < n and self.error is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert self.error is None, f"the echo connection failed: {self.error}"
        assert self.round_trips >= n, f"only {self.round_trips} echo round trips within {timeout:g} s"

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(20)

    def assert_alive(self, more: int = 5) -> None:
        """The one connection still works: `more` further round trips go through."""
        self.wait_round_trips(self.round_trips + more)


def counter(mc: Cluster2, ip: str) -> int:
    status, body = in_netns(mc.lan, lambda: http_get(ip, HTTP_PORT, "/cgi-bin/counter", timeout=2.0), 10.0)
    assert status == 200, f"GET http://{ip}/cgi-bin/counter: HTTP {status} {body!r}"
    return int(body.strip())


def wait_counter(mc: Cluster2, ip: str, timeout: float = 10.0) -> int:
    """The counter, once the container's services answer (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = counter(mc, ip)
            if value > 0:
                return value
        except (OSError, ValueError, TimeoutError, AssertionError):
            if time.monotonic() > deadline:
                raise
        time.sleep(0.1)


def answers_within(mc: Cluster2, ip: str, since: float, limit: float = ANSWER_WITHIN_S,
                   port: int = HTTP_PORT) -> float:
    """Seconds from `since` until a TCP connect to ip:port from the LAN succeeds; fails past limit."""

    def probe() -> float:
        last = ""
        while True:
            try:
                with socket.create_connection((ip, port), timeout=0.25):
                    return time.monotonic() - since
            except OSError as e:
                last = str(e)
            if time.monotonic() - since > limit:
                raise AssertionError(f"{ip}:{port} did not answer within {limit:g} s ({last})")
            time.sleep(0.02)

    elapsed = in_netns(mc.lan, probe, timeout=limit + 10)
    print(f"{ip}:{port} answers {elapsed:.3f} s after the reference point")
    return elapsed


def times_printed(stdout: str) -> dict[str, float]:
    """The `-t` table: stage -> seconds."""
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"^\s*([a-z-]+):\s+(\d+\.\d+) s$", stdout, re.M)}


def log_offset(node: Node) -> int:
    try:
        return node.agent_log.stat().st_size
    except FileNotFoundError:
        return 0


def log_since(node: Node, offset: int) -> str:
    with open(node.agent_log, "rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")


def assert_runs_here(mc: Cluster2, node: Node, ctid: int) -> None:
    """ctid runs on node, unfrozen, with its config, and no migration journal is left."""
    assert runc_status(node, ctid) == "running", f"{ctid} on {node.name}: runc says {runc_status(node, ctid)}"
    assert mc.listed(node).get(ctid) == "running"
    assert node.conf(ctid).exists()
    assert not node.journal("out", ctid).exists() and not node.journal("in", ctid).exists()


def assert_no_copy(node: Node, ctid: int, *, kept_partial: bool = False, bundle: bool = True) -> None:
    found = traces(node, ctid, kept_partial=kept_partial, bundle=bundle)
    assert not found, f"{node.name} keeps a copy of {ctid}:\n  " + "\n  ".join(found)


def assert_stayed_on_the_source(mc: Cluster2, src: Node, dst: Node, ctid: int, watch: CopyWatch,
                                client: EchoClient, before: int) -> None:
    """After a failed move: ctid runs on src as before (its connection and counter too), dst never
    ran it and keeps nothing of it."""
    assert_runs_here(mc, src, ctid)
    assert_no_copy(dst, ctid)
    watch.assert_never_two()
    assert watch.statuses(dst) <= {None}, watch.history()
    client.assert_alive()
    assert counter(mc, ip_of(ctid)) >= before


# ---- 1. online migration ----------------------------------------------------------------------


def test_online_migration_keeps_the_connection_and_the_counter_and_moves_back(mc: Cluster2,
                                                                              make_ct: MakeCt) -> None:
    n1, n2 = mc.nodes
    ctid = make_ct(n1, 101)
    ip = ip_of(ctid)
    wait_counter(mc, ip)
    client = EchoClient(mc.lan, ip).start()
    try:
        before = counter(mc, ip)
        trips = client.round_trips

        with CopyWatch(mc.nodes, ctid) as watch:
            run = mc.vzmigrate("--online", "-t", n2.name, str(ctid))

        assert run.res.returncode == 0, run.describe()
        after = counter(mc, ip)
        client.assert_alive()
        assert after >= before, f"the counter went back from {before} to {after}: restarted, not restored"
        assert client.round_trips > trips
        times = times_printed(run.res.stdout)
        assert {"dump", "restore", "frozen", "total"} <= set(times), run.describe()
        assert 0 < times["frozen"] < times["total"], times
        assert mc.listed(n2) == {ctid: "running"}
        assert ctid not in mc.listed(n1)
        assert n1.conf(ctid, ".migrated").exists() and not n1.conf(ctid).exists()
        assert_no_copy(n1, ctid, bundle=False)
        assert runc_status(n2, ctid) == "running"
        watch.assert_never_two()
        later = counter(mc, ip)
        deadline = time.monotonic() + 3
        while later <= after and time.monotonic() < deadline:
            time.sleep(0.1)
            later = counter(mc, ip)
        assert later > after, "the counter stopped after the move"
        print(f"move n1 -> n2: {times}; longest echo gap so far {client.max_gap:.3f} s, counter {before} -> {after}")

        # and back
        before_back = counter(mc, ip)
        with CopyWatch(mc.nodes, ctid) as watch_back:
            back = mc.vzmigrate("--online", "-t", n1.name, str(ctid))

        assert back.res.returncode == 0, back.describe()
        client.assert_alive()
        assert counter(mc, ip) >= before_back
        assert mc.listed(n1) == {ctid: "running"}
        assert ctid not in mc.listed(n2)
        assert_no_copy(n2, ctid, bundle=False)
        watch_back.assert_never_two()
        client.stop()
        assert client.error is None, client.error
        times_back = times_printed(back.res.stdout)
        print(f"move n2 -> n1: {times_back}; one connection {client.local}, {client.round_trips} round trips, "
              f"longest gap {client.max_gap:.3f} s")
    finally:
        client.stop()


def test_online_migration_leaves_no_bundle_on_the_source(mc: Cluster2, make_ct: MakeCt) -> None:
    n1, n2 = mc.nodes
    ctid = make_ct(n1, 102, services=False)

    run = mc.vzmigrate("--online", n2.name, str(ctid))

    assert run.res.returncode == 0, run.describe()
    assert_no_copy(n1, ctid, bundle=False)
    if n1.bundle(ctid).exists():
        pytest.fail(f"{n1.bundle(ctid)} is left: {sorted(p.name for p in n1.bundle(ctid).iterdir())}")


LOCKHOLDER_C = Path(__file__).with_name("lockholder.c")
SURVIVING_LIMITS = [("memory", "memory.limit_in_bytes"), ("pids", "pids.max"), ("cpu", "cpu.shares"),
                    ("cpu", "cpu.cfs_quota_us"), ("cpu", "cpu.cfs_period_us")]


def inside(mc: Cluster2, node: Node, ctid: int, script: str) -> str:
    return mc.ok("vzctl", "--node", node.name, "exec", str(ctid), script)


def lasting_processes(mc: Cluster2, node: Node, ctid: int) -> set[tuple[str, str]]:
    """(PID inside the container, command) of its long-lived processes (not the counter's sleeps)."""
    out = inside(mc, node, ctid, "ps -o pid,args")
    rows = {tuple(line.split(None, 1)) for line in out.splitlines()[1:] if len(line.split(None, 1)) == 2}
    return {(pid, cmd) for pid, cmd in rows if cmd.startswith(("init", "/lockholder", "sleep 999"))}


def locks_in(mc: Cluster2, node: Node, ctid: int) -> list[tuple[str, ...]]:
    """/proc/locks inside the container: (class, kind, mode, pid, start, end) of each lock. The
    device and inode are left out: the file is the same, its inode is not (the filesystem was
    copied file by file; a disk image is a new image on the destination)."""
    rows = [line.split() for line in inside(mc, node, ctid, "cat /proc/locks").splitlines()]
    return sorted(tuple(r[1:5] + r[6:8]) for r in rows if len(r) >= 8)


def disk_grace_expires(mc: Cluster2, node: Node, ctid: int) -> int:
    out = mc.ok("vzquota", "--node", node.name, "stat", str(ctid), "-j")
    return int(json.loads(out)["resources"]["1k-blocks"]["grace_expires"] or 0)


def limits_of(node: Node, ctid: int) -> dict[str, str | None]:
    return {f"{c}/{f}": read_value(detect(), node.layout.cgroup_path(ctid), c, f) for c, f in SURVIVING_LIMITS}


def test_what_survives_a_live_move_and_the_destination_adopts_the_container(mc: Cluster2, make_ct: MakeCt) -> None:
    """Locks, timers, the process tree, hostname, IP, a veth's MAC, cgroup limits and the disk quota
    (with its grace clock) are the same after the move, and the destination's agent manages the
    container (set, exec, stop)."""
    n1, n2 = mc.nodes
    ctid = make_ct(n1, 161, start=False)
    mc.ok("vzctl", "--node", n1.name, "set", str(ctid), "--hostname", "surv161", "--ram", "256M",
          "--numproc", "100", "--cpuunits", "2000", "--cpulimit", "50", "--diskspace", "1M:300M", "--quotatime", "3600",
          "--netif_add", "eth1,00:18:51:5A:01:61,veth161.1,00:18:51:5B:01:61,vzbr0", "--save")
    mc.ok("vzctl", "--node", n1.name, "start", str(ctid))
    ip = ip_of(ctid)
    subprocess.run(["gcc", "-static", "-O2", "-o", str(n1.ve_root(ctid) / "lockholder"), str(LOCKHOLDER_C)],
                   check=True, timeout=120)
    inside(mc, n1, ctid, "setsid /lockholder /tmp/held </dev/null >/tmp/lockholder.out 2>&1 & "
                         "setsid sleep 999 </dev/null >/dev/null 2>&1 & sleep 0.3; cat /tmp/lockholder.out")
    before = wait_counter(mc, ip)
    procs = lasting_processes(mc, n1, ctid)
    assert {cmd.split()[0] for _, cmd in procs} >= {"init", "/lockholder", "sleep"}, procs
    locks = locks_in(mc, n1, ctid)
    assert {lk[0] for lk in locks} >= {"FLOCK", "POSIX"}, locks
    disk = inside(mc, n1, ctid, "df -k / | tail -1").split()[1]
    grace = disk_grace_expires(mc, n1, ctid)
    assert grace > time.time() + 3000, "the soft limit (1M) is exceeded: its grace clock runs"
    mac = inside(mc, n1, ctid, "cat /sys/class/net/eth1/address").strip()
    assert mac == "00:18:51:5a:01:61", mac
    limits = limits_of(n1, ctid)
    assert limits["memory/memory.limit_in_bytes"] == str(256 << 20) and limits["pids/pids.max"] == "100", limits

    with CopyWatch(mc.nodes, ctid) as watch:
        run = mc.vzmigrate("--online", n2.name, str(ctid))
    assert run.res.returncode == 0, run.describe()
    watch.assert_never_two()

    assert lasting_processes(mc, n2, ctid) == procs
    assert locks_in(mc, n2, ctid) == locks
    assert inside(mc, n2, ctid, "hostname").strip() == "surv161"
    assert inside(mc, n2, ctid, "df -k / | tail -1").split()[1] == disk
    assert disk_grace_expires(mc, n2, ctid) == grace
    assert inside(mc, n2, ctid, "cat /sys/class/net/eth1/address").strip() == mac
    assert limits_of(n2, ctid) == limits
    assert counter(mc, ip) >= before
    # the destination's agent owns it now
    mc.ok("vzctl", "--node", n2.name, "set", str(ctid), "--numproc", "120")
    assert limits_of(n2, ctid)["pids/pids.max"] == "120"
    mc.ok("vzctl", "--node", n2.name, "stop", str(ctid), "--fast")
    assert mc.listed(n2).get(ctid) == "stopped"


LEGACY_CRIU_OPTIONS = "skip-in-flight\n"  # what agents before 2026-11-30 dumped with (soft cgroups)


def test_images_dumped_with_another_agents_criu_options_restore_with_those(mc: Cluster2, make_ct: MakeCt) -> None:
    """A source of another version dumps with other CRIU options (here: an earlier agent's, with
    CRIU managing cgroups); the destination restores those images (with the options that came
    with them), then keeps its own options for the container's next dump, and it moves on."""
    n1, n2 = mc.nodes
    ctid = make_ct(n1, 103)
    ip = ip_of(ctid)
    before = wait_counter(mc, ip)
    ours = n1.bundle(ctid).joinpath("criu.conf").read_text()
    n1.bundle(ctid).joinpath("criu.conf").write_text(LEGACY_CRIU_OPTIONS)  # read by runc at checkpoint
    with CopyWatch(mc.nodes, ctid) as watch:
        run = mc.vzmigrate("--online", n2.name, str(ctid))
        assert run.res.returncode == 0, run.describe()
        assert n2.bundle(ctid).joinpath("criu.conf").read_text() == ours
        back = mc.vzmigrate("--online", n1.name, str(ctid))
        assert back.res.returncode == 0, back.describe()
    assert_runs_here(mc, n1, ctid)
    assert_no_copy(n2, ctid)
    watch.assert_never_two()
    assert counter(mc, ip) >= before


# ---- 2. offline migration ---------------------------------------------------------------------

@pytest.mark.parametrize("with_ip", [
    pytest.param(True, id="venet-ip"),
    pytest.param(False, id="no-ip"),
])
def test_offline_migration_of_a_running_container_stops_moves_and_starts_it(
        mc: Cluster2, make_ct: MakeCt, with_ip: bool) -> None:
    n1, n2 = mc.nodes
    ctid = make_ct(n1, 111 if with_ip else 112, ip="auto" if with_ip else None)
    (n1.private(ctid) / "root/marker").write_text("moved with its files\n")

    with CopyWatch(mc.nodes, ctid) as watch:
        run = mc.vzmigrate("-t", n2.name, str(ctid))

    assert run.res.returncode == 0, run.describe()
    assert mc.listed(n2) == {ctid: "running"}
    assert ctid not in mc.listed(n1)
    assert_no_copy(n1, ctid, bundle=False)
    assert (n2.private(ctid) / "root/marker").read_text() == "moved with its files\n"
    assert watch.statuses(n2) <= {None, "created", "running"}
    watch.assert_never_two()
    if with_ip:
        wait_counter(mc, ip_of(ctid))


def test_offline_migration_of_a_stopped_container_moves_it_stopped(mc: Cluster2, make_ct: MakeCt) -> None:
    n1, n2 = mc.nodes
    ctid = make_ct(n1, 113, start=False)

    with CopyWatch(mc.nodes, ctid) as watch:
        run = mc.vzmigrate(n2.name, str(ctid))

    assert run.res.returncode == 0, run.describe()
    assert mc.listed(n2) == {ctid: "stopped"}
    assert ctid not in mc.listed(n1)
    assert n2.conf(ctid).exists() and n2.private(ctid).is_dir()
    assert_no_copy(n1, ctid)
    assert watch.max_running == 0, watch.history()
    watch.assert_never_two()


# ---- 3. --check-only on an impossible migration -----------------------------------------------


@pytest.mark.parametrize("conflict", ["ctid-exists", "ip-taken"])
def test_impossible_migration_is_refused_with_the_reason_and_freezes_nothing(
        mc: Cluster2, make_ct: MakeCt, conflict: str) -> None:
    n1, n2 = mc.nodes
    if conflict == "ctid-exists":
        ctid = 121
        make_ct(n2, ctid, ip=None, start=False, services=False)  # same CTID, nothing else in common
        make_ct(n1, ctid)
        reason = re.compile(rf"ctid.*{ctid}.*already exists", re.I)
    else:
        ctid = 122
        make_ct(n2, 123, ip=ip_of(ctid), start=False, services=False)  # before 122: DAD would refuse it after
        make_ct(n1, ctid)
        reason = re.compile(rf"ip\b.*{re.escape(ip_of(ctid))}", re.I)
    wait_counter(mc, ip_of(ctid))
    dst_conf = n2.conf(121 if conflict == "ctid-exists" else 123).read_text()

    with CopyWatch(mc.nodes, ctid) as watch:
        check = mc.vzmigrate("--check-only", "--online", n2.name, str(ctid))
        real = mc.vzmigrate("--online", "-t", n2.name, str(ctid))

    for run in (check, real):
        assert run.res.returncode == 6, run.describe()
        assert reason.search(run.res.stderr), run.describe()
    assert watch.statuses(n1) == {"running"}, f"the source was not running at every sample:\n{watch.history()}"
    watch.assert_never_two()
    assert_runs_here(mc, n1, ctid)
    assert n2.conf(121 if conflict == "ctid-exists" else 123).read_text() == dst_conf
    if conflict == "ip-taken":
        assert_no_copy(n2, ctid)
    else:
        assert runc_status(n2, ctid) is None and not n2.journal("in", ctid).exists()


# ---- 4. failures --------------------------------------------------------------------------------


@pytest.mark.parametrize(("spec", "armed", "message"), [
    pytest.param("dst-restore", "dst", r"failpoint dst-restore", id="restore-fails"),
    pytest.param("src-corrupt-images=corrupt", "src", r"image stream", id="corrupt-images"),
    pytest.param("src-truncate-images=corrupt", "src", r"image stream", id="truncated-images"),
])
def test_failed_migration_resumes_the_source_and_leaves_nothing_on_the_destination(
        mc: Cluster2, make_ct: MakeCt, spec: str, armed: str, message: str) -> None:
    n1, n2 = mc.nodes
    ctid = make_ct(n1, {"dst": 131, "src": 132}[armed] + (2 if "truncate" in spec else 0))
    ip = ip_of(ctid)
    before = wait_counter(mc, ip)
    with mc.failpoints(n2 if armed == "dst" else n1, spec):
        client = EchoClient(mc.lan, ip).start()
        try:
            dst_log = log_offset(n2)

            with CopyWatch(mc.nodes, ctid) as watch:
                run = mc.vzmigrate("--online", "-t", n2.name, str(ctid))

            assert run.res.returncode == 1, run.describe()
            assert re.search(message, run.res.stderr), run.describe()
            answers_within(mc, ip, run.returned_at)
            assert_stayed_on_the_source(mc, n1, n2, ctid, watch, client, before)
            if armed == "src":  # detected when the stream arrived, before any restore was attempted
                new_log = log_since(n2, dst_log)
                assert "restore begins" not in new_log and "restored" not in new_log, new_log
                assert "aborted" in new_log, new_log
        finally:
            client.stop()
    assert client.error is None, client.error


def kill_when_frozen(src: Node, ctid: int, pid: int, timeout: float = 60.0) -> threading.Thread:
    """A thread that SIGKILLs pid (an agent of this cluster) once ctid is seen frozen on src."""

    def run() -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if runc_status(src, ctid) == "paused":
                os.kill(pid, signal.SIGKILL)
                print(f"killed agent pid {pid}: {ctid} is frozen on {src.name}")
                return
            time.sleep(0.01)

    thread = threading.Thread(target=run, name=f"kill-{pid}", daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("how", ["failpoint-at-restore", "sigkill-while-frozen"])
def test_destination_agent_killed_mid_migration_source_resumes(mc: Cluster2, make_ct: MakeCt, how: str) -> None:
    n1, n2 = mc.nodes
    ctid = make_ct(n1, 141 if how == "failpoint-at-restore" else 143)
    ip = ip_of(ctid)
    wait_counter(mc, ip)
    try:
        armed = (mc.failpoints(n2, "dst-restore=kill") if how == "failpoint-at-restore"
                 else contextlib.nullcontext(agent_pid(mc.cluster, n2.name)))
        with armed as armed_pid:
            client = EchoClient(mc.lan, ip).start()
            try:
                with CopyWatch(mc.nodes, ctid) as watch:
                    killer = kill_when_frozen(n1, ctid, armed_pid) if how == "sigkill-while-frozen" else None
                    run = mc.vzmigrate("--online", "-t", n2.name, str(ctid))
                    if killer is not None:
                        killer.join(5)
                    assert run.res.returncode != 0, run.describe()
                    wait_dead(armed_pid, 5)
                    answers_within(mc, ip, run.returned_at)
                    assert_runs_here(mc, n1, ctid)
                    assert agent_pid(mc.cluster, n2.name) == 0, "the destination agent was not killed"
                    client.assert_alive()
                    # the destination agent comes back and drops what the migration left there
                    t0 = time.monotonic()
                    mc.cluster.up(2)
                    print(f"destination agent restarted in {time.monotonic() - t0:.2f} s")
                    assert agent_pid(mc.cluster, n2.name) not in (0, armed_pid)

                assert_no_copy(n2, ctid)
                assert_runs_here(mc, n1, ctid)
                watch.assert_never_two()
                client.assert_alive()
            finally:
                client.stop()
        assert client.error is None, client.error
    finally:
        # safety net: anything a crashed destination agent left (the next test checks there is none)
        if strays := mc.reap_strays():
            print("killed what the crashed destination agent left:\n  " + "\n  ".join(strays))


def test_destination_agent_killed_mid_migration_leaves_no_process(mc: Cluster2, make_ct: MakeCt) -> None:
    n1, n2 = mc.nodes
    ctid = make_ct(n1, 142)
    strays: list[str] = []
    try:
        with mc.failpoints(n2, "dst-restore=kill"):
            run = mc.vzmigrate("--online", n2.name, str(ctid))
            assert run.res.returncode != 0, run.describe()
            mc.cluster.up(2)  # the destination agent's recovery
            found = stray_processes(mc.cluster.base, mc.agent_pids())
            strays = [" ".join(argv) for argv in found.values()]
    finally:
        mc.reap_strays()
    if strays:
        pytest.fail("processes left by the killed destination agent:\n  " + "\n  ".join(strays))


def test_source_agent_killed_after_the_freeze_resumes_the_container_when_it_restarts(
        mc: Cluster2, make_ct: MakeCt) -> None:
    n1, n2 = mc.nodes
    ctid = make_ct(n1, 151)
    ip = ip_of(ctid)
    before = wait_counter(mc, ip)
    with mc.failpoints(n1, "src-after-freeze=kill") as armed_pid:
        client = EchoClient(mc.lan, ip).start()
        try:
            with CopyWatch(mc.nodes, ctid) as watch:
                run = mc.vzmigrate("--online", "-t", n2.name, str(ctid))
                assert run.res.returncode != 0, run.describe()
                assert agent_pid(mc.cluster, n1.name) == 0, "the source agent was not killed"
                frozen = runc_status(n1, ctid)
                t0 = time.monotonic()
                mc.cluster.up(2)  # the source agent starts again, clean
                restarted = time.monotonic()
                print(f"source agent restarted in {restarted - t0:.2f} s")
                answers_within(mc, ip, restarted)

            assert frozen == "paused", f"while its agent was dead the source copy was {frozen}"
            assert agent_pid(mc.cluster, n1.name) not in (0, armed_pid)
            assert_stayed_on_the_source(mc, n1, n2, ctid, watch, client, before)
        finally:
            client.stop()
    assert client.error is None, client.error


def test_destination_lost_after_the_commit_was_sent_source_stays_frozen_then_settles(
        mc: Cluster2, make_ct: MakeCt) -> None:
    """The destination agent dies as Commit arrives (before committing). The source cannot know
    whether the destination owns the container: it keeps its copy frozen (never resumes blindly),
    gives up the command after its retry window, refuses whatever would thaw, kill, move or remove
    the copy meanwhile, and settles in the background once the destination answers again: not
    committed there -> resumed here."""
    n1, n2 = mc.nodes
    ctid = make_ct(n1, 155)
    ip = ip_of(ctid)
    before = wait_counter(mc, ip)
    with mc.failpoints(n2, "dst-commit=kill") as armed_pid, CopyWatch(mc.nodes, ctid) as watch:
        run = mc.vzmigrate("--online", n2.name, str(ctid))
        assert run.res.returncode != 0, run.describe()
        assert "did not confirm the commit" in run.res.stderr, run.describe()
        wait_dead(armed_pid, 5)
        assert runc_status(n1, ctid) == "paused", "the source copy was resumed without the destination's word"
        assert n1.journal("out", ctid).exists()
        for op in (["resume"], ["stop", "--fast"], ["destroy"]):  # nobody may thaw, kill or remove it now
            res = mc.cli("vzctl", "--node", n1.name, *op, str(ctid))
            assert res.returncode != 0 and "outcome is not known yet" in res.stderr, (op, res.stderr)
        again = mc.vzmigrate("--online", n2.name, str(ctid))
        assert again.res.returncode != 0 and "outcome is not known yet" in again.res.stderr, again.describe()
        assert runc_status(n1, ctid) == "paused"
        t0 = time.monotonic()
        mc.cluster.up(2)  # the destination agent is back: it drops its uncommitted copy
        answers_within(mc, ip, t0, limit=SETTLE_WITHIN_S)
        print(f"settled {time.monotonic() - t0:.2f} s after the destination agent came back")
    assert_runs_here(mc, n1, ctid)
    assert_no_copy(n2, ctid)
    watch.assert_never_two()
    assert counter(mc, ip) >= before


def test_keep_dst_keeps_the_partial_copy_and_a_retry_succeeds(mc: Cluster2, make_ct: MakeCt) -> None:
    n1, n2 = mc.nodes
    ctid = make_ct(n1, 161)
    ip = ip_of(ctid)
    wait_counter(mc, ip)
    with mc.failpoints(n2, "dst-restore"), CopyWatch(mc.nodes, ctid) as watch:
        run = mc.vzmigrate("--online", "--keep-dst", n2.name, str(ctid))
        assert run.res.returncode == 1, run.describe()
        answers_within(mc, ip, run.returned_at)

    assert_runs_here(mc, n1, ctid)
    assert_no_copy(n2, ctid, kept_partial=True)
    assert (n2.incoming(ctid) / "etc/inittab").read_text() == INITTAB
    watch.assert_never_two()

    before = counter(mc, ip)
    with CopyWatch(mc.nodes, ctid) as retry_watch:
        retry = mc.vzmigrate("--online", "--keep-dst", "-t", n2.name, str(ctid))

    assert retry.res.returncode == 0, retry.describe()
    assert mc.listed(n2) == {ctid: "running"}
    assert not n2.incoming(ctid).exists()
    assert_no_copy(n1, ctid, bundle=False)
    assert counter(mc, ip) >= before
    retry_watch.assert_never_two()
