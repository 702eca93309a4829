"""Links and addresses: the VXLAN overlay device and the underlay interface.

Uses pyroute2's synchronous ``IPRoute`` (its asyncio API fails under uvloop, so the
daemon calls this from its own netlink thread). Every pyroute2/OS error is translated
into ``KernelError``. Works in the network namespace of the calling process.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import socket
import struct
from dataclasses import dataclass
from enum import Enum
from ipaddress import IPv4Address, IPv4Interface
from types import TracebackType
from typing import Any, Final

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from overlayd.dataplane.netlink.rtnl_messages import RT_TABLE_MAIN
from overlayd.values.errors import KernelError
from overlayd.values.kernel_state import MacAddress

IFF_UP: Final = 0x1

# linux/sockios.h, linux/ethtool.h: the legacy get/set of TX checksum offload. The kernel
# maps ETHTOOL_STXCSUM onto the generic feature flags (NETIF_F_CSUM_MASK), so it is the
# same switch as ``ethtool -K dev tx off``.
SIOCETHTOOL: Final = 0x8946
ETHTOOL_GTXCSUM: Final = 0x16
ETHTOOL_STXCSUM: Final = 0x17
_ETHTOOL_VALUE = struct.Struct("=II")  # struct ethtool_value { u32 cmd; u32 data; }
_IFREQ = struct.Struct("16sP16x")  # struct ifreq: name, then ifr_data pointer; 40 bytes


@dataclass(frozen=True)
class LinkInfo:
    """What overlayd needs to know about an interface."""

    name: str
    index: int
    mtu: int
    mac: MacAddress | None
    up: bool
    addresses: tuple[IPv4Interface, ...]
    kind: str | None = None  # IFLA_INFO_KIND: "vxlan", "wireguard", "tun", ...; None if plain


@dataclass(frozen=True)
class Underlay:
    """The interface VXLAN packets leave by, and the local address they come from."""

    link: LinkInfo
    address: IPv4Address


@dataclass(frozen=True)
class VxlanSpec:
    """The overlay device as overlayd wants it.

    ``local`` and ``underlay_index`` are the underlay address and interface (VXLAN
    ``local`` and ``dev``); learning is always off since overlayd programs the FDB.
    """

    name: str
    vni: int
    port: int
    local: IPv4Address
    underlay_index: int
    mac: MacAddress
    mtu: int


class LinkAction(Enum):
    """What ``ensure_vxlan`` had to do."""

    UNCHANGED = "unchanged"
    CREATED = "created"
    UPDATED = "updated"
    RECREATED = "recreated"


@dataclass(frozen=True)
class EnsuredVxlan:
    """Result of ``ensure_vxlan``: the device now, and what was done to it.

    ``fixed`` names the attributes that had drifted (empty unless UPDATED/RECREATED).
    A RECREATED device lost every route, neighbour and FDB entry on it.
    """

    link: LinkInfo
    action: LinkAction
    fixed: tuple[str, ...] = ()


def _ethtool_value(ifname: str, cmd: int, data: int = 0) -> int:
    """Run a SIOCETHTOOL ``ethtool_value`` command on ``ifname``; returns ``data``."""
    value = ctypes.create_string_buffer(_ETHTOOL_VALUE.pack(cmd, data), _ETHTOOL_VALUE.size)
    ifreq = _IFREQ.pack(ifname.encode(), ctypes.addressof(value))
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            fcntl.ioctl(sock.fileno(), SIOCETHTOOL, ifreq)
    except OSError as exc:
        raise KernelError(f"ethtool command {cmd:#x} on {ifname} failed: {exc.strerror}") from exc
    return int(_ETHTOOL_VALUE.unpack(value.raw)[1])


def tx_checksum_offload(ifname: str) -> bool:
    """Whether TX checksum offload is on for ``ifname`` (``ethtool -k``: tx-checksumming)."""
    return bool(_ethtool_value(ifname, ETHTOOL_GTXCSUM))


def disable_tx_checksum_offload(ifname: str) -> None:
    """Turn TX checksum offload off on ``ifname``.

    With offloaded checksums, VXLAN traffic that crosses NAT arrives with bad checksums
    on some kernels and is dropped until retransmits give up (the "63-second delay"
    seen with flannel and Calico); flannel turns TX/RX checksum offload off on its
    VXLAN device (flannel PR #1282) and so do we. Only TX matters: RX offload only
    verifies checksums.
    """
    _ethtool_value(ifname, ETHTOOL_STXCSUM, 0)


class Links:
    """Link and address management over one pyroute2 ``IPRoute`` socket. Not thread-safe."""

    def __init__(self) -> None:
        try:
            self._ipr: Any = IPRoute(ext_ack=True)
        except OSError as exc:
            raise KernelError(f"cannot open rtnetlink socket: {exc.strerror}") from exc

    def close(self) -> None:
        self._ipr.close()

    def __enter__(self) -> Links:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _call(self, what: str, method: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return getattr(self._ipr, method)(*args, **kwargs)
        except NetlinkError as exc:
            raise KernelError(f"{what}: {exc.args[1] if len(exc.args) > 1 else exc}") from exc
        except OSError as exc:
            raise KernelError(f"{what}: {exc.strerror or exc}") from exc

    def _get_msg(self, link: str | int) -> Any | None:
        """The RTM_NEWLINK message for a name or index; None if there is no such link."""
        key = {"index": link} if isinstance(link, int) else {"ifname": link}
        try:
            return self._ipr.link("get", **key)[0]
        except NetlinkError as exc:
            if exc.code == errno.ENODEV:
                return None
            raise KernelError(f"cannot read link {link}: {exc.args[1]}") from exc

    def find(self, link: str | int) -> LinkInfo | None:
        """The interface with this name or index, or None."""
        msg = self._get_msg(link)
        return None if msg is None else self._info(msg)

    def get(self, link: str | int) -> LinkInfo:
        """The interface with this name or index; ``KernelError`` if there is none."""
        info = self.find(link)
        if info is None:
            raise KernelError(f"no network interface {link!r}")
        return info

    def _info(self, msg: Any) -> LinkInfo:
        index = int(msg["index"])
        addrs = self._call(
            f"cannot read addresses of link {index}", "addr", "dump",
            family=socket.AF_INET, index=index,
        )  # fmt: skip
        mac = msg.get("address")
        return LinkInfo(
            name=str(msg.get("ifname")),
            index=index,
            mtu=int(msg.get("mtu")),
            mac=MacAddress.parse(mac) if mac and len(mac) == 17 else None,
            up=bool(int(msg["flags"]) & IFF_UP),
            addresses=tuple(
                IPv4Interface((a.get("address"), int(a["prefixlen"])))
                for a in addrs
                if int(a["index"]) == index
            ),
            kind=msg.get(("linkinfo", "kind")),
        )

    def default_route_interface(self) -> LinkInfo:
        """The interface of the IPv4 default route in table main with the lowest metric."""
        routes = self._call(
            "cannot read routes", "route", "dump", family=socket.AF_INET, table=RT_TABLE_MAIN
        )
        best: tuple[int, int] | None = None
        for r in routes:
            oif = r.get("oif")
            if r["dst_len"] != 0 or not oif:
                continue
            candidate = (int(r.get("priority") or 0), int(oif))
            best = candidate if best is None or candidate < best else best
        if best is None:
            raise KernelError(
                "there is no IPv4 default route to pick the underlay interface from",
                hint="pass --iface with an interface name or address",
            )
        return self.get(best[1])

    def resolve_underlay(self, iface: str | None) -> Underlay:
        """The underlay for ``--iface``: an interface name, an IPv4 address, or None.

        None means the default-route interface. For a name, its first IPv4 address is
        used; for an address, the interface holding it.
        """
        if iface is None:
            link = self.default_route_interface()
            return Underlay(link, self._first_address(link))
        try:
            wanted = IPv4Address(iface)
        except ValueError:
            link = self.get(iface)
            return Underlay(link, self._first_address(link))
        addrs = self._call("cannot read addresses", "addr", "dump", family=socket.AF_INET)
        for a in addrs:
            if IPv4Address(a.get("address")) == wanted:
                return Underlay(self.get(int(a["index"])), wanted)
        raise KernelError(
            f"no interface has the address {wanted}",
            hint="pass --iface with an address configured on this host",
        )

    @staticmethod
    def _first_address(link: LinkInfo) -> IPv4Address:
        for addr in link.addresses:
            if not addr.ip.is_loopback and not addr.ip.is_link_local:
                return addr.ip
        raise KernelError(
            f"interface {link.name} has no usable IPv4 address",
            hint="pass --iface with an interface that has an IPv4 address",
        )

    def ensure_vxlan(self, spec: VxlanSpec) -> EnsuredVxlan:
        """Make the VXLAN device match ``spec``, up and with TX checksum offload off.

        Creates it if absent. Drifted local address, underlay device, learning, MAC and
        MTU are fixed in place; a different VNI or port cannot be changed by the kernel,
        so then the device is deleted and created again. A link of another kind with
        the same name is an error, never deleted.
        """
        msg = self._get_msg(spec.name)
        if msg is None:
            self._create(spec)
            return EnsuredVxlan(self._finish(spec), LinkAction.CREATED)
        kind = msg.get(("linkinfo", "kind"))
        if kind != "vxlan":
            raise KernelError(
                f"interface {spec.name} exists but is a {kind or 'plain'} device, not vxlan",
                hint=f"delete it ('ip link del {spec.name}') or choose another device name",
            )
        data = msg.get(("linkinfo", "data"))
        index = int(msg["index"])
        if data.get("vxlan_id") != spec.vni or data.get("vxlan_port") != spec.port:
            self._call(f"cannot delete {spec.name}", "link", "del", index=index)
            self._create(spec)
            fixed = tuple(
                name
                for name, ok in (
                    ("vni", data.get("vxlan_id") == spec.vni),
                    ("port", data.get("vxlan_port") == spec.port),
                )
                if not ok
            )
            return EnsuredVxlan(self._finish(spec), LinkAction.RECREATED, fixed)
        drift: dict[str, Any] = {}
        fixed_names: list[str] = []
        if data.get("vxlan_local") != str(spec.local):
            drift["vxlan_local"] = str(spec.local)
            fixed_names.append("local")
        if data.get("vxlan_link") != spec.underlay_index:
            drift["vxlan_link"] = spec.underlay_index
            fixed_names.append("underlay")
        if data.get("vxlan_learning") != 0:
            drift["vxlan_learning"] = 0
            fixed_names.append("learning")
        if drift:
            self._call(
                f"cannot update {spec.name}", "link", "set", index=index, kind="vxlan", **drift
            )
        link_set: dict[str, Any] = {}
        if MacAddress.parse(str(msg.get("address"))) != spec.mac:
            link_set["address"] = str(spec.mac)
            fixed_names.append("mac")
        if int(msg.get("mtu")) != spec.mtu:
            link_set["mtu"] = spec.mtu
            fixed_names.append("mtu")
        if link_set:
            self._call(f"cannot update {spec.name}", "link", "set", index=index, **link_set)
        link = self._finish(spec)
        action = LinkAction.UPDATED if fixed_names else LinkAction.UNCHANGED
        return EnsuredVxlan(link, action, tuple(fixed_names))

    def _create(self, spec: VxlanSpec) -> None:
        self._call(
            f"cannot create VXLAN device {spec.name}",
            "link",
            "add",
            ifname=spec.name,
            kind="vxlan",
            vxlan_id=spec.vni,
            vxlan_port=spec.port,
            vxlan_local=str(spec.local),
            vxlan_link=spec.underlay_index,
            vxlan_learning=0,
            address=str(spec.mac),
            mtu=spec.mtu,
        )

    def _finish(self, spec: VxlanSpec) -> LinkInfo:
        """Bring the device up and turn checksum offload off; both are idempotent."""
        link = self.set_up(self.get(spec.name))
        if tx_checksum_offload(spec.name):
            disable_tx_checksum_offload(spec.name)
        return link

    def set_up(self, link: LinkInfo, mtu: int | None = None) -> LinkInfo:
        """Bring ``link`` up and, when given, set its MTU; sends nothing if both already are."""
        change: dict[str, Any] = {} if link.up else {"state": "up"}
        if mtu is not None and mtu != link.mtu:
            change["mtu"] = mtu
        if not change:
            return link
        self._call(f"cannot set {link.name} up", "link", "set", index=link.index, **change)
        return self.get(link.index)

    def create_wireguard(self, name: str) -> bool:
        """Create a kernel WireGuard device; False when the kernel has no WireGuard support.

        The kernel answers EOPNOTSUPP for a link kind it does not know (module absent and
        not loadable); EEXIST and the rest are errors.
        """
        try:
            self._ipr.link("add", ifname=name, kind="wireguard")
        except NetlinkError as exc:
            if exc.code == errno.EOPNOTSUPP:
                return False
            raise KernelError(f"cannot create WireGuard device {name}: {exc.args[1]}") from exc
        except OSError as exc:
            raise KernelError(f"cannot create WireGuard device {name}: {exc.strerror}") from exc
        return True

    def delete(self, link: LinkInfo) -> None:
        """Delete ``link``; one already gone is not an error."""
        try:
            self._ipr.link("del", index=link.index)
        except NetlinkError as exc:
            if exc.code != errno.ENODEV:
                raise KernelError(f"cannot delete {link.name}: {exc.args[1]}") from exc

    def set_address(self, link: str | int, address: IPv4Interface) -> bool:
        """Make ``address`` the only IPv4 address of ``link``; True if anything changed.

        For the VXLAN device this is, like flannel, the network address of the node's
        subnet with prefix length 32 (e.g. 10.244.3.0/32): a /32 creates no subnet or
        broadcast route, so the peer routes alone decide where overlay traffic goes, and
        the address serves as source for host-to-overlay traffic. The new address is
        added before the old ones are removed, so there is no moment without one.
        """
        info = self.get(link)
        changed = False
        if address not in info.addresses:
            self._call(
                f"cannot add {address} to {info.name}", "addr", "add",
                index=info.index, address=str(address.ip), prefixlen=address.network.prefixlen,
            )  # fmt: skip
            changed = True
        for old in info.addresses:
            if old != address:
                self._call(
                    f"cannot remove {old} from {info.name}", "addr", "del",
                    index=info.index, address=str(old.ip), prefixlen=old.network.prefixlen,
                )  # fmt: skip
                changed = True
        return changed
