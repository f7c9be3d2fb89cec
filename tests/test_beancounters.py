"""Beancounters from cgroup counters, /proc statistics and the config (pure), the reset baseline and
its persistence, node facts parsing, and the vzlist fields built from them."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent import beancounters as bc
from agent.beancounters import Baseline, BaselineStore, ProcessStats
from agent.cgroups.counters import Counters
from agent.config.conffile import ConfFile
from agent.config.params import ContainerConfig, apply_params
from agent.service.fields import FIELD_HELP, beancounter_fields

MIB = 1 << 20


def cfg(*params: tuple[str, str]) -> ContainerConfig:
    conf = ConfFile.parse("")
    conf.update_values(apply_params({}, list(params)))
    return ContainerConfig.from_conf(conf, "test.conf")


CFG = cfg(("ram", "64M"), ("swap", "32M"), ("numproc", "64"), ("numfile", "100:200"), ("kmemsize", "10M"))
V1 = Counters(version=1, memory=8 * MIB, memory_peak=64 * MIB, memory_limit=64 * MIB, memory_failcnt=60,
              memory_failcnt_resettable=True, oom_kills=1, swap=4096, swap_failcnt=2, kmem=122880,
              kmem_peak=6008832, kmem_failcnt=0, shmem=8192, pids=5, pids_peak=64, pids_limit=64, pids_failcnt=7)
STATS = ProcessStats(numfile=12, privvm_bytes=3 * MIB, locked_bytes=8192, numtcpsock=2, numothersock=3,
                     tcp_tx=100, tcp_rx=200, other_tx=5, dgram_rx=7, numpty=1, numflock=4)


def rows(c: Counters | None = V1, s: ProcessStats | None = STATS, base: Baseline | None = None,
         config: ContainerConfig = CFG) -> dict[str, bc.Beancounter]:
    got, _ = bc.compute(config, c, s, base or Baseline("1:1"))
    return {r.resource: r for r in got}


def test_every_resource_in_proc_user_beancounters_order() -> None:
    got, _ = bc.compute(CFG, V1, STATS, Baseline())
    assert [r.resource for r in got][:6] == ["kmemsize", "lockedpages", "privvmpages", "shmpages", "numproc",
                                             "physpages"]
    assert len(got) == len(bc.RESOURCES) == 21


@pytest.mark.parametrize(("resource", "held", "maxheld", "barrier", "limit", "failcnt"), [
    ("physpages", 2048, 16384, 0, 16384, 60),  # pages; the peak and failcnt from the kernel
    ("swappages", 1, 1, 0, 8192, 2),
    ("numproc", 5, 64, 64, 64, 7),  # pids.current, pids.peak, pids.events max
    ("kmemsize", 122880, 6008832, 10 * MIB, 10 * MIB, 0),
    ("oomguarpages", 2049, 2049, None, None, 1),  # RAM + swap in use; failcnt = OOM kills
    ("numfile", 12, 12, 100, 200, 0),
    ("privvmpages", 768, 768, None, None, 0),
    ("lockedpages", 2, 2, None, None, 0),
    ("shmpages", 2, 2, None, None, 0),
    ("numtcpsock", 2, 2, None, None, 0),
    ("numothersock", 3, 3, None, None, 0),
    ("tcpsndbuf", 100, 100, None, None, 0),
    ("tcprcvbuf", 200, 200, None, None, 0),
    ("dgramrcvbuf", 7, 7, None, None, 0),
    ("numpty", 1, 1, None, None, 0),
    ("numflock", 4, 4, None, None, 0),
    ("vmguarpages", 0, 0, None, None, 0),
])
def test_held_maxheld_barrier_limit_failcnt(resource: str, held: int, maxheld: int, barrier: int | None,
                                            limit: int | None, failcnt: int) -> None:
    r = rows()[resource]
    assert (r.held, r.maxheld, r.barrier, r.limit, r.failcnt) == (held, maxheld, barrier, limit, failcnt)


def test_the_kernels_limit_wins_over_an_unsaved_config() -> None:
    """`vzctl set --numproc 32` without --save: the kernel has 32, the config still says 64."""
    r = rows(c=Counters(version=1, pids=3, pids_limit=32, memory_limit=None))
    assert (r["numproc"].barrier, r["numproc"].limit) == (32, 32)
    assert (r["physpages"].barrier, r["physpages"].limit) == (0, None)


def test_a_stopped_container_shows_its_limits_and_no_usage() -> None:
    r = rows(c=None, s=None)["numproc"]
    assert (r.held, r.maxheld, r.barrier, r.limit, r.failcnt) == (0, 0, 64, 64, 0)


def test_maxheld_without_a_kernel_peak_is_sampled_and_kept_in_the_baseline() -> None:
    got, base = bc.compute(CFG, V1, STATS, Baseline("1:1"))
    assert base.maxheld["numfile"] == 12
    fewer = ProcessStats(numfile=3)
    got, base2 = bc.compute(CFG, V1, fewer, base)
    r = {x.resource: x for x in got}["numfile"]
    assert (r.held, r.maxheld) == (3, 12)
    assert base2.maxheld["numfile"] == 12


def test_baseline_is_subtracted_from_counters_the_kernel_cannot_reset() -> None:
    base = bc.reset_baseline(V1, ["memory.failcnt", "memory.memsw.failcnt", "memory.kmem.failcnt"], "1:1",
                             Baseline("1:1", maxheld={"numfile": 9}))
    assert base.failcnt == {"physpages": 0, "swappages": 0, "kmemsize": 0, "numproc": 7, "oomguarpages": 1}
    assert base.maxheld == {"numfile": 9}  # same run: the sampled peaks stay
    after = Counters(version=1, memory_failcnt=0, pids_failcnt=9, oom_kills=1)
    r = rows(c=after, base=base)
    assert (r["numproc"].failcnt, r["oomguarpages"].failcnt, r["physpages"].failcnt) == (2, 0, 0)


def test_on_v2_every_counter_needs_a_baseline() -> None:
    v2 = Counters(version=2, memory_failcnt=42, oom_kills=1, pids_failcnt=7, swap_failcnt=4)
    base = bc.reset_baseline(v2, [], "1:1", Baseline())
    assert base.failcnt == {"physpages": 42, "swappages": 4, "numproc": 7, "oomguarpages": 1}
    assert rows(c=v2, base=base)["physpages"].failcnt == 0


def test_a_baseline_of_another_run_is_forgotten() -> None:
    base = bc.reset_baseline(V1, [], "2:2", Baseline("1:1", maxheld={"numfile": 9}))
    assert base.maxheld == {}


def test_baseline_store_keeps_one_run(tmp_path: Path) -> None:
    store = BaselineStore(tmp_path / "bc")
    assert store.load(101, "10:5") == Baseline("10:5")
    store.save(101, Baseline("10:5", {"numproc": 7}, {"numfile": 3}))
    assert store.load(101, "10:5") == Baseline("10:5", {"numproc": 7}, {"numfile": 3})
    assert store.load(101, "11:9") == Baseline("11:9")  # the container restarted
    (tmp_path / "bc" / "101.json").write_text("{not json")
    assert store.load(101, "10:5") == Baseline("10:5")


# ---- /proc parsing ---------------------------------------------------------------------------------

TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1
   1: 0100007F:0050 0100007F:A000 01 00000010:00000020 00:00000000 00000000     0        0 2 1
   2: 0100007F:0050 0100007F:A001 06 00000000:00000000 03:00000000 00000000     0        0 0 3
"""


def test_net_tables_count_sockets_and_queued_bytes_without_time_wait() -> None:
    assert bc.parse_net_table(TCP, tcp=True) == (2, 16, 32)
    assert bc.parse_net_table(TCP, tcp=False) == (3, 16, 32)
    assert bc.parse_net_table("header only\n", tcp=True) == (0, 0, 0)


def test_file_locks_are_counted_for_the_containers_processes_only() -> None:
    locks = ("1: POSIX  ADVISORY  WRITE 100 00:14:1 0 EOF\n"
             "1: -> POSIX  ADVISORY  WRITE 101 00:14:1 0 EOF\n"
             "2: FLOCK  ADVISORY  WRITE 200 00:14:2 0 EOF\n"
             "3: OFDLCK ADVISORY  READ  101 00:14:3 0 EOF\n")
    assert bc.parse_locks(locks, {100, 101}) == 2


def test_node_facts_parsing() -> None:
    assert bc.parse_meminfo("MemTotal:       24684092 kB\nMemFree: 1 kB\nSwapTotal:       1024 kB\n") == \
        (24684092 * 1024, 1024 * 1024)
    assert bc.parse_bogomips("processor: 0\nbogomips\t: 4890.86\nprocessor: 1\nBogoMIPS : 100\n") == \
        pytest.approx(4990.86)
    assert bc.cpu_power(9781.72, 2) == 244543
    assert bc.cpu_power(0, 2) == 200_000


def test_reset_ub_arrives_as_a_parameter_and_is_taken_out() -> None:
    assert bc.split_reset_ub([("reset_ub", "yes"), ("ram", "1G")]) == ([("ram", "1G")], True)
    assert bc.split_reset_ub([("reset-ub", "")]) == ([], True)
    assert bc.split_reset_ub([("ram", "1G")]) == ([("ram", "1G")], False)


# ---- vzlist fields --------------------------------------------------------------------------------


def test_vzlist_fields_of_every_beancounter_with_suffixes() -> None:
    fields = beancounter_fields(list(rows().values()), running=True)
    assert (fields["numproc"], fields["numproc.m"], fields["numproc.b"], fields["numproc.l"],
            fields["numproc.f"]) == ("5", "64", "64", "64", "7")
    assert fields["physpages.f"] == "60" and fields["privvmpages.l"] == "unlimited"
    for name in fields:
        assert name in FIELD_HELP, name


def test_vzlist_fields_of_a_stopped_container_show_limits_only() -> None:
    fields = beancounter_fields(list(rows(c=None, s=None).values()), running=False)
    assert (fields["numproc"], fields["numproc.l"], fields["numproc.f"], fields["numfile.b"]) == \
        ("-", "64", "-", "100")
