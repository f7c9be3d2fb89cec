"""vzctl's parameter parsing (the agent validates names and values; the CLI only splits them)."""

from __future__ import annotations

import pytest

from cli.client import CliError
from cli.vzctl import _split_params, exec_command, format_status
from vzapi import container_pb2 as pb


@pytest.mark.parametrize(("argv", "expected"), [
    (["--hostname", "web1"], [("hostname", "web1")]),
    (["--hostname=web1", "--ram", "1G"], [("hostname", "web1"), ("ram", "1G")]),
    (["--stop_timeout", "5"], [("stop-timeout", "5")]),
    (["--ipadd", "10.0.0.1", "--ipadd", "10.0.0.2"], [("ipadd", "10.0.0.1"), ("ipadd", "10.0.0.2")]),
    (["--reset_ub"], [("reset-ub", "yes")]),
    (["--reset_ub", "yes"], [("reset-ub", "yes")]),
    (["--reset_ub", "--ram", "1G"], [("reset-ub", "yes"), ("ram", "1G")]),
])
def test_params_keep_their_order(argv: list[str], expected: list[tuple[str, str]]) -> None:
    assert _split_params(argv) == expected


@pytest.mark.parametrize("argv", [["web1"], ["--hostname"], ["-x", "1"]])
def test_malformed_params_are_usage_errors(argv: list[str]) -> None:
    with pytest.raises(CliError) as err:
        _split_params(argv)
    assert err.value.code == 2


def test_exec_forms() -> None:
    assert exec_command(["hostname"]) == (["/bin/sh", "-c", "hostname"], b"")
    assert exec_command(["sh", "-c", "exit 3"]) == (["sh", "-c", "exit 3"], b"")
    assert exec_command(["--", "ls", "-l"]) == (["ls", "-l"], b"")
    with pytest.raises(CliError):
        exec_command([])


def test_status_line_is_openvz_shaped() -> None:
    st = pb.StatusReply(ctid=101, exists=True, mounted=True, running=True)
    assert format_status(st) == "CTID 101 exist mounted running"
    gone = pb.StatusReply(ctid=101, exists=False, mounted=False, running=False)
    assert format_status(gone) == "CTID 101 deleted unmounted down"
    assert format_status(pb.StatusReply(ctid=5, exists=True, suspended=True)).endswith("down suspended")
