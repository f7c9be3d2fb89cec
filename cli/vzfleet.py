"""vzfleet: what OpenVZ never had — bring the node services up and down, manage OS templates.

(The cluster commands — nodes, drain, balance — arrive with the scheduler.)
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc

from cli.client import (
    EXIT_FAILED,
    EXIT_USAGE,
    Agent,
    CliError,
    agent_for,
    call,
    default_root,
    die,
    socket_path,
)
from vzapi import container_pb2 as pb

PROG = "vzfleet"
START_TIMEOUT_S = 20.0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="vzfleet node and cluster services.",
                                epilog="exit codes: 0 ok, 1 failed, 2 invalid usage, 3 agent not running, "
                                       "8 template refused or missing")
    p.add_argument("--root", type=Path, default=None,
                   help="node root holding etc/vz, var/lib/vz, run/vzfleet (default: $VZFLEET_ROOT or /)")
    p.add_argument("--node", default=os.environ.get("VZFLEET_NODE"), help="node name for `up`")
    p.add_argument("--socket", help="agent socket (default: ROOT/run/vzfleet/agent.sock)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    sub.add_parser("up", help="start the node agent in the background (containers are re-adopted)")
    sub.add_parser("down", help="stop the node agent (containers keep running)")
    sub.add_parser("status", help="show the agent and its containers")
    t = sub.add_parser("template", help="OS templates: build, import, list")
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
    try:
        sys.exit(run(args))
    except CliError as e:
        die(PROG, e)


def run(args: argparse.Namespace) -> int:
    root = (args.root or default_root()).resolve()
    sock = socket_path(root, args.socket)
    if args.command == "up":
        return up(root, sock, args.node)
    if args.command == "down":
        return down(root, sock)
    with agent_for(sock) as agent:
        if args.command == "status":
            return status(agent)
        return template(agent, args)


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


def status(agent: Agent) -> int:
    info = call(agent.agent.Info, pb.Empty(), timeout=10)
    lst = call(agent.containers.List, pb.ListRequest(all=True))
    running = sum(1 for c in lst.containers if c.status != "stopped")
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
