"""vzpid: which container a host process belongs to (from its cgroup, /vzfleet/NODE/CTID)."""

from __future__ import annotations

import argparse
import re
import sys

PROG = "vzpid"
# a container's cgroup on every hierarchy: /vzfleet/<node>/<ctid>[/...]
CGROUP_RE = re.compile(r"^/vzfleet/([a-z0-9][a-z0-9-]{0,31})/([0-9]+)(?:/|$)")


def container_of(cgroup_text: str) -> tuple[str, int] | None:
    """(node, CTID) from the text of /proc/PID/cgroup; None for a host process."""
    for line in cgroup_text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        m = CGROUP_RE.match(parts[2])
        if m:
            return m.group(1), int(m.group(2))
    return None


def process_name(status_text: str) -> str:
    for line in status_text.splitlines():
        if line.startswith("Name:"):
            return line.split(None, 1)[1].strip() if len(line.split()) > 1 else ""
    return "?"


def build_parser() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        prog=PROG, description="Show which container each host PID belongs to (CTID 0: the host).",
        epilog="exit codes: 0 ok, 1 some PID does not exist, 2 invalid usage.")


def main(argv: list[str] | None = None) -> None:
    p = build_parser()
    p.add_argument("pids", nargs="+", metavar="PID", help="host process IDs")
    args = p.parse_args(argv)
    code = 0
    rows = []
    for text in args.pids:
        if not text.isdigit():
            p.error(f"invalid PID {text!r}")
        try:
            with open(f"/proc/{int(text)}/cgroup") as f:
                cg = f.read()
            with open(f"/proc/{int(text)}/status") as f:
                name = process_name(f.read())
        except OSError:
            print(f"{PROG}: no such process {text}", file=sys.stderr)
            code = 1
            continue
        where = container_of(cg)
        node, ctid = where if where is not None else ("-", 0)
        rows.append((text, str(ctid), name, node))
    if rows:
        print("Pid\tCTID\tName\tNode")
        for r in rows:
            print("\t".join(r))
    sys.exit(code)


if __name__ == "__main__":
    main()
