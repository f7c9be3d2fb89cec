"""Pure: vzlist's table and JSON rendering from the agent's field maps."""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

Row = Mapping[str, str]

DEFAULT_FIELDS = ("ctid", "numproc", "status", "ip", "hostname")
# (header, width, right-aligned) as OpenVZ's vzlist prints them; others: upper-cased name, 10, left
COLUMNS: dict[str, tuple[str, int, bool]] = {
    "ctid": ("CTID", 10, True),
    "numproc": ("NPROC", 10, True),
    "status": ("STATUS", 9, False),
    "ip": ("IP_ADDR", 15, False),
    "hostname": ("HOSTNAME", 20, False),
    "name": ("NAME", 12, False),
    "ostemplate": ("OSTEMPLATE", 20, False),
    "private": ("PRIVATE", 30, False),
    "root": ("ROOT", 30, False),
    "description": ("DESCRIPTION", 20, False),
    "onboot": ("ONBOOT", 6, False),
    "bootorder": ("BOOTORDER", 9, True),
    "disabled": ("DISABLED", 8, False),
    "uptime": ("UPTIME", 12, True),
    "initpid": ("INITPID", 8, True),
    "cpuunits": ("CPUUNITS", 8, True),
    "cpulimit": ("CPULIM", 6, True),
    "cpus": ("CPUS", 4, True),
    "mounted": ("MOUNTED", 7, False),
    "node": ("NODE", 10, False),
}
NUMERIC = frozenset({"ctid", "numproc", "bootorder", "initpid", "cpuunits", "cpulimit", "cpus"})
# beancounters (held) and their .m maxheld, .b barrier, .l limit, .f failcnt: numbers or "unlimited"
BEANCOUNTERS = frozenset({
    "kmemsize", "lockedpages", "privvmpages", "shmpages", "numproc", "physpages", "vmguarpages",
    "oomguarpages", "numtcpsock", "numflock", "numpty", "numsiginfo", "tcpsndbuf", "tcprcvbuf",
    "othersockbuf", "dgramrcvbuf", "numothersock", "dcachesize", "numfile", "numiptent", "swappages"})
NUMERIC = NUMERIC | BEANCOUNTERS | {f"{b}.{s}" for b in BEANCOUNTERS for s in "mblf"}


class ListingError(ValueError):
    pass


@dataclass(frozen=True)
class Filters:
    name: str | None = None
    hostname: str | None = None  # glob
    description: str | None = None  # glob


def check_fields(fields: Sequence[str], known: Mapping[str, str]) -> None:
    for f in fields:
        if f not in known:
            raise ListingError(f"unknown field {f!r}; `vzlist -L` lists the fields")


def parse_fields(text: str) -> list[str]:
    fields = [f.strip() for f in text.split(",") if f.strip()]
    if not fields:
        raise ListingError("-o needs at least one field name")
    return fields


def apply_filters(rows: Sequence[Row], flt: Filters) -> list[Row]:
    out = []
    for r in rows:
        if flt.name is not None and r.get("name") != flt.name:
            continue
        if flt.hostname is not None and not fnmatch.fnmatchcase(r.get("hostname", ""), flt.hostname):
            continue
        if flt.description is not None and not fnmatch.fnmatchcase(r.get("description", ""), flt.description):
            continue
        out.append(r)
    return out


def sort_rows(rows: Sequence[Row], key: str | None) -> list[Row]:
    if not key:
        return sorted(rows, key=lambda r: int(r.get("ctid", "0")))
    reverse = key.startswith("-")
    field = key.lstrip("-")

    def k(r: Row) -> tuple[int, float, str]:
        v = r.get(field, "-")
        try:
            return (0, float(v), "")
        except ValueError:
            return (1, 0.0, v)

    return sorted(rows, key=k, reverse=reverse)


def _cell(field: str, value: str, trim: bool) -> str:
    if field == "ip" and trim and " " in value:
        return value.split()[0]
    return value


def render_table(rows: Sequence[Row], fields: Sequence[str], *, header: bool = True, trim: bool = True) -> str:
    lines = []
    cols = [COLUMNS.get(f, (f.upper(), 10, f in NUMERIC)) for f in fields]

    def fmt(values: Sequence[str]) -> str:
        parts = []
        for i, ((_, width, right), v) in enumerate(zip(cols, values, strict=True)):
            last = i == len(cols) - 1
            if right:
                parts.append(v.rjust(width))
            else:
                parts.append(v if last else v.ljust(width))
        return " ".join(parts).rstrip()

    if header:
        lines.append(fmt([c[0] for c in cols]))
    for r in rows:
        lines.append(fmt([_cell(f, r.get(f, "-"), trim) for f in fields]))
    return "\n".join(lines) + ("\n" if lines else "")


def _json_value(field: str, value: str) -> object:
    if value == "-":
        return [] if field == "ip" else None
    if field == "ip":
        return value.split()
    if field in NUMERIC:
        try:
            return int(value)
        except ValueError:
            return value
    if value in ("yes", "no") and field in ("onboot", "disabled", "mounted"):
        return value == "yes"
    return value


def render_json(rows: Sequence[Row], fields: Sequence[str] | None) -> str:
    out = []
    for r in rows:
        names = fields if fields else sorted(r)
        out.append({f: _json_value(f, r.get(f, "-")) for f in names})
    return json.dumps(out, indent=2) + "\n"


def render_field_list(known: Mapping[str, str]) -> str:
    width = max((len(k) for k in known), default=0)
    return "".join(f"{k.ljust(width)}  {known[k]}\n" for k in sorted(known))
