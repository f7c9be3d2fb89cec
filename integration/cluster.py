"""Local clusters for integration tests: the product's own LocalCluster (cli/localcluster.py), under
names and addresses that only these tests use.

A test cluster has prefix ``vzk`` + 6 hex digits + ``-`` for its network namespaces and node names
(``vzk1a2b3c-lan``, ``vzk1a2b3c-n1``; containers' namespaces ``vz-vzk1a2b3c-n1-<CTID>``), its base
directory ``/tmp/vzfleet-tests/cluster-<hex>`` and the LAN 10.214.x.0/24 (the demo cluster uses
``vzc-`` and 10.213.0.0/24). ``vzk`` is not the single-node harness's ``vzt``, so neither one's
stale-state cleanup can touch the other's live nodes.

Not pytest-specific. :func:`clean_stale_clusters` removes what crashed runs left (clusters whose
owning process is gone); :func:`leftovers` checks, independently of the product's own bookkeeping,
that a cluster left nothing on the machine.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cli.client import CliError
from cli.localcluster import LocalCluster, NodePlan, agent_argv, agent_binary, agent_info, is_agent_cmdline
from integration.harness import pid_alive

TEST_ROOT = Path("/tmp/vzfleet-tests")
TEST_SUBNET = "10.214.0.0/24"
PREFIX_HEAD = "vzk"
OWNER_FILE = "owner"
NETNS_DIR = Path("/run/netns")
CGROUP_ROOT = Path("/sys/fs/cgroup")
_BASE_RE = re.compile(r"^cluster-([0-9a-f]{6})$")
_NETNS_RE = re.compile(rf"^{PREFIX_HEAD}([0-9a-f]{{6}})-(lan|n\d+)$")


def _progress(line: str) -> None:
    print(f"[cluster] {line}", file=sys.stderr, flush=True)


def _start_ticks(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[-1].split()[19].decode()
    except (OSError, IndexError):
        return None


def _owner_alive(base: Path) -> bool:
    """True when the process that made this cluster still runs (a test session in progress)."""
    try:
        pid_text, ticks = (base / OWNER_FILE).read_text().split()
    except (OSError, ValueError):
        return False
    return _start_ticks(int(pid_text)) == ticks


def new_cluster(subnet: str = TEST_SUBNET, hexid: str | None = None) -> LocalCluster:
    """A new (not yet started) cluster with a unique prefix, owned by this process."""
    hexid = hexid or secrets.token_hex(3)
    prefix = f"{PREFIX_HEAD}{hexid}-"
    base = TEST_ROOT / f"cluster-{hexid}"
    base.mkdir(parents=True, exist_ok=True)
    (base / OWNER_FILE).write_text(f"{os.getpid()} {_start_ticks(os.getpid())}\n")
    return LocalCluster(prefix=prefix, node_prefix=prefix, subnet=subnet, base=base, progress=_progress)


def remove(cluster: LocalCluster) -> None:
    """down() the cluster, then delete its base directory (only when nothing is mounted below it)."""
    cluster.down()
    if not any(mp.startswith(f"{cluster.base}/") for mp in _mount_points()):
        shutil.rmtree(cluster.base, ignore_errors=True)


def clean_stale_clusters() -> list[str]:
    """Take down every test cluster whose owner is gone; returns a line per problem left."""
    hexids: set[str] = set()
    if TEST_ROOT.is_dir():
        hexids |= {m.group(1) for p in TEST_ROOT.iterdir() if (m := _BASE_RE.match(p.name))}
    hexids |= {m.group(1) for n in _netns_names() if (m := _NETNS_RE.match(n))}
    problems: list[str] = []
    for hexid in sorted(hexids):
        base = TEST_ROOT / f"cluster-{hexid}"
        if _owner_alive(base):
            continue
        prefix = f"{PREFIX_HEAD}{hexid}-"
        # the subnet does not matter for taking a cluster down
        stale = LocalCluster(prefix=prefix, node_prefix=prefix, subnet=TEST_SUBNET, base=base,
                             progress=_progress)
        try:
            remove(stale)
        except (CliError, OSError) as e:
            problems.append(f"stale test cluster {prefix} ({base}): {e}")
    return problems


@dataclass(frozen=True)
class Recorded:
    """What a running cluster consists of, read before down() removes its state file."""

    prefix: str
    base: Path
    nodes: tuple[str, ...]
    pids: Mapping[int, Sequence[str]]  # pid -> the command line it had


def record(cluster: LocalCluster) -> Recorded:
    state = cluster.state()
    assert state is not None, f"cluster {cluster.prefix} has no state file"
    pids = [int(n["pid"]) for n in state["nodes"]] + [int(state["etcd"]["pid"])]
    return Recorded(prefix=cluster.prefix, base=cluster.base,
                    nodes=tuple(str(n["name"]) for n in state["nodes"]),
                    pids={p: _cmdline(p) for p in pids if p > 0})


def leftovers(rec: Recorded) -> list[str]:
    """Anything of the recorded cluster still on the machine (checked without the product's code)."""
    found = [f"netns {n}" for n in _netns_names() if n.startswith(rec.prefix)]
    for pid, argv in rec.pids.items():
        if argv and _cmdline(pid) == argv:
            found.append(f"process {pid} ({' '.join(argv[:3])} ...) still running")
    for node in rec.nodes:
        found += [f"netns {n}" for n in _netns_names() if n.startswith(f"vz-{node}-")]
        for base in _cgroup_bases():
            if (base / "vzfleet" / node).exists():
                found.append(f"cgroup {base / 'vzfleet' / node}")
        runc_root = rec.base / node / "run/vzfleet/runc"
        if runc_root.is_dir() and any(runc_root.iterdir()):
            found.append(f"runc state in {runc_root}")
    found += [f"mount {mp}" for mp in _mount_points() if mp.startswith(f"{rec.base}/")]
    return found


def ping_argv(address: str) -> list[str]:
    """One ping, one second: iputils ping when installed, busybox's otherwise."""
    ping = ["ping"] if shutil.which("ping") else ["busybox", "ping"]
    return [*ping, "-c", "1", "-W", "1", address]


def in_netns(netns: str, argv: list[str], timeout: float = 15) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", netns, *argv], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def cli(base: Path, tool: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run vzctl / vzlist / vzfleet of the project's venv against the cluster at base (VZFLEET_CLUSTER)."""
    exe = Path(sys.executable).parent / tool
    env = {k: v for k, v in os.environ.items() if not k.startswith("VZFLEET_")}
    env["VZFLEET_CLUSTER"] = str(base)
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=timeout, env=env,
                          stdin=subprocess.DEVNULL)


# ---- small readers of kernel state ------------------------------------------------------------


def _netns_names() -> list[str]:
    try:
        return sorted(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return []


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0")[:-1]]


def _cgroup_bases() -> list[Path]:
    if (CGROUP_ROOT / "cgroup.controllers").exists():
        return [CGROUP_ROOT]
    return sorted(p for p in CGROUP_ROOT.iterdir() if p.is_dir() and not p.is_symlink())


def _mount_points() -> list[str]:
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        points.append(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4]))
    return points


# ---- agents with an environment of the test's choosing (failpoints) ----------------------------
#
# LocalCluster starts its agents without any VZFLEET_* variable of the caller (cli/localcluster.py
# `_start`), so failpoints (VZFLEET_FAILPOINTS) cannot reach them through up(). These helpers stop one
# node's agent and start it again with the same argv (`agent_argv`) plus the environment given.
# `up()` still repairs such a node when its agent died, with a clean environment again.

AGENT_STOP_TIMEOUT_S = 15.0
AGENT_START_TIMEOUT_S = 30.0
_agents: dict[int, subprocess.Popen[bytes]] = {}  # the agents started here, to reap them


def _node_plan(cluster: LocalCluster, node: str) -> NodePlan:
    state = cluster.state()
    assert state is not None, f"cluster {cluster.prefix} has no state file"
    return cluster.plan(len(state["nodes"])).node(node)


def agent_pid(cluster: LocalCluster, node: str) -> int:
    """PID of node's serving agent (the one the state file records, if it is still that agent), or 0."""
    state = cluster.state()
    assert state is not None, f"cluster {cluster.prefix} has no state file"
    plan = _node_plan(cluster, node)
    entry = next(n for n in state["nodes"] if n["name"] == node)
    pid = int(entry.get("pid", 0))
    if pid > 0 and pid_alive(pid) and is_agent_cmdline(_cmdline(pid), plan):
        return pid
    return 0


def agent_environ(pid: int) -> dict[str, str]:
    """The environment a process was started with."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    pairs = (item.decode(errors="replace").partition("=") for item in raw.split(b"\0") if item)
    return {k: v for k, _, v in pairs}


def _reap(pid: int) -> None:
    proc = _agents.get(pid)
    if proc is not None:
        if proc.poll() is not None:
            del _agents[pid]
        return
    try:
        os.waitpid(pid, os.WNOHANG)  # a child of this process when up() ran here
    except ChildProcessError:
        pass


def wait_dead(pid: int, timeout: float = AGENT_STOP_TIMEOUT_S) -> bool:
    """Wait until pid is gone (reaping it when it is our child); False on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        _reap(pid)
        if not pid_alive(pid):
            _reap(pid)
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)


def stop_agent(cluster: LocalCluster, node: str) -> None:
    """SIGTERM node's agent (containers keep running), SIGKILL if it does not exit in time."""
    pid = agent_pid(cluster, node)
    if not pid:
        return
    os.kill(pid, signal.SIGTERM)
    if not wait_dead(pid):
        os.kill(pid, signal.SIGKILL)
        if not wait_dead(pid, 5.0):
            raise AssertionError(f"the agent of {node} (pid {pid}) survived SIGKILL")


def _record_agent_pid(cluster: LocalCluster, node: str, pid: int) -> None:
    """Write pid into the cluster state file, under the lock up()/down() take."""
    fd = os.open(cluster.base / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        state = cluster.state()
        assert state is not None
        for entry in state["nodes"]:
            if entry["name"] == node:
                entry["pid"] = pid
        path = cluster.base / "cluster.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        os.replace(tmp, path)
    finally:
        os.close(fd)


def start_agent(cluster: LocalCluster, node: str, env: Mapping[str, str] | None = None) -> int:
    """Start node's agent (it must not run) as up() would, plus env; returns once it answers."""
    plan = _node_plan(cluster, node)
    full = {k: v for k, v in os.environ.items() if not k.startswith(("VZFLEET_", "ETCD_", "ETCDCTL_"))}
    full.update(env or {})
    argv = agent_argv(plan, agent_binary())
    with open(plan.out_file, "ab") as out:
        out.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} (test, env {dict(env or {})}) {' '.join(argv)}\n"
                  .encode())
        out.flush()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=full,
                                start_new_session=True, close_fds=True)
    _agents[proc.pid] = proc
    _record_agent_pid(cluster, node, proc.pid)
    deadline = time.monotonic() + AGENT_START_TIMEOUT_S
    while agent_info(plan.socket, timeout=1.0) is None:
        if proc.poll() is not None:
            raise AssertionError(f"the agent of {node} exited at start ({proc.returncode}): "
                                 f"{plan.out_file.read_text(errors='replace')[-1500:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"the agent of {node} did not answer within {AGENT_START_TIMEOUT_S:g} s")
        time.sleep(0.05)
    return proc.pid


def restart_agent(cluster: LocalCluster, node: str, env: Mapping[str, str] | None = None) -> int:
    """Stop node's agent and start it again with env (e.g. {"VZFLEET_FAILPOINTS": "dst-restore"})."""
    stop_agent(cluster, node)
    return start_agent(cluster, node, env)


def stray_processes(base: Path, exclude: Sequence[int] = ()) -> dict[int, list[str]]:
    """Processes whose command line mentions base (other than the pids in exclude): pid -> argv."""
    needle = str(base)
    found = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) in exclude or int(entry.name) == os.getpid():
            continue
        argv = _cmdline(int(entry.name))
        if any(needle in a for a in argv) and pid_alive(int(entry.name)):
            found[int(entry.name)] = argv
    return found
