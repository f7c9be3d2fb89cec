"""ARP on the node's uplink with raw packet sockets: duplicate address detection and announcements.

The caller passes the interface's MAC (read over netlink): /sys/class/net shows the interfaces of
the namespace sysfs was mounted in, which is not the agent's when it runs in a node namespace.

Blocking functions: call them through asyncio.to_thread. They run in the calling thread's
network namespace (the agent's, i.e. the node's).
"""

from __future__ import annotations

import ipaddress
import os
import select
import socket
import struct
import threading
import time

ETH_P_ARP = 0x0806
BROADCAST = b"\xff" * 6
ZERO_MAC = b"\x00" * 6


def mac_bytes(mac: str) -> bytes:
    return bytes(int(x, 16) for x in mac.split(":"))


def mac_text(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def arp_frame(op: int, src_mac: bytes, src_ip: str, dst_mac: bytes, dst_ip: str, eth_dst: bytes = BROADCAST) -> bytes:
    """An Ethernet frame carrying an ARP packet (op 1 = request, 2 = reply)."""
    eth = eth_dst + src_mac + struct.pack("!H", ETH_P_ARP)
    arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, op, src_mac, socket.inet_aton(src_ip), dst_mac,
                      socket.inet_aton(dst_ip))
    return eth + arp


def parse_arp(frame: bytes) -> tuple[int, bytes, str, str] | None:
    """(op, sender mac, sender ip, target ip) of an ARP frame, else None."""
    if len(frame) < 42 or frame[12:14] != struct.pack("!H", ETH_P_ARP):
        return None
    _, ptype, hlen, plen, op, smac, sip, _, tip = struct.unpack("!HHBBH6s4s6s4s", frame[14:42])
    if ptype != 0x0800 or hlen != 6 or plen != 4:
        return None
    return op, smac, socket.inet_ntoa(sip), socket.inet_ntoa(tip)


def _open(ifname: str) -> socket.socket:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
    s.bind((ifname, 0))
    return s


_senders: dict[int, socket.socket] = {}
_senders_lock = threading.Lock()


def _sender() -> socket.socket:
    """A send-only packet socket of the calling thread's network namespace, kept open.

    Opening and closing packet sockets each wait for an RCU grace period (~10 ms apiece here): too
    slow for the announcement that ends a migration's downtime. Protocol 0 receives nothing.
    """
    ns = os.stat("/proc/thread-self/ns/net").st_ino
    with _senders_lock:
        if (s := _senders.get(ns)) is None:
            s = _senders[ns] = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        return s


def probe(ifname: str, own_mac: str, ip: str, timeout: float = 0.6, probes: int = 2,
          sender_ip: str | None = None) -> str | None:
    """Duplicate address detection: the MAC of a host on ifname's link that already uses ip, or None.

    Linux answers RFC 5227 probes (sender 0.0.0.0) only for its own addresses, never for proxied
    ones, so a venet address on another node would go unseen. We therefore ask with the node's own
    address as sender when it has one (a plain "who has"), which proxy ARP answers too, and also
    treat another host's probe of the same address as a conflict.
    """
    if ipaddress.ip_address(ip).version != 4:
        return None
    own = mac_bytes(own_mac)
    s = _open(ifname)
    try:
        deadline = time.monotonic() + timeout
        next_send = 0.0
        sent = 0
        while True:
            now = time.monotonic()
            if now >= deadline:
                return None
            if sent < probes and now >= next_send:
                s.send(arp_frame(1, own, sender_ip or "0.0.0.0", ZERO_MAC, ip))
                sent += 1
                next_send = now + timeout / (probes + 1)
            ready, _, _ = select.select([s], [], [], max(0.0, min(deadline, next_send) - now) or 0.01)
            if not ready:
                continue
            frame = s.recv(2048)
            parsed = parse_arp(frame)
            if parsed is None:
                continue
            op, smac, sip, tip = parsed
            if smac == own:
                continue
            if sip == ip or (op == 1 and sip == "0.0.0.0" and tip == ip):
                return mac_text(smac)
    finally:
        s.close()


def announce(ifname: str, own_mac: str, ip: str, count: int = 2, interval: float = 0.05) -> None:
    """Gratuitous ARP: tell the link that ip is now at ifname's MAC (updates peers' caches)."""
    if ipaddress.ip_address(ip).version != 4:
        return
    own = mac_bytes(own_mac)
    s = _sender()
    for i in range(count):
        s.sendto(arp_frame(1, own, ip, ZERO_MAC, ip), (ifname, ETH_P_ARP))
        s.sendto(arp_frame(2, own, ip, BROADCAST, ip), (ifname, ETH_P_ARP))
        if i + 1 < count:
            time.sleep(interval)


def sysctl_write(path: str, value: str) -> None:
    """Write /proc/sys/<path> (in the calling thread's network namespace for net.*)."""
    fd = os.open(f"/proc/sys/{path}", os.O_WRONLY)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def sysctl_read(path: str) -> str:
    with open(f"/proc/sys/{path}") as f:
        return f.read().strip()
