"""vzctl: manage one container, as in OpenVZ (`vzctl [flags] COMMAND CTID [options]`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cli import terminal
from cli.client import (
    EXIT_FAILED,
    EXIT_USAGE,
    Agent,
    CliError,
    add_agent_options,
    agent_for,
    call,
    ct,
    default_root,
    resolve_socket,
    run_main,
)
from vzapi import container_pb2 as pb

PROG = "vzctl"

PARAMS_HELP = """\
parameters (create and set; VALUE is barrier[:limit] where it applies, sizes take K/M/G/T/P):
  --hostname NAME  --name NAME  --description TEXT  --onboot yes|no  --bootorder N
  --disabled yes|no  --stop-timeout SECONDS  --nameserver IP  --searchdomain DOMAIN
  --ipadd IP  --ipdel IP|all  --ram SIZE  --swap SIZE  --physpages P  --swappages P
  --privvmpages P  --numproc N[:N]  --numfile N  --numtcpsock N  --numothersock N
  --kmemsize SIZE  --lockedpages P  --shmpages P  --cpuunits 8..500000  --cpulimit N[%]
  --cpus N  --cpumask LIST  --nodemask LIST  --ioprio 0-7  --iolimit RATE  --iopslimit N
  --diskspace SOFT[:HARD]  --diskinodes SOFT[:HARD]  --quotatime S  --capability CAP:on|off
  --features NAME:on|off  --netfilter disabled|stateless|stateful|full  --devnodes SPEC
The agent validates every value; an unknown option or bad value changes nothing.
Options that need a restart are refused on a running container unless --setmode is given."""

EXIT_HELP = """\
exit codes: 0 ok, 1 failed, 2 invalid usage or value, 3 agent not running, 4 no such container,
5 already exists, 6 wrong state (running / not running), 7 locked by another operation,
8 OS template missing or refused. exec2 and enter return the command's own exit code."""


def _split_params(rest: list[str]) -> list[tuple[str, str]]:
    """`--opt value` / `--opt=value` pairs, in order; the agent validates names and values."""
    out: list[tuple[str, str]] = []
    i = 0
    while i < len(rest):
        arg = rest[i]
        if not arg.startswith("--") or len(arg) < 3:
            raise CliError(f"unexpected argument {arg!r}: parameters look like --name value "
                           f"(see `{PROG} set --help`)", EXIT_USAGE)
        name, eq, value = arg[2:].partition("=")
        if not eq and name.replace("_", "-") == "reset-ub" and (i + 1 >= len(rest) or rest[i + 1].startswith("--")):
            value = "yes"  # a flag in OpenVZ: `vzctl set CT --reset_ub` (`--reset_ub yes` works too)
        elif not eq:
            if i + 1 >= len(rest):
                raise CliError(f"option --{name} needs a value", EXIT_USAGE)
            value = rest[i + 1]
            i += 1
        out.append((name.replace("_", "-"), value))
        i += 1
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Manage one system container on a vzfleet node (OpenVZ's vzctl).",
        epilog=EXIT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quiet", action="store_true", help="print only errors")
    p.add_argument("--verbose", action="store_true", help="print what is being done")
    add_agent_options(p, "talk to this node of the local cluster (`vzfleet up --nodes N`; base $VZFLEET_CLUSTER)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def cmd(name: str, help: str, *aliases: str, params: bool = False) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, aliases=list(aliases), help=help, description=help,
                            epilog=(PARAMS_HELP + "\n\n" if params else "") + EXIT_HELP,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        sp.add_argument("ctid", metavar="CTID", help="container ID (number) or name")
        return sp

    c = cmd("create", "create a container from an OS template", params=True)
    c.add_argument("--ostemplate", default="", help="OS template name (see `vzfleet template list`)")
    c.add_argument("--config", default="", help="sample config: uses ve-NAME.conf-sample (default: basic)")
    s = cmd("start", "start a container")
    s.add_argument("--wait", action="store_true", help="return only when the container accepts commands")
    s.add_argument("--force", action="store_true", help="start even if the container is disabled")
    for name, help in (("stop", "stop a container: clean halt inside, kill after the stop timeout"),
                       ("restart", "stop, then start a container")):
        x = cmd(name, help)
        x.add_argument("--fast", action="store_true", help="kill at once, no clean halt")
        x.add_argument("--stop-timeout", type=int, default=0, metavar="S",
                       help="seconds to wait for the clean halt (default: the container's STOP_TIMEOUT)")
    cmd("status", "print CTID N exist|deleted mounted|unmounted running|down [suspended]")
    for name, alias, help in (
        ("suspend", "chkpnt", "checkpoint a running container into a dump file (CRIU) and stop it; "
                              "its processes, memory and TCP connections come back with resume"),
        ("resume", "restore", "restore a suspended container from its dump file"),
    ):
        x = cmd(name, help, alias)
        x.add_argument("--dumpfile", default="", metavar="FILE",
                       help="absolute path of the dump file (default: the node's dump dir, Dump.CTID)")
    cmd("destroy", "remove a stopped container's private area and config", "delete")
    cmd("mount", "mount the private area on the container root")
    cmd("umount", "unmount the container root")
    e = cmd("enter", "open an interactive root shell inside the container (a pty)")
    e.add_argument("--exec", nargs=argparse.REMAINDER, dest="exec_argv", metavar="CMD",
                   help="run CMD on the pty instead of a login shell")
    for name, help in (
        ("exec", "run a command inside; one argument runs through /bin/sh -c, '-' reads commands "
                 "from stdin; exit 0 if the command succeeded, 1 if not"),
        ("exec2", "like exec, but exit with the command's own exit code"),
    ):
        x = cmd(name, help)
        x.add_argument("argv", nargs=argparse.REMAINDER, metavar="CMD", help="command and arguments")
    r = cmd("runscript", "run a script from the host inside the container (with /bin/sh)")
    r.add_argument("script", type=Path, help="script file on the host")
    st = cmd("set", "change parameters, live where possible; --save also writes CTID.conf", params=True)
    st.add_argument("--save", action="store_true", help="also store the change in CTID.conf")
    st.add_argument("--setmode", choices=["restart", "ignore"], default="",
                    help="for parameters that need a restart: restart now, or only store them")
    return p


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    run_main(PROG, lambda: run(args, rest, parser))


def say(args: argparse.Namespace, text: str) -> None:
    if not args.quiet:
        print(text)


def run(args: argparse.Namespace, rest: list[str], parser: argparse.ArgumentParser) -> int:
    command = {"delete": "destroy", "chkpnt": "suspend", "restore": "resume"}.get(args.command, args.command)
    if rest and command not in ("create", "set"):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    sock = resolve_socket(args.node, args.socket, default_root())
    with agent_for(sock) as agent:
        handler = HANDLERS[command]
        return handler(agent, args, rest)


def _create(agent: Agent, args: argparse.Namespace, rest: list[str]) -> int:
    params = [pb.Param(name=n, value=v) for n, v in _split_params(rest)]
    say(args, f"Creating container {args.ctid} ...")
    info = call(agent.containers.Create, pb.CreateRequest(
        ctid=args.ctid, ostemplate=args.ostemplate, config=args.config, params=params), timeout=1800)
    say(args, f"Container {info.ctid} created from template {info.ostemplate}")
    return 0


def _start(agent: Agent, args: argparse.Namespace, rest: list[str]) -> int:
    say(args, f"Starting container {args.ctid} ...")
    info = call(agent.containers.Start, pb.StartRequest(ct=ct(args.ctid), wait=args.wait, force=args.force),
                timeout=300)
    say(args, f"Container {info.ctid} is running (init pid {info.init_pid})")
    return 0


def _stop(agent: Agent, args: argparse.Namespace, rest: list[str]) -> int:
    verb = "Restarting" if args.command == "restart" else "Stopping"
    say(args, f"{verb} container {args.ctid} ...")
    req = pb.StopRequest(ct=ct(args.ctid), fast=args.fast, timeout=max(0, args.stop_timeout))
    timeout = (args.stop_timeout or 3600) + 120
    if args.command == "restart":
        info = call(agent.containers.Restart, req, timeout=timeout)
        say(args, f"Container {info.ctid} restarted (init pid {info.init_pid})")
    else:
        info = call(agent.containers.Stop, req, timeout=timeout)
        say(args, f"Container {info.ctid} was stopped")
    return 0


def format_status(st: pb.StatusReply) -> str:
    words = [f"CTID {st.ctid}", "exist" if st.exists else "deleted",
             "mounted" if st.mounted else "unmounted", "running" if st.running else "down"]
    if st.suspended:
        words.append("suspended")
    return " ".join(words)


def _status(agent: Agent, args: argparse.Namespace, rest: list[str]) -> int:
    print(format_status(call(agent.containers.Status, ct(args.ctid))))
    return 0


def _destroy(agent: Agent, args: argparse.Namespace, rest: list[str]) -> int:
    say(args, f"Destroying container {args.ctid} ...")
    call(agent.containers.Destroy, pb.DestroyRequest(ct=ct(args.ctid)), timeout=600)
    say(args, f"Container {args.ctid} was destroyed")
    return 0


def _mount(agent: Agent, args: argparse.Namespace, rest: list[str]) -> int:
    fn = agent.containers.Mount if args.command == "mount" else agent.containers.Umount
    info = call(fn, ct(args.ctid))
    say(args, f"Container {info.ctid} is {'mounted' if info.mounted else 'unmounted'}")
    return 0


def exec_command(argv: list[str]) -> tuple[list[str], bytes]:
    """OpenVZ's exec forms: one argument runs through the shell; '-' reads commands from stdin."""
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise CliError("no command given: vzctl exec CTID COMMAND [ARG...]", EXIT_USAGE)
    if argv == ["-"]:
        return ["/bin/sh", "-s"], sys.stdin.buffer.read()
    if len(argv) == 1:
        return ["/bin/sh", "-c", argv[0]], b""
    return argv, b""


def stream_exec(agent: Agent, ref: str, argv: list[str], stdin: bytes) -> int:
    code = EXIT_FAILED
    out, err = sys.stdout.buffer, sys.stderr.buffer
    stream = agent.containers.Exec(pb.ExecRequest(ct=ct(ref), argv=argv, stdin=stdin))
    for msg in stream:
        if msg.stdout:
            out.write(msg.stdout)
            out.flush()
        if msg.stderr:
            err.write(msg.stderr)
            err.flush()
        if msg.exited:
            code = msg.exit_code
    return code


def _exec(agent: Agent, args: argparse.Namespace, rest: list[str]) -> int:
    argv, stdin = exec_command(list(args.argv))
    code = stream_exec(agent, args.ctid, argv, stdin)
    if args.command == "exec2":
        return code
    return 0 if code == 0 else EXIT_FAILED


def _runscript(agent: Agent, args: argparse.Namespace, rest: list[str]) -> int:
    try:
        script = args.script.read_bytes()
    except OSError as e:
        raise CliError(f"cannot read script {args.script}: {e.strerror}", EXIT_USAGE) from None
    return stream_exec(agent, args.ctid, ["/bin/sh", "-s"], script)


def _enter(agent: Agent, args: argparse.Namespace, rest: list[str]) -> int:
    argv = list(args.exec_argv or [])
    return terminal.enter(agent, args.ctid, argv, quiet=args.quiet)


def _set(agent: Agent, args: argparse.Namespace, rest: list[str]) -> int:
    params = _split_params(rest)
    if not params:
        raise CliError("nothing to set: give at least one parameter, e.g. --hostname NAME "
                       f"(see `{PROG} set --help`)", EXIT_USAGE)
    reply = call(agent.containers.Set, pb.SetRequest(
        ct=ct(args.ctid), params=[pb.Param(name=n, value=v) for n, v in params],
        save=args.save, setmode=args.setmode), timeout=600)
    for note in reply.notes:
        say(args, note)
    return 0


def _dump(agent: Agent, args: argparse.Namespace, rest: list[str]) -> int:
    req = pb.CheckpointRequest(ct=ct(args.ctid), dumpfile=args.dumpfile)
    if args.command in ("suspend", "chkpnt"):
        say(args, f"Suspending container {args.ctid} ...")
        call(agent.containers.Suspend, req, timeout=1800)
        say(args, f"Container {args.ctid} was suspended")
    else:
        say(args, f"Resuming container {args.ctid} ...")
        info = call(agent.containers.Resume, req, timeout=1800)
        say(args, f"Container {info.ctid} is running again (init pid {info.init_pid})")
    return 0


HANDLERS = {
    "create": _create, "start": _start, "stop": _stop, "restart": _stop, "status": _status,
    "destroy": _destroy, "mount": _mount, "umount": _mount, "exec": _exec, "exec2": _exec,
    "runscript": _runscript, "enter": _enter, "set": _set, "suspend": _dump, "resume": _dump,
}


if __name__ == "__main__":
    main()
