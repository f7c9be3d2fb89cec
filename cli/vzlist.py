"""vzlist: list containers, as in OpenVZ."""

from __future__ import annotations

import argparse
import sys

from cli import listing
from cli.client import EXIT_USAGE, CliError, add_agent_options, agent_for, call, default_root, resolve_socket, run_main
from vzapi import container_pb2 as pb

PROG = "vzlist"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, add_help=False,
        description="List containers (default: running ones, columns CTID NPROC STATUS IP_ADDR HOSTNAME).",
        epilog="exit codes: 0 ok, 2 invalid usage, 3 agent not running, 4 no such container.")
    p.add_argument("--help", action="help", help="show this help and exit")
    p.add_argument("-a", "--all", action="store_true", help="list all containers, running or not")
    p.add_argument("-S", "--stopped", action="store_true", help="list only stopped containers")
    p.add_argument("-o", "--output", metavar="FIELD,...", help="fields to show (see -L)")
    p.add_argument("-s", "--sort", metavar="[-]FIELD", help="sort by FIELD (-FIELD: descending)")
    p.add_argument("-H", "--no-header", action="store_true", help="do not print the header")
    p.add_argument("-t", "--no-trim", action="store_true", help="do not trim values (e.g. show every IP)")
    p.add_argument("-j", "--json", action="store_true", help="print JSON")
    p.add_argument("-1", "--ctid-only", dest="ctid_only", action="store_true", help="print only CTIDs")
    p.add_argument("-n", "--name", action="store_true", help="show names instead of host names")
    p.add_argument("-N", "--name-filter", metavar="NAME", help="only the container with this name")
    p.add_argument("-h", "--hostname", metavar="PATTERN", help="only host names matching the glob PATTERN")
    p.add_argument("-d", "--description", metavar="PATTERN", help="only descriptions matching PATTERN")
    p.add_argument("-L", "--list", action="store_true", help="list the available fields")
    add_agent_options(p, "list this node of the local cluster (`vzfleet up --nodes N`; base $VZFLEET_CLUSTER)")
    p.add_argument("ctids", nargs="*", metavar="CTID", help="only these containers")
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)

    def checked() -> int:
        try:
            return run(args)
        except listing.ListingError as e:
            raise CliError(str(e), EXIT_USAGE) from None

    run_main(PROG, checked)


def run(args: argparse.Namespace) -> int:
    with agent_for(resolve_socket(args.node, args.socket, default_root())) as agent:
        reply = call(agent.containers.List, pb.ListRequest(
            all=args.all or bool(args.ctids), stopped_only=args.stopped, ctids=args.ctids))
    known = dict(reply.field_help)
    if args.list:
        sys.stdout.write(listing.render_field_list(known))
        return 0
    fields = listing.parse_fields(args.output) if args.output else list(listing.DEFAULT_FIELDS)
    if args.name and not args.output:
        fields[-1] = "name"
    listing.check_fields(fields, known)
    if args.sort:
        listing.check_fields([args.sort.lstrip("-")], known)
    rows: list[listing.Row] = [dict(c.fields) for c in reply.containers]
    rows = listing.apply_filters(rows, listing.Filters(args.name_filter, args.hostname, args.description))
    rows = listing.sort_rows(rows, args.sort)
    if args.ctid_only:
        sys.stdout.write("".join(f"{r['ctid']:>10}\n" for r in rows))
    elif args.json:
        sys.stdout.write(listing.render_json(rows, fields if args.output else None))
    else:
        sys.stdout.write(listing.render_table(rows, fields, header=not args.no_header,
                                              trim=not args.no_trim))
    return 0


if __name__ == "__main__":
    main()
