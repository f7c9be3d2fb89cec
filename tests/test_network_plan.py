"""Network plans: interface names, MACs, /etc/hosts and ARP frames, computed without the kernel."""

from __future__ import annotations

import pytest

from agent.config.params import NetIf
from agent.network import arp
from agent.network.plan import (
    IFNAMSIZ,
    bare_address,
    bridge_mac,
    derived_mac,
    plan,
    render_hosts,
    render_resolv,
)


def test_venet_plan_uses_host_addresses_without_duplicates() -> None:
    p = plan(101, ["10.0.0.5/24", "10.0.0.5", "2001:db8::5"], [])
    assert p.venet is not None
    assert p.venet.host_if == "venet101"
    assert p.venet.addresses == ("10.0.0.5", "2001:db8::5")
    assert p.venet.v4 == ("10.0.0.5",) and p.venet.v6 == ("2001:db8::5",)
    assert p.veths == ()


def test_no_addresses_no_venet() -> None:
    assert plan(101, [], []).venet is None


def test_veth_defaults_are_stable_and_distinct_per_side() -> None:
    p1 = plan(101, [], [NetIf(ifname="eth0", bridge="vzbr0")])
    p2 = plan(101, [], [NetIf(ifname="eth0", bridge="vzbr0")])
    assert p1 == p2
    v = p1.veths[0]
    assert v.host_if == "veth101.0" and v.bridge == "vzbr0"
    assert v.ct_mac != v.host_mac
    assert int(v.ct_mac.split(":")[0], 16) & 0x02  # locally administered
    assert not int(v.ct_mac.split(":")[0], 16) & 0x01  # unicast


def test_given_macs_and_names_win() -> None:
    v = plan(7, [], [NetIf(ifname="eth1", mac="00:18:51:AA:BB:CC", host_ifname="myveth")]).veths[0]
    assert (v.ct_if, v.ct_mac, v.host_if, v.bridge) == ("eth1", "00:18:51:aa:bb:cc", "myveth", None)


@pytest.mark.parametrize("ctid", [101, 999_999, 2_147_483_647])
def test_interface_names_fit_the_kernel_limit(ctid: int) -> None:
    p = plan(ctid, ["10.0.0.1"], [NetIf(ifname="eth0")])
    assert p.venet is not None and len(p.venet.host_if) <= IFNAMSIZ
    assert len(p.veths[0].host_if) <= IFNAMSIZ


def test_small_ctids_never_share_a_mac() -> None:
    macs = {derived_mac(c, i) for c in range(101, 1101) for i in range(3)}
    assert len(macs) == 3000


def test_bridge_mac_is_fixed() -> None:
    assert bridge_mac("vzbr0") == bridge_mac("vzbr0") != bridge_mac("vzbr1")


def test_hosts_keeps_admin_lines_and_replaces_ours() -> None:
    old = "127.0.0.1 localhost web1\n10.0.0.9 old web1\n192.168.1.1 router # theirs\n"
    out = render_hosts(old, "web1.example.com", ["10.0.0.5/24"])
    lines = out.splitlines()
    assert "10.0.0.5\tweb1.example.com web1" in lines
    assert "192.168.1.1 router # theirs" in lines
    assert not any(line.startswith("10.0.0.9") for line in lines)
    assert render_hosts(out, "web1.example.com", ["10.0.0.5"]) == out  # idempotent


def test_resolv() -> None:
    assert render_resolv(["1.1.1.1", "2001:db8::53"], ["example.com"]) == (
        "search example.com\nnameserver 1.1.1.1\nnameserver 2001:db8::53\n")


def test_bare_address() -> None:
    assert bare_address(" 10.1.2.3/8 ") == "10.1.2.3"


def test_arp_frames_round_trip() -> None:
    frame = arp.arp_frame(1, arp.mac_bytes("02:00:00:00:00:01"), "10.0.0.1", arp.ZERO_MAC, "10.0.0.5")
    assert len(frame) == 42
    assert arp.parse_arp(frame) == (1, arp.mac_bytes("02:00:00:00:00:01"), "10.0.0.1", "10.0.0.5")
    assert arp.parse_arp(frame[:30]) is None


def test_ndp_packets() -> None:
    from agent.network import ndp

    assert ndp.solicited_node("fd00:213::501") == "ff02::1:ff00:501"
    assert ndp.solicited_node("2001:db8::abcd:1234") == "ff02::1:ffcd:1234"
    na = ndp.na_packet("fd00::5", "02:00:00:00:00:01")
    assert na[0] == ndp.ICMPV6_NA and len(na) == 32
    assert ndp.parse_na(na) == ("fd00::5", "02:00:00:00:00:01")
    ns = ndp.ns_packet("fd00::5", "02:00:00:00:00:01")
    assert ns[0] == ndp.ICMPV6_NS and ndp.parse_na(ns) is None
