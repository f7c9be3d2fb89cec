"""The one production Runtime: runc (Debian package), one state root per node."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent import mounts, proc
from agent.errors import Kind, VzError


@dataclass(frozen=True)
class State:
    id: str
    status: str  # created | running | paused | stopped
    pid: int


class Runc:
    def __init__(self, root: Path, binary: str = "runc") -> None:
        self.root = root
        self.binary = binary

    def _argv(self, *args: str) -> list[str]:
        return [self.binary, "--root", str(self.root), *args]

    async def run_detached(self, ctid: int, bundle: Path) -> int:
        """Create and start the container from bundle/config.json; returns init's host PID.

        Init's stdio is /dev/null (runc passes its own stdio through in detached mode): nothing on
        the host stays attached to the container, which keeps checkpoints simple.
        """
        log_file = bundle / "runc.log"
        pid_file = bundle / "init.pid"
        for f in (log_file, pid_file):
            f.unlink(missing_ok=True)
        args = [self.binary, "--root", str(self.root), "--log", str(log_file), "--log-format", "json",
                "run", "--detach", "--bundle", str(bundle), "--pid-file", str(pid_file), str(ctid)]
        res = await proc.run(args, timeout=60, check=False, what="runc run", capture=False)
        if not res.ok:
            raise VzError(Kind.FAILED, f"runc could not start container {ctid}: {_runc_error(log_file, res)}")
        return int(pid_file.read_text().strip())

    async def checkpoint(self, ctid: int, image_dir: Path, work_dir: Path, *, leave_running: bool = True) -> None:
        """Dump the container with CRIU. With leave_running (and a paused container), it stays frozen."""
        args = [self.binary, "--root", str(self.root), "checkpoint", "--image-path", str(image_dir),
                "--work-path", str(work_dir), "--tcp-established", "--ext-unix-sk", "--file-locks"]
        if leave_running:
            args.append("--leave-running")
        res = await proc.run([*args, str(ctid)], timeout=600, check=False, what="runc checkpoint")
        if not res.ok:
            raise VzError(Kind.FAILED, f"checkpoint of {ctid} failed: {_criu_error(work_dir / 'dump.log', res)}")

    async def checkpoint_lazy(self, ctid: int, image_dir: Path, work_dir: Path, page_server: str
                              ) -> asyncio.subprocess.Process:
        """Post-copy dump: returns once everything but memory is dumped; the returned process keeps
        serving memory pages on page_server (host:port) and exits when the last page was fetched.

        With --leave-running on a paused container, the source stays frozen afterwards.
        """
        work_dir.mkdir(parents=True, exist_ok=True)
        r, w = os.pipe()
        try:
            proc_ = await asyncio.create_subprocess_exec(
                self.binary, "--root", str(self.root), "checkpoint", "--image-path", str(image_dir),
                "--work-path", str(work_dir), "--tcp-established", "--ext-unix-sk", "--file-locks",
                "--leave-running", "--lazy-pages", "--page-server", page_server, "--status-fd", str(w), str(ctid),
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE, pass_fds=(w,), start_new_session=True)
        finally:
            os.close(w)
        try:
            ready = await asyncio.wait_for(asyncio.to_thread(_read_status, r), 120)
        finally:
            os.close(r)
        if not ready:
            if proc_.returncode is None:
                proc_.kill()
            await proc_.wait()
            raise VzError(Kind.FAILED, f"post-copy dump of {ctid} failed: "
                                       f"{_criu_error(work_dir / 'dump.log', proc.Result((), -1, b'', b''))}")
        return proc_

    async def restore(self, ctid: int, bundle: Path, image_dir: Path, work_dir: Path, *, lazy: bool = False) -> int:
        """Restore the container from image_dir into bundle (this node's paths); returns init's PID."""
        pid_file = bundle / "init.pid"
        pid_file.unlink(missing_ok=True)
        work_dir.mkdir(parents=True, exist_ok=True)
        log_file = work_dir / "runc.log"
        log_file.unlink(missing_ok=True)
        args = [self.binary, "--root", str(self.root), "--log", str(log_file), "--log-format", "json",
                "restore", "--detach", "--bundle", str(bundle),
                "--image-path", str(image_dir), "--work-path", str(work_dir), "--pid-file", str(pid_file),
                "--tcp-established", "--ext-unix-sk", "--file-locks", *(["--lazy-pages"] if lazy else []),
                str(ctid)]
        res = await proc.run(args, timeout=600, check=False, what="runc restore", capture=False)
        if not res.ok:
            why = _criu_error_line(work_dir / "restore.log") or _runc_error(log_file, res)
            await self._clean_failed_restore(ctid)
            raise VzError(Kind.FAILED, f"restore of {ctid} failed: {why}")
        return int(pid_file.read_text().strip())

    async def _clean_failed_restore(self, ctid: int) -> None:
        """A failed `runc restore` leaves its state directory with the container's root still
        mounted on criu-root inside, and no state.json (so `runc delete` does not see it)."""
        state = self.root / str(ctid)
        if (state / "state.json").exists():
            return
        criu_root = state / "criu-root"
        if mounts.is_mountpoint(criu_root):
            await proc.run(["umount", "--lazy", str(criu_root)], check=False, what="umount criu-root")
        shutil.rmtree(state, ignore_errors=True)

    async def state(self, ctid: int) -> State | None:
        res = await proc.run(self._argv("state", str(ctid)), timeout=30, check=False)
        if not res.ok:
            if b"does not exist" in res.stderr or b"not exist" in res.stderr:
                return None
            raise VzError(Kind.FAILED, f"runc state {ctid} failed: {res.err_tail()}")
        data = json.loads(res.stdout)
        return State(id=data["id"], status=data["status"], pid=int(data.get("pid") or 0))

    async def list_states(self) -> dict[str, State]:
        if not self.root.exists():
            return {}
        res = await proc.run(self._argv("list", "--format", "json"), timeout=30)
        items = json.loads(res.stdout or b"null") or []
        return {d["id"]: State(d["id"], d["status"], int(d.get("pid") or 0)) for d in items}

    async def kill(self, ctid: int, sig: signal.Signals, *, all_processes: bool = False) -> None:
        args = ["kill"] + (["--all"] if all_processes else []) + [str(ctid), str(int(sig))]
        res = await proc.run(self._argv(*args), timeout=30, check=False)
        if not res.ok and b"not running" not in res.stderr and b"process already finished" not in res.stderr:
            raise VzError(Kind.FAILED, f"runc kill {ctid} failed: {res.err_tail()}")

    async def delete(self, ctid: int, *, force: bool = False) -> None:
        args = ["delete"] + (["--force"] if force else []) + [str(ctid)]
        res = await proc.run(self._argv(*args), timeout=60, check=False)
        if not res.ok and b"does not exist" not in res.stderr:
            raise VzError(Kind.FAILED, f"runc delete {ctid} failed: {res.err_tail()}")

    def hide(self, ctid: int) -> Path | None:
        """Move the container's runc state out of runc's sight (runc list/state no longer see it);
        returns where it went, for `forget`. Used to kill a frozen copy that must never show as
        running again, not even while it dies."""
        state = self.root / str(ctid)
        if not state.exists():
            return None
        hidden = self.root / f".{ctid}.dying"
        if hidden.exists():
            shutil.rmtree(hidden, ignore_errors=True)
        os.rename(state, hidden)
        return hidden

    def reader_pids(self) -> list[int]:
        """PIDs of the runc processes on this host (ours or anyone's) that read container state
        (`runc list`, `state`, `ps`, `events`): one may have read a state directory before `hide`
        moved it and still have to look at the tasks. Long-lived ones (`exec` sessions) do not count."""
        real = os.path.realpath(shutil.which(self.binary) or self.binary)
        found = []
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                if os.readlink(f"/proc/{entry.name}/exe") != real:
                    continue
                with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                    argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
            except OSError:
                continue
            if subcommand(argv) in STATE_READERS:
                found.append(int(entry.name))
        return found

    async def pause(self, ctid: int) -> None:
        await proc.run(self._argv("pause", str(ctid)), timeout=30, what="runc pause")

    async def resume(self, ctid: int) -> None:
        await proc.run(self._argv("resume", str(ctid)), timeout=30, what="runc resume")

    async def update(self, ctid: int, resources: Mapping[str, Any]) -> None:
        """Apply cgroup limits to a running container (OCI linux.resources JSON)."""
        body = json.dumps({k: v for k, v in resources.items() if k != "devices"}).encode()
        await proc.run(self._argv("update", "--resources", "-", str(ctid)), input=body, timeout=30,
                       what="runc update")

    def exec_argv(self, ctid: int, argv: Sequence[str], *, env: Sequence[str] = (),
                  tty: bool = False, cwd: str = "/", extra: Sequence[str] = ()) -> list[str]:
        """The command line that runs argv inside the container (the caller owns its stdio)."""
        args = ["exec", "--cwd", cwd, *extra]
        for e in env:
            args += ["--env", e]
        if tty:
            args += ["--tty"]
        return self._argv(*args, str(ctid), *argv)


STATE_READERS = frozenset({"list", "state", "ps", "events"})
_VALUED_GLOBAL_OPTIONS = frozenset({"--root", "--log", "--log-format", "--criu", "--rootless"})


def subcommand(argv: Sequence[str]) -> str | None:
    """Pure: the runc subcommand of a runc command line (global options skipped), or None."""
    skip = False
    for arg in argv[1:]:
        if skip:
            skip = False
        elif arg in _VALUED_GLOBAL_OPTIONS:
            skip = True
        elif not arg.startswith("-"):
            return arg
    return None


def _runc_error(log_file: Path, res: proc.Result) -> str:
    """runc's own last error message: from its JSON log, else its stderr."""
    msg = ""
    try:
        for line in log_file.read_text().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("level") in ("error", "fatal"):
                msg = str(entry.get("msg", ""))
    except OSError:
        pass
    return msg or f"exit code {res.returncode}"


def _read_status(fd: int) -> bool:
    """CRIU writes a NUL byte on its status fd when the dump is ready; EOF first means it failed."""
    while True:
        data = os.read(fd, 1)
        if not data:
            return False
        if data == b"\0":
            return True


def _criu_error_line(log_file: Path) -> str:
    """The last CRIU error line (the harmless RLIMIT_NOFILE one skipped), or ""."""
    last = ""
    try:
        for line in log_file.read_text(errors="replace").splitlines():
            if "Error" in line and "RLIMIT_NOFILE" not in line:
                last = line.strip()
    except OSError:
        pass
    return last


def _criu_error(log_file: Path, res: proc.Result) -> str:
    """The last CRIU error line, else runc's message."""
    return _criu_error_line(log_file) or res.err_tail()


def pid_alive(pid: int) -> bool:
    """True while pid exists and is not a zombie."""
    if pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    state = stat.rsplit(b")", 1)[-1].split()[0]
    return state not in (b"Z", b"X")


def proc_start_ticks(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[-1].split()
        return int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def uptime_seconds(pid: int) -> float | None:
    ticks = proc_start_ticks(pid)
    if ticks is None:
        return None
    with open("/proc/uptime") as f:
        up = float(f.read().split()[0])
    return max(0.0, up - ticks / os.sysconf("SC_CLK_TCK"))
