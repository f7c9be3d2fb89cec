"""Apply a NetPlan to the kernel: the node side from the agent's own network namespace (the
node's), the container side from a thread inside the container's namespace.

pyroute2's synchronous IPRoute is used from worker threads only (it runs its own event loop and
fails inside the agent's running one); see netns.py for why namespaces are entered by threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
from collections.abc import Sequence

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from agent.errors import Kind, VzError
from agent.network import arp, ndp, netns
from agent.network.plan import VENET_GW6, VENET_IF, NetPlan, VenetPlan, VethPlan, bridge_mac

log = logging.getLogger(__name__)

NTF_PROXY = 0x08
IFA_F_NODAD = 0x02


def _session(ipr: IPRoute | None) -> contextlib.AbstractContextManager[IPRoute]:
    """The caller's netlink session, or a new one closed on exit."""
    return contextlib.nullcontext(ipr) if ipr is not None else IPRoute()


def _ifindex(ipr: IPRoute, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return int(found[0]) if found else None


def _set_sysctl(path: str, value: str) -> None:
    try:
        if arp.sysctl_read(path) != value:
            arp.sysctl_write(path, value)
    except OSError as e:
        log.warning("cannot set %s=%s: %s", path, value, e)


def _uplinks(ipr: IPRoute, address: str, configured: Sequence[str] | None) -> list[str]:
    """The node interfaces facing the LAN where `address` lives (OpenVZ NEIGHBOUR_DEVS).

    Detection: interfaces (not container ones) with an address whose subnet holds `address`;
    else the interfaces of the default route. Container host routes are ignored on purpose, so the
    answer is the same before and after the container's own route exists.
    """
    if configured:
        return [d for d in configured if _ifindex(ipr, d) is not None]
    target = ipaddress.ip_address(address)
    names = {int(link["index"]): str(link.get_attr("IFLA_IFNAME")) for link in ipr.link("dump")}
    found = set()
    for a in ipr.get_addr(family=10 if target.version == 6 else 2):
        name = names.get(int(a["index"]), "")
        if name == "lo" or name.startswith(("venet", "veth")):
            continue
        net = ipaddress.ip_interface(f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}").network
        if target in net and not net.is_link_local:
            found.add(name)
    if found:
        return sorted(found)
    for r in ipr.route("dump", family=10 if target.version == 6 else 2, table=254):
        if r["dst_len"] == 0 and (oif := r.get_attr("RTA_OIF")):
            found.add(names.get(int(oif), ""))
    return sorted(n for n in found if n)


def _venet_routes(ipr: IPRoute) -> dict[str, str]:
    """Host routes of this node to container interfaces: address -> interface name."""
    names = {int(link["index"]): str(link.get_attr("IFLA_IFNAME")) for link in ipr.link("dump")}
    out = {}
    for family, full in ((2, 32), (10, 128)):
        for r in ipr.route("dump", family=family, table=254):
            dev = names.get(r.get_attr("RTA_OIF") or -1, "")
            if r["dst_len"] == full and dev.startswith(("venet", "veth")) and r.get_attr("RTA_DST"):
                out[str(r.get_attr("RTA_DST"))] = dev
    return out


def _mac_of(ipr: IPRoute, dev: str) -> str:
    return str(ipr.link("get", ifname=dev)[0].get_attr("IFLA_ADDRESS"))


def _ipv4_of(ipr: IPRoute, dev: str) -> str | None:
    idx = _ifindex(ipr, dev)
    if idx is None:
        return None
    for a in ipr.get_addr(family=2, index=idx):
        return str(a.get_attr("IFA_ADDRESS"))
    return None


def _all_ifnames(ipr: IPRoute) -> list[str]:
    return [str(link.get_attr("IFLA_IFNAME")) for link in ipr.link("dump")]


class NodeNetwork:
    """The node side of container networking. Methods are idempotent where stated."""

    def __init__(self, neighbour_devs: Sequence[str] | None = None) -> None:
        self.neighbour_devs = list(neighbour_devs) if neighbour_devs else None

    # ---- checks -------------------------------------------------------------------------------

    def _probe_blocking(self, addresses: Sequence[str], own_if: str | None, probe_lan: bool) -> list[str]:
        conflicts = []
        with IPRoute() as ipr:
            local = {str(a.get_attr("IFA_ADDRESS")) for a in ipr.get_addr()}
            routed = _venet_routes(ipr)
            for addr in addresses:
                if addr in local:
                    conflicts.append(f"{addr} is an address of this node itself")
                    continue
                if (dev := routed.get(addr)) is not None and dev != own_if:
                    conflicts.append(f"{addr} is already routed to a container on this node ({dev})")
                    continue
                if not probe_lan:
                    continue
                v6 = ipaddress.ip_address(addr).version == 6
                for dev in _uplinks(ipr, addr, self.neighbour_devs):
                    mac = (ndp.probe(dev, _mac_of(ipr, dev), addr) if v6
                           else arp.probe(dev, _mac_of(ipr, dev), addr, sender_ip=_ipv4_of(ipr, dev)))
                    if mac:
                        conflicts.append(f"{addr} is already in use on the LAN (answered on {dev} by {mac})")
                        break
        return conflicts

    async def check_free(self, addresses: Sequence[str], own_if: str | None = None, *,
                         probe_lan: bool = True) -> None:
        """Refuse addresses that another host on the LAN, or this node, already uses.

        own_if: the container's own venet interface, whose routes are not a conflict.
        """
        if not addresses:
            return
        conflicts = await asyncio.to_thread(self._probe_blocking, list(addresses), own_if, probe_lan)
        if conflicts:
            raise VzError(Kind.EXISTS, "refused: " + "; ".join(conflicts))

    # ---- setup / teardown ---------------------------------------------------------------------

    def _node_venet(self, ns_name: str, v: VenetPlan, expose: bool = True) -> None:
        with IPRoute() as ipr:
            if v.v4:
                _set_sysctl("net/ipv4/ip_forward", "1")
            if v.v6:
                _set_sysctl("net/ipv6/conf/all/forwarding", "1")
            if (old := _ifindex(ipr, v.host_if)) is not None:
                ipr.link("del", index=old)
            ipr.link("add", ifname=v.host_if, kind="veth", peer={"ifname": VENET_IF, "net_ns_fd": ns_name})
            idx = _ifindex(ipr, v.host_if)
            assert idx is not None
            _set_sysctl(f"net/ipv4/conf/{v.host_if}/proxy_arp", "1")
            _set_sysctl(f"net/ipv4/neigh/{v.host_if}/proxy_delay", "0")
            ipr.link("set", index=idx, state="up")
            if v.v6:
                with contextlib.suppress(NetlinkError):
                    ipr.addr("add", index=idx, address=VENET_GW6, prefixlen=64, flags=IFA_F_NODAD)
        if expose:
            self._node_routes(v.host_if, v.addresses)

    def _node_routes(self, host_if: str, addresses: Sequence[str], ipr_: IPRoute | None = None,
                     uplinks_of: dict[str, list[str]] | None = None) -> None:
        with _session(ipr_) as ipr:
            idx = _ifindex(ipr, host_if)
            if idx is None:
                raise VzError(Kind.FAILED, f"venet interface {host_if} is missing")
            for addr in addresses:
                v6 = ipaddress.ip_address(addr).version == 6
                uplinks = (uplinks_of or {}).get(addr) or _uplinks(ipr, addr, self.neighbour_devs)
                try:
                    ipr.route("replace", dst=addr, dst_len=128 if v6 else 32, oif=idx, scope=253,
                              family=10 if v6 else 2)
                except NetlinkError as e:
                    raise VzError(Kind.FAILED, f"cannot route {addr} to {host_if}: {e}") from None
                for dev in uplinks:
                    dev_idx = _ifindex(ipr, dev)
                    if dev_idx is None:
                        continue
                    if v6:
                        _set_sysctl(f"net/ipv6/conf/{dev}/proxy_ndp", "1")
                    else:
                        _set_sysctl(f"net/ipv4/neigh/{dev}/proxy_delay", "0")
                    with contextlib.suppress(NetlinkError):
                        ipr.neigh("add", dst=addr, ifindex=dev_idx, flags=NTF_PROXY, family=10 if v6 else 2)

    def _node_unroute(self, addresses: Sequence[str]) -> None:
        with IPRoute() as ipr:
            names = _all_ifnames(ipr)
            for addr in addresses:
                v6 = ipaddress.ip_address(addr).version == 6
                for name in names:
                    idx = _ifindex(ipr, name)
                    if idx is None:
                        continue
                    with contextlib.suppress(NetlinkError):
                        ipr.neigh("del", dst=addr, ifindex=idx, flags=NTF_PROXY, family=10 if v6 else 2)
                with contextlib.suppress(NetlinkError):  # scope must match the route added (link)
                    ipr.route("del", dst=addr, dst_len=128 if v6 else 32, scope=253, family=10 if v6 else 2)

    def _node_veth(self, ns_name: str, v: VethPlan, expose: bool = True) -> None:
        with IPRoute() as ipr:
            if (old := _ifindex(ipr, v.host_if)) is not None:
                ipr.link("del", index=old)
            master = None
            if v.bridge:
                master = _ifindex(ipr, v.bridge)
                if master is None:
                    log.info("creating bridge %s", v.bridge)
                    ipr.link("add", ifname=v.bridge, kind="bridge", address=bridge_mac(v.bridge))
                    master = _ifindex(ipr, v.bridge)
                    assert master is not None
                    ipr.link("set", index=master, state="up")
            ipr.link("add", ifname=v.host_if, kind="veth", address=v.host_mac,
                     peer={"ifname": v.ct_if, "address": v.ct_mac, "net_ns_fd": ns_name})
            idx = _ifindex(ipr, v.host_if)
            assert idx is not None
            if master is not None:
                ipr.link("set", index=idx, master=master)
            ipr.link("set", index=idx, state="up" if expose else "down")

    @staticmethod
    def _ct_side(plan: NetPlan) -> None:
        with IPRoute() as ipr:
            if plan.venet is not None:
                idx = _ifindex(ipr, VENET_IF)
                assert idx is not None
                ipr.link("set", index=idx, state="up")
                _ct_addresses(ipr, idx, plan.venet.addresses, add=True)
                if plan.venet.v4:
                    ipr.route("replace", dst="0.0.0.0", dst_len=0, oif=idx, scope=253, family=2)
                if plan.venet.v6:
                    ipr.route("replace", dst="::", dst_len=0, gateway=VENET_GW6, oif=idx, family=10)
            for v in plan.veths:
                idx = _ifindex(ipr, v.ct_if)
                if idx is not None:
                    ipr.link("set", index=idx, state="up")

    async def setup(self, ns_name: str, plan: NetPlan, *, expose: bool = True) -> None:
        """Create and configure every interface of the plan; the container's namespace exists.

        expose=False creates everything but makes the container unreachable from the LAN: no host
        routes or proxy entries for venet, bridged veths down. A restore in progress must not be
        reached, or this node's kernel would reset the TCP connections being restored. expose()
        finishes the job.
        """
        try:
            if plan.venet is not None:
                await asyncio.to_thread(self._node_venet, ns_name, plan.venet, expose)
            for v in plan.veths:
                await asyncio.to_thread(self._node_veth, ns_name, v, expose)
            await netns.run_in(ns_name, lambda: self._ct_side(plan))
        except NetlinkError as e:
            raise VzError(Kind.FAILED, f"network setup failed: {e}") from None

    async def lock(self, plan: NetPlan) -> None:
        """Cut the container off (node ends down): the network lock of a migration's freeze.

        Taking a link down also flushes the IPv4 routes through it; unlock() puts them back.
        """
        names = [v.host_if for v in plan.veths] + ([plan.venet.host_if] if plan.venet else [])
        await asyncio.to_thread(self._set_links, names, False)
        if plan.venet is not None:  # stop answering ARP/NDP for the addresses on the LAN
            await asyncio.to_thread(self._node_unroute, plan.venet.addresses)

    async def expose(self, plan: NetPlan) -> None:
        """Make the container reachable again: node ends up, routes and proxy entries, announced.

        One worker thread does it all (a migration's downtime ends here); the second round of
        announcements goes out later in the background.
        """
        names = [v.host_if for v in plan.veths] + ([plan.venet.host_if] if plan.venet else [])
        addrs = plan.venet.addresses if plan.venet is not None else ()

        def blocking() -> None:
            with IPRoute() as ipr:  # one netlink session: each new one costs milliseconds
                self._set_links(names, True, ipr)
                uplinks_of = {a: _uplinks(ipr, a, self.neighbour_devs) for a in addrs}
                if plan.venet is not None:
                    self._node_routes(plan.venet.host_if, plan.venet.addresses, ipr, uplinks_of)
                self._announce_blocking(addrs, 1, ipr, uplinks_of)

        await asyncio.to_thread(blocking)
        if addrs:
            task = asyncio.get_running_loop().call_later(
                0.1, lambda: asyncio.ensure_future(asyncio.to_thread(self._announce_blocking, addrs, 1)))
            del task

    @staticmethod
    def _set_links(names: Sequence[str], up: bool, ipr_: IPRoute | None = None) -> None:
        with _session(ipr_) as ipr:
            for name in names:
                idx = _ifindex(ipr, name)
                if idx is not None:
                    ipr.link("set", index=idx, state="up" if up else "down")

    async def announce(self, plan: NetPlan) -> None:
        """Gratuitous ARP / unsolicited NA for every venet address on its uplinks (after start or a move)."""
        if plan.venet is None or not plan.venet.addresses:
            return
        await asyncio.to_thread(self._announce_blocking, plan.venet.addresses)

    def _announce_blocking(self, addresses: Sequence[str], count: int = 2, ipr_: IPRoute | None = None,
                           uplinks_of: dict[str, list[str]] | None = None) -> None:
        with _session(ipr_) as ipr:
            for addr in addresses:
                v6 = ipaddress.ip_address(addr).version == 6
                for dev in (uplinks_of or {}).get(addr) or _uplinks(ipr, addr, self.neighbour_devs):
                    try:
                        if v6:
                            ndp.announce(dev, _mac_of(ipr, dev), addr, count=count)
                        else:
                            arp.announce(dev, _mac_of(ipr, dev), addr, count=count)
                    except OSError as e:
                        log.warning("gratuitous ARP for %s on %s failed: %s", addr, dev, e)

    async def teardown(self, plan: NetPlan, venet_if: str | None = None) -> None:
        """Remove the node side (idempotent); the container side dies with its namespace.

        Addresses routed to the container's venet interface go too, also those added live without
        --save (not in the plan made from its config).
        """
        venet_if = venet_if or (plan.venet.host_if if plan.venet else None)
        addresses = list(plan.venet.addresses) if plan.venet else []
        if venet_if:
            routed = await asyncio.to_thread(self._routed_to, venet_if)
            addresses += [a for a in routed if a not in addresses]
        if addresses:
            await asyncio.to_thread(self._node_unroute, addresses)
        await asyncio.to_thread(self._del_links, [v.host_if for v in plan.veths] + ([venet_if] if venet_if else []))

    @staticmethod
    def _routed_to(dev: str) -> list[str]:
        with IPRoute() as ipr:
            return [a for a, d in _venet_routes(ipr).items() if d == dev]

    @staticmethod
    def _del_links(names: Sequence[str]) -> None:
        with IPRoute() as ipr:
            for name in names:
                idx = _ifindex(ipr, name)
                if idx is not None:
                    with contextlib.suppress(NetlinkError):
                        ipr.link("del", index=idx)

    # ---- live address changes -----------------------------------------------------------------

    async def change_addresses(self, ns_name: str, old: NetPlan, new: NetPlan) -> list[str]:
        """Apply an --ipadd/--ipdel change to a running container; returns notes."""
        before = set(old.venet.addresses) if old.venet else set()
        after = set(new.venet.addresses) if new.venet else set()
        added, removed = sorted(after - before), sorted(before - after)
        if new.venet is not None and old.venet is None:
            await asyncio.to_thread(self._node_venet, ns_name, new.venet)
            await netns.run_in(ns_name, lambda: self._ct_side(new))
        elif new.venet is not None:
            await asyncio.to_thread(self._node_routes, new.venet.host_if, added)
            await netns.run_in(ns_name, lambda: _ct_change(added, removed))
        if removed:
            await asyncio.to_thread(self._node_unroute, removed)
            if new.venet is None and old.venet is not None:
                await asyncio.to_thread(self._del_links, [old.venet.host_if])
        if added and new.venet is not None:
            await asyncio.to_thread(self._announce_blocking, added)
        notes = [f"added {a}" for a in added] + [f"removed {a}" for a in removed]
        return notes


def _ct_addresses(ipr: IPRoute, idx: int, addresses: Sequence[str], *, add: bool) -> None:
    for addr in addresses:
        v6 = ipaddress.ip_address(addr).version == 6
        kw = {"flags": IFA_F_NODAD} if v6 else {}
        try:
            ipr.addr("add" if add else "del", index=idx, address=addr, prefixlen=128 if v6 else 32, **kw)
        except NetlinkError as e:
            if not ((add and e.code == errno.EEXIST) or (not add and e.code == errno.EADDRNOTAVAIL)):
                raise


def _ct_change(added: Sequence[str], removed: Sequence[str]) -> None:
    with IPRoute() as ipr:
        idx = _ifindex(ipr, VENET_IF)
        if idx is None:
            return
        _ct_addresses(ipr, idx, removed, add=False)
        _ct_addresses(ipr, idx, added, add=True)
        if any(ipaddress.ip_address(a).version == 4 for a in added):
            ipr.route("replace", dst="0.0.0.0", dst_len=0, oif=idx, scope=253, family=2)
        if any(ipaddress.ip_address(a).version == 6 for a in added):
            ipr.route("replace", dst="::", dst_len=0, gateway=VENET_GW6, oif=idx, family=10)
