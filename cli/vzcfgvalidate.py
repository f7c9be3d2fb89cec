"""vzcfgvalidate: is a container config consistent with itself and with this node?"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from cli import capacity
from cli.client import EXIT_FAILED, CliError, add_agent_options, agent_for, call, default_root, resolve_socket, run_main
from vzapi import resources_pb2 as rpb
from vzapi import resources_pb2_grpc as rpb_grpc

PROG = "vzcfgvalidate"
EXIT_INVALID = 2


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Check a container config (CTID.conf or a sample): barrier/limit pairs, parameters against "
                    "each other and, when the node's agent is reachable, against the node's RAM, swap, CPUs and "
                    "disk. Prints Error / Warning / Recommendation lines.",
        epilog="exit codes: 0 valid (warnings allowed), 1 the file cannot be read or written, 2 invalid "
               "(errors remain), 3 agent not running (only with --require-agent).")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("-r", "--repair", action="store_true", help="repair mode: apply every fix and save the file")
    mode.add_argument("-i", "--interactive", action="store_true", help="interactive repair: ask before each fix")
    p.add_argument("--require-agent", action="store_true",
                   help="fail when the agent cannot be asked for the node's capacity (default: check the file alone)")
    add_agent_options(p)
    p.add_argument("config", type=Path, help="the config file")
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    run_main(PROG, lambda: run(args))


def node_facts(args: argparse.Namespace) -> capacity.Node | None:
    """The node's capacity from its agent, or None (with a note) when the agent cannot be reached."""
    try:
        with agent_for(resolve_socket(args.node, args.socket, default_root())) as agent:
            msg = call(rpb_grpc.ResourceServiceStub(agent.channel).Node, rpb.NodeResourcesRequest(), timeout=10)
    except CliError as e:
        if args.require_agent:
            raise
        print(f"{PROG}: node limits not checked ({e})", file=sys.stderr)
        return None
    return capacity.node_from_pb(msg)


def ask(f: capacity.Finding) -> bool:
    assert f.fix is not None
    sys.stderr.write(f"{f}\n  set {f.fix[0]}=\"{f.fix[1]}\"? (y/n) [y] ")
    sys.stderr.flush()
    answer = sys.stdin.readline().strip().lower()
    return answer in ("", "y", "yes")


def run(args: argparse.Namespace) -> int:
    try:
        text = args.config.read_text()
    except OSError as e:
        raise CliError(f"container configuration file {args.config} cannot be read: {e.strerror}", EXIT_FAILED) \
            from None
    node = node_facts(args)
    findings = capacity.validate(capacity.read_conf(text), node)
    if args.repair or args.interactive:
        new_text, applied = capacity.repair(text, findings, ask if args.interactive else (lambda f: True))
        for f in applied:
            if not args.interactive:
                print(f)
            assert f.fix is not None
            print(f"  set {f.fix[0]}=\"{f.fix[1]}\"")
        if applied:
            tmp = args.config.with_name(f".{args.config.name}.vzcfgvalidate")
            try:
                tmp.write_text(new_text)
                os.replace(tmp, args.config)
            except OSError as e:
                raise CliError(f"cannot save {args.config}: {e.strerror}", EXIT_FAILED) from None
            print(f"saved {args.config}")
        findings = capacity.validate(capacity.read_conf(new_text), node)
    for f in findings:
        print(f)
    if any(f.level == "Error" for f in findings):
        print(f"{PROG}: {args.config} is invalid", file=sys.stderr)
        return EXIT_INVALID
    print("Validation completed: success", file=sys.stderr)
    return 0


if __name__ == "__main__":
    main()
