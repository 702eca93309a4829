"""Decoding the kernel's rtnetlink replies and notifications into ``rtnl_messages`` values.

Pure functions over bytes, no sockets: routes and neighbour/FDB entries, plus the
NLMSG_ERROR and NLMSG_DONE replies ``nlmsg`` decodes; every other kind and family is
skipped.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Network

from overlayd.dataplane.netlink.nlmsg import (
    NLM_F_REPLACE,
    NLMSG_DONE,
    NLMSG_ERROR,
    DecodeError,
    DoneMessage,
    ErrorMessage,
    Header,
    decode_done,
    decode_error,
    iter_messages,
    parse_attrs,
)
from overlayd.dataplane.netlink.rtnl_messages import (
    AF_BRIDGE,
    AF_INET,
    NDA_CACHEINFO,
    NDA_DST,
    NDA_LLADDR,
    NDMSG,
    RTA_DST,
    RTA_GATEWAY,
    RTA_OIF,
    RTA_PRIORITY,
    RTA_TABLE,
    RTM_DELNEIGH,
    RTM_DELROUTE,
    RTM_NEWNEIGH,
    RTM_NEWROUTE,
    RTMSG,
    Action,
    FdbMessage,
    NeighMessage,
    RouteMessage,
)
from overlayd.values.kernel_state import MacAddress

_U32 = struct.Struct("=I")
_CACHEINFO = struct.Struct("=IIII")  # nda_cacheinfo: confirmed, used, updated, refcnt
_USER_HZ = 100  # clock_t ticks per second in what the kernel reports to user space

Decoded = RouteMessage | NeighMessage | FdbMessage | ErrorMessage | DoneMessage


def _ipv4(raw: memoryview | None) -> IPv4Address | None:
    return IPv4Address(bytes(raw)) if raw is not None and len(raw) == 4 else None


def _mac(raw: memoryview | None) -> MacAddress | None:
    # bytes.hex(":") is the normalised form MacAddress wants, without its per-byte join.
    return MacAddress(raw.hex(":")) if raw is not None and len(raw) == 6 else None


def _u32(raw: memoryview | None, default: int) -> int:
    return int(_U32.unpack(raw)[0]) if raw is not None and len(raw) == 4 else default


def decode_route(action: Action, payload: memoryview, nlflags: int = 0) -> RouteMessage | None:
    """A RTM_NEWROUTE/RTM_DELROUTE payload; None for families other than AF_INET.

    ``nlflags`` are the netlink header flags, used to spot replace notifications.
    """
    if len(payload) < RTMSG.size:
        raise DecodeError("short rtmsg")
    family, dst_len, _src, _tos, table, proto, scope, rtype, flags = RTMSG.unpack_from(payload)
    if family != AF_INET:
        return None
    attrs = parse_attrs(payload, RTMSG.size)
    raw_dst = attrs.get(RTA_DST)
    # From an int: IPv4Network would otherwise re-parse an IPv4Address via its string.
    dst = int.from_bytes(raw_dst, "big") if raw_dst is not None and len(raw_dst) == 4 else 0
    return RouteMessage(
        action=action,
        dst=IPv4Network((dst, dst_len)),
        gateway=_ipv4(attrs.get(RTA_GATEWAY)),
        oif=_u32(attrs.get(RTA_OIF), 0),
        table=_u32(attrs.get(RTA_TABLE), table),
        protocol=proto,
        scope=scope,
        type=rtype,
        flags=flags,
        priority=_u32(attrs.get(RTA_PRIORITY), 0),
        replaced=action is Action.NEW and bool(nlflags & NLM_F_REPLACE),
    )


def decode_neigh(action: Action, payload: memoryview) -> NeighMessage | FdbMessage | None:
    """A RTM_NEWNEIGH/RTM_DELNEIGH payload: AF_INET neighbour or AF_BRIDGE FDB entry.

    None for other families, IPv4 neighbours without a destination, and FDB entries
    without a MAC.
    """
    if len(payload) < NDMSG.size:
        raise DecodeError("short ndmsg")
    family, _p1, _p2, ifindex, state, flags, _type = NDMSG.unpack_from(payload)
    if family not in (AF_INET, AF_BRIDGE):
        return None
    attrs = parse_attrs(payload, NDMSG.size)
    if family == AF_INET:
        ip = _ipv4(attrs.get(NDA_DST))
        if ip is None:
            return None
        return NeighMessage(action, ifindex, ip, _mac(attrs.get(NDA_LLADDR)), state, flags)
    mac = _mac(attrs.get(NDA_LLADDR))
    if mac is None:
        return None
    info = attrs.get(NDA_CACHEINFO)
    used = None
    if info is not None and len(info) >= _CACHEINFO.size:
        used = _CACHEINFO.unpack_from(info)[1] / _USER_HZ
    return FdbMessage(action, ifindex, mac, _ipv4(attrs.get(NDA_DST)), state, flags, used)


def decode_message(hdr: Header, payload: memoryview) -> Decoded | None:
    """Decode one message; None for kinds and families not decoded here."""
    mtype = hdr.type
    if mtype in (RTM_NEWROUTE, RTM_DELROUTE):
        action = Action.NEW if mtype == RTM_NEWROUTE else Action.DEL
        return decode_route(action, payload, hdr.flags)
    if mtype in (RTM_NEWNEIGH, RTM_DELNEIGH):
        return decode_neigh(Action.NEW if mtype == RTM_NEWNEIGH else Action.DEL, payload)
    if mtype == NLMSG_ERROR:
        return decode_error(hdr.seq, payload, hdr.flags)
    if mtype == NLMSG_DONE:
        return decode_done(hdr.seq, payload)
    return None


def decode(buf: bytes | bytearray | memoryview) -> Iterator[Decoded]:
    """Decode every message in a buffer; kinds not decoded here are skipped."""
    for hdr, payload in iter_messages(buf):
        msg = decode_message(hdr, payload)
        if msg is not None:
            yield msg
