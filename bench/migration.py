"""bench/migration: client-observed downtime of a live migration, vzfleet against a plain-runc baseline.

Not a test: it prints figures and ratios and asserts nothing (exit 0 when every measurement ran,
1 when some move failed, 2 on bad usage). See bench/README.md for what is measured and how.

It builds its own two-node local cluster (prefix ``vzb<hex>-``, base ``/tmp/vzfleet-bench-<hex>``,
LAN 10.216.0.0/24 by default) with the product's own LocalCluster, and always takes it down again,
also on Ctrl-C or SIGTERM. For each scenario one container moves back and forth between the two
nodes, alternately with ``vzmigrate --online`` ("ours") and with a hand-written runc checkpoint /
rsync / runc restore sequence ("baseline"), while a client in the LAN namespace probes it at 100 Hz.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import re
import secrets
import selectors
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from agent.layout import NodeLayout  # noqa: E402
from cli.client import CliError  # noqa: E402
from cli.localcluster import LocalCluster, in_netns, setns_net  # noqa: E402

BENCH_ROOT = Path("/tmp")
BASE_PREFIX = "vzfleet-bench-"
PREFIX_HEAD = "vzb"
DEFAULT_SUBNET = "10.216.0.0/24"
OWNER_FILE = "owner"
NETNS_DIR = Path("/run/netns")
UPLINK = "eth0"  # a local-cluster node's interface on the LAN
VENET_CT_IF = "venet0"
PORT = 80

PROBE_INTERVAL_S = 0.010
PROBE_TIMEOUT_S = 0.5
WINDOW_BEFORE_S = 0.5  # the gap search starts this long before a move begins
SETTLE_AFTER_S = 0.5  # ... and ends this long after the move ended and an answer came back
RECOVER_WAIT_S = 30.0  # a container silent this long after a move counts as down
MOVE_TIMEOUT_S = 600.0
BASELINE_CRIU_CONF = "skip-in-flight\n"  # the one CRIU option plain runc needs here (see move_baseline)

TARGETS: dict[str, list[tuple[str, Callable[[dict[str, Any]], bool]]]] = {
    "idle": [("median downtime <= 0.35 s", lambda s: s["ours"]["downtime"]["median"] <= 0.35)],
    "mem": [("median downtime <= 0.5 s", lambda s: s["ours"]["downtime"]["median"] <= 0.5),
            ("downtime <= 1/3 of the baseline's", lambda s: s["ratios"]["downtime"] <= 1 / 3)],
}

def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


class BenchError(Exception):
    pass


# ---------------------------------------------------------------------------------------------------
# Small system helpers


def run(argv: list[str], *, timeout: float = 120, check: bool = True, env: dict[str, str] | None = None,
        input_text: str | None = None, quiet_stdout: bool = False) -> subprocess.CompletedProcess[str]:
    try:
        res = subprocess.run(argv, input=input_text, stdout=subprocess.DEVNULL if quiet_stdout else subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, timeout=timeout, env=env,
                             stdin=None if input_text is not None else subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise BenchError(f"`{' '.join(argv[:6])}` did not finish within {timeout:g} s") from None
    except FileNotFoundError:
        raise BenchError(f"{argv[0]}: command not found") from None
    if check and res.returncode != 0:
        err = (res.stderr or res.stdout or "").strip()[-600:]
        raise BenchError(f"`{' '.join(argv[:8])}` failed ({res.returncode}): {err}")
    return res


def exchange(host: str, port: int, payload: bytes, timeout: float = 5.0) -> bytes:
    """Send payload on a new TCP connection; everything received until EOF or the first line (for line
    requests)."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(payload)
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                return data
            data += chunk
            if not payload.startswith(b"GET ") and data.endswith(b"\n"):
                return data


def garp(ifname: str, ip: str) -> None:
    """Gratuitous ARP (request + reply) for ip from ifname's MAC, in the calling thread's netns.

    The MAC comes from the bound packet socket: /sys shows the namespace sysfs was mounted in.
    """
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806)) as s:
        s.bind((ifname, 0))
        mac = s.getsockname()[4][:6]
        ipb = socket.inet_aton(ip)
        for op, dst in ((1, b"\x00" * 6), (2, b"\xff" * 6)):
            arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, op, mac, ipb, dst, ipb)
            s.send(b"\xff" * 6 + mac + struct.pack("!H", 0x0806) + arp)


def proc_start_ticks(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[-1].split()[19].decode()
    except (OSError, IndexError):
        return None


def mount_points() -> list[str]:
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        out.append(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4]))
    return out


def stats(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"median": None, "min": None, "max": None}
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


# ---------------------------------------------------------------------------------------------------
# The client: probes at >= 100 Hz from the LAN namespace


@dataclass
class Attempt:
    sock: socket.socket
    t0: float
    connected: bool = False
    buf: bytes = b""


class Prober:
    """A thread in the LAN namespace that opens a new TCP connection every `interval` and sends
    ``GET / HTTP/1.0``; an answer counts when a complete ``HTTP/1.x 200`` response arrived before
    `timeout`. Attempts overlap (a slow one never delays the next), so the resolution is `interval`.

    With `persistent`, it also keeps one TCP connection open and sends ``PING`` on it as soon as the
    previous answer came (memsrv's line protocol), to see established connections survive the moves.
    """

    def __init__(self, netns: str, host: str, port: int, *, interval: float = PROBE_INTERVAL_S,
                 timeout: float = PROBE_TIMEOUT_S, persistent: bool = False) -> None:
        self.netns, self.host, self.port = netns, host, port
        self.interval, self.timeout, self.persistent = interval, timeout, persistent
        self.lock = threading.Lock()
        self.ok: list[float] = []  # completion times of answered requests
        self.failed: list[tuple[float, str]] = []
        self.late: list[tuple[float, float]] = []  # (time, how late a tick was) when > 2 intervals
        self.bodies: list[tuple[float, bytes]] = []  # last bodies (bounded)
        self.p_answers: list[tuple[float, bytes]] = []  # persistent: (time, line)
        self.p_breaks: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="prober", daemon=True)
        self._pc: socket.socket | None = None
        self._pc_state = "down"  # down | connecting | idle | waiting
        self._pc_buf = b""
        self._pc_since = 0.0

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise BenchError(f"prober: {self._error}")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def alive(self) -> bool:
        return self._thread.is_alive()

    def _main(self) -> None:
        try:
            setns_net(self.netns)
        except OSError as e:
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        try:
            self._loop()
        except BaseException as e:  # reported by alive()/the windows
            self._error = e
            log(f"prober died: {e!r}")

    # --- one-shot requests ----------------------------------------------------------------------

    def _launch(self, sel: selectors.BaseSelector, attempts: dict[int, Attempt], now: float) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        err = s.connect_ex((self.host, self.port))
        a = Attempt(s, now)
        if err not in (0, 115):  # EINPROGRESS
            self._done(sel, attempts, a, False, os.strerror(err), register=False)
            return
        attempts[s.fileno()] = a
        sel.register(s, selectors.EVENT_WRITE, a)

    def _done(self, sel: selectors.BaseSelector, attempts: dict[int, Attempt], a: Attempt, ok: bool,
              reason: str, register: bool = True) -> None:
        now = time.monotonic()
        if register:
            with contextlib.suppress(KeyError, ValueError):
                sel.unregister(a.sock)
            attempts.pop(a.sock.fileno(), None)
        a.sock.close()
        with self.lock:
            if ok:
                self.ok.append(now)
                if len(self.ok) % 25 == 0:
                    self.bodies.append((now, a.buf))
                    del self.bodies[:-50]
            else:
                self.failed.append((now, reason))

    def _on_attempt(self, sel: selectors.BaseSelector, attempts: dict[int, Attempt], a: Attempt, mask: int) -> None:
        if not a.connected:
            err = a.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self._done(sel, attempts, a, False, os.strerror(err))
                return
            a.connected = True
            try:
                a.sock.send(b"GET / HTTP/1.0\r\n\r\n")
            except OSError as e:
                self._done(sel, attempts, a, False, e.strerror or str(e))
                return
            sel.modify(a.sock, selectors.EVENT_READ, a)
            return
        try:
            chunk = a.sock.recv(4096)
        except BlockingIOError:
            return
        except OSError as e:
            self._done(sel, attempts, a, False, e.strerror or str(e))
            return
        if chunk:
            a.buf += chunk
            return
        good = a.buf.startswith(b"HTTP/1.") and a.buf[9:12] == b"200"
        self._done(sel, attempts, a, good, "" if good else f"bad answer {a.buf[:40]!r}")

    # --- the persistent connection --------------------------------------------------------------

    def _pc_break(self, sel: selectors.BaseSelector, reason: str, now: float) -> None:
        if self._pc is not None:
            with contextlib.suppress(KeyError, ValueError):
                sel.unregister(self._pc)
            self._pc.close()
        if self._pc_state in ("idle", "waiting"):
            with self.lock:
                self.p_breaks.append((now, reason))
        self._pc, self._pc_state, self._pc_buf, self._pc_since = None, "down", b"", now

    def _pc_step(self, sel: selectors.BaseSelector, now: float) -> None:
        if self._pc_state == "down" and now - self._pc_since >= 0.05:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.connect_ex((self.host, self.port))
            self._pc, self._pc_state, self._pc_since = s, "connecting", now
            sel.register(s, selectors.EVENT_WRITE, "pc")
        elif self._pc_state == "connecting" and now - self._pc_since > 1.0:
            self._pc_break(sel, "connect timeout", now)
        elif self._pc_state == "idle" and now - self._pc_since >= self.interval:
            assert self._pc is not None
            try:
                self._pc.send(b"PING\n")
            except OSError as e:
                self._pc_break(sel, e.strerror or str(e), now)
                return
            self._pc_state, self._pc_since = "waiting", now
        elif self._pc_state == "waiting" and now - self._pc_since > RECOVER_WAIT_S:
            self._pc_break(sel, "no answer for 30 s", now)

    def _on_pc(self, sel: selectors.BaseSelector, mask: int) -> None:
        now = time.monotonic()
        assert self._pc is not None
        if self._pc_state == "connecting":
            err = self._pc.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self._pc_break(sel, os.strerror(err), now)
                return
            sel.modify(self._pc, selectors.EVENT_READ, "pc")
            self._pc_state, self._pc_since = "idle", 0.0
            return
        try:
            chunk = self._pc.recv(4096)
        except BlockingIOError:
            return
        except OSError as e:
            self._pc_break(sel, e.strerror or str(e), now)
            return
        if not chunk:
            self._pc_break(sel, "closed by the server", now)
            return
        self._pc_buf += chunk
        while b"\n" in self._pc_buf:
            line, self._pc_buf = self._pc_buf.split(b"\n", 1)
            with self.lock:
                self.p_answers.append((now, line))
            self._pc_state, self._pc_since = "idle", now

    # --- the loop -------------------------------------------------------------------------------

    def _loop(self) -> None:
        sel = selectors.DefaultSelector()
        attempts: dict[int, Attempt] = {}
        next_tick = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_tick:
                if now - next_tick > 2 * self.interval:
                    with self.lock:
                        self.late.append((now, now - next_tick))
                self._launch(sel, attempts, now)
                next_tick += self.interval
                if next_tick <= now:  # ticks missed while this thread did not run are skipped
                    next_tick = now + self.interval
            if self.persistent:
                self._pc_step(sel, now)
            for a in [a for a in attempts.values() if now - a.t0 > self.timeout]:
                self._done(sel, attempts, a, False, "timeout")
            wait = max(0.0, next_tick - time.monotonic())
            if self.persistent and self._pc_state == "idle":
                wait = min(wait, max(0.0, self._pc_since + self.interval - time.monotonic()))
            for key, mask in sel.select(wait):
                if key.data == "pc":
                    self._on_pc(sel, mask)
                else:
                    self._on_attempt(sel, attempts, key.data, mask)
        for a in list(attempts.values()):
            self._done(sel, attempts, a, False, "stopped")
        if self._pc is not None:
            self._pc.close()

    # --- reading the record -----------------------------------------------------------------------

    def answered_after(self, t: float) -> bool:
        with self.lock:
            return bool(self.ok) and self.ok[-1] > t

    def connection_settled_after(self, t0: float, t1: float) -> bool:
        """The persistent connection answered after t1, or broke after t0 (nothing more to wait for)."""
        with self.lock:
            return (bool(self.p_answers) and self.p_answers[-1][0] > t1) or any(t > t0 for t, _ in self.p_breaks)

    def window(self, t0: float, t1: float, end: float) -> dict[str, Any]:
        """Client-observed figures of a move that ran from t0 to t1 (monotonic), looked at until end."""
        lo = t0 - WINDOW_BEFORE_S
        with self.lock:
            ok = [t for t in self.ok if lo <= t <= end]
            failed = [r for t, r in self.failed if lo <= t <= end]
            late = [d for t, d in self.late if lo <= t <= end]
            answers = [(t, line) for t, line in self.p_answers if lo <= t <= end]
            breaks = [(t, r) for t, r in self.p_breaks if lo <= t <= end]
        # the longest stretch without an answer; the window's edges count as answers only when the
        # container answered right before the move (otherwise the first answer bounds it)
        points = [lo, *ok] if ok and ok[0] - lo < 0.1 else ok
        downtime = max((b - a for a, b in itertools.pairwise(points)), default=None)
        out: dict[str, Any] = {
            "downtime": downtime, "answers": len(ok), "failed_attempts": len(failed),
            "failure_reasons": sorted({r for r in failed}),
            "prober_max_late": max(late, default=0.0),
        }
        if self.persistent:
            # the connection's longest silence, window edges included: a stall carried over from an
            # earlier move or still going on at the end counts too
            times = [lo, *[t for t, _ in answers], end]
            counts = [_field(line, b"count") for _, line in answers]
            out["persistent"] = {
                "survived": not breaks and any(t > t1 for t, _ in answers),
                "breaks": [r for _, r in breaks],
                "max_stall": max((b - a for a, b in itertools.pairwise(times)), default=None),
                "count_first": next((c for c in counts if c is not None), None),
                "count_last": next((c for c in reversed(counts) if c is not None), None),
                "bad_max": max((b for _, line in answers if (b := _field(line, b"bad")) is not None), default=None),
            }
        return out


def _field(line: bytes, name: bytes) -> int | None:
    m = re.search(rb"\b" + name + rb"=(\d+)", line)
    return int(m.group(1)) if m else None


# ---------------------------------------------------------------------------------------------------
# The cluster and its nodes


@dataclass(frozen=True)
class Node:
    """A node of the local cluster; the paths of its state are the product's (agent/layout.py)."""

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

    def conf(self, ct: int) -> Path:
        return self.layout.conf_file(ct)

    def private(self, ct: int) -> Path:
        return self.layout.private(ct)

    def ve_root(self, ct: int) -> Path:
        return self.layout.ve_root(ct)

    def bundle(self, ct: int) -> Path:
        return self.layout.bundle(ct)

    def ct_netns(self, ct: int) -> str:
        return self.layout.netns_name(ct)

    def cgroup(self, ct: int) -> str:
        return self.layout.cgroup_path(ct)

    def scratch(self, ct: int) -> Path:
        return self.root / f"bench-baseline/{ct}"

    def runc(self, *args: str) -> list[str]:
        # runc runs in the node's network namespace, as the node's agent runs it
        return ["nsenter", f"--net={NETNS_DIR / self.netns}", "--", "runc", "--root", str(self.runc_root), *args]

    def runs(self, ct: int) -> bool:
        res = run(self.runc("state", str(ct)), check=False, timeout=30)
        if res.returncode != 0:
            return False
        return bool(json.loads(res.stdout).get("status") == "running")


def venet_host_if(ct: int) -> str:
    return f"venet{ct}"


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.hexid = secrets.token_hex(3)
        self.prefix = f"{PREFIX_HEAD}{self.hexid}-"
        self.base = BENCH_ROOT / f"{BASE_PREFIX}{self.hexid}"
        self.cluster = LocalCluster(prefix=self.prefix, node_prefix=self.prefix, subnet=args.subnet,
                                    base=self.base, progress=lambda line: log(f"cluster: {line}"))
        self.bin = Path(sys.executable).parent
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("VZFLEET_")}
        self.env["VZFLEET_CLUSTER"] = str(self.base)
        self.env["PATH"] = f"{self.bin}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        self.nodes: list[Node] = []
        self.lan = ""
        self.net = args.subnet.rsplit(".", 1)[0]  # "10.216.0"

    # --- cluster ------------------------------------------------------------------------------------

    def up(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        (self.base / OWNER_FILE).write_text(f"{os.getpid()} {proc_start_ticks(os.getpid())}\n")
        log(f"local cluster {self.prefix} on {self.args.subnet}, base {self.base}")
        self.cluster.up(2)
        state = self.cluster.state()
        assert state is not None
        self.lan = str(state["lan"]["netns"])
        self.nodes = [Node(name=str(n["name"]), netns=str(n["netns"]), address=str(n["address"]),
                           root=Path(str(n["root"]))) for n in state["nodes"]]
        for line in self.cluster.ensure_template("busybox"):
            log(line)

    def down(self) -> None:
        log(f"taking the local cluster {self.prefix} down")
        remove_cluster(self.cluster)

    def tool(self, name: str, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run([str(self.bin / name), *args], env=self.env, timeout=timeout, check=check)

    # --- containers ---------------------------------------------------------------------------------

    def create(self, node: Node, ct: int, ip: str, params: list[str], inittab: list[str],
               files: dict[str, tuple[bytes, int]]) -> None:
        self.tool("vzctl", "--node", node.name, "create", str(ct), "--ostemplate", "busybox",
                  "--hostname", f"bench{ct}", "--ipadd", ip, *params)
        private = node.private(ct)
        for rel, (data, mode) in files.items():
            path = private / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            path.chmod(mode)
        tab = private / "etc/inittab"
        tab.write_text(tab.read_text().rstrip("\n") + "\n" + "\n".join(inittab) + "\n")
        self.tool("vzctl", "--node", node.name, "start", str(ct), "--wait")

    def wait_answer(self, ip: str, timeout: float = 60) -> bytes:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                data = in_netns(self.lan, lambda: exchange(ip, PORT, b"GET / HTTP/1.0\r\n\r\n", 2.0), 5)
                if data.startswith(b"HTTP/1.") and data[9:12] == b"200":
                    return data
                last = BenchError(f"answer {data[:60]!r}")
            except (OSError, BenchError) as e:
                last = e
            time.sleep(0.2)
        raise BenchError(f"{ip}:{PORT} did not answer within {timeout:g} s ({last})")

    def where(self, ct: int) -> Node | None:
        for n in self.nodes:
            if n.conf(ct).exists() and n.runs(ct):
                return n
        return None

    # --- ours ---------------------------------------------------------------------------------------

    def move_ours(self, ct: int, src: Node, dst: Node) -> dict[str, Any]:
        res = self.tool("vzmigrate", "--online", "--json", dst.name, str(ct), timeout=MOVE_TIMEOUT_S, check=False)
        try:
            out = json.loads(res.stdout)
        except ValueError:
            out = {"ok": False, "error": (res.stderr or res.stdout).strip()[-400:]}
        if res.returncode != 0 or not out.get("ok"):
            raise BenchError(f"vzmigrate failed ({res.returncode}): {out.get('error') or res.stderr.strip()[-400:]}")
        return {"mode": out.get("mode", ""), "mode_reason": out.get("mode_reason", ""),
                "frozen": out.get("frozen_seconds"), "reported_total": out.get("total_seconds"),
                "stages": out.get("stages", {})}

    # --- baseline -----------------------------------------------------------------------------------

    def move_baseline(self, ct: int, ip: str, src: Node, dst: Node) -> dict[str, Any]:
        """What a careful admin scripts with plain runc, rsync and ip between the two nodes.

        Before the freeze: pre-sync of the private area while the container runs, the destination's
        root mount, network namespace (venet pair, address, default route; not routed from the LAN
        yet) and bundle (the container's own config.json, paths rewritten for the destination).
        Frozen window: the source's node side of the venet pair down and its LAN route/proxy-ARP
        entry removed (CRIU's own TCP lock would land in the wrong namespace), `runc checkpoint`
        (the container stops), rsync of the private area and of the image directory (both at once),
        `runc restore --detach`, then the host route, the proxy-ARP entry and a gratuitous ARP on the
        destination. After: the source's namespace, mount, bundle and private area removed, the
        config handed over so that the destination's agent owns the container (the next move may be
        ours).
        """
        times: dict[str, float] = {}
        t = time.monotonic()
        vif = venet_host_if(ct)
        ctns = dst.ct_netns(ct)
        s_scr, d_scr = src.scratch(ct), dst.scratch(ct)
        for d in (s_scr, d_scr):
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir(parents=True)
        rsync = ["rsync", "-aH", "--numeric-ids", "--delete", "--modify-window=-1"]

        # --- prepare the destination while the container runs (undone if anything fails before restore)
        def undo_destination() -> None:
            run(["umount", str(dst.ve_root(ct))], check=False)
            run(["ip", "-n", dst.netns, "link", "del", vif], check=False)
            run(["ip", "netns", "delete", ctns], check=False)
            shutil.rmtree(dst.bundle(ct), ignore_errors=True)
            shutil.rmtree(dst.private(ct), ignore_errors=True)
            shutil.rmtree(d_scr, ignore_errors=True)

        try:
            dst.private(ct).mkdir(parents=True, exist_ok=True)
            run([*rsync, f"{src.private(ct)}/", f"{dst.private(ct)}/"], timeout=600)
            dst.ve_root(ct).mkdir(parents=True, exist_ok=True)
            run(["mount", "--bind", str(dst.private(ct)), str(dst.ve_root(ct))])
            run(["ip", "netns", "add", ctns])
            run(["ip", "-n", ctns, "link", "set", "lo", "up"])
            run(["ip", "-n", dst.netns, "link", "add", vif, "type", "veth", "peer", "name", VENET_CT_IF,
                 "netns", ctns])
            run(["ip", "netns", "exec", dst.netns, "sysctl", "-q", "-w", f"net.ipv4.conf.{vif}.proxy_arp=1",
                 f"net.ipv4.neigh.{vif}.proxy_delay=0", f"net.ipv4.neigh.{UPLINK}.proxy_delay=0"])
            run(["ip", "-n", dst.netns, "link", "set", vif, "up"])
            run(["ip", "-n", ctns, "-batch", "-"], input_text=(
                f"link set {VENET_CT_IF} up\naddr add {ip}/32 dev {VENET_CT_IF}\n"
                f"route replace default dev {VENET_CT_IF} scope link\n"))
            spec = json.loads((src.bundle(ct) / "config.json").read_text())
            spec["root"]["path"] = str(dst.ve_root(ct))
            for ns in spec["linux"]["namespaces"]:
                if ns.get("type") == "network":
                    ns["path"] = str(NETNS_DIR / ctns)
            spec["linux"]["cgroupsPath"] = dst.cgroup(ct)
            dst.bundle(ct).mkdir(parents=True, exist_ok=True)
            # runc reads CRIU's options file named in the container's annotation at checkpoint and
            # restore time: the baseline's holds only what plain runc needs here (the probe's
            # half-open connections fail a dump without skip-in-flight); the product's own options
            # are put back on the destination afterwards, for the next move (which may be ours)
            ann = spec.setdefault("annotations", {})
            src_conf = Path(ann.get("org.criu.config", src.bundle(ct) / "criu.conf"))
            ours_conf = src_conf.read_text() if src_conf.exists() else None
            ann["org.criu.config"] = str(dst.bundle(ct) / "criu.conf")
            (dst.bundle(ct) / "criu.conf").write_text(BASELINE_CRIU_CONF)
            (dst.bundle(ct) / "config.json").write_text(json.dumps(spec, indent=2))
        except BaseException:
            undo_destination()
            raise
        times["prepare"] = time.monotonic() - t

        if src_conf.exists():
            src_conf.write_text(BASELINE_CRIU_CONF)  # the source copy goes away after the move

        # --- frozen window
        t_freeze = t = time.monotonic()
        lock = f"link set {vif} down\nroute del {ip}/32 dev {vif}\nneigh del proxy {ip} dev {UPLINK}\n"
        run(["ip", "-force", "-n", src.netns, "-batch", "-"], input_text=lock, check=False)
        res = run(src.runc("checkpoint", "--tcp-established", "--ext-unix-sk", "--file-locks",
                           "--image-path", str(s_scr / "img"), "--work-path", str(s_scr / "dump"), str(ct)),
                  timeout=600, check=False)
        if res.returncode != 0:
            if ours_conf is not None:
                src_conf.write_text(ours_conf)
            run(["ip", "-force", "-n", src.netns, "-batch", "-"], check=False, input_text=(
                f"link set {vif} up\nroute replace {ip}/32 dev {vif} scope link\n"
                f"neigh add proxy {ip} dev {UPLINK}\n"))
            undo_destination()
            raise BenchError(f"runc checkpoint failed: {_criu_error(s_scr / 'dump/dump.log', res)}")
        times["checkpoint"] = time.monotonic() - t
        image_bytes = sum(f.stat().st_size for f in (s_scr / "img").iterdir() if f.is_file())
        t = time.monotonic()
        with ThreadPoolExecutor(2) as pool:
            jobs = [pool.submit(run, [*rsync, f"{src.private(ct)}/", f"{dst.private(ct)}/"], timeout=600),
                    pool.submit(run, ["rsync", "-a", f"{s_scr / 'img'}/", f"{d_scr / 'img'}/"], timeout=600)]
            for j in jobs:
                j.result()
        times["copy"] = time.monotonic() - t
        t = time.monotonic()
        res = run(dst.runc("restore", "--detach", "--bundle", str(dst.bundle(ct)), "--image-path",
                           str(d_scr / "img"), "--work-path", str(d_scr / "restore"), "--pid-file",
                           str(dst.bundle(ct) / "init.pid"), "--tcp-established", "--ext-unix-sk",
                           "--file-locks", str(ct)), timeout=600, check=False, quiet_stdout=True)
        if res.returncode != 0:
            raise BenchError(f"runc restore failed (the container is lost): "
                             f"{_criu_error(d_scr / 'restore/restore.log', res)}")
        times["restore"] = time.monotonic() - t
        if ours_conf is not None:
            (dst.bundle(ct) / "criu.conf").write_text(ours_conf)
        t = time.monotonic()
        run(["ip", "-n", dst.netns, "-batch", "-"], input_text=(
            f"route replace {ip}/32 dev {vif} scope link\nneigh replace proxy {ip} dev {UPLINK}\n"))
        in_netns(dst.netns, lambda: garp(UPLINK, ip))
        times["network"] = time.monotonic() - t
        frozen = time.monotonic() - t_freeze

        # --- clean the source and hand the container over to the destination's agent
        t = time.monotonic()
        if src.runs(ct) or run(src.runc("state", str(ct)), check=False).returncode == 0:
            run(src.runc("delete", "--force", str(ct)), check=False)
        # the pair explicitly: a namespace is destroyed asynchronously, its veth could outlive the name
        run(["ip", "-n", src.netns, "link", "del", vif], check=False)
        run(["ip", "netns", "delete", src.ct_netns(ct)], check=False)
        run(["umount", str(src.ve_root(ct))], check=False)
        with contextlib.suppress(OSError):
            src.ve_root(ct).rmdir()
        shutil.rmtree(src.bundle(ct), ignore_errors=True)
        conf = src.conf(ct).read_text().replace(f"{src.root}/", f"{dst.root}/")
        dst.conf(ct).write_text(conf)
        src.conf(ct).unlink()
        shutil.rmtree(src.private(ct), ignore_errors=True)
        for d in (s_scr, d_scr):
            shutil.rmtree(d, ignore_errors=True)
        times["cleanup"] = time.monotonic() - t
        return {"mode": "runc checkpoint/rsync/restore", "frozen": frozen, "image_bytes": image_bytes,
                "stages": {k: round(v, 3) for k, v in times.items()}}

    # --- one scenario -------------------------------------------------------------------------------

    def measure(self, sc: Scenario, prober: Prober, method: str, src: Node, dst: Node) -> dict[str, Any]:
        t0 = time.monotonic()
        error = None
        detail: dict[str, Any] = {}
        try:
            detail = (self.move_ours(sc.ct, src, dst) if method == "ours"
                      else self.move_baseline(sc.ct, sc.ip, src, dst))
        except BenchError as e:
            error = str(e)
        t1 = time.monotonic()
        deadline = t1 + RECOVER_WAIT_S
        while time.monotonic() < deadline and not prober.answered_after(t1):
            time.sleep(0.02)
        # TCP's retransmission backoff can keep the persistent connection silent well after the
        # container answers new connections: wait for it, so that moves do not overlap in its record
        while prober.persistent and time.monotonic() < deadline and not prober.connection_settled_after(t0, t1):
            time.sleep(0.02)
        time.sleep(max(0.0, t1 + SETTLE_AFTER_S - time.monotonic()))
        answered = prober.answered_after(t1)
        end = time.monotonic()
        w = prober.window(t0, t1, end)
        if not answered:
            w["downtime"] = None
            error = error or f"no answer within {RECOVER_WAIT_S:g} s after the move"
        rec: dict[str, Any] = {"method": method, "from": src.name, "to": dst.name, "ok": error is None,
                               "error": error, "downtime": w["downtime"], "total": t1 - t0, **detail,
                               "probe": {k: v for k, v in w.items() if k != "downtime"}}
        if sc.kind == "mem" and answered:
            try:
                line = in_netns(self.lan, lambda: exchange(sc.ip, PORT, b"VERIFY\n", 10.0), 15)
                rec["verify"] = {"bad_pages": _field(line, b"bad"), "count": _field(line, b"count"),
                                 "pages": _field(line, b"verified")}
            except (OSError, BenchError) as e:
                rec["verify"] = {"error": str(e)}
        return rec

    def scenario(self, sc: Scenario) -> dict[str, Any]:
        n1, n2 = self.nodes[0], self.nodes[1]
        if sc.kind == "mem":
            binary = self.base / "memsrv"
            run(["gcc", "-static", "-O2", "-o", str(binary), str(Path(__file__).resolve().parent / "memsrv.c")])
            sc.files["memsrv"] = (binary.read_bytes(), 0o755)
        log(f"scenario {sc.kind}: creating CT {sc.ct} ({sc.ip}) on {n1.name}")
        self.create(n1, sc.ct, sc.ip, sc.params, sc.inittab, sc.files)
        first = self.wait_answer(sc.ip, timeout=120)
        log(f"CT {sc.ct} answers: {first.splitlines()[-1][:80].decode(errors='replace')}")
        self.tool("vzmigrate", "--check-only", "--online", n2.name, str(sc.ct))  # also warms the agents' CRIU checks
        prober = Prober(self.lan, sc.ip, PORT, persistent=sc.kind == "mem")
        prober.start()
        runs: list[dict[str, Any]] = []
        try:
            time.sleep(1.0)
            # ABBA order: each method moves in both directions and as often first as second
            order = [m for i in range(self.args.runs) for m in (("ours", "baseline") if i % 2 == 0
                                                                  else ("baseline", "ours"))]
            here = n1
            for i, method in enumerate(order):
                there = n2 if here is n1 else n1
                rec = self.measure(sc, prober, method, here, there)
                rec["index"] = i + 1
                runs.append(rec)
                log(_run_line(sc, rec))
                if rec["ok"]:
                    here = there
                else:
                    found = self.where(sc.ct)
                    if found is None:
                        log(f"CT {sc.ct} runs nowhere after a failed move: scenario {sc.kind} ends here")
                        break
                    here = found
                time.sleep(0.3)
                if not prober.alive():
                    raise BenchError("the prober thread died")
        finally:
            prober.stop()
            with contextlib.suppress(BenchError):
                if (node := self.where(sc.ct)) is not None:
                    self.tool("vzctl", "--node", node.name, "stop", str(sc.ct), "--fast", check=False)
        return summarize(sc, runs, prober)


@dataclass
class Scenario:
    kind: str  # idle | mem
    title: str
    ct: int
    ip: str
    params: list[str] = field(default_factory=list)
    inittab: list[str] = field(default_factory=list)
    files: dict[str, tuple[bytes, int]] = field(default_factory=dict)


def _criu_error(log_file: Path, res: subprocess.CompletedProcess[str]) -> str:
    last = ""
    with contextlib.suppress(OSError):
        for line in log_file.read_text(errors="replace").splitlines():
            if "Error" in line and "RLIMIT_NOFILE" not in line:
                last = line.strip()
    return last or (res.stderr or res.stdout or f"exit {res.returncode}").strip()[-400:]


def _fmt(v: float | None, width: int = 6) -> str:
    return f"{v:{width}.3f}" if v is not None else f"{'-':>{width}}"


def _run_line(sc: Scenario, rec: dict[str, Any]) -> str:
    text = (f"{sc.kind} #{rec['index']:<2} {rec['method']:<8} {rec['from']}->{rec['to']}: "
            f"downtime {_fmt(rec['downtime'])} s, total {_fmt(rec['total'])} s, frozen {_fmt(rec.get('frozen'))} s")
    p = rec["probe"]
    text += f", {p['failed_attempts']} failed probes"
    if "persistent" in p:
        pc = p["persistent"]
        state = "kept" if pc["survived"] else ("BROKEN: " + ",".join(pc["breaks"]) if pc["breaks"]
                                                 else "silent after the move")
        text += (f", connection {state}"
                 f" (stall {_fmt(pc['max_stall'], 5)} s, count {pc['count_first']}->{pc['count_last']})")
    if rec.get("image_bytes"):
        text += f", images {rec['image_bytes'] / 1e6:.1f} MB"
    if "verify" in rec:
        text += f", bad pages {rec['verify'].get('bad_pages')}"
    if rec["error"]:
        text += f"  ERROR: {rec['error']}"
    return text


def _stage_values(runs: list[dict[str, Any]]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for r in runs:
        for k, v in (r.get("stages") or {}).items():
            out.setdefault(k, []).append(float(v))
    return out


def summarize(sc: Scenario, runs: list[dict[str, Any]], prober: Prober) -> dict[str, Any]:
    out: dict[str, Any] = {"scenario": sc.kind, "title": sc.title, "ctid": sc.ct, "ip": sc.ip, "runs": runs}
    for method in ("ours", "baseline"):
        mine = [r for r in runs if r["method"] == method]
        good = [r for r in mine if r["ok"] and r["downtime"] is not None]
        entry: dict[str, Any] = {
            "moves": len(mine), "failed": len(mine) - len(good),
            "downtime": stats([r["downtime"] for r in good]),
            "total": stats([r["total"] for r in good]),
            "frozen": stats([r["frozen"] for r in good if r.get("frozen") is not None]),
            "modes": sorted({r.get("mode", "") for r in good}),
            "stages": {k: statistics.median(v) for k, v in _stage_values(good).items()},
        }
        if sc.kind == "mem":
            pcs = [r["probe"]["persistent"] for r in mine]
            entry["connection_kept"] = sum(1 for p in pcs if p["survived"])
            entry["connection_stall"] = stats([p["max_stall"] for p in pcs if p["survived"] and p["max_stall"]])
            entry["bad_pages"] = sum((r.get("verify") or {}).get("bad_pages") or 0 for r in mine)
            entry["bad_answers"] = max((p["bad_max"] or 0 for p in pcs), default=0)
            entry["counter_continued"] = sum(
                1 for p in pcs if p["count_first"] is not None and p["count_last"] is not None
                and p["count_last"] > p["count_first"])
        out[method] = entry
    ratios: dict[str, float | None] = {}
    for key in ("downtime", "total"):
        a, b = out["ours"][key]["median"], out["baseline"][key]["median"]
        ratios[key] = a / b if a is not None and b else None
    out["ratios"] = ratios
    targets = []
    for text, check in TARGETS[sc.kind]:
        try:
            met: bool | None = bool(check(out))
        except TypeError:  # a figure is missing (failed moves)
            met = None
        targets.append({"target": text, "met": met})
    out["targets"] = targets
    with prober.lock:
        out["prober"] = {"requests_answered": len(prober.ok), "requests_failed": len(prober.failed)}
    return out


# ---------------------------------------------------------------------------------------------------
# Reporting


def environment(args: argparse.Namespace) -> dict[str, Any]:
    def first_line(argv: list[str]) -> str:
        try:
            res = subprocess.run(argv, capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL)
            return (res.stdout or res.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "?"
    criu = shutil.which("criu", path="/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin") or "criu"
    commit = first_line(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]) if (REPO / ".git").exists() else "?"
    mem = "?"
    with contextlib.suppress(OSError, IndexError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) // 1024} MiB"
    return {
        "kernel": platform.release(), "criu": first_line([criu, "--version"]).replace("Version: ", ""),
        "criu_binary": criu, "runc": first_line(["runc", "--version"]),
        "cpus": os.cpu_count(), "memory": mem, "python": platform.python_version(), "vzfleet_commit": commit,
        "runs": args.runs, "subnet": args.subnet, "loadavg_start": loadavg(),
    }


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


PROBE_TEXT = ("client: a new TCP connection + `GET / HTTP/1.0` every 10 ms from the LAN namespace "
              "(attempts overlap, 0.5 s timeout each); downtime = the longest gap between two answered "
              "requests from 0.5 s before a move until 0.5 s after it ended and an answer came back")
BASELINE_TEXT = ("baseline: plain runc between the two nodes' runc roots, scripted by hand: pre-sync of the "
                 "private area and destination netns/venet/bundle before the freeze; then source venet down, "
                 "`runc checkpoint --tcp-established` (CRIU options: runc's defaults + skip-in-flight), rsync of "
                 "private area + images (local, in parallel, "
                 "uncompressed), `runc restore --detach`, host route + proxy ARP + gratuitous ARP on the "
                 "destination; not included: image compression, checksums, preflight checks, rollback")


def print_report(env: dict[str, Any], results: list[dict[str, Any]]) -> None:
    print("environment: " + ", ".join(f"{k} {env[k]}" for k in
                                      ("kernel", "criu", "runc", "cpus", "memory", "python", "vzfleet_commit")))
    busy = max((float(v.split()[0]) for v in (env["loadavg_start"], env.get("loadavg_end", "?")) if v != "?"),
               default=0.0)
    print(f"load average (1/5/15 min) at start {env['loadavg_start']}, at end {env.get('loadavg_end', '?')}"
          + ("  -- the machine was busy: figures are noisy" if busy > (env["cpus"] or 1) else ""))
    print(PROBE_TEXT)
    print(BASELINE_TEXT)
    for r in results:
        print()
        print(f"== {r['title']} (CT {r['ctid']}, {r['ip']}; {env['runs']} moves each, alternating n1 <-> n2)")
        if r.get("error"):
            print(f"   scenario failed: {r['error']}")
            if "ours" not in r:
                continue
        print(f"   {'':<10} {'downtime (s)':^22}   {'total (s)':^22}   {'frozen (s)':>10}   failed  mode")
        print(f"   {'':<10} {'median':>6} {'min':>7} {'max':>7}   {'median':>6} {'min':>7} {'max':>7}   "
              f"{'median':>10}")
        for method in ("ours", "baseline"):
            e = r[method]
            d, t, f = e["downtime"], e["total"], e["frozen"]
            print(f"   {method:<10} {_fmt(d['median'])} {_fmt(d['min'], 7)} {_fmt(d['max'], 7)}   "
                  f"{_fmt(t['median'])} {_fmt(t['min'], 7)} {_fmt(t['max'], 7)}   {_fmt(f['median'], 10)}   "
                  f"{e['failed']}/{e['moves']}  {', '.join(e['modes'])}")
        for method in ("ours", "baseline"):
            st = r[method]["stages"]
            print(f"   {method} stages (median s): " + ", ".join(f"{k} {v:.3f}" for k, v in st.items()))
        if r["scenario"] == "mem":
            for method in ("ours", "baseline"):
                e = r[method]
                print(f"   {method}: persistent connection kept {e['connection_kept']}/{e['moves']} (longest "
                      f"silence median {_fmt(e['connection_stall']['median'], 5)} s), counter "
                      f"continued {e['counter_continued']}/{e['moves']}, bad pages after moves {e['bad_pages']}, "
                      f"bad in answers {e['bad_answers']}")
        ratio = r["ratios"]["downtime"]
        print(f"downtime ours/baseline: {ratio:.2f}" if ratio is not None else "downtime ours/baseline: n/a")
        tr = r["ratios"]["total"]
        print(f"total ours/baseline: {tr:.2f}" if tr is not None else "total ours/baseline: n/a")
        for tgt in r["targets"]:
            state = {True: "met", False: "NOT met", None: "n/a (missing figures)"}[tgt["met"]]
            print(f"target ({r['scenario']}): {tgt['target']}: {state}")


# ---------------------------------------------------------------------------------------------------
# Taking clusters down, also those of killed runs


def remove_cluster(cluster: LocalCluster) -> None:
    """down(), then delete the base directory. The agents' purge unmounts each mount point once, so a
    mount stacked several times on a container root (left by an interrupted baseline move) is
    unmounted here until none is left, and down() tried again."""
    try:
        cluster.down()
    except CliError as first:
        stacked = {mp for mp in mount_points() if mp.startswith(f"{cluster.base}/")}
        if not stacked:
            raise
        log(f"unmounting what the purge left: {' '.join(sorted(stacked))}")
        for mp in sorted(stacked, key=len, reverse=True):
            for _ in range(16):
                if mp not in mount_points() or run(["umount", mp], check=False).returncode != 0:
                    break
        try:
            cluster.down()
        except CliError:
            raise first from None
    if not any(mp.startswith(f"{cluster.base}/") for mp in mount_points()):
        shutil.rmtree(cluster.base, ignore_errors=True)



def clean_stale() -> None:
    hexids: set[str] = set()
    for p in BENCH_ROOT.glob(f"{BASE_PREFIX}*"):
        if re.fullmatch(r"[0-9a-f]{6}", p.name[len(BASE_PREFIX):]):
            hexids.add(p.name[len(BASE_PREFIX):])
    with contextlib.suppress(FileNotFoundError):
        for n in os.listdir(NETNS_DIR):
            if m := re.fullmatch(rf"{PREFIX_HEAD}([0-9a-f]{{6}})-(lan|n\d+)", n):
                hexids.add(m.group(1))
    for hexid in sorted(hexids):
        base = BENCH_ROOT / f"{BASE_PREFIX}{hexid}"
        with contextlib.suppress(OSError, ValueError):
            pid, ticks = (base / OWNER_FILE).read_text().split()
            if proc_start_ticks(int(pid)) == ticks:
                continue  # another bench run in progress
        log(f"removing the cluster a killed bench run left ({PREFIX_HEAD}{hexid}-)")
        prefix = f"{PREFIX_HEAD}{hexid}-"
        try:
            remove_cluster(LocalCluster(prefix=prefix, node_prefix=prefix, subnet=DEFAULT_SUBNET, base=base,
                                        progress=lambda line: log(f"cluster: {line}")))
        except CliError as e:
            log(f"could not remove it: {e}")


# ---------------------------------------------------------------------------------------------------
# Main


def scenarios(args: argparse.Namespace, bench: Bench) -> list[Scenario]:
    wanted = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    out = []
    for kind in wanted:
        if kind == "idle":
            out.append(Scenario(
                kind="idle", title="idle busybox container, busybox httpd", ct=101, ip=f"{bench.net}.101",
                inittab=[f"::respawn:/bin/busybox httpd -f -p {PORT} -h /www"],
                files={"www/index.html": (b"vzfleet bench\n", 0o644)}))
        elif kind == "mem":
            ram = max(512, args.mib * 2)
            out.append(Scenario(
                kind="mem", title=f"{args.mib} MiB process (memsrv)", ct=102, ip=f"{bench.net}.102",
                params=["--ram", f"{ram}M"],
                inittab=[f"::respawn:/memsrv --mib {args.mib} --port {PORT}"]))
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/migration",
        description="Client-observed downtime and total time of `vzmigrate --online` against a plain "
                    "runc checkpoint/rsync/restore baseline, on a private two-node local cluster (root).")
    p.add_argument("--runs", type=int, default=5, help="moves per method and scenario (default 5)")
    p.add_argument("--scenarios", default="idle,mem", help="comma-separated: idle, mem (default both)")
    p.add_argument("--mib", type=int, default=256, help="memory of the memsrv process (default 256)")
    p.add_argument("--subnet", default=DEFAULT_SUBNET, help=f"the bench cluster's LAN (default {DEFAULT_SUBNET})")
    p.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    args = p.parse_args(argv)
    if args.runs < 1 or args.mib < 1:
        p.error("--runs and --mib must be positive")
    if bad := {s.strip() for s in args.scenarios.split(",") if s.strip()} - {"idle", "mem"}:
        p.error(f"unknown scenario(s): {', '.join(sorted(bad))}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("bench/migration: needs root (namespaces, runc, CRIU)", file=sys.stderr)
        return 2

    def on_term(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)  # also when started in the background (SIGINT ignored there)
    clean_stale()
    env = environment(args)
    bench = Bench(args)
    results: list[dict[str, Any]] = []
    interrupted = False
    t_start = time.monotonic()
    try:
        bench.up()
        for sc in scenarios(args, bench):
            try:
                results.append(bench.scenario(sc))
            except BenchError as e:
                log(f"scenario {sc.kind} failed: {e}")
                results.append({"scenario": sc.kind, "title": sc.title, "ctid": sc.ct, "ip": sc.ip, "error": str(e)})
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted")
    except (BenchError, CliError) as e:
        log(f"failed: {e}")
        results.append({"error": str(e)})
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            bench.down()
        except (CliError, OSError) as e:
            log(f"cleanup problem: {e}")
    env["wall_seconds"] = round(time.monotonic() - t_start, 1)
    env["loadavg_end"] = loadavg()
    done = [r for r in results if "ours" in r]
    if args.json:
        print(json.dumps({"environment": env, "probe": PROBE_TEXT, "baseline": BASELINE_TEXT,
                          "results": results, "interrupted": interrupted}, indent=2, default=str))
    else:
        print_report(env, [r for r in results if "scenario" in r])
        print(f"\n(bench wall time {env['wall_seconds']} s)")
    if interrupted:
        return 130
    failed = len(done) != len(results) or any(not r["ok"] for res in done for r in res["runs"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
