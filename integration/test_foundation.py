"""The foundation end to end: real busybox containers on a real node agent, through vzctl, vzlist
and vzfleet as a user runs them (subprocesses; nothing mocked)."""

from __future__ import annotations

import io
import json
import re
import subprocess
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from integration.harness import Containers, Node, PtyClient, describe, running_copies, venv_bin

pytestmark = [pytest.mark.privileged, pytest.mark.integration]

UNUSED_TEMPLATE = "no-such-template"


# ---- helpers ----------------------------------------------------------------------------------


def expect_exit(node: Node, code: int, *argv: str) -> subprocess.CompletedProcess[str]:
    res = node.cli(*argv, check=False)
    assert res.returncode == code, f"expected exit {code}; " + describe(res, node.root)
    return res


def status_line(node: Node, ctid: int) -> str:
    return node.cli("vzctl", "status", str(ctid)).stdout.strip()


def init_pid(node: Node, ctid: int) -> int:
    out = node.cli("vzlist", "-o", "ctid,initpid", str(ctid)).stdout
    rows = [line.split() for line in out.splitlines()[1:]]
    assert [r[0] for r in rows] == [str(ctid)], out
    return int(rows[0][1])


def ctids_listed(node: Node, *flags: str) -> set[int]:
    out = node.cli("vzlist", *flags, "-H", "-o", "ctid").stdout
    return {int(x) for x in out.split()}


def assert_nothing_created(node: Node, ctid: int | str) -> None:
    """A refused create leaves neither private area (not even a partial one) nor config."""
    assert not (node.conf_dir / f"{ctid}.conf").exists()
    assert [p.name for p in node.private_dir.iterdir() if str(ctid) in p.name] == []


def with_shutdown_marker(node: Node, ctid: int) -> Path:
    """Make the container's init record a clean halt: busybox init runs the inittab's shutdown
    actions only when asked to halt, never when killed. Returns the marker's path on the host."""
    inittab = node.private(ctid) / "etc/inittab"
    lines = inittab.read_text().splitlines()
    # before the template's `umount -a -r`, which may leave / read-only
    first_shutdown = next(i for i, line in enumerate(lines) if line.startswith("::shutdown:"))
    lines.insert(first_shutdown, "::shutdown:/bin/touch /halted-cleanly")
    inittab.write_text("\n".join(lines) + "\n")
    return node.private(ctid) / "halted-cleanly"


@pytest.fixture
def pty_client(node: Node) -> Iterator[Callable[..., PtyClient]]:
    """Factory of PtyClient running a CLI command against the node; each one closed at the end."""
    clients: list[PtyClient] = []

    def spawn(*argv: str, rows: int = 24, cols: int = 80) -> PtyClient:
        env = node.env()
        env["TERM"] = "xterm"
        for var in ("COLUMNS", "LINES"):  # the window size must come from the terminal
            env.pop(var, None)
        client = PtyClient([str(venv_bin() / argv[0]), *argv[1:]], env, rows, cols)
        clients.append(client)
        return client

    yield spawn
    for client in clients:
        client.close()


def hostile_archive(path: Path, members: list[tarfile.TarInfo]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for member in members:
            tar.addfile(member, io.BytesIO(b"pwned\n") if member.isfile() else None)
    return path


def file_member(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = len(b"pwned\n")
    return info


def symlink_member(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    return info


# ---- running commands inside ------------------------------------------------------------------


def test_exec_sees_the_hostname_given_at_create(node: Node, cts: Containers) -> None:
    # given a container created with --hostname web1 and started
    ct = cts.create("--hostname", "web1", start=True)
    # when a command runs inside
    res = node.cli("vzctl", "exec", str(ct), "hostname")
    # then it sees the container's host name
    assert res.stdout == "web1\n"


def test_exec2_returns_the_commands_exit_code(node: Node, cts: Containers) -> None:
    ct = cts.create(start=True)
    expect_exit(node, 3, "vzctl", "exec2", str(ct), "sh", "-c", "exit 3")


def test_exec_returns_1_when_the_command_fails(node: Node, cts: Containers) -> None:
    ct = cts.create(start=True)
    expect_exit(node, 1, "vzctl", "exec", str(ct), "false")


def test_exec_of_one_argument_runs_it_through_the_shell(node: Node, cts: Containers) -> None:
    ct = cts.create(start=True)
    res = node.cli("vzctl", "exec", str(ct), "echo a; echo b >&2")
    assert (res.stdout, res.stderr) == ("a\n", "b\n")


def test_runscript_runs_a_host_script_inside(node: Node, cts: Containers, tmp_path: Path) -> None:
    # given a script on the host
    ct = cts.create(start=True)
    script = tmp_path / "script.sh"
    script.write_text("echo written-by-script > /tmp/marker\necho script-done\n")
    # when it is run in the container
    res = node.cli("vzctl", "runscript", str(ct), str(script))
    # then it ran inside: its output came back and the file it wrote is in the container
    assert res.stdout == "script-done\n"
    assert node.cli("vzctl", "exec", str(ct), "cat /tmp/marker").stdout == "written-by-script\n"


# ---- vzctl enter on a real terminal -----------------------------------------------------------


def test_enter_runs_a_shell_and_returns_its_exit_code(
        node: Node, cts: Containers, pty_client: Callable[..., PtyClient]) -> None:
    # given a running container and a user at a terminal
    ct = cts.create("--hostname", "web1", start=True)
    term = pty_client("vzctl", "enter", str(ct))
    term.expect(f"entered into container {ct}")
    # when the user types commands, and leaves with exit 5
    term.send("hostname\n")
    term.expect(r"^web1\r?$")
    term.send("exit 5\n")
    # then vzctl exits with the shell's exit code
    assert term.wait() == 5


def test_enter_terminal_has_the_callers_window_size(
        node: Node, cts: Containers, pty_client: Callable[..., PtyClient]) -> None:
    ct = cts.create(start=True)
    term = pty_client("vzctl", "enter", str(ct), rows=37, cols=111)
    term.expect(f"entered into container {ct}")
    term.send("stty size\n")
    term.expect(r"^37 111\r?$")
    term.send("exit\n")
    assert term.wait() == 0


# ---- status and listing -----------------------------------------------------------------------


def test_status_follows_the_life_cycle(node: Node, cts: Containers) -> None:
    ct = cts.create(start=True)
    assert status_line(node, ct) == f"CTID {ct} exist mounted running"
    node.cli("vzctl", "stop", "--fast", str(ct))
    assert status_line(node, ct) == f"CTID {ct} exist unmounted down"
    node.cli("vzctl", "destroy", str(ct))
    assert status_line(node, ct) == f"CTID {ct} deleted unmounted down"


def test_vzlist_json_describes_the_container(node: Node, cts: Containers) -> None:
    ct = cts.create("--hostname", "web1", start=True)
    rows = json.loads(node.cli("vzlist", "-j", str(ct)).stdout)
    assert len(rows) == 1
    assert (rows[0]["ctid"], rows[0]["status"], rows[0]["hostname"]) == (ct, "running", "web1")


def test_vzlist_selected_fields_without_header(node: Node, cts: Containers) -> None:
    ct = cts.create(start=True)
    out = node.cli("vzlist", "-a", "-H", "-o", "ctid,status").stdout
    assert re.search(rf"^\s*{ct}\s+running$", out, re.MULTILINE), out
    assert "CTID" not in out


def test_vzlist_ctid_only(node: Node, cts: Containers) -> None:
    ct = cts.create(start=True)
    out = node.cli("vzlist", "-1").stdout
    assert str(ct) in out.split()
    assert all(word.isdigit() for word in out.split()), out


def test_vzlist_lists_its_fields(node: Node) -> None:
    out = node.cli("vzlist", "-L").stdout
    listed = {line.split()[0] for line in out.splitlines() if line.strip()}
    assert {"ctid", "hostname", "status", "ip", "numproc", "initpid", "ostemplate"} <= listed


def test_vzlist_shows_running_containers_by_default(node: Node, cts: Containers) -> None:
    # given a running and a stopped container
    running = cts.create(start=True)
    stopped = cts.create()
    # then the default list has only the running one, -a both, -S only the stopped one
    default, everything, only_stopped = ctids_listed(node), ctids_listed(node, "-a"), ctids_listed(node, "-S")
    assert running in default and stopped not in default
    assert {running, stopped} <= everything
    assert stopped in only_stopped and running not in only_stopped


# ---- set --------------------------------------------------------------------------------------


def test_set_hostname_with_save_applies_live_and_keeps_the_conf_comments(node: Node, cts: Containers) -> None:
    # given a running container whose config has a comment added by hand
    ct = cts.create("--hostname", "web1", start=True)
    conf = node.conf_file(ct)
    with conf.open("a") as f:
        f.write("# added by hand, must survive --save\n")
    # when its host name is changed with --save
    node.cli("vzctl", "set", str(ct), "--hostname", "web2", "--save")
    # then the running container has the new name, and the config has it and still the comment
    assert node.cli("vzctl", "exec", str(ct), "hostname").stdout == "web2\n"
    text = conf.read_text()
    assert re.findall(r"^HOSTNAME=.*$", text, re.MULTILINE) == ['HOSTNAME="web2"']
    assert "# added by hand, must survive --save\n" in text


def test_set_without_save_on_a_stopped_container_is_refused(node: Node, cts: Containers) -> None:
    ct = cts.create()
    before = node.conf_file(ct).read_bytes()
    res = expect_exit(node, 6, "vzctl", "set", str(ct), "--description", "x")
    assert "--save" in res.stderr
    assert node.conf_file(ct).read_bytes() == before


# ---- stop, destroy, mount ---------------------------------------------------------------------


def test_clean_stop_halts_the_container_then_destroy_removes_it(node: Node, cts: Containers) -> None:
    # given a running container whose init records a clean halt
    ct = cts.new_ctid()
    node.cli("vzctl", "--quiet", "create", str(ct), "--ostemplate", "busybox")
    marker = with_shutdown_marker(node, ct)
    node.cli("vzctl", "--quiet", "start", str(ct))
    # when it is stopped without --fast
    node.cli("vzctl", "stop", str(ct))
    # then its OS halted cleanly
    assert marker.exists(), "the container's init did not run its shutdown actions"
    assert status_line(node, ct) == f"CTID {ct} exist unmounted down"
    # and when it is destroyed, private area and config are gone, the config kept as .destroyed
    node.cli("vzctl", "destroy", str(ct))
    assert not node.private(ct).exists()
    assert not node.conf_file(ct).exists()
    assert node.conf_dir.joinpath(f"{ct}.conf.destroyed").is_file()


def test_fast_stop_kills_without_a_clean_halt(node: Node, cts: Containers) -> None:
    ct = cts.new_ctid()
    node.cli("vzctl", "--quiet", "create", str(ct), "--ostemplate", "busybox")
    marker = with_shutdown_marker(node, ct)
    node.cli("vzctl", "--quiet", "start", str(ct))
    node.cli("vzctl", "stop", "--fast", str(ct))
    assert status_line(node, ct) == f"CTID {ct} exist unmounted down"
    assert running_copies(ct) == 0
    assert not marker.exists(), "--fast must not wait for a clean halt"


def test_mount_and_umount_a_stopped_container(node: Node, cts: Containers) -> None:
    ct = cts.create()
    node.cli("vzctl", "mount", str(ct))
    assert status_line(node, ct) == f"CTID {ct} exist mounted down"
    assert (node.ve_root(ct) / "bin/busybox").is_file()
    node.cli("vzctl", "umount", str(ct))
    assert status_line(node, ct) == f"CTID {ct} exist unmounted down"
    assert not (node.ve_root(ct) / "bin/busybox").exists()


# ---- the agent is not needed by running containers -------------------------------------------


def test_agent_crash_keeps_the_container_and_a_new_agent_adopts_it(node: Node, cts: Containers) -> None:
    # given a running container
    ct = cts.create(start=True)
    pid = init_pid(node, ct)
    assert running_copies(ct) == 1
    try:
        # when the agent is killed
        node.kill()
        # then the container keeps running, and the CLI says the agent is gone
        assert running_copies(ct) == 1
        res = expect_exit(node, 3, "vzctl", "status", str(ct))
        assert "vzfleet up" in res.stderr
    finally:
        if not node.agent_running:
            node.start()
    # and a new agent reports the same container, init unchanged, and can run commands in it
    assert init_pid(node, ct) == pid
    assert node.cli("vzctl", "exec", str(ct), "echo alive").stdout == "alive\n"
    assert running_copies(ct) == 1


# ---- refused requests -------------------------------------------------------------------------

UNKNOWN_CT_COMMANDS: dict[str, list[str]] = {
    "start": ["start", "{ct}"],
    "stop": ["stop", "--fast", "{ct}"],
    "exec": ["exec", "{ct}", "true"],
    "enter": ["enter", "{ct}"],
    "set": ["set", "{ct}", "--hostname", "x", "--save"],
    "mount": ["mount", "{ct}"],
    "destroy": ["destroy", "{ct}"],
}


@pytest.mark.parametrize("command", sorted(UNKNOWN_CT_COMMANDS))
def test_an_unknown_ctid_is_named_in_the_error(node: Node, cts: Containers, command: str) -> None:
    ct = cts.new_ctid()  # never created
    argv = [a.format(ct=ct) for a in UNKNOWN_CT_COMMANDS[command]]
    res = expect_exit(node, 4, "vzctl", *argv)
    assert str(ct) in res.stderr


def test_create_with_an_existing_ctid_is_refused(node: Node, cts: Containers) -> None:
    ct = cts.create("--hostname", "first")
    conf_before = node.conf_file(ct).read_bytes()
    expect_exit(node, 5, "vzctl", "create", str(ct), "--ostemplate", "busybox", "--hostname", "second")
    # the existing container is untouched
    assert node.conf_file(ct).read_bytes() == conf_before
    assert (node.private(ct) / "etc/hostname").read_text() == "first\n"


@pytest.mark.parametrize("ctid", ["50", "99999999999"])
def test_create_with_a_ctid_out_of_range_is_refused(node: Node, ctid: str) -> None:
    res = expect_exit(node, 2, "vzctl", "create", ctid, "--ostemplate", "busybox")
    assert ctid in res.stderr
    assert_nothing_created(node, ctid)


def test_create_from_an_unknown_template_lists_the_available_ones(node: Node, cts: Containers) -> None:
    ct = cts.new_ctid()
    res = expect_exit(node, 8, "vzctl", "create", str(ct), "--ostemplate", UNUSED_TEMPLATE)
    assert UNUSED_TEMPLATE in res.stderr
    assert "available templates: busybox" in res.stderr
    assert_nothing_created(node, ct)


@pytest.mark.parametrize(("option", "value"), [("--cpuunits", "5"), ("--rma", "1")])
def test_create_with_a_bad_option_names_it(node: Node, cts: Containers, option: str, value: str) -> None:
    ct = cts.new_ctid()
    res = expect_exit(node, 2, "vzctl", "create", str(ct), "--ostemplate", "busybox", option, value)
    assert option in res.stderr
    assert_nothing_created(node, ct)


@pytest.mark.parametrize("argv", [["vzctl", "status", "1001"], ["vzlist", "-a"], ["vzfleet", "status"],
                                  ["vzfleet", "template", "list"]])
def test_commands_without_an_agent_say_how_to_start_it(argv: list[str]) -> None:
    nowhere = Node()  # a node root where no agent was ever started (not even created)
    res = nowhere.cli(*argv, check=False)
    assert res.returncode == 3, describe(res, nowhere.root)
    assert "vzfleet up" in res.stderr
    assert not nowhere.root.exists()


def test_destroying_a_running_container_is_refused(node: Node, cts: Containers) -> None:
    ct = cts.create(start=True)
    res = expect_exit(node, 6, "vzctl", "destroy", str(ct))
    assert "stop" in res.stderr
    assert status_line(node, ct) == f"CTID {ct} exist mounted running"
    assert node.cli("vzctl", "exec", str(ct), "true").returncode == 0
    assert node.private(ct).is_dir()


# ---- hostile templates ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["dotdot", "symlink"])
def test_hostile_template_import_is_refused(node: Node, tmp_path: Path, kind: str) -> None:
    # given an archive that tries to write outside the directory it is extracted in
    outside = tmp_path / "outside"
    outside.mkdir()
    if kind == "dotdot":
        members = [file_member("etc/ok"), file_member("../escape"),
                   file_member("../" * 12 + str(outside.relative_to("/")) + "/escape")]
    else:
        members = [symlink_member("link", str(outside)), file_member("link/pwned")]
    archive = hostile_archive(tmp_path / "evil.tar.gz", members)
    listed_before = node.cli("vzfleet", "template", "list").stdout
    # when it is imported
    res = expect_exit(node, 8, "vzfleet", "template", "import", str(archive))
    # then it is refused, naming the member, and nothing was written anywhere
    assert ("../escape" if kind == "dotdot" else "link/pwned") in res.stderr
    assert list(outside.iterdir()) == []
    assert node.cli("vzfleet", "template", "list").stdout == listed_before
    assert sorted(p.name for p in node.template_cache.iterdir()) == ["busybox.tar.zst"]


# ---- help -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("argv", "mentions"), [
    (["vzctl", "--help"], ["create", "start", "stop", "exec2", "enter", "runscript", "set", "exit codes"]),
    (["vzctl", "set", "--help"], ["--save", "--setmode", "--hostname", "--cpuunits", "--diskspace"]),
    (["vzlist", "--help"], ["-a", "-S", "-o", "-H", "-j", "-1", "-L"]),
    (["vzfleet", "--help"], ["up", "down", "status", "template", "--root"]),
])
def test_help_mentions_the_key_options(argv: list[str], mentions: list[str]) -> None:
    res = Node().cli(*argv)  # no agent needed
    missing = [word for word in mentions if word not in res.stdout]
    assert not missing, f"{' '.join(argv)} does not mention {missing}:\n{res.stdout}"
