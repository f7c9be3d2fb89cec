"""vzcalc: the share of the node's resources a container uses now, is promised, may use at most."""

from __future__ import annotations

import argparse
import sys

from cli import capacity, nodefacts
from cli.client import EXIT_NOT_FOUND, CliError, add_agent_options, run_main

PROG = "vzcalc"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Current (used now; n/a when stopped), promised (its limits' barriers) and maximum (its "
                    "limits) share of the node's memory and tasks used by a container, in %%.",
        epilog="exit codes: 0 ok, 2 invalid usage, 3 agent not running, 4 no such container.")
    p.add_argument("-v", "--verbose", action="store_true", help="a line per resource before the total")
    add_agent_options(p)
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
