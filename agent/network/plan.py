"""Pure: a container's network settings -> the interfaces, addresses and routes to create.

venet (OpenVZ `--ipadd`): a veth pair whose container end `venet0` carries the addresses as
host addresses (/32, /128) with a device default route; the node end has proxy ARP, a host
route per address, and the node answers ARP/NDP for those addresses on its uplink (proxy
neighbour entries), so the LAN reaches the container through the node's MAC.

veth (OpenVZ `--netif_add`): a bridged Ethernet interface with its own stable MAC; addresses
inside are the container OS's business.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from agent.config.params import NetIf

IFNAMSIZ = 15
VENET_IF = "venet0"
# link-local gateway the node end of every venet pair carries for IPv6 (IPv4 needs none: proxy ARP)
VENET_GW6 = "fe80::1"


@dataclass(frozen=True)
class VenetPlan:
    host_if: str
    addresses: tuple[str, ...]  # bare addresses, v4 and v6

    @property
    def v4(self) -> tuple[str, ...]:
        return tuple(a for a in self.addresses if ipaddress.ip_address(a).version == 4)

    @property
    def v6(self) -> tuple[str, ...]:
        return tuple(a for a in self.addresses if ipaddress.ip_address(a).version == 6)


@dataclass(frozen=True)
class VethPlan:
    ct_if: str
    ct_mac: str
    host_if: str
    host_mac: str
    bridge: str | None


@dataclass(frozen=True)
class NetPlan:
    venet: VenetPlan | None
    veths: tuple[VethPlan, ...]


def bare_address(text: str) -> str:
    """'10.0.0.5/24' -> '10.0.0.5' (venet addresses are host addresses)."""
    return str(ipaddress.ip_interface(text.strip()).ip)


def derived_mac(ctid: int, index: int, host_side: bool = False) -> str:
    """A stable, locally administered MAC for interface `index` of container `ctid`.

    Small CTIDs map one-to-one (no collision is possible); others are hashed.
    """
    if ctid < (1 << 20) and index < 8:
        low = (index << 20) | ctid
        tail = low.to_bytes(3, "big")
    else:
        tail = hashlib.sha256(f"{ctid}/{index}".encode()).digest()[:3]
    # 02:.. = locally administered unicast; the 2nd byte tells container (0x56) from host (0x57) end
    head = bytes([0x02, 0x57 if host_side else 0x56, 0x5A])
    return ":".join(f"{b:02x}" for b in head + tail)


def bridge_mac(name: str) -> str:
    """A fixed MAC for a bridge the agent creates (a bridge would otherwise take its lowest port MAC)."""
    tail = hashlib.sha256(f"bridge/{name}".encode()).digest()[:3]
    return ":".join(f"{b:02x}" for b in bytes([0x02, 0x58, 0x5A]) + tail)


def _host_ifname(prefix: str, ctid: int, suffix: str = "") -> str:
    name = f"{prefix}{ctid}{suffix}"
    if len(name) <= IFNAMSIZ:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()
    return f"{prefix}{digest[: IFNAMSIZ - len(prefix)]}"


def venet_host_if(ctid: int) -> str:
    return _host_ifname("venet", ctid)


def plan(ctid: int, ip_addresses: Sequence[str], netifs: Sequence[NetIf]) -> NetPlan:
    venet = None
    if ip_addresses:
        addrs = tuple(dict.fromkeys(bare_address(a) for a in ip_addresses))
        venet = VenetPlan(host_if=venet_host_if(ctid), addresses=addrs)
    veths = tuple(
        VethPlan(
            ct_if=n.ifname,
            ct_mac=(n.mac or derived_mac(ctid, i)).lower(),
            host_if=n.host_ifname or _host_ifname("veth", ctid, f".{i}"),
            host_mac=(n.host_mac or derived_mac(ctid, i, host_side=True)).lower(),
            bridge=n.bridge or None,
        )
        for i, n in enumerate(netifs)
    )
    return NetPlan(venet=venet, veths=veths)


def render_hosts(existing: str, hostname: str | None, addresses: Sequence[str]) -> str:
    """/etc/hosts with localhost entries and one line for the container's first address.

    Lines the container's admin added are kept; lines for the hostname we manage are replaced.
    """
    keep = []
    short = hostname.split(".")[0] if hostname else None
    ours = {hostname, short} - {None}
    for line in existing.splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) >= 2 and (words[0] in ("127.0.0.1", "::1") or ours & set(words[1:])):
            continue
        if line.strip() == "# vzfleet: managed entries above":
            continue
        keep.append(line)
    out = ["127.0.0.1\tlocalhost" + (f" {hostname}" if hostname and not addresses else ""),
           "::1\tlocalhost ip6-localhost ip6-loopback"]
    if hostname and addresses:
        names = hostname if short == hostname else f"{hostname} {short}"
        out.append(f"{bare_address(addresses[0])}\t{names}")
    out.append("# vzfleet: managed entries above")
    return "\n".join(out + keep).rstrip("\n") + "\n"


def render_resolv(nameservers: Sequence[str], searchdomains: Sequence[str]) -> str:
    lines = []
    if searchdomains:
        lines.append("search " + " ".join(searchdomains))
    lines += [f"nameserver {ns}" for ns in nameservers]
    return "\n".join(lines) + "\n"
