"""`vzquota stat` prints OpenVZ's columns: usage ('*' when over a limit), soft, hard, grace."""

from __future__ import annotations

import pytest

from cli import vzquota
from vzapi import storage_pb2 as pb

NOW = 1_000_000


def reply(**blocks: int) -> pb.QuotaStatReply:
    b = {"usage": 38281, "softlimit": 1000000, "hardlimit": 1100000, "effective_hardlimit": 1100000, **blocks}
    return pb.QuotaStatReply(
        ctid=101, layout="image", mounted=True, now=NOW, quotatime=600,
        blocks=pb.QuotaResource(**b),
        inodes=pb.QuotaResource(usage=6779, softlimit=90000, hardlimit=91000, effective_hardlimit=91024))


def test_stat_has_vzquotas_shape() -> None:
    assert vzquota.format_stat(reply()) == (
        "   resource          usage       softlimit      hardlimit    grace\n"
        "  1k-blocks          38281         1000000        1100000         \n"
        "     inodes           6779           90000          91000         \n")


def test_usage_above_the_soft_limit_is_starred_with_the_grace_left() -> None:
    text = vzquota.format_stat(reply(usage=1050000, grace_expires=NOW + 90 * 60))
    assert "1050000*" in text
    assert text.splitlines()[1].endswith("   01:30")


def test_expired_grace_reads_none() -> None:
    assert vzquota.format_stat(reply(usage=1050000, grace_expires=NOW - 1)).splitlines()[1].endswith("none")


@pytest.mark.parametrize("seconds, text", [(0, "00:00"), (29, "00:00"), (30, "00:01"), (3600, "01:00"),
                                           (47 * 3600, "47:00"), (2 * 86400, "2days"), (10 * 86400 + 5, "10days")])
def test_time_left_is_rounded_like_vzquota(seconds: int, text: str) -> None:
    assert vzquota.time_text(seconds) == text


def test_unlimited_inodes_show_the_file_systems_count() -> None:
    r = reply()
    r.inodes.unlimited = True
    r.inodes.hardlimit = 0
    assert "91024" in vzquota.format_stat(r).splitlines()[2]
    assert vzquota.stat_json(r)["resources"]["inodes"]["hardlimit"] is None


def test_json_has_every_number() -> None:
    j = vzquota.stat_json(reply(grace_expires=NOW + 60))
    assert j["ctid"] == 101 and j["layout"] == "image" and j["quotatime"] == 600
    assert j["resources"]["1k-blocks"] == {"usage": 38281, "softlimit": 1000000, "hardlimit": 1100000,
                                          "effective_hardlimit": 1100000, "grace": "00:01",
                                          "grace_expires": NOW + 60}
