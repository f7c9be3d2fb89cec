"""The source side: the migration pipeline, a list of stages with undo (decision 0004).

Before `Commit` every failure leaves the container running here, unchanged (resumed from its
freeze, network unlocked) and the destination cleaned; after `Commit` the destination owns it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import signal
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from agent import cgroups, mounts, proc
from agent.containers import SETTLE_OP, ContainerManager
from agent.errors import Kind, VzError
from agent.migration import facts, failpoints, fsdelta, images, journal, rsyncd
from agent.migration.destination import Facts, node_facts
from agent.network import netns
from agent.runtime import criu_conf as criu_options
from agent.runtime.runc import pid_alive
from agent.storage import quota
from vzapi import migration_pb2 as pb
from vzapi import migration_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

PEER_TIMEOUT_S = 300.0
COMMIT_RETRY_S = 30.0
RUNC_READERS_WAIT_S = 2.0
RECONCILE_PERIOD_S = 5.0
PROGRESS_EVERY_S = 0.5


@dataclass(frozen=True)
class Tls:
    ca: bytes
    cert: bytes
    key: bytes


@dataclass
class Progress:
    """What the pipeline reports: stage timings and events for the client."""

    events: asyncio.Queue[pb.MigrateEvent] = field(default_factory=asyncio.Queue)
    times: list[tuple[str, float]] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)
    frozen_at: float | None = None
    thawed_at: float | None = None
    mode: str = ""
    mode_reason: str = ""

    def say(self, stage: str, message: str, done_bytes: int = 0, total: int = 0) -> None:
        self.events.put_nowait(pb.MigrateEvent(stage=stage, message=message, bytes=done_bytes, total=total))


POSTCOPY_MIN_BYTES = 64 << 20


def choose_mode(requested: str, online: bool, src: Facts, dst: Facts, memory_bytes: int = 0) -> tuple[str, str]:
    """Pure: the migration mode and why.

    auto: pre-copy needs dirty-page tracking on both kernels (not implemented yet, so never picked);
    post-copy needs userfaultfd on the destination and pays off for containers with much memory;
    stop-and-copy is always possible and the only mode whose failure can never lose the container.
    """
    if not online:
        return "offline", "without --online the container is stopped, moved and started"
    dirty = "mem_dirty_track" in set(src.criu_features) & set(dst.criu_features)
    uffd = "uffd-noncoop" in dst.criu_features
    if requested in ("", "auto"):
        if uffd and memory_bytes >= POSTCOPY_MIN_BYTES:
            return "postcopy", (f"{memory_bytes >> 20} MiB of memory and userfaultfd on the destination: the "
                                "container resumes there before its memory has moved (lazy pages)")
        why = "no dirty-page tracking for pre-copy" if not dirty else "pre-copy is not implemented yet"
        small = f"only {memory_bytes >> 20} MiB of memory" if uffd else "no userfaultfd for post-copy"
        return "stopcopy", f"{why}; {small}: stop-and-copy"
    if requested == "precopy":
        if not dirty:
            raise VzError(Kind.INVALID, "pre-copy needs dirty-page tracking (CONFIG_MEM_SOFT_DIRTY), which "
                                        "this kernel lacks; use --mode auto, postcopy or stopcopy")
        raise VzError(Kind.INVALID, "pre-copy is not implemented yet; use --mode postcopy or stopcopy")
    if requested == "postcopy":
        if not uffd:
            raise VzError(Kind.INVALID, "post-copy needs userfaultfd on the destination; use --mode stopcopy")
        return "postcopy", "requested"
    if requested == "stopcopy":
        return "stopcopy", "requested"
    raise VzError(Kind.INVALID, f"unknown mode {requested!r}: use auto, precopy, postcopy or stopcopy")


def facts_pb(f: Facts) -> pb.NodeFacts:
    return pb.NodeFacts(node=f.node, criu_version=f.criu_version, criu_features=list(f.criu_features),
                        cpu_flags=list(f.cpu_flags), free_disk_bytes=f.free_disk,
                        free_memory_bytes=f.free_memory, kernel=f.kernel)


def facts_from_pb(m: pb.NodeFacts) -> Facts:
    return Facts(node=m.node, criu_version=m.criu_version, criu_features=tuple(m.criu_features),
                 cpu_flags=tuple(m.cpu_flags), free_disk=m.free_disk_bytes, free_memory=m.free_memory_bytes,
                 kernel=m.kernel)


def peer_channel(address: str, tls: Tls | None) -> grpc.aio.Channel:
    if tls is None:
        raise VzError(Kind.INVALID, "this agent has no TLS credentials (--tls-dir): it cannot talk to "
                                    "other agents")
    creds = grpc.ssl_channel_credentials(root_certificates=tls.ca, private_key=tls.key,
                                         certificate_chain=tls.cert)
    return grpc.aio.secure_channel(address, creds, options=[("grpc.max_send_message_length", 8 << 20)])


def _rpc_error(e: grpc.RpcError, what: str) -> VzError:
    details = e.details() if isinstance(e, grpc.aio.AioRpcError) else str(e)
    return VzError(Kind.FAILED, f"{what}: {details}")


async def _stop_lazy_dump(p: asyncio.subprocess.Process) -> None:
    """Abort a post-copy dump before any restore used it: CRIU releases the (still frozen) tasks."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(p.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(p.wait(), 10)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        await p.wait()


async def _wait_lazy_dump(p: asyncio.subprocess.Process, timeout: float = 900) -> None:
    try:
        rc = await asyncio.wait_for(p.wait(), timeout)
    except TimeoutError:
        raise VzError(Kind.FAILED, "the destination did not fetch every memory page in time") from None
    if rc != 0:
        err = (await p.stderr.read()).decode(errors="replace")[-300:] if p.stderr else ""
        raise VzError(Kind.FAILED, f"the post-copy page server ended with {rc}: {err}")


async def _wait_gone(pids: list[int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
        await asyncio.sleep(0.005)


async def dir_bytes(path: Path) -> int:
    res = await proc.run(["du", "-sb", str(path)], check=False, timeout=120)
    try:
        return int(res.stdout.split()[0])
    except (IndexError, ValueError):
        return 0


_RSYNC_SENT = re.compile(rb"Total bytes sent: ([\d,.]+)")


_RSYNC_PROGRESS = re.compile(r"^\s*[\d,.]+\s+(\d+)%\s")


def rsync_percent(line: str) -> int | None:
    """Pure: the overall percentage of an `rsync --info=progress2` line, else None."""
    m = _RSYNC_PROGRESS.match(line)
    return int(m.group(1)) if m else None


async def run_rsync(src: Path, url: str, password: str, *, final: bool,
                    on_percent: Callable[[int], None] | None = None) -> tuple[int, float]:
    """Push the private area; returns (bytes sent, seconds). With on_percent, rsync reports its
    overall progress (the file list is built first, for a true percentage) and on_percent gets it
    at most every PROGRESS_EVERY_S."""
    t0 = time.monotonic()
    argv = rsyncd.rsync_argv(src, url, final=final)
    env = {"RSYNC_PASSWORD": password}
    if on_percent is None:
        res = await proc.run(argv, env=env, timeout=3600, check=False, what="rsync")
    else:
        last = [0.0]

        def on_line(line: str) -> None:
            pct = rsync_percent(line)
            if pct is not None and time.monotonic() - last[0] >= PROGRESS_EVERY_S:
                last[0] = time.monotonic()
                on_percent(pct)
        argv = [argv[0], "--info=progress2", "--no-inc-recursive", *argv[1:]]
        res = await proc.run_streaming(argv, on_line, env=env, timeout=3600, what="rsync")
    # 24: files vanished while being copied; normal for a running container's pre-copy (the final
    # sync, made while it is frozen, brings the tree to its last state)
    if not res.ok and not (res.returncode == 24 and not final):
        raise VzError(Kind.FAILED, f"filesystem sync failed: {res.err_tail()}")
    m = _RSYNC_SENT.search(res.stdout)
    sent = int(m.group(1).replace(b",", b"").replace(b".", b"")) if m else 0
    return sent, time.monotonic() - t0


class Source:
    def __init__(self, manager: ContainerManager, tls: Tls | None, listen_host: str = "127.0.0.1") -> None:
        self.m = manager
        self.tls = tls
        self.listen_host = listen_host

    def work_dir(self, ctid: int) -> Path:
        return self.m.layout.run_dir / "migrations" / f"out-{ctid}"

    async def migrate(self, req: pb.MigrateRequest) -> AsyncIterator[pb.MigrateEvent]:
        """Run one migration, yielding progress events; the last event says how it ended."""
        prog = Progress()
        task = asyncio.create_task(self._run(req, prog))
        t0 = time.monotonic()
        while True:
            getter = asyncio.ensure_future(prog.events.get())
            done, _ = await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
            if getter in done:
                yield getter.result()
                continue
            getter.cancel()
            while not prog.events.empty():
                yield prog.events.get_nowait()
            break
        exc = task.exception()
        frozen = 0.0
        if prog.frozen_at is not None:
            frozen = (prog.thawed_at or time.monotonic()) - prog.frozen_at
        final = pb.MigrateEvent(
            stage="done", done=True, ok=exc is None, times=[pb.StageTime(stage=s, seconds=t) for s, t in prog.times],
            frozen_seconds=frozen, total_seconds=time.monotonic() - t0, mode=prog.mode,
            mode_reason=prog.mode_reason, checks=prog.checks,
            message="" if exc is None else str(exc))
        if exc is not None and not isinstance(exc, VzError):
            log.error("migration failed", exc_info=exc)
        yield final
        if exc is not None:
            raise exc

    async def _run(self, req: pb.MigrateRequest, prog: Progress) -> None:
        ctid = self.m.resolve(req.ctid)
        async with self.m.locked(ctid, "migrate"):
            await self._run_locked(ctid, req, prog)

    async def _stage(self, prog: Progress, name: str, message: str, fn: Callable[[], Awaitable[Any]]) -> Any:
        prog.say(name, message)
        t = time.monotonic()
        result = await fn()
        prog.times.append((name, time.monotonic() - t))
        return result

    async def _run_locked(self, ctid: int, req: pb.MigrateRequest, prog: Progress) -> None:
        lay = self.m.layout
        conf_text = lay.conf_file(ctid).read_text()
        self.m.load(ctid)  # refuses a broken config before anything happens
        st = await self.m.runc.state(ctid)
        running = st is not None and st.status == "running"
        if st is not None and st.status == "paused":
            raise VzError(Kind.STATE, f"container {ctid} is suspended; resume it before migrating")
        online = req.online and running
        # a stopped container's disk image is mounted for the copy (and unmounted again if the move fails)
        mounted_for_copy = await quota.mount_private(lay, ctid)
        src = await node_facts(self.m)
        private_bytes = await dir_bytes(lay.private(ctid))
        grace = quota.grace_clock(lay, ctid)  # a soft disk limit's grace period goes on over there
        mid = uuid.uuid4().hex[:12]
        channel = peer_channel(req.destination, self.tls)
        peer = pb_grpc.MigrationPeerStub(channel)
        j = journal.Journal(id=mid, ctid=ctid, direction="out", state=journal.OUT_PREPARED,
                            peer=req.destination, online=online, was_running=running, keep_dst=req.keep_dst)
        prepared = False
        try:
            try:
                reply = await self._stage(prog, "preflight", f"checking {req.destination}", lambda: peer.Prepare(
                    pb.PrepareRequest(id=mid, ctid=ctid, config=conf_text, source=facts_pb(src), online=online,
                                      check_only=req.check_only, private_bytes=private_bytes,
                                      skip_checks=list(req.skip_checks),
                                      disk_grace_blocks_since=grace[0], disk_grace_inodes_since=grace[1]),
                    timeout=60))
            except grpc.RpcError as e:
                raise _rpc_error(e, f"destination {req.destination} refused the preflight") from None
            prog.checks = list(reply.checks)
            for c in reply.checks:
                prog.say("preflight", c)
            if not reply.ok:
                failed = [c.removeprefix("FAILED: ") for c in reply.checks if c.startswith("FAILED")]
                raise VzError(Kind.STATE, "migration refused: " + "; ".join(failed))
            memory = facts.container_memory(lay.cgroup_path(ctid)) if online else 0
            prog.mode, prog.mode_reason = choose_mode(req.mode, online, src, facts_from_pb(reply.destination),
                                                      memory)
            prog.say("preflight", f"mode {prog.mode}: {prog.mode_reason}")
            if req.check_only:
                return
            prepared = True
            journal.save(lay.run_dir, j)
            failpoints.hit("src-after-prepare")

            presync_started = time.time() - fsdelta.timestamp_margin(lay.private(ctid))
            def copied(pct: int) -> None:
                prog.say("presync", "copying the filesystem", private_bytes * pct // 100, private_bytes)
            sent, secs = await self._stage(prog, "presync", f"copying the filesystem ({private_bytes >> 20} MiB)",
                                           lambda: run_rsync(lay.private(ctid), reply.rsync_url,
                                                             reply.rsync_password, final=False, on_percent=copied))
            # a small sync says more about rsync's start-up than about the link: trust big ones only
            rate = sent / secs if secs > 0 and sent > 32 << 20 else None
            if online:
                await self._online(ctid, mid, peer, j, prog, reply, rate, lazy=prog.mode == "postcopy",
                                   since=presync_started)
            else:
                await self._offline(ctid, mid, peer, j, prog, reply, running)
        except BaseException as exc:
            if prepared and j.state in (journal.OUT_PREPARED, journal.OUT_FROZEN):
                await self._rollback(ctid, mid, peer, j, prog, keep_dst=req.keep_dst)
            if mounted_for_copy or (not online and running):
                st_now = await self.m.runc.state(ctid)
                if st_now is None or st_now.status == "stopped":
                    with contextlib.suppress(VzError):
                        await quota.unmount_private(lay, ctid)
            elif j.state == journal.OUT_COMMIT_SENT:
                log.error("migration %s of %d: commit outcome unknown: %s", mid, ctid, exc)
            raise
        finally:
            await channel.close()
        # committed: the destination owns the container
        await self._stage(prog, "cleanup", "removing the source copy",
                          lambda: self._finish_source(ctid, keep_source=req.keep_source))
        journal.remove(lay.run_dir, "out", ctid)
        prog.say("done", f"container {ctid} now runs on {req.destination}")

    async def _online(self, ctid: int, mid: str, peer: pb_grpc.MigrationPeerStub, j: journal.Journal,
                      prog: Progress, reply: pb.PrepareReply, rate: float | None, *, lazy: bool,
                      since: float) -> None:
        lay = self.m.layout
        _, cfg = self.m.load(ctid)
        net = self.m.net_plan(ctid, cfg)
        work = self.work_dir(ctid)
        shutil.rmtree(work, ignore_errors=True)
        (work / "img").mkdir(parents=True, mode=0o700)

        page_server = ""
        lazy_dump: asyncio.subprocess.Process | None = None
        if lazy:
            if note := facts.ensure_pipe_max_size():
                log.warning("%s", note)
                prog.say("dump", note)
            host = self.listen_host
            page_server = f"[{host}]:{facts.free_port(host)}" if ":" in host else f"{host}:{facts.free_port(host)}"

        delta = fsdelta.Delta(None, "not scanned")

        async def freeze_and_dump() -> None:
            nonlocal lazy_dump, delta
            j.state = journal.OUT_FROZEN
            journal.save(lay.run_dir, j)  # before the freeze: a crash from here on resumes on restart
            prog.frozen_at = t0 = time.monotonic()
            # both at once: the node ends of its links go down while its tasks freeze; both finish
            # before a failure of either is raised (the rollback must find a settled container)
            settled = await asyncio.gather(self.m.net.lock(net),
                                           asyncio.to_thread(cgroups.freeze, lay.cgroup_path(ctid)),
                                           return_exceptions=True)
            for r in settled:
                if isinstance(r, OSError):
                    raise VzError(Kind.FAILED, f"cannot freeze container {ctid}: {r}")
                if isinstance(r, BaseException):
                    raise r
            t2 = time.monotonic()
            failpoints.hit("src-after-freeze")
            # scanned now: the container cannot change anything any more, and CRIU has not yet
            # touched its root (the dump itself makes and removes temporary directories there)
            delta = await fsdelta.changed_since(lay.private(ctid), since)
            t3 = time.monotonic()
            if lazy:
                lazy_dump = await self.m.runc.checkpoint_lazy(ctid, work / "img", work / "dump", page_server)
            else:
                await self.m.runc.checkpoint(ctid, work / "img", work / "dump", leave_running=True)
            criu_options.record(lay.bundle(ctid) / "criu.conf", work / "img")  # the restore must use them
            log.info("migration %s: network lock and freeze %.3f s, scan %.3f s, dump %.3f s", mid, t2 - t0,
                     t3 - t2, time.monotonic() - t3)

        try:
            await self._run_online(ctid, mid, peer, j, prog, reply, rate, work, freeze_and_dump, page_server,
                                   lambda: delta)
        except BaseException:
            if lazy_dump is not None and lazy_dump.returncode is None:
                await _stop_lazy_dump(lazy_dump)
            raise
        if lazy_dump is not None:
            await self._stage(prog, "pages", "the destination fetches the remaining memory pages",
                              lambda: _wait_lazy_dump(lazy_dump))

    async def _run_online(self, ctid: int, mid: str, peer: pb_grpc.MigrationPeerStub, j: journal.Journal,
                          prog: Progress, reply: pb.PrepareReply, rate: float | None, work: Path,
                          freeze_and_dump: Callable[[], Awaitable[None]], page_server: str,
                          get_delta: Callable[[], fsdelta.Delta]) -> None:
        lay = self.m.layout
        await self._stage(prog, "dump", "freezing and dumping (network locked)" + (
            "; memory stays here for post-copy" if page_server else ""), freeze_and_dump)
        delta = get_delta()
        if delta.files:
            await asyncio.to_thread(fsdelta.stage, lay.private(ctid), delta.files, work / "img")
        prog.say("sync", "filesystem changes since the pre-copy: " + (
            "none" if delta.files == () else delta.reason + (" (carried with the images)" if delta.files
                                                              else "; final rsync")))
        level = images.zstd_level_for(rate)
        truncate = failpoints.action("src-truncate-images") == "corrupt"

        async def send() -> None:
            t = time.monotonic()
            blob, manifest, tar_bytes = await asyncio.to_thread(images.pack, work / "img", level)
            log.info("migration %s: images packed in %.3f s (%d -> %d bytes)", mid, time.monotonic() - t,
                     tar_bytes, len(blob))
            if failpoints.action("src-corrupt-images") == "corrupt":
                mid_byte = len(blob) // 2
                blob = blob[:mid_byte] + bytes([blob[mid_byte] ^ 0xFF]) + blob[mid_byte + 1:]

            def requests() -> Any:
                sent = 0
                for data in images.chunks(blob):
                    sent += len(data)
                    yield pb.ImageChunk(id=mid, data=data)
                    if truncate and sent >= len(blob) // 2:
                        return
                prog.say("images", "images sent", sent, len(blob))
                yield pb.ImageChunk(id=mid, last=True, manifest=manifest, tar_bytes=tar_bytes)
            try:
                await peer.Images(requests(), timeout=PEER_TIMEOUT_S)
            except grpc.RpcError as e:
                raise _rpc_error(e, "sending the checkpoint images failed") from None

        async def final_sync() -> None:
            if delta.files is None:
                await run_rsync(lay.private(ctid), reply.rsync_url, reply.rsync_password, final=True)

        # the last filesystem changes and the images travel at the same time
        await self._stage(prog, "transfer", f"final filesystem sync and images (zstd -{level})",
                          lambda: asyncio.gather(final_sync(), send()))
        failpoints.hit("src-before-restore")
        try:
            await self._stage(prog, "restore", "restoring on the destination (network still down)",
                              lambda: peer.Restore(pb.MigrationRef(id=mid, ctid=ctid, lazy=bool(page_server),
                                                                   page_server=page_server), timeout=PEER_TIMEOUT_S))
        except grpc.RpcError as e:
            raise _rpc_error(e, "restore on the destination failed") from None
        await self._commit(ctid, mid, peer, j, prog)
        prog.thawed_at = time.monotonic()

    async def _offline(self, ctid: int, mid: str, peer: pb_grpc.MigrationPeerStub, j: journal.Journal,
                       prog: Progress, reply: pb.PrepareReply, running: bool) -> None:
        lay = self.m.layout
        if running:
            async def stop() -> None:
                j.state = journal.OUT_FROZEN  # "stopped for the move": a crash restarts it here
                journal.save(lay.run_dir, j)
                prog.frozen_at = time.monotonic()
                await self.m.stop_unlocked(ctid)
                await quota.mount_private(lay, ctid)  # stop unmounted its disk image: the copy needs it
            await self._stage(prog, "stop", "stopping the container", stop)
        await self._stage(prog, "sync", "final filesystem sync", lambda: run_rsync(
            lay.private(ctid), reply.rsync_url, reply.rsync_password, final=True))
        try:
            await self._stage(prog, "start" if running else "register", "starting on the destination",
                              lambda: peer.Restore(pb.MigrationRef(id=mid, ctid=ctid, start=running),
                                                   timeout=PEER_TIMEOUT_S))
        except grpc.RpcError as e:
            raise _rpc_error(e, "starting on the destination failed") from None
        await self._commit(ctid, mid, peer, j, prog)
        prog.thawed_at = time.monotonic()

    async def _commit(self, ctid: int, mid: str, peer: pb_grpc.MigrationPeerStub, j: journal.Journal,
                      prog: Progress) -> None:
        j.state = journal.OUT_COMMIT_SENT
        journal.save(self.m.layout.run_dir, j)
        failpoints.hit("src-before-commit")
        t = time.monotonic()
        prog.say("commit", "committing on the destination")
        deadline = time.monotonic() + COMMIT_RETRY_S
        while True:
            try:
                await peer.Commit(pb.MigrationRef(id=mid, ctid=ctid), timeout=30)
                break
            except grpc.RpcError as e:
                # the destination may have committed and died before answering: ask it
                with contextlib.suppress(grpc.RpcError):
                    st = await peer.State(pb.MigrationRef(id=mid, ctid=ctid), timeout=10)
                    if st.stage in (journal.IN_COMMITTED, "owned"):
                        break
                    if st.stage in ("none", journal.IN_PREPARED):
                        j.state = journal.OUT_FROZEN  # not committed there: safe to roll back
                        raise _rpc_error(e, "commit refused by the destination") from None
                if time.monotonic() > deadline:
                    raise VzError(Kind.FAILED, f"the destination did not confirm the commit of {ctid}; the "
                                               f"container stays frozen here until the destination answers "
                                               f"(asked every {RECONCILE_PERIOD_S:.0f} s; migration {mid})") from None
                await asyncio.sleep(1)
        prog.times.append(("commit", time.monotonic() - t))
        j.state = journal.OUT_DONE
        journal.save(self.m.layout.run_dir, j)

    async def _rollback(self, ctid: int, mid: str, peer: pb_grpc.MigrationPeerStub, j: journal.Journal,
                        prog: Progress, *, keep_dst: bool) -> None:
        prog.say("rollback", "migration failed: undoing")
        with contextlib.suppress(grpc.RpcError, asyncio.CancelledError):
            await peer.Abort(pb.MigrationRef(id=mid, ctid=ctid, keep_dst=keep_dst), timeout=60)
        await self.resume_local(ctid, j)
        prog.thawed_at = time.monotonic()

    async def resume_local(self, ctid: int, j: journal.Journal) -> None:
        """Bring the source container back as it was before the migration (idempotent)."""
        if j.state in (journal.OUT_FROZEN, journal.OUT_COMMIT_SENT):
            if j.online:
                st = await self.m.runc.state(ctid)
                if st is not None and st.status == "paused":
                    await self.m.runc.resume(ctid)
                _, cfg = self.m.load(ctid)
                await self.m.net.expose(self.m.net_plan(ctid, cfg))
            elif j.was_running:
                st = await self.m.runc.state(ctid)
                if st is None or st.status != "running":
                    await self.m.start_unlocked(ctid)
        shutil.rmtree(self.work_dir(ctid), ignore_errors=True)
        journal.remove(self.m.layout.run_dir, "out", ctid)
        log.info("migration %s: container %d resumed on the source", j.id, ctid)

    async def _finish_source(self, ctid: int, *, keep_source: bool) -> None:
        """After the commit: the frozen (or stopped) source copy goes away.

        A frozen copy is killed without ever showing as running again: its runc state is moved
        out of sight first, then every task gets SIGKILL and the cgroup is thawed (frozen tasks
        die only once thawed; a pending SIGKILL is handled before any user code runs).
        """
        lay = self.m.layout
        st = await self.m.runc.state(ctid)
        if st is not None and st.status == "paused":
            pids = cgroups.procs(lay.cgroup_path(ctid))
            hidden = self.m.runc.hide(ctid)
            # a runc reader that loaded the state before the hide would, after the thaw below, see
            # live unfrozen tasks and call the copy "running" while they die: let readers finish first
            await _wait_gone(self.m.runc.reader_pids(), RUNC_READERS_WAIT_S)
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            cgroups.thaw(lay.cgroup_path(ctid))
            await _wait_gone(pids, 10)
            cgroups.remove_tree(lay.cgroup_path(ctid))
            if hidden is not None:
                shutil.rmtree(hidden, ignore_errors=True)
        elif st is not None:
            if st.status in ("running", "created"):
                await self.m.runc.kill(ctid, signal.SIGKILL, all_processes=True)
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    cur = await self.m.runc.state(ctid)
                    if cur is None or cur.status == "stopped":
                        break
                    await asyncio.sleep(0.05)
            await self.m.runc.delete(ctid, force=True)
        _, cfg = self.m.load(ctid)
        with contextlib.suppress(VzError):
            await self.m.net.teardown(self.m.net_plan(ctid, cfg))
        await netns.remove(lay.netns_name(ctid))
        if mounts.is_mountpoint(lay.ve_root(ctid)):
            await mounts.unmount(lay.ve_root(ctid))
        await quota.unmount_private(lay, ctid)  # a disk image, if the container has one
        with contextlib.suppress(OSError):  # kept for diagnosis of the last move
            shutil.copy(self.work_dir(ctid) / "dump" / "dump.log", lay.run_dir / "migrations" / f"last-dump-{ctid}.log")
        shutil.rmtree(self.work_dir(ctid), ignore_errors=True)
        shutil.rmtree(lay.bundle(ctid), ignore_errors=True)
        if keep_source:
            return
        conf = lay.conf_file(ctid)
        os.replace(conf, conf.with_name(f"{ctid}.conf.migrated"))
        if lay.private(ctid).exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{ctid}.migrated.", dir=lay.private_dir))
            os.rename(lay.private(ctid), trash / "private")
            await asyncio.to_thread(shutil.rmtree, trash, True)
        quota.remove_image(lay, ctid)
        with contextlib.suppress(OSError):
            lay.ve_root(ctid).rmdir()

    async def reconcile_forever(self, period: float = RECONCILE_PERIOD_S) -> None:
        """Settle, in the background, migrations whose commit outcome is unknown: the destination
        stopped answering after Commit was sent, and the source copy stays frozen (never resumed
        blindly: the destination may own the container). As soon as the destination answers again,
        the copy here is removed (committed there) or resumed (not committed)."""
        while True:
            await asyncio.sleep(period)
            for j in journal.pending(self.m.layout.run_dir, "out"):
                if j.state != journal.OUT_COMMIT_SENT:
                    continue
                try:
                    async with self.m.locked(j.ctid, SETTLE_OP):
                        current = journal.load(self.m.layout.run_dir, "out", j.ctid)
                        if current is not None and current.id == j.id and current.state == journal.OUT_COMMIT_SENT:
                            await self._recover_one(current)
                except Exception as e:  # retried on the next round
                    log.info("migration %s of %d still unsettled: %s", j.id, j.ctid, e)

    async def recover(self) -> None:
        """At agent start: finish or undo outgoing migrations a crash interrupted."""
        for j in journal.pending(self.m.layout.run_dir, "out"):
            try:
                await self._recover_one(j)
            except Exception as e:
                log.error("recovering migration %s of %d failed: %s", j.id, j.ctid, e)

    async def _recover_one(self, j: journal.Journal) -> None:
        lay = self.m.layout
        if j.state == journal.OUT_PREPARED:
            await self._abort_remote(j)
            journal.remove(lay.run_dir, "out", j.ctid)
            return
        if j.state == journal.OUT_DONE:
            await self._finish_source(j.ctid, keep_source=False)
            journal.remove(lay.run_dir, "out", j.ctid)
            return
        remote = await self._remote_state(j)
        if remote in (journal.IN_COMMITTED, "owned"):
            log.warning("migration %s: destination owns %d; removing the source copy", j.id, j.ctid)
            await self._finish_source(j.ctid, keep_source=False)
            journal.remove(lay.run_dir, "out", j.ctid)
            return
        if remote is None and j.state == journal.OUT_COMMIT_SENT:
            log.error("migration %s: destination unreachable and commit outcome unknown; container %d stays "
                      "frozen until it answers (asked every %.0f s)", j.id, j.ctid, RECONCILE_PERIOD_S)
            return
        await self._abort_remote(j)
        log.warning("migration %s: not committed; resuming container %d here", j.id, j.ctid)
        await self.resume_local(j.ctid, j)

    async def _remote_state(self, j: journal.Journal) -> str | None:
        try:
            async with peer_channel(j.peer, self.tls) as ch:
                st = await pb_grpc.MigrationPeerStub(ch).State(pb.MigrationRef(id=j.id, ctid=j.ctid), timeout=10)
                return str(st.stage)
        except (grpc.RpcError, VzError):
            return None

    async def _abort_remote(self, j: journal.Journal) -> None:
        with contextlib.suppress(grpc.RpcError, VzError):
            async with peer_channel(j.peer, self.tls) as ch:
                await pb_grpc.MigrationPeerStub(ch).Abort(
                    pb.MigrationRef(id=j.id, ctid=j.ctid, keep_dst=j.keep_dst), timeout=30)

