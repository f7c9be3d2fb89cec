"""vzmemcheck: memory utilization and commitment of the running containers and of the node."""

from __future__ import annotations

import argparse
import sys

from cli import capacity, nodefacts
from cli.client import add_agent_options, run_main

PROG = "vzmemcheck"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Memory utilization (what containers use) and commitment (what their limits promise) "
                    "against the node: low memory (kernel memory, 40%% of RAM), RAM, RAM + swap, and "
                    "allocated memory. An unlimited parameter promises the whole node; a summary above "
                    "100%% commitment means the node is overcommitted.",
        epilog="exit codes: 0 ok, 3 agent not running.")
    p.add_argument("-v", "--verbose", action="store_true", help="a line per running container before the summary")
    p.add_argument("-A", "--absolute", action="store_true", help="values in Mbytes instead of %%")
    add_agent_options(p)
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)

    def run() -> int:
        node, cts = nodefacts.fetch(args.node, args.socket)
        sys.stdout.write(capacity.render_memcheck(cts, node, verbose=args.verbose, absolute=args.absolute))
        return 0

    run_main(PROG, run)


if __name__ == "__main__":
    main()
