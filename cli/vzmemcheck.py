"""vzmemcheck: memory utilization and commitment of the running containers and of the node."""

from __future__ import annotations

import argparse
import sys

from cli import capacity
from cli.client import CliError, agent_for, call, default_root, die, resolve_socket
from vzapi import resources_pb2 as rpb
from vzapi import resources_pb2_grpc as rpb_grpc

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
    p.add_argument("--socket", help="agent socket (default: $VZFLEET_ROOT/run/vzfleet/agent.sock)")
    p.add_argument("--node", metavar="NAME", help="a node of the local cluster (`vzfleet up --nodes N`)")
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        with agent_for(resolve_socket(args.node, args.socket, default_root())) as agent:
            reply = call(rpb_grpc.ResourceServiceStub(agent.channel).Containers, rpb.ResourcesRequest())
    except CliError as e:
        die(PROG, e)
    node = capacity.node_from_pb(reply.node)
    cts = sorted((capacity.container_from_pb(c) for c in reply.containers), key=lambda c: c.ctid)
    sys.stdout.write(capacity.render_memcheck(cts, node, verbose=args.verbose, absolute=args.absolute))
    sys.exit(0)


if __name__ == "__main__":
    main()
