"""vzfleet-agent: the daemon on every hardware node.

It serves the node's containers over gRPC on a root-only unix socket. Containers do not depend on
it: stopping the agent leaves them running, and a new agent re-adopts them from runc's state.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import logging
import logging.handlers
import os
import shutil
import signal
import sys
from pathlib import Path

import grpc

from agent import __version__
from agent.config.samples import default_vz_conf
from agent.containers import ContainerManager
from agent.layout import NodeLayout, default_node_name
from agent.migration.destination import Destination
from agent.migration.source import Source, Tls
from agent.purge import purge_node
from agent.runtime import criu_cache
from agent.service.container_service import AgentService, ContainerService, TemplateService
from agent.service.migration_service import MigrationControl, MigrationPeer
from agent.service.resource_service import register as register_resources
from agent.service.storage_service import register as register_storage
from vzapi import container_pb2_grpc as pb_grpc
from vzapi import migration_pb2_grpc as mig_grpc

log = logging.getLogger("vzfleet.agent")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="vzfleet-agent",
        description="The vzfleet node agent: runs this node's system containers (runc) and serves "
                    "vzctl/vzlist over a root-only unix socket.")
    p.add_argument("--root", default=os.environ.get("VZFLEET_ROOT", "/"),
                   help="directory holding etc/vz, var/lib/vz and run/vzfleet (default: /)")
    p.add_argument("--node", default=os.environ.get("VZFLEET_NODE") or None,
                   help=f"node name (default: short host name, here {default_node_name()!r})")
    p.add_argument("--socket", default=None, help="unix socket path (default: ROOT/run/vzfleet/agent.sock)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--listen", default=os.environ.get("VZFLEET_LISTEN") or None, metavar="HOST:PORT",
                   help="also serve other agents (migrations) on this TCP address, with mutual TLS")
    p.add_argument("--tls-dir", default=None, metavar="DIR",
                   help="ca.pem, node.pem and node.key for agent-to-agent TLS (default: ROOT/etc/vz/tls)")
    p.add_argument("--purge", action="store_true",
                   help="do not serve: kill every container of this node and remove its namespaces, mounts, "
                        "cgroups and runc state (configs and private areas stay), then exit")
    p.add_argument("--version", action="version", version=f"vzfleet-agent {__version__}")
    return p.parse_args(argv)


def setup_logging(layout: NodeLayout, level: str) -> None:
    layout.log_file.parent.mkdir(parents=True, exist_ok=True)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    to_file = logging.handlers.WatchedFileHandler(layout.log_file)
    to_file.setFormatter(fmt)
    # journal-friendly: no timestamps on stderr (journald adds its own)
    to_err = logging.StreamHandler(sys.stderr)
    to_err.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [to_file, to_err]
    root.setLevel(level.upper())


def preflight() -> None:
    if os.geteuid() != 0:
        sys.exit("vzfleet-agent: must run as root (it manages namespaces, cgroups and mounts)")
    for tool in ("runc", "nsenter", "mount"):
        if shutil.which(tool) is None:
            sys.exit(f"vzfleet-agent: {tool!r} not found on PATH; run `make install` first")
    if note := criu_cache.ensure_kdat_dir():
        print(f"vzfleet-agent: warning: {note}", file=sys.stderr)


def take_pidfile(path: Path) -> int:
    """Hold an exclusive lock on the pid file for the agent's lifetime: one agent per node root."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        other = os.pread(fd, 32, 0).decode(errors="replace").strip()
        sys.exit(f"vzfleet-agent: another agent (pid {other or '?'}) already serves this node ({path})")
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def load_tls(tls_dir: Path) -> Tls | None:
    files = [tls_dir / n for n in ("ca.pem", "node.pem", "node.key")]
    if not all(f.exists() for f in files):
        return None
    ca, cert, key = (f.read_bytes() for f in files)
    return Tls(ca=ca, cert=cert, key=key)


async def serve(layout: NodeLayout, socket_path: Path, listen: str | None, tls: Tls | None) -> None:
    manager = ContainerManager(layout)
    listen_host = listen.rsplit(":", 1)[0].strip("[]") if listen else "127.0.0.1"
    source = Source(manager, tls, listen_host)
    dest = Destination(manager, listen_host)
    await dest.recover()
    await source.recover()
    settler = asyncio.create_task(source.reconcile_forever(), name="settle-migrations")
    disk_limits = asyncio.create_task(manager.enforce_disk_limits_forever(), name="disk-soft-limits")
    running = await manager.runc.list_states()
    adopted = sorted(k for k, s in running.items() if s.status in ("running", "paused"))
    log.info("node %s: %d container(s) running, adopted: %s", layout.node, len(adopted),
             " ".join(adopted) or "none")

    boot_marker = layout.run_dir / "booted"
    if not boot_marker.exists():
        boot_marker.touch()
        if started := await manager.start_onboot():
            log.info("node boot: started onboot containers %s", " ".join(map(str, started)))

    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 32 << 20)])
    pb_grpc.add_ContainerServiceServicer_to_server(ContainerService(manager), server)
    pb_grpc.add_TemplateServiceServicer_to_server(TemplateService(manager), server)
    pb_grpc.add_AgentServiceServicer_to_server(AgentService(manager), server)
    register_resources(server, manager)
    register_storage(server, manager)
    mig_grpc.add_MigrationControlServicer_to_server(MigrationControl(source), server)
    peer_server = None
    if listen:
        if tls is None:
            sys.exit("vzfleet-agent: --listen needs TLS credentials (ca.pem, node.pem, node.key in --tls-dir)")
        peer_server = grpc.aio.server(options=[("grpc.max_receive_message_length", 8 << 20)])
        mig_grpc.add_MigrationPeerServicer_to_server(MigrationPeer(dest), peer_server)
        creds = grpc.ssl_server_credentials([(tls.key, tls.cert)], root_certificates=tls.ca,
                                            require_client_auth=True)
        peer_server.add_secure_port(listen, creds)
        await peer_server.start()
        log.info("serving other agents on %s (mutual TLS)", listen)
    socket_path.unlink(missing_ok=True)
    old_umask = os.umask(0o077)
    try:
        server.add_insecure_port(f"unix://{socket_path}")
        await server.start()
    finally:
        os.umask(old_umask)
    os.chmod(socket_path, 0o600)
    log.info("vzfleet-agent %s listening on %s (root %s)", __version__, socket_path, layout.root)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down; containers keep running")
    settler.cancel()
    disk_limits.cancel()
    if peer_server is not None:
        await peer_server.stop(grace=5)
    await server.stop(grace=5)
    socket_path.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    preflight()
    try:
        layout = NodeLayout.at(args.root, args.node)
    except ValueError as e:
        sys.exit(f"vzfleet-agent: {e}")
    layout.make_dirs()
    if not layout.vz_conf.exists():
        layout.vz_conf.write_text(default_vz_conf())
    setup_logging(layout, args.log_level)
    if args.purge:
        for line in asyncio.run(purge_node(layout)):
            print(line)
        return
    pid_fd = take_pidfile(layout.pid_file)
    try:
        tls = load_tls(Path(args.tls_dir) if args.tls_dir else layout.etc_dir / "tls")
        asyncio.run(serve(layout, Path(args.socket) if args.socket else layout.socket_path, args.listen, tls))
    finally:
        os.close(pid_fd)


if __name__ == "__main__":
    main()
