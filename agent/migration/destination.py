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

from agent import mounts
from agent.config.conffile import ConfFile, ConfigError
from agent.config.params import ContainerConfig
from agent.containers import ContainerManager
from agent.errors import Kind, VzError
from agent.migration import facts, failpoints, images, journal, rsyncd
from agent.network import netns

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


class Destination:
    def __init__(self, manager: ContainerManager, listen_host: str) -> None:
        self.m = manager
        self.listen_host = listen_host
        self.active: dict[int, Incoming] = {}

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
                      check_only: bool, private_bytes: int, skip: Sequence[str]) -> tuple[Facts, list[str], bool,
                                                                                          str, str]:
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
        if self.m.layout.conf_file(ctid).exists() or self.m.layout.private(ctid).exists():
            checks.append(f"FAILED: ctid: container {ctid} already exists on node {dst.node}")
        else:
            checks.append(f"ok: ctid: {ctid} is free on node {dst.node}")
        if "ip" not in skip and cfg.ip_addresses:
            try:
                await self.m.check_addresses(ctid, cfg.ip_addresses, lan=not online)
                checks.append(f"ok: ip: {' '.join(cfg.ip_addresses)} free on node {dst.node}")
            except VzError as e:
                checks.append(f"FAILED: ip: {e}")
        checks += check_compat(src, dst, online=online, private_bytes=private_bytes, skip=skip)
        ok = not any(c.startswith("FAILED") for c in checks)
        if check_only or not ok:
            return dst, checks, ok, "", ""
        failpoints.hit("dst-prepare")
        target = self.incoming_dir(ctid)
        target.mkdir(mode=0o755, exist_ok=True)
        work = self.work_dir(ctid)
        work.mkdir(parents=True, exist_ok=True, mode=0o700)
        j = journal.Journal(id=mid, ctid=ctid, direction="in", state=journal.IN_PREPARED, peer=src.node,
                            online=online)
        journal.save(self.m.layout.run_dir, j)
        inc = Incoming(j=j, cfg=cfg, conf_text=conf_text)
        self.active[ctid] = inc
        inc.daemon = await rsyncd.start(self.listen_host, target, work / "rsyncd")
        log.info("migration %s: prepared to receive container %d from %s", mid, ctid, src.node)
        return dst, checks, ok, inc.daemon.url, inc.daemon.password

    async def receive_images(self, mid: str, ctid: int, stream_file: Path, manifest: Mapping[str, str]) -> None:
        inc = self._get(mid, ctid)
        img = self.work_dir(ctid) / "img"
        await asyncio.to_thread(images.unpack, stream_file, img, manifest)
        stream_file.unlink(missing_ok=True)
        inc.manifest = dict(manifest)

    async def restore(self, mid: str, ctid: int, *, start: bool) -> tuple[int, float]:
        """Make the received container this node's: online -> restored from its images with the
        node side of its network still down; offline -> started only if `start`."""
        inc = self._get(mid, ctid)
        t0 = time.monotonic()
        if inc.daemon is not None:
            await inc.daemon.stop()
            inc.daemon = None
        if inc.j.online and inc.manifest is None:
            raise VzError(Kind.STATE, "no verified image set received for this migration")
        failpoints.hit("dst-restore")
        lay = self.m.layout
        conf = ConfFile.parse(inc.conf_text, str(lay.conf_file(ctid)))
        conf.update_values({"VE_ROOT": str(lay.ve_root(ctid)), "VE_PRIVATE": str(lay.private(ctid))})
        os.rename(self.incoming_dir(ctid), lay.private(ctid))
        conf.save(lay.conf_file(ctid))
        inc.j.state = journal.IN_RESTORED
        journal.save(lay.run_dir, inc.j)
        cfg = self.m.load(ctid)[1]
        pid = 0
        if inc.j.online:
            await self.m.mount_private(ctid)
            net = self.m.net_plan(ctid, cfg)
            ns_name = lay.netns_name(ctid)
            ns_path = await netns.create(ns_name)
            await self.m.net.setup(ns_name, net, host_up=False)
            bundle = self.m.write_bundle(ctid, cfg, ns_path)
            pid = await self.m.runc.restore(ctid, bundle, self.work_dir(ctid) / "img", self.work_dir(ctid) / "restore")
        elif start:
            info = await self.m.start(str(ctid))
            pid = info.init_pid
        log.info("migration %s: container %d restored (pid %d)", mid, ctid, pid)
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
            net = self.m.net_plan(ctid, inc.cfg)
            await self.m.net.set_host_links(net, up=True)
            await self.m.net.announce(net)
        shutil.rmtree(self.work_dir(ctid), ignore_errors=True)
        journal.remove(self.m.layout.run_dir, "in", ctid)
        self.active.pop(ctid, None)
        log.info("migration %s: container %d committed on node %s", mid, ctid, self.m.layout.node)

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
        await self._discard(ctid, j.state, keep_dst=keep_dst)
        journal.remove(self.m.layout.run_dir, "in", ctid)
        self.active.pop(ctid, None)
        log.info("migration %s: container %d aborted on node %s%s", j.id, ctid, self.m.layout.node,
                 " (partial copy kept)" if keep_dst else "")

    async def _discard(self, ctid: int, state: str, *, keep_dst: bool) -> None:
        lay = self.m.layout
        if state == journal.IN_RESTORED:
            st = await self.m.runc.state(ctid)
            if st is not None:
                if st.status in ("running", "paused", "created"):
                    with contextlib.suppress(VzError):
                        await self.m.runc.kill(ctid, signal.SIGKILL, all_processes=True)
                await self.m.runc.delete(ctid, force=True)
            with contextlib.suppress(VzError, FileNotFoundError):
                await self.m.net.teardown(self.m.net_plan(ctid, self.m.load(ctid)[1]))
            await netns.remove(lay.netns_name(ctid))
            if mounts.is_mountpoint(lay.ve_root(ctid)):
                await mounts.unmount(lay.ve_root(ctid))
            lay.conf_file(ctid).unlink(missing_ok=True)
            if lay.private(ctid).exists():
                os.rename(lay.private(ctid), self.incoming_dir(ctid))
        if not keep_dst:
            await asyncio.to_thread(shutil.rmtree, self.incoming_dir(ctid), True)
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
