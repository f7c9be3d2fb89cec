"""vzquota: disk quota of a container, as in OpenVZ (`vzquota stat CTID`).

The limits themselves are set with `vzctl set CTID --diskspace S:H --diskinodes S:H --quotatime T`;
this command shows them with the usage, in vzquota's columns (`-j`: JSON).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from cli.client import EXIT_USAGE, CliError, add_agent_options, agent_for, call, default_root, resolve_socket, run_main
from vzapi import storage_pb2 as pb
from vzapi import storage_pb2_grpc as pb_grpc

PROG = "vzquota"
EXIT_HELP = """\
exit codes: 0 ok, 2 invalid usage, 3 agent not running, 4 no such container,
6 no disk quota (the container's private area is a plain directory, not a disk image)."""
HEADER = "%11s %14s  %14s %14s %8s"
ROW = "%11s %14u%c %14u %14u %8s"


def time_text(seconds: int) -> str:
    """vzquota's rounded duration: HH:MM below two days, else Ndays."""
    minutes = (seconds + 30) // 60
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    return f"{days}days" if days >= 2 else f"{hours + days * 24:02d}:{minutes:02d}"


def grace_text(expires: int, now: int) -> str:
    """Empty when the soft limit is not exceeded, 'none' once its grace is over, else time left."""
    if not expires:
        return ""
    if expires <= now:
        return "none"
    return time_text(expires - now)


def _over(usage: int, soft: int, hard: int) -> str:
    return "*" if (soft and usage > soft) or (hard and usage > hard) else " "


def _hard(r: pb.QuotaResource) -> int:
    return r.effective_hardlimit if r.unlimited else r.hardlimit


def format_stat(reply: pb.QuotaStatReply) -> str:
    """OpenVZ's `vzquota stat` table."""
    lines = [HEADER % ("resource", "usage", "softlimit", "hardlimit", "grace")]
    for name, r in (("1k-blocks", reply.blocks), ("inodes", reply.inodes)):
        hard = _hard(r)
        lines.append(ROW % (name, r.usage, _over(r.usage, r.softlimit, hard), r.softlimit, hard,
                            grace_text(r.grace_expires, reply.now)))
    return "\n".join(lines) + "\n"


def stat_json(reply: pb.QuotaStatReply) -> dict[str, Any]:
    def res(r: pb.QuotaResource) -> dict[str, Any]:
        return {"usage": r.usage, "softlimit": r.softlimit, "hardlimit": None if r.unlimited else r.hardlimit,
                "effective_hardlimit": r.effective_hardlimit, "grace": grace_text(r.grace_expires, reply.now),
                "grace_expires": r.grace_expires or None}

    return {"ctid": reply.ctid, "layout": reply.layout, "mounted": reply.mounted, "image": reply.image,
            "image_size": reply.image_size, "quotatime": reply.quotatime,
            "resources": {"1k-blocks": res(reply.blocks), "inodes": res(reply.inodes)}, "notes": list(reply.notes)}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, description="Show the disk quota of a container (set it with `vzctl set CTID --diskspace "
                               "S:H --diskinodes S:H --quotatime T`).",
        epilog=EXIT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true", help="also print notes on how the limits are held")
    add_agent_options(p, "talk to this node of the local cluster")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, help in (("stat", "usage and limits (blocks and inodes) of a container's disk"),
                       ("show", "the same as stat")):
        sp = sub.add_parser(name, help=help, description=help, epilog=EXIT_HELP,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        sp.add_argument("ctid", metavar="CTID", help="container ID or name")
        sp.add_argument("-j", "--json", action="store_true", help="print JSON")
        sp.add_argument("-t", action="store_true", help="accepted for OpenVZ compatibility (no user/group quota)")
    for name in ("init", "drop", "on", "off", "setlimit", "setlimit2", "reload2"):
        sp = sub.add_parser(name, help=argparse.SUPPRESS)
        sp.add_argument("rest", nargs=argparse.REMAINDER)
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    run_main(PROG, lambda: run(args))


def run(args: argparse.Namespace) -> int:
    if args.command not in ("stat", "show"):
        raise CliError(f"`vzquota {args.command}` is not needed here: a container's disk quota is set up with "
                       f"the container; change limits with `vzctl set CTID --diskspace S:H --diskinodes S:H "
                       f"--quotatime T --save`", EXIT_USAGE)
    with agent_for(resolve_socket(args.node, args.socket, default_root())) as agent:
        reply = call(pb_grpc.StorageServiceStub(agent.channel).QuotaStat, pb.QuotaStatRequest(ctid=args.ctid))
    if args.json:
        print(json.dumps(stat_json(reply), indent=2))
        return 0
    sys.stdout.write(format_stat(reply))
    if args.verbose:
        for note in reply.notes:
            print(f"note: {note}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    main()
