"""Named failure points for tests: VZFLEET_FAILPOINTS="name[=action],..." in the agent's environment.

Actions: error (default) raises VzError; kill SIGKILLs the agent itself; corrupt is checked by the
code that owns the point (corrupt the data it sends). Unset in production: every call is a no-op.
"""

from __future__ import annotations

import logging
import os
import signal

from agent.errors import Kind, VzError

log = logging.getLogger(__name__)


def _points() -> dict[str, str]:
    spec = os.environ.get("VZFLEET_FAILPOINTS", "")
    out = {}
    for item in spec.split(","):
        name, _, action = item.strip().partition("=")
        if name:
            out[name] = action or "error"
    return out


def action(name: str) -> str | None:
    return _points().get(name)


def hit(name: str) -> None:
    """Fail here if the failpoint `name` is armed."""
    act = action(name)
    if act is None:
        return
    log.warning("failpoint %s: %s", name, act)
    if act == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if act == "error":
        raise VzError(Kind.FAILED, f"failpoint {name} triggered")
