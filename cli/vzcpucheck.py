"""vzcpucheck: the cpuunits promised to the running containers against the power of the node."""

from __future__ import annotations

import argparse
import sys

from cli import capacity, nodefacts
from cli.client import add_agent_options, run_main

PROG = "vzcpucheck"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Print the sum of the cpuunits of the running containers and of the host (VE0CPUUNITS) "
                    "and the power of the node (25 x its BogoMIPS, OpenVZ's unit). While the sum stays below "
                    "the power, a container with U cpuunits is guaranteed U / power of the node's CPU time.",
        epilog="exit codes: 0 ok, 3 agent not running.")
    p.add_argument("-v", "--verbose", action="store_true", help="also print the cpuunits of each container")
    add_agent_options(p)
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)

    def run() -> int:
        node, cts = nodefacts.fetch(args.node, args.socket)
        sys.stdout.write(capacity.render_cpucheck(cts, node, verbose=args.verbose))
        return 0

    run_main(PROG, run)


if __name__ == "__main__":
    main()
