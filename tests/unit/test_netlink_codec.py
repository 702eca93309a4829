"""The rtnetlink encoder and decoder (``rtnl_encode``, ``rtnl_decode``, ``nlmsg``), checked
against pyroute2's independent parser and encoder.

No sockets, no root: encoded bytes are parsed back with pyroute2's message classes,
and messages built by pyroute2 (with attributes the codec never writes) are decoded.
"""

from __future__ import annotations

import errno
import struct
from ipaddress import IPv4Address, IPv4Network
from typing import Any

import pytest
from pyroute2.netlink.rtnl.ndmsg import ndmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from overlayd.dataplane.netlink import nlmsg, rtnl_decode, rtnl_encode, rtnl_messages
from overlayd.dataplane.netlink.monitor import KernelEvent
from overlayd.dataplane.netlink.nlmsg import DecodeError, DoneMessage, ErrorMessage
from overlayd.dataplane.netlink.rtnl import ApplyResult, EntryError, Op
from overlayd.dataplane.netlink.rtnl_messages import (
    Action,
    FdbMessage,
    NeighMessage,
    RouteMessage,
)
from overlayd.values.errors import KernelError
from overlayd.values.kernel_state import FdbEntry, KernelState, MacAddress, NeighEntry, RouteEntry

IFINDEX = 7
ROUTE = RouteEntry(IPv4Network("10.244.5.0/24"), IPv4Address("10.244.5.0"))
NEIGH = NeighEntry(IPv4Address("10.244.5.0"), MacAddress("0a:1b:2c:3d:4e:5f"))
FDB = FdbEntry(MacAddress("0a:1b:2c:3d:4e:5f"), IPv4Address("192.0.2.17"))


def _pyroute2(cls: Any, data: bytes) -> Any:
    msg = cls(data)
    msg.decode()
    return msg


def _only(buf: bytes) -> rtnl_decode.Decoded:
    decoded = list(rtnl_decode.decode(buf))
    assert len(decoded) == 1
    return decoded[0]


# --- encoding, checked with pyroute2's parser ------------------------------------------


def test_route_set_fields() -> None:
    data = rtnl_encode.encode_route_set(41, IFINDEX, ROUTE)
    msg = _pyroute2(rtmsg, data)
    hdr = msg["header"]
    assert hdr["length"] == len(data) and len(data) % 4 == 0
    assert hdr["type"] == rtnl_messages.RTM_NEWROUTE
    assert hdr["sequence_number"] == 41
    assert hdr["flags"] == (
        nlmsg.NLM_F_REQUEST | nlmsg.NLM_F_ACK | nlmsg.NLM_F_CREATE | nlmsg.NLM_F_REPLACE
    )
    assert (msg["family"], msg["dst_len"], msg["table"]) == (2, 24, 254)
    assert (msg["proto"], msg["scope"], msg["type"]) == (rtnl_messages.OVERLAYD_RTPROT, 0, 1)
    assert msg["flags"] == rtnl_messages.RTNH_F_ONLINK
    assert msg.get("dst") == "10.244.5.0"
    assert msg.get("gateway") == "10.244.5.0"
    assert msg.get("oif") == IFINDEX


def test_route_protocol_constant_is_157() -> None:
    assert rtnl_messages.OVERLAYD_RTPROT == 157


def test_route_del_matches_on_protocol_and_device_not_gateway() -> None:
    data = rtnl_encode.encode_route_del(3, IFINDEX, ROUTE)
    msg = _pyroute2(rtmsg, data)
    assert msg["header"]["type"] == rtnl_messages.RTM_DELROUTE
    assert msg["header"]["flags"] == nlmsg.NLM_F_REQUEST | nlmsg.NLM_F_ACK
    assert msg["proto"] == rtnl_messages.OVERLAYD_RTPROT
    assert msg["scope"] == rtnl_messages.RT_SCOPE_NOWHERE
    assert msg.get("dst") == "10.244.5.0" and msg["dst_len"] == 24
    assert msg.get("oif") == IFINDEX
    assert msg.get("gateway") is None


def test_neigh_set_fields() -> None:
    data = rtnl_encode.encode_neigh_set(9, IFINDEX, NEIGH)
    msg = _pyroute2(ndmsg, data)
    assert msg["header"]["type"] == rtnl_messages.RTM_NEWNEIGH
    assert msg["header"]["length"] == len(data) and len(data) % 4 == 0
    assert (msg["family"], msg["ifindex"], msg["state"]) == (
        2,
        IFINDEX,
        rtnl_messages.NUD_PERMANENT,
    )
    assert msg.get("dst") == "10.244.5.0"
    assert msg.get("lladdr") == "0a:1b:2c:3d:4e:5f"


def test_fdb_set_fields() -> None:
    data = rtnl_encode.encode_fdb_set(9, IFINDEX, FDB)
    msg = _pyroute2(ndmsg, data)
    assert msg["header"]["flags"] & nlmsg.NLM_F_REPLACE
    assert (msg["family"], msg["ifindex"]) == (rtnl_messages.AF_BRIDGE, IFINDEX)
    assert (msg["state"], msg["flags"]) == (rtnl_messages.NUD_PERMANENT, rtnl_messages.NTF_SELF)
    assert msg.get("lladdr") == "0a:1b:2c:3d:4e:5f"
    assert msg.get("dst") == "192.0.2.17"


def test_neigh_and_fdb_deletes() -> None:
    neigh = _pyroute2(ndmsg, rtnl_encode.encode_neigh_del(1, IFINDEX, NEIGH))
    assert neigh["header"]["type"] == rtnl_messages.RTM_DELNEIGH
    assert (neigh["family"], neigh["ifindex"], neigh.get("dst")) == (2, IFINDEX, "10.244.5.0")
    fdb = _pyroute2(ndmsg, rtnl_encode.encode_fdb_del(2, IFINDEX, FDB))
    assert (fdb["family"], fdb["flags"]) == (rtnl_messages.AF_BRIDGE, rtnl_messages.NTF_SELF)
    assert fdb.get("lladdr") == "0a:1b:2c:3d:4e:5f"
    # Without a remote the driver drops the whole MAC, whatever its current remote.
    assert fdb.get("dst") is None


def test_mac_attribute_is_padded_to_four_bytes() -> None:
    data = rtnl_encode.encode_neigh_set(1, IFINDEX, NEIGH)
    # nlmsghdr 16 + ndmsg 12 + NDA_DST 8, then NDA_LLADDR: len 10, 6 bytes, 2 pad bytes.
    alen, atype = struct.unpack_from("=HH", data, 36)
    assert (alen, atype) == (10, rtnl_messages.NDA_LLADDR)
    assert data[40:46] == bytes.fromhex("0a1b2c3d4e5f")
    assert data[46:48] == b"\0\0"
    assert len(data) == 48
    # In the FDB message the padded MAC comes first and NDA_DST must still be found.
    fdb = rtnl_encode.encode_fdb_set(1, IFINDEX, FDB)
    assert struct.unpack_from("=HH", fdb, 40) == (8, rtnl_messages.NDA_DST)


def test_dump_requests() -> None:
    route = _pyroute2(rtmsg, rtnl_encode.encode_route_dump(5, IFINDEX, filtered=True))
    assert route["header"]["flags"] == nlmsg.NLM_F_REQUEST | nlmsg.NLM_F_DUMP
    assert (route["table"], route["proto"], route.get("oif")) == (254, 157, IFINDEX)
    plain = _pyroute2(rtmsg, rtnl_encode.encode_route_dump(5, IFINDEX, filtered=False))
    assert (plain["table"], plain["proto"], plain.get("oif")) == (0, 0, None)
    fdb = _pyroute2(
        ndmsg, rtnl_encode.encode_neigh_dump(6, rtnl_messages.AF_BRIDGE, IFINDEX, filtered=True)
    )
    assert fdb["family"] == rtnl_messages.AF_BRIDGE
    assert fdb["ifindex"] == 0  # strict neighbour dumps refuse a header ifindex
    assert fdb.get("NDA_IFINDEX") == IFINDEX


# --- decoding ----------------------------------------------------------------------------


def test_round_trip_of_every_set_message() -> None:
    route = _only(rtnl_encode.encode_route_set(1, IFINDEX, ROUTE))
    neigh = _only(rtnl_encode.encode_neigh_set(2, IFINDEX, NEIGH))
    fdb = _only(rtnl_encode.encode_fdb_set(3, IFINDEX, FDB))
    assert isinstance(route, RouteMessage) and route.entry == ROUTE
    assert isinstance(neigh, NeighMessage) and neigh.entry == NEIGH
    assert isinstance(fdb, FdbMessage) and fdb.entry == FDB
    for msg in (route, neigh, fdb):
        assert msg.action is Action.NEW
        assert msg.owned_on(IFINDEX)
        assert not msg.owned_on(IFINDEX + 1)


def test_round_trip_of_delete_messages() -> None:
    route = _only(rtnl_encode.encode_route_del(1, IFINDEX, ROUTE))
    fdb = _only(rtnl_encode.encode_fdb_del(2, IFINDEX, FDB))
    assert isinstance(route, RouteMessage) and route.action is Action.DEL
    assert route.dst == ROUTE.dst and route.gateway is None and route.entry is None
    assert isinstance(fdb, FdbMessage) and fdb.mac == FDB.mac and fdb.dst is None


def test_multi_message_buffer_in_order() -> None:
    routes = [
        RouteEntry(IPv4Network(f"10.{i}.0.0/16"), IPv4Address(f"10.{i}.0.0")) for i in range(5)
    ]
    buf = b"".join(
        [rtnl_encode.encode_neigh_set(100, IFINDEX, NEIGH)]
        + [rtnl_encode.encode_route_set(101 + i, IFINDEX, r) for i, r in enumerate(routes)]
        + [rtnl_encode.encode_fdb_set(200, IFINDEX, FDB)]
    )
    decoded = list(rtnl_decode.decode(buf))
    assert [type(m) for m in decoded] == [NeighMessage] + [RouteMessage] * 5 + [FdbMessage]
    assert [m.entry for m in decoded[1:6] if isinstance(m, RouteMessage)] == routes


def test_decodes_pyroute2_route_with_foreign_attributes() -> None:
    msg = rtmsg()
    msg["header"]["type"] = rtnl_messages.RTM_NEWROUTE
    msg["header"]["flags"] = nlmsg.NLM_F_MULTI
    msg["family"], msg["dst_len"], msg["table"] = 2, 24, 254
    msg["proto"], msg["type"], msg["flags"] = 157, 1, rtnl_messages.RTNH_F_ONLINK
    msg["attrs"] = [
        ("RTA_TABLE", 254),
        ("RTA_PREF", 0),  # one-byte attribute: the next one starts after 3 pad bytes
        ("RTA_DST", "10.9.8.0"),
        ("RTA_PRIORITY", 20),
        ("RTA_GATEWAY", "10.9.8.0"),
        ("RTA_OIF", IFINDEX),
    ]
    msg.encode()
    decoded = _only(bytes(msg.data))
    assert decoded == RouteMessage(
        action=Action.NEW,
        dst=IPv4Network("10.9.8.0/24"),
        gateway=IPv4Address("10.9.8.0"),
        oif=IFINDEX,
        table=254,
        protocol=157,
        scope=0,
        type=1,
        flags=rtnl_messages.RTNH_F_ONLINK,
        priority=20,
    )


def test_route_table_attribute_wins_over_header() -> None:
    msg = rtmsg()
    msg["header"]["type"] = rtnl_messages.RTM_NEWROUTE
    msg["family"], msg["dst_len"], msg["table"] = 2, 24, 252  # RT_TABLE_COMPAT
    msg["attrs"] = [("RTA_TABLE", 1000), ("RTA_DST", "10.1.0.0"), ("RTA_OIF", IFINDEX)]
    msg.encode()
    decoded = _only(bytes(msg.data))
    assert isinstance(decoded, RouteMessage)
    assert decoded.table == 1000
    assert not decoded.owned_on(IFINDEX)


def test_default_route_without_dst_and_gateway() -> None:
    msg = rtmsg()
    msg["header"]["type"] = rtnl_messages.RTM_NEWROUTE
    msg["family"], msg["dst_len"], msg["table"], msg["proto"] = 2, 0, 254, 157
    msg["attrs"] = [("RTA_OIF", IFINDEX)]
    msg.encode()
    decoded = _only(bytes(msg.data))
    assert isinstance(decoded, RouteMessage)
    assert decoded.dst == IPv4Network("0.0.0.0/0") and decoded.entry is None
    assert not decoded.owned_on(IFINDEX)


def test_replace_notification_is_flagged() -> None:
    data = bytearray(rtnl_encode.encode_route_set(1, IFINDEX, ROUTE))
    assert isinstance(_only(bytes(data)), RouteMessage)
    struct.pack_into("=H", data, 6, nlmsg.NLM_F_REPLACE)
    decoded = _only(bytes(data))
    assert isinstance(decoded, RouteMessage) and decoded.replaced


def test_ipv6_messages_are_skipped() -> None:
    msg = rtmsg()
    msg["header"]["type"] = rtnl_messages.RTM_NEWROUTE
    msg["family"], msg["dst_len"], msg["table"] = 10, 64, 254
    msg["attrs"] = [("RTA_DST", "fd00::"), ("RTA_OIF", IFINDEX)]
    msg.encode()
    neigh = ndmsg()
    neigh["header"]["type"] = rtnl_messages.RTM_NEWNEIGH
    neigh["family"], neigh["ifindex"], neigh["state"] = 10, IFINDEX, rtnl_messages.NUD_PERMANENT
    neigh["attrs"] = [("NDA_DST", "fd00::1"), ("NDA_LLADDR", "02:00:00:00:00:01")]
    neigh.encode()
    buf = bytes(msg.data) + bytes(neigh.data) + rtnl_encode.encode_fdb_set(1, IFINDEX, FDB)
    assert [type(m) for m in rtnl_decode.decode(buf)] == [FdbMessage]


def test_ownership_rules_for_neighbours_and_fdb() -> None:
    def neigh(state: int, lladdr: str | None) -> ndmsg:
        msg = ndmsg()
        msg["header"]["type"] = rtnl_messages.RTM_NEWNEIGH
        msg["family"], msg["ifindex"], msg["state"] = 2, IFINDEX, state
        msg["attrs"] = [("NDA_DST", "10.0.0.9")] + ([("NDA_LLADDR", lladdr)] if lladdr else [])
        msg.encode()
        return msg

    permanent = _only(bytes(neigh(rtnl_messages.NUD_PERMANENT, "02:00:00:00:00:09").data))
    reachable = _only(bytes(neigh(0x02, "02:00:00:00:00:09").data))
    incomplete = _only(bytes(neigh(0x01, None).data))
    assert isinstance(permanent, NeighMessage) and permanent.owned_on(IFINDEX)
    assert isinstance(reachable, NeighMessage) and not reachable.owned_on(IFINDEX)
    assert isinstance(incomplete, NeighMessage) and incomplete.entry is None
    assert not incomplete.owned_on(IFINDEX)

    # A device's own address in its FDB: NTF_SELF and permanent, but no remote.
    local = ndmsg()
    local["header"]["type"] = rtnl_messages.RTM_NEWNEIGH
    local["family"], local["ifindex"] = rtnl_messages.AF_BRIDGE, IFINDEX
    local["state"], local["flags"] = rtnl_messages.NUD_PERMANENT, rtnl_messages.NTF_SELF
    local["attrs"] = [("NDA_LLADDR", "33:33:00:00:00:01")]
    local.encode()
    decoded = _only(bytes(local.data))
    assert isinstance(decoded, FdbMessage) and decoded.dst is None
    assert not decoded.owned_on(IFINDEX)


def _nlmsg(mtype: int, flags: int, seq: int, payload: bytes) -> bytes:
    data = nlmsg.NLMSG_HDR.pack(16 + len(payload), mtype, flags, seq, 0) + payload
    return data + b"\0" * (nlmsg.align4(len(data)) - len(data))


def _tlv(atype: int, value: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(value), atype) + value
    return raw + b"\0" * (nlmsg.align4(len(raw)) - len(raw))


def test_ack_and_fast_path() -> None:
    request = rtnl_encode.encode_neigh_set(77, IFINDEX, NEIGH)
    ack = _nlmsg(nlmsg.NLMSG_ERROR, nlmsg.NLM_F_CAPPED, 77, struct.pack("=i", 0) + request[:16])
    assert _only(ack) == ErrorMessage(77, 0)
    assert nlmsg.decode_ack(ack, len(ack)) == ErrorMessage(77, 0)
    failed = _nlmsg(
        nlmsg.NLMSG_ERROR, nlmsg.NLM_F_CAPPED, 77, struct.pack("=i", -errno.EINVAL) + request[:16]
    )
    assert nlmsg.decode_ack(failed, len(failed)) is None  # only successes take the fast path
    assert nlmsg.decode_ack(ack + ack, 2 * len(ack)) is None


def test_error_with_capped_request_and_extended_ack_text() -> None:
    request = rtnl_encode.encode_route_set(12, IFINDEX, ROUTE)
    payload = (
        struct.pack("=i", -errno.ENETUNREACH)
        + request[:16]
        + _tlv(nlmsg.NLMSGERR_ATTR_MSG, b"Nexthop has invalid gateway\0")
    )
    flags = nlmsg.NLM_F_CAPPED | nlmsg.NLM_F_ACK_TLVS
    msg = _only(_nlmsg(nlmsg.NLMSG_ERROR, flags, 12, payload))
    assert msg == ErrorMessage(12, errno.ENETUNREACH, "Nexthop has invalid gateway")
    assert isinstance(msg, ErrorMessage)
    assert "Network is unreachable" in msg.describe()
    assert "invalid gateway" in msg.describe()


def test_error_with_whole_request_echoed() -> None:
    request = rtnl_encode.encode_neigh_set(13, IFINDEX, NEIGH)
    payload = (
        struct.pack("=i", -errno.ENODEV) + request + _tlv(nlmsg.NLMSGERR_ATTR_MSG, b"no dev\0")
    )
    msg = _only(_nlmsg(nlmsg.NLMSG_ERROR, nlmsg.NLM_F_ACK_TLVS, 999, payload))
    # The sequence number comes from the echoed request.
    assert msg == ErrorMessage(13, errno.ENODEV, "no dev")


def test_done_with_and_without_error() -> None:
    ok = _nlmsg(nlmsg.NLMSG_DONE, nlmsg.NLM_F_MULTI, 4, struct.pack("=i", 0))
    bad = _nlmsg(nlmsg.NLMSG_DONE, nlmsg.NLM_F_MULTI, 5, struct.pack("=i", -errno.EINTR))
    assert list(rtnl_decode.decode(ok + bad)) == [DoneMessage(4, 0), DoneMessage(5, errno.EINTR)]


@pytest.mark.parametrize(
    "mangle",
    [
        lambda b: b[:-4],  # buffer shorter than the header's length
        lambda b: struct.pack("=I", 8) + b[4:],  # length shorter than a header
        lambda b: b[:36] + struct.pack("=H", 200) + b[38:],  # attribute overrunning the message
        lambda b: b[:36] + struct.pack("=H", 2) + b[38:],  # attribute shorter than its header
    ],
)
def test_malformed_buffers_raise(mangle: Any) -> None:
    data = rtnl_encode.encode_neigh_set(1, IFINDEX, NEIGH)
    with pytest.raises(DecodeError):
        list(rtnl_decode.decode(mangle(data)))


def test_unknown_message_types_are_skipped() -> None:
    noop = _nlmsg(nlmsg.NLMSG_NOOP, 0, 1, b"")
    link = _nlmsg(16, 0, 2, b"\0" * 16)  # RTM_NEWLINK
    assert list(rtnl_decode.decode(noop + link + rtnl_encode.encode_fdb_set(3, IFINDEX, FDB))) == [
        FdbMessage(
            Action.NEW,
            IFINDEX,
            FDB.mac,
            FDB.dst,
            rtnl_messages.NUD_PERMANENT,
            rtnl_messages.NTF_SELF,
        )
    ]


# --- folding events into a picture of the kernel ------------------------------------------


def _route_msg(action: Action, *, protocol: int = 157, replaced: bool = False) -> RouteMessage:
    return RouteMessage(
        action, ROUTE.dst, ROUTE.via, IFINDEX, 254, protocol, 0, 1, 4, 0, replaced=replaced
    )


def test_event_folding() -> None:
    picture = KernelState()
    new = KernelEvent(_route_msg(Action.NEW), owned=True)
    assert new.apply_to(picture) and picture.routes == {ROUTE.dst: ROUTE}
    assert not new.apply_to(picture)  # nothing new
    # Somebody else's route with the same destination going away does not touch ours.
    foreign_del = KernelEvent(_route_msg(Action.DEL, protocol=4), owned=False)
    assert not foreign_del.apply_to(picture) and ROUTE.dst in picture.routes
    # Another writer replacing our route (no DEL is sent for ours) removes it.
    replacing = KernelEvent(_route_msg(Action.NEW, protocol=4, replaced=True), owned=False)
    assert replacing.apply_to(picture) and picture.routes == {}
    new.apply_to(picture)
    assert KernelEvent(_route_msg(Action.DEL), owned=True).apply_to(picture)
    assert picture.routes == {}

    neigh = NeighMessage(Action.NEW, IFINDEX, NEIGH.ip, NEIGH.mac, rtnl_messages.NUD_PERMANENT, 0)
    assert KernelEvent(neigh, owned=True).apply_to(picture)
    # The entry turned non-permanent by hand: ours is gone.
    stale = NeighMessage(Action.NEW, IFINDEX, NEIGH.ip, NEIGH.mac, 0x04, 0)
    assert KernelEvent(stale, owned=False).apply_to(picture) and picture.neighs == {}

    fdb = FdbMessage(
        Action.NEW, IFINDEX, FDB.mac, FDB.dst, rtnl_messages.NUD_PERMANENT, rtnl_messages.NTF_SELF
    )
    moved = FdbMessage(
        Action.NEW, IFINDEX, FDB.mac, IPv4Address("192.0.2.99"), rtnl_messages.NUD_PERMANENT, 2
    )
    KernelEvent(fdb, owned=True).apply_to(picture)
    assert KernelEvent(moved, owned=True).apply_to(picture)
    assert picture.fdbs[FDB.mac].dst == IPv4Address("192.0.2.99")
    # A DEL for the old remote no longer matches the picture.
    assert not KernelEvent(
        FdbMessage(Action.DEL, IFINDEX, FDB.mac, FDB.dst, rtnl_messages.NUD_PERMANENT, 2),
        owned=True,
    ).apply_to(picture)


def test_apply_result_raises_with_entry_and_reason() -> None:
    ApplyResult(3).raise_for_errors()  # nothing failed: does not raise
    failed = ApplyResult(
        2, (EntryError(Op.SET, ROUTE, errno.ENETUNREACH, "Network is unreachable"),)
    )
    with pytest.raises(KernelError, match=r"1 of 3 .*10\.244\.5\.0/24.*unreachable"):
        failed.raise_for_errors()


def test_fdb_cache_info_says_how_long_ago_the_entry_was_used() -> None:
    msg = ndmsg()
    msg["header"]["type"] = rtnl_messages.RTM_NEWNEIGH
    msg["family"], msg["ifindex"] = rtnl_messages.AF_BRIDGE, IFINDEX
    msg["state"], msg["flags"] = rtnl_messages.NUD_PERMANENT, rtnl_messages.NTF_SELF
    cache = {"ndm_confirmed": 0, "ndm_used": 250, "ndm_updated": 900, "ndm_refcnt": 0}
    msg["attrs"] = [
        ("NDA_DST", "192.0.2.17"),
        ("NDA_LLADDR", "0a:1b:2c:3d:4e:5f"),
        ("NDA_CACHEINFO", cache),
    ]
    msg.encode()
    decoded = _only(bytes(msg.data))
    assert isinstance(decoded, FdbMessage) and decoded.entry == FDB
    assert decoded.used == 2.5  # clock_t: 100 per second
    # the age is no part of the entry's identity: notifications still compare equal
    assert decoded == FdbMessage(
        Action.NEW, IFINDEX, FDB.mac, FDB.dst, decoded.state, decoded.flags
    )


def test_fdb_without_cache_info_has_no_age() -> None:
    decoded = _only(rtnl_encode.encode_fdb_set(1, IFINDEX, FDB))
    assert isinstance(decoded, FdbMessage) and decoded.used is None
