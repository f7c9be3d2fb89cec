"""The destination side of a migration: prepare, receive, restore, commit or abort.

Every method is driven by the source agent over MigrationPeer and is safe to call again
(idempotent) or out of order: it checks the journal first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from agent import cgroups, mounts
from agent.config.conffile import ConfFile, ConfigError
from agent.config.params import ContainerConfig
from agent.containers import ContainerManager
from agent.errors import Kind, VzError
from agent.migration import facts, failpoints, fsdelta, images, journal, rsyncd
from agent.network import netns
from agent.runtime import apply_limits
from agent.runtime import criu_conf as criu_options
from agent.storage import quota

log = logging.getLogger(__name__)

MIN_CRIU = (4, 2)


@dataclass(frozen=True)
class Facts:
    node: str
    criu_version: str
    criu_features: tuple[str, ...]
    cpu_flags: tuple[str, ...]
    free_disk: int
    free_memory: int
    kernel: str


async def node_facts(manager: ContainerManager) -> Facts:
    version, feats = await facts.criu_info()
    return Facts(
        node=manager.layout.node, criu_version=version, criu_features=tuple(feats),
        cpu_flags=tuple(facts.cpu_flags()), free_disk=facts.free_disk(manager.layout.private_dir),
        free_memory=facts.free_memory(), kernel=facts.kernel(),
    )


def check_compat(src: Facts, dst: Facts, *, online: bool, private_bytes: int,
                 skip: Sequence[str]) -> list[str]:
    """Pure preflight checks that compare the two nodes; "ok: ..." or "FAILED: ..." lines."""
    out = []
    if online and "criu" not in skip:
        for side, f in (("source", src), ("destination", dst)):
            if not f.criu_version:
                out.append(f"FAILED: criu: no CRIU on the {side} node ({f.node})")
            elif facts.version_tuple(f.criu_version) < MIN_CRIU:
                out.append(f"FAILED: criu: {side} node {f.node} has CRIU {f.criu_version}; 4.2 or newer needed")
        if not any(x.startswith("FAILED: criu") for x in out):
            out.append(f"ok: criu {src.criu_version} -> {dst.criu_version}")
    if online and "cpu" not in skip:
        missing = sorted(set(src.cpu_flags) - set(dst.cpu_flags))
        if missing:
            out.append(f"FAILED: cpu: the destination lacks CPU features the container may use: "
                       f"{' '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
        else:
            out.append("ok: cpu: destination offers every CPU feature of the source")
    if "disk" not in skip:
        need = int(private_bytes * 1.1) + (64 << 20)
        if dst.free_disk < need:
            out.append(f"FAILED: disk: {dst.free_disk >> 20} MiB free on the destination, "
                       f"{need >> 20} MiB needed")
        else:
            out.append(f"ok: disk: {dst.free_disk >> 20} MiB free, {need >> 20} MiB needed")
    return out


@dataclass
class Incoming:
    j: journal.Journal
    cfg: ContainerConfig
    conf_text: str
    daemon: rsyncd.RsyncDaemon | None = None
    manifest: Mapping[str, str] | None = None
    lazy_pages: asyncio.subprocess.Process | None = None


class Destination:
    def __init__(self, manager: ContainerManager, listen_host: str) -> None:
        self.m = manager
        self.listen_host = listen_host
        self.active: dict[int, Incoming] = {}
        self._bg: set[asyncio.Task[None]] = set()

    @property
    def layout(self):  # type: ignore[no-untyped-def]
        return self.m.layout

    def incoming_dir(self, ctid: int) -> Path:
        return self.m.layout.private_dir / f".{ctid}.incoming"

    def work_dir(self, ctid: int) -> Path:
        return self.m.layout.run_dir / "migrations" / f"in-{ctid}"

    def _get(self, mid: str, ctid: int) -> Incoming:
        inc = self.active.get(ctid)
        if inc is None or inc.j.id != mid:
            raise VzError(Kind.STATE, f"no migration {mid} of container {ctid} is prepared on node "
                                      f"{self.m.layout.node}")
        return inc

    async def prepare(self, mid: str, ctid: int, conf_text: str, src: Facts, *, online: bool,
                      check_only: bool, private_bytes: int, skip: Sequence[str],
                      grace: tuple[int, int] = (0, 0)) -> tuple[Facts, list[str], bool, str, str]:
        """Checks that change nothing; then (unless check_only) an empty private area and rsyncd."""
        dst = await node_facts(self.m)
        checks: list[str] = []
        try:
            conf = ConfFile.parse(conf_text, f"<config of {ctid} from {src.node}>")
            cfg = ContainerConfig.from_conf(conf, f"<config of {ctid} from {src.node}>")
        except ConfigError as e:
            raise VzError(Kind.INVALID, f"the source sent a broken config: {e}") from None
        if ctid in self.active and self.active[ctid].j.id != mid:
            checks.append(f"FAILED: ctid: another migration of {ctid} is in progress here")
        if self.m.layout.conf_file(ctid).exists() or (self.m.layout.private(ctid).exists()
                                                      and ctid not in self.active):
            checks.append(f"FAILED: ctid: container {ctid} already exists on node {dst.node}")
        else:
            checks.append(f"ok: ctid: {ctid} is free on node {dst.node}")
        if "ip" not in skip and cfg.ip_addresses:
            try:
                # node-local only: the source still answers for the addresses on the LAN
                await self.m.check_addresses(ctid, cfg.ip_addresses, lan=False)
                checks.append(f"ok: ip: {' '.join(cfg.ip_addresses)} free on node {dst.node}")
            except VzError as e:
                checks.append(f"FAILED: ip: {e}")
        checks += check_compat(src, dst, online=online, private_bytes=private_bytes, skip=skip)
        ok = not any(c.startswith("FAILED") for c in checks)
        if check_only or not ok:
            return dst, checks, ok, "", ""
        failpoints.hit("dst-prepare")
        lay = self.m.layout
        work = self.work_dir(ctid)
        work.mkdir(parents=True, exist_ok=True, mode=0o700)
        j = journal.Journal(id=mid, ctid=ctid, direction="in", state=journal.IN_PREPARED, peer=src.node,
                            online=online)
        journal.save(lay.run_dir, j)
        inc = Incoming(j=j, cfg=cfg, conf_text=conf_text)
        self.active[ctid] = inc
        try:
            # the private area is received in place (a kept partial copy of an earlier try is reused);
            # the incoming journal reserves the CTID until the config file is written at restore
            if quota.wants_image(conf):
                # a disk image with the same limits, in force before the container resumes here
                await asyncio.to_thread(shutil.rmtree, self.incoming_dir(ctid), True)
                await quota.prepare_private(lay, ctid, conf)
                quota.set_grace_clock(lay, ctid, *grace, now=int(time.time()))  # the soft limit's clock goes on
            else:
                if self.incoming_dir(ctid).exists():
                    os.rename(self.incoming_dir(ctid), lay.private(ctid))
                lay.private(ctid).mkdir(mode=0o755, exist_ok=True)
            inc.daemon = await rsyncd.start(self.listen_host, lay.private(ctid), work / "rsyncd")
            if online:
                # everything a restore needs, made now so that the frozen window holds only the restore
                await self.m.mount_private(ctid)
                ns_path = await netns.create(lay.netns_name(ctid))
                await self.m.net.setup(lay.netns_name(ctid), self.m.net_plan(ctid, cfg), expose=False)
                self.m.write_bundle(ctid, cfg, ns_path)
        except BaseException:
            await self.abort(mid, ctid, keep_dst=False)
            raise
        log.info("migration %s: prepared to receive container %d from %s", mid, ctid, src.node)
        return dst, checks, ok, inc.daemon.url, inc.daemon.password

    async def receive_images(self, mid: str, ctid: int, stream_file: Path, manifest: Mapping[str, str]) -> None:
        inc = self._get(mid, ctid)
        img = self.work_dir(ctid) / "img"
        await asyncio.to_thread(images.unpack, stream_file, img, manifest)
        stream_file.unlink(missing_ok=True)
        inc.manifest = dict(manifest)

    async def _start_lazy_pages(self, inc: Incoming, page_server: str) -> Path:
        """CRIU's lazy-pages daemon: serves the restored tasks' page faults from the source."""
        host, _, port = page_server.rpartition(":")
        host = host.strip("[]")
        if not host or not port.isdigit():
            raise VzError(Kind.INVALID, f"invalid page server address {page_server!r}")
        binary = facts.criu_binary()
        if binary is None:
            raise VzError(Kind.FAILED, "no criu binary for lazy pages")
        work = self.work_dir(inc.j.ctid) / "restore"
        work.mkdir(parents=True, exist_ok=True)
        sock = work / "lazy-pages.socket"
        sock.unlink(missing_ok=True)
        inc.lazy_pages = await asyncio.create_subprocess_exec(
            binary, "lazy-pages", "--page-server", "--address", host, "--port", port,
            "-D", str(self.work_dir(inc.j.ctid) / "img"), "-W", str(work), "-o", "lazy-pages.log", "-v4",
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 10
        while not sock.exists():
            if inc.lazy_pages.returncode is not None or time.monotonic() > deadline:
                raise VzError(Kind.FAILED, "CRIU's lazy-pages daemon did not start (see lazy-pages.log)")
            await asyncio.sleep(0.005)
        return work

    async def restore(self, mid: str, ctid: int, *, start: bool, lazy: bool = False,
                      page_server: str = "") -> tuple[int, float]:
        """Make the received container this node's: online -> restored from its images with the
        node side of its network still down; offline -> started only if `start`."""
        inc = self._get(mid, ctid)
        t0 = time.monotonic()
        if inc.daemon is not None:
            # not awaited: the frozen window must not wait for rsync's exit (the daemon is done anyway)
            daemon, inc.daemon = inc.daemon, None
            self._bg.add(task := asyncio.create_task(daemon.stop()))
            task.add_done_callback(self._bg.discard)
        if inc.j.online and inc.manifest is None:
            raise VzError(Kind.STATE, "no verified image set received for this migration")
        failpoints.hit("dst-restore")
        lay = self.m.layout
        conf = ConfFile.parse(inc.conf_text, str(lay.conf_file(ctid)))
        conf.update_values({"VE_ROOT": str(lay.ve_root(ctid)), "VE_PRIVATE": str(lay.private(ctid))})
        inc.j.state = journal.IN_RESTORED
        journal.save(lay.run_dir, inc.j)
        conf.save(lay.conf_file(ctid))
        pid = 0
        log.info("migration %s: restore begins (%.3f s after the RPC arrived)", mid, time.monotonic() - t0)
        if inc.j.online:
            if n := await asyncio.to_thread(fsdelta.apply, self.work_dir(ctid) / "img", lay.private(ctid)):
                log.info("migration %s: %d changed file(s) written from the image stream", mid, n)
            if lazy:
                await self._start_lazy_pages(inc, page_server)
            # restored stopped (SIGSTOP): until the commit continues it, this copy executes nothing, even
            # if this agent dies and the source resumes (the CRIU options file is read at restore time)
            # with the options the images were dumped with (the source may run another version)
            criu_conf = lay.bundle(ctid) / "criu.conf"
            criu_conf.write_text(criu_options.for_restore(self.work_dir(ctid) / "img") + criu_options.LEAVE_STOPPED)
            t1 = time.monotonic()
            try:
                pid = await self.m.runc.restore(ctid, lay.bundle(ctid), self.work_dir(ctid) / "img",
                                                self.work_dir(ctid) / "restore", lazy=lazy)
            finally:
                criu_conf.write_text(criu_options.CURRENT)  # later checkpoints read it too
            log.info("migration %s: runc restore took %.3f s", mid, time.monotonic() - t1)
            await apply_limits.at_start(lay, ctid, inc.cfg)  # runc restores only its own limits
        elif start:
            info = await self.m.start(str(ctid))
            pid = info.init_pid
        log.info("migration %s: container %d restored (pid %d) in %.3f s", mid, ctid, pid, time.monotonic() - t0)
        return pid, time.monotonic() - t0

    async def commit(self, mid: str, ctid: int) -> None:
        """The destination owns the container from here on: network up, addresses announced."""
        j = journal.load(self.m.layout.run_dir, "in", ctid)
        if j is not None and j.id == mid and j.state == journal.IN_COMMITTED:
            return  # idempotent
        inc = self._get(mid, ctid)
        if inc.j.state != journal.IN_RESTORED:
            raise VzError(Kind.STATE, f"container {ctid} was not restored here; cannot commit")
        failpoints.hit("dst-commit")
        inc.j.state = journal.IN_COMMITTED
        journal.save(self.m.layout.run_dir, inc.j)
        if inc.j.online:
            t0 = time.monotonic()
            for pid in cgroups.procs(self.m.layout.cgroup_path(ctid)):  # restored stopped: go on
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
            t1 = time.monotonic()
            await self.m.net.expose(self.m.net_plan(ctid, inc.cfg))
            log.info("migration %s: continued in %.3f s, network exposed in %.3f s", mid, t1 - t0,
                     time.monotonic() - t1)
        restore_log = self.work_dir(ctid) / "restore" / "restore.log"
        with contextlib.suppress(OSError):  # kept beside the bundle for diagnosis
            shutil.copy(restore_log, self.m.layout.bundle(ctid) / "last-restore.log")
        if inc.lazy_pages is not None and inc.lazy_pages.returncode is None:
            # the daemon keeps fetching pages after the commit: clean up when it is done
            self._bg.add(task := asyncio.create_task(self._after_lazy(ctid, inc.lazy_pages)))
            task.add_done_callback(self._bg.discard)
        else:
            shutil.rmtree(self.work_dir(ctid), ignore_errors=True)
        journal.remove(self.m.layout.run_dir, "in", ctid)
        self.active.pop(ctid, None)
        log.info("migration %s: container %d committed on node %s", mid, ctid, self.m.layout.node)

    async def _after_lazy(self, ctid: int, daemon: asyncio.subprocess.Process) -> None:
        rc = await daemon.wait()
        if rc != 0:
            log.error("lazy-pages daemon of container %d exited with %d: pages may be missing", ctid, rc)
        else:
            log.info("container %d: every memory page arrived from the source", ctid)
        shutil.rmtree(self.work_dir(ctid), ignore_errors=True)

    async def abort(self, mid: str, ctid: int, *, keep_dst: bool) -> None:
        """Undo everything this side did for the migration (idempotent)."""
        inc = self.active.get(ctid)
        j = inc.j if inc is not None else journal.load(self.m.layout.run_dir, "in", ctid)
        if j is None or (mid and j.id != mid):
            return
        if j.state == journal.IN_COMMITTED:
            raise VzError(Kind.STATE, f"migration {j.id} of {ctid} is committed here; it cannot be aborted")
        if inc is not None and inc.daemon is not None:
            await inc.daemon.stop()
        if inc is not None and inc.lazy_pages is not None and inc.lazy_pages.returncode is None:
            inc.lazy_pages.kill()
            await inc.lazy_pages.wait()
        await self._discard(ctid, j.state, keep_dst=keep_dst)
        journal.remove(self.m.layout.run_dir, "in", ctid)
        self.active.pop(ctid, None)
        log.info("migration %s: container %d aborted on node %s%s", j.id, ctid, self.m.layout.node,
                 " (partial copy kept)" if keep_dst else "")

    async def _discard(self, ctid: int, state: str, *, keep_dst: bool) -> None:
        lay = self.m.layout
        rsyncd.kill_from_pidfile(self.work_dir(ctid) / "rsyncd")  # left by a crashed agent
        st = await self.m.runc.state(ctid)
        if st is not None:
            if st.status in ("running", "paused", "created"):
                with contextlib.suppress(VzError):
                    await self.m.runc.kill(ctid, signal.SIGKILL, all_processes=True)
            await self.m.runc.delete(ctid, force=True)
        inc = self.active.get(ctid)
        if inc is not None:
            with contextlib.suppress(VzError):
                await self.m.net.teardown(self.m.net_plan(ctid, inc.cfg))
        await netns.remove(lay.netns_name(ctid))
        if mounts.is_mountpoint(lay.ve_root(ctid)):
            await mounts.unmount(lay.ve_root(ctid))
        with contextlib.suppress(OSError):
            lay.ve_root(ctid).rmdir()
        shutil.rmtree(lay.bundle(ctid), ignore_errors=True)
        lay.conf_file(ctid).unlink(missing_ok=True)
        if mounts.is_mountpoint(lay.private(ctid)) or quota.image_path(lay, ctid).exists():
            await quota.discard_private(lay, ctid)  # a disk image is not kept for a retry
        elif lay.private(ctid).exists():
            if keep_dst:
                shutil.rmtree(self.incoming_dir(ctid), ignore_errors=True)
                os.rename(lay.private(ctid), self.incoming_dir(ctid))
            else:
                await asyncio.to_thread(shutil.rmtree, lay.private(ctid), True)
        if not keep_dst:
            await asyncio.to_thread(shutil.rmtree, self.incoming_dir(ctid), True)
        for name in ("restore.log", "lazy-pages.log"):  # kept for diagnosis of the failed attempt
            with contextlib.suppress(OSError):
                shutil.copy(self.work_dir(ctid) / "restore" / name,
                            lay.run_dir / "migrations" / f"failed-{ctid}-{name}")
        shutil.rmtree(self.work_dir(ctid), ignore_errors=True)

    def state(self, mid: str, ctid: int) -> str:
        j = journal.load(self.m.layout.run_dir, "in", ctid)
        if j is not None and (not mid or j.id == mid):
            return j.state
        if self.m.layout.conf_file(ctid).exists():
            return "owned"
        return "none"

    async def recover(self) -> None:
        """At agent start: drop incoming migrations that never committed (the source resumes)."""
        for j in journal.pending(self.m.layout.run_dir, "in"):
            if j.state == journal.IN_COMMITTED:
                journal.remove(self.m.layout.run_dir, "in", j.ctid)
                continue
            log.warning("discarding unfinished incoming migration %s of container %d", j.id, j.ctid)
            await self._discard(j.ctid, j.state, keep_dst=j.keep_dst)
            journal.remove(self.m.layout.run_dir, "in", j.ctid)
