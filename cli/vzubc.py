"""vzubc: the user beancounters of containers, as OpenVZ's /proc/user_beancounters shows them."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from cli import capacity
from cli.client import EXIT_STATE, CliError, add_agent_options, agent_for, call, default_root, resolve_socket, run_main
from vzapi import resources_pb2 as rpb
from vzapi import resources_pb2_grpc as rpb_grpc

PROG = "vzubc"
LONG_MAX = capacity.LONG_MAX
NEAR = 0.9  # -q shows resources held above this share of their barrier


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Show the beancounters (held, maxheld, barrier, limit, failcnt) of running containers, "
                    "like OpenVZ's /proc/user_beancounters. Pages are 4 KiB; unlimited shows as "
                    f"{LONG_MAX}. Reset the fail counters with `vzctl set CTID --reset_ub`.",
        epilog="exit codes: 0 ok, 2 invalid usage, 3 agent not running, 4 no such container, "
               "6 none of the given containers is running.")
    p.add_argument("-j", "--json", action="store_true", help="print JSON (unlimited is null)")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="only resources with failures or held above 90%% of their barrier")
    add_agent_options(p)
    p.add_argument("ctids", nargs="*", metavar="CTID", help="only these containers (default: all running)")
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    run_main(PROG, lambda: run(args))


def _num(value: int | None) -> str:
    return str(LONG_MAX if value is None else value)


def interesting(b: capacity.BC) -> bool:
    """-q: failures, or usage close to the barrier."""
    if b.failcnt:
        return True
    bound = b.barrier if b.barrier is not None else b.limit
    return bound is not None and bound > 0 and b.held >= NEAR * bound


def render_table(cts: Sequence[capacity.Container], *, quiet: bool = False) -> str:
    """The /proc/user_beancounters layout: the container's uid on its first resource's line."""
    w = 21
    lines = ["Version: 2.5",
             f"{'uid':>10}  {'resource':<12}{'held':>{w}}{'maxheld':>{w}}{'barrier':>{w}}{'limit':>{w}}"
             f"{'failcnt':>{w}}"]
    for c in cts:
        first = True
        for name, b in c.bc.items():
            if quiet and not interesting(b):
                continue
            uid = f"{c.ctid}:" if first else ""
            first = False
            lines.append(f"{uid:>11} {name:<12}{b.held:>{w}}{b.maxheld:>{w}}{_num(b.barrier):>{w}}"
                         f"{_num(b.limit):>{w}}{b.failcnt:>{w}}")
    return "\n".join(lines) + "\n"


def render_json(cts: Sequence[capacity.Container], *, quiet: bool = False) -> str:
    out = [{"ctid": c.ctid, "status": c.status,
            "beancounters": [{"resource": n, "held": b.held, "maxheld": b.maxheld, "barrier": b.barrier,
                              "limit": b.limit, "failcnt": b.failcnt, "unit": b.unit}
                             for n, b in c.bc.items() if not quiet or interesting(b)]}
           for c in cts]
    return json.dumps(out, indent=2) + "\n"


def run(args: argparse.Namespace) -> int:
    with agent_for(resolve_socket(args.node, args.socket, default_root())) as agent:
        stub = rpb_grpc.ResourceServiceStub(agent.channel)
        reply = call(stub.Containers, rpb.ResourcesRequest(ctids=args.ctids, all=bool(args.ctids)))
    cts = [capacity.container_from_pb(c) for c in reply.containers]
    for c in cts:
        if not c.running:
            print(f"{PROG}: container {c.ctid} is {c.status}: no beancounters", file=sys.stderr)
    running = [c for c in cts if c.running]
    if args.ctids and not running:
        raise CliError("none of the given containers is running", EXIT_STATE)
    sys.stdout.write(render_json(running, quiet=args.quiet) if args.json
                     else render_table(running, quiet=args.quiet))
    return 0


if __name__ == "__main__":
    main()
