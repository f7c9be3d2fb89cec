"""vzcalc: the share of the node's resources a container uses now, is promised, may use at most."""

from __future__ import annotations

import argparse
import sys

from cli import capacity, nodefacts
from cli.client import EXIT_NOT_FOUND, CliError, run_main

PROG = "vzcalc"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Current (used now; n/a when stopped), promised (its limits' barriers) and maximum (its "
                    "limits) share of the node's memory and tasks used by a container, in %%.",
        epilog="exit codes: 0 ok, 2 invalid usage, 3 agent not running, 4 no such container.")
    p.add_argument("-v", "--verbose", action="store_true", help="a line per resource before the total")
    p.add_argument("--socket", help="agent socket (default: $VZFLEET_ROOT/run/vzfleet/agent.sock)")
    p.add_argument("--node", metavar="NAME", help="a node of the local cluster (`vzfleet up --nodes N`)")
    p.add_argument("ctid", metavar="CTID", help="container ID or name")
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)

    def run() -> int:
        node, cts = nodefacts.fetch(args.node, args.socket, [args.ctid], all_containers=True)
        if not cts:
            raise CliError(f"container {args.ctid} does not exist", EXIT_NOT_FOUND)
        sys.stdout.write(capacity.render_calc(cts[0], node, verbose=args.verbose))
        return 0

    run_main(PROG, run)


if __name__ == "__main__":
    main()
