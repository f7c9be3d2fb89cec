"""Errors are values with reasons: a closed set of kinds, each with a stable CLI exit code.

Every failure that reaches a user is a `VzError` whose message is one line saying what went wrong
and, where possible, what to do next. The gRPC layer turns the kind into a status code plus the
trailing metadata key ``vz-error``; the CLI turns it into the exit code documented in
docs/exit-codes.md.
"""

from __future__ import annotations

import enum


class Kind(enum.StrEnum):
    FAILED = "failed"  # the operation failed for a reason outside the other kinds
    INVALID = "invalid"  # bad input: option, value, CTID out of range, hostile archive
    NOT_FOUND = "not-found"  # no such container
    EXISTS = "exists"  # the CTID or name is already in use
    STATE = "state"  # wrong state: running when it must be stopped, or not running
    BUSY = "busy"  # another operation holds the container's lock
    TEMPLATE = "template"  # OS template missing or refused
    UNAVAILABLE = "unavailable"  # the agent cannot be reached (client side only)


class VzError(Exception):
    """A failure with a kind and a one-line, actionable message."""

    def __init__(self, kind: Kind, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message

    def __str__(self) -> str:
        return self.message
