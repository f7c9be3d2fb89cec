"""gRPC StorageService (vzquota) and BackupService (vzdump): translate messages, nothing else."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, TypeAlias

from agent.backup import dump as backup_dump
from agent.backup import restore as backup_restore
from agent.containers import ContainerManager
from agent.service.errors import streaming, unary
from agent.storage import quota
from vzapi import storage_pb2 as pb
from vzapi import storage_pb2_grpc as pb_grpc

Ctx: TypeAlias = Any  # grpc.aio.ServicerContext (grpc ships no type hints)


def _resource(r: quota.Resource) -> pb.QuotaResource:
    return pb.QuotaResource(usage=r.usage, softlimit=r.soft, hardlimit=r.hard if r.hard is not None else 0,
                            effective_hardlimit=r.effective_hard, grace_expires=r.grace_expires,
                            unlimited=r.hard is None)


def _progress(p: backup_dump.Progress) -> pb.BackupProgress:
    msg = pb.BackupProgress(phase=p.phase, message=p.message, bytes_done=p.done, bytes_total=p.total,
                            files_done=p.files)
    if (r := p.result) is not None:
        msg.result.CopyFrom(pb.BackupResult(ctid=r.ctid, archive=r.archive, size=r.size, duration_s=r.duration_s,
                                            frozen_s=r.frozen_s, removed=list(r.removed), mode=r.mode,
                                            files=r.files, bytes=r.bytes))
    return msg


class StorageService(pb_grpc.StorageServiceServicer):
    def __init__(self, manager: ContainerManager) -> None:
        self.m = manager

    @unary
    async def QuotaStat(self, request: pb.QuotaStatRequest, context: Ctx) -> pb.QuotaStatReply:
        s = await quota.stat(self.m.layout, self.m.resolve(request.ctid))
        return pb.QuotaStatReply(ctid=s.ctid, layout=quota.IMAGE_LAYOUT, mounted=s.mounted, image=str(s.image),
                                 image_size=s.image_size, blocks=_resource(s.blocks), inodes=_resource(s.inodes),
                                 quotatime=s.quotatime, notes=list(s.notes), now=s.now)


class BackupService(pb_grpc.BackupServiceServicer):
    def __init__(self, manager: ContainerManager) -> None:
        self.m = manager

    @streaming
    async def Dump(self, request: pb.DumpRequest, context: Ctx) -> AsyncIterator[pb.BackupProgress]:
        req = backup_dump.DumpRequest(ref=request.ctid, dumpdir=request.dumpdir, compress=request.compress,
                                      mode=request.mode, exclude_path=list(request.exclude_path),
                                      bwlimit_kbps=request.bwlimit_kbps, maxfiles=request.maxfiles,
                                      run_log=request.run_log)
        async for p in backup_dump.dump(self.m, req):
            yield _progress(p)

    @streaming
    async def Restore(self, request: pb.RestoreBackupRequest, context: Ctx) -> AsyncIterator[pb.BackupProgress]:
        async for p in backup_restore.restore(self.m, request.archive, request.ctid, force=request.force):
            yield _progress(p)


def register(server: Any, manager: ContainerManager) -> None:
    """Serve StorageService (vzquota) and BackupService (vzdump) on the agent's server."""
    pb_grpc.add_StorageServiceServicer_to_server(StorageService(manager), server)
    pb_grpc.add_BackupServiceServicer_to_server(BackupService(manager), server)
