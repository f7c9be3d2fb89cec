"""The CLI's connection to an agent, and the one place where errors become exit codes.

Exit codes are stable and documented in docs/exit-codes.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import grpc

from vzapi import container_pb2 as pb
from vzapi import container_pb2_grpc as pb_grpc

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_NOT_FOUND = 4
EXIT_EXISTS = 5
EXIT_STATE = 6
EXIT_BUSY = 7
EXIT_TEMPLATE = 8

# error kind (trailing metadata "vz-error" set by the agent) -> exit code
KIND_EXIT: dict[str, int] = {
    "failed": EXIT_FAILED,
    "invalid": EXIT_USAGE,
    "not-found": EXIT_NOT_FOUND,
    "exists": EXIT_EXISTS,
    "state": EXIT_STATE,
    "busy": EXIT_BUSY,
    "template": EXIT_TEMPLATE,
    "unavailable": EXIT_UNAVAILABLE,
}

T = TypeVar("T")


class CliError(Exception):
    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


def default_root() -> Path:
    return Path(os.environ.get("VZFLEET_ROOT", "/"))


def socket_path(root: Path | None = None, explicit: str | None = None) -> Path:
    if explicit:
        return Path(explicit)
    if env := os.environ.get("VZFLEET_SOCKET"):
        return Path(env)
    return (root or default_root()) / "run/vzfleet/agent.sock"


# The local cluster of simulated nodes (cli/localcluster.py) records itself in BASE/cluster.json;
# every command's `--node NAME` finds the node's agent socket there.
DEFAULT_CLUSTER_BASE = Path("/var/lib/vzfleet/cluster")
CLUSTER_STATE_FILE = "cluster.json"
NO_CLUSTER_HINT = "no local cluster: run `vzfleet up --nodes N`"


def cluster_base(explicit: Path | None = None) -> Path:
    """The local cluster's base directory: explicit, else $VZFLEET_CLUSTER, else the demo default."""
    if explicit is not None:
        return explicit
    if env := os.environ.get("VZFLEET_CLUSTER"):
        return Path(env)
    return DEFAULT_CLUSTER_BASE


def read_cluster_state(base: Path) -> dict[str, Any] | None:
    """The recorded state of the local cluster at base, or None when there is none."""
    path = base / CLUSTER_STATE_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise CliError(f"cannot read the local cluster state {path}: {e}", EXIT_FAILED) from None
    if not isinstance(data, dict) or not isinstance(data.get("nodes"), list):
        raise CliError(f"{path} is not a vzfleet cluster state file", EXIT_FAILED)
    return data


def node_socket(node: str, base: Path | None = None) -> Path:
    """The agent socket of local-cluster node `node`.

    Exit 3 when there is no local cluster, exit 2 (listing the nodes) when the node is unknown.
    """
    state = read_cluster_state(cluster_base(base))
    if state is None:
        raise CliError(NO_CLUSTER_HINT, EXIT_UNAVAILABLE)
    names: list[str] = []
    for entry in state["nodes"]:
        if isinstance(entry, dict) and isinstance(entry.get("name"), str):
            if entry["name"] == node and isinstance(entry.get("socket"), str):
                return Path(entry["socket"])
            names.append(entry["name"])
    raise CliError(f"unknown node {node!r}; the local cluster's nodes are: {' '.join(names) or '(none)'}",
                   EXIT_USAGE)


def cluster_nodes(base: Path | None = None) -> list[dict[str, Any]]:
    """The local cluster's node entries (name, address, socket, ...); [] without a cluster."""
    state = read_cluster_state(cluster_base(base))
    if state is None:
        return []
    return [e for e in state["nodes"] if isinstance(e, dict) and isinstance(e.get("name"), str)]


def resolve_socket(node: str | None, explicit_socket: str | None, root: Path | None = None) -> Path:
    """The agent socket a command talks to: a local-cluster node's (`--node`), else `socket_path()`."""
    if node:
        if explicit_socket:
            raise CliError("give either --node or --socket, not both", EXIT_USAGE)
        return node_socket(node)
    return socket_path(root or default_root(), explicit_socket)


class Agent:
    """Stubs of one agent, over its unix socket."""

    def __init__(self, sock: Path) -> None:
        self.sock = sock
        if not sock.exists():
            raise CliError(f"the vzfleet agent is not running (no socket at {sock}); "
                           f"start it with `vzfleet up`", EXIT_UNAVAILABLE)
        if not os.access(sock, os.R_OK | os.W_OK):
            raise CliError(f"permission denied on {sock}: run this command as root", EXIT_UNAVAILABLE)
        self.channel = grpc.insecure_channel(f"unix://{sock}",
                                             options=[("grpc.max_receive_message_length", 32 << 20)])
        self.containers = pb_grpc.ContainerServiceStub(self.channel)
        self.templates = pb_grpc.TemplateServiceStub(self.channel)
        self.agent = pb_grpc.AgentServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()


def error_from_rpc(e: grpc.RpcError) -> CliError:
    code = e.code() if isinstance(e, grpc.Call) else None
    details = e.details() if isinstance(e, grpc.Call) else str(e)
    kind = ""
    if isinstance(e, grpc.Call):
        for key, value in e.trailing_metadata() or ():
            if key == "vz-error":
                kind = str(value)
    if code == grpc.StatusCode.UNAVAILABLE and not kind:
        return CliError(f"cannot reach the vzfleet agent ({details}); is it running? (`vzfleet up`)",
                        EXIT_UNAVAILABLE)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return CliError("the agent did not answer in time; the operation may still be running "
                        "(check `vzlist -a`)", EXIT_FAILED)
    return CliError(details or str(code), KIND_EXIT.get(kind, EXIT_FAILED))


def call(fn: Callable[..., T], request: object, timeout: float = 120.0) -> T:
    """One unary RPC; RPC errors become CliError with the documented exit code."""
    try:
        return fn(request, timeout=timeout)
    except grpc.RpcError as e:
        raise error_from_rpc(e) from None


@contextmanager
def agent_for(sock: Path) -> Iterator[Agent]:
    agent = Agent(sock)
    try:
        yield agent
    except grpc.RpcError as e:
        raise error_from_rpc(e) from None
    finally:
        agent.close()


def run_main(prog: str, fn: Callable[[], int], *, interrupted: str = "") -> NoReturn:
    """Every command's main: run it, turn CliError into its message and exit code, ^C into 130."""
    try:
        sys.exit(fn())
    except CliError as e:
        die(prog, e)
    except KeyboardInterrupt:
        if interrupted:
            print(f"{prog}: interrupted; {interrupted}", file=sys.stderr)
        sys.exit(130)


def die(prog: str, err: CliError) -> NoReturn:
    print(f"{prog}: {err}", file=sys.stderr)
    sys.exit(err.code)


def ct(ref: str) -> pb.CtRef:
    return pb.CtRef(ctid=ref)


def add_agent_options(p: argparse.ArgumentParser,
                      node_help: str = "a node of the local cluster (`vzfleet up --nodes N`; base $VZFLEET_CLUSTER)"
                      ) -> None:
    """--socket and --node: which agent a command talks to (resolved by find_socket)."""
    p.add_argument("--socket", help="agent socket (default: $VZFLEET_ROOT/run/vzfleet/agent.sock)")
    p.add_argument("--node", metavar="NAME", help=node_help)
