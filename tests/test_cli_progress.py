"""The CLI's progress lines: meters in place on a terminal, sparse lines elsewhere."""

from __future__ import annotations

import io

from cli import progress


def test_human_size() -> None:
    assert [progress.human_size(n) for n in (0, 1023, 1024, 5 << 20, 3 << 30)] == [
        "0B", "1023B", "1.0KiB", "5.0MiB", "3.0GiB"]


def test_meter_text() -> None:
    text = progress.meter_text("presync", "copying the filesystem", 1 << 30, 4 << 30, 10.0)
    assert text == "  presync: copying the filesystem  25% 1.0GiB of 4.0GiB, 102.4MiB/s"


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_a_meter_is_rewritten_in_place_then_cleared_by_the_next_line() -> None:
    err = Tty()
    lines = progress.StageLines(err)
    lines.event("presync", "copying", 10, 100)
    lines.event("presync", "copying", 50, 100)
    lines.event("dump", "freezing")
    out = err.getvalue()
    assert out.count("\r") >= 3 and "  50%" in out
    assert out.endswith("\r\x1b[K     dump: freezing\n")


def test_without_a_terminal_meters_are_sparse_and_messages_are_lines() -> None:
    err = io.StringIO()
    lines = progress.StageLines(err)
    for done in range(0, 100, 10):
        lines.event("presync", "copying", done, 100)
    lines.event("images", "images sent", 16 << 10, 16 << 10)
    out = err.getvalue().splitlines()
    assert len(out) == 2 and "\r" not in err.getvalue()
    assert out[1] == "   images: images sent [16.0KiB of 16.0KiB]"
