"""The agent's view of a node and its containers, for the capacity tools (vzcalc, vzmemcheck, ...)."""

from __future__ import annotations

from collections.abc import Sequence

from cli import capacity
from cli.client import agent_for, call, default_root, resolve_socket
from vzapi import resources_pb2 as rpb
from vzapi import resources_pb2_grpc as rpb_grpc


def fetch(node: str | None, socket: str | None, ctids: Sequence[str] = (), *,
          all_containers: bool = False) -> tuple[capacity.Node, list[capacity.Container]]:
    """(node facts, containers sorted by CTID); running ones only unless all_containers or ctids."""
    with agent_for(resolve_socket(node, socket, default_root())) as agent:
        reply = call(rpb_grpc.ResourceServiceStub(agent.channel).Containers,
                     rpb.ResourcesRequest(ctids=list(ctids), all=all_containers))
    cts = sorted((capacity.container_from_pb(c) for c in reply.containers), key=lambda c: c.ctid)
    return capacity.node_from_pb(reply.node), cts
