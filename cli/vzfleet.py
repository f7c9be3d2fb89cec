"""vzfleet: what OpenVZ never had — bring the node services up and down, manage OS templates.

`vzfleet up` starts this machine's node agent; `vzfleet up --nodes N` starts a local cluster of N
simulated hardware nodes instead (cli/localcluster.py, docs/local-cluster.md).
(The cluster commands — nodes, drain, balance — arrive with the scheduler.)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc

from cli.client import (
    DEFAULT_CLUSTER_BASE,
    EXIT_FAILED,
    EXIT_USAGE,
    Agent,
    CliError,
    agent_for,
    call,
    cluster_base,
    default_root,
    resolve_socket,
    run_main,
    socket_path,
)
from cli.localcluster import DEMO_SUBNET, ClusterStatus, LocalCluster
from vzapi import container_pb2 as pb

PROG = "vzfleet"
START_TIMEOUT_S = 20.0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="vzfleet node and cluster services.",
                                epilog="exit codes: 0 ok, 1 failed, 2 invalid usage, 3 agent not running, "
                                       "8 template refused or missing; status: 1 when a node or etcd is down")
    p.add_argument("--root", type=Path, default=None,
                   help="node root holding etc/vz, var/lib/vz, run/vzfleet (default: $VZFLEET_ROOT or /)")
    p.add_argument("--node", default=None,
                   help="`up` without --nodes: this agent's node name (default: $VZFLEET_NODE or the host "
                        "name); `template`: a node of the local cluster")
    p.add_argument("--socket", help="agent socket (default: ROOT/run/vzfleet/agent.sock)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    base_help = f"local cluster directory (default: $VZFLEET_CLUSTER or {DEFAULT_CLUSTER_BASE})"
    u = sub.add_parser("up", help="start the node agent in the background (containers are re-adopted); "
                                  "with --nodes N, a local cluster of N simulated nodes")
    u.add_argument("--nodes", type=int, metavar="N",
                   help="start a local cluster: N nodes (network namespaces on one bridge, an agent each) "
                        "and a single-member etcd")
    u.add_argument("--subnet", default=DEMO_SUBNET, metavar="CIDR",
                   help=f"the local cluster's LAN, a /24 (default: {DEMO_SUBNET})")
    u.add_argument("--base", type=Path, help=base_help)
    d = sub.add_parser("down", help="stop the node agent (containers keep running); if a local cluster "
                                    "exists, stop it and remove its nodes, namespaces and containers' runtime state")
    d.add_argument("--base", type=Path, help=base_help)
    st = sub.add_parser("status", help="show the agent and its containers, or every node of the local cluster")
    st.add_argument("-j", "--json", action="store_true", help="print JSON")
    st.add_argument("--base", type=Path, help=base_help)
    t = sub.add_parser("template", help="OS templates: build, import, list")
    t.add_argument("--node", default=argparse.SUPPRESS, help="a node of the local cluster")
    tsub = t.add_subparsers(dest="tcommand", metavar="ACTION", required=True)
    b = tsub.add_parser("build", help="build a template: busybox (offline, seconds) or debian (mmdebstrap)")
    b.add_argument("kind", choices=["busybox", "debian"])
    b.add_argument("--name", default="", help="template name (default: busybox / debian-12-minimal)")
    b.add_argument("--mirror", default="", help="Debian mirror URL (default: this machine's apt sources)")
    i = tsub.add_parser("import", help="import a .tar.gz/.tar.xz/.tar.zst OS template (checked for safety)")
    i.add_argument("file", type=Path)
    i.add_argument("--name", default="", help="template name (default: file name without .tar.*)")
    tsub.add_parser("list", help="list the templates in the cache")
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    run_main(PROG, lambda: run(args))


def run(args: argparse.Namespace) -> int:
    root = (args.root or default_root()).resolve()
    if args.command == "up" and args.nodes is not None:
        return cluster_up(LocalCluster(subnet=args.subnet, base=cluster_base(args.base), progress=progress),
                          args.nodes)
    single_agent = args.root is not None or args.socket or os.environ.get("VZFLEET_ROOT") \
        or os.environ.get("VZFLEET_SOCKET")
    if args.command in ("down", "status") and (args.base is not None or not single_agent):
        # an explicit node root or socket means that one agent, never the local cluster
        cluster = LocalCluster.at(cluster_base(args.base), progress=progress)
        if cluster.state() is not None or (args.command == "down" and cluster.has_leftovers()):
            return cluster_down(cluster) if args.command == "down" else cluster_status(cluster, args.json)
    if args.command == "template":
        sock = resolve_socket(args.node, args.socket, root)
    else:
        sock = socket_path(root, args.socket)
    if args.command == "up":
        return up(root, sock, args.node or os.environ.get("VZFLEET_NODE"))
    if args.command == "down":
        return down(root, sock)
    with agent_for(sock) as agent:
        if args.command == "status":
            return status(agent, args.json)
        return template(agent, args)


def progress(line: str) -> None:
    print(f"{PROG}: {line}", file=sys.stderr, flush=True)


# --- the local cluster ------------------------------------------------------------------------------


def cluster_up(cluster: LocalCluster, nodes: int) -> int:
    if os.geteuid() != 0:
        raise CliError("must run as root (network namespaces, cgroups, mounts)", EXIT_FAILED)
    before = cluster.status() if cluster.state() is not None else None
    st = cluster.up(nodes)
    if before is not None and before.healthy:
        print(f"the local cluster is already up ({cluster.base})")
    cluster.ensure_template()
    st = cluster.status()
    print_cluster(st)
    first = st.nodes[0]
    env = "" if cluster.base == DEFAULT_CLUSTER_BASE else f"VZFLEET_CLUSTER={cluster.base} "
    ct_ip = first.address.rsplit(".", 1)[0] + ".101"
    other = st.nodes[-1].address
    print()
    print("try:")
    for hint in (f"{env}vzctl --node {first.name} create 101 --ostemplate busybox --ipadd {ct_ip}",
                 f"{env}vzctl --node {first.name} start 101",
                 f"{env}vzlist --node {first.name}",
                 f"ip netns exec {st.lan_netns} busybox wget -q -O - http://{ct_ip}/      "
                 f"# from the LAN (when the container serves HTTP)",
                 f"ip netns exec {first.netns} ping -c1 {other}      # node to node across the LAN",
                 f"nsenter --net=/run/netns/{first.netns} bash      # a shell in node {first.name}'s network",
                 f"{env}vzfleet status;  {env}vzfleet down"):
        print(f"  {hint}")
    return 0


def print_cluster(st: ClusterStatus) -> None:
    print(f"local cluster {st.base}: {len(st.nodes)} node(s) on {st.subnet}, LAN {st.lan_netns} "
          f"({st.lan_address}); etcd {st.etcd_endpoint}: {st.etcd_health}")
    rows = [("NODE", "ADDRESS", "NETNS", "AGENT", "CONTAINERS", "SOCKET")]
    for n in st.nodes:
        agent = f"up pid {n.pid}" if n.agent_alive else ("down" if n.netns_present else "down (no netns)")
        rows.append((n.name, n.address, n.netns, agent,
                     f"{n.containers_running}/{n.containers_total}" if n.agent_alive else "-", n.socket))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1])


def cluster_status(cluster: LocalCluster, as_json: bool) -> int:
    st = cluster.status()
    if as_json:
        print(json.dumps({**dataclasses.asdict(st), "healthy": st.healthy}, indent=2))
    else:
        print_cluster(st)
    return 0 if st.healthy else EXIT_FAILED


def cluster_down(cluster: LocalCluster) -> int:
    if os.geteuid() != 0:
        raise CliError("must run as root (network namespaces, cgroups, mounts)", EXIT_FAILED)
    done = cluster.down()
    print(f"local cluster {cluster.base} is down" + (f" ({len(done)} step(s))" if done else ": nothing to do"))
    return 0


# --- one node agent on this machine ---------------------------------------------------------------


def _agent_answers(sock: Path) -> pb.AgentInfo | None:
    if not sock.exists():
        return None
    try:
        agent = Agent(sock)
        try:
            info: pb.AgentInfo = agent.agent.Info(pb.Empty(), timeout=2)
            return info
        finally:
            agent.close()
    except (grpc.RpcError, CliError):
        return None


def _agent_binary() -> str:
    beside = Path(sys.executable).parent / "vzfleet-agent"
    if beside.exists():
        return str(beside)
    found = shutil.which("vzfleet-agent")
    if not found:
        raise CliError("vzfleet-agent not found; run `make install`", EXIT_FAILED)
    return found


def up(root: Path, sock: Path, node: str | None) -> int:
    if os.geteuid() != 0:
        raise CliError("must run as root", EXIT_FAILED)
    if (info := _agent_answers(sock)) is not None:
        print(f"agent already running on node {info.node} (pid {info.pid}, socket {sock})")
        return 0
    log_dir = root / "var/log/vzfleet"
    log_dir.mkdir(parents=True, exist_ok=True)
    err_file = log_dir / "agent.stderr"
    argv = [_agent_binary(), "--root", str(root), "--socket", str(sock)]
    if node:
        argv += ["--node", node]
    with open(err_file, "ab") as err:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                start_new_session=True, close_fds=True)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = err_file.read_text(errors="replace").strip().splitlines()[-3:]
            raise CliError("the agent exited at start: " + (" / ".join(tail) or f"code {proc.returncode}"))
        if (info := _agent_answers(sock)) is not None:
            print(f"agent up on node {info.node} (pid {info.pid}); socket {sock}; "
                  f"log {log_dir / 'agent.log'}")
            return 0
        time.sleep(0.1)
    raise CliError(f"the agent did not answer within {START_TIMEOUT_S:g} s; see {err_file}")


def down(root: Path, sock: Path) -> int:
    info = _agent_answers(sock)
    if info is None:
        print("agent is not running")
        return 0
    pid = info.pid
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            print(f"agent (pid {pid}) stopped; containers keep running")
            return 0
        time.sleep(0.1)
    raise CliError(f"the agent (pid {pid}) did not stop within 15 s", EXIT_FAILED)


def status(agent: Agent, as_json: bool = False) -> int:
    info = call(agent.agent.Info, pb.Empty(), timeout=10)
    lst = call(agent.containers.List, pb.ListRequest(all=True))
    running = sum(1 for c in lst.containers if c.status != "stopped")
    if as_json:
        print(json.dumps({"node": info.node, "version": info.version, "pid": info.pid, "root": info.root,
                          "containers_total": len(lst.containers), "containers_running": running}, indent=2))
        return 0
    print(f"node {info.node}: agent {info.version} pid {info.pid}, root {info.root}; "
          f"{len(lst.containers)} container(s), {running} running")
    return 0


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "K", "M", "G"):
        if size < 1024:
            return f"{size:.1f}{unit}" if unit != "B" else f"{int(size)}B"
        size /= 1024
    return f"{size:.1f}T"


def template(agent: Agent, args: argparse.Namespace) -> int:
    if args.tcommand == "list":
        reply = call(agent.templates.ListTemplates, pb.Empty())
        if not reply.templates:
            print("no templates; build one with `vzfleet template build busybox`", file=sys.stderr)
        for t in reply.templates:
            print(f"{t.name:<30} {_human(t.size):>8}  {time.strftime('%Y-%m-%d %H:%M', time.localtime(t.mtime))}"
                  f"  {t.path}")
        return 0
    if args.tcommand == "build":
        print(f"building the {args.kind} template ...", file=sys.stderr)
        t = call(agent.templates.BuildTemplate, pb.TemplateBuildRequest(
            kind=args.kind, name=args.name, mirror=args.mirror), timeout=1800)
    else:
        path = args.file.resolve()
        if not path.is_file():
            raise CliError(f"{args.file}: no such file", EXIT_USAGE)
        print(f"checking and importing {path} ...", file=sys.stderr)
        t = call(agent.templates.ImportTemplate, pb.TemplateImportRequest(path=str(path), name=args.name),
                 timeout=1800)
    print(f"template {t.name} ready ({_human(t.size)}): {t.path}")
    return 0


if __name__ == "__main__":
    main()
