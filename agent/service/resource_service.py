"""gRPC ResourceService: beancounters of the node's containers and the node's capacity.

Translation only: the accounting is agent.beancounters, the listing the container manager's.
"""

from __future__ import annotations

import asyncio
from typing import Any, TypeAlias

import grpc

from agent import beancounters
from agent.beancounters import Accountant, Beancounter, NodeFacts
from agent.containers import ContainerManager, Info
from agent.service.errors import unary
from vzapi import resources_pb2 as pb
from vzapi import resources_pb2_grpc as pb_grpc

Ctx: TypeAlias = Any  # grpc.aio.ServicerContext


def bc_to_pb(b: Beancounter) -> pb.Beancounter:
    msg = pb.Beancounter(resource=b.resource, held=b.held, maxheld=b.maxheld, failcnt=b.failcnt, unit=b.unit)
    if b.barrier is not None:
        msg.barrier = b.barrier
    if b.limit is not None:
        msg.limit = b.limit
    return msg


def facts_to_pb(f: NodeFacts) -> pb.NodeResources:
    return pb.NodeResources(
        node=f.node, ram_bytes=f.ram_bytes, swap_bytes=f.swap_bytes, cpus=f.cpus, bogomips=f.bogomips,
        cpu_power=f.cpu_power, ve0_cpuunits=f.ve0_cpuunits, threads_max=f.threads_max, pid_max=f.pid_max,
        disk_total_bytes=f.disk_total_bytes, disk_free_bytes=f.disk_free_bytes, inodes_total=f.inodes_total,
        inodes_free=f.inodes_free, private_dir=f.private_dir, conf_dir=f.conf_dir,
        cgroup_version=f.cgroup_version, nofile_hard=f.nofile_hard, memlock_hard=f.memlock_hard,
    )


class ResourceService(pb_grpc.ResourceServiceServicer):
    def __init__(self, manager: ContainerManager, accountant: Accountant) -> None:
        self.m = manager
        self.acct = accountant

    def _container(self, info: Info) -> pb.ContainerResources:
        cfg = info.config
        rows = self.acct.beancounters(info.ctid, cfg, info.init_pid)
        return pb.ContainerResources(
            ctid=info.ctid, status=info.status, beancounters=[bc_to_pb(b) for b in rows],
            cpuunits=cfg.cpuunits or 1000, cpulimit=cfg.cpulimit_percent, cpus=cfg.cpus or 0)

    @unary
    async def Node(self, request: pb.NodeResourcesRequest, context: Ctx) -> pb.NodeResources:
        facts = await asyncio.to_thread(beancounters.read_node_facts, self.m.layout)
        return facts_to_pb(facts)

    @unary
    async def Containers(self, request: pb.ResourcesRequest, context: Ctx) -> pb.ResourcesReply:
        infos = await self.m.list_containers(include_stopped=request.all, stopped_only=False,
                                             refs=list(request.ctids))
        containers = await asyncio.to_thread(lambda: [self._container(i) for i in infos])
        facts = await asyncio.to_thread(beancounters.read_node_facts, self.m.layout)
        return pb.ResourcesReply(containers=containers, node=facts_to_pb(facts))


def register(server: grpc.aio.Server, manager: ContainerManager) -> Accountant:
    """Install the node's accountant (vzlist's beancounter fields use it) and serve ResourceService."""
    accountant = Accountant(manager.layout)
    beancounters.install(accountant)
    pb_grpc.add_ResourceServiceServicer_to_server(ResourceService(manager, accountant), server)
    return accountant
