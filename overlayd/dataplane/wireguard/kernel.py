"""Kernel WireGuard over generic netlink (family ``wireguard``, version 1).

Constants and layout follow the kernel's ``include/uapi/linux/wireguard.h``:
``WG_CMD_SET_DEVICE`` carries device attributes and a nested ``WGDEVICE_A_PEERS`` list of
nested peers; each peer names itself by ``WGPEER_A_PUBLIC_KEY`` and says what to do with
``WGPEER_A_FLAGS`` (``REMOVE_ME``, ``REPLACE_ALLOWEDIPS``, ``UPDATE_ONLY``); its endpoint is
a ``struct sockaddr_in``; its allowed IPs are nested (family, address, prefix length).
We never send ``WGDEVICE_F_REPLACE_PEERS``: changes are per peer.

Message building and parsing are pure functions (unit-tested against the header's
layout); ``KernelWireGuard`` does the I/O.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from typing import Final

from overlayd.dataplane.wireguard import _link, _nl
from overlayd.values.errors import WireGuardError
from overlayd.values.keys import PrivateKey, PublicKey
from overlayd.values.wireguard import (
    DeviceUpdate,
    Endpoint,
    PeerChanges,
    PresharedKey,
    WgDeviceConfig,
    WgPeerConfig,
    WgPeerState,
    WgState,
    device_update,
    diff_peers,
)

WG_GENL_NAME: Final = "wireguard"
WG_GENL_VERSION: Final = 1
WG_CMD_GET_DEVICE: Final = 0
WG_CMD_SET_DEVICE: Final = 1

WGDEVICE_A_IFINDEX: Final = 1
WGDEVICE_A_IFNAME: Final = 2
WGDEVICE_A_PRIVATE_KEY: Final = 3
WGDEVICE_A_PUBLIC_KEY: Final = 4
WGDEVICE_A_FLAGS: Final = 5
WGDEVICE_A_LISTEN_PORT: Final = 6
WGDEVICE_A_FWMARK: Final = 7
WGDEVICE_A_PEERS: Final = 8

WGPEER_A_PUBLIC_KEY: Final = 1
WGPEER_A_PRESHARED_KEY: Final = 2
WGPEER_A_FLAGS: Final = 3
WGPEER_A_ENDPOINT: Final = 4
WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL: Final = 5
WGPEER_A_LAST_HANDSHAKE_TIME: Final = 6
WGPEER_A_RX_BYTES: Final = 7
WGPEER_A_TX_BYTES: Final = 8
WGPEER_A_ALLOWEDIPS: Final = 9
WGPEER_A_PROTOCOL_VERSION: Final = 10

WGPEER_F_REMOVE_ME: Final = 1 << 0
WGPEER_F_REPLACE_ALLOWEDIPS: Final = 1 << 1
WGPEER_F_UPDATE_ONLY: Final = 1 << 2

WGALLOWEDIP_A_FAMILY: Final = 1
WGALLOWEDIP_A_IPADDR: Final = 2
WGALLOWEDIP_A_CIDR_MASK: Final = 3

GENL_ID_CTRL: Final = 0x10
CTRL_CMD_GETFAMILY: Final = 3
CTRL_ATTR_FAMILY_ID: Final = 1
CTRL_ATTR_FAMILY_NAME: Final = 2

# Peers per set message: a peer with a few allowed IPs takes ~150 bytes, so this stays
# far below the default socket buffer while keeping the number of round trips low.
PEERS_PER_MESSAGE: Final = 64

_GENL_HDR = struct.Struct("=BBH")  # cmd, version, reserved
_SOCKADDR_IN = struct.Struct("=H2s4s8x")  # family (host order), port (network order), addr
_TIMESPEC = struct.Struct("=qq")  # struct __kernel_timespec


def genl_header(cmd: int) -> bytes:
    return _GENL_HDR.pack(cmd, WG_GENL_VERSION, 0)


def encode_sockaddr_in(endpoint: Endpoint) -> bytes:
    """``struct sockaddr_in`` (16 bytes) as WGPEER_A_ENDPOINT carries it."""
    return _SOCKADDR_IN.pack(
        socket.AF_INET, struct.pack("!H", endpoint.port), endpoint.address.packed
    )


def _allowed_ip(net: IPv4Network) -> bytes:
    return _nl.nested(
        0,
        _nl.attr_u16(WGALLOWEDIP_A_FAMILY, socket.AF_INET),
        _nl.attr(WGALLOWEDIP_A_IPADDR, net.network_address.packed),
        _nl.attr_u8(WGALLOWEDIP_A_CIDR_MASK, net.prefixlen),
    )


def encode_peer_remove(key: PublicKey) -> bytes:
    """A peer entry removing ``key``."""
    return _nl.nested(
        0,
        _nl.attr(WGPEER_A_PUBLIC_KEY, key.raw),
        _nl.attr_u32(WGPEER_A_FLAGS, WGPEER_F_REMOVE_ME),
    )


def encode_peer_set(peer: WgPeerConfig, *, update_only: bool) -> bytes:
    """A peer entry creating (or, with ``update_only``, only updating) ``peer``.

    Always replaces the allowed IPs and writes the pre-shared key (zeros clear it), so the
    peer ends up exactly as configured.
    """
    flags = WGPEER_F_REPLACE_ALLOWEDIPS | (WGPEER_F_UPDATE_ONLY if update_only else 0)
    psk = peer.preshared_key.raw if peer.preshared_key else bytes(32)
    parts = [
        _nl.attr(WGPEER_A_PUBLIC_KEY, peer.public_key.raw),
        _nl.attr_u32(WGPEER_A_FLAGS, flags),
        _nl.attr(WGPEER_A_PRESHARED_KEY, psk),
    ]
    if peer.endpoint is not None:
        parts.append(_nl.attr(WGPEER_A_ENDPOINT, encode_sockaddr_in(peer.endpoint)))
    parts.append(_nl.attr_u16(WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL, peer.persistent_keepalive))
    parts.append(_nl.nested(WGPEER_A_ALLOWEDIPS, *(_allowed_ip(n) for n in peer.allowed_ips)))
    return _nl.nested(0, *parts)


def encode_peer_entries(changes: PeerChanges) -> list[bytes]:
    """Every peer entry of ``changes``: removals, then updates, then additions."""
    return [
        *(encode_peer_remove(key) for key in changes.remove),
        *(encode_peer_set(peer, update_only=True) for peer in changes.update),
        *(encode_peer_set(peer, update_only=False) for peer in changes.add),
    ]


def encode_set_device(
    ifname: str,
    *,
    private_key: PrivateKey | None = None,
    listen_port: int | None = None,
    fwmark: int | None = None,
    peers: Iterable[bytes] = (),
) -> bytes:
    """The genl payload (generic header + attributes) of one WG_CMD_SET_DEVICE.

    Device fields left None are not sent (kept). No WGDEVICE_A_FLAGS: never replace_peers.
    """
    parts = [genl_header(WG_CMD_SET_DEVICE), _nl.attr_str(WGDEVICE_A_IFNAME, ifname)]
    if private_key is not None:
        parts.append(_nl.attr(WGDEVICE_A_PRIVATE_KEY, private_key.raw))
    if listen_port is not None:
        parts.append(_nl.attr_u16(WGDEVICE_A_LISTEN_PORT, listen_port))
    if fwmark is not None:
        parts.append(_nl.attr_u32(WGDEVICE_A_FWMARK, fwmark))
    entries = list(peers)
    if entries:
        parts.append(_nl.nested(WGDEVICE_A_PEERS, *entries))
    return b"".join(parts)


def encode_device_update(ifname: str, update: DeviceUpdate) -> bytes:
    """The WG_CMD_SET_DEVICE payload applying ``update`` (e.g. a rotated private key).

    No peers and no flags: the device's peers and sessions' configuration stay as they are.
    """
    return encode_set_device(
        ifname,
        private_key=update.private_key,
        listen_port=update.listen_port,
        fwmark=update.fwmark,
    )


def encode_set_messages(ifname: str, changes: PeerChanges) -> list[bytes]:
    """``changes`` as WG_CMD_SET_DEVICE payloads of at most PEERS_PER_MESSAGE peers each."""
    entries = encode_peer_entries(changes)
    return [
        encode_set_device(ifname, peers=entries[i : i + PEERS_PER_MESSAGE])
        for i in range(0, len(entries), PEERS_PER_MESSAGE)
    ]


def encode_get_device(ifname: str) -> bytes:
    """The genl payload of WG_CMD_GET_DEVICE (sent with NLM_F_DUMP)."""
    return genl_header(WG_CMD_GET_DEVICE) + _nl.attr_str(WGDEVICE_A_IFNAME, ifname)


@dataclass
class _PeerAcc:
    endpoint: Endpoint | None = None
    allowed: list[IPv4Network] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)
    keepalive: int = 0
    psk: PresharedKey | None = None
    handshake: float | None = None
    rx: int = 0
    tx: int = 0


def _decode_endpoint(data: bytes) -> Endpoint | None:
    family = _nl.u16(data) if len(data) >= 2 else 0
    if family != socket.AF_INET or len(data) < _SOCKADDR_IN.size:
        return None  # IPv6 endpoint: not ours; a desired one replaces it
    _, port, addr = _SOCKADDR_IN.unpack_from(data)
    return Endpoint(IPv4Address(addr), struct.unpack("!H", port)[0])


def _decode_allowed_ips(data: bytes, acc: _PeerAcc) -> None:
    for _, entry in _nl.iter_attrs(data):
        attrs = _nl.attr_map(entry)
        family = _nl.u16(attrs.get(WGALLOWEDIP_A_FAMILY, b"\0\0"))
        addr = attrs.get(WGALLOWEDIP_A_IPADDR, b"")
        cidr = attrs.get(WGALLOWEDIP_A_CIDR_MASK, b"\0")[0]
        if family == socket.AF_INET and len(addr) == 4:
            acc.allowed.append(IPv4Network((IPv4Address(addr), cidr)))
        else:
            acc.foreign.append(f"{socket.inet_ntop(family, addr)}/{cidr}")


def _decode_peer(data: bytes, peers: dict[PublicKey, _PeerAcc]) -> None:
    attrs = _nl.attr_map(data)
    key = PublicKey(attrs[WGPEER_A_PUBLIC_KEY])
    # a dump may split one peer's allowed IPs over several messages: merge by key
    acc = peers.setdefault(key, _PeerAcc())
    if WGPEER_A_ENDPOINT in attrs:
        acc.endpoint = _decode_endpoint(attrs[WGPEER_A_ENDPOINT])
    if WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL in attrs:
        acc.keepalive = _nl.u16(attrs[WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL])
    if WGPEER_A_PRESHARED_KEY in attrs:
        psk = attrs[WGPEER_A_PRESHARED_KEY]
        acc.psk = None if psk == bytes(32) else PresharedKey(psk)
    if WGPEER_A_LAST_HANDSHAKE_TIME in attrs:
        sec, nsec = _TIMESPEC.unpack_from(attrs[WGPEER_A_LAST_HANDSHAKE_TIME])
        acc.handshake = sec + nsec / 1e9 if sec or nsec else None
    if WGPEER_A_RX_BYTES in attrs:
        acc.rx = _nl.u64(attrs[WGPEER_A_RX_BYTES])
    if WGPEER_A_TX_BYTES in attrs:
        acc.tx = _nl.u64(attrs[WGPEER_A_TX_BYTES])
    if WGPEER_A_ALLOWEDIPS in attrs:
        _decode_allowed_ips(attrs[WGPEER_A_ALLOWEDIPS], acc)


def decode_device(payloads: Iterable[bytes]) -> WgState:
    """Merge the WG_CMD_GET_DEVICE dump messages (genl payloads) into one ``WgState``."""
    public_key: PublicKey | None = None
    listen_port = 0
    fwmark = 0
    peers: dict[PublicKey, _PeerAcc] = {}
    try:
        for payload in payloads:
            attrs = _nl.attr_map(payload[_GENL_HDR.size :])
            if WGDEVICE_A_PUBLIC_KEY in attrs:
                public_key = PublicKey(attrs[WGDEVICE_A_PUBLIC_KEY])
            if WGDEVICE_A_LISTEN_PORT in attrs:
                listen_port = _nl.u16(attrs[WGDEVICE_A_LISTEN_PORT])
            if WGDEVICE_A_FWMARK in attrs:
                fwmark = _nl.u32(attrs[WGDEVICE_A_FWMARK])
            for _, peer in _nl.iter_attrs(attrs.get(WGDEVICE_A_PEERS, b"")):
                _decode_peer(peer, peers)
    except (ValueError, KeyError, struct.error, IndexError) as exc:
        raise WireGuardError(f"malformed WireGuard netlink message: {exc}") from None
    states = {
        key: WgPeerState(
            WgPeerConfig(key, acc.endpoint, tuple(acc.allowed), acc.keepalive, acc.psk),
            acc.handshake,
            acc.rx,
            acc.tx,
            tuple(acc.foreign),
        )
        for key, acc in peers.items()
    }
    return WgState(public_key, listen_port, fwmark, states)


def encode_get_family(name: str) -> bytes:
    """CTRL_CMD_GETFAMILY payload resolving a generic netlink family's id."""
    return _GENL_HDR.pack(CTRL_CMD_GETFAMILY, 1, 0) + _nl.attr_str(CTRL_ATTR_FAMILY_NAME, name)


class KernelWireGuard:
    """Driver for a kernel WireGuard device in the caller's network namespace.

    The device is a plain kernel object: it outlives the daemon, so ``close()`` leaves it
    (the data plane stays up) unless asked to stop.
    """

    kind = "kernel"

    def __init__(self, ifname: str, *, created: bool = False) -> None:
        self.ifname = ifname
        # the factory may have created the device while probing for kernel support
        self._created = created
        self._family: int | None = None

    def _family_id(self, nl: _nl.NetlinkSocket) -> int:
        if self._family is None:
            replies = nl.request(GENL_ID_CTRL, _nl.NLM_F_REQUEST, encode_get_family(WG_GENL_NAME))
            for _, body in replies:
                attrs = _nl.attr_map(body[_GENL_HDR.size :])
                if CTRL_ATTR_FAMILY_ID in attrs:
                    self._family = _nl.u16(attrs[CTRL_ATTR_FAMILY_ID])
            if self._family is None:
                raise OSError(0, "generic netlink family 'wireguard' not found")
        return self._family

    def _dump(self) -> Iterator[bytes]:
        with _nl.NetlinkSocket(_nl.NETLINK_GENERIC) as nl:
            family = self._family_id(nl)
            for _, body in nl.request(
                family, _nl.NLM_F_REQUEST | _nl.NLM_F_DUMP, encode_get_device(self.ifname)
            ):
                yield body

    def _send(self, payloads: Iterable[bytes]) -> None:
        with _nl.NetlinkSocket(_nl.NETLINK_GENERIC) as nl:
            family = self._family_id(nl)
            for payload in payloads:
                nl.request(family, _nl.NLM_F_REQUEST | _nl.NLM_F_ACK, payload)

    def ensure_device(self, device: WgDeviceConfig) -> bool:
        """Create the device if missing, set key/port/fwmark if they differ, bring it up.

        True when the device was created since the last call (its addresses and routes
        must be (re)applied by the caller).
        """
        link = _link.get_link(self.ifname)
        if link is None:
            if not _link.create_wireguard(self.ifname):
                raise WireGuardError("this kernel has no WireGuard support")
            self._created = True
        elif link.kind != "wireguard":
            raise WireGuardError(f"{self.ifname} exists but is a {link.kind} device")
        update = device_update(self.read(), device)
        if update:
            try:
                self._send([encode_device_update(self.ifname, update)])
            except OSError as exc:
                raise WireGuardError(f"cannot configure {self.ifname}: {exc.strerror}") from None
        _link.set_up(self.ifname, device.mtu)
        created, self._created = self._created, False
        return created

    def read(self) -> WgState:
        """The device's configuration and peers, read back from the kernel."""
        try:
            return decode_device(list(self._dump()))
        except OSError as exc:
            raise WireGuardError(f"cannot read {self.ifname}: {exc.strerror}") from None

    def apply(self, peers: Iterable[WgPeerConfig], *, allow_delete: bool = True) -> PeerChanges:
        """Diff ``peers`` against the device and apply the per-peer changes."""
        changes = diff_peers(peers, self.read().peers, allow_delete=allow_delete, now=time.time())
        if changes:
            try:
                self._send(encode_set_messages(self.ifname, changes))
            except OSError as exc:
                raise WireGuardError(f"cannot set peers on {self.ifname}: {exc.strerror}") from None
        return changes

    def close(self, *, stop: bool = False) -> None:
        """Forget the device; with ``stop`` delete it (the data plane goes down)."""
        if stop:
            _link.delete(self.ifname)
