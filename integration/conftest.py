"""Fixtures of the privileged integration suite: one real node agent for the session, and
containers that are always destroyed, whatever the test did."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from integration.harness import Containers, Node, cleanup_stale, venv_bin

HERE = Path(__file__).resolve().parent
BUSYBOX_STATIC = (Path("/bin/busybox"), Path("/usr/bin/busybox"))


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "integration tests need root (they run real runc containers, namespaces and cgroups)"
    if shutil.which("runc") is None:
        return "runc is not installed (`make install`, or apt-get install runc)"
    if not any(p.exists() for p in BUSYBOX_STATIC):
        return "busybox-static is not installed (apt-get install busybox-static)"
    if not (venv_bin() / "vzfleet-agent").exists():
        return f"vzfleet-agent is not installed in {venv_bin()} (`make install`)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = _skip_reason()
    if reason is None:
        return
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def node() -> Iterator[Node]:
    """A running node agent with the busybox template, for the whole session.

    At teardown the node is purged and must leave nothing behind (no netns, runc container,
    mount or cgroup of its own); the session fails loudly otherwise. Its root is deleted.
    """
    stale = cleanup_stale()
    if stale:
        pytest.fail("state left by an earlier run could not be removed:\n  " + "\n  ".join(stale), pytrace=False)
    n = Node()
    try:
        n.start()
        n.cli("vzfleet", "--root", str(n.root), "template", "build", "busybox")
        yield n
    finally:
        problems = n.teardown()
        if problems:
            pytest.fail(f"{n} was not clean at teardown:\n  " + "\n  ".join(problems), pytrace=False)


@pytest.fixture
def cts(node: Node) -> Iterator[Containers]:
    """Per-test containers on the session node; every one is destroyed after the test."""
    containers = Containers(node)
    try:
        yield containers
    finally:
        if not node.agent_running:  # a test that crashed the agent and failed before restarting it
            node.start()
        problems = containers.destroy_all()
        if problems:
            pytest.fail("cleanup of the test's containers failed:\n" + "\n".join(problems), pytrace=False)
