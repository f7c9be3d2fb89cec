"""gRPC MigrationControl (clients, local socket) and MigrationPeer (other agents, TCP + mTLS)."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncIterator
from typing import Any, TypeAlias

from agent.errors import Kind, VzError
from agent.migration.destination import Destination
from agent.migration.source import Source, facts_from_pb, facts_pb
from agent.service.errors import streaming, unary
from vzapi import container_pb2 as cpb
from vzapi import migration_pb2 as pb
from vzapi import migration_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

Ctx: TypeAlias = Any
MAX_IMAGE_STREAM = 64 << 30


class MigrationControl(pb_grpc.MigrationControlServicer):
    def __init__(self, source: Source) -> None:
        self.source = source

    @streaming
    async def Migrate(self, request: pb.MigrateRequest, context: Ctx) -> AsyncIterator[pb.MigrateEvent]:
        if not request.destination:
            raise VzError(Kind.INVALID, "no destination given")
        async for event in self.source.migrate(request):
            yield event


class MigrationPeer(pb_grpc.MigrationPeerServicer):
    def __init__(self, dest: Destination) -> None:
        self.d = dest

    @unary
    async def Prepare(self, request: pb.PrepareRequest, context: Ctx) -> pb.PrepareReply:
        if not request.id.isalnum() or len(request.id) > 64:
            raise VzError(Kind.INVALID, "invalid migration id")
        dst, checks, ok, url, password = await self.d.prepare(
            request.id, request.ctid, request.config, facts_from_pb(request.source), online=request.online,
            check_only=request.check_only, private_bytes=request.private_bytes, skip=list(request.skip_checks),
            grace=(request.disk_grace_blocks_since, request.disk_grace_inodes_since))
        return pb.PrepareReply(destination=facts_pb(dst), checks=checks, ok=ok, rsync_url=url,
                               rsync_password=password)

    @unary
    async def Images(self, request_iterator: AsyncIterator[pb.ImageChunk], context: Ctx) -> cpb.Empty:
        mid, ctid_file, manifest, total = "", None, None, 0
        fd = None
        path = None
        try:
            async for chunk in request_iterator:
                if not mid:
                    mid = chunk.id
                    inc = next((i for i in self.d.active.values() if i.j.id == mid), None)
                    if inc is None:
                        raise VzError(Kind.STATE, f"no migration {mid!r} is prepared here")
                    ctid_file = inc.j.ctid
                    path = self.d.work_dir(ctid_file) / "images.tar.zst"
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                if chunk.id != mid:
                    raise VzError(Kind.INVALID, "image stream mixes migrations")
                if chunk.data:
                    total += len(chunk.data)
                    if total > MAX_IMAGE_STREAM:
                        raise VzError(Kind.INVALID, "image stream too large")
                    assert fd is not None
                    os.write(fd, chunk.data)
                if chunk.last:
                    manifest = dict(chunk.manifest)
        finally:
            if fd is not None:
                os.close(fd)
        if path is None or ctid_file is None:
            raise VzError(Kind.INVALID, "empty image stream")
        t = time.monotonic()
        await self.d.receive_images(mid, ctid_file, path, manifest or {})
        log.info("migration %s: %d bytes of images received, unpacked and verified in %.3f s", mid, total,
                 time.monotonic() - t)
        return cpb.Empty()

    @unary
    async def Restore(self, request: pb.MigrationRef, context: Ctx) -> pb.RestoreReply:
        pid, secs = await self.d.restore(request.id, request.ctid, start=request.start, lazy=request.lazy,
                                         page_server=request.page_server)
        return pb.RestoreReply(init_pid=pid, seconds=secs)

    @unary
    async def Commit(self, request: pb.MigrationRef, context: Ctx) -> cpb.Empty:
        await self.d.commit(request.id, request.ctid)
        return cpb.Empty()

    @unary
    async def Abort(self, request: pb.MigrationRef, context: Ctx) -> cpb.Empty:
        await self.d.abort(request.id, request.ctid, keep_dst=request.keep_dst)
        return cpb.Empty()

    @unary
    async def State(self, request: pb.MigrationRef, context: Ctx) -> pb.MigrateEvent:
        return pb.MigrateEvent(stage=self.d.state(request.id, request.ctid))
