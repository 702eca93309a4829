"""The link and address codec (``link_codec``), checked against pyroute2's independent
``ifinfmsg``/``ifaddrmsg`` parser and encoder (pyroute2 is a test dependency only).

No sockets, no root: our requests are parsed back by pyroute2, and replies built by
pyroute2 (with attributes we never read) are decoded by ours; truncated and hostile
buffers raise ``DecodeError``, never anything else.
"""

from __future__ import annotations

import contextlib
from ipaddress import IPv4Address, IPv4Interface
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

from overlayd.dataplane.netlink import link_codec
from overlayd.dataplane.netlink.link_codec import VxlanChange
from overlayd.dataplane.netlink.nlmsg import (
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_REQUEST,
    NLMSG_HDR,
    DecodeError,
    iter_messages,
)
from overlayd.values.kernel_state import MacAddress

MAC = MacAddress("02:42:00:00:00:01")


def _parsed(cls: Any, data: bytes) -> Any:
    msg = cls(data)
    msg.decode()
    assert msg["header"]["length"] == len(data) and len(data) % 4 == 0
    return msg


def _payload(data: bytes) -> memoryview:
    ((_, payload),) = list(iter_messages(data))
    return payload


def _built(cls: Any, mtype: int, fields: dict[str, Any], attrs: list[Any]) -> bytes:
    msg = cls()
    for key, value in fields.items():
        msg[key] = value
    msg["attrs"] = attrs
    msg["header"]["type"] = mtype
    msg.encode()
    return bytes(msg.data)


def test_create_vxlan_request() -> None:
    change = VxlanChange(vni=7, port=8472, local=IPv4Address("10.0.0.1"), link=3, learning=False)
    data = link_codec.encode_new_link(9, "vx0", "vxlan", vxlan=change, mac=MAC, mtu=1450)
    msg = _parsed(ifinfmsg, data)
    assert msg["header"]["type"] == link_codec.RTM_NEWLINK
    assert msg["header"]["sequence_number"] == 9
    assert msg["header"]["flags"] == NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | 0x200
    assert (msg.get("ifname"), msg.get("mtu"), msg.get("address")) == ("vx0", 1450, str(MAC))
    assert msg.get(("linkinfo", "kind")) == "vxlan"
    data_attrs = msg.get(("linkinfo", "data"))
    assert data_attrs.get("vxlan_id") == 7
    assert data_attrs.get("vxlan_port") == 8472
    assert data_attrs.get("vxlan_local") == "10.0.0.1"
    assert data_attrs.get("vxlan_link") == 3
    assert data_attrs.get("vxlan_learning") == 0


def test_set_link_sends_only_what_changes() -> None:
    up = _parsed(ifinfmsg, link_codec.encode_set_link(1, 4, up=True, mtu=1400))
    assert (up["index"], up["flags"], up["change"]) == (4, 1, 1)
    assert up.get("mtu") == 1400 and up.get("address") is None and up.get("linkinfo") is None
    mac = _parsed(ifinfmsg, link_codec.encode_set_link(2, 4, mac=MAC))
    assert (mac["flags"], mac["change"]) == (0, 0)  # "not up" must not mean "down"
    assert mac.get("address") == str(MAC) and mac.get("mtu") is None
    drift = _parsed(ifinfmsg, link_codec.encode_set_link(3, 4, vxlan=VxlanChange(learning=False)))
    data_attrs = drift.get(("linkinfo", "data"))
    assert data_attrs.get("vxlan_learning") == 0 and data_attrs.get("vxlan_id") is None


def test_get_and_delete_requests() -> None:
    by_name = _parsed(ifinfmsg, link_codec.encode_get_link(5, "eth0"))
    assert (by_name["index"], by_name.get("ifname")) == (0, "eth0")
    by_index = _parsed(ifinfmsg, link_codec.encode_get_link(6, 12))
    assert (by_index["index"], by_index.get("ifname")) == (12, None)
    gone = _parsed(ifinfmsg, link_codec.encode_del_link(7, 12))
    assert (gone["header"]["type"], gone["index"]) == (link_codec.RTM_DELLINK, 12)


def test_address_requests() -> None:
    address = IPv4Interface("10.244.3.0/32")
    add = _parsed(ifaddrmsg, link_codec.encode_addr(8, 4, address, add=True))
    assert add["header"]["type"] == link_codec.RTM_NEWADDR
    assert (add["index"], add["prefixlen"], add["family"]) == (4, 32, 2)
    assert add.get("local") == add.get("address") == "10.244.3.0"
    remove = _parsed(ifaddrmsg, link_codec.encode_addr(9, 4, address, add=False))
    assert remove["header"]["type"] == link_codec.RTM_DELADDR
    dump = _parsed(ifaddrmsg, link_codec.encode_addr_dump(10))
    assert dump["family"] == 2 and dump["header"]["flags"] & 0x300 == 0x300


def test_decodes_a_vxlan_link_with_foreign_attributes() -> None:
    vxlan = [
        ("IFLA_VXLAN_ID", 7),
        ("IFLA_VXLAN_TTL", 64),
        ("IFLA_VXLAN_PORT", 8472),
        ("IFLA_VXLAN_LOCAL", "10.0.0.1"),
        ("IFLA_VXLAN_LINK", 3),
        ("IFLA_VXLAN_LEARNING", 1),
    ]
    linkinfo = {"attrs": [("IFLA_INFO_KIND", "vxlan"), ("IFLA_INFO_DATA", {"attrs": vxlan})]}
    data = _built(
        ifinfmsg,
        link_codec.RTM_NEWLINK,
        {"index": 5, "flags": 0x1043},
        [
            ("IFLA_IFNAME", "vx0"),
            ("IFLA_TXQLEN", 1000),
            ("IFLA_MTU", 1450),
            ("IFLA_ADDRESS", str(MAC)),
            ("IFLA_LINKINFO", linkinfo),
        ],
    )
    msg = link_codec.decode_link(_payload(data))
    assert (msg.index, msg.name, msg.mtu, msg.mac, msg.kind) == (5, "vx0", 1450, MAC, "vxlan")
    assert msg.flags & link_codec.IFF_UP
    assert msg.vxlan == link_codec.VxlanAttrs(7, 8472, IPv4Address("10.0.0.1"), 3, True)


def test_decodes_a_plain_link_without_mac_or_kind() -> None:
    data = _built(ifinfmsg, link_codec.RTM_NEWLINK, {"index": 9}, [("IFLA_IFNAME", "wg0")])
    msg = link_codec.decode_link(_payload(data))
    assert (msg.name, msg.mac, msg.kind, msg.vxlan, msg.mtu) == ("wg0", None, None, None, 0)


def test_decodes_addresses() -> None:
    attrs = [("IFA_ADDRESS", "10.1.0.2"), ("IFA_LOCAL", "10.1.0.1"), ("IFA_LABEL", "tun0")]
    ptp = _built(
        ifaddrmsg, link_codec.RTM_NEWADDR, {"family": 2, "prefixlen": 32, "index": 3}, attrs
    )
    # on a point-to-point link IFA_ADDRESS is the far end: the interface's own is IFA_LOCAL
    assert link_codec.decode_addr(_payload(ptp)) == (3, IPv4Interface("10.1.0.1/32"))
    plain = _built(
        ifaddrmsg,
        link_codec.RTM_NEWADDR,
        {"family": 2, "prefixlen": 24, "index": 2},
        [("IFA_ADDRESS", "192.0.2.5")],
    )
    assert link_codec.decode_addr(_payload(plain)) == (2, IPv4Interface("192.0.2.5/24"))
    v6 = _built(
        ifaddrmsg,
        link_codec.RTM_NEWADDR,
        {"family": 10, "prefixlen": 64, "index": 2},
        [("IFA_ADDRESS", "fe80::1")],
    )
    assert link_codec.decode_addr(_payload(v6)) is None


@pytest.mark.parametrize("decode", [link_codec.decode_link, link_codec.decode_addr])
def test_short_headers_are_decode_errors(decode: Any) -> None:
    with pytest.raises(DecodeError):
        decode(memoryview(b"\0" * 7))


@given(st.binary(max_size=200))
def test_hostile_link_payloads_raise_only_decode_error(raw: bytes) -> None:
    for decode in (link_codec.decode_link, link_codec.decode_addr):
        with contextlib.suppress(DecodeError):
            decode(memoryview(raw))


def test_a_bad_nested_attribute_is_a_decode_error() -> None:
    # IFLA_LINKINFO whose nested attribute claims 200 bytes in a 4-byte payload
    nested = link_codec.attr(link_codec.IFLA_LINKINFO, b"\xc8\x00\x01\x00")
    payload = link_codec.IFINFOMSG.pack(0, 0, 0, 1, 0, 0) + nested
    data = NLMSG_HDR.pack(NLMSG_HDR.size + len(payload), 16, 0, 1, 0) + payload
    with pytest.raises(DecodeError):
        link_codec.decode_link(_payload(data))
