"""A one-time rsync daemon on the destination: its own port, user and password, one module."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from agent.errors import Kind, VzError
from agent.runtime.runc import pid_alive


@dataclass
class RsyncDaemon:
    proc: asyncio.subprocess.Process
    url: str
    password: str
    workdir: Path

    async def stop(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 5)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


async def start(host: str, target: Path, workdir: Path) -> RsyncDaemon:
    """Serve `target` (read-write, as root, numeric ids) to one user with a fresh password."""
    workdir.mkdir(parents=True, exist_ok=True, mode=0o700)
    user = "vzmig"
    password = secrets.token_urlsafe(24)
    secrets_file = workdir / "rsyncd.secrets"
    secrets_file.write_text(f"{user}:{password}\n")
    secrets_file.chmod(0o600)
    conf = workdir / "rsyncd.conf"
    conf.write_text(
        "use chroot = yes\n"
        # chrooted into the module, symlinks of a rootfs arrive verbatim (without chroot, rsync rewrites
        # absolute ones); the sender is an authenticated peer agent
        "munge symlinks = no\n"
        f"pid file = {workdir / 'rsyncd.pid'}\n"
        "[ct]\n"
        f"    path = {target}\n"
        "    read only = false\n"
        "    uid = root\n    gid = root\n"
        "    numeric ids = true\n"
        f"    auth users = {user}\n"
        f"    secrets file = {secrets_file}\n"
        "    strict modes = true\n"
    )
    last_err = ""
    for _ in range(5):
        port = _free_port(host)
        proc = await asyncio.create_subprocess_exec(
            "rsync", "--daemon", "--no-detach", f"--config={conf}", f"--address={host}", f"--port={port}",
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE, start_new_session=True)
        for _ in range(50):
            await asyncio.sleep(0.02)
            if proc.returncode is not None:
                break
            with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
                h = f"[{host}]" if ":" in host else host
                return RsyncDaemon(proc, f"rsync://{user}@{h}:{port}/ct/", password, workdir)
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        last_err = (await proc.stderr.read()).decode(errors="replace")[-200:] if proc.stderr else ""
    raise VzError(Kind.FAILED, f"could not start the rsync daemon for the migration: {last_err}")


def rsync_argv(src: Path, url: str, *, final: bool, bwlimit_kbps: int = 0) -> list[str]:
    """The source side: push src/ into the destination's module (deletes what vanished)."""
    argv = ["rsync", "-aHAX", "--numeric-ids", "--delete", "--inplace", "--stats"]
    if final:
        argv.append("--modify-window=-1")  # a same-size file rewritten within the same second
    if bwlimit_kbps:
        argv.append(f"--bwlimit={bwlimit_kbps}")
    return [*argv, f"{src}/", url]


def kill_from_pidfile(workdir: Path) -> None:
    """End the daemon a crashed agent left behind (its pid file; only if it is our rsync daemon)."""
    pid_file = workdir / "rsyncd.pid"
    try:
        pid = int(pid_file.read_text().strip())
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except (OSError, ValueError):
        return
    if b"rsync" in cmdline and str(workdir / "rsyncd.conf").encode() in cmdline:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 2
            while pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.02)
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
