"""The container manager: every container operation of one node, with its rollback.

Each mutating operation holds the container's lock, validates everything it can before touching
the system, and undoes what it did when a later step fails (a failed `create` leaves neither
private area nor config; a failed `start` leaves no namespace, mount or runc state behind).
The manager never keeps container state in memory: the config file, runc's state and the kernel
are the truth, which is why an agent restart simply re-adopts running containers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from agent import beancounters, cgroups, mounts, proc
from agent.checkpoint import dumpfile as dumpfile_io
from agent.config.conffile import ConfFile, ConfigError
from agent.config.params import ContainerConfig, ParamError, apply_params
from agent.config.samples import sample_text
from agent.errors import Kind, VzError
from agent.layout import CTID_MAX, CTID_MIN, NodeLayout
from agent.migration import journal as migration_journal
from agent.network import netns
from agent.network import plan as netplan
from agent.network.apply import NodeNetwork
from agent.runtime import apply_limits, limits
from agent.runtime import criu_conf as criu_options
from agent.runtime.oci import ContainerSpec, build_spec
from agent.runtime.runc import Runc, State, pid_alive, uptime_seconds
from agent.storage import quota, rootfs
from agent.storage.archive import ArchiveError, extract_archive
from agent.storage.templates import TemplateCache, TemplateNotFound

log = logging.getLogger(__name__)

LOCK_WAIT_S = 30.0
DISK_CHECK_S = 2.0  # how often soft disk limits past their grace period are looked at
SETTLE_OP = "settle a migration"  # the one operation allowed on a container an unsettled migration froze
# What each option does today (docs/resources.md). Options outside these sets are validated and
# stored but not enforced yet: the agent says so in its reply instead of ignoring them silently.
STORED_ONLY = frozenset({"name", "description", "onboot", "bootorder", "disabled", "stop-timeout", "ostemplate"})
LIVE = frozenset({"hostname", "ipadd", "ipdel", "nameserver", "searchdomain", "ram", "swap", "physpages",
                  "swappages", "cpuunits", "cpulimit", "cpus", "cpumask", "nodemask", "numproc"}) \
    | limits.LIVE_RESOURCE_OPTS
AT_START = frozenset({"capability", "netfilter", "netif-add", "netif-del"})
RESOURCE_OPTS = LIVE - {"hostname", "ipadd", "ipdel", "nameserver", "searchdomain"}
UNSUPPORTED = frozenset({"userpasswd"})


@dataclass(frozen=True)
class Status:
    ctid: int
    exists: bool
    mounted: bool
    running: bool
    suspended: bool


@dataclass(frozen=True)
class Info:
    ctid: int
    config: ContainerConfig
    status: str  # running | stopped | suspended
    mounted: bool
    init_pid: int
    nproc: int
    uptime: float | None


@dataclass(frozen=True)
class SetResult:
    info: Info
    notes: list[str]


def exec_helper() -> Path | None:
    """The built vzfleet-exec helper (make install compiles it), if present."""
    env = os.environ.get("VZFLEET_EXEC_HELPER")
    for cand in ([Path(env)] if env else []) + [Path(__file__).resolve().parent.parent / "build" / "vzfleet-exec"]:
        if cand.is_file() and os.access(cand, os.X_OK):
            return cand
    return None


def _own_timens(pid: int) -> bool | None:
    """True if pid shares our time namespace, False if not, None if unknown."""
    try:
        return os.readlink(f"/proc/{pid}/ns/time") == os.readlink("/proc/self/ns/time")
    except OSError:
        return None


def parse_ctid(text: str) -> int:
    """A numeric CTID in OpenVZ's range (<= 100 is reserved)."""
    if not text.isdigit():
        raise VzError(Kind.INVALID, f"invalid CTID {text!r}: use a number from {CTID_MIN} to {CTID_MAX}")
    ctid = int(text)
    if not CTID_MIN <= ctid <= CTID_MAX:
        raise VzError(Kind.INVALID, f"CTID {ctid} is out of range: use {CTID_MIN}..{CTID_MAX} "
                                    f"(0-100 are reserved)")
    return ctid


class ContainerManager:
    def __init__(self, layout: NodeLayout, runc: Runc | None = None) -> None:
        self.layout = layout
        self.runc = runc or Runc(layout.runc_root)
        self.templates = TemplateCache(layout.template_cache)
        self._locks: dict[int, asyncio.Lock] = {}
        devs = (self._vz_conf().get("NEIGHBOUR_DEVS") or "detect").split()
        self.net = NodeNetwork(None if devs in ([], ["detect"]) else devs)

    # ---- locking and lookup -------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _locked(self, ctid: int, op: str) -> AsyncIterator[None]:
        lock = self._locks.setdefault(ctid, asyncio.Lock())
        try:
            await asyncio.wait_for(lock.acquire(), LOCK_WAIT_S)
        except TimeoutError:
            raise VzError(Kind.BUSY, f"container {ctid} is locked by another operation; "
                                     f"{op} gave up after {LOCK_WAIT_S:g} s, try again") from None
        try:
            if op != SETTLE_OP:
                self._refuse_if_unsettled(ctid, op)
            yield
        finally:
            lock.release()

    def _refuse_if_unsettled(self, ctid: int, op: str) -> None:
        """A container frozen by a migration whose commit outcome is unknown must not be thawed,
        stopped, moved or destroyed here: the destination may own it (two copies, or none)."""
        j = migration_journal.load(self.layout.run_dir, "out", ctid)
        if j is not None and j.state in (migration_journal.OUT_FROZEN, migration_journal.OUT_COMMIT_SENT):
            raise VzError(Kind.STATE, f"container {ctid} is frozen by migration {j.id} to {j.peer}, whose "
                                      f"outcome is not known yet: the destination may own it now. It settles "
                                      f"by itself once the destination answers; {op} refused until then")

    def locked(self, ctid: int, op: str) -> contextlib.AbstractAsyncContextManager[None]:
        """The container's lock, for operations built outside the manager (migration)."""
        return self._locked(ctid, op)

    async def stop_unlocked(self, ctid: int) -> None:
        """Stop with a clean halt; the caller holds the container's lock."""
        await self._stop(ctid, fast=False, timeout=0)

    async def start_unlocked(self, ctid: int) -> None:
        """Start; the caller holds the container's lock."""
        await self._start(ctid, wait=False, force=True)

    async def enforce_disk_limits_forever(self, period: float = DISK_CHECK_S) -> None:
        """Soft disk limits whose grace period ran out (quota.enforce_soft_limit), every few seconds.
        A container busy with another operation is looked at in the next round."""
        while True:
            await asyncio.sleep(period)
            for ctid in self.ctids():
                lock = self._locks.setdefault(ctid, asyncio.Lock())
                if lock.locked():
                    continue
                async with lock:
                    try:
                        note = await quota.enforce_soft_limit(self.layout, ctid)
                    except (VzError, OSError) as e:
                        log.warning("disk soft limit of container %d: %s", ctid, e)
                        continue
                if note:
                    log.info("%s", note)

    def ctids(self) -> list[int]:
        out = []
        if self.layout.conf_dir.is_dir():
            for p in self.layout.conf_dir.glob("*.conf"):
                if p.stem.isdigit():
                    out.append(int(p.stem))
        return sorted(out)

    def resolve(self, ref: str) -> int:
        """CTID or --name alias -> CTID of an existing container."""
        ref = ref.strip()
        if not ref:
            raise VzError(Kind.INVALID, "no CTID given")
        if ref.isdigit():
            ctid = parse_ctid(ref)
            if not self.layout.conf_file(ctid).exists():
                raise VzError(Kind.NOT_FOUND, f"container {ctid} does not exist "
                                              f"(see `vzlist -a`, or create it with `vzctl create {ctid}`)")
            return ctid
        for ctid in self.ctids():
            with contextlib.suppress(VzError):
                if self.load(ctid)[1].name == ref:
                    return ctid
        raise VzError(Kind.NOT_FOUND, f"no container is named {ref!r} (see `vzlist -a -o ctid,name`)")

    def load(self, ctid: int) -> tuple[ConfFile, ContainerConfig]:
        path = self.layout.conf_file(ctid)
        try:
            conf = ConfFile.load(path)
        except FileNotFoundError:
            raise VzError(Kind.NOT_FOUND, f"container {ctid} does not exist") from None
        except ConfigError as e:
            raise VzError(Kind.INVALID, f"broken config: {e}") from None
        try:
            return conf, ContainerConfig.from_conf(conf, str(path))
        except ConfigError as e:
            raise VzError(Kind.INVALID, f"broken config: {e}") from None

    def _vz_conf(self) -> ConfFile:
        """The node's global vz.conf (empty when missing)."""
        try:
            return ConfFile.load(self.layout.vz_conf)
        except FileNotFoundError:
            return ConfFile.parse("", str(self.layout.vz_conf))
        except ConfigError as e:
            raise VzError(Kind.INVALID, f"broken node config: {e}") from None

    # ---- queries ------------------------------------------------------------------------------

    async def _state(self, ctid: int) -> State | None:
        st = await self.runc.state(ctid)
        if st is not None and st.status in ("running", "paused") and not pid_alive(st.pid):
            return State(st.id, "stopped", st.pid)
        return st

    async def status(self, ref: str) -> Status:
        ctid = parse_ctid(ref) if ref.isdigit() else self.resolve(ref)
        exists = self.layout.conf_file(ctid).exists()
        st = await self._state(ctid) if exists else None
        return Status(
            ctid=ctid,
            exists=exists,
            mounted=mounts.is_mountpoint(self.layout.ve_root(ctid)),
            running=st is not None and st.status in ("running", "paused"),
            suspended=(st is not None and st.status == "paused") or self.dump_path(ctid).exists(),
        )

    async def info(self, ctid: int, states: dict[str, State] | None = None) -> Info:
        _, cfg = self.load(ctid)
        st = states.get(str(ctid)) if states is not None else await self._state(ctid)
        running = st is not None and st.status in ("running", "paused") and pid_alive(st.pid)
        status = "suspended" if self.dump_path(ctid).exists() else "stopped"
        if running and st is not None:
            status = "suspended" if st.status == "paused" else "running"
        pid = st.pid if running and st is not None else 0
        return Info(
            ctid=ctid,
            config=cfg,
            status=status,
            mounted=mounts.is_mountpoint(self.layout.ve_root(ctid)),
            init_pid=pid,
            nproc=len(cgroups.procs(self.layout.cgroup_path(ctid))) if running else 0,
            uptime=uptime_seconds(pid) if running else None,
        )

    async def list_containers(self, *, include_stopped: bool, stopped_only: bool,
                              refs: Sequence[str] = ()) -> list[Info]:
        ctids = [self.resolve(r) for r in refs] if refs else self.ctids()
        states = await self.runc.list_states()
        out = []
        for ctid in ctids:
            try:
                info = await self.info(ctid, states)
            except VzError as e:
                log.warning("skipping container %d: %s", ctid, e)
                continue
            running = info.init_pid != 0
            if (stopped_only and running) or (not stopped_only and not include_stopped and not running
                                              and not refs):
                continue
            out.append(info)
        return out

    # ---- create / destroy ---------------------------------------------------------------------

    def _name_taken(self, name: str, exclude: int | None = None) -> int | None:
        for other in self.ctids():
            if other == exclude:
                continue
            with contextlib.suppress(VzError):
                if self.load(other)[1].name == name:
                    return other
        return None

    async def create(self, ctid_text: str, ostemplate: str, config: str,
                     params: Sequence[tuple[str, str]]) -> Info:
        ctid = parse_ctid(ctid_text)
        async with self._locked(ctid, "create"):
            private = self.layout.private(ctid)
            conf_path = self.layout.conf_file(ctid)
            if conf_path.exists():
                raise VzError(Kind.EXISTS, f"container {ctid} already exists "
                                           f"(config {conf_path}); choose another CTID or destroy it first")
            if private.exists():
                raise VzError(Kind.EXISTS, f"private area {private} already exists; remove it or "
                                           f"choose another CTID")
            vzconf = self._vz_conf()
            sample_name = config or vzconf.get("CONFIGFILE") or "basic"
            try:
                conf = ConfFile.parse(sample_text(sample_name, self.layout.conf_dir),
                                      str(self.layout.conf_dir / f"ve-{sample_name}.conf-sample"))
            except ConfigError as e:
                raise VzError(Kind.INVALID, str(e)) from None
            template = ostemplate or vzconf.get("DEF_OSTEMPLATE") or ""
            if not template:
                raise VzError(Kind.INVALID, "no --ostemplate given and vz.conf has no DEF_OSTEMPLATE")
            try:
                archive = self.templates.find(template)
            except TemplateNotFound as e:
                raise VzError(Kind.TEMPLATE, str(e)) from None
            if bad := sorted({n.replace("_", "-") for n, _ in params} & UNSUPPORTED):
                raise VzError(Kind.INVALID, "not supported yet: " + ", ".join(f"--{o}" for o in bad))
            changes = self._apply(conf, params)
            changes["OSTEMPLATE"] = template
            changes["VE_ROOT"] = str(self.layout.ve_root(ctid))
            changes["VE_PRIVATE"] = str(private)
            conf.update_values(changes)
            quota.choose_layout(conf, params)  # an explicit --diskspace: a disk image (VE_LAYOUT=image)
            try:
                cfg = ContainerConfig.from_conf(conf, str(conf_path))
            except ConfigError as e:
                raise VzError(Kind.INVALID, str(e)) from None
            if cfg.name and (other := self._name_taken(cfg.name)) is not None:
                raise VzError(Kind.EXISTS, f"name {cfg.name!r} is already used by container {other}")
            await self.check_addresses(ctid, cfg.ip_addresses)

            # nothing has been written yet; from here on, undo on failure
            partial = self.layout.private_dir / f".{ctid}.partial"
            await quota.discard_area(self.layout, ctid, partial)  # what a crashed create left
            try:
                await quota.new_area(self.layout, ctid, conf, partial)  # VE_LAYOUT=image: disk image on partial
                try:
                    await asyncio.to_thread(extract_archive, archive, partial)
                except ArchiveError as e:
                    raise VzError(Kind.TEMPLATE, f"template {template!r}: {e}") from None
                if cfg.hostname:
                    rootfs.write_file(partial, "etc/hostname", f"{cfg.hostname}\n".encode())
                if not await quota.close_area(self.layout, ctid, partial):  # a disk image is in place now
                    os.rename(partial, private)
                self.layout.conf_dir.mkdir(parents=True, exist_ok=True)
                conf.save(conf_path)
            except BaseException:
                await quota.discard_area(self.layout, ctid, partial)
                if not conf_path.exists():
                    shutil.rmtree(private, ignore_errors=True)
                    quota.remove_image(self.layout, ctid)
                raise
            log.info("created container %d from template %s", ctid, template)
            return await self.info(ctid)

    async def destroy(self, ref: str) -> None:
        ctid = self.resolve(ref)
        async with self._locked(ctid, "destroy"):
            st = await self._state(ctid)
            if st is not None and st.status in ("running", "paused"):
                raise VzError(Kind.STATE, f"container {ctid} is running: stop it first "
                                          f"(`vzctl stop {ctid}`)")
            if st is not None:
                await self.runc.delete(ctid, force=True)
            root = self.layout.ve_root(ctid)
            if mounts.is_mountpoint(root):
                await mounts.unmount(root)
            await quota.unmount_private(self.layout, ctid)
            conf_path = self.layout.conf_file(ctid)
            # config first, so that a crash halfway leaves no container that looks alive
            os.replace(conf_path, conf_path.with_name(f"{ctid}.conf.destroyed"))
            private = self.layout.private(ctid)
            trash = self.layout.private_dir / f".{ctid}.destroying"
            if private.exists():
                os.rename(private, trash)
            await asyncio.to_thread(shutil.rmtree, trash, True)
            quota.remove_image(self.layout, ctid)
            with contextlib.suppress(OSError):
                root.rmdir()
            shutil.rmtree(self.layout.bundle(ctid), ignore_errors=True)
            log.info("destroyed container %d", ctid)

    # ---- mount / start / stop -----------------------------------------------------------------

    async def mount_private(self, ctid: int) -> bool:
        """Bind the private area on the container root; True if this call mounted it."""
        root = self.layout.ve_root(ctid)
        if mounts.is_mountpoint(root):
            return False
        private = self.layout.private(ctid)
        image_mounted = await quota.mount_private(self.layout, ctid)  # the disk image, if it has one
        if not private.is_dir():
            raise VzError(Kind.STATE, f"private area {private} of container {ctid} is missing")
        root.mkdir(parents=True, exist_ok=True)
        try:
            await mounts.bind(private, root)
        except BaseException:
            if image_mounted:
                await quota.unmount_private(self.layout, ctid)
            raise
        return True

    async def mount(self, ref: str) -> Info:
        ctid = self.resolve(ref)
        async with self._locked(ctid, "mount"):
            if mounts.is_mountpoint(self.layout.ve_root(ctid)):
                raise VzError(Kind.STATE, f"container {ctid} is already mounted")
            await self.mount_private(ctid)
        return await self.info(ctid)

    async def umount(self, ref: str) -> Info:
        ctid = self.resolve(ref)
        async with self._locked(ctid, "umount"):
            st = await self._state(ctid)
            if st is not None and st.status in ("running", "paused"):
                raise VzError(Kind.STATE, f"container {ctid} is running: stop it before unmounting")
            root = self.layout.ve_root(ctid)
            if not mounts.is_mountpoint(root):
                raise VzError(Kind.STATE, f"container {ctid} is not mounted")
            await mounts.unmount(root)
            await quota.unmount_private(self.layout, ctid)
        return await self.info(ctid)

    # ---- suspend / resume (checkpoint to a file) --------------------------------------------

    def dump_path(self, ctid: int, dumpfile: str = "") -> Path:
        if not dumpfile:
            return self.layout.dump_dir / f"Dump.{ctid}"
        path = Path(dumpfile)
        if not path.is_absolute() or "\0" in dumpfile:
            raise VzError(Kind.INVALID, f"--dumpfile {dumpfile!r}: give an absolute path")
        return path

    async def suspend(self, ref: str, dumpfile: str = "") -> Info:
        """Checkpoint a running container into a dump file (CRIU) and stop it."""
        ctid = self.resolve(ref)
        path = self.dump_path(ctid, dumpfile)
        async with self._locked(ctid, "suspend"):
            st = await self._state(ctid)
            if st is None or st.status not in ("running", "paused"):
                raise VzError(Kind.STATE, f"container {ctid} is not running")
            if path.exists():
                raise VzError(Kind.EXISTS, f"dump file {path} already exists; resume from it or remove it")
            _, cfg = self.load(ctid)
            net = self.net_plan(ctid, cfg)
            work = self.layout.run_dir / "checkpoint" / str(ctid)
            shutil.rmtree(work, ignore_errors=True)
            (work / "img").mkdir(parents=True, mode=0o700)
            await self.net.lock(net)
            try:
                if st.status == "running":
                    await self.runc.pause(ctid)
                await self.runc.checkpoint(ctid, work / "img", work / "dump", leave_running=True)
                criu_options.record(self.layout.bundle(ctid) / "criu.conf", work / "img")
                size = await asyncio.to_thread(dumpfile_io.write, work / "img", path, ctid)
            except BaseException:
                with contextlib.suppress(VzError):
                    await self.runc.resume(ctid)
                await self.net.expose(net)
                shutil.rmtree(work, ignore_errors=True)
                raise
            # the dump is safe on disk: only now does the frozen container go away
            await self.runc.kill(ctid, signal.SIGKILL, all_processes=True)
            with contextlib.suppress(VzError):
                await self.runc.resume(ctid)
            await self.runc.delete(ctid, force=True)
            await self._cleanup_stopped(ctid)
            shutil.rmtree(work, ignore_errors=True)
            log.info("suspended container %d into %s (%d bytes)", ctid, path, size)
        return await self.info(ctid)

    async def resume(self, ref: str, dumpfile: str = "") -> Info:
        """Restore a container from its dump file; the file is removed once it runs again."""
        ctid = self.resolve(ref)
        path = self.dump_path(ctid, dumpfile)
        async with self._locked(ctid, "resume"):
            st = await self._state(ctid)
            if st is not None and st.status in ("running", "paused"):
                if st.status == "paused" and not dumpfile:
                    await self.runc.resume(ctid)  # a frozen container: just thaw it
                    return await self.info(ctid)
                raise VzError(Kind.STATE, f"container {ctid} is already running")
            if st is not None:
                await self.runc.delete(ctid, force=True)
            work = self.layout.run_dir / "checkpoint" / str(ctid)
            src = await asyncio.to_thread(dumpfile_io.read, path, work / "img")
            if src != ctid:
                shutil.rmtree(work, ignore_errors=True)
                raise VzError(Kind.INVALID, f"{path} holds container {src}, not {ctid}")
            _, cfg = self.load(ctid)
            net = self.net_plan(ctid, cfg)
            undo: list[tuple[str, object]] = []
            try:
                if await self.mount_private(ctid):
                    undo.append(("umount", ctid))
                ns_name = self.layout.netns_name(ctid)
                ns_path = await netns.create(ns_name)
                undo += [("netns", ns_name), ("net", ctid)]
                await self.net.setup(ns_name, net, expose=False)
                bundle = self.write_bundle(ctid, cfg, ns_path)
                undo.append(("runc", ctid))
                # restored with the options it was dumped with (maybe by another agent version)
                (bundle / "criu.conf").write_text(criu_options.for_restore(work / "img"))
                try:
                    await self.runc.restore(ctid, bundle, work / "img", work / "restore")
                finally:
                    (bundle / "criu.conf").write_text(criu_options.CURRENT)  # for its next dump
                await apply_limits.at_start(self.layout, ctid, cfg)  # runc restores only its own limits
                await self.net.expose(net)
            except BaseException:
                await self._undo(undo)
                raise
            finally:
                shutil.rmtree(work, ignore_errors=True)
            path.unlink(missing_ok=True)
            log.info("resumed container %d from %s", ctid, path)
        return await self.info(ctid)

    async def start(self, ref: str, *, wait: bool = False, force: bool = False) -> Info:
        ctid = self.resolve(ref)
        async with self._locked(ctid, "start"):
            await self._start(ctid, wait=wait, force=force)
        return await self.info(ctid)

    async def _start(self, ctid: int, *, wait: bool, force: bool) -> None:
        _, cfg = self.load(ctid)
        if cfg.disabled and not force:
            raise VzError(Kind.STATE, f"container {ctid} is disabled (--disabled yes); "
                                      f"use `vzctl start {ctid} --force` to start it anyway")
        st = await self._state(ctid)
        if st is not None and st.status in ("running", "paused"):
            raise VzError(Kind.STATE, f"container {ctid} is already running")
        if st is not None:  # a stopped leftover from a crash or from a halt inside
            await self.runc.delete(ctid, force=True)
        undo: list[tuple[str, object]] = []
        try:
            if await self.mount_private(ctid):
                undo.append(("umount", ctid))
            root = self.layout.ve_root(ctid)
            if cfg.hostname:
                rootfs.write_file(root, "etc/hostname", f"{cfg.hostname}\n".encode())
            self._write_net_files(root, cfg)
            net = self.net_plan(ctid, cfg)
            if net.venet is not None:
                await self.check_addresses(ctid, net.venet.addresses)
            ns_name = self.layout.netns_name(ctid)
            ns_path = await netns.create(ns_name)
            undo.append(("netns", ns_name))
            undo.append(("net", ctid))
            await self.net.setup(ns_name, net)
            bundle = self.write_bundle(ctid, cfg, ns_path)
            undo.append(("runc", ctid))
            pid = await self.runc.run_detached(ctid, bundle)
            log.info("started container %d (init pid %d)", ctid, pid)
            await apply_limits.at_start(self.layout, ctid, cfg)
            await self.net.announce(net)
            if wait:
                await self._wait_ready(ctid)
        except BaseException:
            await self._undo(undo)
            raise

    async def _undo(self, undo: list[tuple[str, object]]) -> None:
        for what, arg in reversed(undo):
            try:
                if what == "runc":
                    await self.runc.delete(int(str(arg)), force=True)
                elif what == "netns":
                    await netns.remove(str(arg))
                elif what == "net":
                    ctid = int(str(arg))
                    await self.net.teardown(self.net_plan(ctid, self.load(ctid)[1]))
                elif what == "umount":
                    await mounts.unmount(self.layout.ve_root(int(str(arg))))
                    await quota.unmount_private(self.layout, int(str(arg)))
            except Exception as e:  # keep undoing the rest
                log.error("rollback step %s(%s) failed: %s", what, arg, e)

    def write_bundle(self, ctid: int, cfg: ContainerConfig, ns_path: Path) -> Path:
        """The container's OCI bundle (config.json) for this node; returns the bundle directory."""
        root = self.layout.ve_root(ctid)
        bundle = self.layout.bundle(ctid)
        bundle.mkdir(parents=True, exist_ok=True)
        spec = ContainerSpec(
            ctid=ctid,
            rootfs=str(root),
            hostname=cfg.hostname or f"ct{ctid}",
            netns_path=str(ns_path),
            cgroups_path=self.layout.cgroup_path(ctid),
            init=tuple(self._init_argv(root)),
            caps=limits.capabilities(cfg),
            resources=limits.resources(cfg),
        )
        # CRIU options runc has no flag for, read by runc checkpoint/restore through an annotation
        criu_conf = bundle / "criu.conf"
        criu_conf.write_text(criu_options.CURRENT)
        oci = limits.amend_spec(build_spec(spec), cfg, limits.agent_hard_limits())
        oci["annotations"]["org.criu.config"] = str(criu_conf)
        tmp = bundle / "config.json.tmp"
        tmp.write_text(json.dumps(oci, indent=2))
        os.replace(tmp, bundle / "config.json")
        return bundle

    @staticmethod
    def net_plan(ctid: int, cfg: ContainerConfig) -> netplan.NetPlan:
        return netplan.plan(ctid, cfg.ip_addresses, cfg.netifs)

    def _write_net_files(self, root: Path, cfg: ContainerConfig) -> None:
        """/etc/hosts and /etc/resolv.conf inside the container, as OpenVZ's vzctl writes them."""
        if cfg.hostname:
            old = (rootfs.read_file(root, "etc/hosts") or b"").decode(errors="replace")
            rootfs.write_file(root, "etc/hosts", netplan.render_hosts(old, cfg.hostname, cfg.ip_addresses).encode())
        if cfg.nameservers or cfg.searchdomains:
            text = netplan.render_resolv(cfg.nameservers, cfg.searchdomains)
            rootfs.write_file(root, "etc/resolv.conf", text.encode())

    async def check_addresses(self, ctid: int, addresses: Sequence[str], *, lan: bool = True) -> None:
        """Refuse addresses used by another container of this node or (lan) by anyone on the LAN."""
        wanted = {netplan.bare_address(a) for a in addresses}
        if not wanted:
            return
        for other in self.ctids():
            if other == ctid:
                continue
            try:
                theirs = {netplan.bare_address(a) for a in self.load(other)[1].ip_addresses}
            except VzError:
                continue
            if clash := sorted(wanted & theirs):
                raise VzError(Kind.EXISTS, f"address {', '.join(clash)} is already assigned to "
                                           f"container {other} on this node")
        if not lan:
            await self.net.check_free(sorted(wanted), own_if=netplan.venet_host_if(ctid), probe_lan=False)
            return
        own = set()
        st = await self._state(ctid)
        if st is not None and st.status in ("running", "paused"):
            own = {netplan.bare_address(a) for a in self.load(ctid)[1].ip_addresses}
        await self.net.check_free(sorted(wanted - own), own_if=netplan.venet_host_if(ctid))

    def _init_argv(self, root: Path) -> list[str]:
        meta = rootfs.read_file(root, "etc/vzfleet-template") or b""
        for line in meta.decode(errors="replace").splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "INIT" and value.strip().startswith("/"):
                return value.strip().split()
        return ["/sbin/init"]

    async def _wait_ready(self, ctid: int, timeout: float = 30.0) -> None:
        """Wait until the container accepts commands (a process can be run in it)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rc, _, _ = await self.exec_collect(ctid, ["/bin/true"])
            if rc == 0:
                return
            await asyncio.sleep(0.1)
        raise VzError(Kind.FAILED, f"container {ctid} did not become ready in {timeout:g} s")

    async def stop(self, ref: str, *, fast: bool = False, timeout: int = 0) -> Info:
        ctid = self.resolve(ref)
        async with self._locked(ctid, "stop"):
            await self._stop(ctid, fast=fast, timeout=timeout)
        return await self.info(ctid)

    async def _stop(self, ctid: int, *, fast: bool, timeout: int) -> None:
        _, cfg = self.load(ctid)
        st = await self._state(ctid)
        if st is None or st.status not in ("running", "paused"):
            if st is not None:
                await self.runc.delete(ctid, force=True)
            await self._cleanup_stopped(ctid)
            raise VzError(Kind.STATE, f"container {ctid} is not running")
        pid = st.pid
        if st.status == "paused":
            fast = True  # a frozen container cannot halt itself
        if not fast:
            limit = timeout or cfg.stop_timeout
            log.info("stopping container %d (clean halt, timeout %d s)", ctid, limit)
            await self._request_halt(ctid, pid)
            deadline = time.monotonic() + limit
            while pid_alive(pid) and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
        if pid_alive(pid):
            log.info("killing container %d", ctid)
            await self.runc.kill(ctid, signal.SIGKILL, all_processes=True)
            deadline = time.monotonic() + 10
            while pid_alive(pid) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        await self.runc.delete(ctid, force=True)
        await self._cleanup_stopped(ctid)
        log.info("stopped container %d", ctid)

    async def _request_halt(self, ctid: int, pid: int) -> None:
        """Ask the container's OS to halt: its own `halt`, else SIGTERM to its init."""
        rc, _, err = await self.exec_collect(ctid, ["halt"], timeout=10)
        if rc != 0:
            log.info("halt inside %d failed (%s); sending SIGTERM to init", ctid, err.strip()[:200])
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    async def _cleanup_stopped(self, ctid: int) -> None:
        await self.net.teardown(self.net_plan(ctid, self.load(ctid)[1]), netplan.venet_host_if(ctid))
        await netns.remove(self.layout.netns_name(ctid))
        root = self.layout.ve_root(ctid)
        if mounts.is_mountpoint(root):
            await mounts.unmount(root)
        await quota.unmount_private(self.layout, ctid)

    async def restart(self, ref: str, *, fast: bool = False, timeout: int = 0) -> Info:
        ctid = self.resolve(ref)
        async with self._locked(ctid, "restart"):
            with contextlib.suppress(VzError):
                await self._stop(ctid, fast=fast, timeout=timeout)
            await self._start(ctid, wait=False, force=False)
        return await self.info(ctid)

    async def start_onboot(self) -> list[int]:
        """Start the ONBOOT=yes containers that are not running, highest BOOTORDER first.

        Called once per node boot (the agent keeps a marker in its runtime directory, which a
        reboot clears), never on a mere agent restart.
        """
        todo = []
        for ctid in self.ctids():
            try:
                cfg = self.load(ctid)[1]
            except VzError:
                continue
            if cfg.onboot and not cfg.disabled:
                todo.append((-(cfg.bootorder or 0), ctid))
        started = []
        for _, ctid in sorted(todo):
            try:
                await self.start(str(ctid))
                started.append(ctid)
            except VzError as e:
                log.warning("onboot start of %d: %s", ctid, e)
        return started

    # ---- set ----------------------------------------------------------------------------------

    def _apply(self, conf: ConfFile, params: Sequence[tuple[str, str]]) -> dict[str, str | None]:
        try:
            return apply_params(dict(conf.items()), list(params))
        except ParamError as e:
            raise VzError(Kind.INVALID, str(e)) from None

    async def set_params(self, ref: str, params: Sequence[tuple[str, str]], *, save: bool,
                  setmode: str = "") -> SetResult:
        params, reset_ub = beancounters.split_reset_ub(params)
        if reset_ub and not params:
            return await self.reset_ub(ref)
        if not params:
            raise VzError(Kind.INVALID, "nothing to set: give at least one option, e.g. --hostname NAME")
        if setmode not in ("", "restart", "ignore"):
            raise VzError(Kind.INVALID, f"invalid --setmode {setmode!r}: use restart or ignore")
        ctid = self.resolve(ref)
        async with self._locked(ctid, "set"):
            conf_path = self.layout.conf_file(ctid)
            conf, old = self.load(ctid)
            changes = self._apply(conf, params)
            conf.update_values(changes)
            try:
                new = ContainerConfig.from_conf(conf, str(conf_path))
            except ConfigError as e:
                raise VzError(Kind.INVALID, str(e)) from None
            if new.name and new.name != old.name and (other := self._name_taken(new.name, ctid)) is not None:
                raise VzError(Kind.EXISTS, f"name {new.name!r} is already used by container {other}")
            if new.ip_addresses != old.ip_addresses:
                added = {netplan.bare_address(a) for a in new.ip_addresses} - \
                    {netplan.bare_address(a) for a in old.ip_addresses}
                await self.check_addresses(ctid, sorted(added))
            st = await self._state(ctid)
            running = st is not None and st.status in ("running", "paused")
            opts = {name.replace("_", "-") for name, _ in params}
            if bad := sorted(opts & UNSUPPORTED):
                raise VzError(Kind.INVALID, "not supported yet: " + ", ".join(f"--{o}" for o in bad))
            needs_restart = sorted(opts & AT_START)
            not_enforced = sorted(opts - LIVE - STORED_ONLY - AT_START - limits.NOT_ENFORCEABLE.keys()
                                  - quota.OPTIONS)
            notes: list[str] = []
            if not running and not save:
                raise VzError(Kind.STATE, f"container {ctid} is not running, so nothing can be applied "
                                          f"live; add --save to store the change in {conf_path.name}")
            if running and needs_restart and not setmode:
                raise VzError(Kind.STATE, "these options take effect only at start: "
                              + ", ".join(f"--{o}" for o in needs_restart)
                              + "; add --setmode restart to restart now, or --setmode ignore with --save "
                                "to apply them at the next start")
            if opts & quota.OPTIONS:  # disk limits: live on a disk image, resized or rebuilt when stopped
                notes += await quota.apply_change(self.layout, ctid, conf, old, new, opts, running=running)
            if running and st is not None:
                applied = await self._apply_live(ctid, st.pid, old, new, opts & LIVE)
                notes += applied
            if save:
                conf.save(conf_path)
                notes.append(f"saved to {conf_path}")
            if running and needs_restart and setmode == "restart":
                await self._stop(ctid, fast=False, timeout=0)
                await self._start(ctid, wait=False, force=False)
                notes.append("restarted to apply " + ", ".join(f"--{o}" for o in needs_restart))
            elif needs_restart and running:
                notes.append("applies at next start: " + ", ".join(f"--{o}" for o in needs_restart))
            if not_enforced:
                notes.append("stored but not enforced by this version: "
                             + ", ".join(f"--{o}" for o in not_enforced))
            notes += limits.not_enforceable_notes(sorted(opts))
        if reset_ub:
            notes += (await self.reset_ub(str(ctid))).notes
        return SetResult(await self.info(ctid), notes)

    async def reset_ub(self, ref: str) -> SetResult:
        """`vzctl set --reset_ub`: the container's fail counters start again from 0."""
        ctid = await self.require_running(ref)
        info = await self.info(ctid)
        acct = beancounters.for_node(self.layout.node) or beancounters.Accountant(self.layout)
        notes = await asyncio.to_thread(acct.reset, ctid, info.init_pid)
        return SetResult(await self.info(ctid), notes)

    async def _apply_live(self, ctid: int, pid: int, old: ContainerConfig, new: ContainerConfig,
                          opts: set[str]) -> list[str]:
        notes = []
        if "hostname" in opts and new.hostname:
            await proc.run(["nsenter", "--target", str(pid), "--uts", "hostname", new.hostname],
                           what="setting the hostname")
            rootfs.write_file(self.layout.ve_root(ctid), "etc/hostname", f"{new.hostname}\n".encode())
            notes.append(f"hostname set to {new.hostname}")
        if old.ip_addresses != new.ip_addresses:
            notes += await self.net.change_addresses(self.layout.netns_name(ctid), self.net_plan(ctid, old),
                                                     self.net_plan(ctid, new))
        if {"hostname", "ipadd", "ipdel", "nameserver", "searchdomain"} & opts:
            self._write_net_files(self.layout.ve_root(ctid), new)
        if opts & RESOURCE_OPTS:
            res = limits.resources(new)
            await self.runc.update(ctid, res.to_oci())
            notes.append("resource limits applied")
            notes += await apply_limits.live(self.layout, ctid, pid, new, opts)
        return notes

    # ---- exec ---------------------------------------------------------------------------------

    async def require_running(self, ref: str) -> int:
        ctid = self.resolve(ref)
        st = await self._state(ctid)
        if st is None or st.status != "running":
            what = "suspended" if st is not None and st.status == "paused" else "not running"
            raise VzError(Kind.STATE, f"container {ctid} is {what}; start it with `vzctl start {ctid}`")
        return ctid

    async def exec_argv(self, ctid: int, argv: Sequence[str], *, env: Sequence[str] = (),
                        tty: bool = False) -> list[str]:
        """The command line that runs argv inside the container, in all of its namespaces.

        A container restored by CRIU lives in a time namespace of its own, which runc 1.1 does not
        know about: a process it execs would stay in the host's, and CRIU could not restore that
        process tree later ("Can't restore sub-task in NS"; fixed in runc 1.2). For such a container
        runc execs our static helper (agent/runtime/helpers/vzfleet-exec.c), handed over as fd 3,
        which joins init's time namespace and drops the CAP_SYS_ADMIN it needed for that.
        """
        st = await self.runc.state(ctid)
        helper = exec_helper()
        if st is not None and st.pid and helper is not None and _own_timens(st.pid) is False:
            full = self.runc.exec_argv(ctid, ["/proc/self/fd/3", *argv], env=env, tty=tty,
                                       extra=["--preserve-fds", "1", "--cap", "CAP_SYS_ADMIN"])
            return ["sh", "-c", 'exec 3<"$0" && exec "$@"', str(helper), *full]
        return self.runc.exec_argv(ctid, argv, env=env, tty=tty)

    async def exec_collect(self, ctid: int, argv: Sequence[str], timeout: float = 60) -> tuple[int, str, str]:
        """Run argv inside the container and collect its output (for the agent's own use)."""
        res = await proc.run(await self.exec_argv(ctid, argv), timeout=timeout, check=False)
        return res.returncode, res.stdout.decode(errors="replace"), res.stderr.decode(errors="replace")
