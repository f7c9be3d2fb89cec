"""vzmigrate: move a container to another node, live with --online (OpenVZ's vzmigrate)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import grpc

from cli.client import (
    EXIT_NOT_FOUND,
    EXIT_USAGE,
    Agent,
    CliError,
    cluster_nodes,
    default_root,
    error_from_rpc,
    resolve_socket,
    run_main,
)
from cli.progress import StageLines
from vzapi import container_pb2 as cpb
from vzapi import migration_pb2 as pb
from vzapi import migration_pb2_grpc as pb_grpc

PROG = "vzmigrate"
PEER_PORT = 7779
CHECKS = ("ctid", "ip", "criu", "cpu", "disk")

DESCRIPTION = """\
Move container CTID to DESTINATION (a node of the local cluster, or HOST[:PORT] of its agent).

Without --online the container is stopped, its private area copied, and it is started on the
destination (only if it was running). With --online it keeps running: its filesystem is copied
while it runs, then it is frozen with its network locked, dumped with CRIU, the last changes and
the images are sent, and it is restored on the destination, keeping its IP addresses and open TCP
connections. Until the destination confirms the move (the commit), any failure resumes the
container here, unchanged; after it, the destination owns it. At no moment do two copies run.

Modes (--mode): auto picks what the kernels offer and says why. stopcopy always works and a
failure can never lose the container. postcopy (CRIU lazy pages; auto picks it for containers
using 64 MiB or more when the destination has userfaultfd) resumes the container on the
destination before its memory has moved, which shortens the outage of big containers; RISK: until
the last page has arrived the container depends on the source node, and a crash of the source in
that window (seconds for hundreds of MiB) loses it. Everything that can fail is checked before
post-copy starts. precopy needs dirty-page tracking and is not implemented yet."""

EPILOG = """\
exit codes: 0 moved (or checks passed), 1 failed (the container is running here, unchanged),
2 invalid usage, 3 agent not reachable, 4 no such container, 6 refused by a preflight check."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--online", "--live", action="store_true", help="live migration (the container keeps running)")
    p.add_argument("-r", "--remove-area", choices=["yes", "no"], default="yes",
                   help="remove the source private area and config after success (default yes)")
    p.add_argument("--keep-dst", action="store_true",
                   help="keep the partial destination copy after a failure, so a retry copies less")
    p.add_argument("-t", "--times", action="store_true", help="print each stage's time and the frozen time")
    p.add_argument("--check-only", "--dry-run", dest="check_only", action="store_true",
                   help="run the preflight checks only; change nothing")
    p.add_argument("-f", "--nodeps", nargs="?", const="all", default="", metavar="CHECK,...",
                   help=f"skip preflight checks ({', '.join(CHECKS)}; default: all but ctid)")
    p.add_argument("--mode", choices=["auto", "precopy", "postcopy", "stopcopy"], default="auto")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="progress is always printed; accepted for OpenVZ compatibility")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--node", help="source node of the local cluster (default: the node that has CTID)")
    p.add_argument("--socket", help="source agent socket")
    p.add_argument("destination", metavar="DESTINATION")
    p.add_argument("ctid", metavar="CTID")
    return p


def destination_address(dest: str) -> str:
    for entry in cluster_nodes():
        if entry.get("name") == dest and isinstance(entry.get("address"), str):
            return f"{entry['address']}:{PEER_PORT}"
    if ":" in dest:
        return dest
    if all(c.isalnum() or c in ".-" for c in dest) and "." in dest:
        return f"{dest}:{PEER_PORT}"
    known = " ".join(str(e.get("name")) for e in cluster_nodes())
    raise CliError(f"unknown destination {dest!r}: give a node of the local cluster ({known or 'none is up'}) "
                   f"or HOST[:PORT]", EXIT_USAGE)


def find_source(args: argparse.Namespace) -> Path:
    """The source agent: --node/--socket, else the cluster node that has the container, else local."""
    if args.node or args.socket:
        return resolve_socket(args.node, args.socket)
    nodes = cluster_nodes()
    for entry in nodes:
        sock = Path(str(entry.get("socket", "")))
        if not sock.exists():
            continue
        try:
            agent = Agent(sock)
            try:
                reply = agent.containers.Status(cpb.CtRef(ctid=args.ctid), timeout=10)
                if reply.exists:
                    return sock
            finally:
                agent.close()
        except (grpc.RpcError, CliError):
            continue
    if nodes:
        raise CliError(f"no node of the local cluster has container {args.ctid}", EXIT_NOT_FOUND)
    return resolve_socket(None, None, default_root())


def skip_list(spec: str) -> list[str]:
    if not spec:
        return []
    if spec == "all":
        return [c for c in CHECKS if c != "ctid"]
    items = [s.strip() for s in spec.split(",") if s.strip()]
    for s in items:
        if s not in CHECKS:
            raise CliError(f"unknown check {s!r}: use {', '.join(CHECKS)}", EXIT_USAGE)
    return items


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    run_main(PROG, lambda: run(args))


def run(args: argparse.Namespace) -> int:
    req = pb.MigrateRequest(
        ctid=args.ctid, destination=destination_address(args.destination), online=args.online,
        keep_source=args.remove_area == "no", keep_dst=args.keep_dst, check_only=args.check_only,
        mode=args.mode, skip_checks=skip_list(args.nodeps))
    agent = Agent(find_source(args))
    lines = StageLines(sys.stderr)
    final: pb.MigrateEvent | None = None
    err: CliError | None = None
    try:
        stub = pb_grpc.MigrationControlStub(agent.channel)
        for ev in stub.Migrate(req, timeout=7200):
            if ev.done:
                final = ev
            elif not args.json:
                lines.event(ev.stage, ev.message, ev.bytes, ev.total)
    except grpc.RpcError as e:
        err = error_from_rpc(e)
    finally:
        lines.clear()
        agent.close()
    if args.json:
        out = {"ok": err is None, "ctid": args.ctid, "destination": args.destination,
               "error": str(err) if err else None}
        if final is not None:
            out.update(mode=final.mode, mode_reason=final.mode_reason, checks=list(final.checks),
                       frozen_seconds=round(final.frozen_seconds, 3), total_seconds=round(final.total_seconds, 3),
                       stages={t.stage: round(t.seconds, 3) for t in final.times})
        print(json.dumps(out, indent=2))
    elif final is not None and args.times:
        for t in final.times:
            print(f"{t.stage:>9}: {t.seconds:7.3f} s")
        print(f"{'frozen':>9}: {final.frozen_seconds:7.3f} s")
        print(f"{'total':>9}: {final.total_seconds:7.3f} s")
    if err is not None:
        raise err
    if not args.json:
        print("checks passed; nothing was changed" if args.check_only
              else f"container {args.ctid} moved to {args.destination}")
    return 0


if __name__ == "__main__":
    main()
