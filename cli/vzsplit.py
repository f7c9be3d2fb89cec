"""vzsplit: a sample config that splits this node's RAM, swap, CPU and disk into N containers."""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

from cli import capacity
from cli.client import (
    EXIT_EXISTS,
    EXIT_FAILED,
    EXIT_USAGE,
    CliError,
    add_agent_options,
    agent_for,
    call,
    default_root,
    resolve_socket,
    run_main,
)
from vzapi import resources_pb2 as rpb
from vzapi import resources_pb2_grpc as rpb_grpc

PROG = "vzsplit"
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Generate a container config sample that gives each of N containers an equal share of "
                    "this node's RAM and swap (after a reserve for the host), tasks, private-area disk space "
                    "and inodes, and an equal CPU weight. Use it with `vzctl create CTID --config NAME`.",
        epilog="exit codes: 0 ok, 1 failed (e.g. not enough resources), 2 invalid usage, 3 agent not running, "
               "5 the sample already exists.")
    p.add_argument("-n", "--num", type=int, metavar="N", help="number of containers (asked when missing)")
    p.add_argument("-f", "--file", metavar="NAME",
                   help="write ve-NAME.conf-sample in the node's config directory (default: print it)")
    add_agent_options(p)
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    run_main(PROG, lambda: run(args))


def run(args: argparse.Namespace) -> int:
    if args.file is not None and not NAME_RE.fullmatch(args.file):
        raise CliError(f"invalid sample name {args.file!r}: use letters, digits, '.', '_' or '-'", EXIT_USAGE)
    n = args.num
    if n is None:
        if not sys.stdin.isatty():
            raise CliError("give the number of containers with -n N", EXIT_USAGE)
        try:
            n = int(input("Enter the number of containers: "))
        except (ValueError, EOFError):
            raise CliError("invalid number of containers", EXIT_USAGE) from None
    if n < 1:
        raise CliError("the number of containers must be at least 1", EXIT_USAGE)
    with agent_for(resolve_socket(args.node, args.socket, default_root())) as agent:
        msg = call(rpb_grpc.ResourceServiceStub(agent.channel).Node, rpb.NodeResourcesRequest())
    node = capacity.node_from_pb(msg)
    try:
        s = capacity.split(node, n)
    except ValueError as e:
        raise CliError(str(e), EXIT_FAILED) from None
    for w in s.warnings:
        print(f"{PROG}: WARNING: {w}", file=sys.stderr)
    text = capacity.render_split(node, n, s)
    if args.file is None:
        sys.stdout.write(text)
        return 0
    path = Path(node.conf_dir) / f"ve-{args.file}.conf-sample"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        raise CliError(f"file {path} already exists", EXIT_EXISTS) from None
    except OSError as e:
        raise CliError(f"cannot create {path}: {e.strerror}", EXIT_FAILED) from None
    with os.fdopen(fd, "w") as f:
        f.write(text)
    print(f"Config {path} was created", file=sys.stderr)
    return 0


if __name__ == "__main__":
    main()
