"""Kernel WireGuard generic-netlink messages, checked byte by byte against the layout of
include/uapi/linux/wireguard.h (attribute numbers, flags, struct sockaddr_in, nesting), and
what ``KernelWireGuard`` sends for a read and an apply, through a recording ``GenlChannel``
(no root, no WireGuard module)."""

from __future__ import annotations

import errno
import struct
from collections.abc import Iterable, Iterator, Sequence
from ipaddress import IPv4Address, IPv4Network

import pytest

from overlayd.dataplane.netlink.link import Links
from overlayd.dataplane.wireguard import genl, kernel
from overlayd.dataplane.wireguard.device_link import DeviceLink
from overlayd.values.errors import WireGuardError
from overlayd.values.keys import PrivateKey, PublicKey
from overlayd.values.wireguard import Endpoint, PeerChanges, PresharedKey, WgPeerConfig

NESTED = 0x8000
K1 = PublicKey(b"\x11" * 32)
K2 = PublicKey(b"\x22" * 32)
PSK = PresharedKey(b"\x44" * 32)
PRIV = PrivateKey(bytes(range(1, 33)))


def nla(kind: int, payload: bytes) -> bytes:
    """An attribute written out by hand: u16 len, u16 type, payload, pad to 4."""
    raw = struct.pack("=HH", 4 + len(payload), kind) + payload
    return raw + b"\0" * (-len(raw) % 4)


def test_header_constants_match_uapi_header() -> None:
    # enum wg_cmd, wgdevice_attribute, wgpeer_attribute, wgallowedip_attribute, flags
    assert (kernel.WG_CMD_GET_DEVICE, kernel.WG_CMD_SET_DEVICE) == (0, 1)
    assert kernel.WG_GENL_NAME == "wireguard" and kernel.WG_GENL_VERSION == 1
    assert (kernel.WGDEVICE_A_IFNAME, kernel.WGDEVICE_A_PRIVATE_KEY) == (2, 3)
    assert (kernel.WGDEVICE_A_LISTEN_PORT, kernel.WGDEVICE_A_FWMARK) == (6, 7)
    assert kernel.WGDEVICE_A_PEERS == 8
    assert (kernel.WGPEER_A_PUBLIC_KEY, kernel.WGPEER_A_PRESHARED_KEY) == (1, 2)
    assert (kernel.WGPEER_A_FLAGS, kernel.WGPEER_A_ENDPOINT) == (3, 4)
    assert kernel.WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL == 5
    assert kernel.WGPEER_A_LAST_HANDSHAKE_TIME == 6
    assert (kernel.WGPEER_A_RX_BYTES, kernel.WGPEER_A_TX_BYTES) == (7, 8)
    assert kernel.WGPEER_A_ALLOWEDIPS == 9
    assert (kernel.WGPEER_F_REMOVE_ME, kernel.WGPEER_F_REPLACE_ALLOWEDIPS) == (1, 2)
    assert kernel.WGPEER_F_UPDATE_ONLY == 4
    assert (kernel.WGALLOWEDIP_A_FAMILY, kernel.WGALLOWEDIP_A_IPADDR) == (1, 2)
    assert kernel.WGALLOWEDIP_A_CIDR_MASK == 3


def test_sockaddr_in() -> None:
    raw = kernel.encode_sockaddr_in(Endpoint(IPv4Address("192.0.2.7"), 51820))
    # sa_family_t (host order) = AF_INET, port big-endian, address, 8 bytes of zero
    assert raw == struct.pack("=H", 2) + bytes([0xCA, 0x6C, 192, 0, 2, 7]) + bytes(8)
    assert len(raw) == 16


def test_remove_peer() -> None:
    assert kernel.encode_peer_remove(K1) == nla(NESTED, nla(1, K1.raw) + nla(3, b"\1\0\0\0"))


def test_add_peer_full() -> None:
    peer = WgPeerConfig(
        K1,
        Endpoint(IPv4Address("192.0.2.7"), 51820),
        (IPv4Network("10.244.1.0/24"), IPv4Network("10.244.0.1/32")),
        25,
        PSK,
    )
    endpoint = peer.endpoint
    assert endpoint is not None
    allowed = [
        nla(NESTED, nla(1, b"\2\0") + nla(2, bytes([10, 244, 0, 1])) + nla(3, b"\x20")),
        nla(NESTED, nla(1, b"\2\0") + nla(2, bytes([10, 244, 1, 0])) + nla(3, b"\x18")),
    ]
    expected = nla(
        NESTED,
        nla(1, K1.raw)
        + nla(3, struct.pack("=I", 2))  # REPLACE_ALLOWEDIPS, no UPDATE_ONLY: may create
        + nla(2, PSK.raw)
        + nla(4, kernel.encode_sockaddr_in(endpoint))
        + nla(5, struct.pack("=H", 25))
        + nla(9 | NESTED, b"".join(allowed)),
    )
    assert kernel.encode_peer_set(peer, update_only=False) == expected


def test_update_peer_without_endpoint_clears_psk() -> None:
    raw = kernel.encode_peer_set(WgPeerConfig(K2), update_only=True)
    expected = nla(
        NESTED,
        nla(1, K2.raw)
        + nla(3, struct.pack("=I", 2 | 4))  # REPLACE_ALLOWEDIPS | UPDATE_ONLY
        + nla(2, bytes(32))  # zero pre-shared key = none
        + nla(5, b"\0\0")
        + nla(9 | NESTED, b""),  # empty list: with REPLACE_ALLOWEDIPS, removes them all
    )
    assert raw == expected


def test_set_device_message() -> None:
    raw = kernel.encode_set_device(
        "ovwg12345678", private_key=PRIV, listen_port=51820, fwmark=0x51, peers=[b"PEER"]
    )
    expected = (
        bytes([1, 1, 0, 0])  # genlmsghdr: cmd SET_DEVICE, version 1
        + nla(2, b"ovwg12345678\0")
        + nla(3, PRIV.raw)
        + nla(6, struct.pack("=H", 51820))
        + nla(7, struct.pack("=I", 0x51))
        + nla(8 | NESTED, b"PEER")
    )
    assert raw == expected
    # no WGDEVICE_A_FLAGS (REPLACE_PEERS) ever, and no peers list when there are none
    assert kernel.encode_set_device("wg0") == bytes([1, 1, 0, 0]) + nla(2, b"wg0\0")


def test_set_messages_are_chunked_and_ordered() -> None:
    many = tuple(WgPeerConfig(PublicKey(bytes([i]) * 32)) for i in range(1, 101))
    changes = PeerChanges(add=many[50:], update=many[1:50], remove=(many[0].public_key,))
    messages = kernel.encode_set_messages("wg0", changes)
    assert len(messages) == 2  # 100 peers, 64 per message
    first = kernel.encode_peer_entries(changes)[:64]
    assert messages[0] == kernel.encode_set_device("wg0", peers=first)
    # removal first, then updates, then additions
    assert first[0] == kernel.encode_peer_remove(many[0].public_key)
    assert first[1] == kernel.encode_peer_set(many[1], update_only=True)


def test_get_and_family_requests() -> None:
    assert kernel.encode_get_device("wg0") == bytes([0, 1, 0, 0]) + nla(2, b"wg0\0")
    assert genl.encode_get_family("wireguard") == bytes([3, 1, 0, 0]) + nla(2, b"wireguard\0")


def kernel_peer(key: PublicKey, *parts: bytes) -> bytes:
    return nla(NESTED, nla(1, key.raw) + b"".join(parts))


def test_decode_dump_merges_split_peers() -> None:
    """A dump as the kernel sends it: device attrs first, a peer's allowed IPs continued
    in the next message under the same public key."""
    sockaddr = kernel.encode_sockaddr_in(Endpoint(IPv4Address("198.51.100.3"), 40000))
    ip1 = nla(NESTED, nla(1, b"\2\0") + nla(2, bytes([10, 244, 1, 0])) + nla(3, b"\x18"))
    ip2 = nla(NESTED, nla(1, b"\2\0") + nla(2, bytes([10, 244, 0, 1])) + nla(3, b"\x20"))
    ip6 = nla(NESTED, nla(1, b"\x0a\0") + nla(2, bytes(16)) + nla(3, b"\0"))
    first = (
        bytes([0, 1, 0, 0])
        + nla(1, struct.pack("=I", 5))
        + nla(2, b"wg0\0")
        + nla(4, PRIV.public_key().raw)
        + nla(6, struct.pack("=H", 51820))
        + nla(7, struct.pack("=I", 0))
        + nla(
            8 | NESTED,
            kernel_peer(
                K1,
                nla(2, PSK.raw),
                nla(4, sockaddr),
                nla(5, struct.pack("=H", 25)),
                nla(6, struct.pack("=qq", 1700000000, 250000000)),
                nla(7, struct.pack("=Q", 2000)),
                nla(8, struct.pack("=Q", 1000)),
                nla(10, struct.pack("=I", 1)),
                nla(9 | NESTED, ip1),
            ),
        )
    )
    second = (
        bytes([0, 1, 0, 0])
        + nla(1, struct.pack("=I", 5))
        + nla(2, b"wg0\0")
        + nla(
            8 | NESTED,
            kernel_peer(K1, nla(9 | NESTED, ip2 + ip6))
            + kernel_peer(K2, nla(2, bytes(32)), nla(6, bytes(16)), nla(9 | NESTED, b"")),
        )
    )
    state = kernel.decode_device([first, second])
    assert state.public_key == PRIV.public_key()
    assert (state.listen_port, state.fwmark) == (51820, 0)
    p1 = state.peers[K1]
    assert p1.config == WgPeerConfig(
        K1,
        Endpoint(IPv4Address("198.51.100.3"), 40000),
        (IPv4Network("10.244.0.1/32"), IPv4Network("10.244.1.0/24")),
        25,
        PSK,
    )
    assert p1.last_handshake == pytest.approx(1700000000.25)
    assert (p1.rx_bytes, p1.tx_bytes) == (2000, 1000)
    assert p1.foreign_allowed_ips == ("::/0",)
    p2 = state.peers[K2]
    assert p2.config == WgPeerConfig(K2)
    assert p2.last_handshake is None


def test_encoded_peer_decodes_to_the_same_config() -> None:
    peer = WgPeerConfig(
        K1, Endpoint(IPv4Address("192.0.2.7"), 51820), (IPv4Network("10.244.1.0/24"),), 5, PSK
    )
    payload = kernel.encode_set_device(
        "wg0", peers=[kernel.encode_peer_set(peer, update_only=False)]
    )
    assert kernel.decode_device([payload]).peers[K1].config == peer


def test_decode_malformed() -> None:
    with pytest.raises(WireGuardError, match="malformed"):
        kernel.decode_device([bytes([0, 1, 0, 0]) + struct.pack("=HH", 40, 2) + b"x"])


class RecordingChannel:
    """A ``GenlChannel`` that answers dumps with ``device`` and records every request."""

    def __init__(self, *device_messages: bytes) -> None:
        self.device = list(device_messages)
        self.dumps: list[bytes] = []
        self.sent: list[bytes] = []
        self.error: OSError | None = None

    def dump(self, payload: bytes) -> Sequence[bytes]:
        self.dumps.append(payload)
        if self.error is not None:
            raise self.error
        return self.device

    def send(self, payloads: Iterable[bytes]) -> None:
        if self.error is not None:
            raise self.error
        self.sent.extend(payloads)


@pytest.fixture
def link() -> Iterator[DeviceLink]:
    """A link handle for ``wg0``; ``read`` and ``apply`` never touch it."""
    with Links() as links:
        yield DeviceLink(links, "wg0")


def device_dump(*peers: bytes) -> bytes:
    """A GET_DEVICE reply for ``wg0`` carrying ``peers``."""
    return bytes([0, 1, 0, 0]) + nla(2, b"wg0\0") + nla(8 | NESTED, b"".join(peers))


def allowed(net: str) -> bytes:
    n = IPv4Network(net)
    return nla(
        NESTED, nla(1, b"\2\0") + nla(2, n.network_address.packed) + nla(3, bytes([n.prefixlen]))
    )


def test_apply_sends_removal_update_and_addition_in_one_message(link: DeviceLink) -> None:
    k3 = PublicKey(b"\x33" * 32)
    # the device has K1 (allowed 10.244.1.0/24) and K2; wanted: K1 with another prefix, K3
    channel = RecordingChannel(
        device_dump(
            kernel_peer(K1, nla(9 | NESTED, allowed("10.244.1.0/24"))),
            kernel_peer(K2, nla(9 | NESTED, allowed("10.244.2.0/24"))),
        )
    )
    driver = kernel.KernelWireGuard(link, channel)
    wanted = [
        WgPeerConfig(K1, None, (IPv4Network("10.244.9.0/24"),)),
        WgPeerConfig(k3, Endpoint(IPv4Address("192.0.2.7"), 51820), (), 25),
    ]
    changes = driver.apply(wanted)
    assert changes == PeerChanges(add=(wanted[1],), update=(wanted[0],), remove=(K2,))
    assert channel.dumps == [bytes([0, 1, 0, 0]) + nla(2, b"wg0\0")]
    sockaddr = struct.pack("=H", 2) + bytes([0xCA, 0x6C, 192, 0, 2, 7]) + bytes(8)
    assert channel.sent == [
        bytes([1, 1, 0, 0])  # SET_DEVICE, no device attributes, no REPLACE_PEERS
        + nla(2, b"wg0\0")
        + nla(
            8 | NESTED,
            nla(NESTED, nla(1, K2.raw) + nla(3, struct.pack("=I", 1)))  # REMOVE_ME
            + nla(
                NESTED,
                nla(1, K1.raw)
                + nla(3, struct.pack("=I", 2 | 4))  # REPLACE_ALLOWEDIPS | UPDATE_ONLY
                + nla(2, bytes(32))
                + nla(5, b"\0\0")
                + nla(9 | NESTED, allowed("10.244.9.0/24")),
            )
            + nla(
                NESTED,
                nla(1, k3.raw)
                + nla(3, struct.pack("=I", 2))  # REPLACE_ALLOWEDIPS: may create
                + nla(2, bytes(32))
                + nla(4, sockaddr)
                + nla(5, struct.pack("=H", 25))
                + nla(9 | NESTED, b""),
            ),
        )
    ]


def test_apply_without_changes_or_deletes_sends_nothing(link: DeviceLink) -> None:
    channel = RecordingChannel(device_dump(kernel_peer(K1, nla(5, b"\0\0"))))
    driver = kernel.KernelWireGuard(link, channel)
    assert not driver.apply([WgPeerConfig(K1)])
    assert not driver.apply([], allow_delete=False)  # K1 stays: nothing is sent
    assert channel.sent == []


def test_apply_of_many_peers_is_chunked(link: DeviceLink) -> None:
    channel = RecordingChannel(device_dump())
    driver = kernel.KernelWireGuard(link, channel)
    wanted = [WgPeerConfig(PublicKey(struct.pack("=I", i) * 8)) for i in range(1, 131)]
    assert len(driver.apply(wanted).add) == 130
    assert len(channel.sent) == 3  # 64 + 64 + 2
    peers = [list(genl.iter_attrs(genl.attr_map(memoryview(m), 4)[8])) for m in channel.sent]
    assert [len(p) for p in peers] == [64, 64, 2]


def test_channel_errors_become_wireguard_errors(link: DeviceLink) -> None:
    channel = RecordingChannel(device_dump())
    driver = kernel.KernelWireGuard(link, channel)
    channel.error = OSError(errno.ENODEV, "No such device")
    with pytest.raises(WireGuardError, match="cannot read wg0: No such device"):
        driver.read()


def test_set_errors_become_wireguard_errors(link: DeviceLink) -> None:
    class Refusing(RecordingChannel):
        def send(self, payloads: Iterable[bytes]) -> None:
            raise OSError(errno.EINVAL, "Invalid argument")

    driver = kernel.KernelWireGuard(link, Refusing(device_dump()))
    with pytest.raises(WireGuardError, match="cannot set peers on wg0: Invalid argument"):
        driver.apply([WgPeerConfig(K1)])


def test_generic_netlink_socket_against_the_kernel_controller() -> None:
    """The real channel, without root: the controller family lists itself in a dump."""
    ctrl = genl.GenericNetlink("nlctrl")
    families = ctrl.dump(genl.GENL_HDR.pack(genl.CTRL_CMD_GETFAMILY, 1, 0))
    names = {
        bytes(genl.attr_map(f, genl.GENL_HDR.size)[genl.CTRL_ATTR_FAMILY_NAME]) for f in families
    }
    assert b"nlctrl\0" in names


def test_kernel_driver_without_the_device_raises_wireguard_error(link: DeviceLink) -> None:
    # no WireGuard module here: the family is unknown (ENOENT); with it, wg0 is (ENODEV)
    driver = kernel.KernelWireGuard(link, genl.GenericNetlink(kernel.WG_GENL_NAME))
    with pytest.raises(WireGuardError, match="cannot read wg0"):
        driver.read()


def test_a_restarted_peer_is_removed_then_created() -> None:
    """Issue 12: the restart's removal comes before, its creation (no UPDATE_ONLY) after."""
    other, peer = (WgPeerConfig(PublicKey(bytes([i]) * 32)) for i in (1, 2))
    entries = kernel.encode_peer_entries(PeerChanges(update=(other,), restart=(peer,)))
    assert entries == [
        kernel.encode_peer_remove(peer.public_key),
        kernel.encode_peer_set(other, update_only=True),
        kernel.encode_peer_set(peer, update_only=False),
    ]
