"""Simulated hardware nodes for integration tests: a real agent per node, driven through the real CLI.

A :class:`Node` is one ``vzfleet-agent --root R --node N`` process with its own root directory
``/tmp/vzfleet-tests/<N>`` (node names are ``vzt`` + 6 hex digits, a prefix that only tests use).
Everything a node leaves on the machine is named after it: network namespaces ``vz-<N>-<CTID>``,
cgroups ``/vzfleet/<N>/<CTID>``, mounts and runc state under R. That is what lets
:func:`cleanup_stale` remove what a crashed run left behind without touching anything else, and
:meth:`Node.leftovers` prove that a node was cleaned up.

Not pytest-specific: failures raise :class:`HarnessError` (an AssertionError, so pytest shows it
as a failed expectation), with the command, its exit code and its output.
"""

from __future__ import annotations

import errno
import fcntl
import itertools
import json
import os
import pty
import re
import secrets
import select
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterable
from pathlib import Path
from typing import ClassVar

from agent.mounts import mount_points

REPO = Path(__file__).resolve().parents[1]
BASE = Path("/tmp/vzfleet-tests")
NODE_PREFIX = "vzt"
NETNS_DIR = Path("/run/netns")
CGROUP_ROOT = Path("/sys/fs/cgroup")
OWNER_FILE = ".harness-owner"
AGENT_OUT = "agent.out"  # the agent's stdout + stderr, under R

def venv_bin() -> Path:
    """The project's virtual environment's bin directory (where vzctl & co. are installed)."""
    beside_repo = REPO / ".venv" / "bin"
    return beside_repo if beside_repo.is_dir() else Path(sys.executable).parent


def new_node_name() -> str:
    return f"{NODE_PREFIX}{secrets.token_hex(3)}"


class HarnessError(AssertionError):
    """A command or a wait of the harness failed; the message carries the evidence."""


def describe(res: subprocess.CompletedProcess[str], root: Path | None = None) -> str:
    where = f" (VZFLEET_ROOT={root})" if root else ""
    return (f"`{shlex.join(str(a) for a in res.args)}`{where} exited {res.returncode}\n"
            f"--- stdout\n{res.stdout}--- stderr\n{res.stderr}---")


# ---- small readers of kernel state ------------------------------------------------------------


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below path (host mount namespace), deepest first."""
    prefix = str(path).rstrip("/")
    points = mount_points()
    return sorted((p for p in points if p == prefix or p.startswith(prefix + "/")), key=len, reverse=True)


def pid_alive(pid: int) -> bool:
    """True while pid exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[-1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in (b"Z", b"X")


def _start_ticks(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[-1].split()[19].decode()
    except (OSError, IndexError):
        return None


def _cgroup_bases() -> list[Path]:
    """Hierarchy roots: /sys/fs/cgroup on pure v2, each v1 hierarchy (and the v2 one) otherwise."""
    if (CGROUP_ROOT / "cgroup.controllers").exists():
        return [CGROUP_ROOT]
    return sorted(p for p in CGROUP_ROOT.iterdir() if p.is_dir() and not p.is_symlink())


def netns_names(prefix: str) -> list[str]:
    try:
        return sorted(p.name for p in NETNS_DIR.iterdir() if p.name.startswith(prefix))
    except FileNotFoundError:
        return []


def _remove_netns(name: str) -> str | None:
    res = subprocess.run(["ip", "netns", "delete", name], capture_output=True, text=True, timeout=30)
    return None if res.returncode == 0 else f"netns {name}: {res.stderr.strip()}"


def _remove_cgroup_tree(top: Path) -> list[str]:
    """rmdir top and its children, deepest first; processes still inside are SIGKILLed first
    (a test cgroup holds only processes of test containers). Returns what could not be removed."""
    problems = []
    for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda t: -len(t[0])):
        d = Path(dirpath)
        try:
            pids = [int(x) for x in (d / "cgroup.procs").read_text().split()]
        except OSError:
            pids = []
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 5
        while True:
            try:
                d.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError as e:
                if time.monotonic() > deadline:
                    problems.append(f"cgroup {d}: {e.strerror}")
                    break
                time.sleep(0.05)
    return problems


def _runc_states(runc_root: Path) -> list[dict[str, object]]:
    if not runc_root.is_dir():
        return []
    res = subprocess.run(["runc", "--root", str(runc_root), "list", "--format", "json"],
                         capture_output=True, text=True, timeout=30)
    if res.returncode != 0:
        raise HarnessError(describe(res))
    items = json.loads(res.stdout or "null") or []
    return [dict(i) for i in items]


# ---- a node -----------------------------------------------------------------------------------


class Node:
    """One simulated hardware node: its root directory and the agent process we spawned for it.

    Several nodes can coexist on one machine (each with its own name and root).
    """

    created: ClassVar[list[Node]] = []  # every node of this process, for running_copies()

    def __init__(self, name: str | None = None, *, base: Path = BASE) -> None:
        self.name = name or new_node_name()
        self.root = base / self.name
        self.proc: subprocess.Popen[bytes] | None = None
        Node.created.append(self)

    def __repr__(self) -> str:
        return f"Node({self.name!r}, root={str(self.root)!r})"

    # the OpenVZ layout under R
    @property
    def socket(self) -> Path:
        return self.root / "run/vzfleet/agent.sock"

    @property
    def runc_root(self) -> Path:
        return self.root / "run/vzfleet/runc"

    @property
    def conf_dir(self) -> Path:
        return self.root / "etc/vz/conf"

    @property
    def private_dir(self) -> Path:
        return self.root / "var/lib/vz/private"

    @property
    def template_cache(self) -> Path:
        return self.root / "var/lib/vz/template/cache"

    @property
    def agent_out(self) -> Path:
        return self.root / AGENT_OUT

    def conf_file(self, ctid: int) -> Path:
        return self.conf_dir / f"{ctid}.conf"

    def private(self, ctid: int) -> Path:
        return self.private_dir / str(ctid)

    def ve_root(self, ctid: int) -> Path:
        return self.root / "var/lib/vz/root" / str(ctid)

    def netns_name(self, ctid: int) -> str:
        return f"vz-{self.name}-{ctid}"

    def env(self) -> dict[str, str]:
        """The environment of CLI commands aimed at this node."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("VZFLEET_")}
        env["VZFLEET_ROOT"] = str(self.root)
        # Workaround (reported): `vzfleet status|down` serve the local cluster at $VZFLEET_CLUSTER
        # (default /var/lib/vzfleet/cluster) whenever one exists, ignoring --root and VZFLEET_ROOT.
        # Point it at a directory that never exists, so that they reach this node.
        env["VZFLEET_CLUSTER"] = str(self.root / "no-local-cluster")
        return env

    # ---- the agent --------------------------------------------------------------------------

    @property
    def agent_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def agent_log_tail(self, lines: int = 30) -> str:
        try:
            text = self.agent_out.read_text(errors="replace")
        except OSError:
            return "(no agent output)"
        return "\n".join(text.splitlines()[-lines:])

    def start(self, timeout: float = 20.0) -> None:
        """Spawn the agent and return once `vzfleet status` gets an answer from it."""
        if self.agent_running:
            raise HarnessError(f"{self}: the agent is already running (pid {self.proc and self.proc.pid})")
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / OWNER_FILE).write_text(f"{os.getpid()} {_start_ticks(os.getpid())}\n")
        env = self.env()
        env.pop("VZFLEET_ROOT")
        with open(self.agent_out, "ab") as out:
            # own session: a Ctrl-C of the test run must not stop the agent before the teardown does
            self.proc = subprocess.Popen(
                [str(venv_bin() / "vzfleet-agent"), "--root", str(self.root), "--node", self.name],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                start_new_session=True, close_fds=True)
        deadline = time.monotonic() + timeout
        last: subprocess.CompletedProcess[str] | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise HarnessError(f"{self}: the agent exited with {self.proc.returncode} at start:\n"
                                   f"{self.agent_log_tail()}")
            last = self.cli("vzfleet", "--root", str(self.root), "status", check=False, timeout=10)
            if last.returncode == 0:
                if not last.stdout.startswith(f"node {self.name}:"):
                    self.kill()
                    raise HarnessError(f"{self}: `vzfleet status` answered for another node: " + describe(last))
                return
            time.sleep(0.1)
        self.kill()
        raise HarnessError(f"{self}: the agent did not answer within {timeout:g} s "
                           f"(last: {last and describe(last)}); agent output:\n{self.agent_log_tail()}")

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM to the agent we spawned, SIGKILL after timeout; its exit code (None: none ran)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL to the agent we spawned (a crash): containers stay, the socket file stays."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def purge(self, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """`vzfleet-agent --purge`: every container of the node killed, its kernel state removed."""
        return self.cli("vzfleet-agent", "--root", str(self.root), "--node", self.name, "--purge",
                        timeout=timeout)

    # ---- the CLI ----------------------------------------------------------------------------

    def cli(self, *argv: str, check: bool = True, input: str | None = None,
            timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run .venv/bin/<argv[0]> with VZFLEET_ROOT=R; check=True: HarnessError unless it exits 0."""
        cmd = [str(venv_bin() / argv[0]), *argv[1:]]
        try:
            res = subprocess.run(cmd, env=self.env(), input=input, capture_output=True, text=True,
                                 timeout=timeout, stdin=subprocess.DEVNULL if input is None else None)
        except subprocess.TimeoutExpired as e:
            out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else e.stdout
            err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else e.stderr
            raise HarnessError(f"`{shlex.join(argv)}` (VZFLEET_ROOT={self.root}) did not finish within "
                               f"{timeout:g} s\n--- stdout\n{out or ''}--- stderr\n{err or ''}---") from None
        if check and res.returncode != 0:
            raise HarnessError(describe(res, self.root))
        return res

    def destroy_ct(self, ctid: int) -> None:
        """Remove container ctid whatever its state; idempotent. (`destroy` refuses only a running
        container, and unmounts a mounted one itself.)"""
        ref = str(ctid)
        self.cli("vzctl", "--quiet", "stop", "--fast", ref, check=False)
        res = self.cli("vzctl", "--quiet", "destroy", ref, check=False)
        if res.returncode not in (0, 4):
            raise HarnessError(describe(res, self.root))

    # ---- cleanup ----------------------------------------------------------------------------

    def leftovers(self) -> list[str]:
        """What of this node is still on the machine besides files under R (empty when clean)."""
        found = [f"netns {n}" for n in netns_names(f"vz-{self.name}-")]
        found += [f"runc container {s.get('id')} ({s.get('status')}) in {self.runc_root}"
                  for s in _runc_states(self.runc_root)]
        found += [f"mount {m}" for m in mounts_under(self.root)]
        for base in _cgroup_bases():
            cg = base / "vzfleet" / self.name
            if cg.is_dir():
                found.append(f"cgroup {cg}")
        return found

    def teardown(self) -> list[str]:
        """Stop the agent, purge the node, delete R; returns what the purge left (then removed by
        force). Always removes as much as it can, even when an earlier step fails."""
        problems: list[str] = []
        try:
            self.stop()
        except Exception as e:  # keep tearing down
            problems.append(f"stopping the agent: {e}")
            self.kill()
        if self.root.is_dir():
            try:
                self.purge()
            except HarnessError as e:
                problems.append(f"purge failed: {e}")
            left = self.leftovers()
            problems += [f"left after purge: {x}" for x in left]
            if left:
                problems += [f"could not remove: {x}" for x in _force_clean(self.name, self.root)]
            if not mounts_under(self.root):
                shutil.rmtree(self.root, ignore_errors=True)
            else:
                problems.append(f"{self.root} kept: mounts remain under it")
        return problems


def _force_clean(node: str, root: Path) -> list[str]:
    """Remove a node's kernel state without its agent's help; returns what could not be removed."""
    problems: list[str] = []
    for name in netns_names(f"vz-{node}-"):
        if err := _remove_netns(name):
            problems.append(err)
    for mp in mounts_under(root):
        res = subprocess.run(["umount", "-l", mp], capture_output=True, text=True, timeout=30)
        if res.returncode != 0:
            problems.append(f"mount {mp}: {res.stderr.strip()}")
    for base in _cgroup_bases():
        top = base / "vzfleet" / node
        if top.is_dir():
            problems += _remove_cgroup_tree(top)
    return problems


def _owner_alive(root: Path) -> bool:
    """True when the process that created this root is still alive (another test session)."""
    try:
        pid_text, ticks = (root / OWNER_FILE).read_text().split()
        pid = int(pid_text)
    except (OSError, ValueError):
        return False
    return pid_alive(pid) and _start_ticks(pid) == ticks


def _kill_stale_agent(root: Path) -> None:
    """SIGKILL an orphaned agent of this root (the pid in its pid file, if that is really it)."""
    try:
        pid = int((root / "run/vzfleet/agent.pid").read_text().split()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError, IndexError):
        return
    if any(a.endswith(b"vzfleet-agent") for a in cmdline) and str(root).encode() in cmdline:
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)


def cleanup_stale(base: Path = BASE) -> list[str]:
    """Remove what earlier (crashed) runs left: their agents, containers, namespaces, mounts,
    cgroups and roots. Nodes of a test session that is still running are left alone.
    Returns a line per problem that remains."""
    problems: list[str] = []
    live: set[str] = set()
    roots = sorted(p for p in base.iterdir() if p.name.startswith(NODE_PREFIX)) if base.is_dir() else []
    for root in roots:
        if _owner_alive(root):
            live.add(root.name)
            continue
        _kill_stale_agent(root)
        res = subprocess.run([str(venv_bin() / "vzfleet-agent"), "--root", str(root), "--node", root.name,
                              "--purge"], capture_output=True, text=True, timeout=120,
                             stdin=subprocess.DEVNULL)
        if res.returncode != 0:
            problems.append(f"purge of stale {root}: {res.stderr.strip()[-300:]}")
        problems += _force_clean(root.name, root)
        if mounts_under(root):
            problems.append(f"stale {root} kept: mounts remain under it")
        else:
            shutil.rmtree(root, ignore_errors=True)
    # namespaces and cgroups of nodes whose root is already gone
    for name in netns_names(f"vz-{NODE_PREFIX}"):
        if name[3:].rsplit("-", 1)[0] not in live and (err := _remove_netns(name)):
            problems.append(err)
    for base_dir in _cgroup_bases():
        for top in sorted((base_dir / "vzfleet").glob(f"{NODE_PREFIX}*")):
            if top.is_dir() and top.name not in live:
                problems += _remove_cgroup_tree(top)
    return problems


# ---- containers of a test ----------------------------------------------------------------------

# CTIDs are never reused within a process, so a container a test failed to remove cannot confuse
# the next test.
_ctids = itertools.count(1001)


class Containers:
    """CTIDs for one test and the busybox containers it creates on a node; destroy_all() removes
    them all, whatever state the test left them in."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.ctids: list[int] = []

    def new_ctid(self) -> int:
        """A CTID that no container of this process has used (and that destroy_all() removes)."""
        ctid = next(_ctids)
        self.ctids.append(ctid)
        return ctid

    def create(self, *params: str, start: bool = False) -> int:
        """A new container from the busybox template (`vzctl create CT --ostemplate busybox PARAMS`)."""
        ctid = self.new_ctid()
        self.node.cli("vzctl", "--quiet", "create", str(ctid), "--ostemplate", "busybox", *params)
        if start:
            self.node.cli("vzctl", "--quiet", "start", str(ctid))
        return ctid

    def destroy_all(self) -> list[str]:
        """Destroy every container of new_ctid(); returns what went wrong (empty when clean)."""
        problems = []
        for ctid in reversed(self.ctids):
            try:
                self.node.destroy_ct(ctid)
            except AssertionError as e:
                problems.append(str(e))
                continue
            for path in (self.node.conf_file(ctid), self.node.private(ctid)):
                if path.exists():
                    problems.append(f"{path} still exists after destroy")
        return problems


# ---- a user's terminal -------------------------------------------------------------------------


class PtyClient:
    """A command on a pseudo-terminal of its own (as a user's terminal), spawned with pty.fork()."""

    def __init__(self, argv: list[str], env: dict[str, str], rows: int, cols: int) -> None:
        pid, fd = pty.fork()
        if pid == 0:  # child: the pty slave is stdin/stdout/stderr and the controlling terminal
            try:
                fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
                os.execve(argv[0], argv, env)
            finally:
                os._exit(127)
        self.pid, self.fd = pid, fd
        self.output = bytearray()
        self.exit_code: int | None = None

    def send(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def _read(self, deadline: float) -> bool:
        """Read what arrives before the deadline; False at EOF (every process left the pty)."""
        ready, _, _ = select.select([self.fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            return True
        try:
            data = os.read(self.fd, 4096)
        except OSError as e:
            if e.errno != errno.EIO:
                raise
            data = b""
        self.output += data
        return bool(data)

    def expect(self, pattern: str, timeout: float = 10.0) -> re.Match[bytes]:
        regex = re.compile(pattern.encode(), re.MULTILINE)
        deadline = time.monotonic() + timeout
        while not (m := regex.search(self.output)):
            if time.monotonic() >= deadline:
                raise AssertionError(f"no {pattern!r} on the terminal within {timeout:g} s; "
                                     f"got {bytes(self.output)!r}")
            if not self._read(deadline):
                raise AssertionError(f"terminal closed before {pattern!r}; got {bytes(self.output)!r}")
        return m

    def wait(self, timeout: float = 10.0) -> int:
        """Drain the terminal until EOF, then reap the process; its exit code."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._read(deadline):
            pass
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.exit_code = os.waitstatus_to_exitcode(status)
                return self.exit_code
            time.sleep(0.02)
        raise AssertionError(f"the command on the terminal did not exit within {timeout:g} s; "
                             f"output {bytes(self.output)!r}")

    def close(self) -> None:
        if self.exit_code is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
            except ChildProcessError:
                pass
        os.close(self.fd)


# ---- invariants -------------------------------------------------------------------------------


def _container_inits_in_cgroups(nodes: set[str], ctid: int) -> set[int]:
    """Host PIDs of container inits (PID 1 of a child PID namespace) in cgroup /vzfleet/<node>/<ctid>."""
    wanted = {f"/vzfleet/{n}/{ctid}" for n in nodes}
    found = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/status") as f:
                nspid = next((line.split()[1:] for line in f if line.startswith("NSpid:")), [])
            if len(nspid) < 2 or nspid[-1] != "1":
                continue
            with open(f"/proc/{entry.name}/cgroup") as f:
                paths = {line.rstrip("\n").split(":", 2)[2] for line in f}
        except (OSError, IndexError):
            continue
        if paths & wanted and pid_alive(int(entry.name)):
            found.add(int(entry.name))
    return found


def running_copies(ctid: int, nodes: Iterable[Node] | None = None) -> int:
    """How many copies of container ctid run on the machine, over the given nodes (default: every
    node of this process). A copy is a live container init known to a node's runc or living in a
    node's cgroup for ctid; the invariant is that this never exceeds 1."""
    chosen = list(Node.created if nodes is None else nodes)
    inits: set[int] = set()
    for node in chosen:
        for st in _runc_states(node.runc_root):
            pid = st.get("pid")
            if (st.get("id") == str(ctid) and st.get("status") in ("running", "paused")
                    and isinstance(pid, int) and pid_alive(pid)):
                inits.add(pid)
    inits |= _container_inits_in_cgroups({n.name for n in chosen}, ctid)
    return len(inits)
