"""rtnetlink link and address messages: the requests ``link.Links`` sends and the replies
it reads, to and from bytes.

Pure functions over bytes, no sockets (the framing is ``nlmsg``'s). Only what overlayd
uses: a link's name, index, MTU, MAC, flags and kind, a VXLAN device's attributes, and
IPv4 addresses. Layouts (native byte order, rtnetlink(7), ``linux/if_link.h``):

* ``ifinfomsg``  family u8, pad u8, type u16, index s32, flags u32, change u32 (16 bytes)
* ``ifaddrmsg``  family u8, prefixlen u8, flags u8, scope u8, index u32        (8 bytes)

``IFLA_LINKINFO`` nests ``IFLA_INFO_KIND`` (a string) and ``IFLA_INFO_DATA`` (for VXLAN the
``IFLA_VXLAN_*`` attributes; the port is big-endian, as on the wire).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface
from typing import Final

from overlayd.dataplane.netlink.nlmsg import (
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_REQUEST,
    NLMSG_HDR,
    RTATTR,
    DecodeError,
    align4,
    parse_attrs,
)
from overlayd.values.kernel_state import MacAddress

RTM_NEWLINK: Final = 16
RTM_DELLINK: Final = 17
RTM_GETLINK: Final = 18
RTM_NEWADDR: Final = 20
RTM_DELADDR: Final = 21
RTM_GETADDR: Final = 22

NLM_F_EXCL: Final = 0x200
AF_UNSPEC: Final = 0
AF_INET: Final = 2
IFF_UP: Final = 0x1

IFLA_ADDRESS: Final = 1
IFLA_IFNAME: Final = 3
IFLA_MTU: Final = 4
IFLA_LINKINFO: Final = 18
IFLA_INFO_KIND: Final = 1
IFLA_INFO_DATA: Final = 2
IFLA_VXLAN_ID: Final = 1
IFLA_VXLAN_LINK: Final = 3
IFLA_VXLAN_LOCAL: Final = 4
IFLA_VXLAN_LEARNING: Final = 7
IFLA_VXLAN_PORT: Final = 15
IFA_ADDRESS: Final = 1
IFA_LOCAL: Final = 2

IFINFOMSG: Final = struct.Struct("=BBHiII")
IFADDRMSG: Final = struct.Struct("=BBBBI")
_U32 = struct.Struct("=I")
_BE16 = struct.Struct("!H")

_REQUEST = NLM_F_REQUEST | NLM_F_ACK
_CREATE = _REQUEST | NLM_F_CREATE | NLM_F_EXCL


@dataclass(frozen=True)
class VxlanAttrs:
    """A VXLAN device's attributes as the kernel reports them (None: not reported)."""

    vni: int | None
    port: int | None
    local: IPv4Address | None
    link: int | None
    learning: bool | None


@dataclass(frozen=True)
class LinkMessage:
    """An RTM_NEWLINK reply: one interface."""

    index: int
    name: str
    mtu: int
    mac: MacAddress | None
    flags: int
    kind: str | None
    vxlan: VxlanAttrs | None


@dataclass(frozen=True)
class VxlanChange:
    """The VXLAN attributes to send (None: left out, so unchanged)."""

    vni: int | None = None
    port: int | None = None
    local: IPv4Address | None = None
    link: int | None = None
    learning: bool | None = None


# -- encoding ----------------------------------------------------------------------------


def attr(atype: int, payload: bytes) -> bytes:
    """One attribute (TLV), padded to 4 bytes."""
    length = RTATTR.size + len(payload)
    return RTATTR.pack(length, atype) + payload + b"\0" * (align4(length) - length)


def _message(mtype: int, flags: int, seq: int, body: bytes) -> bytes:
    return NLMSG_HDR.pack(NLMSG_HDR.size + len(body), mtype, flags, seq, 0) + body


def _vxlan_data(change: VxlanChange) -> bytes:
    parts = (
        (IFLA_VXLAN_ID, None if change.vni is None else _U32.pack(change.vni)),
        (IFLA_VXLAN_LINK, None if change.link is None else _U32.pack(change.link)),
        (IFLA_VXLAN_LOCAL, None if change.local is None else change.local.packed),
        (IFLA_VXLAN_LEARNING, None if change.learning is None else bytes([change.learning])),
        (IFLA_VXLAN_PORT, None if change.port is None else _BE16.pack(change.port)),
    )
    return b"".join(attr(t, p) for t, p in parts if p is not None)


def _linkinfo(kind: str, data: bytes = b"") -> bytes:
    inner = attr(IFLA_INFO_KIND, kind.encode())
    return attr(IFLA_LINKINFO, inner + (attr(IFLA_INFO_DATA, data) if data else b""))


def encode_get_link(seq: int, link: str | int) -> bytes:
    """RTM_GETLINK for one interface, by index or by name."""
    index, attrs = (link, b"") if isinstance(link, int) else (0, attr(IFLA_IFNAME, _name(link)))
    body = IFINFOMSG.pack(AF_UNSPEC, 0, 0, index, 0, 0) + attrs
    return _message(RTM_GETLINK, NLM_F_REQUEST, seq, body)


def encode_new_link(
    seq: int,
    name: str,
    kind: str,
    *,
    vxlan: VxlanChange | None = None,
    mac: MacAddress | None = None,
    mtu: int | None = None,
) -> bytes:
    """RTM_NEWLINK creating ``name`` of ``kind`` (EEXIST if it exists)."""
    attrs = attr(IFLA_IFNAME, _name(name))
    attrs += _optional(mac, mtu)
    attrs += _linkinfo(kind, b"" if vxlan is None else _vxlan_data(vxlan))
    return _message(RTM_NEWLINK, _CREATE, seq, IFINFOMSG.pack(AF_UNSPEC, 0, 0, 0, 0, 0) + attrs)


def encode_set_link(
    seq: int,
    index: int,
    *,
    up: bool = False,
    mac: MacAddress | None = None,
    mtu: int | None = None,
    vxlan: VxlanChange | None = None,
) -> bytes:
    """RTM_NEWLINK changing interface ``index``: up (when ``up``), MAC, MTU, VXLAN data."""
    flags = IFF_UP if up else 0
    attrs = _optional(mac, mtu) + (b"" if vxlan is None else _linkinfo("vxlan", _vxlan_data(vxlan)))
    body = IFINFOMSG.pack(AF_UNSPEC, 0, 0, index, flags, flags) + attrs
    return _message(RTM_NEWLINK, _REQUEST, seq, body)


def encode_del_link(seq: int, index: int) -> bytes:
    """RTM_DELLINK for interface ``index``."""
    body = IFINFOMSG.pack(AF_UNSPEC, 0, 0, index, 0, 0)
    return _message(RTM_DELLINK, _REQUEST, seq, body)


def encode_addr_dump(seq: int) -> bytes:
    """RTM_GETADDR dump of every IPv4 address."""
    return _message(
        RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, seq, IFADDRMSG.pack(AF_INET, 0, 0, 0, 0)
    )


def encode_addr(seq: int, index: int, address: IPv4Interface, *, add: bool) -> bytes:
    """RTM_NEWADDR (EEXIST if present) or RTM_DELADDR of ``address`` on ``index``."""
    head = IFADDRMSG.pack(AF_INET, address.network.prefixlen, 0, 0, index)
    body = head + attr(IFA_LOCAL, address.ip.packed) + attr(IFA_ADDRESS, address.ip.packed)
    return _message(RTM_NEWADDR if add else RTM_DELADDR, _CREATE if add else _REQUEST, seq, body)


def _name(name: str) -> bytes:
    return name.encode() + b"\0"


def _optional(mac: MacAddress | None, mtu: int | None) -> bytes:
    return (b"" if mac is None else attr(IFLA_ADDRESS, mac.packed)) + (
        b"" if mtu is None else attr(IFLA_MTU, _U32.pack(mtu))
    )


# -- decoding ----------------------------------------------------------------------------


def _u32(raw: memoryview | None) -> int | None:
    return int(_U32.unpack(raw)[0]) if raw is not None and len(raw) == 4 else None


def _text(raw: memoryview | None) -> str | None:
    return None if raw is None else bytes(raw).split(b"\0", 1)[0].decode("utf-8", "replace")


def decode_link(payload: memoryview) -> LinkMessage:
    """An RTM_NEWLINK payload."""
    if len(payload) < IFINFOMSG.size:
        raise DecodeError("short ifinfomsg")
    _family, _pad, _type, index, flags, _change = IFINFOMSG.unpack_from(payload)
    attrs = parse_attrs(payload, IFINFOMSG.size)
    raw_mac = attrs.get(IFLA_ADDRESS)
    kind: str | None = None
    vxlan: VxlanAttrs | None = None
    info = attrs.get(IFLA_LINKINFO)
    if info is not None:
        nested = parse_attrs(info, 0)
        kind = _text(nested.get(IFLA_INFO_KIND))
        data = nested.get(IFLA_INFO_DATA)
        if kind == "vxlan" and data is not None:
            vxlan = _decode_vxlan(parse_attrs(data, 0))
    return LinkMessage(
        index=index,
        name=_text(attrs.get(IFLA_IFNAME)) or "",
        mtu=_u32(attrs.get(IFLA_MTU)) or 0,
        mac=MacAddress.from_bytes(bytes(raw_mac))
        if raw_mac is not None and len(raw_mac) == 6
        else None,
        flags=flags,
        kind=kind,
        vxlan=vxlan,
    )


def _decode_vxlan(attrs: dict[int, memoryview]) -> VxlanAttrs:
    local = attrs.get(IFLA_VXLAN_LOCAL)
    port = attrs.get(IFLA_VXLAN_PORT)
    learning = attrs.get(IFLA_VXLAN_LEARNING)
    return VxlanAttrs(
        vni=_u32(attrs.get(IFLA_VXLAN_ID)),
        port=int(_BE16.unpack(port)[0]) if port is not None and len(port) == 2 else None,
        local=IPv4Address(bytes(local)) if local is not None and len(local) == 4 else None,
        link=_u32(attrs.get(IFLA_VXLAN_LINK)),
        learning=bool(learning[0]) if learning is not None and len(learning) == 1 else None,
    )


def decode_addr(payload: memoryview) -> tuple[int, IPv4Interface] | None:
    """An RTM_NEWADDR payload: (interface index, address); None for non-IPv4 ones.

    The local address (IFA_LOCAL) is the interface's own; IFA_ADDRESS is the peer's on a
    point-to-point link, so it is used only when there is no IFA_LOCAL.
    """
    if len(payload) < IFADDRMSG.size:
        raise DecodeError("short ifaddrmsg")
    family, prefixlen, _flags, _scope, index = IFADDRMSG.unpack_from(payload)
    if family != AF_INET or prefixlen > 32:
        return None
    attrs = parse_attrs(payload, IFADDRMSG.size)
    raw = attrs.get(IFA_LOCAL, attrs.get(IFA_ADDRESS))
    if raw is None or len(raw) != 4:
        return None
    return index, IPv4Interface((IPv4Address(bytes(raw)), prefixlen))
