"""IPv6 neighbour discovery on the node's uplink: duplicate address detection and unsolicited
neighbour advertisements, the IPv6 twins of arp.probe and arp.announce.

Blocking functions (asyncio.to_thread); they run in the calling thread's network namespace. ICMPv6
raw sockets: the kernel fills in the checksum. Hop limit 255, as neighbour discovery requires.
"""

from __future__ import annotations

import ipaddress
import select
import socket
import struct
import time

from agent.network.arp import mac_bytes, mac_text

ICMPV6_NS = 135
ICMPV6_NA = 136
NA_OVERRIDE = 0x20000000
ALL_NODES = "ff02::1"


def solicited_node(address: str) -> str:
    """ff02::1:ffXX:XXXX for address (where its neighbour solicitations go)."""
    low = ipaddress.IPv6Address(address).packed[-3:]
    return str(ipaddress.IPv6Address(bytes.fromhex("ff0200000000000000000001ff") + low))


def ns_packet(target: str, own_mac: str) -> bytes:
    """Neighbour solicitation for target, with our link-layer address as option 1."""
    return (struct.pack("!BBHI", ICMPV6_NS, 0, 0, 0) + ipaddress.IPv6Address(target).packed
            + struct.pack("!BB", 1, 1) + mac_bytes(own_mac))


def na_packet(target: str, own_mac: str, flags: int = NA_OVERRIDE) -> bytes:
    """Unsolicited neighbour advertisement: target is at own_mac (option 2)."""
    return (struct.pack("!BBHI", ICMPV6_NA, 0, 0, flags) + ipaddress.IPv6Address(target).packed
            + struct.pack("!BB", 2, 1) + mac_bytes(own_mac))


def parse_na(data: bytes) -> tuple[str, str | None] | None:
    """(target, target link-layer address or None) of a neighbour advertisement, else None."""
    if len(data) < 24 or data[0] != ICMPV6_NA:
        return None
    target = str(ipaddress.IPv6Address(data[8:24]))
    mac = None
    opts = data[24:]
    while len(opts) >= 8:
        kind, length = opts[0], opts[1] * 8
        if length == 0:
            break
        if kind == 2 and length >= 8:
            mac = mac_text(opts[2:8])
        opts = opts[length:]
    return target, mac


def _open(ifname: str) -> tuple[socket.socket, int]:
    s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, ifname.encode())
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, 255)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)
    return s, socket.if_nametoindex(ifname)


def probe(ifname: str, own_mac: str, address: str, timeout: float = 0.6, probes: int = 2) -> str | None:
    """Who answers a neighbour solicitation for address on ifname: their MAC, or None.

    Sent from the node's link-local address (not the unspecified one), so that proxy NDP on
    another node answers for a container address it routes, as with ARP in arp.probe.
    """
    s, index = _open(ifname)
    try:
        dest = (solicited_node(address), 0, 0, index)
        deadline = time.monotonic() + timeout
        next_send, sent = 0.0, 0
        while (now := time.monotonic()) < deadline:
            if sent < probes and now >= next_send:
                try:
                    s.sendto(ns_packet(address, own_mac), dest)
                except OSError:
                    return None  # no usable link-local address yet: nothing to ask with
                sent += 1
                next_send = now + timeout / (probes + 1)
            ready, _, _ = select.select([s], [], [], max(0.01, min(deadline, next_send) - now))
            if not ready:
                continue
            data, _ = s.recvfrom(2048)
            parsed = parse_na(data)
            if parsed is not None and parsed[0] == str(ipaddress.IPv6Address(address)):
                mac = parsed[1]
                if mac is None or mac != own_mac.lower():
                    return mac or "unknown MAC"
        return None
    finally:
        s.close()


def announce(ifname: str, own_mac: str, address: str, count: int = 1) -> None:
    """Unsolicited neighbour advertisement to all nodes: address is at own_mac now."""
    s, index = _open(ifname)
    try:
        for _ in range(count):
            s.sendto(na_packet(address, own_mac), (ALL_NODES, 0, 0, index))
    finally:
        s.close()
