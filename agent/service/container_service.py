"""gRPC ContainerService and TemplateService: translate messages, nothing else.

Every request is validated by the manager before it touches the system; this layer only maps
messages to calls and VzError to gRPC statuses.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any, TypeAlias

from agent import __version__
from agent.containers import ContainerManager, Info
from agent.errors import Kind, VzError
from agent.runtime.session import PtySession, run_streaming
from agent.service.errors import streaming, unary
from agent.service.fields import FIELD_HELP, render_fields
from agent.storage.archive import ArchiveError
from agent.storage.templates import TemplateBuildError
from vzapi import container_pb2 as pb
from vzapi import container_pb2_grpc as pb_grpc

Ctx: TypeAlias = Any  # grpc.aio.ServicerContext (grpc ships no type hints)
MAX_ARGV = 4096
ENTER_SHELL = ["/bin/sh", "-c", "if command -v bash >/dev/null 2>&1; then exec bash -l; else exec sh -l; fi"]


def to_pb(info: Info, node: str) -> pb.ContainerInfo:
    cfg = info.config
    return pb.ContainerInfo(
        ctid=info.ctid, name=cfg.name or "", hostname=cfg.hostname or "", status=info.status,
        mounted=info.mounted, ip_addresses=list(cfg.ip_addresses), ostemplate=cfg.ostemplate or "",
        init_pid=info.init_pid, nproc=info.nproc, fields=render_fields(info, node), node=node,
    )


def _params(params: Any) -> list[tuple[str, str]]:
    return [(p.name, p.value) for p in params]


def _check_argv(argv: list[str]) -> list[str]:
    if not argv:
        raise VzError(Kind.INVALID, "no command given")
    if len(argv) > MAX_ARGV or any("\0" in a for a in argv):
        raise VzError(Kind.INVALID, "invalid command line (too long, or contains NUL)")
    return argv


class ContainerService(pb_grpc.ContainerServiceServicer):
    def __init__(self, manager: ContainerManager) -> None:
        self.m = manager
        self.node = manager.layout.node

    @unary
    async def Create(self, request: pb.CreateRequest, context: Ctx) -> pb.ContainerInfo:
        info = await self.m.create(request.ctid, request.ostemplate, request.config, _params(request.params))
        return to_pb(info, self.node)

    @unary
    async def Start(self, request: pb.StartRequest, context: Ctx) -> pb.ContainerInfo:
        return to_pb(await self.m.start(request.ct.ctid, wait=request.wait, force=request.force), self.node)

    @unary
    async def Stop(self, request: pb.StopRequest, context: Ctx) -> pb.ContainerInfo:
        return to_pb(await self.m.stop(request.ct.ctid, fast=request.fast, timeout=request.timeout), self.node)

    @unary
    async def Restart(self, request: pb.StopRequest, context: Ctx) -> pb.ContainerInfo:
        info = await self.m.restart(request.ct.ctid, fast=request.fast, timeout=request.timeout)
        return to_pb(info, self.node)

    @unary
    async def Destroy(self, request: pb.DestroyRequest, context: Ctx) -> pb.Empty:
        await self.m.destroy(request.ct.ctid)
        return pb.Empty()

    @unary
    async def Status(self, request: pb.CtRef, context: Ctx) -> pb.StatusReply:
        st = await self.m.status(request.ctid)
        return pb.StatusReply(ctid=st.ctid, exists=st.exists, mounted=st.mounted, running=st.running,
                              suspended=st.suspended)

    @unary
    async def List(self, request: pb.ListRequest, context: Ctx) -> pb.ListReply:
        infos = await self.m.list_containers(include_stopped=request.all, stopped_only=request.stopped_only,
                                  refs=list(request.ctids))
        return pb.ListReply(containers=[to_pb(i, self.node) for i in infos], field_help=FIELD_HELP)

    @unary
    async def Set(self, request: pb.SetRequest, context: Ctx) -> pb.SetReply:
        res = await self.m.set_params(request.ct.ctid, _params(request.params), save=request.save,
                               setmode=request.setmode)
        return pb.SetReply(container=to_pb(res.info, self.node), notes=res.notes)

    @unary
    async def Mount(self, request: pb.CtRef, context: Ctx) -> pb.ContainerInfo:
        return to_pb(await self.m.mount(request.ctid), self.node)

    @unary
    async def Umount(self, request: pb.CtRef, context: Ctx) -> pb.ContainerInfo:
        return to_pb(await self.m.umount(request.ctid), self.node)

    @unary
    async def Suspend(self, request: pb.CheckpointRequest, context: Ctx) -> pb.ContainerInfo:
        return to_pb(await self.m.suspend(request.ct.ctid, request.dumpfile), self.node)

    @unary
    async def Resume(self, request: pb.CheckpointRequest, context: Ctx) -> pb.ContainerInfo:
        return to_pb(await self.m.resume(request.ct.ctid, request.dumpfile), self.node)

    @streaming
    async def Exec(self, request: pb.ExecRequest, context: Ctx) -> AsyncIterator[pb.ExecOutput]:
        argv = _check_argv(list(request.argv))
        ctid = await self.m.require_running(request.ct.ctid)
        env = [e for e in request.env if "=" in e and "\0" not in e]
        full = await self.m.exec_argv(ctid, argv, env=env)
        async for item in run_streaming(full, request.stdin or None):
            if isinstance(item, int):
                yield pb.ExecOutput(exited=True, exit_code=item)
            elif item.stream == "stdout":
                yield pb.ExecOutput(stdout=item.data)
            else:
                yield pb.ExecOutput(stderr=item.data)

    @streaming
    async def Enter(self, request_iterator: AsyncIterator[pb.EnterInput], context: Ctx
                    ) -> AsyncIterator[pb.EnterOutput]:
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("msg") != "start":
            raise VzError(Kind.INVALID, "an enter session must begin with a start message")
        start = first.start
        ctid = await self.m.require_running(start.ct.ctid)
        argv = _check_argv(list(start.argv)) if start.argv else ENTER_SHELL
        term = start.term if start.term and start.term.isprintable() and len(start.term) < 64 else "xterm"
        full = await self.m.exec_argv(ctid, argv, env=[f"TERM={term}"], tty=True)
        session = await PtySession.start(full, start.size.rows, start.size.cols)

        async def pump_input() -> None:
            async for msg in request_iterator:
                kind = msg.WhichOneof("msg")
                if kind == "data":
                    session.write(msg.data)
                elif kind == "resize":
                    session.resize(msg.resize.rows, msg.resize.cols)

        feeder = asyncio.create_task(pump_input())
        try:
            while data := await session.read():
                yield pb.EnterOutput(data=data)
            code = await session.wait()
            yield pb.EnterOutput(exited=True, exit_code=code)
        finally:
            feeder.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await feeder
            await session.close()


class TemplateService(pb_grpc.TemplateServiceServicer):
    def __init__(self, manager: ContainerManager) -> None:
        self.cache = manager.templates

    @staticmethod
    def _info(t: Any) -> pb.TemplateInfo:
        return pb.TemplateInfo(name=t.name, path=str(t.path), size=t.size, mtime=int(t.mtime))

    @unary
    async def ListTemplates(self, request: pb.Empty, context: Ctx) -> pb.TemplateList:
        return pb.TemplateList(templates=[self._info(t) for t in self.cache.list()])

    @unary
    async def BuildTemplate(self, request: pb.TemplateBuildRequest, context: Ctx) -> pb.TemplateInfo:
        try:
            if request.kind == "busybox":
                t = await asyncio.to_thread(self.cache.build_busybox, request.name or "busybox")
            elif request.kind == "debian":
                t = await asyncio.to_thread(self.cache.build_debian, request.name or "debian-12-minimal",
                                            request.mirror or None)
            else:
                raise VzError(Kind.INVALID, f"unknown template kind {request.kind!r}: use busybox or debian")
        except TemplateBuildError as e:
            raise VzError(Kind.TEMPLATE, str(e)) from None
        return self._info(t)

    @unary
    async def ImportTemplate(self, request: pb.TemplateImportRequest, context: Ctx) -> pb.TemplateInfo:
        from pathlib import Path

        path = Path(request.path)
        if not path.is_absolute() or not path.is_file():
            raise VzError(Kind.INVALID, f"template archive {request.path!r} is not an existing file "
                                        "(give an absolute path)")
        try:
            t = await asyncio.to_thread(self.cache.import_file, path, request.name or None)
        except (ArchiveError, ValueError) as e:
            raise VzError(Kind.TEMPLATE, f"refused template archive: {e}") from None
        return self._info(t)


class AgentService(pb_grpc.AgentServiceServicer):
    def __init__(self, manager: ContainerManager) -> None:
        self.m = manager

    @unary
    async def Info(self, request: pb.Empty, context: Ctx) -> pb.AgentInfo:
        return pb.AgentInfo(node=self.m.layout.node, version=__version__, root=str(self.m.layout.root),
                            pid=os.getpid())
