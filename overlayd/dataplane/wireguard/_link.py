"""The few rtnetlink link operations the WireGuard drivers need, in the caller's namespace."""

from __future__ import annotations

import errno
import socket
import struct
from dataclasses import dataclass
from typing import Final

from overlayd.dataplane.wireguard import _nl
from overlayd.values.errors import WireGuardError

RTM_NEWLINK: Final = 16
RTM_DELLINK: Final = 17
RTM_GETLINK: Final = 18
IFLA_IFNAME: Final = 3
IFLA_MTU: Final = 4
IFLA_LINKINFO: Final = 18
IFLA_INFO_KIND: Final = 1
IFF_UP: Final = 0x1
_IFINFO = struct.Struct("=BxHiII")  # family, type, index, flags, change


@dataclass(frozen=True)
class LinkInfo:
    """What the drivers need to know about an existing link."""

    index: int
    up: bool
    mtu: int
    kind: str | None  # "wireguard", "tun", ...


def _ifinfo(index: int = 0, flags: int = 0, change: int = 0) -> bytes:
    return _IFINFO.pack(socket.AF_UNSPEC, 0, index, flags, change)


def encode_create_wireguard(ifname: str) -> bytes:
    """RTM_NEWLINK payload creating a kernel WireGuard device (``ip link add … type wireguard``)."""
    return (
        _ifinfo()
        + _nl.attr_str(IFLA_IFNAME, ifname)
        + _nl.nested(IFLA_LINKINFO, _nl.attr_str(IFLA_INFO_KIND, "wireguard"))
    )


def get_link(ifname: str) -> LinkInfo | None:
    """The link called ``ifname`` in this namespace, or None."""
    try:
        with _nl.NetlinkSocket(socket.NETLINK_ROUTE) as nl:
            replies = nl.request(
                RTM_GETLINK, _nl.NLM_F_REQUEST, _ifinfo() + _nl.attr_str(IFLA_IFNAME, ifname)
            )
    except OSError as exc:
        if exc.errno == errno.ENODEV:
            return None
        raise WireGuardError(f"cannot read link {ifname}: {exc.strerror}") from None
    for kind, body in replies:
        if kind != RTM_NEWLINK:
            continue
        _, _, index, flags, _ = _IFINFO.unpack_from(body)
        attrs = _nl.attr_map(body[_IFINFO.size :])
        info = _nl.attr_map(attrs.get(IFLA_LINKINFO, b""))
        link_kind = info[IFLA_INFO_KIND].rstrip(b"\0").decode() if IFLA_INFO_KIND in info else None
        mtu = _nl.u32(attrs[IFLA_MTU]) if IFLA_MTU in attrs else 0
        return LinkInfo(index, bool(flags & IFF_UP), mtu, link_kind)
    return None


def create_wireguard(ifname: str) -> bool:
    """Create a kernel WireGuard device; False when the kernel has no WireGuard support."""
    try:
        with _nl.NetlinkSocket(socket.NETLINK_ROUTE) as nl:
            nl.request(
                RTM_NEWLINK,
                _nl.NLM_F_REQUEST | _nl.NLM_F_ACK | _nl.NLM_F_CREATE | _nl.NLM_F_EXCL,
                encode_create_wireguard(ifname),
            )
    except OSError as exc:
        # the kernel answers EOPNOTSUPP for an unknown link kind (module absent and not
        # loadable); EEXIST and others are real errors
        if exc.errno == errno.EOPNOTSUPP:
            return False
        raise WireGuardError(f"cannot create WireGuard device {ifname}: {exc.strerror}") from None
    return True


def set_up(ifname: str, mtu: int | None) -> None:
    """Bring ``ifname`` up and set its MTU (when given and different)."""
    link = get_link(ifname)
    if link is None:
        raise WireGuardError(f"WireGuard device {ifname} vanished")
    if link.up and (mtu is None or mtu == link.mtu):
        return
    payload = _ifinfo(link.index, IFF_UP, IFF_UP)
    if mtu is not None:
        payload += _nl.attr_u32(IFLA_MTU, mtu)
    try:
        with _nl.NetlinkSocket(socket.NETLINK_ROUTE) as nl:
            nl.request(RTM_NEWLINK, _nl.NLM_F_REQUEST | _nl.NLM_F_ACK, payload)
    except OSError as exc:
        raise WireGuardError(f"cannot bring {ifname} up: {exc.strerror}") from None


def delete(ifname: str) -> None:
    """Delete ``ifname`` if it exists."""
    link = get_link(ifname)
    if link is None:
        return
    try:
        with _nl.NetlinkSocket(socket.NETLINK_ROUTE) as nl:
            nl.request(RTM_DELLINK, _nl.NLM_F_REQUEST | _nl.NLM_F_ACK, _ifinfo(link.index))
    except OSError as exc:
        if exc.errno != errno.ENODEV:
            raise WireGuardError(f"cannot delete {ifname}: {exc.strerror}") from None
