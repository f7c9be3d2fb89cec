"""The capacity and checking tools' arithmetic and output (pure): vzmemcheck, vzcalc, vzcpucheck,
vzsplit, vzcfgvalidate, vzubc and vzpid."""

from __future__ import annotations

import pytest

from cli import capacity as cap
from cli.capacity import BC, Container, Node
from cli.vzpid import container_of, process_name
from cli.vzubc import interesting, render_json, render_table

MIB = 1 << 20
GIB = 1 << 30
NODE = Node(name="n1", ram=4 * GIB, swap=1 * GIB, cpus=2, cpu_power=244543, ve0_cpuunits=1000,
            threads_max=100_000, pid_max=4_194_304, disk_total=100 * GIB, disk_free=80 * GIB,
            inodes_total=6_000_000, inodes_free=5_000_000, nofile_hard=20_000, memlock_hard=8 * MIB,
            conf_dir="/etc/vz/conf")


def pages(n_bytes: int) -> int:
    return n_bytes // 4096


def ct(ctid: int = 101, status: str = "running", *, ram: int | None = 512 * MIB, swap: int | None = 0,
       used: int = 256 * MIB, swapped: int = 0, privvm: int = 300 * MIB, privvm_limit: int | None = None,
       kmem: int = 8 * MIB, nproc: int = 10, nproc_limit: int | None = 100, cpuunits: int = 1000) -> Container:
    def pg(held: int, limit: int | None, barrier: int | None = 0) -> BC:
        return BC(held=pages(held), maxheld=pages(held), barrier=None if barrier is None else pages(barrier),
                  limit=None if limit is None else pages(limit), unit="pages")

    bcs = {
        "physpages": pg(used, ram),
        "swappages": pg(swapped, swap),
        "privvmpages": pg(privvm, privvm_limit, privvm_limit),
        "kmemsize": BC(held=kmem, maxheld=kmem, unit="bytes"),
        "numproc": BC(held=nproc, maxheld=nproc, barrier=nproc_limit, limit=nproc_limit),
    }
    return Container(ctid=ctid, status=status, bc=bcs, cpuunits=cpuunits)


# ---- amounts and config files --------------------------------------------------------------------


@pytest.mark.parametrize(("text", "unit", "value"), [
    ("256M", "pages", 256 * MIB), ("65536", "pages", 256 * MIB), ("unlimited", "pages", None),
    ("9223372036854775807", "bytes", None), ("1.5G", "kblocks", 3 * GIB // 2), ("2048", "kblocks", 2 * MIB),
    ("240", "count", 240), ("14372700", "bytes", 14372700),
])
def test_amounts(text: str, unit: str, value: int | None) -> None:
    assert cap.parse_amount(text, unit) == value


@pytest.mark.parametrize(("text", "unit"), [("10K", "count"), ("12Q", "pages"), ("1.5", "pages"), ("-1", "count")])
def test_bad_amounts(text: str, unit: str) -> None:
    with pytest.raises(ValueError):
        cap.parse_amount(text, unit)


def test_pairs_and_their_written_form() -> None:
    assert cap.parse_pair("0:256M", "pages") == (0, 256 * MIB)
    assert cap.parse_pair("240", "count") == (240, 240)
    assert cap.format_pair((0, 256 * MIB), "pages") == "0:256M"
    assert cap.format_pair((None, None), "pages") == "unlimited"
    assert cap.format_pair((4096 * 3, None), "pages") == "3:unlimited"
    assert cap.format_pair((2 * GIB, 2 * GIB + 1024), "kblocks") == "2G:2097153"


def test_config_reading_and_in_place_rewriting() -> None:
    text = '# RAM\nPHYSPAGES="0:256M"\nNUMPROC=\'100:200\'\nNAME=web # trailing\n#OLD="x"\n'
    assert cap.read_conf(text) == {"PHYSPAGES": "0:256M", "NUMPROC": "100:200", "NAME": "web"}
    out = cap.set_conf(text, {"NUMPROC": "200:200", "CPUS": "2"})
    assert out == '# RAM\nPHYSPAGES="0:256M"\nNUMPROC="200:200"\nNAME=web # trailing\n#OLD="x"\nCPUS="2"\n'


# ---- vzmemcheck ------------------------------------------------------------------------------------


def test_memory_use_and_commitment_in_percent_of_the_node() -> None:
    got = cap.as_percent(cap.mem_use(ct(), NODE), NODE)
    lowmem = 4 * GIB * 0.4
    assert got == pytest.approx((
        100 * 8 * MIB / lowmem,  # kernel memory used
        100 * 512 * MIB / lowmem,  # kernel memory is charged to --ram: promised up to the RAM limit
        100 * 256 / 4096,  # RAM used
        100 * 256 / 5120,  # RAM + swap used
        100 * 512 / 5120,  # RAM + swap promised
        100 * 300 / 5120,  # allocated
        100 * 512 / 5120,  # allocations are capped by RAM + swap
        100 * 512 / 5120,
    ))


def test_an_unlimited_container_is_promised_the_whole_node() -> None:
    got = cap.as_percent(cap.mem_use(ct(ram=None, swap=None), NODE), NODE)
    assert got[1] == pytest.approx(100) and got[4] == pytest.approx(100) and got[7] == pytest.approx(100)


def test_privvmpages_below_ram_plus_swap_lowers_the_allocation_limit() -> None:
    got = cap.as_percent(cap.mem_use(ct(privvm_limit=128 * MIB), NODE), NODE)
    assert got[6] == pytest.approx(100 * 128 / 5120) and got[7] == pytest.approx(100 * 128 / 5120)


def test_vzmemcheck_verbose_prints_running_containers_and_the_summary() -> None:
    out = cap.render_memcheck([ct(101), ct(102, status="stopped"), ct(103)], NODE, verbose=True,
                              absolute=False).splitlines()
    assert out[0] == "Output values in %"
    assert out[1].split() == ["CTID", "LowMem", "LowMem", "RAM", "MemSwap", "MemSwap", "Alloc", "Alloc", "Alloc"]
    assert [line.split()[0] for line in out[3:5]] == ["101", "103"]  # the stopped one is not counted
    assert out[5] == "-" * 74
    summary = out[6].split()
    assert summary[0] == "Summary:" and float(summary[3]) == pytest.approx(2 * 100 * 256 / 4096, abs=0.01)


def test_vzmemcheck_in_mbytes_adds_the_nodes_totals() -> None:
    out = cap.render_memcheck([ct()], NODE, verbose=False, absolute=True).splitlines()
    assert out[0] == "Output values in Mbytes"
    assert [float(x) for x in out[3].split()][2] == pytest.approx(256)
    assert [float(x) for x in out[4].split()][2:4] == [4096.0, 5120.0]


# ---- vzcalc -----------------------------------------------------------------------------------------


def test_vzcalc_current_promised_max() -> None:
    rows = {r.name: r for r in cap.calc(ct(), NODE)}
    assert rows["Total RAM"].current == pytest.approx(100 * 256 / 4096)
    assert rows["Mem + Swap"].promised == pytest.approx(100 * 512 / 5120)
    assert rows["Num. Proc"].max == pytest.approx(100 * 100 / 100_000)
    out = cap.render_calc(ct(), NODE, verbose=True).splitlines()
    assert out[0] == "Resource     Current(%)  Promised(%)  Max(%)"
    assert out[-1].split()[0] == "Memory" and len(out) == 8


def test_vzcalc_of_a_stopped_container_has_no_current_value() -> None:
    out = cap.render_calc(ct(status="stopped"), NODE, verbose=False).splitlines()
    assert out[-1].split()[:2] == ["Memory", "n/a"]


# ---- vzcpucheck -----------------------------------------------------------------------------------


def test_vzcpucheck_sums_running_containers_and_the_host() -> None:
    cts = [ct(101, cpuunits=1000), ct(102, cpuunits=3000), ct(103, status="stopped", cpuunits=50_000)]
    assert cap.cpu_utilization(cts, NODE) == 5000
    out = cap.render_cpucheck(cts, NODE, verbose=True).splitlines()
    assert out[:2] == ["CTID        CPUUNITS", "-" * 25]
    assert [line.split() for line in out[2:5]] == [["0", "1000"], ["101", "1000"], ["102", "3000"]]
    assert out[5:] == ["Current CPU utilization: 5000", "Power of the node: 244543"]


def test_vzcpucheck_warns_when_the_node_is_overcommitted() -> None:
    out = cap.render_cpucheck([ct(cpuunits=500_000)], NODE, verbose=False).splitlines()
    assert out[0] == "Current CPU utilization: 501000" and out[2].startswith("Warning: hardware node is overcommitted")


# ---- vzcfgvalidate ----------------------------------------------------------------------------------


def levels(conf: dict[str, str], node: Node | None = NODE) -> list[tuple[str, str]]:
    return [(f.level, f.message) for f in cap.validate(conf, node)]


GOOD = {"PHYSPAGES": "0:512M", "SWAPPAGES": "0:256M", "NUMPROC": "100:100", "CPUUNITS": "1000",
        "CPULIMIT": "50", "DISKSPACE": "2G:2.2G", "DISKINODES": "131072:144179", "KMEMSIZE": "unlimited",
        "VMGUARPAGES": "0:unlimited", "OOMGUARPAGES": "0:unlimited"}


def test_a_consistent_config_has_no_findings() -> None:
    assert levels(GOOD) == []


def test_limits_that_exceed_the_node_are_errors() -> None:
    conf = {**GOOD, "PHYSPAGES": "0:8G", "CPULIMIT": "400", "CPUS": "4", "CPUMASK": "0-3",
            "DISKSPACE": "200G:200G", "DISKINODES": "7000000"}
    found = levels(conf)
    errors = [m for lvl, m in found if lvl == "Error"]
    assert len(errors) == 6, found
    assert errors[0] == "the physpages limit (8192 MB) exceeds the node's RAM (4096 MB)"
    assert any(m.startswith("cpulimit 400% exceeds the node's 2 CPU(s)") for m in errors)
    assert any(m.startswith("cpumask 0-3 names CPU(s) the node does not have: 2,3") for m in errors)


def test_without_the_node_only_the_file_itself_is_checked() -> None:
    assert levels({**GOOD, "PHYSPAGES": "0:8G"}, node=None) == []


def test_self_inconsistencies() -> None:
    found = levels({**GOOD, "KMEMSIZE": "20M:10M", "NUMPROC": "50:100", "VMGUARPAGES": "0:100",
                    "PHYSPAGES": "10:512M", "PRIVVMPAGES": "128M", "NUMFILE": "100", "AVNUMPROC": "10",
                    "SHMPAGES": "1G"}, node=None)
    got = {(lvl, m.split(" (")[0]) for lvl, m in found}
    assert ("Error", "barrier should be <= limit for kmemsize") in got
    assert ("Warning", "only the limit of numproc is enforced; barrier should be equal to limit") in got
    assert ("Warning", "limit should be unlimited for vmguarpages") in got
    assert ("Recommendation", "the barrier of physpages is not used; set it to 0") in got
    assert ("Warning", "the privvmpages limit") in got
    assert ("Warning", "numfile should be > 320") in got
    assert ("Recommendation", "the shmpages limit") in got
    assert ("Recommendation", "kmemsize is not enforceable on mainline kernels") in got


def test_invalid_values_are_errors() -> None:
    found = levels({"PHYSPAGES": "0:12Q", "CPUUNITS": "7", "CPULIMIT": "fast"}, node=None)
    assert [lvl for lvl, _ in found if lvl == "Error"] == ["Error", "Error", "Error"]


def test_repair_fixes_what_it_can_and_keeps_the_rest_of_the_file() -> None:
    text = '# mine\nPHYSPAGES="0:8G"\nNUMPROC="50:100"\nKMEMSIZE="20M:10M"\nCPUS="4"\n'
    findings = cap.validate(cap.read_conf(text), NODE)
    fixed, applied = cap.repair(text, findings, lambda f: True)
    assert fixed == '# mine\nPHYSPAGES="0:4G"\nNUMPROC="100:100"\nKMEMSIZE="20M:20M"\nCPUS="2"\n'
    assert len(applied) == 4
    assert not [f for f in cap.validate(cap.read_conf(fixed), NODE) if f.level == "Error"]
    same, none = cap.repair(text, findings, lambda f: False)
    assert (same, none) == (text, [])


# ---- vzsplit ----------------------------------------------------------------------------------------


def test_split_shares_ram_swap_tasks_and_disk_equally() -> None:
    s = cap.split(NODE, 4)
    reserve = 256 * MIB  # 5 % of 4 GiB is less than the 256 MB minimum
    assert s.ram == (4 * GIB - reserve) // 4 and s.swap == GIB // 4
    assert s.numproc == 12_500  # threads-max / (2 n)
    assert s.diskspace == 23_040 * MIB  # (100 GiB - 10 GiB) / 4, whole MiB
    assert s.cpus_each == 0.5 and s.cpuunits == 1000


def test_split_refuses_more_containers_than_the_ram_allows() -> None:
    with pytest.raises(ValueError, match="cannot get 16 MB each"):
        cap.split(NODE, 1000)


def test_split_on_a_small_disk_falls_back_to_default_disk_values() -> None:
    s = cap.split(Node(ram=4 * GIB, disk_total=GIB, inodes_total=10_000, threads_max=1000, pid_max=1000), 50)
    assert s.diskspace is None and s.warnings


def test_the_sample_is_a_config_vzcfgvalidate_accepts() -> None:
    text = cap.render_split(NODE, 4, cap.split(NODE, 4))
    assert text.startswith("# Configuration file generated by vzsplit for 4 containers")
    conf = cap.read_conf(text)
    assert conf["PHYSPAGES"] == "0:960M" and conf["SWAPPAGES"] == "0:256M" and conf["CPUUNITS"] == "1000"
    assert [f for f in cap.validate(conf, NODE) if f.level != "Recommendation"] == []


# ---- vzubc and vzpid ---------------------------------------------------------------------------------


def test_vzubc_table_has_the_proc_user_beancounters_layout() -> None:
    out = render_table([ct()]).splitlines()
    assert out[0] == "Version: 2.5"
    assert out[1].split() == ["uid", "resource", "held", "maxheld", "barrier", "limit", "failcnt"]
    first = out[2].split()
    assert first[:2] == ["101:", "physpages"] and first[5] == str(pages(512 * MIB))
    assert out[3].split()[0] == "swappages"
    assert "9223372036854775807" in out[4]  # unlimited privvmpages


def test_vzubc_quiet_and_json() -> None:
    c = Container(101, bc={"numproc": BC(held=64, barrier=64, limit=64, failcnt=3),
                           "numfile": BC(held=1, barrier=100, limit=100),
                           "physpages": BC(held=95, barrier=100, limit=100, unit="pages")})
    assert [n for n, b in c.bc.items() if interesting(b)] == ["numproc", "physpages"]
    assert len(render_table([c], quiet=True).splitlines()) == 4
    assert '"limit": null' in render_json([ct()])


@pytest.mark.parametrize(("text", "expected"), [
    ("12:pids:/vzfleet/node1/101\n4:memory:/vzfleet/node1/101\n0::/", ("node1", 101)),
    ("0::/vzfleet/vzt0a1b2c/2001/init.scope\n", ("vzt0a1b2c", 2001)),
    ("0::/system.slice/ssh.service\n", None),
    ("4:memory:/vzfleet\n", None),
])
def test_vzpid_finds_the_container_in_proc_pid_cgroup(text: str, expected: tuple[str, int] | None) -> None:
    assert container_of(text) == expected


def test_vzpid_process_name() -> None:
    assert process_name("Name:\tinit\nState:\tS\n") == "init"
