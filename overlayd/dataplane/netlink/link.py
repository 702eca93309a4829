"""Links and addresses: the VXLAN overlay device and the underlay interface.

Plain rtnetlink over a ``nlsock.Channel`` (the messages are ``link_codec``'s), called from
the data plane's netlink thread. Every netlink/OS error is translated into
``KernelError``. Works in the network namespace of the calling process.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from functools import partial
from ipaddress import IPv4Address, IPv4Interface
from types import TracebackType

from overlayd.dataplane.netlink import link_codec, rtnl_encode
from overlayd.dataplane.netlink.ethtool import disable_tx_checksum_offload, tx_checksum_offload
from overlayd.dataplane.netlink.link_codec import IFF_UP
from overlayd.dataplane.netlink.nlmsg import (
    NLMSG_ERROR,
    DecodeError,
    ErrorMessage,
    Header,
    decode_error,
    iter_messages,
)
from overlayd.dataplane.netlink.nlsock import (
    NETLINK_CAP_ACK,
    NETLINK_EXT_ACK,
    Channel,
    open_socket,
    setopt,
)
from overlayd.dataplane.netlink.rtnl_decode import decode_route
from overlayd.dataplane.netlink.rtnl_messages import (
    RT_TABLE_MAIN,
    RTM_NEWROUTE,
    Action,
    RouteMessage,
)
from overlayd.values.errors import KernelError
from overlayd.values.kernel_state import MacAddress


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


class Links:
    """Link and address management over one rtnetlink socket. Not thread-safe."""

    def __init__(self, timeout: float = 10.0) -> None:
        sock = open_socket(1 << 20, 1 << 16)
        setopt(sock, NETLINK_CAP_ACK)
        setopt(sock, NETLINK_EXT_ACK)
        self._ch = Channel(sock, timeout)

    def close(self) -> None:
        self._ch.close()

    def __enter__(self) -> Links:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _exchange(
        self, request: Callable[[int], bytes]
    ) -> tuple[ErrorMessage | None, link_codec.LinkMessage | None]:
        """Send one request; its error/ACK (None if answered with a message) and the
        decoded RTM_NEWLINK answer, if any."""
        seq = self._ch.next_seq()
        self._ch.send(request(seq))
        while True:
            n = self._ch.recv()
            try:
                for hdr, payload in iter_messages(memoryview(self._ch.buf)[:n]):
                    if hdr.seq != seq:
                        continue  # the answer to an earlier request that timed out
                    if hdr.type == NLMSG_ERROR:
                        return decode_error(hdr.seq, payload, hdr.flags), None
                    if hdr.type == link_codec.RTM_NEWLINK:
                        return None, link_codec.decode_link(payload)
            except DecodeError as exc:
                raise KernelError(f"undecodable netlink reply: {exc}") from exc

    def _call(self, what: str, request: Callable[[int], bytes], *, ok: int = 0) -> bool:
        """Send a change; False if the kernel answered with errno ``ok`` (when given)."""
        error, _ = self._exchange(request)
        if error is not None and error.error:
            if ok and error.error == ok:
                return False
            raise KernelError(f"{what}: {error.describe()}")
        return True

    def _get_msg(self, link: str | int) -> link_codec.LinkMessage | None:
        """The interface for a name or index; None if there is no such link."""
        error, msg = self._exchange(lambda seq: link_codec.encode_get_link(seq, link))
        if error is not None:
            if error.error == errno.ENODEV:
                return None
            raise KernelError(f"cannot read link {link}: {error.describe()}")
        if msg is None:
            raise KernelError(f"cannot read link {link}: no answer")
        return msg

    def _addresses(self) -> list[tuple[int, IPv4Interface]]:
        return self._ch.dump(link_codec.encode_addr_dump, _addr)

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

    def _info(self, msg: link_codec.LinkMessage) -> LinkInfo:
        return LinkInfo(
            name=msg.name,
            index=msg.index,
            mtu=msg.mtu,
            mac=msg.mac,
            up=bool(msg.flags & IFF_UP),
            addresses=tuple(a for index, a in self._addresses() if index == msg.index),
            kind=msg.kind,
        )

    def default_route_interface(self) -> LinkInfo:
        """The interface of the IPv4 default route in table main with the lowest metric."""
        routes = self._ch.dump(
            lambda seq: rtnl_encode.encode_route_dump(seq, 0, filtered=False), _route
        )
        best: tuple[int, int] | None = None
        for r in routes:
            if r.dst.prefixlen != 0 or not r.oif or r.table != RT_TABLE_MAIN:
                continue
            candidate = (r.priority, r.oif)
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
        for index, address in self._addresses():
            if address.ip == wanted:
                return Underlay(self.get(index), wanted)
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
        if msg.kind != "vxlan":
            raise KernelError(
                f"interface {spec.name} exists but is a {msg.kind or 'plain'} device, not vxlan",
                hint=f"delete it ('ip link del {spec.name}') or choose another device name",
            )
        data = msg.vxlan or link_codec.VxlanAttrs(None, None, None, None, None)
        if data.vni != spec.vni or data.port != spec.port:
            self._call(
                f"cannot delete {spec.name}",
                lambda seq: link_codec.encode_del_link(seq, msg.index),
            )
            self._create(spec)
            fixed = tuple(
                name
                for name, same in (("vni", data.vni == spec.vni), ("port", data.port == spec.port))
                if not same
            )
            return EnsuredVxlan(self._finish(spec), LinkAction.RECREATED, fixed)
        drift = link_codec.VxlanChange(
            local=None if data.local == spec.local else spec.local,
            link=None if data.link == spec.underlay_index else spec.underlay_index,
            learning=None if data.learning is False else False,
        )
        mac = None if msg.mac == spec.mac else spec.mac
        mtu = None if msg.mtu == spec.mtu else spec.mtu
        fixed_names = [
            name
            for name, changed in (
                ("local", drift.local),
                ("underlay", drift.link),
                ("learning", drift.learning),
                ("mac", mac),
                ("mtu", mtu),
            )
            if changed is not None
        ]
        if drift != link_codec.VxlanChange():
            self._call(
                f"cannot update {spec.name}",
                lambda seq: link_codec.encode_set_link(seq, msg.index, vxlan=drift),
            )
        if mac is not None or mtu is not None:
            self._call(
                f"cannot update {spec.name}",
                lambda seq: link_codec.encode_set_link(seq, msg.index, mac=mac, mtu=mtu),
            )
        link = self._finish(spec)
        action = LinkAction.UPDATED if fixed_names else LinkAction.UNCHANGED
        return EnsuredVxlan(link, action, tuple(fixed_names))

    def _create(self, spec: VxlanSpec) -> None:
        vxlan = link_codec.VxlanChange(
            vni=spec.vni,
            port=spec.port,
            local=spec.local,
            link=spec.underlay_index,
            learning=False,
        )
        self._call(
            f"cannot create VXLAN device {spec.name}",
            lambda seq: link_codec.encode_new_link(
                seq, spec.name, "vxlan", vxlan=vxlan, mac=spec.mac, mtu=spec.mtu
            ),
        )

    def _finish(self, spec: VxlanSpec) -> LinkInfo:
        """Bring the device up and turn checksum offload off; both are idempotent."""
        link = self.set_up(self.get(spec.name))
        if tx_checksum_offload(spec.name):
            disable_tx_checksum_offload(spec.name)
        return link

    def set_up(self, link: LinkInfo, mtu: int | None = None) -> LinkInfo:
        """Bring ``link`` up and, when given, set its MTU; sends nothing if both already are."""
        new_mtu = mtu if mtu is not None and mtu != link.mtu else None
        if link.up and new_mtu is None:
            return link
        self._call(
            f"cannot set {link.name} up",
            lambda seq: link_codec.encode_set_link(seq, link.index, up=True, mtu=new_mtu),
        )
        return self.get(link.index)

    def create_wireguard(self, name: str) -> bool:
        """Create a kernel WireGuard device; False when the kernel has no WireGuard support.

        The kernel answers EOPNOTSUPP for a link kind it does not know (module absent and
        not loadable); EEXIST and the rest are errors.
        """
        return self._call(
            f"cannot create WireGuard device {name}",
            lambda seq: link_codec.encode_new_link(seq, name, "wireguard"),
            ok=errno.EOPNOTSUPP,
        )

    def delete(self, link: LinkInfo) -> None:
        """Delete ``link``; one already gone is not an error."""
        self._call(
            f"cannot delete {link.name}",
            lambda seq: link_codec.encode_del_link(seq, link.index),
            ok=errno.ENODEV,
        )

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
                f"cannot add {address} to {info.name}",
                lambda seq: link_codec.encode_addr(seq, info.index, address, add=True),
            )
            changed = True
        for old in info.addresses:
            if old != address:
                self._call(
                    f"cannot remove {old} from {info.name}",
                    partial(link_codec.encode_addr, index=info.index, address=old, add=False),
                )
                changed = True
        return changed


def _addr(hdr: Header, payload: memoryview) -> tuple[int, IPv4Interface] | None:
    return link_codec.decode_addr(payload) if hdr.type == link_codec.RTM_NEWADDR else None


def _route(hdr: Header, payload: memoryview) -> RouteMessage | None:
    return decode_route(Action.NEW, payload) if hdr.type == RTM_NEWROUTE else None
