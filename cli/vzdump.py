"""vzdump: back containers up and restore them, as in OpenVZ.

  vzdump [--compress] [--dumpdir DIR] [--stop|--suspend|--snapshot] [--exclude-path RE]...
         [--bwlimit KBPS] [--maxfiles N] (--all | CTID...)
  vzdump --restore FILE CTID [--force]

The agent does the work (it owns the files; DIR and FILE are paths on its node) and streams its
log lines and progress; every line also goes to a per-run log file in DIR.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterable
from datetime import datetime
from typing import TextIO

import grpc

from cli.client import (
    EXIT_FAILED,
    EXIT_USAGE,
    Agent,
    CliError,
    add_agent_options,
    agent_for,
    call,
    default_root,
    error_from_rpc,
    resolve_socket,
    run_main,
)
from cli.progress import human_size
from vzapi import container_pb2 as cpb
from vzapi import storage_pb2 as pb
from vzapi import storage_pb2_grpc as pb_grpc

PROG = "vzdump"
EXIT_HELP = """\
exit codes: 0 ok, 1 failed, 2 invalid usage (or --snapshot: not supported), 3 agent not running,
4 no such container, 5 restore target exists (use --force), 6 wrong state (e.g. replacing a running
container), 7 container locked by another operation. With several CTIDs, every one is attempted
and the exit code is the last failure's."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, description="Back containers up (config + private area) into DIR as "
                               "vzdump-openvz-CTID-YYYY_MM_DD-HH_MM_SS.tar[.zst], or restore one.",
        epilog=EXIT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ctids", nargs="*", metavar="CTID", help="containers to back up (with --restore: the new CTID)")
    p.add_argument("--all", action="store_true", help="back up every container of the node")
    p.add_argument("--compress", action="store_true", help="compress with zstd, all cores (.tar.zst)")
    p.add_argument("--dumpdir", default="", metavar="DIR",
                   help="directory for the archives, on the agent's node (default: ROOT/var/lib/vz/dump)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--stop", dest="mode", action="store_const", const="stop",
                      help="stop the container for the backup, start it again afterwards")
    mode.add_argument("--suspend", dest="mode", action="store_const", const="suspend",
                      help="copy while running, then freeze for a final sync (a short pause)")
    mode.add_argument("--snapshot", dest="mode", action="store_const", const="snapshot",
                      help="LVM snapshot: not supported (refused)")
    p.add_argument("--exclude-path", action="append", default=[], metavar="RE",
                   help="exclude paths matching this regular expression, from the container root (e.g. "
                        "'/tmp/.+'); repeatable")
    p.add_argument("--bwlimit", type=int, default=0, metavar="KBPS",
                   help="limit reading the container's files to KBPS KiB/s (default: no limit)")
    p.add_argument("--maxfiles", type=int, default=0, metavar="N",
                   help="keep at most N archives per container in DIR, deleting the oldest (default: keep all)")
    p.add_argument("--restore", metavar="FILE", help="restore the archive FILE as container CTID")
    p.add_argument("--force", action="store_true", help="with --restore: replace an existing (stopped) container")
    p.add_argument("-q", "--quiet", action="store_true", help="print only errors")
    add_agent_options(p, "talk to this node of the local cluster")
    p.set_defaults(mode="")
    return p


class Display:
    """Log lines on stdout; on a terminal, one progress line on stderr, rewritten in place."""

    def __init__(self, quiet: bool, err: TextIO = sys.stderr, out: TextIO = sys.stdout) -> None:
        self.quiet = quiet
        self.err = err
        self.out = out
        self.live = err.isatty() and not quiet
        self.shown = False
        self.phase = ""
        self.started = time.monotonic()

    def line(self, text: str) -> None:
        self.clear()
        if text.startswith("ERROR"):
            print(text, file=self.err)
        elif not self.quiet:
            print(text, file=self.out, flush=True)

    def progress(self, msg: pb.BackupProgress) -> None:
        if not self.live:
            return
        if msg.phase != self.phase:  # rates are per phase
            self.phase, self.started = msg.phase, time.monotonic()
        self.err.write("\r" + progress_text(msg, time.monotonic() - self.started)[:79] + "\x1b[K")
        self.err.flush()
        self.shown = True

    def clear(self) -> None:
        if self.shown:
            self.err.write("\r\x1b[K")
            self.err.flush()
            self.shown = False


def progress_text(msg: pb.BackupProgress, elapsed: float) -> str:
    rate = human_size(msg.bytes_done / elapsed) + "/s" if elapsed > 0 else ""
    if msg.bytes_total:
        done = min(msg.bytes_done, msg.bytes_total)  # tar headers make the stream a little longer
        return (f"  {msg.phase}: {done * 100 // msg.bytes_total:3d}% {human_size(done)} of "
                f"{human_size(msg.bytes_total)}, {rate}")
    return f"  {msg.phase}: {human_size(msg.bytes_done)}, {msg.files_done} files, {rate}"




def run_log_name(when: datetime) -> str:
    return f"vzdump-{when.strftime('%Y_%m_%d-%H_%M_%S')}.log"


def follow(stream: Iterable[pb.BackupProgress], show: Display) -> pb.BackupResult | None:
    result = None
    try:
        for msg in stream:
            if msg.message:
                show.line(msg.message)
            elif msg.HasField("result"):
                result = msg.result
            else:
                show.progress(msg)
    except grpc.RpcError as e:
        show.clear()
        raise error_from_rpc(e) from None
    show.clear()
    return result


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    run_main(PROG, lambda: run(args), interrupted="the agent removes the partial archive")


def run(args: argparse.Namespace) -> int:
    if args.restore is not None:
        if len(args.ctids) != 1 or args.all:
            raise CliError("usage: vzdump --restore FILE CTID [--force]", EXIT_USAGE)
    elif not args.ctids and not args.all:
        raise CliError("give the containers to back up (CTID...) or --all", EXIT_USAGE)
    elif args.force:
        raise CliError("--force goes with --restore", EXIT_USAGE)
    if args.bwlimit < 0 or args.maxfiles < 0:
        raise CliError("--bwlimit and --maxfiles must not be negative", EXIT_USAGE)
    show = Display(args.quiet)
    with agent_for(resolve_socket(args.node, args.socket, default_root())) as agent:
        backups = pb_grpc.BackupServiceStub(agent.channel)
        if args.restore is not None:
            req = pb.RestoreBackupRequest(archive=args.restore, ctid=args.ctids[0], force=args.force)
            result = follow(backups.Restore(req), show)
            if result is not None and not args.quiet:
                print(f"Container {result.ctid} restored from {result.archive}: {result.files} files, "
                      f"{human_size(result.bytes)}")
            return 0
        return _dump_all(agent, backups, args, show)


def _dump_all(agent: Agent, backups: pb_grpc.BackupServiceStub, args: argparse.Namespace, show: Display) -> int:
    ctids = list(args.ctids)
    if args.all:
        reply = call(agent.containers.List, cpb.ListRequest(all=True))
        ctids = [str(c.ctid) for c in reply.containers]
    if args.mode == "snapshot":
        # refused by the agent too; said here once instead of once per container
        raise CliError("vzdump --snapshot is not supported: it needs an LVM snapshot of the private area, and "
                       "vzfleet keeps private areas on plain file systems (no LVM); use --suspend or --stop",
                       EXIT_USAGE)
    run_log = run_log_name(datetime.now())
    show.line(f"INFO: starting new backup job: vzdump {' '.join(sys.argv[1:]) or ' '.join(ctids)}")
    code = 0
    for ref in ctids:
        req = pb.DumpRequest(ctid=ref, dumpdir=args.dumpdir, compress=args.compress, mode=args.mode,
                             exclude_path=args.exclude_path, bwlimit_kbps=args.bwlimit, maxfiles=args.maxfiles,
                             run_log=run_log)
        try:
            follow(backups.Dump(req), show)
        except CliError as e:
            show.line(f"ERROR: Backup of VM {ref} failed - {e}")
            code = e.code or EXIT_FAILED
    show.line("INFO: Backup job finished successfully" if code == 0 else "ERROR: Backup job finished with errors")
    return code


if __name__ == "__main__":
    main()
