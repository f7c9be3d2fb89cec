"""vzlist's output: OpenVZ's columns, sorting, filters and JSON."""

from __future__ import annotations

import json

import pytest

from cli import listing

ROWS = [
    {"ctid": "102", "numproc": "3", "status": "stopped", "ip": "-", "hostname": "db", "name": "db1"},
    {"ctid": "101", "numproc": "12", "status": "running", "ip": "10.0.0.5 10.0.0.6", "hostname": "web1",
     "name": "web"},
]


def test_default_table_has_openvz_columns_and_alignment() -> None:
    out = listing.render_table(listing.sort_rows(ROWS, None), listing.DEFAULT_FIELDS)
    lines = out.splitlines()
    assert lines[0] == "      CTID      NPROC STATUS    IP_ADDR         HOSTNAME"
    assert lines[1] == "       101         12 running   10.0.0.5        web1"
    assert lines[2] == "       102          3 stopped   -               db"


def test_no_trim_shows_every_ip_and_no_header_drops_the_header() -> None:
    out = listing.render_table(ROWS[1:], ["ctid", "ip"], header=False, trim=False)
    assert out == "       101 10.0.0.5 10.0.0.6\n"


@pytest.mark.parametrize(("key", "expected"), [
    ("ctid", ["101", "102"]), ("-ctid", ["102", "101"]), ("numproc", ["102", "101"]),
    ("hostname", ["102", "101"]), ("-hostname", ["101", "102"]),
])
def test_sort_numeric_and_text(key: str, expected: list[str]) -> None:
    assert [r["ctid"] for r in listing.sort_rows(ROWS, key)] == expected


def test_filters_by_name_and_hostname_glob() -> None:
    assert [r["ctid"] for r in listing.apply_filters(ROWS, listing.Filters(name="db1"))] == ["102"]
    assert [r["ctid"] for r in listing.apply_filters(ROWS, listing.Filters(hostname="we*"))] == ["101"]


def test_json_types() -> None:
    data = json.loads(listing.render_json(ROWS[1:], ["ctid", "numproc", "ip", "hostname"]))
    assert data == [{"ctid": 101, "numproc": 12, "ip": ["10.0.0.5", "10.0.0.6"], "hostname": "web1"}]
    empty_ip = json.loads(listing.render_json(ROWS[:1], ["ip"]))
    assert empty_ip == [{"ip": []}]


def test_unknown_field_is_refused_with_a_hint() -> None:
    with pytest.raises(listing.ListingError, match="vzlist -L"):
        listing.check_fields(["ctid", "bogus"], {"ctid": "id"})


def test_empty_output_list_is_refused() -> None:
    with pytest.raises(listing.ListingError):
        listing.parse_fields(" , ")
